//! A local distribution registry (Debian's `docker-registry`, v2.8) on 127.0.0.1 with its
//! storage in a scratch directory, optionally behind htpasswd basic auth or token auth (with a
//! token service from [`super::token`]). Plain HTTP: clients need `--dest-tls-verify=false` /
//! `--tls-verify=false` / kiln's insecure-registry option.
//!
//! ```ignore
//! let Some(reg) = Registry::start() else { return };
//! skopeo(&["copy", "docker-archive:img.tar", &format!("docker://{}", reg.image("x:1")),
//!          "--dest-tls-verify=false"]);
//! ```
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::token::{self, TokenIssuer};
use super::tools::{
    assert_success, output, reap_stale_fixtures, require, require_tool, signal, tail, which,
    TempRoot, SIGKILL, SIGTERM,
};

const REGISTRY_BIN: &str = "docker-registry";
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Registry {
    child: Child,
    token: Option<TokenIssuer>,
    root: TempRoot,
    port: u16,
    creds: Option<(String, String)>,
}

/// How the registry checks clients.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AuthKind {
    Open,
    Htpasswd,
    Token,
}

impl Registry {
    /// An open registry (anyone may push and pull). None when the test should be skipped.
    pub fn start() -> Option<Registry> {
        Self::start_inner(AuthKind::Open, None)
    }

    /// A registry that demands basic auth for every request, with one account.
    pub fn with_auth(user: &str, password: &str) -> Option<Registry> {
        Self::start_inner(
            AuthKind::Htpasswd,
            Some((user.to_string(), password.to_string())),
        )
    }

    /// A registry with the distribution token auth: it trusts JWTs from a token service in
    /// this process ([`Registry::token_issuer`]) that knows one account and gives anonymous
    /// clients tokens without access.
    pub fn with_token_auth(user: &str, password: &str) -> Option<Registry> {
        Self::start_inner(
            AuthKind::Token,
            Some((user.to_string(), password.to_string())),
        )
    }

    fn start_inner(kind: AuthKind, creds: Option<(String, String)>) -> Option<Registry> {
        if !require_tool(REGISTRY_BIN) {
            return None;
        }
        reap_stale_fixtures();
        let root = TempRoot::new("registry");
        let mut token = None;
        let auth_section = match (kind, &creds) {
            (AuthKind::Htpasswd, Some((user, password))) => {
                let line = htpasswd_line(user, password)?;
                std::fs::write(root.join("htpasswd"), line).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    root.join("htpasswd").display()
                )
            }
            (AuthKind::Token, Some((user, password))) => {
                let issuer = TokenIssuer::start(root.path(), user, password)?;
                let section = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    \
                     rootcertbundle: {}\n",
                    issuer.realm(),
                    token::SERVICE,
                    token::ISSUER,
                    issuer.cert().display()
                );
                token = Some(issuer);
                section
            }
            _ => String::new(),
        };
        // The free port is found by binding port 0 and releasing it, so another process can
        // take it in between: retry with a new port if the registry cannot listen.
        for _ in 0..3 {
            let port = free_port();
            write_config(&root, port, &auth_section);
            let log = File::create(root.join("registry.log")).expect("create registry log");
            let mut child = Command::new(which(REGISTRY_BIN).expect("registry binary"))
                .arg("serve")
                .arg(root.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            if wait_ready(&mut child, port) {
                return Some(Registry {
                    child,
                    token,
                    root,
                    port,
                    creds,
                });
            }
            stop_child(&mut child);
            eprintln!(
                "note: docker-registry did not come up on port {port}; log tail:\n{}",
                tail(&root.join("registry.log"), 10)
            );
        }
        panic!(
            "docker-registry did not start; log tail:\n{}",
            tail(&root.join("registry.log"), 20)
        );
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "127.0.0.1:PORT/NAME" — an image reference in this registry ("x:1" → "127.0.0.1:5000/x:1").
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.addr())
    }

    /// The token service of a `with_token_auth` registry.
    pub fn token_issuer(&self) -> Option<&TokenIssuer> {
        self.token.as_ref()
    }

    /// The account of a `with_auth` or `with_token_auth` registry.
    pub fn creds(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// "user:password" for skopeo's `--creds`/`--dest-creds`.
    pub fn creds_arg(&self) -> Option<String> {
        self.creds.as_ref().map(|(u, p)| format!("{u}:{p}"))
    }

    /// Where the registry keeps its blobs and manifests.
    pub fn storage_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Requests in the access log whose request line starts `METHOD PREFIX` (e.g. "GET",
    /// "/v2/team/app/blobs/"): the registry's own count of what clients asked for.
    pub fn requests(&self, method: &str, prefix: &str) -> usize {
        let log = std::fs::read_to_string(self.root.join("registry.log")).unwrap_or_default();
        let needle = format!("\"{method} {prefix}");
        log.lines().filter(|l| l.contains(&needle)).count()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.root.join("registry.log"), lines)
    }

    /// Writes `DIR/config.json` in Docker's format with this registry's credentials (empty
    /// `auths` for an open registry) and returns its path — for `DOCKER_CONFIG=DIR`.
    pub fn write_docker_config(&self, dir: &Path) -> PathBuf {
        let mut auths = serde_json::Map::new();
        if let Some((u, p)) = &self.creds {
            let auth = base64(format!("{u}:{p}").as_bytes());
            auths.insert(self.addr(), serde_json::json!({ "auth": auth }));
        }
        std::fs::create_dir_all(dir).expect("create docker config dir");
        let path = dir.join("config.json");
        let body = serde_json::to_string_pretty(&serde_json::json!({ "auths": auths }))
            .expect("serialize config.json");
        std::fs::write(&path, body).expect("write config.json");
        path
    }

    /// HTTP status of `GET path` (e.g. "/v2/_catalog"), with basic auth when the registry
    /// has an account (a token-auth registry answers 401 to that). None if the connection
    /// fails.
    pub fn get_status(&self, path: &str) -> Option<u16> {
        let auth = self
            .creds
            .as_ref()
            .map(|(u, p)| base64(format!("{u}:{p}").as_bytes()));
        http_status(self.port, path, auth.as_deref())
    }

    /// HTTP status of `GET path` without credentials.
    pub fn get_status_anonymous(&self, path: &str) -> Option<u16> {
        http_status(self.port, path, None)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop_child(&mut self.child);
        // TempRoot's drop removes the storage.
    }
}

