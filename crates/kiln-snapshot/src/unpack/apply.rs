//! One layer's entries, applied in order onto a root directory fd.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_oci::layer::{EntryKind, TarEntry};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};
use xattr::FileExt;

use super::at::{self, Id, DIR_PATH, DIR_READ};
use super::name::{action, Action, CleanPath, NameError};
use super::{UnpackError, UnpackOptions, UnpackStats};

/// File content is copied through one buffer of this size, whatever the file size.
const COPY_BUFFER: usize = 256 * 1024;
/// Bounds the walk up from a directory to the root (see `mark_touched`); real trees are far
/// shallower, and the walk only reads.
const MAX_ANCESTOR_WALK: usize = 4096;

type Result<T, E = UnpackError> = std::result::Result<T, E>;

/// The state of applying one layer.
pub(crate) struct Applier<'a> {
    root: OwnedFd,
    opts: &'a UnpackOptions,
    /// Effective uid 0: `trusted.*` xattrs are worth attempting.
    privileged: bool,
    stats: UnpackStats,
    /// `(parent directory, name)` of every entry this layer wrote. An opaque marker keeps
    /// these, and a whiteout leaves them alone: whiteouts hide lower layers only.
    created: HashSet<(Id, OsString)>,
    /// Directories this layer wrote, or wrote something below. An opaque marker looks inside
    /// these for lower content instead of removing them whole.
    touched: HashSet<Id>,
    /// Directories whose mode and times are set at the end, in first-seen order.
    dirs: Vec<DirMeta>,
    dir_slots: HashMap<Id, usize>,
    buf: Vec<u8>,
}

/// What to set on a directory once the layer's entries are all in.
struct DirMeta {
    path: CleanPath,
    raw: PathBuf,
    id: Id,
    mode: Mode,
    mtime: TimeSpec,
}

/// Where an entry's extended attributes go.
#[derive(Clone, Copy)]
enum XattrTarget<'f> {
    /// An open regular file or directory.
    File(&'f File),
    /// A name in a directory (symlinks and nodes, which are not opened).
    At(BorrowedFd<'f>, &'f OsStr),
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(Errno) -> UnpackError + 'p {
    move |e| UnpackError::Io {
        op,
        path: path.to_path_buf(),
        source: io::Error::from(e),
    }
}

fn mtime(entry: &TarEntry) -> TimeSpec {
    TimeSpec::new(entry.mtime, i64::from(entry.mtime_nanos))
}

fn mode(entry: &TarEntry) -> Mode {
    Mode::from_bits_truncate(entry.mode & 0o7777)
}

