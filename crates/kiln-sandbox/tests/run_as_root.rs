//! RUN sandbox end to end as real root (no user namespace): every test here needs root and
//! skips without it (fails under KILN_TEST_REQUIRE_ALL=1).

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, MetadataExt};
use std::process::Command;

use kiln_sandbox::run::{self, BindMount, ExitStatus, Network, RunIo, Stdio};
use kiln_sandbox::SandboxError;
use support::*;

fn setup() -> Option<Rootfs> {
    if !require_root() {
        return None;
    }
    Rootfs::new()
}

#[test]
fn echo_and_id_run_as_root_with_stubs_reported_and_removable() {
    let Some(fs) = setup() else { return };
    let mut spec = fs.spec(&["/bin/sh", "-c", "echo hi; id"]);
    spec.resolv_conf = Some("/etc/resolv.conf".into());
    let out = capture(&spec).unwrap();
    assert!(out.status.success(), "{:?} {}", out.status, out.stderr);
    assert_eq!(out.stdout, "hi\nuid=0(root) gid=0(root)\n");
    // The image had no /proc, /dev, /sys or /etc/resolv.conf: each is a stub to undo.
    let stubs: Vec<String> = out.stubs.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(stubs, ["proc", "dev", "sys", "etc/resolv.conf"]);
    for s in &out.stubs {
        assert!(
            fs.path().join(s).symlink_metadata().is_ok(),
            "{s:?} missing"
        );
    }
    let kept = run::remove_stubs(&fs.path(), &out.stubs).unwrap();
    assert!(kept.is_empty(), "{kept:?}");
    for s in &out.stubs {
        assert!(
            fs.path().join(s).symlink_metadata().is_err(),
            "{s:?} left behind"
        );
    }
    assert!(
        fs.path().join("etc/passwd").is_file(),
        "remove_stubs touched real files"
    );
    assert_no_mounts_under(&fs.path());
}

#[test]
fn exit_code_propagates() {
    let Some(fs) = setup() else { return };
    let out = capture(&fs.spec(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])).unwrap();
    assert_eq!(out.status, ExitStatus::Exited(3));
    assert_eq!(out.status.code(), 3);
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
}

#[test]
fn hostname_is_set() {
    let Some(fs) = setup() else { return };
    let out = capture(&fs.spec(&["hostname"])).unwrap();
    assert_eq!(out.stdout.trim(), "kiln-test");
}

#[test]
fn command_is_pid_1() {
    let Some(fs) = setup() else { return };
    let out = capture(&fs.spec(&["/bin/busybox", "ps"])).unwrap();
    let pid1 = out
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .unwrap_or_else(|| panic!("no PID 1 in\n{}", out.stdout));
    assert!(pid1.ends_with("/bin/busybox ps"), "{pid1}");
    // Nothing of the host is visible: only PID 1 itself.
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
}

#[test]
fn resolv_conf_is_the_hosts_and_read_only() {
    let Some(fs) = setup() else { return };
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap();
    let mut spec = fs.spec(&[
        "/bin/sh",
        "-c",
        "cat /etc/resolv.conf; echo x >> /etc/resolv.conf && echo WROTE",
    ]);
    spec.resolv_conf = Some("/etc/resolv.conf".into());
    let out = capture(&spec).unwrap();
    assert_eq!(out.stdout, host, "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("Read-only file system"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string("/etc/resolv.conf").unwrap(), host);
}

#[test]
fn hosts_file_is_bound() {
    let Some(fs) = setup() else { return };
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost kiln-test\n").unwrap();
    let mut spec = fs.spec(&["cat", "/etc/hosts"]);
    spec.hosts_file = Some(hosts);
    assert_eq!(
        capture(&spec).unwrap().stdout,
        "127.0.0.1 localhost kiln-test\n"
    );
}

#[test]
fn network_none_has_only_lo_and_it_is_up() {
    let Some(fs) = setup() else { return };
    let mut spec = fs.spec(&[
        "/bin/sh",
        "-c",
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; ls /sys/class/net; cat /sys/class/net/lo/flags",
    ]);
    spec.network = Network::None;
    let out = capture(&spec).unwrap();
    // /proc/net/dev, then the fresh sysfs, then IFF_UP|IFF_LOOPBACK (0x9).
    assert_eq!(out.stdout, "lo\nlo\n0x9\n", "stderr: {}", out.stderr);
}

#[test]
fn host_network_sees_the_hosts_interfaces() {
    let Some(fs) = setup() else { return };
    let host: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_string()))
        .collect();
    let out = capture(&fs.spec(&["cat", "/proc/net/dev"])).unwrap();
    for i in host {
        assert!(
            out.stdout.contains(&format!("{i}:")),
            "{i} missing in {}",
            out.stdout
        );
    }
}

