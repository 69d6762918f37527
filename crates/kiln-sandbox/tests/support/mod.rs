//! Shared helpers for the sandbox's integration tests: the skip-or-fail policy, a busybox
//! root filesystem, capturing a step's output, the unprivileged test users and a scan of
//! /proc for leftover processes.
#![allow(dead_code)]

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_sandbox::run::{self, ExitStatus, RunIo, RunSpec, Stdio};
use kiln_sandbox::SandboxError;

/// `KILN_TEST_REQUIRE_ALL=1` turns skips into failures (CI must not pass by skipping).
pub fn require_all() -> bool {
    matches!(
        std::env::var("KILN_TEST_REQUIRE_ALL").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// True when `cond` holds; otherwise skip (print why) or, under require-all, panic.
pub fn require(cond: bool, what: &str) -> bool {
    if cond {
        return true;
    }
    if require_all() {
        panic!("{what} is required (KILN_TEST_REQUIRE_ALL=1 forbids skipping)");
    }
    eprintln!(
        "skipping {}: {what} not available",
        std::thread::current().name().unwrap_or("<test>")
    );
    false
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Root is needed for these tests (mount namespaces without a user namespace, setpriv to
/// other users, useradd).
pub fn require_root() -> bool {
    require(is_root(), "root")
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn require_tool(name: &str) -> bool {
    require(which(name).is_some(), name)
}

pub const BUSYBOX: &str = "/bin/busybox";

/// A busybox root filesystem in a temporary directory: bin/busybox plus one symlink per
/// applet, /etc/passwd and /etc/group with root and nobody, a sticky /tmp. No /proc, /dev,
/// /sys or /etc/resolv.conf, so the sandbox has to create (and report) those stubs.
pub struct Rootfs {
    dir: tempfile::TempDir,
}

impl Rootfs {
    pub fn new() -> Option<Rootfs> {
        if !require(
            Path::new(BUSYBOX).is_file(),
            "busybox-static (/bin/busybox)",
        ) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("kiln-sandbox-test-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let root = dir.path().join("root");
        for d in ["bin", "etc", "tmp", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            // The list names busybox itself; a symlink there would replace the binary.
            if applet.is_empty() || applet == "busybox" {
                continue;
            }
            let _ = symlink("busybox", root.join("bin").join(applet));
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        Some(Rootfs { dir })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Hands the whole tree (and its temp parent) to `uid:gid`, for rootless runs.
    pub fn chown_to(&self, uid: u32, gid: u32) {
        chown_tree(self.dir.path(), uid, gid);
    }

    pub fn spec(&self, argv: &[&str]) -> RunSpec {
        let mut s = RunSpec::new(self.path(), argv.iter().map(|a| a.to_string()).collect());
        s.hostname = "kiln-test".into();
        s
    }
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    lchown(p, Some(uid), Some(gid)).unwrap();
    if p.is_dir() && !p.is_symlink() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

/// Output of a finished step.
pub struct Captured {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub stubs: Vec<PathBuf>,
    /// The part of `stubs` made for extra mounts.
    pub mount_stubs: Vec<PathBuf>,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

fn drain(fd: OwnedFd) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::fs::File::from(fd).read_to_string(&mut s);
        s
    })
}

/// Runs a step with stdout/stderr on pipes and collects everything.
pub fn capture(spec: &RunSpec) -> Result<Captured, SandboxError> {
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let io = RunIo {
        stdin: Stdio::Null,
        stdout: Stdio::Fd(out_w),
        stderr: Stdio::Fd(err_w),
    };
    let (out, err) = (drain(out_r), drain(err_r));
    let mut step = run::start(spec, io)?;
    let status = step.wait()?;
    let stubs = step.created_stubs().to_vec();
    let mount_stubs = step.created_mount_stubs().to_vec();
    Ok(Captured {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        stubs,
        mount_stubs,
    })
}

/// Pids whose command line starts with `needle` (arguments joined by spaces). "Starts
/// with", so the probe whose arguments mention the same command does not count.
pub fn pids_with(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmd.starts_with(needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// Polls until `cond` holds or `secs` pass.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A number unlikely to appear in any other command line on the machine.
pub fn unique_token(salt: u32) -> String {
    let n = (std::process::id() % 10_000) * 10 + salt % 10;
    format!("{}.{}", 7_000 + salt, n)
}

/// No mount of this test's root filesystems may be visible in our own mount namespace.
pub fn assert_no_mounts_under(path: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_string_lossy();
    assert!(
        !info.lines().any(|l| l.contains(p.as_ref())),
        "leftover mount under {p}:\n{info}"
    );
}

// ---------------------------------------------------------------------------------------
// Unprivileged users

pub struct TestUser {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
}

fn lookup(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    for l in passwd.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 7 && f[0] == name {
            return Some((f[2].parse().ok()?, f[3].parse().ok()?));
        }
    }
    None
}

static USERS: Mutex<()> = Mutex::new(());

/// `kilntest`, the user with subordinate ranges (set up by the machine; see
/// tests/util/unpriv.rs at the workspace root).
pub fn kilntest() -> Option<TestUser> {
    if !require_root() || !require_tool("setpriv") || !require_tool("newuidmap") {
        return None;
    }
    let _g = USERS.lock().unwrap_or_else(|e| e.into_inner());
    let (uid, gid) = lookup("kilntest")?;
    let has = |f: &str| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("kilntest:"))
    };
    if !require(
        has("/etc/subuid") && has("/etc/subgid"),
        "kilntest with /etc/subuid and /etc/subgid ranges",
    ) {
        return None;
    }
    Some(TestUser {
        name: "kilntest",
        uid,
        gid,
    })
}

/// `kilntest2`: a user deliberately without subordinate ranges (created here if needed).
pub fn kilntest2() -> Option<TestUser> {
    if !require_root() || !require_tool("setpriv") || !require_tool("useradd") {
        return None;
    }
    let _g = USERS.lock().unwrap_or_else(|e| e.into_inner());
    if lookup("kilntest2").is_none() {
        let out = Command::new(which("useradd").unwrap())
            .args(["-M", "-s", "/bin/sh", "kilntest2"])
            .output()
            .unwrap();
        assert!(
            out.status.success() || out.status.code() == Some(9),
            "useradd kilntest2: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // useradd may have handed out ranges on its own (login.defs SUB_UID_COUNT).
    for f in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("kilntest2:")) {
            let kept: String = text
                .lines()
                .filter(|l| !l.starts_with("kilntest2:"))
                .map(|l| format!("{l}\n"))
                .collect();
            let tmp = format!("{f}.kiln-tmp");
            std::fs::write(&tmp, kept).unwrap();
            std::fs::rename(&tmp, f).unwrap();
        }
    }
    let (uid, gid) = lookup("kilntest2")?;
    Some(TestUser {
        name: "kilntest2",
        uid,
        gid,
    })
}

impl TestUser {
    /// `setpriv --reuid --regid --init-groups --reset-env -- program`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(which("setpriv").unwrap());
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--reset-env")
            .arg("--")
            .arg(program)
            // Somewhere the user can stand (the test's cwd may be root-only).
            .current_dir("/");
        c
    }
}

pub fn probe() -> &'static str {
    env!("CARGO_BIN_EXE_kiln-sandbox-probe")
}

/// Makes `su` usable by any user in the rootfs: busybox setuid root, and root with an
/// empty password (busybox su then asks for none).
pub fn make_su_work(fs: &Rootfs) {
    std::fs::set_permissions(
        fs.path().join("bin/busybox"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::write(
        fs.path().join("etc/shadow"),
        "root::19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
    )
    .unwrap();
}

/// A child process killed when the test ends, even when it fails.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
