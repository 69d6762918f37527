//! Running one process for a RUN step: [`plan`] computes the sandbox, [`spawn`] starts it
//! and returns a [`Running`] handle to wait for or kill.
//!
//! How a step is started:
//!
//! 1. a short-lived thread enters a new pid namespace (`unshare(CLONE_NEWPID)` affects only
//!    its future children) and forks: the child is PID 1 of the namespace, and its
//!    parent-death signal is tied to this thread, which lives until the child is reaped;
//! 2. the child unshares mount, uts, ipc (and net) namespaces, applies the plan's mounts,
//!    pivots into the root, drops capabilities and ids, and execs; setup failures and the
//!    mount stubs it created come back through a close-on-exec pipe;
//! 3. [`Running::wait`] returns the exit code. When PID 1 exits the kernel kills everything
//!    else in its pid namespace, so no process of the step outlives it; [`Killer::kill`]
//!    sends SIGKILL to PID 1 for the same effect.
//!
//! The fork happens in a multi-threaded program and the child then runs ordinary Rust
//! (allocating): this relies on the C library making malloc usable after fork, which
//! glibc and musl both do (they take and reset the allocator locks around fork).

mod apply;
mod plan;
mod report;
mod resolve;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::{fstatat, SFlag};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, unlinkat, ForkResult, Pid, UnlinkatFlags};

pub use plan::{
    clean_absolute, plan, BindMount, Capability, Create, ExtraMount, MountOp, Network, Plan,
    ProcessPlan, RunSpec, Target, TmpfsMount, DEFAULT_CAPABILITIES, DEFAULT_PATH, MASKED_PATHS,
    READONLY_PATHS,
};

use crate::userns::{self, MapLine};
use crate::SandboxError;
use apply::ChildSetup;
use report::Frame;

/// Where one of the step's standard streams goes.
#[derive(Debug, Default)]
pub enum Stdio {
    /// The same as kiln's.
    Inherit,
    /// /dev/null.
    #[default]
    Null,
    /// A descriptor of the caller's choice (e.g. the write end of a pipe to stream output).
    Fd(OwnedFd),
}

impl From<OwnedFd> for Stdio {
    fn from(fd: OwnedFd) -> Self {
        Stdio::Fd(fd)
    }
}

impl From<File> for Stdio {
    fn from(f: File) -> Self {
        Stdio::Fd(f.into())
    }
}

/// The step's standard streams. Default: stdin from /dev/null (a build has no input), and
/// stdout/stderr inherited.
#[derive(Debug)]
pub struct RunIo {
    /// Standard input.
    pub stdin: Stdio,
    /// Standard output.
    pub stdout: Stdio,
    /// Standard error.
    pub stderr: Stdio,
}

impl Default for RunIo {
    fn default() -> Self {
        RunIo {
            stdin: Stdio::Null,
            stdout: Stdio::Inherit,
            stderr: Stdio::Inherit,
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn code(&self) -> i32 {
        match *self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }

    /// Exited with 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Exited(0)
    }
}

/// State shared by the handle, its killers and the reaping thread.
#[derive(Debug)]
struct Shared {
    pid: AtomicI32,
    /// Set, under the lock, in the same critical section that reaps the child: a kill
    /// holding the lock can never hit a recycled pid.
    reaped: Mutex<bool>,
}

/// Kills a running step from anywhere (a signal-handling thread, a timeout).
#[derive(Debug, Clone)]
pub struct Killer(Arc<Shared>);

impl Killer {
    /// SIGKILL to the step's PID 1; the kernel then kills every process in its pid
    /// namespace. Does nothing once the step has been reaped.
    pub fn kill(&self) -> Result<(), SandboxError> {
        let reaped = self.0.reaped.lock().unwrap_or_else(|e| e.into_inner());
        let pid = self.0.pid.load(Ordering::SeqCst);
        if *reaped || pid <= 0 {
            return Ok(());
        }
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(SandboxError::sys(format!("killing sandbox pid {pid}"), e)),
        }
    }
}

/// A started step.
///
/// Dropping it without [`wait`](Running::wait) kills the step and waits for it, so an
/// abandoned step never keeps running.
#[derive(Debug)]
pub struct Running {
    shared: Arc<Shared>,
    stubs: Vec<PathBuf>,
    mount_stubs: Vec<PathBuf>,
    waiter: Option<JoinHandle<Result<ExitStatus, SandboxError>>>,
    status: Option<ExitStatus>,
}

impl Running {
    /// The host-side pid of the step's PID 1.
    pub fn pid(&self) -> u32 {
        self.shared.pid.load(Ordering::SeqCst) as u32
    }