#[test]
fn sys_and_its_submounts_are_read_only() {
    let Some(fs) = setup() else { return };
    let out = capture(&fs.spec(&[
        "/bin/sh",
        "-c",
        "grep -E ' /sys[ /]' /proc/mounts; touch /sys/kernel/kiln 2>/dev/null && echo WROTE; true",
    ]))
    .unwrap();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines.iter().any(|l| l.split(' ').nth(1) == Some("/sys")),
        "{}",
        out.stdout
    );
    for l in &lines {
        let opts = l.split(' ').nth(3).unwrap_or("");
        assert!(opts.split(',').any(|o| o == "ro"), "not read-only: {l}");
        if l.split(' ').nth(1) == Some("/sys") {
            for o in ["nosuid", "nodev", "noexec"] {
                assert!(opts.contains(o), "{o} missing: {l}");
            }
        }
    }
    assert!(!out.stdout.contains("WROTE"));
}

#[test]
fn proc_masks_and_read_only_paths() {
    let Some(fs) = setup() else { return };
    let out = capture(&fs.spec(&[
        "/bin/sh",
        "-c",
        "grep -E ' /proc/(sys|keys|acpi) ' /proc/mounts; echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo WROTE; cat /proc/keys | wc -c",
    ]))
    .unwrap();
    assert!(out.stdout.contains(" /proc/sys proc ro,"), "{}", out.stdout);
    assert!(!out.stdout.contains("WROTE"));
    // /proc/keys shows /dev/null's (empty) content.
    assert!(out.stdout.trim_end().ends_with('0'), "{}", out.stdout);
}

