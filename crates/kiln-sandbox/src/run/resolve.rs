//! Resolving a container path inside the root filesystem, one component at a time through
//! directory descriptors, so that a hostile image cannot point a mount target outside the
//! root: symlinks are read and re-walked from the container's root (never the host's),
//! `..` stops at the root, and magic links (/proc/self/fd/N) are treated as plain text.
//! Missing directories and files can be created on the way; each creation is reported.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};

/// What the caller needs at the end of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Whatever is there; missing is ENOENT.
    Existing,
    /// A directory, created (with parents) if missing.
    Dir,
    /// A non-directory, created as an empty file (parents as directories) if missing.
    File,
}

/// Called after each creation with the parent directory, the new entry's name and its
/// path relative to the root.
pub(crate) type OnCreate<'a> =
    &'a mut dyn FnMut(BorrowedFd<'_>, &OsStr, &PathBuf) -> nix::Result<()>;

const MAX_SYMLINKS: u32 = 40;

fn components(path: &[u8]) -> impl Iterator<Item = OsString> + '_ {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsStr::from_bytes(c).to_os_string())
}

/// Resolves `path` (absolute or not, it is always taken from `root`) and returns an
/// `O_PATH` descriptor of what it names. The descriptor of a mount point names the mount
/// on it, so calling this again after mounting gives the new mount's root.
pub(crate) fn resolve_in_root(
    root: BorrowedFd<'_>,
    path: &str,
    want: Want,
    on_create: OnCreate<'_>,
) -> nix::Result<OwnedFd> {
    let mut pending: VecDeque<OsString> = components(path.as_bytes()).collect();
    let mut stack: Vec<(OwnedFd, OsString)> = Vec::new();
    let mut links = 0;
    // Bounds the loop even if something keeps deleting what we create.
    let mut steps = 0;
    while let Some(name) = pending.pop_front() {
        steps += 1;
        if steps > 4096 {
            return Err(Errno::ELOOP);
        }
        if name == ".." {
            stack.pop();
            continue;
        }
        let last = pending.is_empty();
        let dir = stack.last().map(|(fd, _)| fd.as_fd()).unwrap_or(root);
        match fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
                if kind == SFlag::S_IFLNK {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Errno::ELOOP);
                    }
                    let target = readlinkat(dir, name.as_os_str())?;
                    let bytes = target.as_bytes();
                    if bytes.first() == Some(&b'/') {
                        stack.clear();
                    }
                    let rest: Vec<OsString> = pending.drain(..).collect();
                    pending.extend(components(bytes));
                    pending.extend(rest);
                    continue;
                }
                if kind == SFlag::S_IFDIR {
                    if last && want == Want::File {
                        return Err(Errno::EISDIR);
                    }
                    let fd = openat(
                        dir,
                        name.as_os_str(),
                        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )?;
                    stack.push((fd, name));
                    continue;
                }
                if !last || want == Want::Dir {
                    return Err(Errno::ENOTDIR);
                }
                return openat(
                    dir,
                    name.as_os_str(),
                    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                );
            }
            Err(Errno::ENOENT) if want != Want::Existing => {
                let mut rel: PathBuf = stack.iter().map(|(_, n)| n.as_os_str()).collect();
                rel.push(&name);
                if !last || want == Want::Dir {
                    match mkdirat(dir, name.as_os_str(), Mode::from_bits_truncate(0o755)) {
                        Ok(()) => on_create(dir, &name, &rel)?,
                        // Someone else made it in between; look again.
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                } else {
                    // O_EXCL|O_NOFOLLOW: never writes through a dangling symlink.
                    match openat(
                        dir,
                        name.as_os_str(),
                        OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_WRONLY
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o644),
                    ) {
                        Ok(_) => on_create(dir, &name, &rel)?,
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                }
                // Walk the new entry like any other.
                pending.push_front(name);
            }
            Err(e) => return Err(e),
        }
    }
    match stack.pop() {
        Some((fd, _)) => Ok(fd),
        None if want == Want::File => Err(Errno::EISDIR),
        None => openat(
            root,
            ".",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
    }
}

