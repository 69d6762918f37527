//! A private Docker daemon per fixture: Debian's dockerd 20.10 with its own data root, exec
//! root, socket, config file and containerd, so tests never touch (or need) the machine's
//! Docker, and nothing is ever pulled. Containers get no network (`--bridge=none`): run them
//! with `--network none`.
//!
//! ```ignore
//! let Some(d) = Dockerd::start() else { return };   // skipped (or failed) without root/docker
//! d.docker_ok(&["load", "-i", tar]);
//! ```
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::tools::{
    assert_success, kill_processes_mentioning, output, processes_mentioning, reap_stale_fixtures,
    remove_tree, require_root, require_tool, signal, tail, wait_until, which, TempRoot, SIGKILL,
    SIGTERM,
};

/// Debian's docker CLI. A newer client in /usr/local/bin has no builder for 20.10, so the
/// tests name this one explicitly.
pub const DOCKER_CLI: &str = "/usr/bin/docker";

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Dockerd {
    child: Child,
    root: TempRoot,
    socket: PathBuf,
    storage_driver: &'static str,
}

/// dockerd's path: Debian installs it in /usr/sbin.
fn dockerd_path() -> Option<PathBuf> {
    which("dockerd").or_else(|| which("/usr/bin/dockerd"))
}

impl Dockerd {
    /// Starts a daemon and waits until it answers. None when the test should be skipped (not
    /// root, or docker.io missing); panics (with the daemon's log) if it does not come up.
    pub fn start() -> Option<Dockerd> {
        if !require_root("a private dockerd") || !require_tool(DOCKER_CLI) {
            return None;
        }
        let Some(dockerd) = dockerd_path() else {
            require_tool("dockerd");
            return None;
        };
        reap_stale_fixtures();

        let root = TempRoot::new("dockerd");
        let socket = root.join("docker.sock");
        let config = root.join("daemon.json");
        // An empty config file replaces /etc/docker/daemon.json: no mirrors, no insecure
        // registries, no log drivers from the host.
        std::fs::write(&config, "{}\n").expect("write daemon.json");
        std::fs::create_dir_all(root.join("cli")).expect("mkdir cli config");
        let log = File::create(root.join("dockerd.log")).expect("create dockerd log");
        let storage_driver = storage_driver();

        let mut cmd = Command::new(dockerd);
        cmd.arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(root.join("data"))
            // Short: containerd's sockets live below the exec root (108-byte limit).
            .arg("--exec-root")
            .arg(root.join("x"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--storage-driver")
            .arg(storage_driver)
            // No bridge and no firewall rules: the tests' containers run with --network none,
            // and the host's network configuration stays untouched.
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .args(["--ip-forward=false", "--ip-masq=false"])
            .args(["--log-level", "warn"])
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        // Its own process group, so a last-resort SIGKILL reaches its containerd as well.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("spawn dockerd");

        let mut d = Dockerd {
            child,
            root,
            socket,
            storage_driver,
        };
        d.wait_ready();
        Some(d)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "dockerd exited during startup ({status}); log tail:\n{}",
                    self.log_tail(40)
                );
            }
            // Cheap check first (the socket appears late in startup), then the real question.
            if self.socket.exists() {
                let out = self.docker(&["version", "--format", "{{.Server.Version}}"]);
                if out.status.success() {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "dockerd did not answer within {START_TIMEOUT:?}; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `unix:///…/docker.sock`, for `docker -H` or `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The fixture's scratch directory (free for the test's own files too).
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// "overlay2" or "vfs".
    pub fn storage_driver(&self) -> &'static str {
        self.storage_driver
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.root.join("dockerd.log"), lines)
    }

    /// A `/usr/bin/docker -H <this daemon>` command with a private client config dir, for
    /// callers that need stdin, env or a working directory.
    pub fn docker_cmd(&self) -> Command {
        let mut c = Command::new(DOCKER_CLI);
        c.arg("--host")
            .arg(self.host())
            .env("DOCKER_CONFIG", self.root.join("cli"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .stdin(Stdio::null());
        c
    }

    /// Runs `docker ARGS` against this daemon.
    pub fn docker<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        output(self.docker_cmd().args(args))
    }

    /// Runs `docker ARGS`, panics unless it succeeds, returns stdout.
    pub fn docker_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.docker(args);
        let what = format!(
            "docker {}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        assert_success(&out, &what)
    }

    /// `DOCKER_BUILDKIT=1 docker build --progress=plain -f DOCKERFILE -t TAG CONTEXT` with the
    /// daemon's built-in BuildKit (works with dockerd 20.10 here, no buildx needed). Extra
    /// arguments (`--build-arg`, `--target`, `--network none`, ...) go in `extra`.
    pub fn buildkit_build(
        &self,
        context: &Path,
        dockerfile: &Path,
        tag: &str,
        extra: &[&str],
    ) -> Output {
        output(
            self.docker_cmd()
                .env("DOCKER_BUILDKIT", "1")
                .args(["build", "--progress=plain", "-t", tag, "-f"])
                .arg(dockerfile)
                .args(extra)
                .arg(context),
        )
    }

    /// An image's files as (type, mode, uid, gid, size, link, content) from `docker export`.
    pub fn exported_tree(&self, image: &str, dir: &Path) -> BTreeMap<String, String> {
        let name = format!("x-{}", image.replace([':', '/'], "-"));
        let _ = self.docker(&["rm", "-f", &name]);
        assert_success(
            &self.docker(&["create", "--pull=never", "--name", &name, image, "true"]),
            "docker create",
        );
        let tar = dir.join(format!("{name}.tar"));
        assert_success(
            &self.docker(&["export", "-o", tar.to_str().unwrap(), &name]),
            "docker export",
        );
        let _ = self.docker(&["rm", "-f", &name]);
        let code = "import tarfile,hashlib,sys\nfor m in tarfile.open(sys.argv[1]):\n    \
            h = hashlib.sha256(tarfile.open(sys.argv[1]).extractfile(m).read()).hexdigest()[:16] if m.isfile() else ''\n    \
            print(f'{m.name}\\t{m.type!r} {oct(m.mode)} {m.uid}:{m.gid} {m.size} {m.linkname} {h}')";
        assert_success(
            &output(Command::new("python3").arg("-c").arg(code).arg(&tar)),
            "python3 listing of the exported tar",
        )
        .lines()
        .filter_map(|l| l.split_once('\t'))
        // dockerd adds these to every container it creates.
        .filter(|(p, _)| {
            !matches!(
                *p,
                ".dockerenv"
                    | "etc/hostname"
                    | "etc/hosts"
                    | "etc/resolv.conf"
                    | "etc/mtab"
                    | "proc"
                    | "sys"
                    | "dev"
            ) && !p.starts_with("dev/")
        })
        .map(|(p, v)| (p.trim_end_matches('/').to_string(), v.to_string()))
        .collect()
    }

    /// Exports both images and asserts their file trees are identical; returns how many paths
    /// were compared.
    pub fn assert_same_tree(&self, buildkit: &str, kiln: &str, dir: &Path) -> usize {
        let (bk, kl) = (
            self.exported_tree(buildkit, dir),
            self.exported_tree(kiln, dir),
        );
        let mut diffs = Vec::new();
        for path in bk
            .keys()
            .chain(kl.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            if bk.get(path) != kl.get(path) {
                diffs.push(format!(
                    "{path}: BuildKit {:?} vs kiln {:?}",
                    bk.get(path),
                    kl.get(path)
                ));
            }
        }
        assert!(
            diffs.is_empty(),
            "{} differences, first ones:\n{}",
            diffs.len(),
            diffs[..diffs.len().min(30)].join("\n")
        );
        bk.len()
    }

    /// `docker load -i ARCHIVE`.
    pub fn load(&self, archive: &Path) -> Output {
        output(self.docker_cmd().arg("load").arg("-i").arg(archive))
    }

    /// `docker run --rm --pull=never --network none IMAGE CMD...`.
    pub fn run<S: AsRef<OsStr>>(&self, image: &str, cmd: &[S]) -> Output {
        output(
            self.docker_cmd()
                .args(["run", "--rm", "--pull=never", "--network", "none", image])
                .args(cmd),
        )
    }

    fn stop(&mut self) {
        let pid = self.child.id() as i32;
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(pid, SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                eprintln!("warning: dockerd ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
                signal(-pid, SIGKILL);
                let _ = self.child.wait();
            }
        }
        // containerd normally goes with dockerd; shims and anything else still pointing into
        // this fixture (its socket or data root appear on their command lines) go now.
        let root = self.root.path().to_string_lossy().into_owned();
        wait_until(Duration::from_secs(5), || {
            processes_mentioning(&root).is_empty()
        });
        for (pid, cmd) in kill_processes_mentioning(&root) {
            eprintln!("warning: killed leftover process {pid} of dockerd fixture: {cmd}");
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        // TempRoot's drop unmounts the data root's bind mount and deletes everything.
        remove_tree(self.root.path());
    }
}

/// overlay2 if an overlay mount works in the temp dir's file system (not on every kernel or
/// inside every container), else vfs. `KILN_TEST_DOCKER_STORAGE_DRIVER` overrides.
pub fn storage_driver() -> &'static str {
    static DRIVER: OnceLock<&'static str> = OnceLock::new();
    DRIVER.get_or_init(|| {
        match std::env::var("KILN_TEST_DOCKER_STORAGE_DRIVER").as_deref() {
            Ok("vfs") => return "vfs",
            Ok("overlay2") => return "overlay2",
            _ => {}
        }
        if overlay_mount_works() {
            "overlay2"
        } else {
            eprintln!("note: overlay mounts do not work in the temp dir; dockerd uses vfs");
            "vfs"
        }
    })
}

/// Whether overlay mounts work in the temp dir's file system (probed once per process).
pub fn overlay_mount_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(probe_overlay_mount)
}

/// Mounts a one-file overlay in a temp dir and reads through it.
fn probe_overlay_mount() -> bool {
    let t = TempRoot::new("ovl");
    for d in ["l", "u", "w", "m"] {
        std::fs::create_dir(t.join(d)).expect("mkdir");
    }
    std::fs::write(t.join("l/f"), "x").expect("write");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        t.join("l").display(),
        t.join("u").display(),
        t.join("w").display()
    );
    let mounted = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(t.join("m"))
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    // TempRoot's drop unmounts it.
    mounted
        && std::fs::read(t.join("m/f"))
            .map(|b| b == b"x")
            .unwrap_or(false)
}
