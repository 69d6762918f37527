//! The pure half of a RUN step: from a [`RunSpec`] to the list of namespaces, mounts and
//! process settings the child will apply. Nothing here touches the system, so the whole
//! layout of the sandbox is unit-tested without privileges.

use std::path::PathBuf;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use crate::SandboxError;

/// Which network a step sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// The host's network namespace (BuildKit's default without CNI, and Docker's `RUN`).
    #[default]
    Host,
    /// A fresh network namespace with only `lo`, brought up (`RUN --network=none`).
    None,
}

/// A host path made visible inside the step (for `RUN --mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path (file or directory).
    pub source: PathBuf,
    /// Absolute path inside the container; created (as a reported stub) when missing.
    pub target: String,
    /// Mount it read-only.
    pub readonly: bool,
}

/// A fresh tmpfs inside the step (`RUN --mount=type=tmpfs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    /// Absolute path inside the container; created (as a reported stub) when missing.
    pub target: String,
    /// Size limit in bytes (the kernel's default, half the memory, when `None`).
    pub size: Option<u64>,
    /// Mount it read-only.
    pub readonly: bool,
}

/// A mount the caller adds to the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraMount {
    /// A host path.
    Bind(BindMount),
    /// An empty tmpfs.
    Tmpfs(TmpfsMount),
}

impl ExtraMount {
    /// Where it appears in the container.
    pub fn target(&self) -> &str {
        match self {
            ExtraMount::Bind(b) => &b.target,
            ExtraMount::Tmpfs(t) => &t.target,
        }
    }
}

impl From<BindMount> for ExtraMount {
    fn from(b: BindMount) -> Self {
        ExtraMount::Bind(b)
    }
}

impl From<TmpfsMount> for ExtraMount {
    fn from(t: TmpfsMount) -> Self {
        ExtraMount::Tmpfs(t)
    }
}

/// One RUN step to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// The step's root filesystem, already assembled (e.g. an overlay mount point). It is
    /// bound onto itself inside the sandbox, so a plain directory works too.
    pub rootfs: PathBuf,
    /// The command; `argv[0]` without a `/` is looked up in the `PATH` of `env`.
    pub argv: Vec<String>,
    /// The complete environment of the command.
    pub env: Vec<(String, String)>,
    /// Absolute working directory inside the container; created (owned by `uid:gid`) when
    /// missing, as BuildKit does for WORKDIR. Paths under /proc are refused.
    pub cwd: String,
    /// User to run as.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Hostname inside the UTS namespace (empty: keep the host's).
    pub hostname: String,
    /// Host network or none.
    pub network: Network,
    /// File to show as /etc/hosts (read-only bind), or keep the image's.
    pub hosts_file: Option<PathBuf>,
    /// File to show as /etc/resolv.conf (read-only bind), or keep the image's.
    pub resolv_conf: Option<PathBuf>,
    /// Further mounts (`RUN --mount`), applied last in this order. Stubs created for them
    /// are also reported apart, by [`crate::run::Running::created_mount_stubs`].
    pub extra_mounts: Vec<ExtraMount>,
}

impl RunSpec {
    /// A spec with Docker's defaults: root, `/`, host network, hostname `kiln`, no extra
    /// mounts, and a `PATH` like the one Docker puts into images without one.
    pub fn new(rootfs: impl Into<PathBuf>, argv: Vec<String>) -> RunSpec {
        RunSpec {
            rootfs: rootfs.into(),
            argv,
            env: vec![("PATH".into(), DEFAULT_PATH.into())],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            hostname: "kiln".into(),
            network: Network::Host,
            hosts_file: None,
            resolv_conf: None,
            extra_mounts: Vec::new(),
        }
    }
}

/// The `PATH` used to find `argv[0]` when the step's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether and how a missing mount target is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// It must exist.
    No,
    /// Create a directory (and missing parents).
    Dir,
    /// Create an empty file (and missing parent directories).
    File,
    /// A file or directory, whichever the bind source is.
    LikeSource,
}

/// A path inside the container that an operation acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Absolute path inside the container. Symlinks in it are followed *inside* the root.
    pub path: String,
    /// What to do when it is missing.
    pub create: Create,
    /// Whether what gets created lands in the root filesystem (and so must be reported, to
    /// be removed before diffing), rather than in a tmpfs the sandbox mounted itself.
    pub stub: bool,
    /// Skip the operation when the target does not exist (masks of optional /proc files).
    pub optional: bool,
    /// The target of one of the spec's extra mounts: its stubs are also reported apart, so
    /// the caller can remove them only while they are still empty, as BuildKit does.
    pub extra: bool,
}

