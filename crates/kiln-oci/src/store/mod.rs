//! The content store: an OCI image layout on disk, plus kiln's temp, cache and lock files.
//!
//! ```text
//! ROOT/
//!   oci-layout              {"imageLayoutVersion":"1.0.0"}
//!   index.json              tags, as org.opencontainers.image.ref.name annotations
//!   blobs/sha256/<hex>      content, only ever complete (renamed in from tmp/)
//!   tmp/                    writes in progress; each file is flocked by its writer
//!   cache/compressed/       diffID + algorithm -> compressed blob digest and size
//!   cache/origins/          blob -> registry repositories it was pulled from or pushed to
//!   locks/store, locks/index
//! ```
//!
//! Anything an OCI tool does not know (tmp/, cache/, locks/) sits beside the layout, which the
//! spec allows, so `skopeo inspect oci:ROOT:TAG` reads the store directly.
//!
//! Crash safety rests on one rule: every file is written under `tmp/`, fsynced, and renamed into
//! place, then its directory is fsynced. A process killed at any point leaves only temp files,
//! which the next [`Store::open`] or [`Store::gc`] removes once no live process holds them.

mod blob;
mod cache;
mod gc;
mod index;
mod lock;
mod origins;
mod temp;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::digest::{Digest, DigestError};

pub use blob::BlobWriter;
pub use gc::GcReport;
pub use lock::{LockMode, StoreLock};
pub use origins::MAX_ORIGINS;

const OCI_LAYOUT_FILE: &str = "oci-layout";
const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const INDEX_FILE: &str = "index.json";

/// Top-level names the store itself creates, or that an OCI layout may hold. A directory holding
/// anything else and no `oci-layout` is not taken over.
const KNOWN_ENTRIES: &[&str] = &[
    OCI_LAYOUT_FILE,
    INDEX_FILE,
    "blobs",
    "tmp",
    "cache",
    "locks",
    "snapshots",
];

/// Temp files younger than this are never removed as stale: it covers the moment between
/// creating a temp file and taking its lock.
const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// Errors from the content store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing ("create", "rename", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The root exists but is not (and cannot become) an OCI image layout.
    #[error("{} is not an OCI image layout: {reason}", path.display())]
    InvalidLayout {
        /// The offending path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Content did not hash to the digest it was expected to have.
    #[error("content of {expected} hashes to {actual}")]
    DigestMismatch {
        /// The digest the caller or file name promised.
        expected: Digest,
        /// What the content actually hashes to.
        actual: Digest,
    },
    /// A blob is not in the store.
    #[error("blob {0} is not in the store")]
    BlobNotFound(Digest),
    /// A blob is larger than the caller allowed.
    #[error("blob {digest} is {size} bytes, more than the {limit}-byte limit")]
    BlobTooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The limit the caller gave.
        limit: u64,
    },
    /// A JSON file of the store (index.json, a manifest) does not parse.
    #[error("parse {what}: {source}")]
    Json {
        /// The file or blob ("index.json", "manifest sha256:...").
        what: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A tag would point at a blob the store does not have.
    #[error("tag {name:?} would point at {digest}, which is not in the store")]
    MissingTagTarget {
        /// The tag.
        name: String,
        /// The missing blob.
        digest: Digest,
    },
    /// A tag name that cannot be stored (empty).
    #[error("invalid tag name {0:?}")]
    InvalidTagName(String),
    /// A descriptor names a digest kiln cannot store (not sha256).
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// Shorthand for results with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// A handle on a content store. Cheap to clone; several handles, threads and processes may use
/// one store at once.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens the store at `root`, creating an empty OCI image layout there if needed.
    ///
    /// An existing layout written by another tool is adopted (kiln adds its own directories
    /// beside it). A non-empty directory that is not a layout is refused. Stale temp files of
    /// dead writers are removed.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        create_dir(&root)?;
        let store = Store { root };
        store.check_foreign_entries()?;
        create_dir(&store.locks_dir())?;
        {
            // Two processes creating one store at once must not both write its files.
            let _guard = store.lock_index()?;
            for dir in [
                store.blobs_dir(),
                store.tmp_dir(),
                store.compressed_cache_dir(),
                store.origins_dir(),
            ] {
                create_dir(&dir)?;
            }
            store.init_layout_file()?;
            store.init_index()?;
        }
        // Best effort: a failure here only delays the cleanup until the next gc.
        let _ = temp::remove_stale(&store.tmp_dir(), STALE_TEMP_AGE);
        Ok(store)
    }

    /// The store's root directory, which is an OCI image layout.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn check_foreign_entries(&self) -> Result<()> {
        if self.root.join(OCI_LAYOUT_FILE).exists() {
            return Ok(());
        }
        let entries = fs::read_dir(&self.root).map_err(io_err("read directory", &self.root))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &self.root))?;
            let name = entry.file_name();
            if !KNOWN_ENTRIES.iter().any(|k| name == *k) {
                return Err(StoreError::InvalidLayout {
                    path: self.root.clone(),
                    reason: format!(
                        "directory is not empty ({:?}) and has no oci-layout file",
                        name
                    ),
                });
            }
        }
        Ok(())
    }

    fn init_layout_file(&self) -> Result<()> {
        let path = self.root.join(OCI_LAYOUT_FILE);
        match fs::read(&path) {
            Ok(bytes) => check_layout_version(&path, &bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.write_atomic(&path, OCI_LAYOUT_CONTENT)
            }
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    pub(crate) fn compressed_cache_dir(&self) -> PathBuf {
        self.root.join("cache").join("compressed")
    }

    pub(crate) fn origins_dir(&self) -> PathBuf {
        self.root.join("cache").join("origins")
    }

    pub(crate) fn index_path(&self) -> PathBuf {
        self.root.join(INDEX_FILE)
    }

    /// Writes `bytes` to `target` so that readers see either the old file or the whole new one,
    /// and the new one survives a crash once this returns.
    pub(crate) fn write_atomic(&self, target: &Path, bytes: &[u8]) -> Result<()> {
        let mut t = temp::TempFile::create(&self.tmp_dir())?;
        t.write_all_synced(bytes)?;
        t.persist(target)?;
        sync_parent(target)
    }
}

fn check_layout_version(path: &Path, bytes: &[u8]) -> Result<()> {
    let invalid = |reason: String| StoreError::InvalidLayout {
        path: path.to_path_buf(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("oci-layout: {e}")))?;
    match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
        Some(ver) if ver.starts_with("1.") => Ok(()),
        other => Err(invalid(format!(
            "unsupported imageLayoutVersion {other:?}, expected 1.x"
        ))),
    }
}

fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(io_err("create directory", path))
}

/// Makes a rename or unlink in `path`'s directory durable.
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_a_layout_and_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let s = Store::open(&root).unwrap();
        assert_eq!(
            fs::read(root.join("oci-layout")).unwrap(),
            OCI_LAYOUT_CONTENT
        );
        assert!(root.join("blobs/sha256").is_dir());
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(root.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["manifests"], serde_json::json!([]));
        drop(s);
        Store::open(&root).unwrap();
    }

    #[test]
    fn open_refuses_a_foreign_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::InvalidLayout { .. }), "{err}");
    }

    #[test]
    fn open_refuses_unknown_layout_version() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"2.0.0"}"#,
        )
        .unwrap();
        assert!(Store::open(dir.path()).is_err());
    }
}