/// Opens a directory as the root for [`resolve_in_root`].
pub(crate) fn open_root(path: &std::path::Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::symlink;

    fn real_path(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
    }

    fn resolve(
        root: &std::path::Path,
        path: &str,
        want: Want,
    ) -> (nix::Result<PathBuf>, Vec<PathBuf>) {
        let rootfd = open_root(root).unwrap();
        let mut created = Vec::new();
        let r = resolve_in_root(rootfd.as_fd(), path, want, &mut |_, _, rel| {
            created.push(rel.clone());
            Ok(())
        });
        (r.map(|fd| real_path(&fd)), created)
    }

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("run/systemd/resolve")).unwrap();
        // The way Ubuntu images ship resolv.conf, and an attempt to reach the host's /etc.
        symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            root.join("etc/resolv.conf"),
        )
        .unwrap();
        symlink("/etc", root.join("hostetc")).unwrap();
        symlink("../../../../../../etc/passwd", root.join("up")).unwrap();

        let (r, created) = resolve(&root, "/etc/resolv.conf", Want::File);
        assert_eq!(
            r.unwrap(),
            root.join("run/systemd/resolve/stub-resolv.conf")
        );
        assert_eq!(
            created,
            vec![PathBuf::from("run/systemd/resolve/stub-resolv.conf")]
        );

        let (r, _) = resolve(&root, "/hostetc", Want::Existing);
        assert_eq!(r.unwrap(), root.join("etc"));

        let (r, created) = resolve(&root, "/up", Want::File);
        assert_eq!(r.unwrap(), root.join("etc/passwd"));
        assert_eq!(created, vec![PathBuf::from("etc/passwd")]);
    }

    #[test]
    fn creates_missing_parents_and_reports_each() {
        let t = tempfile::tempdir().unwrap();
        let (r, created) = resolve(t.path(), "/a/b/c", Want::Dir);
        assert_eq!(r.unwrap(), t.path().join("a/b/c"));
        assert_eq!(
            created,
            vec![
                PathBuf::from("a"),
                PathBuf::from("a/b"),
                PathBuf::from("a/b/c")
            ]
        );
        let (_, again) = resolve(t.path(), "/a/b/c", Want::Dir);
        assert!(again.is_empty());
    }

    #[test]
    fn magic_links_are_plain_text() {
        let t = tempfile::tempdir().unwrap();
        symlink("/proc/self/fd/0", t.path().join("escape")).unwrap();
        // No /proc inside this root: the walk must not fall through to the host's /proc.
        let (r, _) = resolve(t.path(), "/escape", Want::Existing);
        assert_eq!(r.unwrap_err(), Errno::ENOENT);
    }

    #[test]
    fn type_mismatches_and_loops() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("file"), b"x").unwrap();
        std::fs::create_dir(t.path().join("dir")).unwrap();
        symlink("loop", t.path().join("loop")).unwrap();
        assert_eq!(
            resolve(t.path(), "/file/x", Want::Existing).0.unwrap_err(),
            Errno::ENOTDIR
        );
        assert_eq!(
            resolve(t.path(), "/file", Want::Dir).0.unwrap_err(),
            Errno::ENOTDIR
        );
        assert_eq!(
            resolve(t.path(), "/dir", Want::File).0.unwrap_err(),
            Errno::EISDIR
        );
        assert_eq!(
            resolve(t.path(), "/loop", Want::Existing).0.unwrap_err(),
            Errno::ELOOP
        );
        assert_eq!(resolve(t.path(), "/", Want::Existing).0.unwrap(), t.path());
        assert_eq!(
            resolve(t.path(), "/../../dir", Want::Existing).0.unwrap(),
            t.path().join("dir")
        );
    }
}
