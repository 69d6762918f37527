//! Protocol paths a stock registry does not exercise (Bearer tokens, indexes, retries, corrupt
//! content), against a tiny scripted HTTP server on loopback.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_oci::digest::Digest;
use kiln_oci::image::media_type;
use kiln_oci::reference::Reference;
use kiln_oci::Store;
use kiln_registry::{Client, Credentials, Platform, RegistryError};

/// One parsed request.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    /// Path and query.
    target: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
    /// The values of query parameter `name`, percent-decoded.
    fn query(&self, name: &str) -> Vec<String> {
        let Some((_, q)) = self.target.split_once('?') else {
            return Vec::new();
        };
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
            .collect()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Announce the whole body but send only its first half, then close: a dropped connection.
    cut: bool,
}

fn resp(status: u16, body: impl Into<Vec<u8>>) -> Resp {
    Resp {
        status,
        headers: Vec::new(),
        body: body.into(),
        cut: false,
    }
}

impl Resp {
    fn with(mut self, name: &str, value: &str) -> Resp {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

type Handler = dyn Fn(&Req) -> Resp + Send + Sync;

/// A one-thread HTTP/1.1 server answering every request with `handler`, closing each
/// connection after one response. Stopped on drop.
struct FakeServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    fn start(handler: Arc<Handler>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let _ = serve(conn, &*handler);
                }
            }
        });
        FakeServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, handler: &Handler) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let body = read_body(&mut reader, &headers)?;
    let r = handler(&Req {
        method,
        target,
        headers,
        body,
    });
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        r.body.len()
    )?;
    for (k, v) in &r.headers {
        write!(out, "{k}: {v}\r\n")?;
    }
    write!(out, "\r\n")?;
    let sent = if r.cut {
        r.body.len() / 2
    } else {
        r.body.len()
    };
    out.write_all(&r.body[..sent])?;
    out.flush()
}

/// The request body, by Content-Length or chunked transfer encoding.
fn read_body(
    reader: &mut BufReader<TcpStream>,
    headers: &HashMap<String, String>,
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                return Ok(body);
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    if let Some(n) = headers.get("content-length").and_then(|v| v.parse().ok()) {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    }
    Ok(body)
}

/// An image as the fake registry serves it: an index over an arm64 and an amd64 manifest.
struct Content {
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
    index: Vec<u8>,
}

impl Content {
    fn new() -> Content {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let layer: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{}","size":{}}}]}}"#,
            media_type::OCI_MANIFEST,
            media_type::OCI_CONFIG,
            Digest::of(&config),
            config.len(),
            media_type::OCI_LAYER,
            Digest::of(&layer),
            layer.len()
        )
        .into_bytes();
        let other = Digest::of(b"an arm64 manifest that is never fetched");
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{m}","digest":"{other}","size":10,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},{{"mediaType":"{m}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            media_type::OCI_INDEX,
            Digest::of(&manifest),
            manifest.len(),
            m = media_type::OCI_MANIFEST,
        )
        .into_bytes();
        Content {
            config,
            layer,
            manifest,
            index,
        }
    }

    /// Answers the registry API for repository `img`, tag `1`.
    fn answer(&self, r: &Req) -> Resp {
        let path = r.path();
        let blob = |d: &str| format!("/v2/img/blobs/{d}");
        if path == "/v2/" {
            return resp(200, "{}");
        }
        if path == "/v2/img/manifests/1" {
            return resp(200, self.index.clone())
                .with("Content-Type", media_type::OCI_INDEX)
                .with("Docker-Content-Digest", Digest::of(&self.index).as_str());
        }
        if path == format!("/v2/img/manifests/{}", Digest::of(&self.manifest)) {
            return resp(200, self.manifest.clone()).with("Content-Type", media_type::OCI_MANIFEST);
        }
        if path == blob(Digest::of(&self.config).as_str()) {
            return resp(200, self.config.clone());
        }
        if path == blob(Digest::of(&self.layer).as_str()) {
            return resp(200, self.layer.clone());
        }
        resp(
            404,
            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"no such thing"}]}"#,
        )
    }
}

fn fast_client() -> Client {
    Client::new().with_backoff(Duration::from_millis(1))
}

