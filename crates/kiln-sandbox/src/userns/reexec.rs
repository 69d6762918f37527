//! Re-executing kiln inside a new user + mount namespace, and the thin waiter that stays
//! behind.
//!
//! ```text
//! parent (uid 1001)                         child
//!   precheck sysctls, read subuid ranges
//!   fork ───────────────────────────────────► unshare(NEWUSER|NEWNS)
//!   ◄──────────────── ready pipe: errno (0 = ok)
//!   newuidmap/newgidmap PID ... (or single map)
//!   go pipe: 'G' + status ──────────────────► read 'G', keep the pipe open across exec
//!   wait, forwarding signals                  execve(/proc/self/exe, same argv, env + marker)
//!   exit(child's code)                        kiln again: ensure_build_namespace() reads the
//!                                             status from the pipe and returns Rootless
//! ```

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{fstat, SFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getgid, getuid, pipe2, read, write, ForkResult, Pid, User};

use super::check::{self, Fallback, UsernsSysctls};
use super::idmap::{self, SubIdRange};
use super::{IN_USERNS_ENV, STATUS_FD_ENV};
use crate::SandboxError;

/// What the parent learned while mapping ids, handed to the re-executed kiln.
#[derive(Debug, Default)]
pub(super) struct Status {
    /// Login name of the caller (or the uid as text), for the warning.
    pub user: String,
    /// Why only one id is mapped, if so.
    pub fallback: Option<Fallback>,
}

impl Status {
    fn encode(&self) -> String {
        let mut s = format!("user\t{}\n", self.user.replace(['\n', '\t'], " "));
        if let Some(f) = &self.fallback {
            s.push_str(&format!("fallback\t{}\n", f.encode()));
        }
        s
    }

    fn decode(text: &str) -> Status {
        let mut st = Status::default();
        for line in text.lines() {
            if let Some(u) = line.strip_prefix("user\t") {
                st.user = u.to_string();
            } else if let Some(f) = line.strip_prefix("fallback\t") {
                st.fallback = Fallback::decode(f);
            }
        }
        st
    }
}

/// Reads the status the waiter left in the pipe named by `_KILN_USERNS_STATUS_FD`, once.
pub(super) fn read_status() -> Status {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let fallback_user = || getuid().to_string();
    let value = std::env::var(STATUS_FD_ENV).ok();
    // Programs kiln starts must not take the number for a status pipe of their own: by
    // then it may name any descriptor. (Called once at startup, before other threads.)
    std::env::remove_var(STATUS_FD_ENV);
    let Some(fd) = value.and_then(|v| v.parse::<i32>().ok()) else {
        return Status {
            user: fallback_user(),
            fallback: None,
        };
    };
    if fd < 3 || TAKEN.swap(true, Ordering::SeqCst) {
        return Status {
            user: fallback_user(),
            fallback: None,
        };
    }
    // SAFETY: the number is only borrowed for the two checks below; if it is not open
    // they fail with EBADF and nothing else happens.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    // Only adopt the descriptor if it is what the waiter passed: an open pipe.
    let is_pipe = fcntl(borrowed, FcntlArg::F_GETFD).is_ok()
        && fstat(borrowed)
            .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO)
            .unwrap_or(false);
    if !is_pipe {
        return Status {
            user: fallback_user(),
            fallback: None,
        };
    }
    // SAFETY: the descriptor is open, is a pipe, was left to this process by the waiter
    // for exactly this purpose, and TAKEN makes sure it is adopted (and closed) only once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut text = Vec::new();
    let mut file = std::fs::File::from(owned);
    let _ = std::io::Read::read_to_end(&mut file, &mut text);
    let mut st = Status::decode(&String::from_utf8_lossy(&text));
    if st.user.is_empty() {
        st.user = fallback_user();
    }
    st
}

