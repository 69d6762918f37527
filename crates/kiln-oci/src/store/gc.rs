//! Garbage collection: delete blobs nothing reaches.
//!
//! Roots are the index.json entries and the caller's `extra_roots` (build cache records, say).
//! From a manifest we reach its config, layers and subject; from an index, its manifests. A
//! reachable layer also keeps the compressed blobs the cache maps it to.

use std::collections::{BTreeSet, HashMap};
use std::fs;

use serde_json::Value;

use super::{temp, Result, Store, StoreError, STALE_TEMP_AGE};
use crate::digest::Digest;
use crate::image::media_type;

/// Manifests and indexes are small; anything bigger is not followed as one.
const MAX_MANIFEST: u64 = 16 << 20;

/// What [`Store::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs deleted, sorted.
    pub removed_blobs: Vec<Digest>,
    /// Their total size.
    pub removed_bytes: u64,
    /// Blobs kept.
    pub kept_blobs: usize,
    /// Stale temp files of dead writers removed.
    pub removed_temp_files: usize,
    /// Compressed-cache entries dropped because their compressed blob was gone.
    pub removed_cache_entries: usize,
    /// Blob-origin entries dropped because their blob was gone.
    pub removed_origin_entries: usize,
}

impl Store {
    /// Deletes every blob not reachable from index.json, `extra_roots` or the compressed cache
    /// of a reachable layer, plus stale temp files and the cache entries of deleted blobs.
    ///
    /// Takes the store lock exclusively (waiting for builds holding it shared) and the index
    /// lock, so no tag can appear mid-way. A reachable manifest that does not parse stops gc
    /// before anything is deleted: not knowing what it references, we cannot know what is safe.
    pub fn gc(&self, extra_roots: &[Digest]) -> Result<GcReport> {
        let _store = self.lock_exclusive()?;
        let _index = self.lock_index()?;
        let reachable = self.mark(extra_roots)?;
        let mut report = GcReport::default();
        for digest in self.blobs()? {
            if reachable.contains(&digest) {
                report.kept_blobs += 1;
                continue;
            }
            let path = self.blob_path(&digest);
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(&path) {
                Ok(()) => {
                    report.removed_bytes += size;
                    report.removed_blobs.push(digest);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(super::io_err("remove", &path)(e)),
            }
        }
        super::sync_dir(&self.blobs_dir())?;
        report.removed_cache_entries = self.sweep_cache()?;
        report.removed_origin_entries = self.sweep_origins()?;
        report.removed_temp_files = temp::remove_stale(&self.tmp_dir(), STALE_TEMP_AGE)?;
        Ok(report)
    }

    fn mark(&self, extra_roots: &[Digest]) -> Result<BTreeSet<Digest>> {
        let mut queue: Vec<(Digest, Option<String>)> = Vec::new();
        for d in self.index()?.manifests() {
            // A non-sha256 entry (another tool's) cannot name a blob we store.
            if let Ok(digest) = Digest::from_oci(d.digest()) {
                queue.push((digest, Some(d.media_type().to_string())));
            }
        }
        queue.extend(extra_roots.iter().map(|d| (d.clone(), None)));

        let compressed = self.compressed_by_layer()?;
        let mut seen = BTreeSet::new();
        while let Some((digest, mt)) = queue.pop() {
            if !seen.insert(digest.clone()) || !self.has_blob(&digest) {
                continue;
            }
            if let Some(also) = compressed.get(&digest) {
                queue.extend(also.iter().map(|d| (d.clone(), None)));
            }
            queue.extend(self.children(&digest, mt.as_deref())?);
        }
        Ok(seen)
    }

    /// Blobs a manifest or index references; nothing for other blobs.
    fn children(&self, digest: &Digest, mt: Option<&str>) -> Result<Vec<(Digest, Option<String>)>> {
        let follow = match mt {
            Some(mt) => is_manifest_type(mt),
            // Unknown type (an extra root): follow it if it looks like a JSON document.
            None => self.looks_like_json(digest),
        };
        if !follow {
            return Ok(Vec::new());
        }
        let bytes = match self.read_blob(digest, MAX_MANIFEST) {
            Ok(b) => b,
            Err(StoreError::BlobTooLarge { .. }) if mt.is_none() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let doc: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) if mt.is_none() => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Json {
                    what: format!("manifest {digest}"),
                    source,
                })
            }
        };
        Ok(referenced(&doc))
    }

    fn looks_like_json(&self, digest: &Digest) -> bool {
        use std::io::Read;
        let mut first = [0u8; 1];
        self.open_blob(digest)
            .and_then(|mut f| {
                f.read(&mut first)
                    .map_err(super::io_err("read", &self.blob_path(digest)))
            })
            .is_ok_and(|n| n == 1 && first[0] == b'{')
    }

    /// diffID -> compressed blobs, from the cache.
    fn compressed_by_layer(&self) -> Result<HashMap<Digest, Vec<Digest>>> {
        let mut map: HashMap<Digest, Vec<Digest>> = HashMap::new();
        for e in self.cache_entries()? {
            if let (Some(k), Some(v)) = (e.key, e.value) {
                map.entry(k).or_default().push(v);
            }
        }
        Ok(map)
    }

    /// Drops cache entries whose compressed blob is gone (or that do not parse). An entry
    /// whose uncompressed layer is absent stays: it still names the layer's compressed form.
    fn sweep_cache(&self) -> Result<usize> {
        let mut removed = 0;
        for e in self.cache_entries()? {
            let live = e.key.is_some() && e.value.as_ref().is_some_and(|v| self.has_blob(v));
            if !live && fs::remove_file(&e.path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn is_manifest_type(mt: &str) -> bool {
    matches!(
        mt,
        media_type::OCI_MANIFEST
            | media_type::OCI_INDEX
            | media_type::DOCKER_MANIFEST
            | media_type::DOCKER_MANIFEST_LIST
    )
}

/// The descriptors of a manifest (`config`, `layers`, `subject`, artifact `blobs`) or index
/// (`manifests`), read loosely so that any manifest-like document is understood.
fn referenced(doc: &Value) -> Vec<(Digest, Option<String>)> {
    let mut descs: Vec<&Value> = Vec::new();
    for key in ["config", "subject"] {
        descs.extend(doc.get(key));
    }
    for key in ["layers", "manifests", "blobs"] {
        if let Some(Value::Array(items)) = doc.get(key) {
            descs.extend(items);
        }
    }
    descs
        .into_iter()
        .filter_map(|d| {
            let digest = d.get("digest")?.as_str()?.parse().ok()?;
            let mt = d
                .get("mediaType")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Some((digest, mt))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referenced_reads_manifests_and_indexes() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let doc = serde_json::json!({
            "config": {"mediaType": media_type::OCI_CONFIG, "digest": a.to_string(), "size": 1},
            "layers": [{"mediaType": media_type::OCI_LAYER, "digest": b.to_string(), "size": 1},
                       {"mediaType": media_type::OCI_LAYER, "digest": "sha512:zz", "size": 1}],
        });
        let got: Vec<Digest> = referenced(&doc).into_iter().map(|x| x.0).collect();
        assert_eq!(got, vec![a.clone(), b]);
        let idx = serde_json::json!({"manifests": [{"mediaType": media_type::OCI_MANIFEST, "digest": a.to_string(), "size": 1}]});
        assert_eq!(
            referenced(&idx)[0].1.as_deref(),
            Some(media_type::OCI_MANIFEST)
        );
    }
}