fn empty_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path().join("store")).expect("open store");
    (dir, store)
}

fn amd64() -> Platform {
    Platform::new("linux", "amd64")
}

#[test]
fn index_resolves_to_the_platform_manifest() {
    let content = Arc::new(Content::new());
    let c = content.clone();
    let server = FakeServer::start(Arc::new(move |r: &Req| c.answer(r)));
    let reference = Reference::parse(&format!("{}/img:1", server.addr())).expect("reference");
    let (_d, store) = empty_store();
    let pulled = fast_client()
        .pull(&store, &reference, &amd64())
        .expect("pull");
    assert_eq!(pulled.digest, Digest::of(&content.manifest));
    assert_eq!(pulled.blobs_fetched, 2);
    assert_eq!(
        pulled.bytes_fetched,
        (content.config.len() + content.layer.len()) as u64
    );
    assert!(store.has_blob(&Digest::of(&content.layer)));
    // Only the platform manifest is kept, tagged under the reference.
    assert!(!store.has_blob(&Digest::of(&content.index)));
    let tagged = store
        .resolve(&reference.to_string())
        .expect("index")
        .expect("tag");
    assert_eq!(tagged.media_type().to_string(), media_type::OCI_MANIFEST);

    let err = fast_client()
        .pull(&store, &reference, &Platform::new("linux", "s390x"))
        .expect_err("no such platform");
    assert!(matches!(err, RegistryError::NoPlatform { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("linux/arm64/v8") && msg.contains("linux/amd64"),
        "{msg}"
    );

    let arm = fast_client().pull(
        &store,
        &reference,
        &Platform::new("linux", "arm64").with_variant("v7"),
    );
    assert!(
        matches!(arm, Err(RegistryError::NoPlatform { .. })),
        "{arm:?}"
    );
}

/// A registry behind the docker token flow; counts token requests.
fn token_server(
    content: Arc<Content>,
    basic: Option<&'static str>,
) -> (FakeServer, Arc<AtomicUsize>) {
    let token_calls = Arc::new(AtomicUsize::new(0));
    let calls = token_calls.clone();
    let port_cell: Arc<Mutex<u16>> = Arc::new(Mutex::new(0));
    let port_for_handler = port_cell.clone();
    let server = FakeServer::start(Arc::new(move |r: &Req| {
        if r.path() == "/token" {
            calls.fetch_add(1, Ordering::SeqCst);
            let scope_ok = r.target.contains("scope=repository%3Aimg%3Apull")
                || r.target.contains("scope=repository:img:pull");
            if !scope_ok || !r.target.contains("service=fake") {
                return resp(400, "bad token request");
            }
            if let Some(expected) = basic {
                if r.header("authorization") != Some(expected) {
                    return resp(401, "bad credentials");
                }
            }
            return resp(200, r#"{"token":"good-token","expires_in":300}"#);
        }
        if r.header("authorization") != Some("Bearer good-token") {
            let port = port_for_handler.lock().map(|p| *p).unwrap_or(0);
            return resp(401, r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#).with(
                "WWW-Authenticate",
                &format!(
                    r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake",scope="repository:img:pull""#
                ),
            );
        }
        content.answer(r)
    }));
    if let Ok(mut p) = port_cell.lock() {
        *p = server.port;
    }
    (server, token_calls)
}

#[test]
fn bearer_token_flow_anonymous_and_cached_per_scope() {
    let content = Arc::new(Content::new());
    let (server, token_calls) = token_server(content.clone(), None);
    let reference = Reference::parse(&format!("{}/img:1", server.addr())).expect("reference");
    let client = fast_client();
    let (_d, store) = empty_store();
    let pulled = client.pull(&store, &reference, &amd64()).expect("pull");
    assert_eq!(pulled.digest, Digest::of(&content.manifest));
    // One token for the whole pull (index, manifest, two blobs on worker threads), and the
    // cached token serves a second pull too.
    assert_eq!(token_calls.load(Ordering::SeqCst), 1);
    let (_d2, store2) = empty_store();
    client
        .pull(&store2, &reference, &amd64())
        .expect("second pull");
    assert_eq!(token_calls.load(Ordering::SeqCst), 1);
}

#[test]
fn bearer_token_flow_sends_basic_credentials_to_the_realm() {
    let content = Arc::new(Content::new());
    // "user:pass"
    let (server, _) = token_server(content.clone(), Some("Basic dXNlcjpwYXNz"));
    let reference = Reference::parse(&format!("{}/img:1", server.addr())).expect("reference");
    let (_d, store) = empty_store();
    let good = fast_client().with_credentials(&server.addr(), Credentials::new("user", "pass"));
    let pulled = good.pull(&store, &reference, &amd64()).expect("pull");
    assert_eq!(pulled.digest, Digest::of(&content.manifest));

    let bad = fast_client().with_credentials(&server.addr(), Credentials::new("user", "nope"));
    let (_d2, store2) = empty_store();
    let err = bad
        .pull(&store2, &reference, &amd64())
        .expect_err("wrong password");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("refused the credentials"), "{err}");

    let anonymous = fast_client();
    let err = anonymous
        .pull(&store2, &reference, &amd64())
        .expect_err("no credentials");
    assert!(
        err.to_string()
            .contains(&format!("kiln login {}", server.addr())),
        "{err}"
    );
}

/// A token registry whose token service accepts anyone but grants nothing: every request
/// with a token gets distribution's insufficient-scope answer.
fn scopeless_token_server() -> FakeServer {
    let port_cell: Arc<Mutex<u16>> = Arc::new(Mutex::new(0));
    let port_for_handler = port_cell.clone();
    let server = FakeServer::start(Arc::new(move |r: &Req| {
        if r.path() == "/token" {
            return resp(200, r#"{"token":"empty-token"}"#);
        }
        let port = port_for_handler.lock().map(|p| *p).unwrap_or(0);
        let mut challenge = format!(
            r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake",scope="repository:img:pull""#
        );
        if r.header("authorization").is_some() {
            challenge.push_str(r#",error="insufficient_scope""#);
        }
        resp(401, r#"{"errors":[{"code":"DENIED"}]}"#).with("WWW-Authenticate", &challenge)
    }));
    if let Ok(mut p) = port_cell.lock() {
        *p = server.port;
    }
    server
}

#[test]
fn insufficient_scope_with_credentials_is_a_denial_not_a_bad_password() {
    let server = scopeless_token_server();
    let reference = Reference::parse(&format!("{}/img:1", server.addr())).expect("reference");
    let (_d, store) = empty_store();
    let err = fast_client()
        .with_credentials(&server.addr(), Credentials::new("user", "pass"))
        .pull(&store, &reference, &amd64())
        .expect_err("no pull rights");
    assert!(
        matches!(err, RegistryError::Denied { access: "pull", .. }),
        "{err:?}"
    );
    // Without credentials the same answer still means "log in".
    let err = fast_client()
        .pull(&store, &reference, &amd64())
        .expect_err("anonymous");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("kiln login"), "{err}");
}

#[test]
fn server_errors_are_retried_then_reported() {
    let content = Arc::new(Content::new());
    let failures = Arc::new(AtomicUsize::new(0));
    let (c, f) = (content.clone(), failures.clone());
    // The first two manifest requests fail with 503; the third succeeds.
    let server = FakeServer::start(Arc::new(move |r: &Req| {
        if r.path() == "/v2/img/manifests/1" && f.fetch_add(1, Ordering::SeqCst) < 2 {
            return resp(503, "busy");
        }
        c.answer(r)
    }));
    let reference = Reference::parse(&format!("{}/img:1", server.addr())).expect("reference");
    let (_d, store) = empty_store();
    fast_client()
        .pull(&store, &reference, &amd64())
        .expect("pull after retries");
    assert_eq!(failures.load(Ordering::SeqCst), 3);

    // Always failing: three attempts, then an error naming the status.
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let always = FakeServer::start(Arc::new(move |_: &Req| {
        h.fetch_add(1, Ordering::SeqCst);
        resp(
            502,
            r#"{"errors":[{"code":"UNAVAILABLE","message":"backend down"}]}"#,
        )
    }));
    let reference = Reference::parse(&format!("{}/img:1", always.addr())).expect("reference");
    let err = fast_client()
        .pull(&store, &reference, &amd64())
        .expect_err("always 502");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert!(
        matches!(err, RegistryError::Status { status: 502, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("backend down"), "{err}");
}

#[test]
fn rate_limits_and_denials_are_explained() {
    let limited = FakeServer::start(Arc::new(|_: &Req| resp(429, "slow down")));
    let reference = Reference::parse(&format!("{}/img:1", limited.addr())).expect("reference");
    let (_d, store) = empty_store();
    let err = fast_client()
        .pull(&store, &reference, &amd64())
        .expect_err("429");
    assert!(
        matches!(err, RegistryError::TooManyRequests { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("kiln login"), "{err}");

    let denied = FakeServer::start(Arc::new(|_: &Req| resp(403, "no")));
    let reference = Reference::parse(&format!("{}/img:1", denied.addr())).expect("reference");
    let err = fast_client()
        .pull(&store, &reference, &amd64())
        .expect_err("403");
    assert!(
        matches!(err, RegistryError::Denied { access: "pull", .. }),
        "{err:?}"
    );
}

#[test]
fn unreachable_registry_is_a_transport_error() {
    // Bind then drop: nothing listens on the port any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let reference = Reference::parse(&format!("127.0.0.1:{port}/img:1")).expect("reference");
    let (_d, store) = empty_store();
    let err = fast_client()
        .pull(&store, &reference, &amd64())
        .expect_err("nothing there");
    assert!(matches!(err, RegistryError::Transport { .. }), "{err:?}");
}

/// Serves the image with the layer replaced by `layer`.
fn serve_bad_layer(layer: Vec<u8>) -> (FakeServer, Arc<Content>) {
    let content = Arc::new(Content::new());
    let c = content.clone();
    let layer_path = format!("/v2/img/blobs/{}", Digest::of(&content.layer));
    let server = FakeServer::start(Arc::new(move |r: &Req| {
        if r.path() == layer_path && r.method == "GET" {
            return resp(200, layer.clone());
        }
        c.answer(r)
    }));
    (server, content)
}

#[test]
fn corrupt_or_truncated_blobs_never_enter_the_store() {
    let good = Content::new();
    let mut flipped = good.layer.clone();
    flipped[1000] ^= 0xff;
    let truncated = good.layer[..good.layer.len() - 10].to_vec();
    let mut longer = good.layer.clone();
    longer.extend_from_slice(b"extra");
    for (bad, is_digest) in [(flipped, true), (truncated, false), (longer, false)] {
        let (server, content) = serve_bad_layer(bad);
        let reference = Reference::parse(&format!("{}/img:1", server.addr())).expect("reference");
        let (_d, store) = empty_store();
        let err = fast_client()
            .pull(&store, &reference, &amd64())
            .expect_err("bad layer must fail");
        if is_digest {
            assert!(
                matches!(err, RegistryError::DigestMismatch { .. }),
                "{err:?}"
            );
        } else {
            assert!(matches!(err, RegistryError::SizeMismatch { .. }), "{err:?}");
        }
        assert!(!store.has_blob(&Digest::of(&content.layer)));
        assert!(!store.has_blob(&Digest::of(&content.manifest)));
        assert!(store.tags().expect("tags").is_empty());
    }
}

#[test]
fn manifest_not_matching_its_digest_header_is_refused() {
    let content = Arc::new(Content::new());
    let c = content.clone();
    let server = FakeServer::start(Arc::new(move |r: &Req| {
        if r.path() == "/v2/img/manifests/1" {
            return resp(200, c.manifest.clone())
                .with("Content-Type", media_type::OCI_MANIFEST)
                .with(
                    "Docker-Content-Digest",
                    Digest::of(b"something else").as_str(),
                );
        }
        c.answer(r)
    }));
    let reference = Reference::parse(&format!("{}/img:1", server.addr())).expect("reference");
    let (_d, store) = empty_store();
    let err = fast_client()
        .pull(&store, &reference, &amd64())
        .expect_err("mismatch");
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(store.tags().expect("tags").is_empty());
}

#[test]
fn a_connection_dropped_mid_blob_is_retried() {
    let content = Arc::new(Content::new());
    let drops = Arc::new(AtomicUsize::new(0));
    let (c, d) = (content.clone(), drops.clone());
    let layer_path = format!("/v2/img/blobs/{}", Digest::of(&content.layer));
    let server = FakeServer::start(Arc::new(move |r: &Req| {
        let mut answer = c.answer(r);
        if r.path() == layer_path && d.fetch_add(1, Ordering::SeqCst) < 2 {
            answer.cut = true;
        }
        answer
    }));
    let reference = Reference::parse(&format!("{}/img:1", server.addr())).expect("reference");
    let (_d, store) = empty_store();
    let pulled = fast_client()
        .pull(&store, &reference, &amd64())
        .expect("third download succeeds");
    assert_eq!(drops.load(Ordering::SeqCst), 3);
    assert_eq!(pulled.blobs_fetched, 2);
    assert!(store
        .verify_blob(&Digest::of(&content.layer))
        .expect("verify"));
}

/// The upload side of a registry for repository `img`, scripted: HEAD finds no blob, sessions
/// assemble what PATCH and PUT send and check it against the closing digest, and every request
/// is logged. Locations change with every answer (`?_state=N`), and a request to any other
/// than the last one given is refused, so following them is checked too.
struct Uploads {
    log: Mutex<Vec<Req>>,
    /// Session id -> (bytes so far, the Location last handed out).
    sessions: Mutex<HashMap<String, (Vec<u8>, String)>>,
    counter: AtomicUsize,
    /// What a mount request gets: 201 (mounted) or 202 (a session instead).
    mount_status: u16,
    /// Answer the n-th PATCH (0-based) with this status and `Range` header instead.
    bad_patch: Option<(usize, u16, &'static str)>,
}

impl Uploads {
    fn new(mount_status: u16) -> Uploads {
        Uploads {
            log: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashMap::new()),
            counter: AtomicUsize::new(0),
            mount_status,
            bad_patch: None,
        }
    }

    fn requests(&self) -> Vec<Req> {
        self.log.lock().expect("log").clone()
    }

    fn location(&self, id: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        format!("/v2/img/blobs/uploads/{id}?_state={n}")
    }

    fn answer(&self, r: &Req) -> Resp {
        let patches_before = self
            .log
            .lock()
            .map(|l| l.iter().filter(|q| q.method == "PATCH").count())
            .unwrap_or(0);
        if let Ok(mut l) = self.log.lock() {
            l.push(r.clone());
        }
        let mut sessions = self.sessions.lock().expect("sessions");
        let path = r.path();
        match r.method.as_str() {
            "HEAD" if path.starts_with("/v2/img/blobs/") => resp(404, ""),
            "POST" if path == "/v2/img/blobs/uploads/" => {
                let mount = r.query("mount");
                if !mount.is_empty() && self.mount_status == 201 {
                    return resp(201, "").with("Docker-Content-Digest", &mount[0]);
                }
                let id = format!("s{}", sessions.len());
                let location = self.location(&id);
                sessions.insert(id, (Vec::new(), location.clone()));
                resp(202, "").with("Location", &location)
            }
            "PATCH" | "PUT" if path.starts_with("/v2/img/blobs/uploads/") => {
                let id = path.rsplit('/').next().unwrap_or_default().to_owned();
                let Some((data, expected)) = sessions.get_mut(&id) else {
                    return resp(404, "no such session");
                };
                let at = r.target.split("&digest=").next().unwrap_or_default();
                if at != expected.as_str() {
                    return resp(400, format!("stale location {at}, expected {expected}"));
                }
                if r.method == "PATCH" {
                    if let Some((n, status, range)) = self.bad_patch {
                        if n == patches_before {
                            return resp(status, "").with("Range", range);
                        }
                    }
                    // Like distribution: a chunk must start where the session ends.
                    let start = r
                        .header("content-range")
                        .and_then(|v| v.split_once('-'))
                        .and_then(|(s, _)| s.parse::<usize>().ok());
                    if start != Some(data.len()) {
                        let held = format!("0-{}", data.len().saturating_sub(1));
                        return resp(416, "").with("Range", &held);
                    }
                    data.extend_from_slice(&r.body);
                    let held = format!("0-{}", data.len() - 1);
                    let next = self.location(&id);
                    *expected = next.clone();
                    return resp(202, "").with("Location", &next).with("Range", &held);
                }
                data.extend_from_slice(&r.body);
                let got = Digest::of(data);
                if r.query("digest") != [got.to_string()] {
                    return resp(400, format!("content is {got}"));
                }
                resp(201, "").with("Docker-Content-Digest", got.as_str())
            }
            "PUT" if path == "/v2/img/manifests/1" => {
                resp(201, "").with("Docker-Content-Digest", Digest::of(&r.body).as_str())
            }
            _ => resp(404, "unexpected request"),
        }
    }
}

/// A store holding `Content`'s image, with the layer recorded as being in repository `src` of
/// the registry at `addr`. Returns the manifest digest.
fn upload_store(content: &Content, addr: &str) -> (tempfile::TempDir, Store, Digest) {
    let (dir, store) = empty_store();
    store.put_blob(&content.config).expect("config");
    let (layer, _) = store.put_blob(&content.layer).expect("layer");
    let (manifest, _) = store.put_blob(&content.manifest).expect("manifest");
    store
        .remember_blob_origin(&layer, &format!("{addr}/src"))
        .expect("origin");
    (dir, store, manifest)
}

#[test]
fn a_declined_mount_uploads_through_its_session_in_contiguous_chunks() {
    let content = Content::new();
    let uploads = Arc::new(Uploads::new(202));
    let u = uploads.clone();
    let server = FakeServer::start(Arc::new(move |r: &Req| u.answer(r)));
    let (_d, store, manifest) = upload_store(&content, &server.addr());
    let reference = Reference::parse(&format!("{}/img:1", server.addr())).expect("reference");
    const CHUNK: usize = 64 << 10;
    let pushed = fast_client()
        .with_chunk_size(CHUNK as u64)
        .push(&store, &manifest, &reference)
        .expect("push");
    assert_eq!(pushed.digest, manifest);
    assert_eq!((pushed.blobs_uploaded, pushed.blobs_mounted), (2, 0));
    assert_eq!(
        pushed.bytes_uploaded,
        (content.config.len() + content.layer.len()) as u64
    );

    let log = uploads.requests();
    let posts: Vec<&Req> = log.iter().filter(|r| r.method == "POST").collect();
    // The config (no origin) gets a plain POST; the layer a mount from src, and no other POST:
    // its 202 session carries the upload.
    assert_eq!(posts.len(), 2, "{posts:#?}");
    assert!(posts[0].query("mount").is_empty());
    assert_eq!(
        posts[1].query("mount"),
        [Digest::of(&content.layer).to_string()]
    );
    assert_eq!(posts[1].query("from"), ["src"]);

    // The config fits one chunk: one PUT with the whole blob, no PATCH, in session s0.
    let s0: Vec<&Req> = log
        .iter()
        .filter(|r| r.path() == "/v2/img/blobs/uploads/s0")
        .collect();
    assert_eq!(s0.len(), 1);
    assert_eq!(s0[0].method, "PUT");
    assert_eq!(s0[0].body, content.config);

    // The layer: PATCHes with contiguous inclusive ranges covering it exactly, each as long as
    // its Content-Length and body, then an empty PUT.
    let s1: Vec<&Req> = log
        .iter()
        .filter(|r| r.path() == "/v2/img/blobs/uploads/s1")
        .collect();
    let (last, patches) = s1.split_last().expect("requests in s1");
    assert_eq!(patches.len(), content.layer.len().div_ceil(CHUNK));
    let mut next = 0usize;
    for p in patches {
        assert_eq!(p.method, "PATCH");
        assert_eq!(p.header("content-type"), Some("application/octet-stream"));
        let range = p.header("content-range").expect("Content-Range");
        let (start, end) = range.split_once('-').expect("start-end");
        let (start, end): (usize, usize) = (start.parse().unwrap(), end.parse().unwrap());
        assert_eq!(start, next, "{range} does not follow the previous chunk");
        assert!(end - start < CHUNK);
        assert_eq!(p.body.len(), end - start + 1);
        assert_eq!(
            p.header("content-length"),
            Some(p.body.len().to_string().as_str())
        );
        assert_eq!(p.body, content.layer[start..=end]);
        next = end + 1;
    }
    assert_eq!(next, content.layer.len());
    assert_eq!(last.method, "PUT");
    assert!(last.body.is_empty());
    assert_eq!(last.header("content-length"), Some("0"));
    assert_eq!(
        last.query("digest"),
        [Digest::of(&content.layer).to_string()]
    );
}

#[test]
fn a_mount_with_bearer_auth_asks_for_both_repositories() {
    let content = Content::new();
    let uploads = Arc::new(Uploads::new(201));
    let scopes_asked: Arc<Mutex<Vec<Vec<String>>>> = Arc::new(Mutex::new(Vec::new()));
    let port_cell: Arc<Mutex<u16>> = Arc::new(Mutex::new(0));
    let (u, asked, port_for_handler) = (uploads.clone(), scopes_asked.clone(), port_cell.clone());
    let server = FakeServer::start(Arc::new(move |r: &Req| {
        if r.path() == "/token" {
            let scopes = r.query("scope");
            let token = format!("t{}", asked.lock().map(|a| a.len()).unwrap_or(0));
            if let Ok(mut a) = asked.lock() {
                a.push(scopes);
            }
            return resp(200, format!(r#"{{"token":"{token}"}}"#));
        }
        // The token with index n grants the scopes asked n-th.
        let granted: Vec<String> = r
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer t"))
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| asked.lock().ok()?.get(n).cloned())
            .unwrap_or_default();
        let mut needed = vec!["repository:img:pull,push".to_owned()];
        needed.extend(
            r.query("from")
                .iter()
                .map(|f| format!("repository:{f}:pull")),
        );
        if !needed.iter().all(|n| granted.contains(n)) {
            let port = port_for_handler.lock().map(|p| *p).unwrap_or(0);
            return resp(401, "").with(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake""#),
            );
        }
        u.answer(r)
    }));
    if let Ok(mut p) = port_cell.lock() {
        *p = server.port;
    }
    let (_d, store, manifest) = upload_store(&content, &server.addr());
    let reference = Reference::parse(&format!("{}/img:1", server.addr())).expect("reference");
    let pushed = fast_client()
        .push(&store, &manifest, &reference)
        .expect("push");
    assert_eq!((pushed.blobs_uploaded, pushed.blobs_mounted), (1, 1));
    assert_eq!(pushed.bytes_mounted, content.layer.len() as u64);
    let asked = scopes_asked.lock().expect("scopes").clone();
    assert_eq!(
        asked,
        [
            vec!["repository:img:pull,push".to_owned()],
            vec![
                "repository:img:pull,push".to_owned(),
                "repository:src:pull".to_owned()
            ],
        ]
    );
    // Mounted: nothing of the layer was sent.
    let log = uploads.requests();
    assert!(!log.iter().any(|r| r.method == "PATCH"));
    let layer_bytes = log.iter().filter(|r| r.body == content.layer).count();
    assert_eq!(layer_bytes, 0);
}

#[test]
fn a_chunk_the_registry_refuses_is_a_clear_range_error() {
    for (status, range, answer) in [
        (
            416,
            "0-999",
            "answered 416 Range Not Satisfiable and holds bytes 0-999",
        ),
        (202, "0-10", "answered 202 but holds bytes 0-10"),
    ] {
        let content = Content::new();
        let mut uploads = Uploads::new(202);
        uploads.bad_patch = Some((1, status, range));
        let uploads = Arc::new(uploads);
        let u = uploads.clone();
        let server = FakeServer::start(Arc::new(move |r: &Req| u.answer(r)));
        let (_d, store, manifest) = upload_store(&content, &server.addr());
        let reference = Reference::parse(&format!("{}/img:1", server.addr())).expect("reference");
        let err = fast_client()
            .with_chunk_size(64 << 10)
            .push(&store, &manifest, &reference)
            .expect_err("refused chunk");
        assert!(matches!(err, RegistryError::UploadRange { .. }), "{err:?}");
        let msg = err.to_string();
        for part in [
            "for bytes 65536-131071",
            answer,
            "push again",
            &Digest::of(&content.layer).to_string(),
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
        // Nothing after the refused chunk, and no manifest.
        let log = uploads.requests();
        assert_eq!(log.iter().filter(|r| r.method == "PATCH").count(), 2);
        assert!(!log.iter().any(|r| r.path().contains("/manifests/")));
    }
}
