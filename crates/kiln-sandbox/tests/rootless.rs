//! The build namespace end to end as unprivileged users, through the kiln-sandbox-probe
//! binary (it calls ensure_build_namespace and then runs one sandboxed command). Needs root
//! to switch users with setpriv and to create `kilntest2`; skips without it (fails under
//! KILN_TEST_REQUIRE_ALL=1).

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn probe_as(user: &TestUser, fs: &Rootfs, extra: &[&str], cmd: &[&str]) -> (i32, String, String) {
    let mut c = user.command(probe());
    c.arg("--rootfs")
        .arg(fs.path())
        .args(extra)
        .arg("--")
        .args(cmd);
    let out = c.output().unwrap();
    let (o, e) = text(&out);
    (out.status.code().unwrap_or(-1), o, e)
}

fn rootfs_for(user: &TestUser) -> Option<Rootfs> {
    let fs = Rootfs::new()?;
    // Inside the namespace the caller's uid is root: the image must belong to it.
    fs.chown_to(user.uid, user.gid);
    Some(fs)
}

#[test]
fn kilntest_is_root_inside_with_the_full_subuid_map() {
    let Some(user) = kilntest() else { return };
    let Some(fs) = rootfs_for(&user) else { return };
    let (code, out, err) = probe_as(
        &user,
        &fs,
        &["--resolv", "/etc/resolv.conf"],
        &[
            "/bin/sh",
            "-c",
            "id; cat /proc/self/uid_map /proc/self/gid_map; touch /tmp/f && chown 1234:1234 /tmp/f && stat -c %u:%g /tmp/f; /bin/busybox ps",
        ],
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("probe: mode=rootless full_map=true"), "{err}");
    assert!(!err.contains("warning"), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "uid=0(root) gid=0(root)");
    let map = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let sub = std::fs::read_to_string("/etc/subuid").unwrap();
    let range: Vec<&str> = sub
        .lines()
        .find(|l| l.starts_with("kilntest:"))
        .unwrap()
        .split(':')
        .collect();
    assert_eq!(map(lines[1]), ["0", &user.uid.to_string(), "1"]);
    assert_eq!(map(lines[2]), ["1", range[1], range[2]]);
    assert_eq!(map(lines[3]), ["0", &user.gid.to_string(), "1"]);
    assert_eq!(lines[5], "1234:1234");
    assert!(lines[7].trim_start().starts_with("1 root"), "{out}");
    // On the host the file belongs to the subordinate id 1234 maps to.
    let host_uid = range[1].parse::<u32>().unwrap() + 1233;
    let meta =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(fs.path().join("tmp/f")).unwrap());
    assert_eq!(meta, host_uid);
    // The stubs were removed by the probe.
    for d in ["proc", "dev", "sys", "etc/resolv.conf"] {
        assert!(!fs.path().join(d).exists(), "{d} left behind");
    }
}

#[test]
fn kilntest_runs_steps_as_other_users() {
    let Some(user) = kilntest() else { return };
    let Some(fs) = rootfs_for(&user) else { return };
    let (code, out, err) = probe_as(
        &user,
        &fs,
        &[
            "--user",
            "65534:65534",
            "--cwd",
            "/work/app",
            "--network",
            "none",
        ],
        &[
            "/bin/sh",
            "-c",
            "id -u; id -g; pwd; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; exit 7",
        ],
    );
    assert_eq!(code, 7, "{err}");
    assert_eq!(out, "65534\n65534\n/work/app\nlo\n", "{err}");
}

