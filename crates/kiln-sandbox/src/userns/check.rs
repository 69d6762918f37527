//! Why a user namespace cannot be created, and the texts that tell the user what to do.
//! Pure functions over values read from /proc/sys, so every message is unit-tested.

use nix::errno::Errno;

use crate::SandboxError;

/// The sysctls that switch unprivileged user namespaces off. `None` = the file does not
/// exist on this kernel (the last two are distribution patches / AppArmor).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsernsSysctls {
    /// `/proc/sys/user/max_user_namespaces` (upstream; 0 disables them).
    pub max_user_namespaces: Option<u64>,
    /// `/proc/sys/kernel/unprivileged_userns_clone` (Debian/Ubuntu kernels; 0 disables).
    pub unprivileged_userns_clone: Option<u64>,
    /// `/proc/sys/kernel/apparmor_restrict_unprivileged_userns` (Ubuntu 23.10+; 1 takes
    /// every capability away inside unconfined programs' namespaces).
    pub apparmor_restrict: Option<u64>,
}

impl UsernsSysctls {
    /// Reads the three files; unreadable or missing ones are `None`.
    pub fn read() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
        };
        UsernsSysctls {
            max_user_namespaces: read("/proc/sys/user/max_user_namespaces"),
            unprivileged_userns_clone: read("/proc/sys/kernel/unprivileged_userns_clone"),
            apparmor_restrict: read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
        }
    }
}

const PERSIST: &str =
    "(to keep it after a reboot, put the same setting in a file under /etc/sysctl.d/)";

fn max_userns_disabled() -> SandboxError {
    SandboxError::UserNamespacesDisabled {
        setting: "user.max_user_namespaces",
        value: "0".into(),
        fix: format!(
            "allow them with `sudo sysctl -w user.max_user_namespaces=15000` {PERSIST}, \
             or run kiln as root"
        ),
    }
}

fn userns_clone_disabled() -> SandboxError {
    SandboxError::UserNamespacesDisabled {
        setting: "kernel.unprivileged_userns_clone",
        value: "0".into(),
        fix: format!(
            "allow them with `sudo sysctl -w kernel.unprivileged_userns_clone=1` {PERSIST}, \
             or run kiln as root"
        ),
    }
}

fn apparmor_restricted() -> SandboxError {
    SandboxError::UserNamespacesDisabled {
        setting: "kernel.apparmor_restrict_unprivileged_userns",
        value: "1".into(),
        fix: format!(
            "AppArmor takes all privileges away in user namespaces of programs without a \
             profile that allows `userns`. Either add one for kiln (a file in \
             /etc/apparmor.d/ with `abi <abi/4.0>, include <tunables/global> profile kiln \
             /path/to/kiln flags=(unconfined) {{ userns, }}`, then `sudo apparmor_parser -r` \
             it) or turn the restriction off with \
             `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` {PERSIST}"
        ),
    }
}

/// Settings that make trying pointless: checked before forking so the user gets the
/// named setting rather than a bare errno.
pub fn precheck(s: &UsernsSysctls) -> Result<(), SandboxError> {
    if s.max_user_namespaces == Some(0) {
        return Err(max_userns_disabled());
    }
    if s.unprivileged_userns_clone == Some(0) {
        return Err(userns_clone_disabled());
    }
    Ok(())
}

/// Turns a failed `unshare(CLONE_NEWUSER)` into the most specific explanation we have.
pub fn diagnose_unshare(errno: Errno, s: &UsernsSysctls) -> SandboxError {
    if let Err(e) = precheck(s) {
        return e;
    }
    let hint = match errno {
        Errno::ENOSPC | Errno::EUSERS => format!(
            "the limit on user namespaces is used up (user.max_user_namespaces = {}); raise \
             it with `sudo sysctl -w user.max_user_namespaces=15000` or end other rootless \
             containers",
            s.max_user_namespaces
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into())
        ),
        Errno::EPERM | Errno::EACCES if s.apparmor_restrict == Some(1) => {
            return apparmor_restricted()
        }
        Errno::EPERM | Errno::EACCES => "something outside the kernel defaults forbids \
             unprivileged user namespaces here: a seccomp filter (running inside a container \
             started without `--security-opt seccomp=unconfined`?), a chroot, or an LSM \
             policy; run kiln as root or allow user namespaces"
            .to_string(),
        Errno::EINVAL => "this kernel seems to lack user namespace support \
             (CONFIG_USER_NS); run kiln as root"
            .to_string(),
        _ => "run kiln as root, or check `unshare --user --map-root-user true` as this user"
            .to_string(),
    };
    SandboxError::UserNamespace {
        step: "unshare(CLONE_NEWUSER | CLONE_NEWNS)",
        errno,
        hint,
    }
}

