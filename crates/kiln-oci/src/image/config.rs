//! The image config, with Docker's field names and extensions.
//!
//! oci-spec's `ImageConfiguration` drops Docker fields (`Healthcheck`, `OnBuild`, `Shell`, ...)
//! and keeps maps in `HashMap`s, so kiln has its own: every map is a `BTreeMap`, every optional
//! field stays absent when unset (Go's `omitempty`), and fields we do not model land in `extra`
//! so a base image's config survives being read and written back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::Digest;

/// Fields a struct does not model, kept as-is.
pub type Extra = BTreeMap<String, Value>;

/// The value of `ExposedPorts` and `Volumes` entries, written `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// An image config (`application/vnd.oci.image.config.v1+json`, or Docker's
/// `application/vnd.docker.container.image.v1+json`, which has the same shape).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// RFC 3339 creation time, kept as text so the bytes we read are the bytes we write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Who made the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture (`amd64`, `arm64`, ...). Required by the spec.
    #[serde(default)]
    pub architecture: String,
    /// Operating system (`linux`). Required by the spec.
    #[serde(default)]
    pub os: String,
    /// OS version (Windows images).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required OS features (Windows images).
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    /// CPU variant (`v8` for arm64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Defaults for containers run from the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    /// The layers' diffIDs, bottom first.
    #[serde(default)]
    pub rootfs: RootFs,
    /// One entry per build step, including steps that made no layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Top-level fields not modelled above (`container_config`, `docker_version`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// The `config` object: how to run a container from the image. Field names are Docker's.
///
/// `Entrypoint` and `Cmd` distinguish unset from empty: `None` is omitted from the JSON (and a
/// `null` in input reads as `None`), while `Some(vec![])` is written `[]`, which is what
/// `ENTRYPOINT []` means: explicitly cleared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `USER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `EXPOSE`, as `"80/tcp": {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Empty>>,
    /// `ENV`, as `KEY=value` strings in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// `ENTRYPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `VOLUME`, as `"/data": {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Empty>>,
    /// `WORKDIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `LABEL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `STOPSIGNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Windows-only: the command line is already escaped. Omitted when false, as Docker does.
    #[serde(default, skip_serializing_if = "is_false")]
    pub args_escaped: bool,
    /// `HEALTHCHECK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    /// `ONBUILD` triggers, as their instruction text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    /// `SHELL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// Fields not modelled above (`Hostname`, `Tty`, `Image`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `HEALTHCHECK`. Durations are nanoseconds, as Go's `time.Duration` serializes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    /// Time between checks, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    /// Time before a check is considered hung, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Start-up grace period, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    /// Time between checks during the start period, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    /// Consecutive failures before unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

/// `rootfs`: the layers by diffID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// sha256 of each uncompressed layer, bottom first.
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> RootFs {
        RootFs {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// One `history` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction, as Docker shows it in `docker history`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step made no layer (metadata-only instructions). Omitted when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub empty_layer: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ImageConfig {
    /// A config for `os`/`architecture` with no layers.
    pub fn new(os: &str, architecture: &str) -> ImageConfig {
        ImageConfig {
            os: os.into(),
            architecture: architecture.into(),
            ..ImageConfig::default()
        }
    }

    /// The deterministic JSON encoding: sorted keys, no whitespace. Equal values give equal
    /// bytes, so equal configs get equal digests.
    pub fn to_vec(&self) -> serde_json::Result<Vec<u8>> {
        crate::json::to_canonical_vec(self)
    }

    /// Parses config JSON.
    pub fn from_slice(bytes: &[u8]) -> serde_json::Result<ImageConfig> {
        serde_json::from_slice(bytes)
    }

    /// The `config` object, created empty if absent.
    pub fn config_mut(&mut self) -> &mut ContainerConfig {
        self.config.get_or_insert_with(ContainerConfig::default)
    }

    /// Appends a layer: its diffID and a history entry.
    pub fn push_layer(&mut self, diff_id: Digest, history: History) {
        self.rootfs.diff_ids.push(diff_id);
        self.history.push(History {
            empty_layer: false,
            ..history
        });
    }

    /// Appends a history entry for a step that made no layer.
    pub fn push_empty_layer(&mut self, history: History) {
        self.history.push(History {
            empty_layer: true,
            ..history
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageConfig {
        let mut c = ImageConfig::new("linux", "amd64");
        c.created = Some("2024-01-02T03:04:05Z".into());
        let cc = c.config_mut();
        cc.env = Some(vec!["PATH=/usr/bin".into(), "A=1".into()]);
        cc.cmd = Some(vec!["sh".into()]);
        cc.exposed_ports = Some(
            (0..20)
                .map(|p| (format!("{}/tcp", 8000 + p), Empty {}))
                .collect(),
        );
        cc.labels = Some(
            (0..20)
                .map(|i| (format!("l{i}"), format!("v{i}")))
                .collect(),
        );
        c.push_layer(Digest::of(b"l1"), History::default());
        c
    }

    #[test]
    fn same_value_same_bytes() {
        let distinct: std::collections::BTreeSet<Vec<u8>> =
            (0..10).map(|_| sample().to_vec().unwrap()).collect();
        assert_eq!(distinct.len(), 1);
    }

    #[test]
    fn entrypoint_unset_and_empty_differ() {
        let mut c = ContainerConfig::default();
        assert_eq!(serde_json::to_string(&c).unwrap(), "{}");
        c.entrypoint = Some(vec![]);
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"Entrypoint":[]}"#);
        let back: ContainerConfig =
            serde_json::from_str(r#"{"Entrypoint":null,"Cmd":[]}"#).unwrap();
        assert_eq!(back.entrypoint, None);
        assert_eq!(back.cmd, Some(vec![]));
    }

    #[test]
    fn maps_serialize_as_docker_writes_them() {
        let text = String::from_utf8(sample().to_vec().unwrap()).unwrap();
        assert!(text.contains(r#""8000/tcp":{}"#), "{text}");
        assert!(text.contains(r#""rootfs":{"diff_ids":["sha256:"#), "{text}");
        assert!(text.contains(r#""type":"layers""#), "{text}");
        assert!(!text.contains("empty_layer"), "{text}");
    }
}
