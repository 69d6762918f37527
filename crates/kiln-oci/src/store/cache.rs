//! The compressed-blob cache: for a layer's diffID and an algorithm, the compressed blob made
//! from it before, so no layer is compressed twice.
//!
//! One small file per entry, `cache/compressed/<diffID hex>.<algorithm>`, holding
//! `sha256:<hex> <size>\n`. Entries are written atomically and only trusted while the blob they
//! name is still in the store with that size.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::{io_err, Result, Store};
use crate::compression::Compression;
use crate::digest::Digest;

impl Store {
    /// The compressed blob (digest, size) recorded for layer `diff_id` under the algorithm of
    /// `compression` (its level is ignored), if it is still in the store.
    pub fn compressed_for(
        &self,
        diff_id: &Digest,
        compression: Compression,
    ) -> Result<Option<(Digest, u64)>> {
        if compression == Compression::None {
            return Ok(None);
        }
        let path = self.cache_entry(diff_id, compression);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        // A damaged entry is only a cache miss.
        let Some((digest, size)) = parse_entry(&text) else {
            return Ok(None);
        };
        match fs::metadata(self.blob_path(&digest)) {
            Ok(m) if m.is_file() && m.len() == size => Ok(Some((digest, size))),
            _ => Ok(None),
        }
    }

    /// Records that `digest` (`size` bytes) is layer `diff_id` compressed with `compression`.
    pub fn remember_compressed(
        &self,
        diff_id: &Digest,
        compression: Compression,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        if compression == Compression::None {
            return Ok(());
        }
        let entry = format!("{digest} {size}\n");
        self.write_atomic(&self.cache_entry(diff_id, compression), entry.as_bytes())
    }

    fn cache_entry(&self, diff_id: &Digest, c: Compression) -> PathBuf {
        self.compressed_cache_dir()
            .join(format!("{}.{}", diff_id.hex(), c.name()))
    }

    /// All cache entries. Unreadable ones come back with `None`s so gc can drop them.
    pub(super) fn cache_entries(&self) -> Result<Vec<CacheEntry>> {
        let dir = self.compressed_cache_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            let path = entry.path();
            let key = entry
                .file_name()
                .to_str()
                .and_then(|n| n.split_once('.'))
                .and_then(|(hex, _)| Digest::from_hex(hex).ok());
            let value = fs::read_to_string(&path)
                .ok()
                .and_then(|t| parse_entry(&t))
                .map(|(d, _)| d);
            out.push(CacheEntry { key, value, path });
        }
        Ok(out)
    }
}

/// One cache file, as gc sees it.
pub(super) struct CacheEntry {
    /// The layer's diffID, from the file name.
    pub(super) key: Option<Digest>,
    /// The compressed blob, from the content.
    pub(super) value: Option<Digest>,
    /// The file.
    pub(super) path: PathBuf,
}

fn parse_entry(text: &str) -> Option<(Digest, u64)> {
    let (digest, size) = text.trim_end().split_once(' ')?;
    Some((digest.parse().ok()?, size.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_algorithm_and_checks_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let diff_id = Digest::of(b"layer");
        let (gz, size) = store.put_blob(b"pretend gzip").unwrap();
        assert_eq!(
            store.compressed_for(&diff_id, Compression::GZIP).unwrap(),
            None
        );
        store
            .remember_compressed(&diff_id, Compression::Gzip { level: 9 }, &gz, size)
            .unwrap();
        // Any gzip level finds it; zstd does not.
        assert_eq!(
            store.compressed_for(&diff_id, Compression::GZIP).unwrap(),
            Some((gz.clone(), size))
        );
        assert_eq!(
            store.compressed_for(&diff_id, Compression::ZSTD).unwrap(),
            None
        );
        fs::remove_file(store.blob_path(&gz)).unwrap();
        assert_eq!(
            store.compressed_for(&diff_id, Compression::GZIP).unwrap(),
            None
        );
    }
}
