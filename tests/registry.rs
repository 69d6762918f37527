//! Registries: kiln pushes to Debian's docker-registry on loopback, docker and skopeo pull what
//! kiln pushed, and a build pulls its FROM image.

mod util;

use std::path::Path;
use util::dockerd::Dockerd;
use util::registry::Registry;
use util::tools::assert_success;
use util::{kiln_bin, run, TestDir};

fn kiln(dir: &Path, store: &str, args: &[&str]) -> (bool, String, String) {
    let (out, stdout, stderr) = run(std::process::Command::new(kiln_bin())
        .current_dir(dir)
        .arg("--root")
        .arg(dir.join(store))
        .args(args));
    (out.status.success(), stdout, stderr)
}

#[test]
fn push_then_pull_with_docker_skopeo_and_a_build() {
    let Some(reg) = Registry::start() else { return };
    let Some(rootfs) = util::fixtures::busybox_rootfs() else {
        return;
    };
    let dir = TestDir::new("registry");
    dir.write(
        "genesis/Dockerfile",
        "FROM scratch\nADD busybox.tar.xz /\nCMD [\"sh\"]\n",
    );
    std::fs::copy(rootfs, dir.path().join("genesis/busybox.tar.xz")).unwrap();
    let (ok, _, err) = kiln(
        dir.path(),
        "a",
        &["build", "-q", "-t", "genesis", "genesis"],
    );
    assert!(ok, "{err}");
    let dest = reg.image("team/genesis:1");
    let (ok, digest, err) = kiln(dir.path(), "a", &["push", "-q", "genesis", &dest]);
    assert!(ok, "{err}");
    let digest = digest.trim().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");

    // skopeo sees the digest kiln printed.
    let out = util::tools::skopeo(&["inspect", "--tls-verify=false", &format!("docker://{dest}")]);
    let v: serde_json::Value =
        serde_json::from_str(&assert_success(&out, "skopeo inspect docker://")).unwrap();
    assert_eq!(v["Digest"], digest.as_str());

    // A build in an empty store pulls its base.
    dir.write(
        "child/Dockerfile",
        format!("FROM {dest}\nRUN echo pulled > /p\n"),
    );
    let (ok, _, err) = kiln(dir.path(), "b", &["build", "-t", "child", "child"]);
    assert!(ok, "{err}");
    assert_eq!(
        util::images::tree(&dir.path().join("b"), "child")["p"].content,
        b"pulled\n"
    );
    // A second pull transfers nothing; --pull=never with an unknown image is a clear error.
    let (ok, out, err) = kiln(dir.path(), "b", &["pull", &dest]);
    assert!(ok, "{err}");
    assert!(out.contains("(0 new blobs"), "{out}");
    dir.write(
        "never/Dockerfile",
        format!("FROM {}\n", reg.image("missing:1")),
    );
    let (ok, _, err) = kiln(dir.path(), "b", &["build", "--pull", "never", "never"]);
    assert!(
        !ok && err.contains("not found in the store") && err.contains("kiln pull"),
        "{err}"
    );
    let (ok, _, err) = kiln(dir.path(), "b", &["pull", &reg.image("missing:1")]);
    assert!(!ok && err.contains("missing"), "{err}");

    // docker pulls what kiln pushed (loopback registries are plain http for docker too) and runs it.
    let Some(d) = Dockerd::start() else { return };
    assert_success(&d.docker(&["pull", &dest]), "docker pull");
    let out = assert_success(&d.run(&dest, &["sh", "-c", "echo ok"]), "docker run");
    assert_eq!(out.trim(), "ok");
}

#[test]
fn login_logout_and_basic_auth() {
    let Some(reg) = Registry::with_auth("alice", "s3cret") else {
        return;
    };
    let Some(rootfs) = util::fixtures::busybox_rootfs() else {
        return;
    };
    let dir = TestDir::new("registry-auth");
    dir.write("genesis/Dockerfile", "FROM scratch\nADD busybox.tar.xz /\n");
    std::fs::copy(rootfs, dir.path().join("genesis/busybox.tar.xz")).unwrap();
    let docker_config = dir.path().join("docker-config");
    let k2 = |store: &str, args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut cmd = std::process::Command::new(kiln_bin());
        cmd.current_dir(dir.path())
            .env("DOCKER_CONFIG", &docker_config)
            .env_remove("REGISTRY_AUTH_FILE");
        cmd.arg("--root").arg(dir.path().join(store)).args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or("").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let k = |args: &[&str], stdin: Option<&str>| k2("store", args, stdin);
    let (ok, _, err) = k(&["build", "-q", "-t", "genesis", "genesis"], None);
    assert!(ok, "{err}");
    let dest = reg.image("genesis:1");
    let (ok, _, err) = k(&["push", "genesis", &dest], None);
    assert!(
        !ok && err.contains("kiln login"),
        "anonymous push is refused with a hint:\n{err}"
    );
    let (ok, _, err) = k(
        &["login", &reg.addr(), "-u", "alice", "--password-stdin"],
        Some("wrong\n"),
    );
    assert!(!ok && err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("wrong"), "the password never shows: {err}");
    let (ok, out, err) = k(
        &["login", &reg.addr(), "-u", "alice", "--password-stdin"],
        Some("s3cret\n"),
    );
    assert!(ok && out.contains("Login Succeeded"), "{err}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(docker_config.join("config.json")).unwrap()).unwrap();
    assert!(
        config["auths"][reg.addr()]["auth"].is_string(),
        "docker's format: {config}"
    );
    let (ok, _, err) = k(&["push", "genesis", &dest], None);
    assert!(ok, "{err}");
    // A build in a fresh store pulls its FROM image with the stored login.
    dir.write("child/Dockerfile", format!("FROM {dest}\n"));
    let (ok, _, err) = k2("store2", &["build", "child"], None);
    assert!(ok, "{err}");
    let (ok, out, _) = k(&["logout", &reg.addr()], None);
    assert!(ok && out.contains("Removed login credentials"), "{out}");
    let (ok, _, err) = k(&["pull", &dest], None);
    assert!(!ok && err.contains("kiln login"), "{err}");
}
