//! Blobs: written to a temp file while hashed, renamed into `blobs/sha256/` on commit.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use super::temp::TempFile;
use super::{io_err, sync_dir, Result, Store, StoreError};
use crate::digest::{Digest, Sha256Hasher, Sha256Reader};

/// Large enough that tar headers and small chunks do not each cost a syscall.
const WRITE_BUFFER: usize = 256 * 1024;

/// Writes one blob. Nothing appears under `blobs/` until [`BlobWriter::commit`]; dropping the
/// writer without committing deletes its temp file.
pub struct BlobWriter {
    out: BufWriter<TempFile>,
    hasher: Sha256Hasher,
    blobs_dir: PathBuf,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// True when nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// Finishes the blob: fsyncs it, checks it against `expected` if given, and moves it to
    /// `blobs/sha256/<hex>`. If that blob already exists the new copy is dropped.
    ///
    /// On a digest mismatch the temp file is removed and [`StoreError::DigestMismatch`]
    /// returned. Returns the blob's digest and size.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let BlobWriter {
            out,
            hasher,
            blobs_dir,
        } = self;
        let (digest, size) = hasher.finish();
        let mut temp = out.into_inner().map_err(|e| {
            let (source, w) = e.into_parts();
            io_err("write", w.get_ref().path())(source)
        })?;
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(StoreError::DigestMismatch {
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        let target = blobs_dir.join(digest.hex());
        if target.exists() {
            return Ok((digest, size));
        }
        temp.sync()?;
        temp.persist(&target)?;
        sync_dir(&blobs_dir)?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl Store {
    /// Starts writing a new blob.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        Ok(BlobWriter {
            out: BufWriter::with_capacity(WRITE_BUFFER, TempFile::create(&self.tmp_dir())?),
            hasher: Sha256Hasher::new(),
            blobs_dir: self.blobs_dir(),
        })
    }

    /// Stores `bytes` as a blob (a no-op if it is already there) and returns its digest and size.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<(Digest, u64)> {
        let digest = Digest::of(bytes);
        if self.has_blob(&digest) {
            return Ok((digest, bytes.len() as u64));
        }
        let mut w = self.blob_writer()?;
        w.write_all(bytes)
            .map_err(io_err("write", &self.tmp_dir()))?;
        w.commit(Some(&digest))
    }

    /// Where blob `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// True if the store holds blob `digest`.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// The size of blob `digest`.
    pub fn blob_size(&self, digest: &Digest) -> Result<u64> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) => Err(not_found_or(digest, "stat", &path, e)),
        }
    }

    /// Opens blob `digest` for reading. The content is not verified; see [`Store::verify_blob`].
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| not_found_or(digest, "open", &path, e))
    }

    /// Reads a whole blob of at most `max_len` bytes and checks it against its digest (cheap at
    /// the sizes this is meant for: manifests and configs).
    pub fn read_blob(&self, digest: &Digest, max_len: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let file = self.open_blob(digest)?;
        let size = file.metadata().map_err(io_err("stat", &path))?.len();
        if size > max_len {
            return Err(StoreError::BlobTooLarge {
                digest: digest.clone(),
                size,
                limit: max_len,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(max_len + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("read", &path))?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Re-hashes blob `digest`; false if its content no longer matches its name.
    pub fn verify_blob(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        let mut r = Sha256Reader::new(self.open_blob(digest)?);
        io::copy(&mut r, &mut io::sink()).map_err(io_err("read", &path))?;
        Ok(r.finish().1 == *digest)
    }

    /// Every blob in the store, sorted. Files under `blobs/sha256/` whose names are not digests
    /// are skipped.
    pub fn blobs(&self) -> Result<std::vec::IntoIter<Digest>> {
        let dir = self.blobs_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            if let Some(d) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out.into_iter())
    }
}

fn not_found_or(
    digest: &Digest,
    op: &'static str,
    path: &std::path::Path,
    e: io::Error,
) -> StoreError {
    if e.kind() == io::ErrorKind::NotFound {
        StoreError::BlobNotFound(digest.clone())
    } else {
        io_err(op, path)(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_files(store: &Store) -> usize {
        fs::read_dir(store.tmp_dir()).unwrap().count()
    }

    #[test]
    fn commit_makes_blob_visible_with_right_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.blob_writer().unwrap();
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (d, n) = w.commit(None).unwrap();
        assert_eq!(d, Digest::of(b"hello world"));
        assert_eq!(n, 11);
        assert_eq!(fs::read(store.blob_path(&d)).unwrap(), b"hello world");
        assert!(store.verify_blob(&d).unwrap());
        assert_eq!(store.read_blob(&d, 100).unwrap(), b"hello world");
        assert_eq!(tmp_files(&store), 0);
    }

    #[test]
    fn mismatch_is_rejected_and_temp_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.blob_writer().unwrap();
        w.write_all(b"actual").unwrap();
        let wrong = Digest::of(b"expected");
        let err = w.commit(Some(&wrong)).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(!store.has_blob(&wrong));
        assert!(!store.has_blob(&Digest::of(b"actual")));
        assert_eq!(tmp_files(&store), 0);
    }

    #[test]
    fn drop_without_commit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.blob_writer().unwrap();
        w.write_all(&[7u8; 1_000_000]).unwrap();
        assert_eq!(tmp_files(&store), 1);
        drop(w);
        assert_eq!(tmp_files(&store), 0);
        assert_eq!(store.blobs().unwrap().count(), 0);
    }

    #[test]
    fn put_blob_is_idempotent_and_read_limits_apply() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, _) = store.put_blob(b"{}").unwrap();
        let (b, _) = store.put_blob(b"{}").unwrap();
        assert_eq!(a, b);
        assert_eq!(store.blobs().unwrap().collect::<Vec<_>>(), vec![a.clone()]);
        assert!(matches!(
            store.read_blob(&a, 1),
            Err(StoreError::BlobTooLarge { .. })
        ));
        let missing = Digest::of(b"nope");
        assert!(matches!(
            store.read_blob(&missing, 10),
            Err(StoreError::BlobNotFound(_))
        ));
    }

    #[test]
    fn corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (d, _) = store.put_blob(b"original").unwrap();
        fs::write(store.blob_path(&d), b"tampered").unwrap();
        assert!(!store.verify_blob(&d).unwrap());
        assert!(matches!(
            store.read_blob(&d, 100),
            Err(StoreError::DigestMismatch { .. })
        ));
    }
}
