//! Deterministic JSON and the oci-spec `Platform` key fix.
//!
//! Digests are taken over the exact bytes we write, so two writes of equal values must give equal
//! bytes. Struct field order alone does not promise that: oci-spec keeps annotations in
//! `HashMap`s, and serde_json's map type changes with its `preserve_order` feature. So every
//! document goes through a `Value` and is written with object keys sorted by their bytes, no
//! whitespace.

use serde::de::DeserializeOwned;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

/// Serializes `value` with sorted object keys and no whitespace.
pub fn to_canonical_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    write_value(&serde_json::to_value(value)?)
}

/// Writes an already-built `Value` canonically.
pub(crate) fn write_value(value: &Value) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Sorted(value))
}

struct Sorted<'a>(&'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                let mut out = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    out.serialize_entry(k, &Sorted(v))?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    out.serialize_element(&Sorted(v))?;
                }
                out.end()
            }
            other => other.serialize(s),
        }
    }
}

/// The spec spells these `os.version` / `os.features`; oci-spec 0.10's `Platform` has no serde
/// rename and uses the Rust field names. We translate at the boundary in both directions.
const PLATFORM_KEYS: [(&str, &str); 2] =
    [("os_version", "os.version"), ("os_features", "os.features")];

/// Serializes an oci-spec document (descriptor, manifest, index) canonically, with platform keys
/// spelled as the spec says.
pub(crate) fn oci_to_vec<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut v = serde_json::to_value(value)?;
    rename_platform_keys(&mut v, true);
    write_value(&v)
}

/// Parses an oci-spec document, reading spec-spelled platform keys.
pub(crate) fn oci_from_slice<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    let mut v: Value = serde_json::from_slice(bytes)?;
    rename_platform_keys(&mut v, false);
    serde_json::from_value(v)
}

fn rename_platform_keys(v: &mut Value, to_spec: bool) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(platform)) = map.get_mut("platform") {
                for (rust_name, spec_name) in PLATFORM_KEYS {
                    let (from, to) = if to_spec {
                        (rust_name, spec_name)
                    } else {
                        (spec_name, rust_name)
                    };
                    if platform.contains_key(to) {
                        continue;
                    }
                    if let Some(val) = platform.remove(from) {
                        platform.insert(to.to_owned(), val);
                    }
                }
            }
            for child in map.values_mut() {
                rename_platform_keys(child, to_spec);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|c| rename_platform_keys(c, to_spec)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{Descriptor, ImageIndex};
    use std::collections::HashMap;

    #[test]
    fn keys_are_sorted_at_every_level() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[{"y":1,"x":2}],"c":null}}"#).unwrap();
        let out = write_value(&v).unwrap();
        assert_eq!(out, br#"{"a":{"c":null,"z":[{"x":2,"y":1}]},"b":1}"#);
    }

    #[test]
    fn hashmap_annotations_serialize_identically() {
        let distinct: std::collections::BTreeSet<Vec<u8>> = (0..10)
            .map(|_| {
                let mut d = Descriptor::new(
                    "application/octet-stream".into(),
                    1,
                    crate::Digest::of(b"x").to_oci(),
                );
                let ann: HashMap<String, String> = (0..20)
                    .map(|i| (format!("k{i}"), format!("v{i}")))
                    .collect();
                d.set_annotations(Some(ann));
                oci_to_vec(&d).unwrap()
            })
            .collect();
        assert_eq!(distinct.len(), 1);
    }

    #[test]
    fn platform_os_version_uses_spec_spelling() {
        let text = r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":1,"platform":{"architecture":"amd64","os":"windows","os.version":"10.0.1","os.features":["win32k"]}}]}"#;
        let index: ImageIndex = oci_from_slice(text.as_bytes()).unwrap();
        let p = index.manifests()[0].platform().as_ref().unwrap();
        assert_eq!(p.os_version().as_deref(), Some("10.0.1"));
        let out = String::from_utf8(oci_to_vec(&index).unwrap()).unwrap();
        assert!(out.contains(r#""os.version":"10.0.1""#), "{out}");
        assert!(out.contains(r#""os.features":["win32k"]"#), "{out}");
        assert!(!out.contains("os_version"), "{out}");
    }
}
