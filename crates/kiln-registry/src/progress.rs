//! Transfer progress: what a pull or push is doing with each blob, for a display to show.

use kiln_oci::digest::Digest;
use std::sync::Arc;

/// One step of a blob transfer.
#[derive(Clone, Copy, Debug)]
pub enum Transfer<'a> {
    /// A download or upload of `size` bytes starts.
    Start {
        /// The blob.
        digest: &'a Digest,
        /// Its size.
        size: u64,
        /// Upload (push) rather than download (pull).
        upload: bool,
    },
    /// `done` bytes of the blob have moved (a retry starts again from 0).
    Progress {
        /// The blob.
        digest: &'a Digest,
        /// Bytes so far.
        done: u64,
    },
    /// The blob is done with: `downloaded`, `uploaded`, `mounted` or `already there`.
    Done {
        /// The blob.
        digest: &'a Digest,
        /// How.
        how: &'static str,
    },
}

/// Receives [`Transfer`]s, from several threads at once.
pub type ProgressFn = Arc<dyn Fn(Transfer<'_>) + Send + Sync>;

/// Reports a running byte count of one blob.
pub(crate) type ByteReport = Arc<dyn Fn(u64) + Send + Sync>;

/// A reader that reports how much was read through it (owned, so a request body can be one).
pub(crate) struct Counting<R> {
    pub inner: R,
    pub done: u64,
    pub report: Option<ByteReport>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if let Some(r) = &self.report {
            r(self.done);
        }
        Ok(n)
    }
}
