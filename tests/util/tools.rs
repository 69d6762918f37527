//! Finding external tools, the skip-or-fail policy for missing ones, scratch directories that
//! clean up after daemons, and thin wrappers around the OCI command-line tools.
//!
//! Policy: a test that needs something this machine lacks calls [`require_tool`] or
//! [`require`] first. Normally that prints why the test is skipped and returns `false`; with
//! `KILN_TEST_REQUIRE_ALL=1` (set by `.ci/run`) it panics instead, so CI cannot pass by skipping.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where the tests say to get missing tools from.
pub const INSTALL_HINT: &str = "install it with scripts/install-deps.sh";

/// True when `KILN_TEST_REQUIRE_ALL` asks for missing tools to fail the test.
pub fn require_all() -> bool {
    matches!(
        std::env::var("KILN_TEST_REQUIRE_ALL").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Name of the running test (libtest names each test's thread after it), for skip messages.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<test>")
        .to_string()
}

/// `cond` holds → true. Otherwise the test cannot run: panic under `KILN_TEST_REQUIRE_ALL=1`,
/// else print "skipping" and return false. `what` names the missing thing ("root", ...).
pub fn require(cond: bool, what: &str) -> bool {
    if cond {
        return true;
    }
    if require_all() {
        panic!("{what} is required (KILN_TEST_REQUIRE_ALL=1 forbids skipping)");
    }
    eprintln!("skipping {}: {what} not available", test_name());
    false
}

/// Like [`require`] for an executable (a bare name looked up in PATH and the sbin
/// directories, or an absolute path).
pub fn require_tool(name: &str) -> bool {
    if which(name).is_some() {
        return true;
    }
    if require_all() {
        panic!("{name} is required ({INSTALL_HINT})");
    }
    eprintln!("skipping {}: {name} not installed", test_name());
    false
}

/// Requires real root (needed by dockerd, podman's system mode, useradd, mount).
pub fn require_root(why: &str) -> bool {
    require(is_root(), &format!("root (for {why})"))
}

/// Full path of an executable: absolute paths are checked as they are; bare names are looked
/// up in PATH and then in the sbin directories, which a normal user's PATH often lacks.
pub fn which(name: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_exec(p))
}

/// Like [`which`] but panics: for wrappers whose callers already passed [`require_tool`].
pub fn tool_path(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| panic!("{name} is required ({INSTALL_HINT})"))
}

/// Effective uid of this process, from /proc (std has no getuid).
pub fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(u32::MAX)
}

pub fn is_root() -> bool {
    euid() == 0
}

/// The workspace root (two levels above the `kiln` crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// A script from the workspace's `scripts/` folder.
pub fn script(name: &str) -> PathBuf {
    workspace_root().join("scripts").join(name)
}

// ---------------------------------------------------------------------------------------------
// Scratch directories for daemons

/// Prefix of every fixture directory, so leftovers of a crashed run can be found.
pub const FIXTURE_PREFIX: &str = "kiln-fx";

/// A scratch directory for a fixture: `$TMPDIR/kiln-fx-<kind>-<pid>-<n>`. Dropping it unmounts
/// whatever is still mounted below it (daemons bind-mount their roots) and removes it.
/// The name is short because daemons put unix sockets inside (108-byte limit).
pub struct TempRoot {
    path: PathBuf,
}

impl TempRoot {
    pub fn new(kind: &str) -> TempRoot {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "{FIXTURE_PREFIX}-{kind}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        remove_tree(&path);
        std::fs::create_dir_all(&path).expect("create fixture dir");
        TempRoot { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}

/// Unmounts everything at or below `dir` (deepest first, lazily so a busy mount cannot block),
/// then deletes `dir`.
pub fn remove_tree(dir: &Path) {
    unmount_under(dir);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            eprintln!("warning: could not remove {}: {e}", dir.display());
        }
    }
}

/// Mount points at or below `dir` in this mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    found.dedup();
    found
}

fn unmount_under(dir: &Path) {
    for m in mounts_under(dir) {
        // Stacked mounts on one point show up once per layer; repeat until it is gone.
        for _ in 0..8 {
            let ok = Command::new("umount")
                .arg("-l")
                .arg(&m)
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                break;
            }
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as \\ooo octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let octal = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Processes

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

extern "C" {
    // From the C library std already links; std itself only offers SIGKILL via Child::kill.
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Sends `sig` to `pid` (negative: a process group). False if it does not exist.
pub fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc_kill(pid, sig) == 0 }
}

/// True while /proc/<pid> exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Live processes whose command line mentions `needle` (e.g. a fixture's directory), as
/// (pid, command line). Finds daemons' children that outlived their parent (shims, conmon).
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me || !pid_alive(pid) {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline.trim_end().to_string()));
        }
    }
    found
}