/// True once GET /v2/ answers 200 (open) or 401 (auth); false if the process died or the
/// timeout passed.
fn wait_ready(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Some(200 | 401) = http_status(port, "/v2/", None) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// SIGTERM, up to 5 s to exit, then SIGKILL.
fn stop_child(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        signal(child.id() as i32, SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(child.id() as i32, SIGKILL);
        let _ = child.wait();
    }
}

/// `auth` is the config's `auth:` section, empty for an open registry.
fn write_config(root: &TempRoot, port: u16, auth: &str) {
    let mut cfg = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test-not-secret\n",
        data = root.join("data").display()
    );
    cfg.push_str(auth);
    std::fs::write(root.join("config.yml"), cfg).expect("write registry config");
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// One bcrypt htpasswd line (the registry accepts nothing else). Prefers apache2-utils'
/// htpasswd; falls back to Debian's python3 `crypt` (libxcrypt does bcrypt). Cost 4 keeps
/// each authenticated request cheap.
fn htpasswd_line(user: &str, password: &str) -> Option<String> {
    if which("htpasswd").is_some() {
        let out = output(Command::new("htpasswd").args(["-nbB", "-C", "4", user, password]));
        let text = assert_success(&out, "htpasswd");
        return Some(text.trim_end().to_string() + "\n");
    }
    let py = "import crypt,sys; print(sys.argv[1] + ':' + crypt.crypt(sys.argv[2], \
              crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))";
    if which("/usr/bin/python3").is_some() {
        let out = output(
            Command::new("/usr/bin/python3").args(["-W", "ignore", "-c", py, user, password]),
        );
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).into_owned());
        }
    }
    // Panics under KILN_TEST_REQUIRE_ALL=1, else prints the skip message.
    require(
        false,
        "htpasswd (apache2-utils) or python3 crypt with bcrypt",
    );
    None
}

/// Status code of a plain HTTP/1.0 GET to 127.0.0.1:port.
fn http_status(port: u16, path: &str, basic_auth: Option<&str>) -> Option<u16> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = basic_auth
        .map(|a| format!("Authorization: Basic {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Standard base64 with padding (for Basic auth and config.json).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
