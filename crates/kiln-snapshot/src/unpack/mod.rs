//! Applying OCI layers onto a root directory, as a container runtime does, without letting a
//! hostile layer touch anything outside that directory.
//!
//! # How names are resolved
//!
//! Each entry name is first cleaned lexically (`./a//b` → `a/b`, `a/../b` → `b`, a leading
//! `/` dropped); a name that climbs above the root (`../escape`) is refused, as Docker refuses
//! it. The entry's *parent* directory is then opened with
//! `openat2(root_fd, parent, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: the kernel resolves
//! every symlink on the way with `root` as `/`, so a layer's `var/run -> /run` leads to
//! `root/run` and `up -> ../../..` stops at `root`. The entry itself is then created by name
//! inside that fd (`mkdirat`, `openat(O_CREAT|O_EXCL|O_NOFOLLOW)`, `symlinkat`, `linkat`,
//! `mknodat`), and its metadata set through the fd it was opened with or with
//! `AT_SYMLINK_NOFOLLOW`. A symlink in the final position is replaced, never written through.
//! Hard-link targets, whiteouts and opaque directories are resolved the same way.
//!
//! # Why openat2
//!
//! The usual alternative, and what the `tar` crate's `unpack` does, is to build a host path
//! string, `canonicalize` it and check that it starts with the destination. That check
//! resolves absolute symlinks against the *host* root, so a real base image
//! (`var/run -> /run`, then `var/run/lock`) fails or, in other extractors, escapes; and the
//! check and the later open are two lookups, so anything that changes the tree in between
//! (a later entry, a concurrent process) redirects the write (CVE-2018-15664,
//! CVE-2026-17106). With `RESOLVE_IN_ROOT` the check *is* the lookup, done once by the
//! kernel, and the resulting fd stays put whatever happens to the names afterwards.
//!
//! # What else the unpacker does
//!
//! - `.wh.NAME` removes `NAME` (and all below it) from lower layers; `.wh..wh..opq` hides
//!   every lower entry of its directory, keeping what the same layer wrote there.
//! - An existing entry is replaced; a directory over a directory only has its metadata
//!   updated.
//! - Ownership is set only with [`UnpackOptions::chown`]; modes including setuid, setgid and
//!   sticky are set after ownership (a chown clears setuid); `security.capability` after both.
//! - Device nodes that cannot be created (rootless) are skipped and counted.
//! - Directory modes and times are set last, deepest first, since creating children changes
//!   a directory's mtime and a read-only directory could not be filled.
//! - File content is streamed; memory grows only with the number of entries (names created
//!   by the layer and the directory list), never with file sizes.

mod apply;
mod at;
mod name;

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use kiln_oci::digest::{Digest, Sha256Reader};
use kiln_oci::store::{Store, StoreError};
use kiln_oci::{Compression, ImageError, LayerError};

use apply::Applier;

/// How to apply a layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Give entries the uid/gid from the layer. True when running as root or inside a user
    /// namespace with a subordinate id range; then a failing chown is an error. False leaves
    /// everything owned by the current user (rootless without a mapping).
    pub chown: bool,
    /// Fail on an extended attribute the filesystem or our privileges refuse (EPERM,
    /// ENOTSUP), instead of counting it in [`UnpackStats::xattrs_failed`].
    pub strict_xattrs: bool,
}

impl UnpackOptions {
    /// Options for the current process: `chown` when the effective uid is 0.
    ///
    /// Inside a user namespace that maps only one id, uid 0 cannot chown to anything else;
    /// callers that know they are in such a namespace should clear `chown`.
    pub fn for_current_user() -> UnpackOptions {
        UnpackOptions {
            chown: nix::unistd::geteuid().is_root(),
            strict_xattrs: false,
        }
    }
}

