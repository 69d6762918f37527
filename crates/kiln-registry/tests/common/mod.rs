//! A throwaway `docker-registry` (Debian's distribution v2 build) on 127.0.0.1, with its
//! storage in a temp dir and optional htpasswd Basic auth. Its access log goes to a file that
//! tests read back ([`Registry::requests`]) to see what the client actually sent. Stopped
//! (killed by its own PID) on drop.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

/// True when every fixture must be present (CI): a missing tool fails instead of skipping.
fn require_all() -> bool {
    std::env::var_os("KILN_TEST_REQUIRE_ALL").is_some_and(|v| v == "1")
}

/// Skips (None, with a message) or, under KILN_TEST_REQUIRE_ALL=1, fails.
fn missing(what: &str) -> Option<Registry> {
    assert!(
        !require_all(),
        "{what} is required (KILN_TEST_REQUIRE_ALL=1) but missing"
    );
    eprintln!("skipping: {what} is not installed");
    None
}

impl Registry {
    /// An open registry; None (test skipped) when docker-registry is not installed.
    pub fn start() -> Option<Registry> {
        Self::start_inner(None)
    }

    /// A registry requiring Basic auth for one account.
    pub fn with_auth(user: &str, password: &str) -> Option<Registry> {
        Self::start_inner(Some((user, password)))
    }

    fn start_inner(creds: Option<(&str, &str)>) -> Option<Registry> {
        if !Path::new(REGISTRY_BIN).is_file() {
            return missing(REGISTRY_BIN);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some((user, password)) = creds {
            let file = dir.path().join("htpasswd");
            // bcrypt is the only hash docker-registry accepts; cost 4 keeps requests cheap.
            let status = Command::new("htpasswd")
                .args(["-B", "-C", "4", "-b", "-c"])
                .arg(&file)
                .args([user, password])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => panic!("htpasswd failed: {s}"),
                Err(_) => return missing("htpasswd (apache2-utils)"),
            }
        }
        // The port is found by binding port 0 and releasing it, so another process may grab it
        // first: try a few.
        for _ in 0..3 {
            let port = free_port();
            write_config(dir.path(), port, creds.is_some());
            let log = File::create(dir.path().join("registry.log")).expect("create log");
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(dir.path().join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            if wait_ready(&mut child, port) {
                return Some(Registry { child, dir, port });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "docker-registry did not start; log:\n{}",
            std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A reference in this registry: "x:1" → "127.0.0.1:PORT/x:1".
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.addr())
    }

    /// Every request the registry has logged so far, oldest first.
    ///
    /// The access log line is written after the response, so a request the client has just
    /// seen answered may not be there yet: tests wait for a known last request with
    /// [`Registry::requests_until`].
    pub fn requests(&self) -> Vec<Logged> {
        let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        log.lines().filter_map(Logged::parse).collect()
    }

    /// The requests logged once one matching `last` is there (waiting up to 10 s for it).
    pub fn requests_until(&self, last: impl Fn(&Logged) -> bool) -> Vec<Logged> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all = self.requests();
            if all.iter().any(&last) || Instant::now() > deadline {
                return all;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One request from the registry's access log (Apache combined format).
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub status: u16,
}

impl Logged {
    /// `127.0.0.1 - - [date] "PATCH /v2/x/blobs/uploads/u?_state=s HTTP/1.1" 202 0 "" "kiln/0.1"`
    fn parse(line: &str) -> Option<Logged> {
        let (_, rest) = line.split_once('"')?;
        let (request, rest) = rest.split_once('"')?;
        let mut words = request.split(' ');
        let method = words.next()?.to_owned();
        let target = words.next()?.to_owned();
        if !words.next()?.starts_with("HTTP/") {
            return None;
        }
        let status = rest.split_whitespace().next()?.parse().ok()?;
        Some(Logged {
            method,
            target,
            status,
        })
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, port: u16, auth: bool) {
    let mut cfg = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test-not-secret\n",
        data = dir.join("data").display()
    );
    if auth {
        cfg.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
            dir.join("htpasswd").display()
        ));
    }
    std::fs::write(dir.join("config.yml"), cfg).expect("write registry config");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Ready once GET /v2/ answers 200 (open) or 401 (auth).
fn wait_ready(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Some(200 | 401) = http_status(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn http_status(port: u16) -> Option<u16> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