/// How the ids will be mapped, decided before forking.
struct MapPlan {
    uid: u32,
    gid: u32,
    uid_ranges: Vec<SubIdRange>,
    gid_ranges: Vec<SubIdRange>,
    newuidmap: Option<PathBuf>,
    newgidmap: Option<PathBuf>,
    /// Set when we already know the full map is impossible.
    fallback: Option<Fallback>,
}

impl MapPlan {
    fn decide(user: Option<&str>) -> MapPlan {
        let uid = getuid().as_raw();
        let gid = getgid().as_raw();
        let ranges = |file: &str| {
            std::fs::read_to_string(file)
                .map(|t| idmap::parse_subid_ranges(&t, user, uid))
                .unwrap_or_default()
        };
        let uid_ranges = ranges("/etc/subuid");
        let gid_ranges = ranges("/etc/subgid");
        let newuidmap = idmap::find_helper("newuidmap");
        let newgidmap = idmap::find_helper("newgidmap");
        let fallback = match (
            uid_ranges.is_empty(),
            gid_ranges.is_empty(),
            &newuidmap,
            &newgidmap,
        ) {
            (true, true, _, _) => Some(Fallback::NoRanges {
                files: "/etc/subuid and /etc/subgid",
            }),
            (true, false, _, _) => Some(Fallback::NoRanges {
                files: "/etc/subuid",
            }),
            (false, true, _, _) => Some(Fallback::NoRanges {
                files: "/etc/subgid",
            }),
            (_, _, None, None) => Some(Fallback::NoHelper {
                program: "newuidmap and newgidmap",
            }),
            (_, _, None, _) => Some(Fallback::NoHelper {
                program: "newuidmap",
            }),
            (_, _, _, None) => Some(Fallback::NoHelper {
                program: "newgidmap",
            }),
            _ => None,
        };
        MapPlan {
            uid,
            gid,
            uid_ranges,
            gid_ranges,
            newuidmap,
            newgidmap,
            fallback,
        }
    }

    /// Writes the child's maps. Returns why the map is single-id, if it is.
    fn apply(&self, pid: Pid) -> Result<Option<Fallback>, SandboxError> {
        let mut fallback = self.fallback.clone();
        let mut uid_full = false;
        let mut gid_full = false;
        if let (None, Some(nu), Some(ng)) = (&fallback, &self.newuidmap, &self.newgidmap) {
            match run_helper(
                nu,
                &idmap::helper_args(pid.as_raw(), self.uid, &self.uid_ranges),
            ) {
                Ok(()) => uid_full = true,
                Err(detail) => {
                    fallback = Some(Fallback::HelperFailed {
                        program: "newuidmap",
                        detail,
                    })
                }
            }
            if uid_full {
                match run_helper(
                    ng,
                    &idmap::helper_args(pid.as_raw(), self.gid, &self.gid_ranges),
                ) {
                    Ok(()) => gid_full = true,
                    Err(detail) => {
                        fallback = Some(Fallback::HelperFailed {
                            program: "newgidmap",
                            detail,
                        })
                    }
                }
            }
        }
        let proc = PathBuf::from(format!("/proc/{pid}"));
        if !uid_full {
            write_proc(
                &proc.join("uid_map"),
                &idmap::single_id_map(self.uid),
                "uid",
            )?;
        }
        if !gid_full {
            // An unprivileged writer may only map its own gid after giving up setgroups.
            write_proc(&proc.join("setgroups"), "deny", "gid")?;
            write_proc(
                &proc.join("gid_map"),
                &idmap::single_id_map(self.gid),
                "gid",
            )?;
        }
        Ok(fallback)
    }
}

fn run_helper(program: &Path, args: &[String]) -> Result<(), String> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(if err.is_empty() {
                format!("{} exited with {}", program.display(), out.status)
            } else {
                err
            })
        }
        Err(e) => Err(format!("cannot run {}: {e}", program.display())),
    }
}