/// The first mount inside the fresh namespace failed: with the AppArmor restriction on,
/// that is where it shows (the unshare itself succeeds, the capabilities are gone).
pub fn diagnose_first_mount(errno: Errno, s: &UsernsSysctls) -> SandboxError {
    if matches!(errno, Errno::EPERM | Errno::EACCES) && s.apparmor_restrict == Some(1) {
        return apparmor_restricted();
    }
    SandboxError::UserNamespace {
        step: "making / private inside the build mount namespace",
        errno,
        hint: "an LSM or seccomp policy may forbid mounts in user namespaces; run kiln as root"
            .into(),
    }
}

/// Why the build namespace has only the caller's own id mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// /etc/subuid or /etc/subgid has no range for the user.
    NoRanges {
        /// Which file(s) lack it.
        files: &'static str,
    },
    /// newuidmap/newgidmap are not installed.
    NoHelper {
        /// The missing program.
        program: &'static str,
    },
    /// The helper ran and failed.
    HelperFailed {
        /// The failing program.
        program: &'static str,
        /// Its stderr or exit status.
        detail: String,
    },
}

impl Fallback {
    fn describe(&self, user: &str) -> String {
        match self {
            Fallback::NoRanges { files } => {
                format!("{user} has no subordinate id range in {files}")
            }
            Fallback::NoHelper { program } => format!(
                "{program} is not installed (it comes with the `uidmap` package, or \
                 `shadow-utils` on Fedora)"
            ),
            Fallback::HelperFailed { program, detail } => format!("{program} failed: {detail}"),
        }
    }

    /// One line, for passing through the status pipe.
    pub(crate) fn encode(&self) -> String {
        let clean = |s: &str| s.replace(['\n', '\t'], " ");
        match self {
            Fallback::NoRanges { files } => format!("noranges\t{files}"),
            Fallback::NoHelper { program } => format!("nohelper\t{program}"),
            Fallback::HelperFailed { program, detail } => {
                format!("failed\t{program}\t{}", clean(detail))
            }
        }
    }

    pub(crate) fn decode(line: &str) -> Option<Fallback> {
        let mut f = line.split('\t');
        let kind = f.next()?;
        let static_name = |s: Option<&str>| -> &'static str {
            match s {
                Some("newuidmap") => "newuidmap",
                Some("newgidmap") => "newgidmap",
                Some("newuidmap and newgidmap") => "newuidmap and newgidmap",
                Some("/etc/subuid") => "/etc/subuid",
                Some("/etc/subgid") => "/etc/subgid",
                Some("/etc/subuid and /etc/subgid") => "/etc/subuid and /etc/subgid",
                _ => "the id-map helper",
            }
        };
        match kind {
            "noranges" => Some(Fallback::NoRanges {
                files: static_name(f.next()),
            }),
            "nohelper" => Some(Fallback::NoHelper {
                program: static_name(f.next()),
            }),
            "failed" => Some(Fallback::HelperFailed {
                program: static_name(f.next()),
                detail: f.next().unwrap_or("").to_string(),
            }),
            _ => None,
        }
    }
}

/// Where a new 65536-id range can start without overlapping any range already handed out
/// in the given /etc/subuid and /etc/subgid texts (never below 100000, the usual start).
pub fn free_subid_start(files: &[&str]) -> u64 {
    let mut start: u64 = 100_000;
    for text in files {
        for line in text.lines() {
            let f: Vec<&str> = line.trim().split(':').collect();
            if let [_, s, c] = f[..] {
                if let (Ok(s), Ok(c)) = (s.parse::<u64>(), c.parse::<u64>()) {
                    start = start.max(s + c);
                }
            }
        }
    }
    start
}

/// The one warning for single-id mode: what breaks and how to fix it, suggesting the range
/// 100000-165535.
pub fn single_id_warning(user: &str, why: Option<&Fallback>) -> String {
    single_id_warning_at(user, why, 100_000)
}

/// [`single_id_warning`] suggesting the 65536 ids from `start` (see [`free_subid_start`]).
pub fn single_id_warning_at(user: &str, why: Option<&Fallback>, start: u64) -> String {
    let reason = why
        .map(|w| w.describe(user))
        .unwrap_or_else(|| "no subordinate ids could be mapped".to_string());
    let end = start + 65_535;
    format!(
        "building with a single-id user namespace: {reason}. Only root (uid/gid 0) exists \
         inside, so steps that give files to other users (`chown 1234 file`, unpacking \
         images with non-root files), switch users (apt's `_apt` sandbox, `su`, `USER \
         1000`) or call setgroups will fail. To map a full range, give {user} subordinate \
         ids — `sudo usermod --add-subuids {start}-{end} --add-subgids {start}-{end} {user}` \
         (or add `{user}:{start}:65536` to /etc/subuid and /etc/subgid) — and install \
         newuidmap/newgidmap (package `uidmap`), then run kiln again."
    )
}

