//! overlayfs: mounting a step's root from snapshot directories, telling whether overlay works
//! here at all, and recognising the marks overlay leaves in an upper directory.
//!
//! # Mount options
//!
//! Every mount gets `redirect_dir=nofollow,index=off,metacopy=off`: no redirect xattrs (a
//! renamed lower directory is copied up whole, `mv` sees `EXDEV` and copies), no inode index,
//! and no metadata-only copy-ups. Each of those would leave an upper directory that is not a
//! self-contained description of the change, and the differ reads the upper directory alone.
//! `userxattr` is added when running inside a user namespace: overlay then keeps its
//! metadata in `user.overlay.*` instead of `trusted.overlay.*`, which only the initial
//! namespace's root may write. (`redirect_dir=off` is refused together with `userxattr`,
//! because "off" still follows existing redirects; `nofollow` is accepted by both.)
//!
//! # Long lower lists
//!
//! The legacy `mount(2)` call copies at most one page of option text, so `lowerdir=` with
//! absolute paths runs out after a few dozen layers. When the absolute form does not fit,
//! [`OverlayMount::mount`] opens every directory with `O_PATH` and names it
//! `/proc/self/fd/N`: about 18 bytes per layer whatever the store path, which fits roughly
//! 200 layers in a 4 KiB page. Deeper chains are flattened by the snapshot store before they
//! reach this module (see [`crate::snapshots`]); overlay itself stops at 500 layers. Such a
//! mount shows the `/proc/self/fd/N` names in `/proc/mounts`, which mean nothing once the
//! descriptors are closed; [`OverlayMount::options`] gives the real paths.
//!
//! # What overlay leaves in the upper directory (Linux 6.18, observed)
//!
//! | change in the merged view | upper directory |
//! |---|---|
//! | delete a lower file or directory | a character device 0/0 with the same name; all of a mount's whiteouts are hard links of one inode |
//! | `rm -rf d && mkdir d`, or `mkdir` over a deleted lower file | directory with `trusted.overlay.opaque=y` (`user.overlay.opaque=y` with `userxattr`) |
//! | modify or only chmod/chown/touch a lower file | a full copy of the file (no metacopy) |
//! | rename a lower directory | `EXDEV` to the caller; `mv` copies, leaving a whole new directory and a whiteout |
//! | any copy-up | `*.overlay.origin`, `*.overlay.impure`, and `*.overlay.uuid` on the upper root |
//!
//! With `userxattr`, as root of a user namespace or as an unprivileged user inside one, the
//! whiteouts are still 0/0 character devices: the kernel lets anyone create that one device
//! number. Since 6.7 overlay also *reads* "xattr whiteouts" in lower layers (an empty file
//! with `*.overlay.whiteout`, in a directory marked `*.overlay.opaque=x`); it never creates
//! them in an upper directory, but [`is_whiteout`] accepts them too, and `opaque=x` is not
//! opaque.
//!
//! Only the namespace the mount used counts: on a mount without `userxattr` a step may set
//! `user.overlay.opaque` on its own files, and that is data, not a mark.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};

/// Options every kiln overlay mount carries (see the module docs for why).
pub const FIXED_OPTIONS: &str = "redirect_dir=nofollow,index=off,metacopy=off";

/// The most lower layers overlayfs stacks in one mount (`OVL_MAX_STACK`).
pub const MAX_LOWERS: usize = 500;

/// Room reserved for one `/proc/self/fd/N` name when planning how many lowers fit: fd numbers
/// below 100000.
const FD_PATH_LEN: usize = "/proc/self/fd/".len() + 5;

/// Whether a step's root can be an overlay mount here, and in which flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// overlayfs works. `userxattr` is set inside a user namespace, where overlay keeps its
    /// whiteout/opaque metadata in `user.overlay.*`.
    Overlay {
        /// Mount with `userxattr`.
        userxattr: bool,
    },
    /// overlayfs cannot be mounted (no privileges, no user namespace, an upper filesystem
    /// that refuses it): each step gets a full copy of its parent instead.
    Copy,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Overlay { userxattr: false } => "overlayfs",
            Mode::Overlay { userxattr: true } => "overlayfs (userxattr)",
            Mode::Copy => "copy (no overlayfs)",
        })
    }
}

