//! Image references, normalised as docker does: `busybox` is
//! `docker.io/library/busybox:latest`, `localhost:5000/app` is `localhost:5000/app:latest`.

use std::fmt;

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host (with port), e.g. `docker.io`, `localhost:5000`.
    pub domain: String,
    /// Repository path, e.g. `library/busybox`.
    pub path: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `sha256:...` digest, when pinned.
    pub digest: Option<String>,
}

/// Why a reference is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference format {input:?}: {reason}")]
pub struct ReferenceError {
    /// The text given.
    pub input: String,
    /// What is wrong.
    pub reason: String,
}

const DEFAULT_DOMAIN: &str = "docker.io";

impl Reference {
    /// Parses and normalises `s`.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let bad = |reason: &str| ReferenceError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty reference"));
        }
        if s.len() > 4096 {
            return Err(bad("too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                check_digest(d).map_err(|r| bad(&r))?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is the part after the last ':' if no '/' follows it (so `host:5000/x` is not a tag).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => {
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(bad(
                    "the tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
                ));
            }
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        // docker's old name for Docker Hub.
        let domain = if domain == "index.docker.io" {
            DEFAULT_DOMAIN.to_string()
        } else {
            domain
        };
        if !valid_domain(&domain) {
            return Err(bad("invalid registry host"));
        }
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        if path.is_empty() || !path.split('/').all(valid_component) {
            return Err(bad("repository names are lowercase letters, digits and separators (. _ __ -), split by /"));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path` without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The short form docker prints: `busybox:latest`, `localhost:5000/app:1`.
    pub fn familiar(&self) -> String {
        let repo = self.familiar_repository();
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{repo}:{t}"),
            (None, Some(d)) => format!("{repo}@{d}"),
            (None, None) => repo,
        }
    }

    /// The repository in docker's short form (`busybox`, `me/app`, `localhost:5000/app`).
    pub fn familiar_repository(&self) -> String {
        if self.domain != DEFAULT_DOMAIN {
            return self.repository();
        }
        match self.path.strip_prefix("library/") {
            // `library/a/b` keeps its prefix: without it, it would read as user `a`.
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => self.path.clone(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn valid_tag(t: &str) -> bool {
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && t.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = !host.is_empty()
        && (host.split('.').all(|l| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        }) || (host.starts_with('[') && host.ends_with(']')));
    host_ok
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    if c.is_empty() || c.len() > 255 {
        return false;
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn check_digest(d: &str) -> Result<(), String> {
    let (alg, hex) = d
        .split_once(':')
        .ok_or("a digest looks like sha256:<64 hex digits>")?;
    let want = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(format!("unsupported digest algorithm {alg:?}")),
    };
    if hex.len() != want || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("a {alg} digest has {want} lowercase hex digits"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("me/app:v1"), "docker.io/me/app:v1");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("localhost:5000/a/b:c"), "localhost:5000/a/b:c");
        assert_eq!(norm("127.0.0.1:5000/x"), "127.0.0.1:5000/x:latest");
        assert_eq!(norm("quay.io/org/img"), "quay.io/org/img:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            norm(&format!("alpine@{d}")),
            format!("docker.io/library/alpine@{d}")
        );
        assert_eq!(
            norm(&format!("alpine:3@{d}")),
            format!("docker.io/library/alpine:3@{d}")
        );
        assert_eq!(
            norm("a__b-c---d/e.f_g"),
            "docker.io/a__b-c---d/e.f_g:latest"
        );
        assert!(
            Reference::parse("a_b.c/x").is_err(),
            "a first component with a dot is a host, and hosts have no _"
        );
    }

    #[test]
    fn familiar_forms() {
        assert_eq!(
            Reference::parse("busybox").unwrap().familiar(),
            "busybox:latest"
        );
        assert_eq!(
            Reference::parse("docker.io/library/app:1")
                .unwrap()
                .familiar(),
            "app:1"
        );
        assert_eq!(
            Reference::parse("me/app").unwrap().familiar_repository(),
            "me/app"
        );
        assert_eq!(
            Reference::parse("localhost:5000/app:2").unwrap().familiar(),
            "localhost:5000/app:2"
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "App",
            "app:",
            "app:-x",
            "app:.x",
            "a//b",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "app@sha256:12",
            "app@md5:00",
            "host:port/app",
            "a b",
            ":tag",
            "app:t@",
            &format!("app:{}", "t".repeat(129)),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            Reference::parse("MyApp").unwrap_err().to_string(),
            "invalid reference format \"MyApp\": repository name must be lowercase"
        );
    }
}
