//! RUN steps: run rootless by an unprivileged user with subuid ranges (the product), run as
//! root, and compared file by file with what BuildKit builds from the same Dockerfile.

mod util;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::dockerd::Dockerd;
use util::tools::{assert_success, require_root};
use util::unpriv::unprivileged_user;
use util::{kiln_bin, run, TestDir};

/// Steps that exercise the differ: whiteouts into base layers, an opaque replaced directory,
/// renames, chmod/chown/touch only, symlinks, hard links, foreign owners, setuid.
const CHANGES: &str = "FROM genesis\n\
RUN mkdir -p /data/keep /data/replace /data/old && echo 1 > /data/keep/a && echo 2 > /data/replace/b \\\n\
 && echo 3 > /data/old/c && echo 4 > /data/chmod-me && echo 5 > /data/touch-me && echo 6 > /data/chown-me \\\n\
 && ln -s keep/a /data/link && ln /data/keep/a /data/hard && mkdir /data/home && chown 1000:1000 /data/home\n\
RUN rm /bin/vi && rm -rf /data/replace && mkdir /data/replace && echo new > /data/replace/x \\\n\
 && mv /data/old /data/renamed && chmod 0600 /data/chmod-me && touch -d '2001-01-01 00:00' /data/touch-me \\\n\
 && chown 1000:100 /data/chown-me && echo mine > /data/home/f && chown 1000:1000 /data/home/f \\\n\
 && cp /bin/busybox /data/suid && chmod 4755 /data/suid && su -s /bin/sh nobody -c 'id -u > /tmp/nobody-ran'\n\
RUN rm /data/link && ln -s /data/renamed/c /data/link && echo re > /data/keep/a && rm -f /tmp/nobody-ran\n\
CMD [\"sh\"]\n";

/// Builds genesis (busybox from scratch) into `store` and writes its tar to `dir/genesis.tar`.
fn genesis(dir: &Path, store: &Path, as_user: Option<&util::unpriv::UnprivUser>) -> bool {
    if !util::fixtures::busybox_context(&dir.join("genesis")) {
        return false;
    }
    let out = kiln(
        as_user,
        dir,
        store,
        &[
            "build",
            "-q",
            "-t",
            "genesis",
            "-o",
            "genesis.tar",
            "genesis",
        ],
    );
    assert!(out.0, "{}", out.2);
    true
}

/// Runs kiln as `user` (or as the test's own user).
fn kiln(
    user: Option<&util::unpriv::UnprivUser>,
    cwd: &Path,
    store: &Path,
    args: &[&str],
) -> (bool, String, String) {
    let mut cmd = match user {
        Some(u) => u.command(kiln_bin()),
        None => Command::new(kiln_bin()),
    };
    cmd.current_dir(cwd).arg("--root").arg(store).args(args);
    let (out, stdout, stderr) = run(&mut cmd);
    (out.status.success(), stdout, stderr)
}

#[test]
fn run_steps_give_the_same_files_as_buildkit() {
    if !require_root("dockerd for the BuildKit comparison") {
        return;
    }
    let dir = TestDir::new("vs-buildkit-run");
    let store = dir.path().join("store");
    if !genesis(dir.path(), &store, None) {
        return;
    }
    let ctx = dir.path().join("changes");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), CHANGES).unwrap();
    let t = Instant::now();
    let (ok, _, err) = kiln(
        None,
        dir.path(),
        &store,
        &[
            "build",
            "-t",
            "changes:kiln",
            "-o",
            "changes.tar",
            "changes",
        ],
    );
    assert!(ok, "{err}");
    println!("kiln build: {:.2}s", t.elapsed().as_secs_f64());
    let Some(d) = Dockerd::start() else { return };
    assert_success(
        &d.load(&dir.path().join("genesis.tar")),
        "docker load genesis",
    );
    let t = Instant::now();
    assert_success(
        &d.buildkit_build(
            &ctx,
            &ctx.join("Dockerfile"),
            "changes:bk",
            &["--network", "none"],
        ),
        "BuildKit build",
    );
    println!("BuildKit build: {:.2}s", t.elapsed().as_secs_f64());
    assert_success(
        &d.load(&dir.path().join("changes.tar")),
        "docker load kiln's image",
    );
    let paths = d.assert_same_tree("changes:bk", "changes:kiln", dir.path());
    println!("compared {paths} paths with BuildKit");
    assert!(
        paths > 250,
        "the busybox tree should be there ({paths} paths)"
    );
    let hist = d.docker_ok(&["history", "--format", "{{.CreatedBy}}", "changes:kiln"]);
    assert!(hist.contains("RUN rm /data/link"), "{hist}");
}