#[test]
fn docker_default_capabilities_and_no_no_new_privs() {
    let Some(fs) = setup() else { return };
    let out = capture(&fs.spec(&[
        "grep",
        "-E",
        "^(CapBnd|CapEff|CapInh|NoNewPrivs)",
        "/proc/self/status",
    ]))
    .unwrap();
    assert!(
        out.stdout.contains("CapBnd:\t00000000a80425fb"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("CapEff:\t00000000a80425fb"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("CapInh:\t0000000000000000"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("NoNewPrivs:\t0"), "{}", out.stdout);
}

#[test]
fn user_65534_runs_as_65534_without_capabilities() {
    let Some(fs) = setup() else { return };
    let mut spec = fs.spec(&["/bin/sh", "-c", "id; grep CapEff /proc/self/status"]);
    spec.uid = 65534;
    spec.gid = 65534;
    spec.additional_gids = vec![65534];
    let out = capture(&spec).unwrap();
    assert_eq!(
        out.stdout,
        "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)\nCapEff:\t0000000000000000\n",
        "{}",
        out.stderr
    );
}

#[test]
fn missing_workdir_is_created_for_the_user() {
    let Some(fs) = setup() else { return };
    let mut spec = fs.spec(&["/bin/sh", "-c", "pwd; touch mine"]);
    spec.cwd = "/work/deep/dir".into();
    spec.uid = 65534;
    spec.gid = 65534;
    let out = capture(&spec).unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "/work/deep/dir\n");
    for d in ["work", "work/deep", "work/deep/dir", "work/deep/dir/mine"] {
        let m = std::fs::metadata(fs.path().join(d)).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{d}");
    }
    // The working directory is content, not a mount stub.
    assert!(!out.stubs.iter().any(|s| s.starts_with("work")));
}

#[test]
fn workdir_under_proc_is_refused() {
    let Some(fs) = setup() else { return };
    for cwd in ["/proc/self/fd/3", "/proc/1/cwd", "/x/../proc/self/root"] {
        let mut spec = fs.spec(&["ls"]);
        spec.cwd = cwd.into();
        match capture(&spec) {
            Err(SandboxError::InvalidSpec { reason }) => assert!(reason.contains("CVE-2024-21626")),
            Err(e) => panic!("{cwd}: unexpected error {e}"),
            Ok(o) => panic!("{cwd}: ran: {}", o.stdout),
        }
    }
}

#[test]
fn workdir_symlink_to_a_leaked_fd_cannot_see_host_files() {
    let Some(fs) = setup() else { return };
    // A host directory with a secret, held open without CLOEXEC (the runc bug leaked such
    // a descriptor), and an image whose WORKDIR is a symlink to /proc/self/fd/N.
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("HOST-SECRET"), "x").unwrap();
    let dir = nix::fcntl::open(
        host.path(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let n = dir.as_raw_fd();
    for (i, target) in [
        format!("/proc/self/fd/{n}"),
        format!("/proc/1/fd/{n}"),
        "/proc/self/cwd".into(),
    ]
    .iter()
    .enumerate()
    {
        let link = format!("escape{i}");
        symlink(target, fs.path().join(&link)).unwrap();
        let mut spec = fs.spec(&["/bin/sh", "-c", "pwd; ls -a; ls -a ..; ls /proc/self/fd"]);
        spec.cwd = format!("/{link}");
        match capture(&spec) {
            Ok(out) => assert!(
                !out.stdout.contains("HOST-SECRET") && !out.stderr.contains("HOST-SECRET"),
                "{target}: host directory reachable:\n{}",
                out.stdout
            ),
            Err(e) => eprintln!("{target}: refused: {e}"),
        }
    }
    drop(dir);
}

#[test]
fn extra_mounts_bind_read_write_and_read_only() {
    let Some(fs) = setup() else { return };
    let cache = tempfile::tempdir().unwrap();
    let secret = tempfile::tempdir().unwrap();
    std::fs::write(secret.path().join("token"), "s3cret").unwrap();
    let mut spec = fs.spec(&[
        "/bin/sh",
        "-c",
        "echo cached > /root/.cache/f; cat /run/secrets/token; echo x > /run/secrets/token 2>/dev/null && echo WROTE; \
         echo t > /scratch/t && grep -q ' /scratch tmpfs ' /proc/mounts || echo NO-TMPFS; true",
    ]);
    spec.extra_mounts = vec![
        BindMount {
            source: cache.path().into(),
            target: "/root/.cache".into(),
            readonly: false,
        }
        .into(),
        BindMount {
            source: secret.path().join("token"),
            target: "/run/secrets/token".into(),
            readonly: true,
        }
        .into(),
        run::TmpfsMount {
            target: "/scratch".into(),
            size: Some(1 << 20),
            readonly: false,
        }
        .into(),
    ];
    let out = capture(&spec).unwrap();
    assert_eq!(out.stdout, "s3cret", "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(cache.path().join("f")).unwrap(),
        "cached\n"
    );
    let stubs: Vec<String> = out.stubs.iter().map(|p| p.display().to_string()).collect();
    assert!(
        stubs.ends_with(&[
            "root/.cache".into(),
            "run".into(),
            "run/secrets".into(),
            "run/secrets/token".into(),
            "scratch".into()
        ]),
        "{stubs:?}"
    );
    let mount_stubs: Vec<String> = out
        .mount_stubs
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        mount_stubs,
        [
            "root/.cache",
            "run",
            "run/secrets",
            "run/secrets/token",
            "scratch"
        ],
        "only the extra mounts' stubs are reported apart"
    );
    assert!(
        !fs.path().join("scratch/t").exists(),
        "the tmpfs content stays in the tmpfs"
    );
    assert!(run::remove_stubs(&fs.path(), &out.stubs)
        .unwrap()
        .is_empty());
    assert!(!fs.path().join("run").exists());
}

#[test]
fn remove_stubs_keeps_stubs_with_content_and_never_follows_symlinks() {
    let Some(fs) = setup() else { return };
    let mut spec = fs.spec(&["true"]);
    spec.resolv_conf = Some("/etc/resolv.conf".into());
    let out = capture(&spec).unwrap();
    // After the step: the stub got content, and /etc was swapped for a symlink out.
    std::fs::write(fs.path().join("etc/resolv.conf"), "nameserver 1.1.1.1\n").unwrap();
    std::fs::write(fs.path().join("proc/leftover"), "x").unwrap();
    let kept = run::remove_stubs(&fs.path(), &out.stubs).unwrap();
    assert_eq!(
        kept,
        vec![std::path::PathBuf::from("etc/resolv.conf"), "proc".into()]
    );
    let victim = tempfile::tempdir().unwrap();
    std::fs::write(victim.path().join("resolv.conf"), "").unwrap();
    std::fs::rename(fs.path().join("etc"), fs.path().join("etc.real")).unwrap();
    symlink(victim.path(), fs.path().join("etc")).unwrap();
    let kept = run::remove_stubs(&fs.path(), &out.stubs).unwrap();
    assert!(kept.contains(&"etc/resolv.conf".into()));
    assert!(
        victim.path().join("resolv.conf").exists(),
        "deleted through a symlink"
    );
}

#[test]
fn exec_errors_name_the_program() {
    let Some(fs) = setup() else { return };
    let err = capture(&fs.spec(&["no-such-tool"]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no-such-tool") && err.contains("PATH"),
        "{err}"
    );
    let err = capture(&fs.spec(&["/etc/passwd"]))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("EACCES"), "{err}");
    // Nothing was left behind by the failed starts.
    for d in ["proc", "dev", "sys"] {
        assert!(
            !fs.path().join(d).exists(),
            "{d} stub left after a failed start"
        );
    }
}

#[test]
fn kill_from_outside_leaves_no_process() {
    let Some(fs) = setup() else { return };
    let (a, b) = (unique_token(1), unique_token(2));
    let mut spec = fs.spec(&[
        "/bin/sh",
        "-c",
        &format!("(sleep {a} &); sleep {b} & sleep {b}"),
    ]);
    spec.hostname = "kill-test".into();
    let mut step = run::start(&spec, RunIo::default()).unwrap();
    assert!(
        wait_until(5, || pids_with(&format!("sleep {a}")).len() == 1
            && pids_with(&format!("sleep {b}")).len() == 2),
        "sleeps did not start"
    );
    let killer = step.killer();
    std::thread::spawn(move || killer.kill().unwrap())
        .join()
        .unwrap();
    assert_eq!(step.wait().unwrap(), ExitStatus::Signaled(9));
    assert_eq!(step.wait().unwrap().code(), 137);
    // PID 1 is reaped only after the kernel killed the rest of its namespace.
    assert!(pids_with(&format!("sleep {a}")).is_empty());
    assert!(pids_with(&format!("sleep {b}")).is_empty());
    step.kill().unwrap();
    assert_no_mounts_under(&fs.path());
}

#[test]
fn background_processes_die_with_pid_1() {
    let Some(fs) = setup() else { return };
    let t = unique_token(3);
    let out = capture(&fs.spec(&["/bin/sh", "-c", &format!("sleep {t} & echo started")])).unwrap();
    assert_eq!(out.stdout, "started\n");
    assert!(pids_with(&format!("sleep {t}")).is_empty());
}

#[test]
fn dropping_the_handle_kills_the_step() {
    let Some(fs) = setup() else { return };
    let t = unique_token(4);
    let step = run::start(&fs.spec(&["sleep", &t]), RunIo::default()).unwrap();
    assert!(wait_until(5, || !pids_with(&format!("sleep {t}")).is_empty()));
    drop(step);
    assert!(pids_with(&format!("sleep {t}")).is_empty());
}

#[test]
fn stdout_can_be_a_file() {
    let Some(fs) = setup() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let f = std::fs::File::create(&path).unwrap();
    let io = RunIo {
        stdin: Stdio::Null,
        stdout: f.into(),
        stderr: Stdio::Null,
    };
    let mut step = run::start(&fs.spec(&["echo", "to a file"]), io).unwrap();
    assert!(step.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(path).unwrap(), "to a file\n");
}

#[test]
fn probe_crash_kills_the_sandbox() {
    if !require_root() {
        return;
    }
    let Some(fs) = Rootfs::new() else { return };
    let t = unique_token(5);
    let mut child = KillOnDrop(
        Command::new(probe())
            .args(["--rootfs", fs.path().to_str().unwrap(), "--", "sleep", &t])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(5, || !pids_with(&format!("sleep {t}")).is_empty()),
        "sleep did not start"
    );
    // SIGKILL: no cleanup code runs in kiln; the parent-death signal has to do it.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    assert!(
        wait_until(5, || pids_with(&format!("sleep {t}")).is_empty()),
        "sandbox survived its parent"
    );
}

#[test]
fn probe_sigint_kills_the_sandbox_and_exits_130() {
    if !require_root() {
        return;
    }
    let Some(fs) = Rootfs::new() else { return };
    let t = unique_token(6);
    let mut child = KillOnDrop(
        Command::new(probe())
            .args([
                "--rootfs",
                fs.path().to_str().unwrap(),
                "--",
                "/bin/sh",
                "-c",
                &format!("sleep {t} & sleep {t}"),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(5, || pids_with(&format!("sleep {t}")).len() == 2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let st = child.0.wait().unwrap();
    assert_eq!(st.code(), Some(130));
    assert!(pids_with(&format!("sleep {t}")).is_empty());
}

#[test]
fn setuid_binaries_work_because_no_new_privs_stays_off() {
    let Some(fs) = setup() else { return };
    make_su_work(&fs);
    let mut spec = fs.spec(&["su", "-c", "id -u", "root"]);
    spec.uid = 65534;
    spec.gid = 65534;
    let out = capture(&spec).unwrap();
    assert_eq!(out.stdout, "0\n", "{}", out.stderr);
}

/// Steps start from many threads at once (kiln builds stages concurrently): the fork in a
/// multi-threaded process must neither deadlock nor mix up reports.
#[test]
fn concurrent_steps_from_many_threads() {
    let Some(fs) = setup() else { return };
    let path = fs.path();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                for i in 0..15 {
                    let mut spec = kiln_sandbox::run::RunSpec::new(
                        &path,
                        vec![
                            "/bin/sh".into(),
                            "-c".into(),
                            format!("echo {t}-{i}; exit {i}"),
                        ],
                    );
                    spec.hostname = format!("t{t}");
                    let out = capture(&spec).unwrap();
                    assert_eq!(out.stdout, format!("{t}-{i}\n"));
                    assert_eq!(out.status.code(), i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_no_mounts_under(&path);
}