    /// Files and directories the sandbox created in the root filesystem as mount points
    /// (e.g. `etc/resolv.conf` when the image had none), relative to it, in creation order.
    /// Remove them with [`remove_stubs`] before diffing the step's changes.
    pub fn created_stubs(&self) -> &[PathBuf] {
        &self.stubs
    }

    /// The part of [`created_stubs`](Running::created_stubs) made for the spec's extra
    /// mounts, in creation order. A step may have written into such a stub's directory
    /// (outside the mount); remove them with [`remove_stubs`], which keeps what is not empty.
    pub fn created_mount_stubs(&self) -> &[PathBuf] {
        &self.mount_stubs
    }

    /// A handle that can kill the step from another thread.
    pub fn killer(&self) -> Killer {
        Killer(self.shared.clone())
    }

    /// Kills the step (see [`Killer::kill`]).
    pub fn kill(&self) -> Result<(), SandboxError> {
        self.killer().kill()
    }

    /// Waits for PID 1 to exit. By then no process of the step is left.
    pub fn wait(&mut self) -> Result<ExitStatus, SandboxError> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        let Some(handle) = self.waiter.take() else {
            return Err(SandboxError::sys("waiting for the sandbox", Errno::ECHILD));
        };
        let st = handle.join().map_err(|_| {
            SandboxError::sys("the sandbox's reaping thread panicked", Errno::EIO)
        })??;
        self.status = Some(st);
        Ok(st)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.kill();
            let _ = self.wait();
        }
    }
}

/// [`plan`] + [`spawn`].
pub fn start(spec: &RunSpec, io: RunIo) -> Result<Running, SandboxError> {
    spawn(&plan(spec), io)
}

/// Starts the planned step. Returns once the command has been exec'd (or setup failed:
/// then the error says which step, and any stubs already created are removed again).
pub fn spawn(plan: &Plan, io: RunIo) -> Result<Running, SandboxError> {
    plan.validate()?;
    let setgroups_allowed = check_ids(plan)?;
    let stdio = open_stdio(io)?;
    let setup = ChildSetup {
        plan: plan.clone(),
        stdio,
        setgroups_allowed,
    };

    let (report_r, report_w) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| SandboxError::sys("creating a pipe", e))?;
    let (alive_r, alive_w) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| SandboxError::sys("creating a pipe", e))?;
    let shared = Arc::new(Shared {
        pid: AtomicI32::new(0),
        reaped: Mutex::new(false),
    });
    let (pid_tx, pid_rx) = mpsc::sync_channel::<Result<Pid, SandboxError>>(1);
    let thread_shared = shared.clone();
    let waiter = std::thread::Builder::new()
        .name("kiln-sandbox".into())
        .spawn(move || waiter_thread(setup, report_w, alive_r, alive_w, pid_tx, thread_shared))
        .map_err(|e| SandboxError::io("starting the sandbox thread", e))?;

    let mut running = Running {
        shared,
        stubs: Vec::new(),
        mount_stubs: Vec::new(),
        waiter: Some(waiter),
        status: None,
    };
    match pid_rx.recv() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            running.status = Some(ExitStatus::Exited(-1));
            if let Some(w) = running.waiter.take() {
                let _ = w.join();
            }
            return Err(e);
        }
        Err(_) => {
            running.status = Some(ExitStatus::Exited(-1));
            return Err(SandboxError::sys(
                "the sandbox thread ended early",
                Errno::EIO,
            ));
        }
    }

    // EOF arrives when the child execs (the pipe is close-on-exec) or exits.
    let mut bytes = Vec::new();
    let read = File::from(report_r).read_to_end(&mut bytes);
    let mut failure = None;
    for frame in Frame::decode_all(&bytes) {
        match frame {
            Frame::Stub(p) => running.stubs.push(p),
            Frame::MountStub(p) => {
                running.mount_stubs.push(p.clone());
                running.stubs.push(p);
            }
            f => failure = Some(f),
        }
    }
    if let Err(e) = read {
        failure.get_or_insert(Frame::Failed {
            step: format!("reading the sandbox's report ({e})"),
            path: None,
            errno: Errno::EIO,
        });
    }
    let Some(failure) = failure else {
        return Ok(running);
    };
    // The child exits right after reporting; reap it before undoing its stubs.
    let _ = running.wait();
    let _ = remove_stubs(&plan.rootfs, &running.stubs);
    running.stubs.clear();
    running.mount_stubs.clear();
    Err(error_from(failure, plan))
}

