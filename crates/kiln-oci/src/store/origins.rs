//! Blob origins: the registry repositories a blob is known to exist in, so a push to another
//! repository of the same registry can mount the blob instead of uploading it.
//!
//! One small file per blob, `cache/origins/<blob hex>`, one repository per line as
//! `domain/path` (`localhost:5000/team/base`), most recently seen first and at most
//! [`MAX_ORIGINS`] of them. The registry client writes an entry when it pulls a blob from a
//! repository or pushes it to one.
//!
//! Entries are hints, never facts: the repository may have been deleted since, so whoever
//! reads them must cope with the registry saying no. That is why a lost update (two processes
//! recording the same blob at once, each writing its own list) is acceptable, and why a damaged
//! file is read as "no origins". Writes are atomic, so a reader never sees half a file.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::{io_err, Result, Store};
use crate::digest::Digest;

/// Repositories remembered per blob; older ones drop off.
pub const MAX_ORIGINS: usize = 8;

impl Store {
    /// The repositories (`domain/path`) blob `digest` was last seen in, most recent first.
    /// Empty when none were recorded.
    pub fn blob_origins(&self, digest: &Digest) -> Result<Vec<String>> {
        let path = self.origins_entry(digest);
        match fs::read(&path) {
            Ok(bytes) => Ok(parse(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Records that blob `digest` exists in repository `repository` (`domain/path`), making it
    /// the most recent origin. A name that cannot be a repository (empty, or with whitespace)
    /// is ignored.
    pub fn remember_blob_origin(&self, digest: &Digest, repository: &str) -> Result<()> {
        if repository.is_empty() || repository.contains(char::is_whitespace) {
            return Ok(());
        }
        let mut origins = self.blob_origins(digest)?;
        if origins.first().is_some_and(|o| o == repository) {
            return Ok(());
        }
        origins.retain(|o| o != repository);
        origins.insert(0, repository.to_owned());
        origins.truncate(MAX_ORIGINS);
        let mut text = origins.join("\n");
        text.push('\n');
        self.write_atomic(&self.origins_entry(digest), text.as_bytes())
    }

    fn origins_entry(&self, digest: &Digest) -> PathBuf {
        self.origins_dir().join(digest.hex())
    }

    /// Drops origin entries whose blob is gone (or whose name is not a digest); returns how
    /// many were removed.
    pub(super) fn sweep_origins(&self) -> Result<usize> {
        let dir = self.origins_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err("read directory", &dir)(e)),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            let live = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
                .is_some_and(|d| self.has_blob(&d));
            if !live && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn parse(bytes: &[u8]) -> Vec<String> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Vec::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains(char::is_whitespace))
        .take(MAX_ORIGINS)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_recent_first_without_duplicates_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (d, _) = store.put_blob(b"layer").unwrap();
        assert!(store.blob_origins(&d).unwrap().is_empty());
        store.remember_blob_origin(&d, "r:5000/a").unwrap();
        store.remember_blob_origin(&d, "r:5000/b").unwrap();
        store.remember_blob_origin(&d, "r:5000/a").unwrap();
        store.remember_blob_origin(&d, "").unwrap();
        store.remember_blob_origin(&d, "bad name").unwrap();
        assert_eq!(store.blob_origins(&d).unwrap(), ["r:5000/a", "r:5000/b"]);
        for i in 0..20 {
            store.remember_blob_origin(&d, &format!("r/x{i}")).unwrap();
        }
        let all = store.blob_origins(&d).unwrap();
        assert_eq!(all.len(), MAX_ORIGINS);
        assert_eq!(all[0], "r/x19");
    }

    #[test]
    fn damaged_entries_read_as_empty_and_gc_drops_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (kept, _) = store.put_blob(b"kept").unwrap();
        let gone = Digest::of(b"never stored");
        store.remember_blob_origin(&kept, "r/a").unwrap();
        store.remember_blob_origin(&gone, "r/a").unwrap();
        fs::write(store.origins_dir().join("not-a-digest"), "r/a\n").unwrap();
        fs::write(store.origins_entry(&Digest::of(b"x")), [0xff, 0xfe]).unwrap();
        assert!(store.blob_origins(&Digest::of(b"x")).unwrap().is_empty());
        assert_eq!(store.sweep_origins().unwrap(), 3);
        assert_eq!(store.blob_origins(&kept).unwrap(), ["r/a"]);
        assert!(store.blob_origins(&gone).unwrap().is_empty());
    }
}
