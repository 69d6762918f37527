//! A tiny docker token service for the registry fixture: the "token" auth that Docker Hub and
//! most hosted registries use, served on 127.0.0.1 from a thread of the test process.
//!
//! The protocol (distribution's `docs/spec/auth/token.md`): the registry answers 401 with
//! `Bearer realm=...,service=...,scope=...`; the client GETs
//! `realm?service=S&scope=repository:NAME:pull,push`, with Basic credentials if it has any, and
//! gets `{"token": JWT}`. The JWT is RS256, signed with a throwaway key whose self-signed
//! certificate is both the `x5c` chain in the header and the registry's `rootcertbundle`.
//!
//! Policy, like a hosted registry with private repositories:
//! - no credentials: a token that grants nothing, so the registry still answers 401;
//! - the right user and password: a token with the requested pull/push actions, except that
//!   repositories under `readonly/` are pull-only (like another user's namespace);
//! - anything else: 401 from the token service itself.
//!
//! Every request is recorded ([`TokenIssuer::requests`]) so a test can prove which client
//! asked for what.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::registry::base64;
use super::tools::{assert_success, output, require_tool};

const OPENSSL: &str = "/usr/bin/openssl";
/// The `service` (JWT audience) the registry is configured with.
pub const SERVICE: &str = "kiln-test-registry";
/// The `iss` the registry trusts.
pub const ISSUER: &str = "kiln-test-issuer";
/// Repositories under this prefix are pull-only, even for the account.
pub const READ_ONLY_PREFIX: &str = "readonly/";
/// Token lifetime in seconds.
const EXPIRES_IN: u64 = 300;

/// One request the token service answered.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The client's User-Agent header.
    pub user_agent: String,
    /// The user name from Basic credentials; None for an anonymous request.
    pub user: Option<String>,
    /// The `service` query parameter.
    pub service: Option<String>,
    /// Every `scope` query parameter, decoded.
    pub scopes: Vec<String>,
    /// The HTTP status sent back (200, or 401 for bad credentials).
    pub status: u16,
    /// What the token grants, as `repository:NAME:ACTIONS` strings (empty for anonymous).
    pub granted: Vec<String>,
}

struct Shared {
    user: String,
    password: String,
    key: PathBuf,
    /// Base64 (standard, padded) DER of the certificate, for the JWT's `x5c` header.
    cert_der_b64: String,
    requests: Mutex<Vec<TokenRequest>>,
    serial: AtomicU64,
}

