//! Image names in the two spellings archives use: full (`docker.io/library/app:1`, what
//! index.json annotations and kiln's store hold) and docker's familiar form (`app:1`, what
//! `manifest.json` RepoTags hold and docker 20.10 expects).
//!
//! The parsing itself is [`crate::reference`]; these are the spellings archives need.

use super::{ArchiveError, Result};
use crate::reference::Reference;

fn parse(name: &str) -> Result<Reference> {
    Reference::parse(name).map_err(|e| ArchiveError::InvalidName {
        name: name.chars().take(200).collect(),
        reason: e.reason,
    })
}

/// Normalises a name as docker does: `app` → `docker.io/library/app:latest`,
/// `me/app:1` → `docker.io/me/app:1`, `localhost:5000/x` → `localhost:5000/x:latest`.
pub fn normalize_name(name: &str) -> Result<String> {
    parse(name).map(|r| r.to_string())
}

/// docker's short form of a tagged name, as `manifest.json` RepoTags hold it:
/// `docker.io/library/app:1` → `app:1`, `docker.io/me/app:1` → `me/app:1`, other registries
/// unchanged. `None` for a name without a tag (RepoTags cannot hold digests).
pub fn familiar_name(name: &str) -> Option<String> {
    let r = parse(name).ok()?;
    Some(format!("{}:{}", r.familiar_repository(), r.tag?))
}

/// docker's short repository and the tag, for the `repositories` file.
pub(crate) fn familiar_repo_and_tag(name: &str) -> Option<(String, String)> {
    let r = parse(name).ok()?;
    Some((r.familiar_repository(), r.tag?))
}

/// The tag of a name (`1` for `docker.io/library/app:1`), the value OCI tools expect in
/// `org.opencontainers.image.ref.name`.
pub fn tag_of(name: &str) -> Option<String> {
    parse(name).ok()?.tag
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