#[test]
fn rootless_user_with_subuid_ranges_builds_what_root_builds() {
    let Some(user) = unprivileged_user() else {
        return;
    };
    let work = user.scratch_dir("rootless-run");
    let store = work.path().join("store");
    if !genesis(work.path(), &store, Some(&user)) {
        return;
    }
    let ctx = work.path().join("changes");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), CHANGES).unwrap();
    user.chown(work.path());
    let (ok, _, err) = kiln(
        Some(&user),
        work.path(),
        &store,
        &["build", "-t", "changes:rootless", "changes"],
    );
    assert!(ok, "{err}");
    assert!(
        !err.contains("WARNING"),
        "a full subuid map needs no warning: {err}"
    );
    let rootless = util::images::tree(&store, "changes:rootless");
    // The same build as root.
    let root_dir = TestDir::new("root-run");
    let root_store = root_dir.path().join("store");
    assert!(genesis(root_dir.path(), &root_store, None));
    std::fs::create_dir_all(root_dir.path().join("changes")).unwrap();
    std::fs::write(root_dir.path().join("changes/Dockerfile"), CHANGES).unwrap();
    let (ok, _, err) = kiln(
        None,
        root_dir.path(),
        &root_store,
        &["build", "-t", "changes:root", "changes"],
    );
    assert!(ok, "{err}");
    let root = util::images::tree(&root_store, "changes:root");
    let strip = |t: &BTreeMap<String, util::images::FileInfo>| -> BTreeMap<String, (String, u32, u64, u64, Vec<u8>)> {
        t.iter().map(|(k, v)| (k.clone(), (format!("{:?}", v.kind), v.mode, v.uid, v.gid, v.content.clone()))).collect()
    };
    assert_eq!(
        strip(&rootless),
        strip(&root),
        "rootless and root builds must give the same files"
    );
    let home = &rootless["data/home/f"];
    assert_eq!(
        (home.uid, home.gid),
        (1000, 1000),
        "foreign owners survive the subuid map"
    );
    assert_eq!(rootless["data/suid"].mode, 0o4755);
    assert!(
        !util::tools::mounts_under(work.path()).iter().any(|_| true),
        "no mounts left"
    );
}

