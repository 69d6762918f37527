//! podman as root with a private store: its own --root/--runroot/--tmpdir, containers.conf,
//! storage.conf and registries.conf in a scratch directory, so tests neither read nor change
//! the machine's images and never resolve a short name to a remote registry.
//!
//! Flags this machine needs (cgroup v1 hybrid, no systemd, no CAP_SYS_RESOURCE in the bounding
//! set): `--cgroup-manager cgroupfs`, `--events-backend file`, and rlimits no higher than the
//! current hard limits (podman's root default of 1048576 open files makes runc fail with
//! "error setting rlimit type 7: operation not permitted").
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::dockerd::overlay_mount_works;
use super::tools::{
    assert_success, kill_processes_mentioning, output, processes_mentioning, reap_stale_fixtures,
    remove_tree, require_root, require_tool, tool_path, wait_until, TempRoot,
};

pub struct Podman {
    root: TempRoot,
    storage_driver: &'static str,
}

impl Podman {
    /// A podman with a fresh private store. None when the test should be skipped (not root,
    /// podman missing).
    pub fn new() -> Option<Podman> {
        if !require_root("podman with a private store") || !require_tool("podman") {
            return None;
        }
        reap_stale_fixtures();
        let root = TempRoot::new("podman");
        let storage_driver = if overlay_mount_works() {
            "overlay"
        } else {
            "vfs"
        };
        let (nofile, nproc) = (hard_limit("Max open files"), hard_limit("Max processes"));
        let nofile = nofile.min(1_048_576);
        // podman's own process runs with at most 32768 processes, and runc cannot raise that.
        let nproc = nproc.min(32_768);
        std::fs::write(
            root.join("containers.conf"),
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n"
            ),
        )
        .expect("write containers.conf");
        std::fs::write(
            root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"{storage_driver}\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                root.join("root").display(),
                root.join("run").display()
            ),
        )
        .expect("write storage.conf");
        // No search registries: an unqualified name can only mean a local image.
        std::fs::write(
            root.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .expect("write registries.conf");
        // A private, empty auth file (podman refuses a REGISTRY_AUTH_FILE that does not exist).
        std::fs::write(root.join("auth.json"), "{\"auths\": {}}\n").expect("write auth.json");
        Some(Podman {
            root,
            storage_driver,
        })
    }

    /// "overlay" or "vfs".
    pub fn storage_driver(&self) -> &'static str {
        self.storage_driver
    }

    /// The fixture's scratch directory.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// A `podman` command with the private store and this machine's flags.
    pub fn podman_cmd(&self) -> Command {
        let r = &self.root;
        let mut c = Command::new(tool_path("podman"));
        c.env("CONTAINERS_CONF", r.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", r.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", r.join("registries.conf"))
            .env("REGISTRY_AUTH_FILE", r.join("auth.json"))
            .arg("--root")
            .arg(r.join("root"))
            .arg("--runroot")
            .arg(r.join("run"))
            .arg("--tmpdir")
            .arg(r.join("tmp"))
            .args(["--storage-driver", self.storage_driver])
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .stdin(Stdio::null());
        c
    }

    /// Runs `podman ARGS`.
    pub fn podman<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        output(self.podman_cmd().args(args))
    }

    /// Runs `podman ARGS`, panics unless it succeeds, returns stdout.
    pub fn podman_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.podman(args);
        let what = format!(
            "podman {}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        assert_success(&out, &what)
    }

    /// `podman load -i ARCHIVE` (docker-archive or oci-archive).
    pub fn load(&self, archive: &Path) -> Output {
        output(self.podman_cmd().arg("load").arg("-i").arg(archive))
    }

    /// `podman run --rm --network none --pull=never IMAGE CMD...`.
    pub fn run<S: AsRef<OsStr>>(&self, image: &str, cmd: &[S]) -> Output {
        output(
            self.podman_cmd()
                .args(["run", "--rm", "--network", "none", "--pull=never", image])
                .args(cmd),
        )
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let root = self.root.path().to_string_lossy().into_owned();
        // conmon and `podman container cleanup` of --rm containers finish on their own
        // shortly after the container exits; give them that chance before killing.
        wait_until(Duration::from_secs(5), || {
            processes_mentioning(&root).is_empty()
        });
        for (pid, cmd) in kill_processes_mentioning(&root) {
            eprintln!("warning: killed leftover process {pid} of podman fixture: {cmd}");
        }
        // containers/storage leaves its overlay home bind-mounted; remove_tree unmounts it.
        remove_tree(self.root.path());
    }
}

/// The hard limit in /proc/self/limits on the line starting with `name` (u64::MAX when
/// unlimited or unreadable).
fn hard_limit(name: &str) -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l[name.len()..].split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}
