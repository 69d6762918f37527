//! Image names in the two spellings archives use: full (`docker.io/library/app:1`, what
//! index.json annotations and kiln's store hold) and docker's familiar form (`app:1`, what
//! `manifest.json` RepoTags hold and docker 20.10 expects).
//!
//! kiln-build has the full reference parser; this crate sits below it, so here is just what
//! archives need: normalise, shorten, and take the tag.

use super::{ArchiveError, Result};

const DOCKER_HUB: &str = "docker.io";

/// A name split into its parts; `tag` or `digest` (or both) is set.
struct Name<'a> {
    domain: &'a str,
    path: String,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

fn parse(name: &str) -> Result<Name<'_>> {
    let bad = |reason| ArchiveError::InvalidName {
        name: name.chars().take(200).collect(),
        reason,
    };
    if name.is_empty() || name.len() > 1024 {
        return Err(bad("must be 1 to 1024 characters"));
    }
    let (rest, digest) = match name.split_once('@') {
        Some((r, d)) => {
            if d.parse::<crate::Digest>().is_err() {
                return Err(bad("the digest must be sha256: and 64 hex digits"));
            }
            (r, Some(d))
        }
        None => (name, None),
    };
    // A colon after the last slash starts the tag; one before it is a registry port.
    let (repo, tag) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        if !valid_tag(t) {
            return Err(bad(
                "a tag is 1-128 of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
    }
    let (domain, path) = match repo.split_once('/') {
        Some((first, p)) if first.contains(['.', ':']) || first == "localhost" => (first, p),
        _ => (DOCKER_HUB, repo),
    };
    let domain = if domain == "index.docker.io" {
        DOCKER_HUB
    } else {
        domain
    };
    if domain.is_empty()
        || !domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    {
        return Err(bad("invalid registry host"));
    }
    if path.is_empty() || !path.split('/').all(valid_component) {
        return Err(bad(
            "a repository is lowercase letters, digits and separators (. _ __ -), split by /",
        ));
    }
    let path = if domain == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_owned()
    };
    let tag = if tag.is_none() && digest.is_none() {
        Some("latest")
    } else {
        tag
    };
    Ok(Name {
        domain,
        path,
        tag,
        digest,
    })
}

fn valid_tag(t: &str) -> bool {
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && t.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|s| s == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

impl Name<'_> {
    fn full(&self) -> String {
        let mut s = format!("{}/{}", self.domain, self.path);
        if let Some(t) = self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    fn familiar_repo(&self) -> String {
        if self.domain != DOCKER_HUB {
            return format!("{}/{}", self.domain, self.path);
        }
        match self.path.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest.to_owned(),
            _ => self.path.clone(),
        }
    }
}

/// Normalises a name as docker does: `app` → `docker.io/library/app:latest`,
/// `me/app:1` → `docker.io/me/app:1`, `localhost:5000/x` → `localhost:5000/x:latest`.
pub fn normalize_name(name: &str) -> Result<String> {
    parse(name).map(|n| n.full())
}

/// docker's short form of a tagged name, as `manifest.json` RepoTags hold it:
/// `docker.io/library/app:1` → `app:1`, `docker.io/me/app:1` → `me/app:1`, other registries
/// unchanged. `None` for a name without a tag (RepoTags cannot hold digests).
pub fn familiar_name(name: &str) -> Option<String> {
    let n = parse(name).ok()?;
    Some(format!("{}:{}", n.familiar_repo(), n.tag?))
}

/// docker's short repository and the tag, for the `repositories` file.
pub(crate) fn familiar_repo_and_tag(name: &str) -> Option<(String, String)> {
    let n = parse(name).ok()?;
    Some((n.familiar_repo(), n.tag?.to_owned()))
}

/// The tag of a name (`1` for `docker.io/library/app:1`), the value OCI tools expect in
/// `org.opencontainers.image.ref.name`.
pub fn tag_of(name: &str) -> Option<String> {
    parse(name).ok()?.tag.map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        for (input, want) in [
            ("app", "docker.io/library/app:latest"),
            ("app:1", "docker.io/library/app:1"),
            ("me/app:1", "docker.io/me/app:1"),
            ("docker.io/app:1", "docker.io/library/app:1"),
            ("index.docker.io/library/app:1", "docker.io/library/app:1"),
            ("localhost/x", "localhost/x:latest"),
            ("localhost:5000/x:2", "localhost:5000/x:2"),
            ("quay.io/a/b/c:v1.0", "quay.io/a/b/c:v1.0"),
        ] {
            assert_eq!(normalize_name(input).unwrap(), want, "{input}");
        }
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize_name(&format!("app@{d}")).unwrap(),
            format!("docker.io/library/app@{d}")
        );
        for bad in [
            "",
            "App:1",
            "../../etc/passwd",
            "a/../b",
            "app:",
            "app:-x",
            "a//b",
            "x@sha256:1",
        ] {
            assert!(normalize_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn familiar_forms() {
        assert_eq!(familiar_name("docker.io/library/app:1").unwrap(), "app:1");
        assert_eq!(familiar_name("docker.io/me/app:1").unwrap(), "me/app:1");
        assert_eq!(
            familiar_name("docker.io/library/a/b:1").unwrap(),
            "library/a/b:1"
        );
        assert_eq!(
            familiar_name("localhost:5000/x:2").unwrap(),
            "localhost:5000/x:2"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(familiar_name(&format!("docker.io/library/app@{d}")), None);
        assert_eq!(tag_of("localhost:5000/x:2").as_deref(), Some("2"));
        assert_eq!(
            familiar_repo_and_tag("docker.io/library/app:1"),
            Some(("app".into(), "1".into()))
        );
    }
}