#[test]
fn failing_run_reports_command_exit_code_and_output() {
    let dir = TestDir::new("run-fails");
    let store = dir.path().join("store");
    if !genesis(dir.path(), &store, None) {
        return;
    }
    std::fs::create_dir_all(dir.path().join("bad")).unwrap();
    std::fs::write(
        dir.path().join("bad/Dockerfile"),
        "FROM genesis\nRUN echo before-failing && echo on-stderr >&2 && exit 3\n",
    )
    .unwrap();
    let (ok, _, err) = kiln(None, dir.path(), &store, &["build", "-t", "bad:1", "bad"]);
    assert!(!ok);
    for want in [
        "error: RUN failed with exit code 3",
        "--> bad/Dockerfile:2:1",
        "before-failing",
        "on-stderr",
        "echo before-failing",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
    let (_, images, _) = kiln(None, dir.path(), &store, &["images", "-q"]);
    assert_eq!(
        images.lines().count(),
        1,
        "only genesis: a failed build tags nothing"
    );
    assert!(util::images::corrupt_blobs(&store).is_empty());
}

#[test]
fn ctrl_c_during_a_long_run_leaves_no_process_or_mount() {
    let Some(user) = unprivileged_user() else {
        return;
    };
    let work = user.scratch_dir("ctrl-c");
    let store = work.path().join("store");
    if !genesis(work.path(), &store, Some(&user)) {
        return;
    }
    std::fs::create_dir_all(work.path().join("slow")).unwrap();
    std::fs::write(
        work.path().join("slow/Dockerfile"),
        "FROM genesis\nRUN echo started && sleep 4242\n",
    )
    .unwrap();
    user.chown(work.path());
    let mut child = user
        .command(kiln_bin())
        .current_dir(work.path())
        .arg("--root")
        .arg(&store)
        .args(["build", "slow"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sleeping = || util::tools::processes_mentioning("sleep 4242");
    assert!(
        util::tools::wait_until(Duration::from_secs(20), || !sleeping().is_empty()),
        "the step never started"
    );
    // SIGINT, as a terminal's Ctrl-C delivers it.
    assert!(util::tools::signal(child.id() as i32, 2));
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        util::tools::wait_until(Duration::from_secs(10), || sleeping().is_empty()),
        "left running: {:?}",
        sleeping()
    );
    assert!(
        util::tools::mounts_under(work.path()).is_empty(),
        "mounts left: {:?}",
        util::tools::mounts_under(work.path())
    );
}

#[test]
fn without_subordinate_ranges_a_single_id_build_warns_and_still_works() {
    if !require_root("creating a user without subuid ranges") {
        return;
    }
    let name = "kilntest2";
    if Command::new("id")
        .arg(name)
        .output()
        .is_ok_and(|o| !o.status.success())
    {
        assert!(Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", name])
            .status()
            .unwrap()
            .success());
    }
    for f in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{name}:")))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(f, kept).unwrap();
    }
    let dir = TestDir::new("single-id");
    let store = dir.path().join("store");
    std::fs::create_dir_all(dir.path().join("ctx")).unwrap();
    let Some(rootfs) = util::fixtures::busybox_rootfs() else {
        return;
    };
    std::fs::copy(rootfs, dir.path().join("ctx/busybox.tar.xz")).unwrap();
    std::fs::write(
        dir.path().join("ctx/Dockerfile"),
        "FROM scratch\nADD busybox.tar.xz /\nRUN echo plain > /plain\n",
    )
    .unwrap();
    assert!(Command::new("chown")
        .args(["-R", &format!("{name}:{name}")])
        .arg(dir.path())
        .status()
        .unwrap()
        .success());
    let out = Command::new("setpriv")
        .args(["--reuid", name, "--regid", name, "--init-groups"])
        .arg(kiln_bin())
        .current_dir(dir.path())
        .arg("--root")
        .arg(&store)
        .args(["build", "-t", "single:1", "ctx"])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("WARNING") && err.contains("/etc/subuid"),
        "the single-id warning says how to add ranges:\n{err}"
    );
    assert_eq!(err.matches("WARNING").count(), 1, "one warning, once");
}

#[test]
fn workdir_through_proc_self_fd_cannot_reach_host_files() {
    let dir = TestDir::new("leaky-vessels");
    let store = dir.path().join("store");
    if !genesis(dir.path(), &store, None) {
        return;
    }
    std::fs::create_dir_all(dir.path().join("ctx")).unwrap();
    for n in [3, 4, 5, 7, 8] {
        std::fs::write(
            dir.path().join("ctx/Dockerfile"),
            format!("FROM genesis\nWORKDIR /proc/self/fd/{n}\nRUN cat ../../../etc/hostname > /leak 2>/dev/null; ls /proc/self/cwd/.. > /leak2 2>&1; true\n"),
        )
        .unwrap();
        let (ok, _, err) = kiln(None, dir.path(), &store, &["build", "-t", "leak:1", "ctx"]);
        if ok {
            // If it ran at all, it ran inside the image: no host file reached the layer.
            let t = util::images::tree(&store, "leak:1");
            let host_name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            let leaked = t
                .get("leak")
                .map(|f| String::from_utf8_lossy(&f.content).to_string())
                .unwrap_or_default();
            assert!(
                host_name.trim().is_empty() || !leaked.contains(host_name.trim()),
                "host file leaked via fd {n}"
            );
        } else {
            assert!(
                err.contains("WORKDIR") || err.contains("/proc"),
                "fd {n}: unclear error:\n{err}"
            );
        }
    }
}

