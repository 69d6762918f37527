//! The child half of a RUN step: runs in the freshly forked process (PID 1 of the new pid
//! namespace), applies the plan with system calls and execs the command. It never returns:
//! it either execs or reports what failed through the report pipe and exits.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{
    chdir, execve, fchdir, fchownat, pivot_root, setgroups, sethostname, setresgid, setresuid,
    setsid, Gid, Uid,
};

use super::plan::{Create, MountOp, Plan, Target};
use super::report::Frame;
use super::resolve::{open_root, resolve_in_root, Want};
use crate::sys;

/// Everything the child needs, prepared by the parent before the fork.
pub(crate) struct ChildSetup {
    pub plan: Plan,
    /// Descriptors to become 0, 1, 2 (None = keep what the process has).
    pub stdio: [Option<OwnedFd>; 3],
    /// Whether setgroups(2) may be called (denied in the single-id namespace).
    pub setgroups_allowed: bool,
}

/// A failed step, before it is sent to the parent.
struct Failure {
    step: String,
    path: Option<String>,
    errno: Errno,
}

fn fail(step: impl Into<String>, path: Option<&str>) -> impl FnOnce(Errno) -> Failure {
    let step = step.into();
    let path = path.map(str::to_string);
    move |errno| Failure { step, path, errno }
}

/// The report pipe (write end).
struct Reporter<'a>(BorrowedFd<'a>);

impl Reporter<'_> {
    fn send(&self, frame: &Frame) {
        let bytes = frame.encode();
        let mut buf = &bytes[..];
        while !buf.is_empty() {
            match nix::unistd::write(self.0, buf) {
                Ok(n) => buf = &buf[n..],
                Err(Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }
}

/// Entry point in the child. `report` is close-on-exec; `alive` is the read end of a pipe
/// whose write end only the parent thread holds.
pub(crate) fn child_main(setup: &ChildSetup, report: &OwnedFd, alive: OwnedFd) -> ! {
    let reporter = Reporter(report.as_fd());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        prepare_process(setup, report, alive)
            .and_then(|()| build_container(setup, &reporter))
            .and_then(|()| become_user(setup))
            .map(|()| exec(setup, &reporter))
    }));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(f)) => reporter.send(&Frame::Failed {
            step: f.step,
            path: f.path,
            errno: f.errno,
        }),
        Err(_) => reporter.send(&Frame::Failed {
            step: "sandbox setup (internal error: panic)".into(),
            path: None,
            errno: Errno::EIO,
        }),
    }
    crate::userns::exit_now(127)
}

/// Session, parent-death signal, stdio and descriptors: the process-level setup.
fn prepare_process(setup: &ChildSetup, report: &OwnedFd, alive: OwnedFd) -> Result<(), Failure> {
    // Our own session: a terminal's ^C goes to kiln, which decides; the step never gets a
    // controlling terminal (as under BuildKit).
    let _ = setsid();
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(fail("set the parent-death signal", None))?;
    // The parent may have died before the line above: then the pipe has no writer left.
    let mut fds = [PollFd::new(alive.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::ZERO).is_ok()
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
    {
        crate::userns::exit_now(1);
    }
    // Closed here, not by close_fds_from below: an OwnedFd dropped after its number was
    // closed behind its back would abort.
    drop(alive);
    umask(Mode::from_bits_truncate(0o022));
    for (i, fd) in setup.stdio.iter().enumerate() {
        if let Some(fd) = fd {
            let r = match i {
                0 => nix::unistd::dup2_stdin(fd),
                1 => nix::unistd::dup2_stdout(fd),
                _ => nix::unistd::dup2_stderr(fd),
            };
            r.map_err(fail(format!("set up fd {i}"), None))?;
        }
    }
    // Nothing of kiln's may reach the step: a leaked descriptor of a host directory is
    // how a WORKDIR of /proc/self/fd/N escaped runc (CVE-2024-21626). Only the report pipe
    // stays, and it closes on exec.
    sys::close_fds_from(3, report.as_raw_fd())
        .map_err(fail("close inherited descriptors", None))?;
    Ok(())
}

/// Namespaces, mounts, pivot_root, hostname, network.
fn build_container(setup: &ChildSetup, reporter: &Reporter<'_>) -> Result<(), Failure> {
    let plan = &setup.plan;
    // The pid namespace was entered by the fork itself.
    unshare(plan.namespaces - CloneFlags::CLONE_NEWPID)
        .map_err(fail("unshare namespaces", None))?;
    let mut root: Option<OwnedFd> = None;
    for op in &plan.mounts {
        apply_op(op, &mut root, plan, reporter)?;
    }
    if !plan.hostname.is_empty() {
        sethostname(&plan.hostname).map_err(fail("sethostname", None))?;
    }
    if plan.loopback_up {
        sys::loopback_up().map_err(fail("bring up lo", None))?;
    }
    Ok(())
}

fn root_of<'a>(root: &'a Option<OwnedFd>, path: &str) -> Result<BorrowedFd<'a>, Failure> {
    root.as_ref().map(|r| r.as_fd()).ok_or_else(|| {
        fail("mount before the root filesystem was bound", Some(path))(Errno::EINVAL)
    })
}