/// What applying a layer did, including what it had to leave out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries read (whiteouts and skipped entries included).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Whiteouts applied (`.wh.NAME` and opaque markers).
    pub whiteouts: u64,
    /// Character and block devices not created because `mknod` was not permitted.
    pub devices_skipped: u64,
    /// Extended attributes set.
    pub xattrs_set: u64,
    /// Extended attributes the filesystem or our privileges refused (EPERM, ENOTSUP).
    pub xattrs_failed: u64,
    /// Extended attributes deliberately not set: `trusted.*` when not root, overlayfs's own
    /// `*.overlay.*`, and namespaces other than `user.*`, `trusted.*` and
    /// `security.capability`.
    pub xattrs_skipped: u64,
    /// Entries ignored entirely (AUFS metadata such as `.wh..wh.plnk`).
    pub entries_skipped: u64,
    /// The first few things left out, as "path: what", for the CLI to show.
    pub warnings: Vec<String>,
}

/// At most this many [`UnpackStats::warnings`] are kept; the counters hold the totals.
pub const MAX_WARNINGS: usize = 16;

impl UnpackStats {
    /// Adds another layer's counts (and warnings, up to [`MAX_WARNINGS`]).
    pub fn add(&mut self, other: UnpackStats) {
        self.entries += other.entries;
        self.bytes += other.bytes;
        self.whiteouts += other.whiteouts;
        self.devices_skipped += other.devices_skipped;
        self.xattrs_set += other.xattrs_set;
        self.xattrs_failed += other.xattrs_failed;
        self.xattrs_skipped += other.xattrs_skipped;
        self.entries_skipped += other.entries_skipped;
        let room = MAX_WARNINGS.saturating_sub(self.warnings.len());
        self.warnings.extend(other.warnings.into_iter().take(room));
    }

    pub(crate) fn warn(&mut self, message: String) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(message);
        }
    }
}

