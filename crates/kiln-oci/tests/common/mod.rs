//! Helpers shared by the integration tests: the corpus, external tools, the OCI schema
//! validator and a small deterministic PRNG.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The shared corpus: `$KILN_CORPUS`, else `../shared/corpus` beside the workspace.
pub fn corpus_dir() -> PathBuf {
    match std::env::var_os("KILN_CORPUS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/corpus"
        )),
    }
}

fn require_all() -> bool {
    std::env::var("KILN_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// True if `tool` runs. If not: fails under `KILN_TEST_REQUIRE_ALL=1`, else says the test is
/// skipped and returns false.
pub fn have_tool(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !require_all(),
            "{tool} is required (KILN_TEST_REQUIRE_ALL=1) but missing"
        );
        eprintln!("skipped: {tool} not found");
    }
    ok
}

/// True when running as root (some GNU tar checks need it to restore owners and devices).
pub fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    // Avoid a dev-dependency just for getuid: /proc/self/status has it.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

/// Runs a command, panicking with its output if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// sha256 of a file as `sha256sum` computes it (an independent check of our hashing).
pub fn sha256sum(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

/// xorshift64*: reproducible pseudo-random bytes without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Validates documents against the OCI image-spec v1.1.1 JSON schemas, as upstream's
/// validator does: the schema (draft-04, formats enforced) plus the checks upstream runs before
/// it (registered-algorithm digests, `config.Env` entries of the form `KEY=value`).
pub struct OciSchemas {
    dir: PathBuf,
}

/// The schema `id` aliases, from upstream `schema/schema.go`.
const ALIASES: &[(&str, &str)] = &[
    (
        "https://opencontainers.org/schema/image/config",
        "config-schema.json",
    ),
    (
        "https://opencontainers.org/schema/descriptor",
        "content-descriptor.json",
    ),
    (
        "https://opencontainers.org/schema/image/content-descriptor.json",
        "content-descriptor.json",
    ),
    (
        "https://opencontainers.org/schema/image/descriptor/mediaType",
        "defs-descriptor.json",
    ),
    (
        "https://opencontainers.org/schema/defs-descriptor.json",
        "defs-descriptor.json",
    ),
    (
        "https://opencontainers.org/schema/image/defs-descriptor.json",
        "defs-descriptor.json",
    ),
    ("https://opencontainers.org/schema/defs.json", "defs.json"),
    (
        "https://opencontainers.org/schema/image/defs.json",
        "defs.json",
    ),
    (
        "https://opencontainers.org/schema/image/descriptor/defs.json",
        "defs.json",
    ),
    (
        "https://opencontainers.org/schema/image/index",
        "image-index-schema.json",
    ),
    (
        "https://opencontainers.org/schema/image/layout",
        "image-layout-schema.json",
    ),
    (
        "https://opencontainers.org/schema/image/manifest",
        "image-manifest-schema.json",
    ),
];

struct FileRetriever {
    dir: PathBuf,
}

impl jsonschema::Retrieve for FileRetriever {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let full = uri.as_str();
        let base = full.split('#').next().unwrap_or(full);
        let file = ALIASES
            .iter()
            .find(|(alias, _)| *alias == base)
            .map(|(_, f)| (*f).to_owned())
            .or_else(|| base.rsplit('/').next().map(str::to_owned))
            .ok_or("no file name")?;
        let text = std::fs::read_to_string(self.dir.join(&file))
            .map_err(|e| format!("schema {file} for {full}: {e}"))?;
        Ok(serde_json::from_str(&text)?)
    }
}

impl OciSchemas {
    pub fn new() -> OciSchemas {
        let dir = corpus_dir().join("oci-image-spec-schema/schema");
        assert!(dir.is_dir(), "schema corpus missing at {}", dir.display());
        OciSchemas { dir }
    }

    fn schema_file(media_type: &str) -> &'static str {
        match media_type {
            "application/vnd.oci.descriptor.v1+json" => "content-descriptor.json",
            "application/vnd.oci.image.manifest.v1+json" => "image-manifest-schema.json",
            "application/vnd.oci.image.index.v1+json" => "image-index-schema.json",
            "application/vnd.oci.image.config.v1+json" => "config-schema.json",
            "application/vnd.oci.layout.header.v1+json" => "image-layout-schema.json",
            other => panic!("no schema for {other}"),
        }
    }

    /// Validates `bytes` as a document of `media_type`.
    pub fn validate(&self, media_type: &str, bytes: &[u8]) -> Result<(), String> {
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let file = Self::schema_file(media_type);
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(self.dir.join(file)).unwrap()).unwrap();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .should_validate_formats(true)
            .with_retriever(FileRetriever {
                dir: self.dir.clone(),
            })
            .build(&schema)
            .map_err(|e| format!("schema {file}: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        check_digests(&doc)?;
        if media_type == "application/vnd.oci.image.config.v1+json" {
            check_env(&doc)?;
        }
        Ok(())
    }
}

/// go-digest rules for the registered algorithms; others only need the grammar.
fn check_digests(v: &Value) -> Result<(), String> {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(d)) = map.get("digest") {
                check_digest(d)?;
            }
            // Go decodes a descriptor's `data` into []byte, which needs padded standard base64.
            if let (Some(Value::String(data)), true) = (map.get("data"), map.contains_key("digest"))
            {
                check_base64(data)?;
            }
            map.values().try_for_each(check_digests)
        }
        Value::Array(items) => items.iter().try_for_each(check_digests),
        _ => Ok(()),
    }
}

fn check_digest(d: &str) -> Result<(), String> {
    let (alg, hex) = d
        .split_once(':')
        .ok_or(format!("digest {d} has no algorithm"))?;
    let want = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Ok(()),
    };
    let lower_hex = hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if hex.len() != want || !lower_hex {
        return Err(format!("digest {d} is not valid {alg}"));
    }
    Ok(())
}

fn check_base64(s: &str) -> Result<(), String> {
    let body = s.trim_end_matches('=');
    let ok = s.len().is_multiple_of(4)
        && s.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "descriptor data {s:?} is not padded standard base64"
        ))
    }
}

fn check_env(doc: &Value) -> Result<(), String> {
    let Some(env) = doc.pointer("/config/Env").and_then(Value::as_array) else {
        return Ok(());
    };
    for e in env {
        let s = e.as_str().unwrap_or("");
        match s.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => return Err(format!("config.Env entry {s:?} is not KEY=value")),
        }
    }
    Ok(())
}