/// Fails early, with a hint, when the step's ids do not exist in our user namespace
/// (setuid would only say EINVAL). Returns whether setgroups is allowed.
fn check_ids(plan: &Plan) -> Result<bool, SandboxError> {
    let uids = userns::read_own_map("uid");
    let gids = userns::read_own_map("gid");
    if uids.is_empty() || userns::is_identity_map(&uids) {
        return Ok(true);
    }
    let full = userns::mapped_count(&uids) > 1 && userns::mapped_count(&gids) > 1;
    let check = |kind: &'static str, id: u32, map: &[MapLine]| {
        if userns::map_contains(map, id) {
            Ok(())
        } else {
            Err(SandboxError::UnmappedId {
                kind,
                id,
                mapped: userns::describe_map(map),
                hint: userns::unmapped_hint(full),
            })
        }
    };
    let p = &plan.process;
    check("uid", p.uid, &uids)?;
    check("gid", p.gid, &gids)?;
    for g in &p.groups {
        check("gid", *g, &gids)?;
    }
    let allowed = userns::setgroups_allowed();
    if !allowed && !p.groups.is_empty() {
        return Err(SandboxError::InvalidSpec {
            reason: format!(
                "supplementary groups {:?} need setgroups, which the single-id build \
                 namespace denies\nhint: {}",
                p.groups,
                userns::unmapped_hint(false)
            ),
        });
    }
    Ok(allowed)
}

fn open_stdio(io: RunIo) -> Result<[Option<OwnedFd>; 3], SandboxError> {
    let mut null: Option<OwnedFd> = None;
    let mut out: [Option<OwnedFd>; 3] = [None, None, None];
    for (i, s) in [io.stdin, io.stdout, io.stderr].into_iter().enumerate() {
        out[i] = match s {
            Stdio::Inherit => None,
            Stdio::Fd(fd) => Some(fd),
            Stdio::Null => {
                if null.is_none() {
                    let f = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open("/dev/null")
                        .map_err(|e| SandboxError::io("opening /dev/null", e))?;
                    null = Some(f.into());
                }
                let fd = null
                    .as_ref()
                    .map(|n| n.try_clone())
                    .transpose()
                    .map_err(|e| SandboxError::io("duplicating /dev/null", e))?;
                fd
            }
        };
    }
    Ok(out)
}

fn waiter_thread(
    setup: ChildSetup,
    report_w: OwnedFd,
    alive_r: OwnedFd,
    alive_w: OwnedFd,
    pid_tx: mpsc::SyncSender<Result<Pid, SandboxError>>,
    shared: Arc<Shared>,
) -> Result<ExitStatus, SandboxError> {
    // Only this thread's children land in the new pid namespace.
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        let err = SandboxError::Setup {
            step: "unshare(CLONE_NEWPID)".into(),
            path: None,
            errno: e,
            hint: Some(
                "kiln needs to be root, or to run inside its build user namespace \
                 (kiln_sandbox::userns::ensure_build_namespace)"
                    .into(),
            ),
        };
        let _ = pid_tx.send(Err(err));
        return Ok(ExitStatus::Exited(-1));
    }
    // SAFETY: fork in a multi-threaded process; the child never returns into this
    // function's caller (child_main ends in exec or _exit), touches no lock another thread
    // could hold except the allocator's, which the C library resets in the child (see the
    // module docs), and uses only data it owns.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(alive_w);
            apply::child_main(&setup, &report_w, alive_r)
        }
        Ok(ForkResult::Parent { child }) => {
            shared.pid.store(child.as_raw(), Ordering::SeqCst);
            drop(report_w);
            drop(alive_r);
            drop(setup);
            let _ = pid_tx.send(Ok(child));
            let status = reap(&shared, child);
            // Held until now: the child watches it to notice our death before PDEATHSIG.
            drop(alive_w);
            status
        }
        Err(e) => {
            let _ = pid_tx.send(Err(SandboxError::sys("fork", e)));
            Ok(ExitStatus::Exited(-1))
        }
    }
}

fn reap(shared: &Shared, child: Pid) -> Result<ExitStatus, SandboxError> {
    // Wait without reaping first, so the reap and the "reaped" flag change together under
    // the lock that killers take.
    loop {
        match waitid(Id::Pid(child), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => break,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(SandboxError::sys("waiting for the sandbox", e)),
        }
    }
    let mut reaped = shared.reaped.lock().unwrap_or_else(|e| e.into_inner());
    let st = loop {
        match waitpid(child, None) {
            Err(Errno::EINTR) => {}
            other => break other,
        }
    };
    *reaped = true;
    match st {
        Ok(WaitStatus::Exited(_, c)) => Ok(ExitStatus::Exited(c)),
        Ok(WaitStatus::Signaled(_, s, _)) => Ok(ExitStatus::Signaled(s as i32)),
        Ok(other) => Err(SandboxError::sys(
            format!("unexpected wait status {other:?}"),
            Errno::EINVAL,
        )),
        Err(e) => Err(SandboxError::sys("reaping the sandbox", e)),
    }
}

