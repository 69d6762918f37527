//! Tags: entries of index.json named by the `org.opencontainers.image.ref.name` annotation.
//!
//! The annotation holds whatever full name the caller passes (`docker.io/library/app:1`); the
//! store does not normalise names. Readers need no lock because index.json is only ever
//! replaced by rename; writers take the index lock and re-read the file under it, so concurrent
//! updates from several processes are never lost.

use std::collections::HashMap;
use std::fs;

use oci_spec::image::{Descriptor, ImageIndex, MediaType, ANNOTATION_REF_NAME};

use super::{io_err, Result, Store, StoreError};
use crate::digest::Digest;
use crate::json;

impl Store {
    /// The whole index.json.
    pub fn index(&self) -> Result<ImageIndex> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        json::oci_from_slice(&bytes).map_err(|source| StoreError::Json {
            what: "index.json".into(),
            source,
        })
    }

    /// Every tagged entry, sorted by name.
    pub fn tags(&self) -> Result<Vec<(String, Descriptor)>> {
        let mut out: Vec<(String, Descriptor)> = self
            .index()?
            .manifests()
            .iter()
            .filter_map(|d| ref_name(d).map(|n| (n.to_owned(), d.clone())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The descriptor tagged `name`, if any.
    pub fn resolve(&self, name: &str) -> Result<Option<Descriptor>> {
        Ok(self
            .index()?
            .manifests()
            .iter()
            .find(|d| ref_name(d) == Some(name))
            .cloned())
    }

    /// Points tag `name` at `descriptor`, replacing any entry of that name. The descriptor's
    /// blob must be in the store. Its ref-name annotation is set to `name`.
    pub fn set_tag(&self, name: &str, descriptor: &Descriptor) -> Result<()> {
        if name.is_empty() {
            return Err(StoreError::InvalidTagName(name.to_owned()));
        }
        let digest = Digest::from_oci(descriptor.digest())?;
        if !self.has_blob(&digest) {
            return Err(StoreError::MissingTagTarget {
                name: name.to_owned(),
                digest,
            });
        }
        let mut entry = descriptor.clone();
        let mut annotations = entry.annotations().clone().unwrap_or_default();
        annotations.insert(ANNOTATION_REF_NAME.to_owned(), name.to_owned());
        entry.set_annotations(Some(annotations));
        self.update_index(|manifests| {
            manifests.retain(|d| ref_name(d) != Some(name));
            manifests.push(entry);
        })
    }

    /// Removes tag `name`; false if there was no such tag. The image's blobs stay until gc.
    pub fn remove_tag(&self, name: &str) -> Result<bool> {
        let mut removed = false;
        self.update_index(|manifests| {
            let before = manifests.len();
            manifests.retain(|d| ref_name(d) != Some(name));
            removed = manifests.len() != before;
        })?;
        Ok(removed)
    }

    /// Read-modify-write of index.json under the index lock. The file is rewritten even when
    /// nothing changed, which is harmless and keeps it in canonical form.
    fn update_index(&self, change: impl FnOnce(&mut Vec<Descriptor>)) -> Result<()> {
        let _guard = self.lock_index()?;
        let mut index = self.index()?;
        let mut manifests = index.manifests().clone();
        change(&mut manifests);
        index.set_manifests(manifests);
        self.write_index(index)
    }

    /// Creates an empty index.json if there is none. Called with the index lock held.
    pub(super) fn init_index(&self) -> Result<()> {
        if self.index_path().exists() {
            // Parse it, so a damaged layout is reported at open rather than at first use.
            self.index().map(drop)
        } else {
            self.write_index(ImageIndex::default())
        }
    }

    fn write_index(&self, mut index: ImageIndex) -> Result<()> {
        let mut manifests = index.manifests().clone();
        manifests.sort_by(entry_order);
        index.set_manifests(manifests);
        index.set_media_type(Some(MediaType::ImageIndex));
        let bytes = json::oci_to_vec(&index).map_err(|source| StoreError::Json {
            what: "index.json".into(),
            source,
        })?;
        self.write_atomic(&self.index_path(), &bytes)
    }
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a: &HashMap<String, String>| a.get(ANNOTATION_REF_NAME))
        .map(String::as_str)
}

/// Sorted by tag name, then digest, so equal indexes are equal bytes whatever the update order.
/// Untagged entries (another tool's) sort first.
fn entry_order(a: &Descriptor, b: &Descriptor) -> std::cmp::Ordering {
    (ref_name(a), a.digest().to_string()).cmp(&(ref_name(b), b.digest().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_desc(store: &Store, body: &[u8]) -> Descriptor {
        let (d, n) = store.put_blob(body).unwrap();
        Descriptor::new(MediaType::ImageManifest, n, d.to_oci())
    }

    #[test]
    fn set_replace_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = manifest_desc(&store, b"{\"a\":1}");
        let b = manifest_desc(&store, b"{\"b\":1}");
        store.set_tag("docker.io/library/app:1", &a).unwrap();
        store.set_tag("docker.io/library/app:2", &a).unwrap();
        store.set_tag("docker.io/library/app:1", &b).unwrap();

        let tags = store.tags().unwrap();
        let names: Vec<&str> = tags.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["docker.io/library/app:1", "docker.io/library/app:2"]
        );
        let got = store.resolve("docker.io/library/app:1").unwrap().unwrap();
        assert_eq!(got.digest(), b.digest());
        assert_eq!(ref_name(&got), Some("docker.io/library/app:1"));

        assert!(store.remove_tag("docker.io/library/app:2").unwrap());
        assert!(!store.remove_tag("docker.io/library/app:2").unwrap());
        assert_eq!(store.tags().unwrap().len(), 1);
        assert!(store.resolve("nope").unwrap().is_none());
    }

    #[test]
    fn tag_must_point_at_a_stored_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ghost = Descriptor::new(MediaType::ImageManifest, 2, Digest::of(b"{}").to_oci());
        assert!(matches!(
            store.set_tag("x", &ghost),
            Err(StoreError::MissingTagTarget { .. })
        ));
        assert!(matches!(
            store.set_tag("", &ghost),
            Err(StoreError::InvalidTagName(_))
        ));
    }

    #[test]
    fn index_bytes_do_not_depend_on_update_order() {
        let bytes_after = |order: &[&str]| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let d = manifest_desc(&store, b"{}");
            for name in order {
                store.set_tag(name, &d).unwrap();
            }
            fs::read(store.index_path()).unwrap()
        };
        assert_eq!(bytes_after(&["a", "b", "c"]), bytes_after(&["c", "a", "b"]));
    }
}
