//! The build namespace: a user namespace (plus a mount namespace) that the whole kiln process
//! lives in when it is not root, entered once at startup by re-executing itself.
//!
//! Inside, kiln is uid 0 with the caller's uid mapped to 0 and the subordinate ranges of
//! /etc/subuid and /etc/subgid mapped to 1.., so image files can belong to any user and
//! unpacking, overlay mounts, RUN steps, diffing and removing snapshots all work (files
//! owned by subordinate ids cannot even be deleted from outside). Without subordinate
//! ranges only the caller's own id is mapped; that still runs simple builds, and
//! [`NamespaceMode::Rootless`] carries a warning saying what will fail.

mod check;
mod idmap;
mod reexec;

use std::sync::OnceLock;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

pub use check::{
    free_subid_start, single_id_warning, single_id_warning_at, Fallback, UsernsSysctls,
};
pub use idmap::{
    describe_map, helper_args, is_identity_map, map_contains, map_lines, mapped_count,
    parse_kernel_map, parse_subid_ranges, single_id_map, MapLine, SubIdRange,
};

pub(crate) use check::unmapped_hint;
pub(crate) use idmap::read_own_map;
pub(crate) use reexec::exit_now;

use crate::SandboxError;

/// Environment marker telling the re-executed kiln that it already is in the build
/// namespace.
pub const IN_USERNS_ENV: &str = "_KILN_IN_USERNS";
/// Environment variable carrying the number of the pipe from which the re-executed kiln
/// reads how the namespace was set up (full map or why not).
pub const STATUS_FD_ENV: &str = "_KILN_USERNS_STATUS_FD";

/// How this process relates to the build namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceMode {
    /// Real root: no user namespace is needed (or wanted).
    Root,
    /// Unprivileged: running inside the build user namespace as its root.
    Rootless {
        /// True when subordinate ids are mapped for both uids and gids; false in the
        /// single-id fallback, where only root exists.
        full_map: bool,
        /// Set exactly when `full_map` is false: one message for the user saying what will
        /// not work and how to add subordinate ranges. The library never prints it.
        warning: Option<String>,
    },
}

impl NamespaceMode {
    /// True in the single-id fallback.
    pub fn is_single_id(&self) -> bool {
        matches!(
            self,
            NamespaceMode::Rootless {
                full_map: false,
                ..
            }
        )
    }
}

/// Makes sure the rest of the process runs where image files can be owned by anyone.
///
/// - Real root (and not inside a namespace of ours): does nothing, returns
///   [`NamespaceMode::Root`].
/// - Already re-executed (the `_KILN_IN_USERNS` marker is set and we really are in a
///   user namespace): makes `/` private in our mount namespace and returns
///   [`NamespaceMode::Rootless`].
/// - Otherwise: **does not return on success.** The process forks; the child enters a new
///   user + mount namespace, the parent maps the ids (newuidmap/newgidmap, or the single-id
///   fallback), and the child re-executes `/proc/self/exe` with the same arguments and
///   environment plus the marker. The parent stays as a thin waiter: it forwards SIGINT,
///   SIGTERM, SIGHUP and SIGQUIT sent to it, and exits with the child's exit code (128 +
///   signal number when the child was killed). Errors (user namespaces disabled, ...) are
///   returned before anything was forked off for good.
///
/// Call it first thing in `main`, before other threads exist: the waiter blocks those
/// signals on the calling thread only, and `unshare(CLONE_NEWUSER)` needs a
/// single-threaded process (the forked child is).
pub fn ensure_build_namespace() -> Result<NamespaceMode, SandboxError> {
    static INSIDE: OnceLock<NamespaceMode> = OnceLock::new();
    if let Some(mode) = INSIDE.get() {
        return Ok(mode.clone());
    }
    let marked = std::env::var_os(IN_USERNS_ENV).is_some_and(|v| v == "1");
    let in_userns = !is_identity_map(&read_own_map("uid"));
    if marked && in_userns {
        let mode = enter_inside()?;
        return Ok(INSIDE.get_or_init(|| mode).clone());
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(NamespaceMode::Root);
    }
    match reexec::reexec_in_new_namespace()? {}
}

/// The re-executed side: finish the mount namespace and learn how the ids were mapped.
fn enter_inside() -> Result<NamespaceMode, SandboxError> {
    // Mount events must not travel back out of our namespace (the copies of the host's
    // mounts start out shared when the host runs systemd).
    if let Err(errno) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        return Err(check::diagnose_first_mount(errno, &UsernsSysctls::read()));
    }
    let status = reexec::read_status();
    let uids = read_own_map("uid");
    let gids = read_own_map("gid");
    // The kernel's maps are the truth; the status only explains a fallback.
    let full_map = idmap::mapped_count(&uids) > 1 && idmap::mapped_count(&gids) > 1;
    let warning = (!full_map).then(|| {
        let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
        let start = free_subid_start(&[&read("/etc/subuid"), &read("/etc/subgid")]);
        single_id_warning_at(&status.user, status.fallback.as_ref(), start)
    });
    Ok(NamespaceMode::Rootless { full_map, warning })
}

/// Whether setgroups(2) is allowed in this user namespace (it is denied in the single-id
/// fallback, because an unprivileged process may only write a gid map after denying it).
pub(crate) fn setgroups_allowed() -> bool {
    std::fs::read_to_string("/proc/self/setgroups")
        .map(|t| t.trim() != "deny")
        .unwrap_or(true)
}

pub(crate) fn errno_from_io(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}
