//! Whole-tree operations on snapshot directories: faithful copies, applying an overlay-format
//! layer directory onto a full tree (flattening), and removal.
//!
//! These work on kiln's own directories, never on a live container: nothing else changes the
//! trees while they run. Paths are still handled without following symlinks (`lstat`,
//! `O_NOFOLLOW`, `lchown`, `AT_SYMLINK_NOFOLLOW`), and a directory is only entered after
//! `lstat` said it is one, so a symlink an image put in a tree is copied as a symlink and
//! never leads outside.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, AT_FDCWD};
use nix::sys::stat::{SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::SnapshotError;
use crate::overlay::{absent_xattr, is_opaque, is_overlay_xattr, is_whiteout, XattrFlavour};

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

fn nix_err(op: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |e| SnapshotError::Io {
        op,
        path,
        source: e.into(),
    }
}

fn lstat(path: &Path) -> Result<fs::Metadata, SnapshotError> {
    fs::symlink_metadata(path).map_err(io_err("stat", path))
}

fn lstat_opt(path: &Path) -> Result<Option<fs::Metadata>, SnapshotError> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>, SnapshotError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        names.push(entry.map_err(io_err("read directory", dir))?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Copies files one by one, keeping hard links (by source inode) and finishing directories
/// last.
#[derive(Default)]
struct Copier {
    links: HashMap<(u64, u64), PathBuf>,
    /// Directories created or taken over: (destination, source metadata, source path).
    dirs: Vec<(PathBuf, fs::Metadata, PathBuf)>,
}

impl Copier {
    /// Copies the non-directory `src` to the new name `dst`.
    fn node(&mut self, src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<(), SnapshotError> {
        let ft = meta.file_type();
        if ft.is_socket() {
            // Sockets only mean something to a live process.
            return Ok(());
        }
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                return fs::hard_link(first, dst).map_err(io_err("hard link", dst));
            }
            self.links.insert(key, dst.to_path_buf());
        }
        if ft.is_file() {
            let mut from = OpenOptions::new()
                .read(true)
                .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
                .open(src)
                .map_err(io_err("open", src))?;
            let mut to = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
                .open(dst)
                .map_err(io_err("create", dst))?;
            // std uses copy_file_range, so filesystems that can share extents do.
            io::copy(&mut from, &mut to).map_err(io_err("copy into", dst))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(src).map_err(io_err("read link", src))?;
            std::os::unix::fs::symlink(target, dst).map_err(io_err("create symlink", dst))?;
        } else {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else if ft.is_block_device() {
                SFlag::S_IFBLK
            } else {
                SFlag::S_IFIFO
            };
            nix::sys::stat::mknod(
                dst,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                meta.rdev(),
            )
            .map_err(nix_err("create device node", dst))?;
        }
        set_meta(dst, meta, src, false)
    }

    /// Sets every recorded directory's metadata, deepest first, so that filling a directory
    /// no longer changes its mtime and a read-only one was still writable while filled.
    fn finish(self) -> Result<(), SnapshotError> {
        for (dst, meta, src) in self.dirs.iter().rev() {
            set_meta(dst, meta, src, true)?;
        }
        Ok(())
    }
}

/// Gives `dst` the owner, mode, xattrs and times of `src`. Owner first (a chown clears
/// setuid bits and file capabilities), then mode, then xattrs, then times. With `replace`,
/// xattrs `dst` has and `src` lacks are removed.
fn set_meta(
    dst: &Path,
    meta: &fs::Metadata,
    src: &Path,
    replace: bool,
) -> Result<(), SnapshotError> {
    let now = lstat(dst)?;
    if now.uid() != meta.uid() || now.gid() != meta.gid() {
        std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
            .map_err(io_err("chown", dst))?;
    }
    let symlink = meta.file_type().is_symlink();
    if !symlink {
        fs::set_permissions(dst, Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err("chmod", dst))?;
    }
    let wanted = list_xattrs(src)?;
    if replace {
        for name in list_xattrs(dst)? {
            if !wanted.contains(&name) {
                xattr::remove(dst, &name).map_err(io_err("remove xattr", dst))?;
            }
        }
    }
    for name in wanted {
        let value = match xattr::get(src, &name) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) if absent_xattr(&e) => continue,
            Err(e) => return Err(io_err("read xattr", src)(e)),
        };
        xattr::set(dst, &name, &value).map_err(io_err("set xattr", dst))?;
    }
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    nix::sys::stat::utimensat(
        AT_FDCWD,
        dst,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(nix_err("set times", dst))
}

/// Xattr names of `path` that describe the file, not overlay's bookkeeping.
fn list_xattrs(path: &Path) -> Result<Vec<OsString>, SnapshotError> {
    match xattr::list(path) {
        Ok(names) => Ok(names
            .filter(|n| !n.to_str().is_some_and(is_overlay_xattr))
            .collect()),
        Err(e) if absent_xattr(&e) => Ok(Vec::new()),
        Err(e) => Err(io_err("list xattrs", path)(e)),
    }
}

fn create_dir(dst: &Path) -> Result<(), SnapshotError> {
    // Owner-writable until finished, whatever the final mode.
    fs::create_dir(dst).map_err(io_err("create directory", dst))?;
    fs::set_permissions(dst, Permissions::from_mode(0o700)).map_err(io_err("chmod", dst))
}