impl Target {
    fn stub_dir(path: &str) -> Target {
        Target {
            path: path.into(),
            create: Create::Dir,
            stub: true,
            optional: false,
            extra: false,
        }
    }
    fn stub_file(path: &str) -> Target {
        Target {
            path: path.into(),
            create: Create::File,
            stub: true,
            optional: false,
            extra: false,
        }
    }
    fn scratch(path: &str, create: Create) -> Target {
        Target {
            path: path.into(),
            create,
            stub: false,
            optional: false,
            extra: false,
        }
    }
    fn optional(path: &str) -> Target {
        Target {
            path: path.into(),
            create: Create::No,
            stub: false,
            optional: true,
            extra: false,
        }
    }
    fn extra(path: &str, create: Create) -> Target {
        Target {
            path: path.into(),
            create,
            stub: true,
            optional: false,
            extra: true,
        }
    }
}

/// One step of building the container's mount table, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// `/` becomes `MS_REC|MS_PRIVATE`, so nothing we mount propagates back to the host.
    MakeRootPrivate,
    /// The root filesystem is bound onto itself: pivot_root needs a mount point, and the
    /// following targets are resolved inside this mount.
    BindRootfs {
        /// Host path of the root filesystem.
        rootfs: PathBuf,
    },
    /// A new filesystem instance (proc, tmpfs, devpts, mqueue, sysfs).
    Mount {
        /// Filesystem type, also used as the source name.
        fstype: &'static str,
        /// Where.
        target: Target,
        /// Mount flags.
        flags: MsFlags,
        /// Filesystem options.
        data: String,
    },
    /// A host path bound into the container.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Where.
        target: Target,
        /// Bind the whole subtree of mounts (needed for /sys inside a user namespace).
        recursive: bool,
        /// Restrictions applied after the bind (MS_RDONLY, MS_NOSUID, MS_NODEV,
        /// MS_NOEXEC), to every mount of the subtree when `recursive`.
        restrict: MsFlags,
    },
    /// A path inside the container made read-only (bound onto itself).
    ReadOnly {
        /// What.
        target: Target,
    },
    /// A path inside the container hidden: an empty read-only tmpfs over a directory,
    /// /dev/null over a file.
    Mask {
        /// What.
        target: Target,
    },
    /// A symlink created inside the container (in /dev).
    Symlink {
        /// The link's path.
        link: String,
        /// What it points to.
        points_to: String,
    },
    /// `pivot_root(".", ".")` in the root, then detach the old root. Host paths are
    /// unreachable afterwards.
    PivotRoot,
}

/// A Linux capability by name and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// `CAP_...` name.
    pub name: &'static str,
    /// Kernel number.
    pub number: u32,
}

/// Docker's default capability set: what a RUN step keeps in its bounding set.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability {
        name: "CAP_CHOWN",
        number: 0,
    },
    Capability {
        name: "CAP_DAC_OVERRIDE",
        number: 1,
    },
    Capability {
        name: "CAP_FOWNER",
        number: 3,
    },
    Capability {
        name: "CAP_FSETID",
        number: 4,
    },
    Capability {
        name: "CAP_KILL",
        number: 5,
    },
    Capability {
        name: "CAP_SETGID",
        number: 6,
    },
    Capability {
        name: "CAP_SETUID",
        number: 7,
    },
    Capability {
        name: "CAP_SETPCAP",
        number: 8,
    },
    Capability {
        name: "CAP_NET_BIND_SERVICE",
        number: 10,
    },
    Capability {
        name: "CAP_NET_RAW",
        number: 13,
    },
    Capability {
        name: "CAP_SYS_CHROOT",
        number: 18,
    },
    Capability {
        name: "CAP_MKNOD",
        number: 27,
    },
    Capability {
        name: "CAP_AUDIT_WRITE",
        number: 29,
    },
    Capability {
        name: "CAP_SETFCAP",
        number: 31,
    },
];

/// The process the sandbox finally executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    /// Command and arguments.
    pub argv: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside the container.
    pub cwd: String,
    /// User.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups (set exactly; empty clears them).
    pub groups: Vec<u32>,
    /// Capabilities kept in the bounding set; every other one is dropped. `no_new_privs`
    /// stays off, so setuid programs (su, sudo) work as in Docker.
    pub capabilities: Vec<Capability>,
}