/// Resolves a target in the root, reporting stubs. `Ok(None)` for a missing optional one.
fn target_fd(
    root: BorrowedFd<'_>,
    target: &Target,
    create: Create,
    reporter: &Reporter<'_>,
) -> Result<Option<OwnedFd>, Failure> {
    let want = match create {
        Create::No => Want::Existing,
        Create::Dir => Want::Dir,
        Create::File => Want::File,
        // Decided by the caller from the source.
        Create::LikeSource => Want::Existing,
    };
    let mut on_create = |_: BorrowedFd<'_>, _: &OsStr, rel: &PathBuf| {
        if target.stub {
            reporter.send(&if target.extra {
                Frame::MountStub(rel.clone())
            } else {
                Frame::Stub(rel.clone())
            });
        }
        Ok(())
    };
    match resolve_in_root(root, &target.path, want, &mut on_create) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) if target.optional => Ok(None),
        Err(e) => Err(fail("resolve mount target", Some(&target.path))(e)),
    }
}

/// The descriptor of the mount now on `target` (resolving again crosses into it).
fn mounted_fd(root: BorrowedFd<'_>, target: &Target) -> Result<OwnedFd, Failure> {
    resolve_in_root(root, &target.path, Want::Existing, &mut |_, _, _| Ok(()))
        .map_err(fail("find the new mount", Some(&target.path)))
}