#[test]
fn kiln_info_reports_namespace_and_snapshot_mode() {
    let Some(user) = unprivileged_user() else {
        return;
    };
    let work = user.scratch_dir("info");
    let (ok, out, err) = kiln(
        Some(&user),
        work.path(),
        &work.path().join("store"),
        &["info"],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.matches("store:").count(),
        1,
        "printed once, from inside the namespace:\n{out}"
    );
    assert!(
        out.contains("user namespace:  rootless, 65537 ids mapped"),
        "{out}"
    );
    assert!(
        out.contains("snapshots:       overlayfs (userxattr"),
        "{out}"
    );
    let dir = TestDir::new("info-root");
    let (ok, out, _) = kiln(None, dir.path(), &dir.path().join("store"), &["info"]);
    assert!(
        ok && out.contains("none (running as root)")
            && out.contains("snapshots:       overlayfs\n"),
        "{out}"
    );
}

/// Ownership a real distribution needs: new users, `_apt`, `setpriv`/`su` to other uids, a
/// removed directory tree of the base, a symlink — same files as BuildKit's build.
const DEBIAN_CHANGES: &str = "FROM debian:bookworm\n\
RUN useradd -m -u 1000 app && mkdir -p /srv/data && chown app:app /srv/data \\\n\
 && chown _apt:root /var/cache/apt/archives/partial && chmod 0700 /var/cache/apt/archives/partial\n\
RUN setpriv --reuid=1000 --regid=1000 --clear-groups sh -c 'echo hi > /srv/data/by-app' \\\n\
 && su -s /bin/sh _apt -c 'id -u > /tmp/apt-uid' && test \"$(cat /tmp/apt-uid)\" = 42 \\\n\
 && rm -rf /usr/share/doc /tmp/apt-uid && ln -s /srv /opt/srv-link\n\
RUN echo built > /etc/built && chmod u+s /usr/bin/env\n";

#[test]
fn debian_base_builds_the_same_files_as_buildkit() {
    let Some(debian) = util::fixtures::debian_rootfs() else {
        return;
    };
    let dir = TestDir::new("debian-vs-buildkit");
    let store = dir.path().join("store");
    let (ok, _, err) = kiln(
        None,
        dir.path(),
        &store,
        &["import", debian.to_str().unwrap(), "debian:bookworm"],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = kiln(
        None,
        dir.path(),
        &store,
        &["save", "-o", "debian.tar", "debian:bookworm"],
    );
    assert!(ok, "{err}");
    let ctx = dir.path().join("changes");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), DEBIAN_CHANGES).unwrap();
    // Rootless, as the unprivileged user with a subuid range: the product's path.
    let Some(user) = unprivileged_user() else {
        return;
    };
    let work = user.scratch_dir("debian-rootless");
    let ustore = work.path().join("store");
    std::fs::copy(
        dir.path().join("debian.tar"),
        work.path().join("debian.tar"),
    )
    .unwrap();
    std::fs::create_dir_all(work.path().join("changes")).unwrap();
    std::fs::write(work.path().join("changes/Dockerfile"), DEBIAN_CHANGES).unwrap();
    user.chown(work.path());
    let (ok, _, err) = kiln(
        Some(&user),
        work.path(),
        &ustore,
        &["load", "-i", "debian.tar"],
    );
    assert!(ok, "{err}");
    let t = Instant::now();
    let (ok, _, err) = kiln(
        Some(&user),
        work.path(),
        &ustore,
        &[
            "build",
            "-t",
            "deb:kiln",
            "--network",
            "none",
            "-o",
            "deb-kiln.tar",
            "changes",
        ],
    );
    assert!(ok, "{err}");
    println!(
        "kiln rootless build on debian: {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let Some(d) = Dockerd::start() else { return };
    assert_success(
        &d.load(&dir.path().join("debian.tar")),
        "docker load debian",
    );
    let t = Instant::now();
    assert_success(
        &d.buildkit_build(
            &ctx,
            &ctx.join("Dockerfile"),
            "deb:bk",
            &["--network", "none"],
        ),
        "BuildKit build",
    );
    println!(
        "BuildKit build on debian: {:.2}s",
        t.elapsed().as_secs_f64()
    );
    assert_success(
        &d.load(&work.path().join("deb-kiln.tar")),
        "docker load kiln's image",
    );
    let paths = d.assert_same_tree("deb:bk", "deb:kiln", dir.path());
    println!("compared {paths} paths of a Debian image with BuildKit");
    assert!(paths > 5000, "{paths} paths");
}

