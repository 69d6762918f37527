//! The entry model shared by the layer writer and reader, and whiteout names.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file; its content follows the header.
    File,
    /// A directory.
    Dir,
    /// A symbolic link to the target (kept as written; may be absolute).
    Symlink(PathBuf),
    /// A hard link to an earlier entry of the same layer (a layer-relative path).
    Hardlink(PathBuf),
    /// A character device (major, minor).
    Char(u32, u32),
    /// A block device (major, minor).
    Block(u32, u32),
    /// A named pipe.
    Fifo,
}

/// One tar entry as kiln sees it, independent of how tar encodes it.
///
/// `path` is relative to the layer root, without a leading `/` or `./` and without a trailing
/// `/` (the writer adds one for directories). The reader yields the layer's root directory, if
/// the tar has one (`./`), as an empty path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Path inside the layer.
    pub path: PathBuf,
    /// File type and type-specific data.
    pub kind: EntryKind,
    /// Permission bits plus setuid, setgid and sticky (`0o7777` at most).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, seconds since the epoch (may be negative).
    pub mtime: i64,
    /// Nanoseconds past `mtime`, below 1e9.
    pub mtime_nanos: u32,
    /// Content length; 0 for everything but regular files.
    pub size: u64,
    /// Extended attributes (`security.capability`, `user.*`, ...).
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl TarEntry {
    fn new(path: impl Into<PathBuf>, kind: EntryKind, mode: u32) -> TarEntry {
        TarEntry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nanos: 0,
            size: 0,
            xattrs: BTreeMap::new(),
        }
    }

    /// A regular file of `size` bytes, mode 0644, owned by root, mtime 0.
    pub fn file(path: impl Into<PathBuf>, size: u64) -> TarEntry {
        TarEntry {
            size,
            ..TarEntry::new(path, EntryKind::File, 0o644)
        }
    }

    /// A directory, mode 0755.
    pub fn dir(path: impl Into<PathBuf>) -> TarEntry {
        TarEntry::new(path, EntryKind::Dir, 0o755)
    }

    /// A symlink, mode 0777.
    pub fn symlink(path: impl Into<PathBuf>, target: impl Into<PathBuf>) -> TarEntry {
        TarEntry::new(path, EntryKind::Symlink(target.into()), 0o777)
    }

    /// A hard link to `target`, another path in the same layer.
    pub fn hardlink(path: impl Into<PathBuf>, target: impl Into<PathBuf>) -> TarEntry {
        TarEntry::new(path, EntryKind::Hardlink(target.into()), 0o644)
    }

    /// A character device.
    pub fn char_device(path: impl Into<PathBuf>, major: u32, minor: u32) -> TarEntry {
        TarEntry::new(path, EntryKind::Char(major, minor), 0o666)
    }

    /// A block device.
    pub fn block_device(path: impl Into<PathBuf>, major: u32, minor: u32) -> TarEntry {
        TarEntry::new(path, EntryKind::Block(major, minor), 0o660)
    }

    /// A fifo.
    pub fn fifo(path: impl Into<PathBuf>) -> TarEntry {
        TarEntry::new(path, EntryKind::Fifo, 0o644)
    }

    /// The whiteout entry that deletes `path` in lower layers: an empty file `dir/.wh.name`.
    pub fn whiteout(path: impl AsRef<Path>) -> TarEntry {
        TarEntry::file(whiteout_path(path.as_ref()), 0)
    }

    /// The opaque whiteout for `dir`: hides everything lower layers put in it.
    pub fn opaque_whiteout(dir: impl AsRef<Path>) -> TarEntry {
        TarEntry::file(opaque_whiteout_path(dir.as_ref()), 0)
    }

    /// Sets the mode.
    pub fn with_mode(mut self, mode: u32) -> TarEntry {
        self.mode = mode;
        self
    }

    /// Sets the owner.
    pub fn with_owner(mut self, uid: u64, gid: u64) -> TarEntry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Sets the modification time.
    pub fn with_mtime(mut self, secs: i64, nanos: u32) -> TarEntry {
        self.mtime = secs;
        self.mtime_nanos = nanos;
        self
    }

    /// Adds an extended attribute.
    pub fn with_xattr(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> TarEntry {
        self.xattrs.insert(name.into(), value.into());
        self
    }

    /// If this entry is a whiteout, what it removes.
    pub fn whiteout_target(&self) -> Option<Whiteout> {
        whiteout_target(&self.path)
    }
}

/// The prefix that marks a whiteout file.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The name of the opaque-directory marker.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// `dir/name` → `dir/.wh.name`.
pub fn whiteout_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default();
    let mut wh = Vec::with_capacity(WHITEOUT_PREFIX.len() + name.len());
    wh.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
    wh.extend_from_slice(name.as_bytes());
    parent(path).join(OsStr::from_bytes(&wh))
}

/// `dir` → `dir/.wh..wh..opq`.
pub fn opaque_whiteout_path(dir: &Path) -> PathBuf {
    dir.join(OPAQUE_WHITEOUT)
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

/// What a whiteout entry removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whiteout {
    /// Delete this path from lower layers.
    Remove(PathBuf),
    /// Hide everything lower layers have in this directory.
    Opaque(PathBuf),
}

/// Interprets a path as a whiteout, if its name is one.
pub fn whiteout_target(path: &Path) -> Option<Whiteout> {
    let name = path.file_name()?.as_bytes();
    if name == OPAQUE_WHITEOUT.as_bytes() {
        return Some(Whiteout::Opaque(parent(path).to_path_buf()));
    }
    let rest = name.strip_prefix(WHITEOUT_PREFIX.as_bytes())?;
    if rest.is_empty() {
        return None;
    }
    Some(Whiteout::Remove(parent(path).join(OsStr::from_bytes(rest))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_names() {
        assert_eq!(
            whiteout_path(Path::new("etc/passwd")),
            Path::new("etc/.wh.passwd")
        );
        assert_eq!(whiteout_path(Path::new("top")), Path::new(".wh.top"));
        assert_eq!(
            opaque_whiteout_path(Path::new("var/cache")),
            Path::new("var/cache/.wh..wh..opq")
        );
        assert_eq!(
            whiteout_target(Path::new("etc/.wh.passwd")),
            Some(Whiteout::Remove("etc/passwd".into()))
        );
        assert_eq!(
            whiteout_target(Path::new("var/cache/.wh..wh..opq")),
            Some(Whiteout::Opaque("var/cache".into()))
        );
        assert_eq!(whiteout_target(Path::new("etc/passwd")), None);
        assert_eq!(TarEntry::whiteout("a/b").path, Path::new("a/.wh.b"));
    }
}