fn error_from(frame: Frame, plan: &Plan) -> SandboxError {
    match frame {
        Frame::ExecFailed { program, errno } => {
            let hint = match errno {
                Errno::ENOENT if program.contains('/') => Some(format!(
                    "{program} does not exist in the image (or is a script whose interpreter \
                     is missing)"
                )),
                Errno::ENOENT => Some(format!(
                    "{program} was not found in the PATH of the step ({})",
                    plan.process
                        .env
                        .iter()
                        .rev()
                        .find(|(k, _)| k == "PATH")
                        .map(|(_, v)| v.as_str())
                        .unwrap_or(DEFAULT_PATH)
                )),
                Errno::EACCES => Some(format!(
                    "{program} is not executable for uid {}",
                    plan.process.uid
                )),
                Errno::ENOEXEC => Some(format!(
                    "{program} is not a binary for this machine, nor a script with #!"
                )),
                _ => None,
            };
            SandboxError::Exec {
                program,
                errno,
                hint,
            }
        }
        Frame::Failed { step, path, errno } => {
            let hint = setup_hint(&step, errno);
            SandboxError::Setup {
                step,
                path,
                errno,
                hint,
            }
        }
        Frame::Stub(_) | Frame::MountStub(_) => SandboxError::sys("unexpected report", Errno::EIO),
    }
}

fn setup_hint(step: &str, errno: Errno) -> Option<String> {
    let rootless = !userns::is_identity_map(&userns::read_own_map("uid"));
    match errno {
        Errno::EPERM | Errno::EACCES if step.starts_with("mount") || step.starts_with("bind") => {
            Some(if rootless {
                "a user namespace may not make this mount; if the root filesystem belongs \
                 to another user, make sure kiln created it inside the build namespace"
                    .into()
            } else {
                "the mount was refused; is kiln confined by AppArmor/SELinux or seccomp?".into()
            })
        }
        Errno::EPERM | Errno::EACCES
            if step.starts_with("resolve") || step.contains("working directory") =>
        {
            Some(
                "the root filesystem is not writable by kiln (in rootless mode it must be \
                  owned by the calling user or its subordinate ids)"
                    .into(),
            )
        }
        Errno::ELOOP => Some("too many levels of symlinks in the image".into()),
        Errno::ENOTDIR | Errno::EISDIR => Some(
            "a file in the image is where a directory is needed (or the other way round)".into(),
        ),
        _ => None,
    }
}

/// Removes the stubs a step's sandbox created (files still empty, directories still empty),
/// newest first. Walks with `RESOLVE_NO_SYMLINKS` inside `rootfs`, so a step that replaced
/// a parent directory with a symlink cannot make kiln delete anything outside the root.
/// Returns the stubs left in place because the step put something there.
pub fn remove_stubs(rootfs: &Path, stubs: &[PathBuf]) -> Result<Vec<PathBuf>, SandboxError> {
    let root = resolve::open_root(rootfs)
        .map_err(|e| SandboxError::sys(format!("opening {}", rootfs.display()), e))?;
    let mut kept = Vec::new();
    for stub in stubs.iter().rev() {
        let (parent, name) = match (stub.parent(), stub.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => continue,
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let parent_path = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let dir = match openat2(root.as_fd(), parent_path, how) {
            Ok(d) => d,
            Err(Errno::ENOENT) => continue,
            Err(Errno::ELOOP) | Err(Errno::EXDEV) | Err(Errno::ENOTDIR) => {
                kept.push(stub.clone());
                continue;
            }
            Err(errno) => {
                return Err(SandboxError::RemoveStub {
                    path: stub.clone(),
                    errno,
                })
            }
        };
        let st = match fstatat(&dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(errno) => {
                return Err(SandboxError::RemoveStub {
                    path: stub.clone(),
                    errno,
                })
            }
        };
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let res = if kind == SFlag::S_IFDIR {
            unlinkat(&dir, name, UnlinkatFlags::RemoveDir)
        } else if kind == SFlag::S_IFREG && st.st_size == 0 {
            unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir)
        } else {
            kept.push(stub.clone());
            continue;
        };
        match res {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::ENOTEMPTY) | Err(Errno::EEXIST) => kept.push(stub.clone()),
            Err(errno) => {
                return Err(SandboxError::RemoveStub {
                    path: stub.clone(),
                    errno,
                })
            }
        }
    }
    Ok(kept)
}