impl<'a> Applier<'a> {
    pub(crate) fn new(root: &Path, opts: &'a UnpackOptions) -> Result<Applier<'a>> {
        let root_err = |e: Errno| UnpackError::Root {
            path: root.to_path_buf(),
            source: e.into(),
        };
        let fd = nix::fcntl::open(root, DIR_READ, Mode::empty()).map_err(root_err)?;
        // Fail on an old kernel here, with a message that says why, not on the first entry.
        match at::open_in_root(fd.as_fd(), Path::new(""), DIR_PATH) {
            Ok(_) => {}
            Err(Errno::ENOSYS) => return Err(UnpackError::NoOpenat2(Errno::ENOSYS.into())),
            Err(e) => return Err(root_err(e)),
        }
        let root_id = at::fd_id(fd.as_fd()).map_err(root_err)?;
        Ok(Applier {
            root: fd,
            opts,
            privileged: nix::unistd::geteuid().is_root(),
            stats: UnpackStats::default(),
            created: HashSet::new(),
            touched: HashSet::from([root_id]),
            dirs: Vec::new(),
            dir_slots: HashMap::new(),
            buf: vec![0; COPY_BUFFER],
        })
    }

    /// Applies one entry; `content` yields a regular file's bytes.
    pub(crate) fn apply(&mut self, entry: &TarEntry, content: &mut dyn Read) -> Result<()> {
        self.stats.entries += 1;
        let raw = entry.path.as_path();
        let path = CleanPath::parse(raw).map_err(|e| match e {
            NameError::Nul => invalid(raw, "name contains a NUL byte"),
            NameError::Escapes => UnpackError::Escapes {
                path: raw.to_path_buf(),
            },
        })?;
        match action(&path) {
            Action::Write => {}
            Action::AufsMeta => {
                self.stats.entries_skipped += 1;
                self.stats
                    .warn(format!("{}: AUFS metadata ignored", raw.display()));
                return Ok(());
            }
            Action::BadWhiteout => return Err(invalid(raw, "whiteout names no file")),
            Action::Whiteout { dir, name } => return self.whiteout(raw, &dir, &name),
            Action::Opaque { dir } => return self.opaque(raw, &dir),
        }
        let Some((parent_path, name)) = path.split() else {
            return self.root_entry(entry);
        };
        let parent = self.open_parent(parent_path, raw)?;
        let parent_id = self.mark_touched(parent.as_fd(), raw)?;
        let parent = parent.as_fd();
        let created = match &entry.kind {
            EntryKind::Dir => self.dir(entry, &path, parent, name).map(|_| true),
            EntryKind::File => self.file(entry, parent, name, content).map(|_| true),
            EntryKind::Symlink(target) => self.symlink(entry, parent, name, target).map(|_| true),
            EntryKind::Hardlink(target) => self.hardlink(entry, parent, name, target).map(|_| true),
            EntryKind::Char(major, minor) => {
                let dev = makedev(u64::from(*major), u64::from(*minor));
                self.node(entry, parent, name, SFlag::S_IFCHR, dev)
            }
            EntryKind::Block(major, minor) => {
                let dev = makedev(u64::from(*major), u64::from(*minor));
                self.node(entry, parent, name, SFlag::S_IFBLK, dev)
            }
            EntryKind::Fifo => self.node(entry, parent, name, SFlag::S_IFIFO, 0),
        }?;
        if created {
            self.created.insert((parent_id, name.to_owned()));
        }
        Ok(())
    }

    /// Sets the deferred directory modes and times, deepest (latest) first so a directory
    /// made read-only does not block fixing up its children. Returns the layer's stats.
    pub(crate) fn finish(self) -> Result<UnpackStats> {
        for d in self.dirs.iter().rev() {
            let flags = DIR_READ | OFlag::O_NOFOLLOW;
            let fd = match at::open_in_root(self.root.as_fd(), d.path.as_path(), flags) {
                Ok(fd) => fd,
                // Replaced or removed later in the layer: nothing of it left to restore.
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                Err(e) => return Err(io_err("reopen directory", &d.raw)(e)),
            };
            // The name may now lead to another directory (its parent was replaced later in
            // the layer); only the directory the entry made gets its metadata.
            if at::fd_id(fd.as_fd()).map_err(io_err("stat directory", &d.raw))? != d.id {
                continue;
            }
            fchmod(&fd, d.mode).map_err(io_err("chmod", &d.raw))?;
            futimens(&fd, &d.mtime, &d.mtime).map_err(io_err("set times", &d.raw))?;
        }
        Ok(self.stats)
    }

    /// Opens the parent directory of an entry, creating missing directories on the way
    /// (mode 0755, as Docker does for layers that omit parent entries).
    fn open_parent(&mut self, parent: &Path, raw: &Path) -> Result<OwnedFd> {
        match at::open_in_root(self.root.as_fd(), parent, DIR_PATH) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOENT) => self.create_parents(parent, raw),
            Err(e) => Err(io_err("open parent directory", raw)(e)),
        }
    }

    fn create_parents(&mut self, parent: &Path, raw: &Path) -> Result<OwnedFd> {
        let root = self.root.as_fd();
        let mut dir =
            at::open_in_root(root, Path::new(""), DIR_PATH).map_err(io_err("open root", raw))?;
        let mut prefix = PathBuf::new();
        for comp in parent.iter() {
            prefix.push(comp);
            dir = match at::open_in_root(root, &prefix, DIR_PATH) {
                Ok(next) => next,
                Err(Errno::ENOENT) => {
                    match mkdirat(&dir, comp, Mode::from_bits_truncate(0o755)) {
                        Ok(()) => {}
                        // Something is there that the lookup could not enter.
                        Err(Errno::EEXIST) => {
                            return Err(invalid(
                                raw,
                                &format!("parent {} is a dangling symlink", prefix.display()),
                            ))
                        }
                        Err(e) => return Err(io_err("create parent directory", raw)(e)),
                    }
                    // mkdir honours the umask; the mode should not depend on it.
                    let mode = Mode::from_bits_truncate(0o755);
                    fchmodat(&dir, comp, mode, FchmodatFlags::NoFollowSymlink)
                        .map_err(io_err("chmod parent directory", raw))?;
                    at::open_in_root(root, &prefix, DIR_PATH)
                        .map_err(io_err("open parent directory", raw))?
                }
                Err(e) => return Err(io_err("open parent directory", raw)(e)),
            };
        }
        Ok(dir)
    }

    /// Records `dir` and its ancestors up to the root as touched by this layer; returns
    /// `dir`'s identity.
    ///
    /// Walks `..` from the fd, which follows the real tree, so it needs no names and stops at
    /// the first directory already recorded (the root always is). Sorted layers pay one
    /// `fstat` per entry.
    fn mark_touched(&mut self, dir: BorrowedFd<'_>, raw: &Path) -> Result<Id> {
        let err = io_err("find parent directories", raw);
        let first = match at::fd_id(dir) {
            Ok(id) => id,
            Err(e) => return Err(err(e)),
        };
        if !self.touched.insert(first) {
            return Ok(first);
        }
        let mut below = first;
        let mut cur = openat(dir, "..", DIR_PATH, Mode::empty());
        for _ in 0..MAX_ANCESTOR_WALK {
            let fd = match cur {
                Ok(fd) => fd,
                Err(e) => return Err(io_err("find parent directories", raw)(e)),
            };
            let up = at::fd_id(fd.as_fd()).map_err(io_err("find parent directories", raw))?;
            if up == below || !self.touched.insert(up) {
                break;
            }
            below = up;
            cur = openat(&fd, "..", DIR_PATH, Mode::empty());
        }
        Ok(first)
    }

    /// Clears `name` in `parent` for a new entry: a directory stays when `keep_dir` (the new
    /// entry is a directory too), anything else is removed, with its whole tree.
    /// Returns true if a directory was kept.
    fn clear_slot(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        keep_dir: bool,
        raw: &Path,
    ) -> Result<bool> {
        match at::lstat_at(parent, name).map_err(io_err("stat existing entry", raw))? {
            None => Ok(false),
            Some(st) if keep_dir && at::is_dir(&st) => Ok(true),
            Some(_) => {
                at::remove_tree(parent, name).map_err(io_err("remove existing entry", raw))?;
                Ok(false)
            }
        }
    }

    fn root_entry(&mut self, entry: &TarEntry) -> Result<()> {
        let raw = entry.path.as_path();
        if entry.kind != EntryKind::Dir {
            return Err(UnpackError::ReplacesRoot {
                path: raw.to_path_buf(),
            });
        }
        let fd = self.root.try_clone().map_err(|source| UnpackError::Io {
            op: "duplicate root fd",
            path: raw.to_path_buf(),
            source,
        })?;
        self.dir_metadata(entry, CleanPath::root(), File::from(fd))
    }

    fn dir(
        &mut self,
        entry: &TarEntry,
        path: &CleanPath,
        parent: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<()> {
        let raw = entry.path.as_path();
        if !self.clear_slot(parent, name, true, raw)? {
            // Owner-only until the layer is done (the real mode is set in `finish`): a
            // rootless unpacker must be able to fill a directory the image makes read-only.
            mkdirat(parent, name, Mode::S_IRWXU).map_err(io_err("create directory", raw))?;
        }
        let fd =
            at::open_child_dir(parent, name, DIR_READ).map_err(io_err("open directory", raw))?;
        self.dir_metadata(entry, path.clone(), File::from(fd))
    }

    /// Owner and xattrs now; mode and times at the end.
    fn dir_metadata(&mut self, entry: &TarEntry, path: CleanPath, dir: File) -> Result<()> {
        let raw = entry.path.as_path();
        self.chown_fd(entry, &dir)?;
        self.set_xattrs(entry, XattrTarget::File(&dir))?;
        let id = at::fd_id(dir.as_fd()).map_err(io_err("stat directory", raw))?;
        self.touched.insert(id);
        let meta = DirMeta {
            path,
            raw: raw.to_path_buf(),
            id,
            mode: mode(entry),
            mtime: mtime(entry),
        };
        // A directory listed twice keeps its first place in the order, with the last values.
        match self.dir_slots.get(&id) {
            Some(&i) => self.dirs[i] = meta,
            None => {
                self.dir_slots.insert(id, self.dirs.len());
                self.dirs.push(meta);
            }
        }
        Ok(())
    }

    fn file(
        &mut self,
        entry: &TarEntry,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        content: &mut dyn Read,
    ) -> Result<()> {
        let raw = entry.path.as_path();
        self.clear_slot(parent, name, false, raw)?;
        // O_EXCL|O_NOFOLLOW: the slot was just cleared; if anything is back, refuse rather
        // than write through it.
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(parent, name, flags, Mode::S_IRUSR | Mode::S_IWUSR)
            .map_err(io_err("create file", raw))?;
        let mut file = File::from(fd);
        loop {
            let n = match content.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(UnpackError::Content {
                        path: raw.to_path_buf(),
                        source,
                    })
                }
            };
            file.write_all(&self.buf[..n])
                .map_err(|source| UnpackError::Io {
                    op: "write file",
                    path: raw.to_path_buf(),
                    source,
                })?;
            self.stats.bytes += n as u64;
        }
        // Writing and chown both clear setuid and file capabilities, so: content, owner,
        // mode, xattrs, then times (which every step before would bump).
        self.chown_fd(entry, &file)?;
        fchmod(&file, mode(entry)).map_err(io_err("chmod", raw))?;
        self.set_xattrs(entry, XattrTarget::File(&file))?;
        let t = mtime(entry);
        futimens(&file, &t, &t).map_err(io_err("set times", raw))
    }

    fn symlink(
        &mut self,
        entry: &TarEntry,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        target: &Path,
    ) -> Result<()> {
        let raw = entry.path.as_path();
        if target.as_os_str().as_bytes().contains(&0) {
            return Err(invalid(raw, "symlink target contains a NUL byte"));
        }
        self.clear_slot(parent, name, false, raw)?;
        // The target is stored as written; it is only ever resolved inside the root.
        symlinkat(target, parent, name).map_err(io_err("create symlink", raw))?;
        self.finish_at(entry, parent, name, false)
    }

    fn hardlink(
        &mut self,
        entry: &TarEntry,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        target: &Path,
    ) -> Result<()> {
        let raw = entry.path.as_path();
        let bad = |reason| UnpackError::BadLinkTarget {
            path: raw.to_path_buf(),
            target: target.to_path_buf(),
            reason,
        };
        let clean = CleanPath::parse(target).map_err(|e| match e {
            NameError::Nul => invalid(raw, "hard link target contains a NUL byte"),
            NameError::Escapes => bad("escapes the layer root"),
        })?;
        let Some((target_dir, target_name)) = clean.split() else {
            return Err(bad("is the root directory"));
        };
        let target_parent = match at::open_in_root(self.root.as_fd(), target_dir, DIR_PATH) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Err(bad("does not exist")),
            Err(e) => return Err(io_err("open hard link target directory", raw)(e)),
        };
        let target_st = at::lstat_at(target_parent.as_fd(), target_name)
            .map_err(io_err("stat hard link target", raw))?
            .ok_or_else(|| bad("does not exist"))?;
        if at::is_dir(&target_st) {
            return Err(bad("is a directory"));
        }
        if let Some(existing) =
            at::lstat_at(parent, name).map_err(io_err("stat existing entry", raw))?
        {
            if at::id(&existing) == at::id(&target_st) {
                // Already that very file (a link to itself, or a repeated entry).
                return Ok(());
            }
            at::remove_tree(parent, name).map_err(io_err("remove existing entry", raw))?;
        }
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink, as tar means it.
        linkat(&target_parent, target_name, parent, name, AtFlags::empty())
            .map_err(io_err("create hard link", raw))
    }

    /// Creates a device or fifo. Returns false for a device skipped because `mknod` was
    /// refused, as it is without CAP_MKNOD in the initial user namespace.
    fn node(
        &mut self,
        entry: &TarEntry,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        kind: SFlag,
        dev: nix::libc::dev_t,
    ) -> Result<bool> {
        let raw = entry.path.as_path();
        self.clear_slot(parent, name, false, raw)?;
        match mknodat(parent, name, kind, Mode::S_IRUSR | Mode::S_IWUSR, dev) {
            Ok(()) => {}
            Err(Errno::EPERM) if kind != SFlag::S_IFIFO => {
                self.stats.devices_skipped += 1;
                self.stats.warn(format!(
                    "{}: device node not created (mknod not permitted)",
                    raw.display()
                ));
                return Ok(false);
            }
            Err(e) => return Err(io_err("create node", raw)(e)),
        }
        self.finish_at(entry, parent, name, true)?;
        Ok(true)
    }

    /// Owner, mode (unless a symlink, whose mode Linux ignores), xattrs and times of an
    /// entry that was not opened, by name with no-follow flags.
    fn finish_at(
        &mut self,
        entry: &TarEntry,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        chmod: bool,
    ) -> Result<()> {
        let raw = entry.path.as_path();
        if let Some((uid, gid)) = self.owner(entry)? {
            fchownat(
                parent,
                name,
                Some(uid),
                Some(gid),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(io_err("chown", raw))?;
        }
        if chmod {
            fchmodat(parent, name, mode(entry), FchmodatFlags::NoFollowSymlink)
                .map_err(io_err("chmod", raw))?;
        }
        self.set_xattrs(entry, XattrTarget::At(parent, name))?;
        let t = mtime(entry);
        utimensat(parent, name, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(io_err("set times", raw))
    }

    fn whiteout(&mut self, raw: &Path, dir: &Path, name: &OsStr) -> Result<()> {
        self.stats.whiteouts += 1;
        let parent = match at::open_in_root(self.root.as_fd(), dir, DIR_PATH) {
            Ok(fd) => fd,
            // Nothing there to hide.
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
            Err(e) => return Err(io_err("open whiteout directory", raw)(e)),
        };
        let parent_id =
            at::fd_id(parent.as_fd()).map_err(io_err("stat whiteout directory", raw))?;
        if self.created.contains(&(parent_id, name.to_owned())) {
            return Ok(());
        }
        at::remove_tree(parent.as_fd(), name)
            .map(drop)
            .map_err(io_err("remove whited-out entry", raw))
    }

    fn opaque(&mut self, raw: &Path, dir: &Path) -> Result<()> {
        self.stats.whiteouts += 1;
        let fd = match at::open_in_root(self.root.as_fd(), dir, DIR_PATH) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
            Err(e) => return Err(io_err("open opaque directory", raw)(e)),
        };
        self.mark_touched(fd.as_fd(), raw)?;
        self.clear_lower(fd.as_fd(), raw)
    }

    /// Removes everything in `dir` this layer did not write, looking inside directories it
    /// wrote into. Recursion follows only this layer's own directories, so its depth is that
    /// of the layer's tree.
    fn clear_lower(&self, dir: BorrowedFd<'_>, raw: &Path) -> Result<()> {
        let err = || io_err("clear opaque directory", raw);
        let dir_id = at::fd_id(dir).map_err(err())?;
        for name in at::read_names(dir, usize::MAX).map_err(err())? {
            let Some(st) = at::lstat_at(dir, &name).map_err(err())? else {
                continue;
            };
            if at::is_dir(&st) && self.touched.contains(&at::id(&st)) {
                let child = at::open_child_dir(dir, &name, DIR_PATH).map_err(err())?;
                self.clear_lower(child.as_fd(), raw)?;
            } else if !self.created.contains(&(dir_id, name.clone())) {
                at::remove_tree(dir, &name).map_err(err())?;
            }
        }
        Ok(())
    }

    /// The owner to give entries, or `None` when ownership is left alone.
    fn owner(&self, entry: &TarEntry) -> Result<Option<(Uid, Gid)>> {
        if !self.opts.chown {
            return Ok(None);
        }
        // u32::MAX is chown's "leave unchanged", not an id.
        let id = |v: u64| u32::try_from(v).ok().filter(|&v| v != u32::MAX);
        match (id(entry.uid), id(entry.gid)) {
            (Some(uid), Some(gid)) => Ok(Some((Uid::from_raw(uid), Gid::from_raw(gid)))),
            _ => Err(UnpackError::Owner {
                path: entry.path.clone(),
                uid: entry.uid,
                gid: entry.gid,
            }),
        }
    }

    fn chown_fd(&self, entry: &TarEntry, file: &File) -> Result<()> {
        if let Some((uid, gid)) = self.owner(entry)? {
            fchown(file, Some(uid), Some(gid)).map_err(io_err("chown", &entry.path))?;
        }
        Ok(())
    }

    /// Why an attribute is not set, or `None` to set it.
    fn skip_xattr(&self, name: &str) -> Option<&'static str> {
        if name.starts_with("user.overlay.") || name.starts_with("trusted.overlay.") {
            // overlayfs reads these as its own whiteout/redirect metadata in a lower dir.
            Some("overlayfs metadata")
        } else if name.starts_with("user.") || name == "security.capability" {
            None
        } else if name.starts_with("trusted.") {
            (!self.privileged).then_some("trusted.* needs root")
        } else {
            Some("namespace not applied")
        }
    }

    fn set_xattrs(&mut self, entry: &TarEntry, target: XattrTarget<'_>) -> Result<()> {
        let raw = entry.path.as_path();
        for (name, value) in &entry.xattrs {
            if name.as_bytes().contains(&0) {
                return Err(invalid(raw, "xattr name contains a NUL byte"));
            }
            if let Some(reason) = self.skip_xattr(name) {
                self.stats.xattrs_skipped += 1;
                self.stats
                    .warn(format!("{}: xattr {name} not set: {reason}", raw.display()));
                continue;
            }
            let result = match target {
                XattrTarget::File(f) => f.set_xattr(name, value),
                // lsetxattr through our own fd's /proc entry: the name is one component in
                // a directory already resolved inside the root, and the final symlink (if
                // it is one) is not followed.
                XattrTarget::At(dir, n) => xattr::set(
                    Path::new("/proc/self/fd")
                        .join(dir.as_raw_fd().to_string())
                        .join(n),
                    name,
                    value,
                ),
            };
            match result {
                Ok(()) => self.stats.xattrs_set += 1,
                Err(e) if is_refusal(&e) && !self.opts.strict_xattrs => {
                    self.stats.xattrs_failed += 1;
                    self.stats
                        .warn(format!("{}: xattr {name} not set: {e}", raw.display()));
                }
                Err(source) => {
                    return Err(UnpackError::Xattr {
                        path: raw.to_path_buf(),
                        name: name.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

/// EPERM (no privilege, or `user.*` on a symlink or node) and ENOTSUP (the filesystem has no
/// such namespace): expected in rootless runs, so counted rather than fatal.
fn is_refusal(e: &io::Error) -> bool {
    e.raw_os_error()
        .is_some_and(|n| n == Errno::EPERM as i32 || n == Errno::ENOTSUP as i32)
}

fn invalid(path: &Path, reason: &str) -> UnpackError {
    UnpackError::InvalidEntry {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    }
}