fn apply_op(
    op: &MountOp,
    root: &mut Option<OwnedFd>,
    plan: &Plan,
    reporter: &Reporter<'_>,
) -> Result<(), Failure> {
    let none = None::<&str>;
    match op {
        MountOp::MakeRootPrivate => {
            mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
                .map_err(fail("make / private", Some("/")))?;
        }
        MountOp::BindRootfs { rootfs } => {
            mount(
                Some(rootfs.as_path()),
                rootfs.as_path(),
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            )
            .map_err(fail(
                "bind the root filesystem onto itself",
                rootfs.to_str(),
            ))?;
            *root =
                Some(open_root(rootfs).map_err(fail("open the root filesystem", rootfs.to_str()))?);
        }
        MountOp::Mount {
            fstype,
            target,
            flags,
            data,
        } => {
            let root = root_of(root, &target.path)?;
            let Some(fd) = target_fd(root, target, target.create, reporter)? else {
                return Ok(());
            };
            let data = (!data.is_empty()).then_some(data.as_str());
            mount(
                Some(*fstype),
                sys::fd_path(fd.as_raw_fd()).as_str(),
                Some(*fstype),
                *flags,
                data,
            )
            .map_err(fail(format!("mount {fstype}"), Some(&target.path)))?;
        }
        MountOp::Bind {
            source,
            target,
            recursive,
            restrict,
        } => {
            let root = root_of(root, &target.path)?;
            let create = match target.create {
                Create::LikeSource => match std::fs::metadata(source) {
                    Ok(m) if m.is_dir() => Create::Dir,
                    Ok(_) => Create::File,
                    Err(e) => {
                        return Err(fail(
                            format!("stat bind source {}", source.display()),
                            Some(&target.path),
                        )(crate::userns::errno_from_io(&e)))
                    }
                },
                c => c,
            };
            let Some(fd) = target_fd(root, target, create, reporter)? else {
                return Ok(());
            };
            let mut flags = MsFlags::MS_BIND;
            if *recursive {
                flags |= MsFlags::MS_REC;
            }
            mount(
                Some(source.as_path()),
                sys::fd_path(fd.as_raw_fd()).as_str(),
                none,
                flags,
                none,
            )
            .map_err(fail(
                format!("bind {}", source.display()),
                Some(&target.path),
            ))?;
            if !restrict.is_empty() {
                let m = mounted_fd(root, target)?;
                sys::restrict_mount(m.as_fd(), *recursive, *restrict)
                    .map_err(fail("make the bind mount read-only", Some(&target.path)))?;
            }
        }
        MountOp::ReadOnly { target } => {
            let root = root_of(root, &target.path)?;
            let Some(fd) = target_fd(root, target, Create::No, reporter)? else {
                return Ok(());
            };
            let p = sys::fd_path(fd.as_raw_fd());
            mount(
                Some(p.as_str()),
                p.as_str(),
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            )
            .map_err(fail("bind onto itself", Some(&target.path)))?;
            let m = mounted_fd(root, target)?;
            sys::restrict_mount(m.as_fd(), true, MsFlags::MS_RDONLY)
                .map_err(fail("make read-only", Some(&target.path)))?;
        }
        MountOp::Mask { target } => {
            let root = root_of(root, &target.path)?;
            let Some(fd) = target_fd(root, target, Create::No, reporter)? else {
                return Ok(());
            };
            let p = sys::fd_path(fd.as_raw_fd());
            let is_dir = nix::sys::stat::fstat(&fd)
                .map(|st| {
                    nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
                        .contains(nix::sys::stat::SFlag::S_IFDIR)
                })
                .unwrap_or(false);
            if is_dir {
                mount(
                    Some("tmpfs"),
                    p.as_str(),
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    Some("size=0k"),
                )
            } else {
                mount(Some("/dev/null"), p.as_str(), none, MsFlags::MS_BIND, none)
            }
            .map_err(fail("mask", Some(&target.path)))?;
        }
        MountOp::Symlink { link, points_to } => {
            let root = root_of(root, link)?;
            let (parent, name) = split_parent(link);
            let dir = resolve_in_root(root, parent, Want::Existing, &mut |_, _, _| Ok(()))
                .map_err(fail("find the symlink's directory", Some(link)))?;
            match nix::unistd::symlinkat(points_to.as_str(), dir.as_fd(), name) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(fail("create symlink", Some(link))(e)),
            }
        }
        MountOp::PivotRoot => {
            let fd = root.take().ok_or_else(|| {
                fail("pivot_root before the root filesystem was bound", None)(Errno::EINVAL)
            })?;
            fchdir(&fd).map_err(fail("enter the root filesystem", plan.rootfs.to_str()))?;
            // With new_root == put_old the old root ends up stacked on the new one and is
            // detached right away: no directory for it is needed inside the image.
            pivot_root(".", ".").map_err(fail("pivot_root", None))?;
            umount2(".", MntFlags::MNT_DETACH).map_err(fail("detach the old root", None))?;
            chdir("/").map_err(fail("chdir /", None))?;
        }
    }
    Ok(())
}

fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("/", path),
    }
}

