//! The few system calls nix does not wrap, each in one small function: capabilities,
//! mount_setattr, close_range and bringing up `lo`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

fn check(r: libc::c_long) -> nix::Result<libc::c_long> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

/// Drops every capability not in `keep` from the bounding set, so no later exec (root or
/// file capabilities) can get them back.
pub(crate) fn drop_bounding_set_except(keep: &[u32]) -> nix::Result<()> {
    for cap in 0..64u32 {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes an integer argument; no memory is passed.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r < 0 {
            match Errno::last() {
                // Past CAP_LAST_CAP of this kernel.
                Errno::EINVAL => return Ok(()),
                e => return Err(e),
            }
        }
    }
    Ok(())
}

/// Clears the ambient set (so nothing is passed to a non-root exec implicitly).
pub(crate) fn clear_ambient() -> nix::Result<()> {
    // SAFETY: integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    match r {
        // Kernels before 4.3 have no ambient set: nothing to clear.
        r if r < 0 && Errno::last() == Errno::EINVAL => Ok(()),
        r if r < 0 => Err(Errno::last()),
        _ => Ok(()),
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Empties the inheritable set: for root, exec adds it to the permitted set unfiltered by
/// the bounding set, so a stray bit there would undo the drop.
pub(crate) fn clear_inheritable() -> nix::Result<()> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 takes a header and an array of two data structs, both valid and
    // writable for the duration of the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    })?;
    if data.iter().all(|d| d.inheritable == 0) {
        return Ok(());
    }
    for d in &mut data {
        d.inheritable = 0;
    }
    // SAFETY: as above; the kernel only reads them.
    check(unsafe { libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr()) })?;
    Ok(())
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Adds restrictions (read-only, nosuid, nodev, noexec) to the mount whose root `fd` is,
/// and with `recursive` to every mount below it. Unlike a remount, this leaves the atime
/// flags alone, which a user namespace may not change on mounts it inherited.
pub(crate) fn restrict_mount(
    fd: BorrowedFd<'_>,
    recursive: bool,
    flags: nix::mount::MsFlags,
) -> nix::Result<()> {
    use nix::mount::MsFlags as F;
    let mut set = 0;
    for (ms, attr) in [
        (F::MS_RDONLY, MOUNT_ATTR_RDONLY),
        (F::MS_NOSUID, MOUNT_ATTR_NOSUID),
        (F::MS_NODEV, MOUNT_ATTR_NODEV),
        (F::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
    ] {
        if flags.contains(ms) {
            set |= attr;
        }
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let at = libc::AT_EMPTY_PATH as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: the path is a valid empty C string, the attr struct is valid for reads of
    // the size passed, and fd is a live descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            at,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    match check(r) {
        Ok(_) => Ok(()),
        // Before Linux 5.12: a classic remount of the top mount, carrying over the flags
        // the kernel locks in a user namespace.
        Err(Errno::ENOSYS) => remount_restricted(fd, flags),
        Err(e) => Err(e),
    }
}

fn remount_restricted(fd: BorrowedFd<'_>, flags: nix::mount::MsFlags) -> nix::Result<()> {
    use nix::mount::MsFlags as F;
    use nix::sys::statvfs::{fstatvfs, FsFlags};
    let current = fstatvfs(fd)?.flags();
    let mut keep = F::empty();
    for (st, ms) in [
        (FsFlags::ST_NOSUID, F::MS_NOSUID),
        (FsFlags::ST_NODEV, F::MS_NODEV),
        (FsFlags::ST_NOEXEC, F::MS_NOEXEC),
        (FsFlags::ST_NOATIME, F::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, F::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, F::MS_RELATIME),
    ] {
        if current.contains(st) {
            keep |= ms;
        }
    }
    nix::mount::mount(
        None::<&str>,
        fd_path(fd.as_raw_fd()).as_str(),
        None::<&str>,
        F::MS_REMOUNT | F::MS_BIND | flags | keep,
        None::<&str>,
    )
}

/// `/proc/self/fd/N`: how a mount call names a target we hold as a descriptor.
pub(crate) fn fd_path(fd: i32) -> String {
    format!("/proc/self/fd/{fd}")
}

/// Closes every descriptor from `from` up, except `keep`. The kernel call is one syscall;
/// older kernels fall back to walking /proc/self/fd.
pub(crate) fn close_fds_from(from: u32, keep: i32) -> nix::Result<()> {
    let ranges: [(u32, u32); 2] = if keep >= from as i32 {
        [(from, keep as u32 - 1), (keep as u32 + 1, u32::MAX)]
    } else {
        [(from, u32::MAX), (1, 0)]
    };
    for (lo, hi) in ranges {
        if lo > hi {
            continue;
        }
        // SAFETY: close_range only takes integers; closing descriptors other code in this
        // (forked, single-threaded) child still "owns" is the point: none of them is used
        // again before exec.
        let r = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0 as libc::c_uint) };
        if r < 0 {
            if Errno::last() != Errno::ENOSYS {
                return Err(Errno::last());
            }
            return close_fds_slow(from, keep);
        }
    }
    Ok(())
}

fn close_fds_slow(from: u32, keep: i32) -> nix::Result<()> {
    let entries = std::fs::read_dir("/proc/self/fd").map_err(|_| Errno::EBADF)?;
    let fds: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd >= from as i32 && fd != keep {
            // SAFETY: see close_fds_from; the read_dir descriptor is already closed here.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;

/// Sets `lo` up in the current network namespace (a new one starts with it down).
pub(crate) fn loopback_up() -> nix::Result<()> {
    // SAFETY: plain socket(2) call with constant arguments.
    let raw = check(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) as libc::c_long
    })?;
    // SAFETY: socket() just returned this descriptor and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write a struct ifreq, whose layout
    // IfReqFlags reproduces (16-byte name, then the flags member of the union, padded to
    // the union's 24 bytes).
    check(
        unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFFLAGS, &mut req as *mut IfReqFlags) }
            as libc::c_long,
    )?;
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: as above.
    check(
        unsafe { libc::ioctl(sock.as_raw_fd(), SIOCSIFFLAGS, &req as *const IfReqFlags) }
            as libc::c_long,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ifreq_matches_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<super::IfReqFlags>(), 40);
        assert_eq!(std::mem::size_of::<super::MountAttr>(), 32);
    }
}