/// Errors from mounting, unmounting and probing overlayfs.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// `mount(2)` failed.
    #[error("mount overlay on {}: {source} (options: {options})", target.display())]
    Mount {
        /// The mount point.
        target: PathBuf,
        /// The option string passed (as mounted: possibly with `/proc/self/fd` names).
        options: String,
        /// The OS error.
        source: io::Error,
    },
    /// `umount(2)` failed.
    #[error("unmount {}: {source}", target.display())]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A layer, upper or work directory could not be opened.
    #[error("open {}: {source}", path.display())]
    Open {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// More lower layers than one mount can take; the snapshot store flattens before this.
    #[error(
        "{lowers} lower layers do not fit one overlay mount ({len} bytes of options, limit {max})"
    )]
    TooManyLowers {
        /// Lower layers asked for.
        lowers: usize,
        /// Option length even with `/proc/self/fd` names.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A mount without any lower layer.
    #[error("an overlay mount needs at least one lower directory")]
    NoLowers,
    /// Setting up or checking the probe mount failed.
    #[error("overlay probe in {}: {what}: {source}", path.display())]
    Probe {
        /// The file or directory involved.
        path: PathBuf,
        /// What was being done or checked.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// The overlay mount for one step: what [`crate::snapshots::Snapshots::prepare`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMount {
    /// Lower directories, newest first (the order of `lowerdir=`).
    pub lowers: Vec<PathBuf>,
    /// Where changes go.
    pub upper: PathBuf,
    /// overlay's scratch directory, on the same filesystem as `upper`.
    pub work: PathBuf,
    /// Mount with `userxattr`.
    pub userxattr: bool,
}

impl OverlayMount {
    /// The option string with absolute paths, for logs and plans. It may be longer than a
    /// mount accepts; [`OverlayMount::mount`] shortens it when needed.
    pub fn options(&self) -> OsString {
        let lowers: Vec<&OsStr> = self.lowers.iter().map(|p| p.as_os_str()).collect();
        self.data(&lowers, self.upper.as_os_str(), self.work.as_os_str())
    }

    fn data(&self, lowers: &[&OsStr], upper: &OsStr, work: &OsStr) -> OsString {
        let mut s = OsString::from("lowerdir=");
        for (i, l) in lowers.iter().enumerate() {
            if i > 0 {
                s.push(":");
            }
            s.push(l);
        }
        s.push(",upperdir=");
        s.push(upper);
        s.push(",workdir=");
        s.push(work);
        s.push(",");
        s.push(FIXED_OPTIONS);
        if self.userxattr {
            s.push(",userxattr");
        }
        s
    }

    /// How many lower layers a mount with these upper and work directories can name, counting
    /// on `/proc/self/fd` names when absolute paths are too long.
    pub fn lower_capacity(upper: &Path, work: &Path, userxattr: bool) -> usize {
        let fixed = "lowerdir=".len()
            + ",upperdir=".len()
            + upper.as_os_str().len().min(FD_PATH_LEN)
            + ",workdir=".len()
            + work.as_os_str().len().min(FD_PATH_LEN)
            + 1
            + FIXED_OPTIONS.len()
            + if userxattr { ",userxattr".len() } else { 0 };
        // n lowers take n * FD_PATH_LEN + (n - 1) colons.
        let room = (max_data_len() + 1).saturating_sub(fixed);
        (room / (FD_PATH_LEN + 1)).min(MAX_LOWERS)
    }

    /// Mounts the overlay on `target`.
    ///
    /// Uses absolute paths when they fit in a page and need no escaping; otherwise names every
    /// directory through an `O_PATH` descriptor (`/proc/self/fd/N`), which the kernel resolves
    /// during the mount, after which the descriptors are closed.
    pub fn mount(&self, target: &Path) -> Result<(), OverlayError> {
        if self.lowers.is_empty() {
            return Err(OverlayError::NoLowers);
        }
        if self.lowers.len() > MAX_LOWERS {
            return Err(OverlayError::TooManyLowers {
                lowers: self.lowers.len(),
                len: 0,
                max: max_data_len(),
            });
        }
        let max = max_data_len();
        let plain = self.options();
        let plain_ok = plain.len() <= max
            && self.lowers.iter().all(|p| plain_path(p))
            && plain_path(&self.upper)
            && plain_path(&self.work);
        if plain_ok {
            return mount_overlay(target, &plain);
        }
        // Keep the descriptors open until mount(2) has resolved the names.
        let open = |p: &Path| -> Result<(OwnedFd, OsString), OverlayError> {
            let fd = nix::fcntl::open(
                p,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| OverlayError::Open {
                path: p.to_path_buf(),
                source: e.into(),
            })?;
            let name = OsString::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            Ok((fd, name))
        };
        let mut fds = Vec::with_capacity(self.lowers.len() + 2);
        let mut lower_names = Vec::with_capacity(self.lowers.len());
        for l in &self.lowers {
            let (fd, name) = open(l)?;
            fds.push(fd);
            lower_names.push(name);
        }
        let (upper_fd, upper) = open(&self.upper)?;
        let (work_fd, work) = open(&self.work)?;
        let lowers: Vec<&OsStr> = lower_names.iter().map(|n| n.as_os_str()).collect();
        let data = self.data(&lowers, &upper, &work);
        if data.len() > max {
            return Err(OverlayError::TooManyLowers {
                lowers: self.lowers.len(),
                len: data.len(),
                max,
            });
        }
        let result = mount_overlay(target, &data);
        drop((fds, upper_fd, work_fd));
        result
    }
}

/// A path that can go into the option string as it is: `,` separates options, `:` lowers,
/// and `\` escapes either.
fn plain_path(p: &Path) -> bool {
    !p.as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b',' | b':' | b'\\'))
}