#[test]
fn rmi_and_prune_remove_snapshots_owned_by_subordinate_ids() {
    let Some(user) = unprivileged_user() else {
        return;
    };
    let work = user.scratch_dir("snap-gc");
    let store = work.path().join("store");
    if !genesis(work.path(), &store, Some(&user)) {
        return;
    }
    std::fs::create_dir_all(work.path().join("owned")).unwrap();
    std::fs::write(
        work.path().join("owned/Dockerfile"),
        "FROM genesis\nRUN mkdir /o && chown 4242:4242 /o && echo x > /o/f && chown 4242 /o/f\n",
    )
    .unwrap();
    user.chown(work.path());
    let (ok, _, err) = kiln(
        Some(&user),
        work.path(),
        &store,
        &["build", "-t", "owned:1", "owned"],
    );
    assert!(ok, "{err}");
    let snaps = |dir: &Path| {
        std::fs::read_dir(dir.join("snapshots"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().len() == 64)
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(snaps(&store), 2, "the base layer and the RUN layer");
    let (ok, out, err) = kiln(
        Some(&user),
        work.path(),
        &store,
        &["rmi", "owned:1", "genesis"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("Untagged: owned:1"), "{out}");
    assert_eq!(
        snaps(&store),
        0,
        "snapshots with files of uid 4242 are gone (removed inside the user namespace)"
    );
    let (ok, out, err) = kiln(Some(&user), work.path(), &store, &["prune"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("Deleted 0 blobs"), "{out}");
}

/// `user.max_user_namespaces=0`. Root here may not change the host's value, but the limit is
/// per user namespace: root makes a throwaway namespace, sets 0 inside it, and kiln runs there
/// as the unprivileged user. The host's value is never touched.
#[test]
fn user_namespaces_disabled_gives_the_documented_error() {
    if !require_root("mapping a throwaway user namespace") {
        return;
    }
    let Some(user) = unprivileged_user() else {
        return;
    };
    let work = user.scratch_dir("no-userns");
    std::fs::create_dir_all(work.path().join("ctx")).unwrap();
    std::fs::write(
        work.path().join("ctx/Dockerfile"),
        "FROM scratch\nRUN true\n",
    )
    .unwrap();
    user.chown(work.path());
    let go = work.path().join("go");
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.01; done; exec sh -c 'echo 0 > /proc/sys/user/max_user_namespaces && \
         cd {dir} && exec setpriv --reuid={uid} --regid={gid} --clear-groups env HOME={dir} {kiln} --root {dir}/store build ctx'",
        go = go.display(),
        dir = work.path().display(),
        uid = user.uid,
        gid = user.gid,
        kiln = kiln_bin().display(),
    );
    let child = Command::new("unshare")
        .args(["--user", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let me = std::fs::read_link("/proc/self/ns/user").ok();
    assert!(util::tools::wait_until(
        Duration::from_secs(5),
        || std::fs::read_link(format!("/proc/{pid}/ns/user")).ok() != me
    ));
    // Root may write any map for a child namespace: ids 0..65536 one to one.
    std::fs::write(format!("/proc/{pid}/uid_map"), "0 0 65536\n").unwrap();
    std::fs::write(format!("/proc/{pid}/gid_map"), "0 0 65536\n").unwrap();
    std::fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("user.max_user_namespaces = 0"),
        "the error names the setting:\n{err}"
    );
    assert!(
        err.contains("sysctl -w user.max_user_namespaces="),
        "and the fix:\n{err}"
    );
    assert_ne!(
        std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .unwrap()
            .trim(),
        "0"
    );
}