/// Everything the child does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Host path of the root filesystem.
    pub rootfs: PathBuf,
    /// Namespaces the step gets (always mount, pid, uts, ipc; net for [`Network::None`]).
    pub namespaces: CloneFlags,
    /// Mount table construction, ending with [`MountOp::PivotRoot`].
    pub mounts: Vec<MountOp>,
    /// Hostname to set, if not empty.
    pub hostname: String,
    /// Bring up `lo` (in a new network namespace it starts down).
    pub loopback_up: bool,
    /// The process.
    pub process: ProcessPlan,
}

/// Device nodes bound from the host: the set every OCI runtime provides.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Hidden like Docker's default `MaskedPaths`: kernel information that leaks host details
/// or can be abused. Missing ones are skipped.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Read-only like Docker's default `ReadonlyPaths`.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Computes the sandbox layout for a step. Pure: same spec, same plan.
pub fn plan(spec: &RunSpec) -> Plan {
    use MsFlags as F;
    let mut namespaces = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if spec.network == Network::None {
        namespaces |= CloneFlags::CLONE_NEWNET;
    }

    let mut mounts = vec![
        MountOp::MakeRootPrivate,
        MountOp::BindRootfs {
            rootfs: spec.rootfs.clone(),
        },
        // Before pivot_root: inside a user namespace the kernel only allows a new proc
        // while a fully visible one (the host's) is still in the mount namespace.
        MountOp::Mount {
            fstype: "proc",
            target: Target::stub_dir("/proc"),
            flags: F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
            data: String::new(),
        },
        MountOp::Mount {
            fstype: "tmpfs",
            target: Target::stub_dir("/dev"),
            flags: F::MS_NOSUID | F::MS_STRICTATIME,
            data: "mode=755,size=65536k".into(),
        },
    ];
    // Bound rather than mknod'ed: device nodes made inside a user namespace do not work.
    for dev in DEVICES {
        mounts.push(MountOp::Bind {
            source: PathBuf::from(format!("/dev/{dev}")),
            target: Target::scratch(&format!("/dev/{dev}"), Create::File),
            recursive: false,
            restrict: F::empty(),
        });
    }
    mounts.extend([
        // No gid=5 option: group 5 may not be mapped in the build namespace.
        MountOp::Mount {
            fstype: "devpts",
            target: Target::scratch("/dev/pts", Create::Dir),
            flags: F::MS_NOSUID | F::MS_NOEXEC,
            data: "newinstance,ptmxmode=0666,mode=0620".into(),
        },
        MountOp::Mount {
            fstype: "tmpfs",
            target: Target::scratch("/dev/shm", Create::Dir),
            flags: F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
            data: "mode=1777,size=65536k".into(),
        },
        MountOp::Mount {
            fstype: "mqueue",
            target: Target::scratch("/dev/mqueue", Create::Dir),
            flags: F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
            data: String::new(),
        },
    ]);
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        mounts.push(MountOp::Symlink {
            link: link.into(),
            points_to: to.into(),
        });
    }
    let sys_flags = F::MS_RDONLY | F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC;
    mounts.push(match spec.network {
        // A fresh sysfs shows the namespace's own network devices, and is allowed because
        // the new network namespace belongs to our user namespace.
        Network::None => MountOp::Mount {
            fstype: "sysfs",
            target: Target::stub_dir("/sys"),
            flags: sys_flags,
            data: String::new(),
        },
        // In the host netns a user namespace may not mount sysfs, only bind the host's
        // (recursively: its submounts are locked to it). Read-only goes on afterwards.
        Network::Host => MountOp::Bind {
            source: PathBuf::from("/sys"),
            target: Target::stub_dir("/sys"),
            recursive: true,
            restrict: sys_flags,
        },
    });
    for path in MASKED_PATHS {
        mounts.push(MountOp::Mask {
            target: Target::optional(path),
        });
    }
    for path in READONLY_PATHS {
        mounts.push(MountOp::ReadOnly {
            target: Target::optional(path),
        });
    }
    // Read-only: the caller may hand us the host's own files.
    for (file, target) in [
        (&spec.hosts_file, "/etc/hosts"),
        (&spec.resolv_conf, "/etc/resolv.conf"),
    ] {
        if let Some(source) = file {
            mounts.push(MountOp::Bind {
                source: source.clone(),
                target: Target::stub_file(target),
                recursive: false,
                restrict: F::MS_RDONLY,
            });
        }
    }
    for m in &spec.extra_mounts {
        mounts.push(match m {
            ExtraMount::Bind(b) => MountOp::Bind {
                source: b.source.clone(),
                target: Target::extra(&b.target, Create::LikeSource),
                recursive: true,
                restrict: if b.readonly { F::MS_RDONLY } else { F::empty() },
            },
            ExtraMount::Tmpfs(t) => MountOp::Mount {
                fstype: "tmpfs",
                target: Target::extra(&t.target, Create::Dir),
                flags: F::MS_NOSUID
                    | F::MS_NODEV
                    | if t.readonly { F::MS_RDONLY } else { F::empty() },
                data: t.size.map(|s| format!("size={s}")).unwrap_or_default(),
            },
        });
    }
    mounts.push(MountOp::PivotRoot);

    Plan {
        rootfs: spec.rootfs.clone(),
        namespaces,
        mounts,
        hostname: spec.hostname.clone(),
        loopback_up: spec.network == Network::None,
        process: ProcessPlan {
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.additional_gids.clone(),
            capabilities: DEFAULT_CAPABILITIES.to_vec(),
        },
    }
}