fn mount_overlay(target: &Path, data: &OsStr) -> Result<(), OverlayError> {
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data),
    )
    .map_err(|e| OverlayError::Mount {
        target: target.to_path_buf(),
        options: data.to_string_lossy().into_owned(),
        source: e.into(),
    })
}

/// The longest mount option string the kernel takes: one page, less the terminating NUL.
pub fn max_data_len() -> usize {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(4096);
    page - 1
}

/// Unmounts `target`; if it is busy, detaches it so it goes away once unused.
pub fn unmount(target: &Path) -> Result<(), OverlayError> {
    let err = |e: nix::Error| OverlayError::Unmount {
        target: target.to_path_buf(),
        source: e.into(),
    };
    match nix::mount::umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::Error::EBUSY) => nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(err),
        Err(e) => Err(err(e)),
    }
}

/// Whether this process is in the initial user namespace (its uid map is the identity over
/// the whole range). Outside it, overlay must be mounted with `userxattr`.
pub fn in_initial_userns() -> bool {
    match fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let lines: Vec<Vec<&str>> = map
                .lines()
                .map(|l| l.split_whitespace().collect())
                .filter(|f: &Vec<&str>| !f.is_empty())
                .collect();
            lines.len() == 1 && lines[0] == ["0", "0", "4294967295"]
        }
        // No procfs: assume the simple case; the probe mount decides anyway.
        Err(_) => true,
    }
}

/// Decides how steps get their root filesystem, by mounting a tiny overlay under `dir` (which
/// must be on the filesystem the snapshots live on) and checking that a whiteout and an
/// opaque directory come out as expected.
///
/// In the initial user namespace as root the plain flavour is tried first; inside a user
/// namespace only `userxattr` can work (without it the mount succeeds but every whiteout
/// fails with `EIO`). Anything that fails gives [`Mode::Copy`]; [`probe`] says why.
pub fn detect_mode(dir: &Path) -> Mode {
    let privileged = in_initial_userns() && nix::unistd::geteuid().is_root();
    if privileged && probe(dir, false).is_ok() {
        return Mode::Overlay { userxattr: false };
    }
    if probe(dir, true).is_ok() {
        return Mode::Overlay { userxattr: true };
    }
    Mode::Copy
}