/// The running token service. Dropping it stops the thread.
pub struct TokenIssuer {
    port: u16,
    cert: PathBuf,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenIssuer {
    /// Makes a key and certificate in `dir` and starts serving `/token` for one account.
    /// None (after the skip message) without openssl.
    pub fn start(dir: &Path, user: &str, password: &str) -> Option<TokenIssuer> {
        if !require_tool(OPENSSL) {
            return None;
        }
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let out = output(
            Command::new(OPENSSL)
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=kiln test token issuer"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        assert_success(&out, "openssl req -x509");
        let pem = std::fs::read_to_string(&cert).expect("read token certificate");
        // A PEM body is the DER in base64, which is what x5c holds.
        let cert_der_b64: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();

        // Bound here and kept, so no other process can take the port in between.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token service");
        let port = listener.local_addr().expect("token service address").port();
        let shared = Arc::new(Shared {
            user: user.to_string(),
            password: password.to_string(),
            key,
            cert_der_b64,
            requests: Mutex::new(Vec::new()),
            serial: AtomicU64::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = Arc::clone(&shared);
                    std::thread::spawn(move || serve(conn, &shared));
                }
            })
        };
        Some(TokenIssuer {
            port,
            cert,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// The realm the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The certificate the registry must trust (`rootcertbundle`).
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the loop sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request on `conn` and closes it.
fn serve(mut conn: TcpStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let Some(head) = read_head(&mut conn) else {
        return;
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut authorization = None;
    let mut user_agent = String::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(value.trim().to_string()),
                "user-agent" => user_agent = value.trim().to_string(),
                _ => {}
            }
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method != "GET" || path != "/token" {
        respond(&mut conn, 404, "", "{}");
        return;
    }
    let mut service = None;
    let mut scopes = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "service" => service = Some(percent_decode(v)),
            "scope" => scopes.push(percent_decode(v)),
            _ => {}
        }
    }
    let basic = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| base64_decode(b.trim()))
        .map(|raw| String::from_utf8_lossy(&raw).into_owned());
    let (user, authenticated) = match basic.as_deref().map(|b| b.split_once(':')) {
        None => (None, false),
        Some(None) => (Some(String::new()), false),
        Some(Some((u, p))) => (
            Some(u.to_string()),
            u == shared.user && p == shared.password,
        ),
    };

    let mut record = TokenRequest {
        user_agent,
        user: user.clone(),
        service: service.clone(),
        scopes: scopes.clone(),
        status: 200,
        granted: Vec::new(),
    };
    if user.is_some() && !authenticated {
        record.status = 401;
        shared.requests.lock().unwrap().push(record);
        respond(
            &mut conn,
            401,
            "WWW-Authenticate: Basic realm=\"kiln-test-token\"\r\n",
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid user name or password"}]}"#,
        );
        return;
    }
    let access: Vec<serde_json::Value> = if authenticated {
        scopes.iter().filter_map(|s| grant(s)).collect()
    } else {
        Vec::new()
    };
    record.granted = access
        .iter()
        .map(|a| {
            let actions: Vec<&str> = a["actions"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|x| x.as_str())
                .collect();
            format!(
                "repository:{}:{}",
                a["name"].as_str().unwrap(),
                actions.join(",")
            )
        })
        .collect();
    let token = sign_token(shared, user.as_deref().unwrap_or(""), &access);
    shared.requests.lock().unwrap().push(record);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": EXPIRES_IN,
    });
    respond(&mut conn, 200, "", &body.to_string());
}

/// The access entry for `repository:NAME:ACTIONS`, keeping only pull, and push outside
/// [`READ_ONLY_PREFIX`]; None for other resource types or when nothing is left.
fn grant(scope: &str) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if kind != "repository" || name.is_empty() {
        return None;
    }
    let actions: Vec<&str> = actions
        .split(',')
        .filter(|a| *a == "pull" || (*a == "push" && !name.starts_with(READ_ONLY_PREFIX)))
        .collect();
    if actions.is_empty() {
        return None;
    }
    Some(serde_json::json!({ "type": "repository", "name": name, "actions": actions }))
}

/// An RS256 JWT for `sub` granting `access`, signed by openssl with the issuer's key.
fn sign_token(shared: &Shared, sub: &str, access: &[serde_json::Value]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "RS256",
        "x5c": [shared.cert_der_b64],
    });
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": sub,
        "aud": SERVICE,
        "exp": now + EXPIRES_IN,
        // A little slack for a registry whose clock reads the second differently.
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": format!("kiln-test-{}", shared.serial.fetch_add(1, Ordering::SeqCst)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new(OPENSSL)
        .args(["dgst", "-sha256", "-sign"])
        .arg(&shared.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl dgst");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .expect("write to openssl dgst");
    let out = child.wait_with_output().expect("wait for openssl dgst");
    assert!(
        out.status.success(),
        "openssl dgst -sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{signing_input}.{}", base64url(&out.stdout))
}

/// Reads up to the blank line that ends the request head (a GET has no body).
fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 64 << 10 {
            return None;
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn respond(conn: &mut TcpStream, status: u16, extra_headers: &str, body: &str) {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    let _ = conn.flush();
}

/// Base64url without padding, as JWTs use.
fn base64url(data: &[u8]) -> String {
    base64(data)
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect()
}

/// Standard base64 (padding optional); None on a character outside the alphabet.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// `%XX` escapes and `+` as space, as in a query string.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