/// Copies the tree `src` to `dst` (which must not exist): every type, owner, mode (with
/// setuid/setgid/sticky), xattr other than overlay's, atime and mtime, and hard links inside
/// the tree. Sockets are left out.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<(), SnapshotError> {
    let meta = lstat(src)?;
    if !meta.is_dir() {
        return Err(io_err("copy tree", src)(
            io::ErrorKind::NotADirectory.into(),
        ));
    }
    let mut c = Copier::default();
    create_dir(dst)?;
    c.dirs.push((dst.to_path_buf(), meta, src.to_path_buf()));
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((s, d)) = stack.pop() {
        for name in sorted_names(&s)? {
            let (sp, dp) = (s.join(&name), d.join(&name));
            let m = lstat(&sp)?;
            if m.is_dir() {
                create_dir(&dp)?;
                c.dirs.push((dp.clone(), m, sp.clone()));
                stack.push((sp, dp));
            } else {
                c.node(&sp, &dp, &m)?;
            }
        }
    }
    c.finish()
}

/// Copies one path of a tree (a file, or a directory with all below it) to `dst`.
pub(crate) fn copy_path(src: &Path, dst: &Path) -> Result<(), SnapshotError> {
    let meta = lstat(src)?;
    if meta.is_dir() {
        return copy_tree(src, dst);
    }
    Copier::default().node(src, dst, &meta)
}

/// Applies an overlay-format layer directory (a committed upper directory: 0/0 devices or
/// `*.overlay.whiteout` files for deletions, `*.overlay.opaque=y` directories in `flavour`'s
/// namespace) onto the full tree `dst`, as overlay would show `layer` over `dst`. `flavour`
/// None means the layer has no opaque marks to honour.
pub(crate) fn apply_layer_dir(
    layer: &Path,
    dst: &Path,
    flavour: Option<XattrFlavour>,
) -> Result<(), SnapshotError> {
    let mut c = Copier::default();
    let mut stack = vec![(layer.to_path_buf(), dst.to_path_buf())];
    while let Some((s, d)) = stack.pop() {
        for name in sorted_names(&s)? {
            let (sp, dp) = (s.join(&name), d.join(&name));
            let m = lstat(&sp)?;
            if is_whiteout(&sp, &m, flavour) {
                remove_any(&dp)?;
                continue;
            }
            let existing = lstat_opt(&dp)?;
            if m.is_dir() {
                match existing {
                    Some(e) if e.is_dir() => {
                        let opaque = match flavour {
                            Some(f) => {
                                is_opaque(&sp, Some(f)).map_err(io_err("read xattrs", &sp))?
                            }
                            None => false,
                        };
                        if opaque {
                            clear_dir(&dp)?;
                        }
                        // Make sure it can be filled; its mode is restored in finish().
                        fs::set_permissions(&dp, Permissions::from_mode(0o700))
                            .map_err(io_err("chmod", &dp))?;
                    }
                    Some(_) => {
                        remove_any(&dp)?;
                        create_dir(&dp)?;
                    }
                    None => create_dir(&dp)?,
                }
                c.dirs.push((dp.clone(), m, sp.clone()));
                stack.push((sp, dp));
            } else {
                if existing.is_some() {
                    remove_any(&dp)?;
                }
                c.node(&sp, &dp, &m)?;
            }
        }
    }
    c.finish()
}

/// Removes whatever is at `path` (a directory with everything in it); absent is fine.
pub(crate) fn remove_any(path: &Path) -> Result<(), SnapshotError> {
    match lstat_opt(path)? {
        None => Ok(()),
        Some(m) if m.is_dir() => remove_tree(path).map_err(io_err("remove", path)),
        Some(_) => fs::remove_file(path).map_err(io_err("remove", path)),
    }
}

/// Empties the directory `path`.
fn clear_dir(path: &Path) -> Result<(), SnapshotError> {
    for name in sorted_names(path)? {
        remove_any(&path.join(name))?;
    }
    Ok(())
}

/// Removes the tree at `path`, absent is fine. Directories a step made read-only or
/// unreadable (`chmod 0555`, overlay's `work/work`) are opened up and the removal retried.
///
/// Files owned by other users can only be removed by a process privileged over them: root,
/// or — for a rootless build, whose snapshots hold files of the subordinate ids — a process
/// inside the build's user namespace. Outside it this fails with `EACCES`/`EPERM`.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return fs::remove_file(path),
        Ok(_) => {}
    }
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            open_up(path);
            fs::remove_dir_all(path)
        }
        other => other,
    }
}

/// Adds owner rwx to every directory under `path` that lacks it, where we are allowed to.
fn open_up(path: &Path) {
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        if meta.mode() & 0o700 != 0o700 {
            let _ = fs::set_permissions(&dir, Permissions::from_mode(meta.mode() | 0o700));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_keeps_links_modes_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("d/e")).unwrap();
        fs::write(src.join("d/f"), b"content").unwrap();
        fs::hard_link(src.join("d/f"), src.join("g")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("abs")).unwrap();
        fs::set_permissions(src.join("d/f"), Permissions::from_mode(0o4755)).unwrap();
        fs::set_permissions(src.join("d"), Permissions::from_mode(0o555)).unwrap();
        let dst = dir.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        let f = lstat(&dst.join("d/f")).unwrap();
        assert_eq!(f.mode() & 0o7777, 0o4755);
        assert_eq!(f.ino(), lstat(&dst.join("g")).unwrap().ino());
        assert_eq!(
            fs::read_link(dst.join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        let d = lstat(&dst.join("d")).unwrap();
        assert_eq!(d.mode() & 0o7777, 0o555);
        assert_eq!(d.mtime(), lstat(&src.join("d")).unwrap().mtime());
        remove_tree(&dst).unwrap();
        assert!(!dst.exists());
    }

    #[test]
    fn remove_tree_opens_read_only_directories() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        fs::create_dir_all(t.join("a/b")).unwrap();
        fs::write(t.join("a/b/f"), b"x").unwrap();
        fs::set_permissions(t.join("a/b"), Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(t.join("a"), Permissions::from_mode(0o500)).unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        remove_tree(&t).unwrap();
    }
}
