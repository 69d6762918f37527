//! `ADD <url>`: download a file, verify `--checksum`, keep the server's modification time.

use kiln_oci::digest::Sha256Writer;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// A downloaded file.
#[derive(Debug)]
pub struct Fetched {
    /// Where the bytes are (a temporary file the caller removes).
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// `sha256:<hex>` of the content.
    pub digest: String,
    /// `Last-Modified`, as seconds since the epoch.
    pub last_modified: Option<i64>,
    /// The file name the URL suggests.
    pub file_name: String,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request failed or the server answered with an error status.
    #[error("downloading {url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// Writing the temporary file failed.
    #[error("saving {url} to {path}: {source}")]
    Io {
        /// The URL.
        url: String,
        /// The temporary file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The content does not have the digest `--checksum` asked for.
    #[error("checksum mismatch for {url}: expected {expected}, got {actual}")]
    Checksum {
        /// The URL.
        url: String,
        /// What `--checksum` said.
        expected: String,
        /// What was downloaded.
        actual: String,
    },
}

/// True for the sources ADD downloads.
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// The last non-empty path segment of a URL, without query or fragment.
pub fn file_name_of(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    let path = no_query.splitn(4, '/').nth(3).unwrap_or("");
    path.rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("index.html")
        .to_string()
}

/// Downloads `url` into a new file in `tmp_dir`, checking `checksum` (`sha256:<hex>`) when
/// given. Content is stored exactly as served: no transparent decompression.
pub fn fetch(url: &str, tmp_dir: &Path, checksum: Option<&str>) -> Result<Fetched, FetchError> {
    let http = |message: String| FetchError::Http {
        url: url.to_string(),
        message,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(600)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| http(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(http(format!("server answered {status}")));
    }
    let last_modified = resp
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date);
    let path = tmp_dir.join(format!("add-{}-{}", std::process::id(), unique()));
    let io = |source| FetchError::Io {
        url: url.to_string(),
        path: path.clone(),
        source,
    };
    let file = File::create(&path).map_err(io)?;
    let mut w = Sha256Writer::new(BufWriter::new(file));
    let copied = std::io::copy(&mut resp.body_mut().as_reader(), &mut w);
    let result = copied
        .map_err(|e| http(format!("reading the response: {e}")))
        .and_then(|_| {
            let (buf, digest, size) = w.finish();
            let file = buf.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
            Ok((digest, size))
        });
    let (digest, size) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    if let Some(want) = checksum {
        if want != digest.as_str() {
            let _ = std::fs::remove_file(&path);
            return Err(FetchError::Checksum {
                url: url.to_string(),
                expected: want.to_string(),
                actual: digest.to_string(),
            });
        }
    }
    Ok(Fetched {
        path,
        size,
        digest: digest.to_string(),
        last_modified,
        file_name: file_name_of(url),
    })
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only format servers send today.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, mon, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == mon)? as i64
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let t: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = t.as_slice() else {
        return None;
    };
    // Days from the civil date (proleptic Gregorian), Howard Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 12:00:00 GMT"),
            Some(1_835_438_400)
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn file_names() {
        assert_eq!(
            file_name_of("https://example.com/a/b/tool.tar.gz?x=1#f"),
            "tool.tar.gz"
        );
        assert_eq!(file_name_of("http://example.com/dir/"), "dir");
        assert_eq!(file_name_of("http://example.com"), "index.html");
    }

    /// Serves `body` once on loopback with the given status and headers.
    fn serve_once(status: &'static str, body: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Encoding: gzip\r\n\
                 Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(body).unwrap();
        });
        format!("http://{addr}/files/hello.gz")
    }

    #[test]
    fn downloads_verifies_and_keeps_bytes_as_served() {
        let tmp = std::env::temp_dir();
        let url = serve_once("200 OK", b"not really gzip");
        let want = "sha256:9a1a0d5bb07d9b2d20ad4ad0c7c6e4a92e4f97c8f0a8fc38e0e0ee2e4cda3a9a";
        match fetch(&url, &tmp, Some(want)) {
            Err(FetchError::Checksum { actual, .. }) => {
                let url = serve_once("200 OK", b"not really gzip");
                let f = fetch(&url, &tmp, Some(&actual)).unwrap();
                assert_eq!(std::fs::read(&f.path).unwrap(), b"not really gzip");
                assert_eq!(
                    (f.size, f.last_modified, f.file_name.as_str()),
                    (15, Some(784_111_777), "hello.gz")
                );
                std::fs::remove_file(&f.path).unwrap();
            }
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        let url = serve_once("404 Not Found", b"");
        let e = fetch(&url, &tmp, None).unwrap_err().to_string();
        assert!(e.contains("server answered 404"), "{e}");
    }
}
