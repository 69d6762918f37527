//! Turning what a build step changed into an OCI layer.
//!
//! # From an overlay upper directory ([`diff_upper`])
//!
//! A step runs on an overlay mount whose upper directory starts empty, so afterwards the
//! upper directory *is* the change: every file the step created, modified, or only chmod-ed,
//! chown-ed or touched (overlay copies a lower file up whole before changing anything about
//! it, and kiln mounts without metacopy, so a copy-up always carries the content). The
//! differ walks that directory alone and maps overlay's marks onto OCI's:
//!
//! | upper directory | layer |
//! |---|---|
//! | character device 0/0 `dir/name` (or an empty file with `*.overlay.whiteout`) | empty file `dir/.wh.name` |
//! | directory with `trusted.overlay.opaque=y` (`user.overlay.opaque=y` with `userxattr`) | the directory, then `dir/.wh..wh..opq` |
//! | `trusted.overlay.*` / `user.overlay.*` xattrs (origin, impure, uuid, ...) | dropped |
//! | other xattrs (`security.capability`, `user.*`, ACLs) | kept as `SCHILY.xattr.*` |
//! | two names of one inode | a file, then a hard link to its first name |
//! | socket | skipped, as Docker does |
//!
//! All of a mount's whiteouts are hard links of one shared inode, so whiteouts are never
//! treated as hard links of each other.
//!
//! The lower layers are never opened: whether a whiteout hides a file or a whole directory
//! does not matter to the layer (`.wh.name` removes either), and an opaque mark says by
//! itself that the lower content of that directory is gone. So a step costs a walk over what
//! it wrote, not over the root filesystem: `apt-get install` of a few packages on a 1 GB
//! image reads the few hundred files the step produced.
//!
//! # From two trees ([`diff_trees`])
//!
//! Where overlay cannot be mounted, a step runs on a full copy of its parent, and the
//! differ compares that copy with the parent: a name only in the parent becomes a whiteout,
//! a name only in the copy an added entry (with all below it), and a name in both a changed
//! entry if its type, mode, owner, mtime, size, link target, device number, xattrs or
//! content differ. Directories are written when they changed or anything below them did,
//! just as overlay copies up the parents of whatever it copies up. A directory that was
//! deleted and made again (seen through the [`Baseline`] recorded when the copy was made)
//! becomes opaque, as in overlay. The result is the same list of entries overlay would give
//! for the same change, including a new hard link to an unchanged file (overlay copies the
//! file up to link it, so both names are written; the copy differ writes every name of an
//! inode once any name is written). What it cannot see: changes that leave no trace in
//! metadata or content (a `chmod` to the same mode, which overlay still copies up), and
//! hard links the parent already had, which overlay breaks on copy-up and a copy keeps. This
//! walks both whole trees: it is the fallback, not the fast path.
//!
//! # Order and times
//!
//! Entries come parents first, and inside each directory the whiteouts (sorted) before the
//! other entries (sorted by name bytes), so the same change always gives the same bytes, and
//! consumers that apply whiteouts in stream order see them before anything the layer adds.
//! Whiteout files carry mode 0644, owner 0:0 and mtime 0. Other entries keep their mtime,
//! cut to whole seconds as Docker and BuildKit write them (unless
//! [`DiffOptions::subsecond_mtime`]); [`DiffOptions::clamp_mtime`] is handed to the writer.

mod compare;
mod entry;
mod upper;

use std::collections::HashSet;
use std::io;
use std::path::{Component, Path, PathBuf};

use kiln_oci::LayerError;

use crate::overlay::XattrFlavour;

pub use compare::{diff_trees, Baseline};
pub use upper::diff_upper;

/// How to write a diff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffOptions {
    /// Paths (relative to the root; a leading `/` is ignored) left out of the layer together
    /// with everything below them: the mount stubs the sandbox made (`etc/hosts`,
    /// `etc/resolv.conf`, `dev/...`, `proc`, `sys`) when they did not exist before the step.
    /// No whiteout is written for them either.
    pub skip: Vec<PathBuf>,
    /// Passed to [`kiln_oci::LayerWriter::set_clamp_mtime`] when set (`SOURCE_DATE_EPOCH`).
    pub clamp_mtime: Option<i64>,
    /// Keep nanoseconds of mtimes (each such entry then needs a PAX header). Off by default,
    /// which cuts mtimes to whole seconds like Docker and BuildKit.
    pub subsecond_mtime: bool,
    /// The xattr namespace the overlay mount kept its marks in ([`diff_upper`] only). None
    /// accepts both; [`crate::snapshots::Snapshots::diff`] sets the one its mount used.
    pub overlay_xattrs: Option<XattrFlavour>,
}

impl DiffOptions {
    /// Adds a path to leave out.
    pub fn skip(mut self, path: impl Into<PathBuf>) -> DiffOptions {
        self.skip.push(path.into());
        self
    }

    /// Sets the mtime clamp.
    pub fn clamp_mtime(mut self, epoch: Option<i64>) -> DiffOptions {
        self.clamp_mtime = epoch;
        self
    }

    /// The skip list as clean relative paths.
    fn skip_set(&self) -> Result<HashSet<PathBuf>, DiffError> {
        self.skip
            .iter()
            .map(|p| {
                let mut clean = PathBuf::new();
                for c in p.components() {
                    match c {
                        Component::Normal(n) => clean.push(n),
                        Component::RootDir | Component::CurDir => {}
                        Component::ParentDir | Component::Prefix(_) => {
                            return Err(DiffError::BadSkipPath { path: p.clone() })
                        }
                    }
                }
                Ok(clean)
            })
            .collect()
    }
}

/// What a diff wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Tar entries written, whiteouts included.
    pub entries: u64,
    /// Regular files written with their content.
    pub files: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// `.wh.NAME` entries.
    pub whiteouts: u64,
    /// `.wh..wh..opq` entries.
    pub opaque_dirs: u64,
    /// Hard-link entries.
    pub hardlinks: u64,
    /// Paths left out because [`DiffOptions::skip`] named them.
    pub skipped: u64,
    /// Sockets left out (a tar cannot hold them).
    pub sockets: u64,
    /// Extended attributes left out besides overlay's own: names that are not UTF-8, and
    /// `security.selinux` (the host's label, not the image's).
    pub xattrs_dropped: u64,
    /// Files whose content was read to compare them ([`diff_trees`] only).
    pub compared: u64,
}

/// Errors from diffing. Each names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing the entry for `path` into the layer failed.
    #[error("write layer entry {}: {source}", path.display())]
    Layer {
        /// The entry's path in the layer.
        path: PathBuf,
        /// The writer's error.
        source: LayerError,
    },
    /// A skip path that climbs out of the root.
    #[error("skip path {} leaves the root", path.display())]
    BadSkipPath {
        /// The path as given.
        path: PathBuf,
    },
    /// A saved [`Baseline`] that does not parse.
    #[error("baseline {}: {reason}", path.display())]
    BadBaseline {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiffError {
    let path = path.to_path_buf();
    move |source| DiffError::Io { op, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_paths_are_cleaned() {
        let opts = DiffOptions::default()
            .skip("/etc/hosts")
            .skip("./proc")
            .skip("dev/");
        let set = opts.skip_set().unwrap();
        assert!(set.contains(Path::new("etc/hosts")));
        assert!(set.contains(Path::new("proc")));
        assert!(set.contains(Path::new("dev")));
        let bad = DiffOptions::default().skip("../etc");
        assert!(matches!(bad.skip_set(), Err(DiffError::BadSkipPath { .. })));
    }
}