#[test]
fn user_without_subordinate_ids_gets_the_single_id_warning() {
    let Some(user) = kilntest2() else { return };
    let Some(fs) = rootfs_for(&user) else { return };
    let (code, out, err) = probe_as(
        &user,
        &fs,
        &[],
        &["/bin/sh", "-c", "echo plain; cat /proc/self/uid_map"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("plain\n"), "{out}");
    assert_eq!(
        out.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", &user.uid.to_string(), "1"]
    );
    assert!(err.contains("probe: mode=rootless full_map=false"), "{err}");
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("probe: warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{err}");
    for needle in [
        "kilntest2 has no subordinate id range in /etc/subuid and /etc/subgid",
        "chown",
        "_apt",
        "sudo usermod --add-subuids ",
        " kilntest2` (or add `kilntest2:",
    ] {
        assert!(
            warnings[0].contains(needle),
            "missing {needle:?} in {}",
            warnings[0]
        );
    }

    // The suggested range does not overlap what /etc/subuid already hands out.
    let start: u64 = warnings[0]
        .split("--add-subuids ")
        .nth(1)
        .and_then(|r| r.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    for line in std::fs::read_to_string("/etc/subuid").unwrap().lines() {
        let f: Vec<u64> = line
            .split(':')
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [s, c] = f[..] {
            assert!(
                start >= s + c || start + 65_536 <= s,
                "{start} overlaps {line}"
            );
        }
    }

    // And a step as another user says why it cannot work.
    let (code, _, err) = probe_as(&user, &fs, &["--user", "65534"], &["id"]);
    assert_eq!(code, 125);
    assert!(
        err.contains("uid 65534 does not exist in the build user namespace"),
        "{err}"
    );
    assert!(err.contains("usermod --add-subuids"), "{err}");
}

/// `user.max_user_namespaces` is set to 0 inside a throwaway user namespace made by root
/// (the limit is per namespace and applies to everything created below it), so the rest of
/// the machine never sees the change and nothing needs restoring. On this kind of VM root
/// even lacks CAP_SYS_RESOURCE, so the host-wide sysctl could not be changed at all.
#[test]
fn disabled_user_namespaces_give_the_documented_error() {
    let Some(user) = kilntest() else { return };
    if !require_tool("unshare") {
        return;
    }
    let gate = tempfile::tempdir().unwrap();
    let go = gate.path().join("go");
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.01; done; \
         exec sh -c 'echo 0 > /proc/sys/user/max_user_namespaces && \
         exec setpriv --reuid={uid} --regid={gid} --clear-groups --reset-env -- {probe} --rootfs / -- true'",
        go = go.display(),
        uid = user.uid,
        gid = user.gid,
        probe = probe(),
    );
    let child = Command::new(which("unshare").unwrap())
        .args(["--user", "sh", "-c", &script])
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let pid = child.0.id();
    // Map ids 0..65536 one to one; root may write any map for a child namespace.
    assert!(wait_until(5, || {
        std::fs::read_link(format!("/proc/{pid}/ns/user")).ok()
            != std::fs::read_link("/proc/self/ns/user").ok()
    }));
    std::fs::write(format!("/proc/{pid}/uid_map"), "0 0 65536\n").unwrap();
    std::fs::write(format!("/proc/{pid}/gid_map"), "0 0 65536\n").unwrap();
    std::fs::write(&go, "").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "probe hung");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(125), "{err}");
    assert!(
        err.contains("unprivileged user namespaces are disabled on this machine (user.max_user_namespaces = 0)"),
        "{err}"
    );
    assert!(
        err.contains("sudo sysctl -w user.max_user_namespaces=15000"),
        "{err}"
    );
    // The host's own value is untouched.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .unwrap()
            .trim(),
        "0"
    );
}

#[test]
fn sigint_to_the_waiter_reaches_the_build_and_kills_the_sandbox() {
    let Some(user) = kilntest() else { return };
    let Some(fs) = rootfs_for(&user) else { return };
    let t = unique_token(8);
    let mut c = user.command(probe());
    c.arg("--rootfs")
        .arg(fs.path())
        .args(["--", "/bin/sh", "-c", &format!("sleep {t} & sleep {t}")])
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(c.spawn().unwrap());
    assert!(
        wait_until(5, || pids_with(&format!("sleep {t}")).len() == 2),
        "sleeps did not start"
    );
    // setpriv exec'd the probe: this pid is the waiter outside the namespace.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let st = child.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(st.code(), Some(130), "{err}");
    assert!(pids_with(&format!("sleep {t}")).is_empty());
    let mine = format!("{} --rootfs {}", probe(), fs.path().display());
    assert!(pids_with(&mine).is_empty(), "a probe process is left");
}

#[test]
fn killing_the_waiter_takes_everything_down() {
    let Some(user) = kilntest() else { return };
    let Some(fs) = rootfs_for(&user) else { return };
    let t = unique_token(9);
    let mut c = user.command(probe());
    c.arg("--rootfs")
        .arg(fs.path())
        .args(["--", "sleep", &t])
        .stderr(Stdio::null());
    let mut child = KillOnDrop(c.spawn().unwrap());
    assert!(wait_until(5, || !pids_with(&format!("sleep {t}")).is_empty()));
    // SIGKILL the outer waiter: the re-executed kiln dies of its parent-death signal, and
    // the sandbox of its own.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let mine = format!("{} --rootfs {}", probe(), fs.path().display());
    assert!(
        wait_until(5, || pids_with(&format!("sleep {t}")).is_empty()
            && pids_with(&mine).is_empty()),
        "left: sleeps {:?}, probes {:?}",
        pids_with(&format!("sleep {t}")),
        pids_with(&mine)
    );
}

#[test]
fn kilntest_setuid_binaries_work_inside() {
    let Some(user) = kilntest() else { return };
    let Some(fs) = Rootfs::new() else { return };
    make_su_work(&fs);
    fs.chown_to(user.uid, user.gid);
    // chown clears the setuid bit; set it again on the now user-owned binary.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        fs.path().join("bin/busybox"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let (code, out, err) = probe_as(
        &user,
        &fs,
        &["--user", "65534:65534"],
        &["su", "-c", "id -u", "root"],
    );
    assert_eq!((code, out.as_str()), (0, "0\n"), "{err}");
}