/// Mounts a small overlay in a fresh directory under `dir`, deletes a lower file and replaces
/// a lower directory through it, and checks the upper directory shows a whiteout and an opaque
/// directory in the expected xattr namespace. Everything is removed afterwards.
pub fn probe(dir: &Path, userxattr: bool) -> Result<(), OverlayError> {
    let base = probe_dir(dir)?;
    let result = run_probe(&base, userxattr);
    let merged = base.join("merged");
    if result.is_err() {
        // The probe may have failed after mounting.
        let _ = unmount(&merged);
    }
    let _ = crate::snapshots::tree::remove_tree(&base);
    result
}

fn probe_dir(dir: &Path) -> Result<PathBuf, OverlayError> {
    let err = |path: &Path, what| {
        let path = path.to_path_buf();
        move |source| OverlayError::Probe { path, what, source }
    };
    fs::create_dir_all(dir).map_err(err(dir, "create directory"))?;
    let mut n = 0u32;
    loop {
        let p = dir.join(format!("overlay-probe-{}-{n}", std::process::id()));
        match fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
            Err(e) => return Err(err(&p, "create directory")(e)),
        }
    }
}

fn run_probe(base: &Path, userxattr: bool) -> Result<(), OverlayError> {
    let step = |path: &Path, what: &'static str, r: io::Result<()>| {
        r.map_err(|source| OverlayError::Probe {
            path: path.to_path_buf(),
            what,
            source,
        })
    };
    let lower = base.join("lower");
    let merged = base.join("merged");
    for d in ["lower/d", "upper", "work", "merged"] {
        let p = base.join(d);
        step(&p, "create directory", fs::create_dir_all(&p))?;
    }
    step(&lower, "write file", fs::write(lower.join("f"), b"f"))?;
    step(&lower, "write file", fs::write(lower.join("d/x"), b"x"))?;
    let m = OverlayMount {
        lowers: vec![lower],
        upper: base.join("upper"),
        work: base.join("work"),
        userxattr,
    };
    m.mount(&merged)?;
    let changes = (|| {
        step(
            &merged,
            "delete a lower file",
            fs::remove_file(merged.join("f")),
        )?;
        step(
            &merged,
            "delete a lower directory",
            fs::remove_dir_all(merged.join("d")),
        )?;
        step(
            &merged,
            "re-create a directory",
            fs::create_dir(merged.join("d")),
        )
    })();
    unmount(&merged)?;
    changes?;
    let upper = base.join("upper");
    let f = upper.join("f");
    let meta = fs::symlink_metadata(&f);
    let flavour = XattrFlavour::for_userxattr(userxattr);
    let whiteout = meta
        .map(|m| is_whiteout(&f, &m, Some(flavour)))
        .and_then(|w| {
            w.then_some(())
                .ok_or_else(|| io::Error::other("not a whiteout"))
        });
    step(&f, "check the whiteout", whiteout)?;
    let d = upper.join("d");
    let opaque = match is_opaque(&d, Some(flavour)) {
        Ok(true) => Ok(()),
        Ok(false) => Err(io::Error::other(
            "not marked opaque in the expected namespace",
        )),
        Err(e) => Err(e),
    };
    step(&d, "check the opaque directory", opaque)
}

/// Which xattr namespace overlay keeps its metadata in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XattrFlavour {
    /// `trusted.overlay.*`: root in the initial user namespace.
    Trusted,
    /// `user.overlay.*`: mounted with `userxattr`.
    User,
}

impl XattrFlavour {
    /// The flavour a mount with or without `userxattr` uses.
    pub fn for_userxattr(userxattr: bool) -> XattrFlavour {
        if userxattr {
            XattrFlavour::User
        } else {
            XattrFlavour::Trusted
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            XattrFlavour::Trusted => "trusted.overlay.",
            XattrFlavour::User => "user.overlay.",
        }
    }
}