fn write_proc(path: &Path, text: &str, which: &'static str) -> Result<(), SandboxError> {
    std::fs::write(path, text).map_err(|e| SandboxError::IdMap {
        which,
        detail: format!("writing {:?} to {}: {e}", text.trim(), path.display()),
        hint: "the kernel refused even the single-id map; check that user namespaces are \
               allowed (`unshare --user --map-root-user true`)"
            .into(),
    })
}

/// argv/envp for execve, built before fork so the child allocates nothing.
struct ExecImage {
    exe: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
}

impl ExecImage {
    fn prepare(status_fd: i32) -> Result<ExecImage, SandboxError> {
        let cstring = |s: OsString| {
            CString::new(s.as_bytes()).map_err(|_| SandboxError::InvalidSpec {
                reason: format!("argument or environment entry {s:?} holds a NUL byte"),
            })
        };
        let argv: Vec<CString> = std::env::args_os().map(cstring).collect::<Result<_, _>>()?;
        let mut envp = Vec::new();
        for (k, v) in std::env::vars_os() {
            if k == IN_USERNS_ENV || k == STATUS_FD_ENV {
                continue;
            }
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            envp.push(cstring(kv)?);
        }
        envp.push(cstring(format!("{IN_USERNS_ENV}=1").into())?);
        envp.push(cstring(format!("{STATUS_FD_ENV}={status_fd}").into())?);
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        Ok(ExecImage {
            exe: CString::from(c"/proc/self/exe"),
            argv_ptrs: ptrs(&argv),
            envp_ptrs: ptrs(&envp),
            _argv: argv,
            _envp: envp,
        })
    }
}

/// Signals the waiter passes on to the re-executed kiln.
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

pub(super) fn reexec_in_new_namespace() -> Result<Infallible, SandboxError> {
    let sysctls = UsernsSysctls::read();
    check::precheck(&sysctls)?;

    let user = User::from_uid(getuid()).ok().flatten().map(|u| u.name);
    let plan = MapPlan::decide(user.as_deref());

    let (ready_r, ready_w) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| SandboxError::sys("creating a pipe", e))?;
    let (go_r, go_w) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| SandboxError::sys("creating a pipe", e))?;
    let image = ExecImage::prepare(go_r.as_raw_fd())?;

    // Blocked before the fork so no SIGCHLD or forwarded signal can slip past the waiter.
    let mut waited = SigSet::empty();
    for s in FORWARDED {
        waited.add(s);
    }
    waited.add(Signal::SIGCHLD);
    let mut old_mask = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&waited), Some(&mut old_mask))
        .map_err(|e| SandboxError::sys("blocking signals", e))?;

    // SAFETY: between fork and execve the child only makes async-signal-safe calls (prctl,
    // unshare, read, write, fcntl, sigprocmask, execve, _exit) on memory prepared before
    // the fork, so a lock held by another thread at fork time cannot deadlock it.
    let child = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(ready_r);
            drop(go_w);
            child_side(&ready_w, &go_r, &image, &old_mask)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            return Err(SandboxError::sys("fork", e));
        }
    };
    drop(ready_w);
    drop(go_r);

    let setup = parent_setup(child, &ready_r, &plan, &sysctls).and_then(|fallback| {
        let status = Status {
            user: user.clone().unwrap_or_else(|| plan.uid.to_string()),
            fallback,
        };
        let mut msg = b"G".to_vec();
        msg.extend_from_slice(status.encode().as_bytes());
        write_all(&go_w, &msg).map_err(|e| SandboxError::sys("releasing the child", e))
    });
    if let Err(e) = setup {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
        return Err(e);
    }
    drop(go_w);
    let code = wait_forwarding(child, &waited);
    std::process::exit(code)
}

