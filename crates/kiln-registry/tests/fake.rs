//! Protocol paths a stock registry does not exercise (Bearer tokens, indexes, retries, corrupt
//! content), against a tiny scripted HTTP server on loopback.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
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
struct Req {
    method: String,
    /// Path and query.
    target: String,
    headers: HashMap<String, String>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
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
    let r = handler(&Req {
        method,
        target,
        headers,
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
