//! Filesystem operations relative to directory fds, never through host path strings.
//!
//! Paths from a layer reach the kernel in one way only: [`open_in_root`], which is `openat2`
//! with `RESOLVE_IN_ROOT`. Everything else works on a single name inside an fd obtained that
//! way, with `O_NOFOLLOW` or `AT_SYMLINK_NOFOLLOW` wherever the call could follow a symlink.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmodat, fstat, fstatat, FchmodatFlags, FileStat, Mode, SFlag};
use nix::unistd::{geteuid, unlinkat, UnlinkatFlags};

/// A directory handle good for `*at` calls and `fstat`, nothing else.
pub(crate) const DIR_PATH: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// A directory opened for reading, `fchown`, `fchmod`, `futimens` and `fsetxattr`.
pub(crate) const DIR_READ: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// `openat2` gives up with EAGAIN when a rename raced the lookup; a retry sees a settled tree.
const EAGAIN_RETRIES: usize = 16;

/// Names read per pass when emptying a directory, so a huge directory never sits in memory.
const REMOVE_BATCH: usize = 1024;

/// Opens `path` (already cleaned: relative, no `..`) with `root` as `/`: absolute symlinks
/// resolve against `root`, `..` stops there, and magic links (`/proc/self/fd/*`) are refused.
/// An empty path is the root itself.
pub(crate) fn open_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
) -> nix::Result<OwnedFd> {
    let path: &Path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut tries = 0;
    loop {
        match openat2(root, path, how) {
            Err(Errno::EAGAIN) if tries < EAGAIN_RETRIES => tries += 1,
            other => return other,
        }
    }
}

/// Identity of an inode.
pub(crate) type Id = (u64, u64);

pub(crate) fn id(st: &FileStat) -> Id {
    (st.st_dev, st.st_ino)
}

pub(crate) fn fd_id(fd: BorrowedFd<'_>) -> nix::Result<Id> {
    fstat(fd).map(|st| id(&st))
}

pub(crate) fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// `lstat` of one name in `dir`; `None` if it does not exist.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens the directory `name` in `dir` without following a symlink there.
pub(crate) fn open_child_dir(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlag,
) -> nix::Result<OwnedFd> {
    openat(dir, name, flags | OFlag::O_NOFOLLOW, Mode::empty())
}

/// Up to `limit` names in `dir` (without `.` and `..`), read from the start.
pub(crate) fn read_names(dir: BorrowedFd<'_>, limit: usize) -> nix::Result<Vec<OsString>> {
    // A fresh open each time: `dir` may be O_PATH, and a pass after removals must start over.
    let mut d = Dir::openat(dir, ".", DIR_READ, Mode::empty())?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(OsStr::from_bytes(name).to_owned());
        if names.len() >= limit {
            break;
        }
    }
    Ok(names)
}

/// Removes `name` from `dir`, with everything below it if it is a directory. Symlinks are
/// removed, never followed. Returns false if there was nothing to remove.
///
/// Depth-first with an explicit stack (one open fd per level) rather than recursion, so a
/// hostile deep tree costs file descriptors, which fail cleanly, not the thread's stack.
pub(crate) fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<bool> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(false);
    };
    if !is_dir(&st) {
        return ignore_enoent(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)).map(|_| true);
    }
    make_removable(dir, name, &st);
    let mut stack: Vec<(OwnedFd, OsString)> =
        vec![(open_child_dir(dir, name, DIR_PATH)?, name.to_owned())];
    while let Some((top, _)) = stack.last() {
        let top = top.as_fd();
        let batch = read_names(top, REMOVE_BATCH)?;
        let mut descend = None;
        for child in &batch {
            match lstat_at(top, child)? {
                None => {}
                Some(st) if is_dir(&st) => {
                    make_removable(top, child, &st);
                    descend = Some((open_child_dir(top, child, DIR_PATH)?, child.clone()));
                    break;
                }
                Some(_) => {
                    ignore_enoent(unlinkat(top, child.as_os_str(), UnlinkatFlags::NoRemoveDir))?
                }
            }
        }
        if let Some(next) = descend {
            stack.push(next);
        } else if batch.is_empty() {
            let Some((_, emptied)) = stack.pop() else {
                break;
            };
            let parent = stack.last().map_or(dir, |(fd, _)| fd.as_fd());
            ignore_enoent(unlinkat(
                parent,
                emptied.as_os_str(),
                UnlinkatFlags::RemoveDir,
            ))?;
        }
    }
    Ok(true)
}

/// Gives the owner rwx on a directory about to be emptied. Without CAP_DAC_OVERRIDE
/// (rootless with no uid mapping) a read-only directory from an earlier layer could not be
/// emptied otherwise. A failure is left for the removal itself to report.
fn make_removable(dir: BorrowedFd<'_>, name: &OsStr, st: &FileStat) {
    if st.st_mode & 0o700 != 0o700 && st.st_uid == geteuid().as_raw() {
        let mode = Mode::from_bits_truncate((st.st_mode | 0o700) & 0o7777);
        let _ = fchmodat(dir, name, mode, FchmodatFlags::NoFollowSymlink);
    }
}

fn ignore_enoent(r: nix::Result<()>) -> nix::Result<()> {
    match r {
        Err(Errno::ENOENT) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn root_fd(p: &Path) -> OwnedFd {
        nix::fcntl::open(p, DIR_READ, Mode::empty()).unwrap()
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("run")).unwrap();
        fs::create_dir_all(root.join("var")).unwrap();
        symlink("/run", root.join("var/run")).unwrap();
        symlink("../../../../..", root.join("up")).unwrap();
        let fd = root_fd(&root);
        let want = fd_id(
            open_in_root(fd.as_fd(), Path::new("run"), DIR_PATH)
                .unwrap()
                .as_fd(),
        )
        .unwrap();
        let got = open_in_root(fd.as_fd(), Path::new("var/run"), DIR_PATH).unwrap();
        assert_eq!(fd_id(got.as_fd()).unwrap(), want);
        // `..` through a symlink stops at the root.
        let up = open_in_root(fd.as_fd(), Path::new("up"), DIR_PATH).unwrap();
        assert_eq!(fd_id(up.as_fd()).unwrap(), fd_id(fd.as_fd()).unwrap());
        assert_eq!(
            fd_id(
                open_in_root(fd.as_fd(), Path::new(""), DIR_PATH)
                    .unwrap()
                    .as_fd()
            )
            .unwrap(),
            fd_id(fd.as_fd()).unwrap()
        );
    }

    #[test]
    fn remove_tree_removes_nested_content_but_not_symlink_targets() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let root = t.path().join("root");
        let mut deep = root.join("tree");
        for i in 0..50 {
            deep = deep.join(format!("d{i}"));
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f"), "x").unwrap();
        for i in 0..(REMOVE_BATCH + 10) {
            fs::write(root.join("tree").join(format!("f{i}")), "").unwrap();
        }
        symlink(&outside, root.join("tree/link")).unwrap();
        let fd = root_fd(&root);
        assert!(remove_tree(fd.as_fd(), OsStr::new("tree")).unwrap());
        assert!(!root.join("tree").exists());
        assert!(outside.join("keep").exists());
        assert!(!remove_tree(fd.as_fd(), OsStr::new("tree")).unwrap());
    }
}