/// Kills (SIGKILL) every live process whose command line mentions `needle`, waits briefly for
/// them to go, and returns what it killed.
pub fn kill_processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let victims = processes_mentioning(needle);
    for (pid, _) in &victims {
        signal(*pid, SIGKILL);
    }
    wait_until(Duration::from_secs(5), || {
        victims.iter().all(|(pid, _)| !pid_alive(*pid))
    });
    victims
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Last `n` lines of a (log) file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Removes fixture directories (and their daemons) left by test processes that no longer
/// exist: a run killed with SIGKILL cannot drop its fixtures. Fixture constructors call it.
pub fn reap_stale_fixtures() {
    let prefix = format!("{FIXTURE_PREFIX}-");
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) {
            continue;
        }
        // kiln-fx-<kind>-<pid>-<n>; the kind may itself contain dashes.
        let Some(owner) = name.rsplit('-').nth(1).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if owner == std::process::id() as i32 || pid_alive(owner) {
            continue;
        }
        let path = entry.path();
        let needle = path.to_string_lossy().into_owned();
        // Ask politely first: dockerd stops its containers and unmounts on SIGTERM.
        let procs = processes_mentioning(&needle);
        for (pid, _) in &procs {
            signal(*pid, SIGTERM);
        }
        wait_until(Duration::from_secs(15), || {
            processes_mentioning(&needle).is_empty()
        });
        let killed = kill_processes_mentioning(&needle);
        eprintln!(
            "note: removing stale fixture {} (owner pid {owner} is gone; stopped {} processes, \
             {} needed SIGKILL)",
            path.display(),
            procs.len(),
            killed.len()
        );
        remove_tree(&path);
    }
}

// ---------------------------------------------------------------------------------------------
// Running commands

/// stdout and stderr of a finished command, for assertion messages.
pub fn describe(out: &Output) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    s
}

/// Panics with both streams unless `out` succeeded; returns its stdout as a string.
pub fn assert_success(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed\n{}", describe(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` (spawn failure panics) and returns its output.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()))
}

/// Runs `program args...` and returns its output.
pub fn run_tool<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Output {
    output(Command::new(program).args(args))
}

/// `skopeo ARGS`. Callers check `require_tool("skopeo")` first. Uses the system policy.json
/// (Debian's accepts anything); pass registry credentials with `--creds`/`--authfile` rather
/// than `skopeo login`, which would write to the machine's auth file.
pub fn skopeo<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run_tool(tool_path("skopeo"), args)
}

/// `umoci ARGS`. Callers check `require_tool("umoci")` first.
pub fn umoci<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run_tool(tool_path("umoci"), args)
}

/// `umoci unpack --image LAYOUT:TAG BUNDLE`, with `--rootless` when not root (otherwise it
/// fails to chown the files it extracts).
pub fn umoci_unpack(image: &str, bundle: &Path) -> Output {
    let mut cmd = Command::new(tool_path("umoci"));
    cmd.arg("unpack");
    if !is_root() {
        cmd.arg("--rootless");
    }
    output(cmd.args(["--image", image]).arg(bundle))
}

/// `oci-image-tool ARGS`. Callers check `require_tool("oci-image-tool")` first. Debian's
/// version (1.0.0-rc1) knows `--type image|manifest|imageIndex|config`; "imageLayout" is
/// unimplemented: use [`oci_validate_layout`] for a layout directory or tarball.
pub fn oci_image_tool<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run_tool(tool_path("oci-image-tool"), args)
}

/// `oci-image-tool validate --type image [--ref name=NAME] LAYOUT`: checks index.json, every
/// manifest, config and layer descriptor reachable from it (all refs when `name` is None).
pub fn oci_validate_layout(layout: &Path, name: Option<&str>) -> Output {
    let mut cmd = Command::new(tool_path("oci-image-tool"));
    cmd.args(["validate", "--type", "image"]);
    if let Some(name) = name {
        cmd.arg("--ref").arg(format!("name={name}"));
    }
    output(cmd.arg(layout))
}

// ---------------------------------------------------------------------------------------------
// Timing

/// Prints how long each step of a test took (visible with --nocapture).
pub struct Steps {
    start: Instant,
    last: Instant,
    log: Vec<(String, Duration)>,
}

impl Default for Steps {
    fn default() -> Self {
        Self::new()
    }
}

impl Steps {
    pub fn new() -> Steps {
        let now = Instant::now();
        Steps {
            start: now,
            last: now,
            log: Vec::new(),
        }
    }

    /// Records the time since the previous step under `name` and prints it.
    pub fn done(&mut self, name: &str) {
        let now = Instant::now();
        let d = now - self.last;
        self.last = now;
        println!("[{:>7.2}s] {name}", d.as_secs_f64());
        self.log.push((name.to_string(), d));
    }

    pub fn total(&self) -> Duration {
        self.start.elapsed()
    }
}