/// overlayfs's own metadata (`trusted.overlay.*`, `user.overlay.*`): never part of an image.
pub fn is_overlay_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.")
}

/// Whether the entry at `path` (with `meta` from `symlink_metadata`) is an overlay whiteout:
/// a 0/0 character device, or an empty regular file carrying `*.overlay.whiteout` in
/// `flavour`'s namespace (either, if None).
pub fn is_whiteout(path: &Path, meta: &fs::Metadata, flavour: Option<XattrFlavour>) -> bool {
    let ft = meta.file_type();
    if ft.is_char_device() {
        return meta.rdev() == 0;
    }
    if ft.is_file() && meta.len() == 0 {
        return flavours(flavour).iter().any(|f| {
            matches!(
                get_xattr(path, &format!("{}whiteout", f.prefix())),
                Ok(Some(_))
            )
        });
    }
    false
}

/// Whether the directory at `path` is marked opaque (`*.overlay.opaque=y`) in `flavour`'s
/// namespace (either, if None). `opaque=x` only says "look for xattr whiteouts inside" and
/// is not opaque.
pub fn is_opaque(path: &Path, flavour: Option<XattrFlavour>) -> io::Result<bool> {
    for f in flavours(flavour) {
        if get_xattr(path, &format!("{}opaque", f.prefix()))?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

fn flavours(flavour: Option<XattrFlavour>) -> Vec<XattrFlavour> {
    match flavour {
        Some(f) => vec![f],
        None => vec![XattrFlavour::Trusted, XattrFlavour::User],
    }
}

/// Reads one xattr without following symlinks. "Not there", "not supported" and "not
/// allowed to look" (unprivileged `trusted.*`) all read as absent.
fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    match xattr::get(path, name) {
        Ok(v) => Ok(v),
        Err(e) if absent_xattr(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Errors that mean "no such attribute here" rather than a failure: not set, not supported
/// by the filesystem, or hidden from us (`trusted.*` when unprivileged).
pub(crate) fn absent_xattr(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::ENODATA | Errno::ENOTSUP | Errno::EPERM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_in_lowerdir_order() {
        let m = OverlayMount {
            lowers: vec!["/s/2/fs".into(), "/s/1/fs".into()],
            upper: "/a/upper".into(),
            work: "/a/work".into(),
            userxattr: true,
        };
        assert_eq!(
            m.options(),
            "lowerdir=/s/2/fs:/s/1/fs,upperdir=/a/upper,workdir=/a/work,\
             redirect_dir=nofollow,index=off,metacopy=off,userxattr"
        );
    }

    #[test]
    fn capacity_fits_a_page() {
        let upper = Path::new("/very/long/path/to/the/store/snapshots/active/step-17/upper");
        let work = Path::new("/very/long/path/to/the/store/snapshots/active/step-17/work");
        let n = OverlayMount::lower_capacity(upper, work, true);
        assert!(n > 150 && n < MAX_LOWERS, "{n}");
        // n fd names at their longest, plus the rest, fit the page.
        let lowers = vec![OsString::from(format!("/proc/self/fd/{}", 99_999)); n];
        let lowers: Vec<&OsStr> = lowers.iter().map(|s| s.as_os_str()).collect();
        let m = OverlayMount {
            lowers: vec![],
            upper: upper.into(),
            work: work.into(),
            userxattr: true,
        };
        let fd = OsString::from("/proc/self/fd/99999");
        let data = m.data(&lowers, &fd, &fd);
        assert!(data.len() <= max_data_len(), "{}", data.len());
    }

    #[test]
    fn special_characters_force_fd_names() {
        assert!(plain_path(Path::new("/a/b c")));
        assert!(!plain_path(Path::new("/a/b,c")));
        assert!(!plain_path(Path::new("/a/b:c")));
    }

    #[test]
    fn overlay_xattrs_are_recognised() {
        assert!(is_overlay_xattr("trusted.overlay.opaque"));
        assert!(is_overlay_xattr("user.overlay.origin"));
        assert!(!is_overlay_xattr("user.overlayish"));
        assert!(!is_overlay_xattr("security.capability"));
    }
}