/// Errors from unpacking. Entry errors carry the entry's path as the layer wrote it.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The root directory cannot be opened.
    #[error("open unpack root {}: {source}", path.display())]
    Root {
        /// The root given.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The kernel lacks `openat2` (Linux < 5.6), which containment depends on.
    #[error("unpacking layers needs openat2 (Linux 5.6 or later): {0}")]
    NoOpenat2(io::Error),
    /// The layer stream is corrupt, truncated or holds an entry type kiln does not handle.
    #[error("read layer: {0}")]
    Layer(#[from] LayerError),
    /// An entry name that climbs above the root (`../x`, `a/../../x`).
    #[error("{path:?}: entry escapes the layer root")]
    Escapes {
        /// The entry.
        path: PathBuf,
    },
    /// An entry name (or link target, or xattr name) the unpacker refuses.
    #[error("{path:?}: invalid entry: {reason}")]
    InvalidEntry {
        /// The entry.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A non-directory entry for the root directory itself.
    #[error("{path:?}: would replace the root directory with a non-directory")]
    ReplacesRoot {
        /// The entry.
        path: PathBuf,
    },
    /// A hard link whose target does not exist (inside the root) or cannot be linked.
    #[error("{path:?}: hard link target {target:?} {reason}")]
    BadLinkTarget {
        /// The entry.
        path: PathBuf,
        /// The target as the layer wrote it.
        target: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A uid or gid that no Linux file can have.
    #[error("{path:?}: owner {uid}:{gid} is out of range")]
    Owner {
        /// The entry.
        path: PathBuf,
        /// Its uid.
        uid: u64,
        /// Its gid.
        gid: u64,
    },
    /// A filesystem operation on an entry failed.
    #[error("{path:?}: {op}: {source}")]
    Io {
        /// What was being done ("create file", "chown", ...).
        op: &'static str,
        /// The entry.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Reading an entry's content from the layer failed (truncated or corrupt stream).
    #[error("{path:?}: read content: {source}")]
    Content {
        /// The entry.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// An extended attribute was refused and [`UnpackOptions::strict_xattrs`] is set.
    #[error("{path:?}: set xattr {name}: {source}")]
    Xattr {
        /// The entry.
        path: PathBuf,
        /// The attribute.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// [`unpack_image`]'s destination already has content.
    #[error("{}: destination exists and is not an empty directory", path.display())]
    DestinationNotEmpty {
        /// The destination.
        path: PathBuf,
    },
    /// [`unpack_image`]'s destination could not be created or read.
    #[error("{}: {source}", path.display())]
    Destination {
        /// The destination.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Reading the image's manifest failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest layer that is not a tar layer kiln knows.
    #[error("layer {digest}: unsupported media type {media_type}")]
    UnsupportedLayer {
        /// The layer.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// A layer blob's bytes do not hash to its digest.
    #[error("layer {expected}: content hashes to {actual}")]
    LayerDigest {
        /// The digest the manifest names.
        expected: Digest,
        /// What the blob hashed to.
        actual: Digest,
    },
    /// Applying one layer of an image failed.
    #[error("layer {index} ({digest}): {source}")]
    InLayer {
        /// Position in the manifest, from 0.
        index: usize,
        /// The layer's digest.
        digest: Digest,
        /// What went wrong.
        source: Box<UnpackError>,
    },
}

/// Applies one layer (a tar stream, plain or gzip/zstd/bzip2/xz-compressed: the compression
/// is sniffed) onto the directory `root`.
///
/// On error the root is left part-applied; callers unpack into a fresh snapshot directory
/// and discard it on failure.
pub fn unpack_layer(
    root: &Path,
    layer: impl Read,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let mut reader = kiln_oci::layer::open_layer(layer)?;
    let mut applier = Applier::new(root, opts)?;
    while let Some(entry) = reader.next_entry()? {
        applier.apply(&entry, &mut reader)?;
    }
    applier.finish()
}

/// Unpacks the image whose manifest is `manifest` in `store`: every layer, in order, into
/// `dest`.
///
/// `dest` is created if missing; if it exists it must be an empty directory, so a mistyped
/// path cannot merge an image into a directory that matters. Each layer blob is re-hashed
/// while it is applied and must match its digest. Take a shared store lock around this if a
/// garbage collection may run concurrently.
pub fn unpack_image(
    store: &Store,
    manifest: &Digest,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let parsed = kiln_oci::image::read_manifest(store, manifest)?;
    prepare_destination(dest)?;
    let mut total = UnpackStats::default();
    for (index, layer) in parsed.value.layers().iter().enumerate() {
        let media_type = layer.media_type().to_string();
        let digest =
            Digest::from_oci(layer.digest()).map_err(|e| UnpackError::UnsupportedLayer {
                digest: layer.digest().to_string(),
                media_type: format!("{media_type} ({e})"),
            })?;
        let in_layer = |e: UnpackError| UnpackError::InLayer {
            index,
            digest: digest.clone(),
            source: Box::new(e),
        };
        if Compression::from_media_type(&media_type).is_none() {
            return Err(in_layer(UnpackError::UnsupportedLayer {
                digest: digest.to_string(),
                media_type,
            }));
        }
        let blob = store.open_blob(&digest).map_err(|e| in_layer(e.into()))?;
        let mut hashed = Sha256Reader::new(blob);
        let stats = unpack_layer(dest, &mut hashed, opts).map_err(in_layer)?;
        // The reader stops at the end-of-archive marker; hash whatever follows it too.
        io::copy(&mut hashed, &mut io::sink()).map_err(|source| {
            in_layer(UnpackError::Store(StoreError::Io {
                op: "read",
                path: store.blob_path(&digest),
                source,
            }))
        })?;
        let (_, actual, _) = hashed.finish();
        if actual != digest {
            return Err(in_layer(UnpackError::LayerDigest {
                expected: digest.clone(),
                actual,
            }));
        }
        total.add(stats);
    }
    Ok(total)
}

/// Creates `dest`, or checks that it is an empty directory.
fn prepare_destination(dest: &Path) -> Result<(), UnpackError> {
    let err = |source| UnpackError::Destination {
        path: dest.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dest).map_err(err),
        Err(e) => Err(err(e)),
        Ok(meta) if meta.is_dir() => {
            if fs::read_dir(dest).map_err(err)?.next().is_some() {
                Err(UnpackError::DestinationNotEmpty {
                    path: dest.to_path_buf(),
                })
            } else {
                Ok(())
            }
        }
        Ok(_) => Err(UnpackError::DestinationNotEmpty {
            path: dest.to_path_buf(),
        }),
    }
}