/// Resolves `.` and `..` of an absolute path lexically (`..` stops at `/`). None when the
/// path is not absolute.
pub fn clean_absolute(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

fn invalid(reason: String) -> SandboxError {
    SandboxError::InvalidSpec { reason }
}

fn is_under(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&format!("{dir}/"))
}

impl Plan {
    /// Checks what the child cannot check safely or cheaply: a command, no NUL bytes,
    /// absolute paths, and no working directory or bind target under /proc (a WORKDIR such
    /// as /proc/self/fd/N could otherwise reach a descriptor of the host, CVE-2024-21626).
    pub fn validate(&self) -> Result<(), SandboxError> {
        let p = &self.process;
        if p.argv.is_empty() || p.argv[0].is_empty() {
            return Err(invalid("the command is empty".into()));
        }
        if let Some(a) = p.argv.iter().find(|a| a.contains('\0')) {
            return Err(invalid(format!("argument {a:?} holds a NUL byte")));
        }
        for (k, v) in &p.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(invalid(format!(
                    "environment variable {k:?} has an empty name, a '=' in its name, or a NUL byte"
                )));
            }
        }
        let cwd = clean_absolute(&p.cwd).ok_or_else(|| {
            invalid(format!(
                "working directory {:?} is not an absolute path",
                p.cwd
            ))
        })?;
        if is_under(&cwd, "/proc") {
            return Err(invalid(format!(
                "working directory {:?} is inside /proc; kiln refuses it because it could \
                 reach file descriptors of the host (CVE-2024-21626)",
                p.cwd
            )));
        }
        if self.hostname.len() > 64 || self.hostname.contains('\0') {
            return Err(invalid(format!(
                "hostname {:?} is longer than 64 bytes or holds a NUL byte",
                self.hostname
            )));
        }
        for op in &self.mounts {
            let target = match op {
                MountOp::Bind { target, .. } => target,
                MountOp::Mount { target, .. } if target.extra => target,
                _ => continue,
            };
            {
                let clean = clean_absolute(&target.path).ok_or_else(|| {
                    invalid(format!("mount target {:?} is not absolute", target.path))
                })?;
                if clean == "/" || is_under(&clean, "/proc") {
                    return Err(invalid(format!(
                        "mount target {:?} would cover the root or /proc",
                        target.path
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        let mut s = RunSpec::new(
            "/tmp/root",
            vec!["/bin/sh".into(), "-c".into(), "true".into()],
        );
        s.resolv_conf = Some("/etc/resolv.conf".into());
        s.hosts_file = Some("/run/kiln/hosts".into());
        s
    }

    fn targets(p: &Plan) -> Vec<&str> {
        p.mounts
            .iter()
            .filter_map(|op| match op {
                MountOp::Mount { target, .. }
                | MountOp::Bind { target, .. }
                | MountOp::ReadOnly { target }
                | MountOp::Mask { target } => Some(target.path.as_str()),
                MountOp::Symlink { link, .. } => Some(link.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn order_is_private_bind_proc_dev_sys_then_pivot() {
        let p = plan(&spec());
        assert_eq!(p.mounts[0], MountOp::MakeRootPrivate);
        assert_eq!(
            p.mounts[1],
            MountOp::BindRootfs {
                rootfs: "/tmp/root".into()
            }
        );
        assert!(
            matches!(&p.mounts[2], MountOp::Mount { fstype: "proc", target, .. } if target.path == "/proc")
        );
        assert_eq!(p.mounts.last(), Some(&MountOp::PivotRoot));
        let t = targets(&p);
        let pos = |x: &str| t.iter().position(|y| *y == x).unwrap();
        assert!(pos("/dev") < pos("/dev/null"));
        assert!(pos("/dev/null") < pos("/dev/pts"));
        assert!(pos("/proc") < pos("/proc/kcore"));
        assert!(pos("/sys") < pos("/sys/firmware"));
        for d in ["null", "zero", "full", "random", "urandom", "tty"] {
            assert!(t.contains(&format!("/dev/{d}").as_str()), "{d}");
        }
        for l in [
            "/dev/fd",
            "/dev/stdin",
            "/dev/stdout",
            "/dev/stderr",
            "/dev/ptmx",
        ] {
            assert!(t.contains(&l), "{l}");
        }
    }

    #[test]
    fn devpts_is_a_new_instance_without_gid_option() {
        let p = plan(&spec());
        let data = p
            .mounts
            .iter()
            .find_map(|op| match op {
                MountOp::Mount {
                    fstype: "devpts",
                    data,
                    ..
                } => Some(data.clone()),
                _ => None,
            })
            .unwrap();
        assert!(data.contains("newinstance"));
        assert!(data.contains("ptmxmode=0666"));
        assert!(!data.contains("gid="));
    }

    #[test]
    fn host_network_binds_sys_recursively_read_only() {
        let p = plan(&spec());
        assert!(!p.namespaces.contains(CloneFlags::CLONE_NEWNET));
        assert!(!p.loopback_up);
        let sys = p
            .mounts
            .iter()
            .find(|op| matches!(op, MountOp::Bind { target, .. } if target.path == "/sys"))
            .unwrap();
        match sys {
            MountOp::Bind {
                source,
                recursive,
                restrict,
                ..
            } => {
                assert_eq!(source, &PathBuf::from("/sys"));
                assert!(recursive);
                assert!(restrict.contains(
                    MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC
                ));
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn no_network_gets_netns_lo_and_fresh_sysfs() {
        let mut s = spec();
        s.network = Network::None;
        let p = plan(&s);
        assert!(p.namespaces.contains(CloneFlags::CLONE_NEWNET));
        assert!(p.loopback_up);
        assert!(p.mounts.iter().any(|op| matches!(op,
            MountOp::Mount { fstype: "sysfs", flags, .. } if flags.contains(MsFlags::MS_RDONLY))));
    }

    #[test]
    fn always_new_mount_pid_uts_ipc() {
        let p = plan(&spec());
        assert!(p.namespaces.contains(
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
        ));
        assert!(!p.namespaces.contains(CloneFlags::CLONE_NEWUSER));
    }

    #[test]
    fn hosts_and_resolv_conf_are_read_only_stub_files() {
        let p = plan(&spec());
        for (src, dst) in [
            ("/run/kiln/hosts", "/etc/hosts"),
            ("/etc/resolv.conf", "/etc/resolv.conf"),
        ] {
            let op = p
                .mounts
                .iter()
                .find(|op| matches!(op, MountOp::Bind { target, .. } if target.path == dst))
                .unwrap();
            assert_eq!(
                op,
                &MountOp::Bind {
                    source: src.into(),
                    target: Target::stub_file(dst),
                    recursive: false,
                    restrict: MsFlags::MS_RDONLY,
                }
            );
        }
        let mut s = spec();
        s.hosts_file = None;
        s.resolv_conf = None;
        assert!(!targets(&plan(&s)).iter().any(|t| t.starts_with("/etc")));
    }

    #[test]
    fn stubs_are_only_rootfs_targets() {
        let p = plan(&spec());
        for op in &p.mounts {
            if let MountOp::Mount { target, .. } | MountOp::Bind { target, .. } = op {
                let in_tmpfs = target.path.starts_with("/dev/");
                assert_eq!(target.stub, !in_tmpfs, "{}", target.path);
            }
        }
    }

    #[test]
    fn masks_and_readonly_paths_are_optional() {
        let p = plan(&spec());
        let masked: Vec<_> = p
            .mounts
            .iter()
            .filter_map(|op| match op {
                MountOp::Mask { target } => Some(target),
                _ => None,
            })
            .collect();
        assert_eq!(masked.len(), MASKED_PATHS.len());
        assert!(masked
            .iter()
            .all(|t| t.optional && t.create == Create::No && !t.stub));
        assert!(p
            .mounts
            .iter()
            .any(|op| matches!(op, MountOp::ReadOnly { target } if target.path == "/proc/sys")));
    }

    #[test]
    fn extra_mounts_come_last_before_pivot() {
        let mut s = spec();
        s.extra_mounts = vec![
            BindMount {
                source: "/cache".into(),
                target: "/root/.cache".into(),
                readonly: false,
            }
            .into(),
            BindMount {
                source: "/secret".into(),
                target: "/run/secrets/x".into(),
                readonly: true,
            }
            .into(),
            TmpfsMount {
                target: "/tmp/scratch".into(),
                size: Some(1 << 20),
                readonly: false,
            }
            .into(),
        ];
        let p = plan(&s);
        let n = p.mounts.len();
        assert_eq!(p.mounts[n - 1], MountOp::PivotRoot);
        assert!(
            matches!(&p.mounts[n - 4], MountOp::Bind { target, restrict, .. }
            if target.path == "/root/.cache" && restrict.is_empty() && target.create == Create::LikeSource)
        );
        assert!(
            matches!(&p.mounts[n - 3], MountOp::Bind { target, restrict, .. }
            if target.path == "/run/secrets/x" && *restrict == MsFlags::MS_RDONLY && target.stub && target.extra)
        );
        assert!(
            matches!(&p.mounts[n - 2], MountOp::Mount { fstype: "tmpfs", target, flags, data }
            if target.path == "/tmp/scratch" && target.stub && target.extra && target.create == Create::Dir
                && flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV) && data == "size=1048576")
        );
        // Only the extra mounts' targets are reported apart.
        let extra = p
            .mounts
            .iter()
            .filter(|op| matches!(op, MountOp::Bind { target, .. } | MountOp::Mount { target, .. } if target.extra))
            .count();
        assert_eq!(extra, 3);
    }

    #[test]
    fn process_keeps_docker_default_capabilities() {
        let mut s = spec();
        s.uid = 65534;
        s.gid = 65534;
        s.additional_gids = vec![5, 6];
        s.cwd = "/work".into();
        let p = plan(&s);
        assert_eq!(p.process.uid, 65534);
        assert_eq!(p.process.groups, vec![5, 6]);
        assert_eq!(p.process.cwd, "/work");
        let names: Vec<_> = p.process.capabilities.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), 14);
        for n in ["CAP_CHOWN", "CAP_SETUID", "CAP_NET_RAW", "CAP_SETFCAP"] {
            assert!(names.contains(&n));
        }
        assert!(!names.contains(&"CAP_SYS_ADMIN"));
    }

    #[test]
    fn validate_refuses_proc_cwd_and_bad_values() {
        let ok = plan(&spec());
        assert!(ok.validate().is_ok());
        for cwd in [
            "/proc/self/fd/3",
            "/proc",
            "/tmp/../proc/1/cwd",
            "relative",
            "/./proc/x",
        ] {
            let mut s = spec();
            s.cwd = cwd.into();
            let e = plan(&s).validate().unwrap_err().to_string();
            assert!(e.contains("working directory"), "{cwd}: {e}");
        }
        let mut s = spec();
        s.cwd = "/procfs/x".into();
        assert!(plan(&s).validate().is_ok());

        let mut s = spec();
        s.argv.clear();
        assert!(plan(&s).validate().is_err());
        let mut s = spec();
        s.env.push(("A=B".into(), "x".into()));
        assert!(plan(&s).validate().is_err());
        let mut s = spec();
        s.extra_mounts.push(
            BindMount {
                source: "/x".into(),
                target: "/proc/sys".into(),
                readonly: false,
            }
            .into(),
        );
        assert!(plan(&s).validate().is_err());
        let mut s = spec();
        s.extra_mounts.push(
            TmpfsMount {
                target: "/tmp/../proc/x".into(),
                size: None,
                readonly: false,
            }
            .into(),
        );
        assert!(plan(&s).validate().is_err());
        let mut s = spec();
        s.extra_mounts.push(
            TmpfsMount {
                target: "/".into(),
                size: None,
                readonly: false,
            }
            .into(),
        );
        assert!(plan(&s).validate().is_err());
    }

    #[test]
    fn clean_absolute_is_lexical() {
        assert_eq!(clean_absolute("/a/./b/../c/").as_deref(), Some("/a/c"));
        assert_eq!(clean_absolute("/../..").as_deref(), Some("/"));
        assert_eq!(clean_absolute("a/b"), None);
    }
}