fn write_all(fd: &OwnedFd, mut buf: &[u8]) -> nix::Result<()> {
    while !buf.is_empty() {
        match write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits for the child's unshare result, then maps its ids.
fn parent_setup(
    child: Pid,
    ready_r: &OwnedFd,
    plan: &MapPlan,
    sysctls: &UsernsSysctls,
) -> Result<Option<Fallback>, SandboxError> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match read(ready_r, &mut buf[got..]) {
            Ok(0) => {
                return Err(SandboxError::UserNamespace {
                    step: "waiting for the namespace child",
                    errno: Errno::EPIPE,
                    hint: "the child exited before creating its namespace".into(),
                })
            }
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(SandboxError::sys("reading from the namespace child", e)),
        }
    }
    let errno = i32::from_ne_bytes(buf);
    if errno != 0 {
        return Err(check::diagnose_unshare(Errno::from_raw(errno), sysctls));
    }
    plan.apply(child)
}

/// The child between fork and exec. Never returns.
fn child_side(ready_w: &OwnedFd, go_r: &OwnedFd, image: &ExecImage, old_mask: &SigSet) -> ! {
    // The re-executed kiln must not outlive the waiter (a crash or SIGKILL of the waiter
    // would otherwise leave an orphaned build running).
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let code: i32 = match unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS) {
        Ok(()) => 0,
        Err(e) => e as i32,
    };
    let _ = write(ready_w, &code.to_ne_bytes());
    if code != 0 {
        exit_now(1);
    }
    let mut b = [0u8; 1];
    // EOF here means the waiter gave up (or died): do not run unmapped.
    loop {
        match read(go_r, &mut b) {
            Ok(1) if b[0] == b'G' => break,
            Err(Errno::EINTR) => {}
            _ => exit_now(1),
        }
    }
    // The rest of the pipe holds the status for the re-executed kiln.
    let _ = fcntl(go_r, FcntlArg::F_SETFD(FdFlag::empty()));
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None);
    // SAFETY: all three pointers come from CStrings and null-terminated pointer arrays
    // that live in `image` for the whole call.
    unsafe {
        libc::execve(
            image.exe.as_ptr(),
            image.argv_ptrs.as_ptr(),
            image.envp_ptrs.as_ptr(),
        );
    }
    let _ = write(
        std::io::stderr(),
        b"kiln: cannot re-execute /proc/self/exe inside the build namespace\n",
    );
    exit_now(127)
}

pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process without running atexit handlers or destructors, which
    // is what a forked child must do; it has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Waits for the child, passing on signals sent to us explicitly. Returns the exit code to
/// use: the child's, or 128 + the signal that killed it.
fn wait_forwarding(child: Pid, set: &SigSet) -> i32 {
    loop {
        let (signo, code) = match sigwaitinfo(set) {
            Ok(x) => x,
            Err(_) => continue,
        };
        if signo == libc::SIGCHLD {
            loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, c)) => return c,
                    Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
                    Ok(WaitStatus::StillAlive) => break,
                    Ok(_) => break,
                    Err(Errno::EINTR) => {}
                    Err(_) => return 1,
                }
            }
        } else if code != libc::SI_KERNEL {
            // A terminal's ^C (SI_KERNEL) already reached the child, which shares our
            // process group; only signals aimed at us alone (kill, timeout) are passed on,
            // so the child never sees one keypress twice.
            if let Ok(sig) = Signal::try_from(signo) {
                let _ = kill(child, sig);
            }
        }
    }
}

fn sigwaitinfo(set: &SigSet) -> Result<(i32, i32), Errno> {
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: `set` is a valid sigset_t and `info` points to writable memory of the right
    // size for the kernel to fill in.
    let r = unsafe { libc::sigwaitinfo(set.as_ref(), info.as_mut_ptr()) };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: sigwaitinfo succeeded, so the kernel filled the struct (it was zeroed anyway).
    let info = unsafe { info.assume_init() };
    Ok((r, info.si_code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip() {
        let st = Status {
            user: "kilntest2".into(),
            fallback: Some(Fallback::NoRanges {
                files: "/etc/subuid",
            }),
        };
        let back = Status::decode(&st.encode());
        assert_eq!(back.user, "kilntest2");
        assert_eq!(back.fallback, st.fallback);
        let full = Status::decode("user\tkilntest\n");
        assert!(full.fallback.is_none());
    }
}