/// Hint for ids a step needs but the namespace lacks.
pub fn unmapped_hint(full_map: bool) -> String {
    if full_map {
        "the id is outside the subordinate range in /etc/subuid or /etc/subgid; give the \
         user a larger range (65536 ids covers ordinary images)"
            .to_string()
    } else {
        "only root is mapped because the build runs with a single-id user namespace; give \
         the user subordinate ids with `sudo usermod --add-subuids 100000-165535 \
         --add-subgids 100000-165535 USER` and run kiln again"
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctls(max: u64, clone: Option<u64>, aa: Option<u64>) -> UsernsSysctls {
        UsernsSysctls {
            max_user_namespaces: Some(max),
            unprivileged_userns_clone: clone,
            apparmor_restrict: aa,
        }
    }

    #[test]
    fn max_user_namespaces_zero_names_the_sysctl_and_fix() {
        let e = precheck(&sysctls(0, None, None)).unwrap_err().to_string();
        assert!(e.contains("user.max_user_namespaces = 0"), "{e}");
        assert!(
            e.contains("sysctl -w user.max_user_namespaces=15000"),
            "{e}"
        );
        // ENOSPC with the sysctl at 0 reports the sysctl, not the errno.
        let e = diagnose_unshare(Errno::ENOSPC, &sysctls(0, None, None)).to_string();
        assert!(e.contains("user.max_user_namespaces = 0"), "{e}");
    }

    #[test]
    fn debian_clone_switch() {
        let e = precheck(&sysctls(100, Some(0), None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("kernel.unprivileged_userns_clone = 0"), "{e}");
        assert!(
            e.contains("sysctl -w kernel.unprivileged_userns_clone=1"),
            "{e}"
        );
        assert!(precheck(&sysctls(100, Some(1), None)).is_ok());
    }

    #[test]
    fn apparmor_restriction_on_eperm_and_on_first_mount() {
        let s = sysctls(100, None, Some(1));
        assert!(precheck(&s).is_ok());
        for e in [
            diagnose_unshare(Errno::EPERM, &s),
            diagnose_first_mount(Errno::EPERM, &s),
        ] {
            let e = e.to_string();
            assert!(
                e.contains("kernel.apparmor_restrict_unprivileged_userns = 1"),
                "{e}"
            );
            assert!(e.contains("apparmor_restrict_unprivileged_userns=0"), "{e}");
            assert!(e.contains("userns"), "{e}");
        }
    }

    #[test]
    fn exhausted_limit_and_unknown_eperm() {
        let e = diagnose_unshare(Errno::ENOSPC, &sysctls(3, None, None)).to_string();
        assert!(e.contains("used up (user.max_user_namespaces = 3)"), "{e}");
        let e = diagnose_unshare(Errno::EPERM, &sysctls(100, None, None)).to_string();
        assert!(e.contains("seccomp"), "{e}");
        assert!(e.contains("EPERM"), "{e}");
    }

    #[test]
    fn warning_says_what_breaks_and_how_to_fix() {
        let w = single_id_warning(
            "kilntest2",
            Some(&Fallback::NoRanges {
                files: "/etc/subuid and /etc/subgid",
            }),
        );
        for needle in [
            "kilntest2 has no subordinate id range in /etc/subuid and /etc/subgid",
            "chown",
            "_apt",
            "usermod --add-subuids 100000-165535 --add-subgids 100000-165535 kilntest2",
            "/etc/subuid",
        ] {
            assert!(w.contains(needle), "missing {needle:?} in {w}");
        }
        let w = single_id_warning(
            "u",
            Some(&Fallback::NoHelper {
                program: "newuidmap",
            }),
        );
        assert!(w.contains("uidmap"), "{w}");
    }

    #[test]
    fn suggested_range_avoids_existing_ones() {
        assert_eq!(free_subid_start(&["", ""]), 100_000);
        let uid = "kilntest:100000:65536\n# note\nbad line\n";
        let gid = "kilntest:100000:65536\nother:300000:10\n";
        assert_eq!(free_subid_start(&[uid, gid]), 300_010);
        let w = single_id_warning_at("u", None, 165_536);
        assert!(
            w.contains("--add-subuids 165536-231071 --add-subgids 165536-231071 u"),
            "{w}"
        );
        assert!(w.contains("`u:165536:65536`"), "{w}");
    }

    #[test]
    fn fallback_round_trips_through_the_status_line() {
        for f in [
            Fallback::NoRanges {
                files: "/etc/subgid",
            },
            Fallback::NoHelper {
                program: "newgidmap",
            },
            Fallback::HelperFailed {
                program: "newuidmap",
                detail: "write to uid_map failed: Operation not permitted".into(),
            },
        ] {
            assert_eq!(Fallback::decode(&f.encode()), Some(f));
        }
        let f = Fallback::HelperFailed {
            program: "newuidmap",
            detail: "line one\nline two".into(),
        };
        assert_eq!(
            Fallback::decode(&f.encode()),
            Some(Fallback::HelperFailed {
                program: "newuidmap",
                detail: "line one line two".into()
            })
        );
    }
}