/// Capabilities, working directory, groups and ids, signals.
fn become_user(setup: &ChildSetup) -> Result<(), Failure> {
    let p = &setup.plan.process;
    let keep: Vec<u32> = p.capabilities.iter().map(|c| c.number).collect();
    sys::drop_bounding_set_except(&keep).map_err(fail("drop capabilities", None))?;
    sys::clear_ambient().map_err(fail("clear ambient capabilities", None))?;
    sys::clear_inheritable().map_err(fail("clear inheritable capabilities", None))?;

    // Resolved only now, inside the new root, by the same walk as the mount targets: a
    // symlink to /proc/self/fd/N is text here, and the descriptors are closed anyway.
    let root = open_root(Path::new("/")).map_err(fail("open /", None))?;
    let (uid, gid) = (p.uid, p.gid);
    let mut chown_new = |dir: BorrowedFd<'_>, name: &OsStr, _: &PathBuf| {
        fchownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    };
    let cwd = resolve_in_root(root.as_fd(), &p.cwd, Want::Dir, &mut chown_new)
        .map_err(fail("create or open the working directory", Some(&p.cwd)))?;
    // A symlink can still lead into our own /proc (e.g. /proc/1/fd): not a place to run
    // a step from.
    if nix::sys::statfs::fstatfs(&cwd)
        .map(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
        .unwrap_or(false)
    {
        return Err(fail("working directory resolves into /proc", Some(&p.cwd))(
            Errno::EXDEV,
        ));
    }
    fchdir(&cwd).map_err(fail("enter the working directory", Some(&p.cwd)))?;
    // Belt and braces: the kernel reports a directory outside our root as unreachable.
    match nix::unistd::getcwd() {
        Ok(d) if d.as_os_str().as_bytes().first() == Some(&b'/') => {}
        _ => {
            return Err(fail(
                "working directory is outside the container",
                Some(&p.cwd),
            )(Errno::EXDEV))
        }
    }

    if setup.setgroups_allowed {
        let groups: Vec<Gid> = p.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        setgroups(&groups).map_err(fail("setgroups", None))?;
    }
    let g = Gid::from_raw(gid);
    setresgid(g, g, g).map_err(fail(format!("setgid {gid}"), None))?;
    let u = Uid::from_raw(uid);
    setresuid(u, u, u).map_err(fail(format!("setuid {uid}"), None))?;
    // Changing ids clears the parent-death signal; the step's PID 1 must keep it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(fail("set the parent-death signal", None))?;

    // Ignored signals survive exec (kiln's Rust runtime ignores SIGPIPE), and so does the
    // mask: give the step the defaults a shell expects.
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        // SAFETY: installing SIG_DFL involves no handler code, so no signal-safety rules
        // apply to it.
        let _ = unsafe { sigaction(sig, &dfl) };
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    Ok(())
}

/// execve with a PATH search like execvpe's, using the step's own PATH. Returns only on
/// failure, after reporting it.
fn exec(setup: &ChildSetup, reporter: &Reporter<'_>) {
    let p = &setup.plan.process;
    let Some(program) = p.argv.first() else {
        reporter.send(&Frame::ExecFailed {
            program: String::new(),
            errno: Errno::ENOENT,
        });
        return;
    };
    let to_c = |s: &str| CString::new(s).unwrap_or_default();
    let argv: Vec<CString> = p.argv.iter().map(|a| to_c(a)).collect();
    let envp: Vec<CString> = p
        .env
        .iter()
        .map(|(k, v)| to_c(&format!("{k}={v}")))
        .collect();
    let candidates: Vec<String> = if program.contains('/') {
        vec![program.clone()]
    } else {
        let path = p
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or(super::plan::DEFAULT_PATH);
        path.split(':')
            .map(|d| if d.is_empty() { "." } else { d })
            .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
            .collect()
    };
    let mut worst = Errno::ENOENT;
    for c in &candidates {
        let Ok(path) = CString::new(c.as_str()) else {
            continue;
        };
        let Err(e) = execve(&path, &argv, &envp);
        match e {
            Errno::ENOENT | Errno::ENOTDIR => {}
            // Remember "found but not executable" over "not found", as execvp does.
            Errno::EACCES => worst = Errno::EACCES,
            other => {
                worst = other;
                break;
            }
        }
    }
    reporter.send(&Frame::ExecFailed {
        program: program.clone(),
        errno: worst,
    });
}
