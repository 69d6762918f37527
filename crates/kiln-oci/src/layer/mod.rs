//! Layers: the tar entry model, a deterministic writer, a reader, and writing layers into the
//! store in one streaming pass.
//!
//! A layer is hashed as it is written: tar bytes → sha256 (the diffID) → compressor → sha256
//! (the blob digest) → store. Memory stays bounded whatever the layer size. Builds store layers
//! uncompressed (blob digest = diffID, one hash); outputs compress them with
//! [`compress_layer`], which remembers the result per diffID so no layer is compressed twice.

mod entry;
mod reader;
mod writer;

use std::io::{self, Read, Write};

use oci_spec::image::Descriptor;

pub use entry::{
    opaque_whiteout_path, whiteout_path, whiteout_target, EntryKind, TarEntry, Whiteout,
    OPAQUE_WHITEOUT, WHITEOUT_PREFIX,
};
pub use reader::{open_layer, read_full, Entries, LayerReader};
pub use writer::LayerWriter;

use crate::compression::{Compression, Encoder};
use crate::digest::{Digest, Sha256Writer};
use crate::image;
use crate::store::{BlobWriter, Store, StoreError};

/// Errors from writing or reading layers.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading or writing the stream failed.
    #[error("{op}: {source}")]
    Io {
        /// "write layer" or "read layer".
        op: &'static str,
        /// The I/O error.
        source: io::Error,
    },
    /// Reading an entry's content from its source failed.
    #[error("read content of {path}: {source}")]
    Content {
        /// The entry.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// An entry cannot be written as given.
    #[error("cannot write {path:?}: {reason}")]
    InvalidEntry {
        /// The entry's path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A file's content ended before its declared size.
    #[error("{path}: content is {actual} bytes, header says {expected}")]
    ContentTooShort {
        /// The entry.
        path: String,
        /// Declared size.
        expected: u64,
        /// Bytes supplied.
        actual: u64,
    },
    /// A file's content went on past its declared size.
    #[error("{path}: content is longer than the {expected} bytes the header says")]
    ContentTooLong {
        /// The entry.
        path: String,
        /// Declared size.
        expected: u64,
    },
    /// An append after an earlier error left the stream broken.
    #[error("layer writer is unusable after an earlier error")]
    WriterFailed,
    /// An append after `finish`.
    #[error("layer writer is already finished")]
    WriterFinished,
    /// The input is not a well-formed tar stream.
    #[error("corrupt layer{}: {reason}", path.as_ref().map(|p| format!(" at {p:?}")).unwrap_or_default())]
    Corrupt {
        /// The entry where it was found, if known.
        path: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// An entry type kiln does not handle (GNU sparse, volume labels, ...). Its data is skipped,
    /// so reading may go on.
    #[error("unsupported tar entry type {:?} at {path:?}", *typeflag as char)]
    UnsupportedEntry {
        /// The entry's path.
        path: String,
        /// Its typeflag byte.
        typeflag: u8,
    },
    /// A stored layer's content does not hash to its digest.
    #[error("stored layer {expected} hashes to {actual}")]
    DiffIdMismatch {
        /// The layer's name in the store.
        expected: Digest,
        /// What its content hashes to.
        actual: Digest,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An error from the caller's own code inside [`write_layer`].
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl LayerError {
    /// Wraps a caller's error so it can be returned from a [`write_layer`] closure.
    pub fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> LayerError {
        LayerError::Other(e.into())
    }
}

/// A layer blob in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// sha256 of the uncompressed tar: what the image config lists.
    pub diff_id: Digest,
    /// sha256 of the blob as stored: what the manifest lists.
    pub digest: Digest,
    /// Blob size in bytes.
    pub size: u64,
    /// Uncompressed tar size in bytes.
    pub uncompressed_size: u64,
    /// How the blob is compressed.
    pub compression: Compression,
    /// The OCI media type for the blob.
    pub media_type: &'static str,
}

impl LayerInfo {
    /// The manifest descriptor for this layer.
    pub fn descriptor(&self) -> Descriptor {
        image::descriptor(self.media_type, &self.digest, self.size)
    }
}

/// Where a [`LayerWriter`] inside [`write_layer`] writes: hashing, compressing, storing.
pub struct LayerSink {
    inner: SinkInner,
    compression: Compression,
}

enum SinkInner {
    /// Uncompressed: the blob writer's own hash is the diffID.
    Plain(BlobWriter),
    /// Compressed: hash the tar, then compress into the blob writer (which hashes the blob).
    Compressed(Box<Sha256Writer<Encoder<BlobWriter>>>),
}

impl LayerSink {
    fn new(store: &Store, compression: Compression) -> Result<LayerSink, LayerError> {
        let blob = store.blob_writer()?;
        let inner = match compression {
            Compression::None => SinkInner::Plain(blob),
            c => SinkInner::Compressed(Box::new(Sha256Writer::new(
                Encoder::new(blob, c).map_err(write_err)?,
            ))),
        };
        Ok(LayerSink { inner, compression })
    }

    /// Ends compression, commits the blob and records it in the compressed cache.
    /// With `expected`, refuses (and stores nothing) if the tar does not hash to it.
    fn commit(self, store: &Store, expected: Option<&Digest>) -> Result<LayerInfo, LayerError> {
        let c = self.compression;
        let (diff_id, uncompressed_size, blob) = match self.inner {
            SinkInner::Plain(blob) => {
                let (d, n) = blob.commit(expected).map_err(mismatch_as_layer)?;
                return Ok(LayerInfo {
                    diff_id: d.clone(),
                    digest: d,
                    size: n,
                    uncompressed_size: n,
                    compression: c,
                    media_type: c.oci_media_type(),
                });
            }
            SinkInner::Compressed(w) => {
                let (encoder, diff_id, len) = w.finish();
                (diff_id, len, encoder.finish().map_err(write_err)?)
            }
        };
        if let Some(expected) = expected.filter(|e| **e != diff_id) {
            return Err(LayerError::DiffIdMismatch {
                expected: expected.clone(),
                actual: diff_id,
            });
        }
        let (digest, size) = blob.commit(None)?;
        store.remember_compressed(&diff_id, c, &digest, size)?;
        Ok(LayerInfo {
            diff_id,
            digest,
            size,
            uncompressed_size,
            compression: c,
            media_type: c.oci_media_type(),
        })
    }
}

fn mismatch_as_layer(e: StoreError) -> LayerError {
    match e {
        StoreError::DigestMismatch { expected, actual } => {
            LayerError::DiffIdMismatch { expected, actual }
        }
        other => LayerError::Store(other),
    }
}

impl Write for LayerSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            SinkInner::Plain(w) => w.write(buf),
            SinkInner::Compressed(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            SinkInner::Plain(w) => w.flush(),
            SinkInner::Compressed(w) => w.flush(),
        }
    }
}

fn write_err(source: io::Error) -> LayerError {
    LayerError::Io {
        op: "write layer",
        source,
    }
}

/// Writes a layer into the store in one pass: `fill` appends entries, then the archive is
/// ended, compressed as asked, hashed and committed.
///
/// If `fill` fails nothing is stored. A compressed layer is also recorded in the compressed
/// cache under its diffID.
pub fn write_layer<F>(
    store: &Store,
    compression: Compression,
    fill: F,
) -> Result<LayerInfo, LayerError>
where
    F: FnOnce(&mut LayerWriter<LayerSink>) -> Result<(), LayerError>,
{
    let mut w = LayerWriter::new(LayerSink::new(store, compression)?);
    fill(&mut w)?;
    w.finish()?;
    w.into_inner().commit(store, None)
}

const COPY_BUFFER: usize = 256 * 1024;

/// The stored uncompressed layer `diff_id`, compressed as asked, reusing an earlier result from
/// the compressed cache when there is one. The source is re-hashed while read, so a damaged
/// layer is refused rather than compressed.
pub fn compress_layer(
    store: &Store,
    diff_id: &Digest,
    compression: Compression,
) -> Result<LayerInfo, LayerError> {
    let uncompressed_size = store.blob_size(diff_id)?;
    let info = |digest: Digest, size: u64| LayerInfo {
        diff_id: diff_id.clone(),
        digest,
        size,
        uncompressed_size,
        compression,
        media_type: compression.oci_media_type(),
    };
    if compression == Compression::None {
        return Ok(info(diff_id.clone(), uncompressed_size));
    }
    if let Some((digest, size)) = store.compressed_for(diff_id, compression)? {
        return Ok(info(digest, size));
    }
    let mut src = store.open_blob(diff_id)?;
    let mut sink = LayerSink::new(store, compression)?;
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(LayerError::Io {
                    op: "read layer",
                    source,
                })
            }
        };
        sink.write_all(&buf[..n]).map_err(write_err)?;
    }
    sink.commit(store, Some(diff_id))
}
