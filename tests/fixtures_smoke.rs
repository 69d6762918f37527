//! Proves the test fixtures work on this machine, without kiln: the busybox rootfs script, a
//! private dockerd (import, run, BuildKit build, save), podman (load, run), skopeo, umoci,
//! oci-image-tool, a local registry with and without auth, and the rootless test user. Each
//! step prints its duration (see them with --nocapture), and every test checks that its
//! fixtures left no processes or mounts behind.

mod util;

use std::path::Path;

use util::dockerd::Dockerd;
use util::fixtures::{busybox_context, busybox_rootfs, make_busybox_rootfs};
use util::podman::Podman;
use util::registry::Registry;
use util::tools::{
    assert_success, mounts_under, oci_validate_layout, processes_mentioning, require_tool, skopeo,
    umoci, umoci_unpack, Steps, TempRoot,
};
use util::unpriv::unprivileged_user;

/// Asserts that nothing runs from, or is mounted below, a fixture directory that was dropped.
fn assert_clean(dir: &Path, what: &str) {
    let procs = processes_mentioning(&dir.to_string_lossy());
    assert!(procs.is_empty(), "{what} left processes behind: {procs:#?}");
    let mounts = mounts_under(dir);
    assert!(mounts.is_empty(), "{what} left mounts behind: {mounts:#?}");
    assert!(!dir.exists(), "{what} left {} behind", dir.display());
}

#[test]
fn busybox_rootfs_is_reproducible() {
    if !require_tool("/bin/busybox") || !require_tool("xz") {
        return;
    }
    let mut steps = Steps::new();
    let t = TempRoot::new("smoke-rootfs");
    let (a, b) = (t.join("a.tar.xz"), t.join("b.tar.xz"));
    make_busybox_rootfs(&a);
    steps.done("make-busybox-rootfs.sh");
    make_busybox_rootfs(&b);
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "two runs of make-busybox-rootfs.sh differ"
    );
    let listing = assert_success(
        &util::tools::run_tool("tar", &["-tvJf", a.to_str().unwrap()]),
        "tar -t",
    );
    for want in [
        "bin/busybox",
        "bin/sh -> busybox",
        "etc/passwd",
        "etc/group",
        "tmp/",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(want)),
            "{want} missing from the rootfs:\n{listing}"
        );
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("drwxrwxrwt 0/0") && l.ends_with(" tmp/")),
        "tmp must be 1777 root:\n{listing}"
    );
    steps.done("second build + checks");
}

/// busybox rootfs → dockerd (import, run, BuildKit build, save) → skopeo inspect → podman
/// (load, run) → registry (skopeo copy) → OCI layout checked by umoci and oci-image-tool.
#[test]
fn docker_podman_skopeo_registry_pipeline() {
    let mut steps = Steps::new();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    steps.done("busybox rootfs (cached in target/tmp)");

    let Some(d) = Dockerd::start() else { return };
    let dockerd_dir = d.dir().to_path_buf();
    steps.done(&format!(
        "dockerd started (storage driver {})",
        d.storage_driver()
    ));
    println!(
        "{}",
        d.docker_ok(&["version", "--format", "docker {{.Server.Version}}"])
            .trim()
    );

    d.docker_ok(&["import", rootfs.to_str().unwrap(), "kiln-smoke/import:1"]);
    steps.done("docker import");
    let out = d.run("kiln-smoke/import:1", &["sh", "-c", "echo ok"]);
    assert_eq!(assert_success(&out, "docker run (imported)").trim(), "ok");
    steps.done("docker run (imported image)");

    let ctx = d.dir().join("ctx");
    assert!(busybox_context(&ctx));
    let out = d.buildkit_build(&ctx, &ctx.join("Dockerfile"), "kiln-smoke/bk:1", &[]);
    assert_success(&out, "DOCKER_BUILDKIT=1 docker build");
    steps.done("DOCKER_BUILDKIT=1 docker build (FROM scratch + ADD rootfs.tar.xz)");
    let out = d.run("kiln-smoke/bk:1", &["sh", "-c", "echo ok"]);
    assert_eq!(assert_success(&out, "docker run (built)").trim(), "ok");
    let cmd = d.docker_ok(&[
        "inspect",
        "--format",
        "{{json .Config.Cmd}}",
        "kiln-smoke/bk:1",
    ]);
    assert_eq!(cmd.trim(), r#"["sh"]"#);
    steps.done("docker run (built image) + inspect");

    // A RUN step on top of a local image: BuildKit must find the base in the daemon's store
    // (no pull) and run the step without network.
    let ctx2 = d.dir().join("ctx2");
    std::fs::create_dir_all(&ctx2).unwrap();
    std::fs::write(
        ctx2.join("Dockerfile"),
        "FROM kiln-smoke/bk:1\nRUN echo built-by-run > /hello\n",
    )
    .unwrap();
    let out = d.buildkit_build(
        &ctx2,
        &ctx2.join("Dockerfile"),
        "kiln-smoke/run:1",
        &["--network", "none"],
    );
    assert_success(&out, "BuildKit build with RUN");
    let out = d.run("kiln-smoke/run:1", &["cat", "/hello"]);
    assert_eq!(
        assert_success(&out, "docker run (RUN image)").trim(),
        "built-by-run"
    );
    steps.done("BuildKit build FROM local image + RUN --network none");

    let work = TempRoot::new("smoke-work");
    let archive = work.join("bk.tar");
    d.docker_ok(&["save", "-o", archive.to_str().unwrap(), "kiln-smoke/bk:1"]);
    steps.done("docker save");
    drop(d);
    steps.done("dockerd stopped");
    assert_clean(&dockerd_dir, "dockerd fixture");

    if require_tool("skopeo") {
        let src = format!("docker-archive:{}", archive.display());
        let out = skopeo(&["inspect", &src]);
        let json: serde_json::Value =
            serde_json::from_str(&assert_success(&out, "skopeo inspect")).expect("inspect json");
        assert_eq!(json["Layers"].as_array().map(Vec::len), Some(1), "{json:#}");
        steps.done("skopeo inspect docker-archive:");

        let layout = work.join("layout");
        let dest = format!("oci:{}:smoke", layout.display());
        assert_success(&skopeo(&["copy", &src, &dest]), "skopeo copy to oci layout");
        steps.done("skopeo copy docker-archive: -> oci:");
        check_oci_layout(&layout, &work.join("bundle"));
        steps.done("oci-image-tool validate + umoci unpack");
    }

    if let Some(p) = Podman::new() {
        let podman_dir = p.dir().to_path_buf();
        assert_success(&p.load(&archive), "podman load");
        steps.done(&format!("podman load (storage {})", p.storage_driver()));
        let out = p.run("localhost/kiln-smoke/bk:1", &["sh", "-c", "echo ok"]);
        assert_eq!(assert_success(&out, "podman run").trim(), "ok");
        steps.done("podman run");
        drop(p);
        assert_clean(&podman_dir, "podman fixture");
    }

    if require_tool("skopeo") {
        let Some(reg) = Registry::start() else { return };
        let reg_dir = reg.storage_dir().parent().unwrap().to_path_buf();
        steps.done(&format!("registry started on {}", reg.addr()));
        let src = format!("docker-archive:{}", archive.display());
        let dest = format!("docker://{}", reg.image("x:1"));
        let out = skopeo(&["copy", "--dest-tls-verify=false", &src, &dest]);
        assert_success(&out, "skopeo copy to registry");
        assert_eq!(reg.get_status("/v2/x/manifests/1"), Some(200));
        steps.done("skopeo copy docker-archive: -> registry");
        let out = skopeo(&["inspect", "--tls-verify=false", &dest]);
        assert_success(&out, "skopeo inspect docker://");
        steps.done("skopeo inspect docker://");
        drop(reg);
        assert_clean(&reg_dir, "registry fixture");
    }
    println!("total {:.1}s", steps.total().as_secs_f64());
}

/// Validates an OCI layout with oci-image-tool and unpacks it with umoci.
fn check_oci_layout(layout: &Path, bundle: &Path) {
    if require_tool("oci-image-tool") {
        let out = oci_validate_layout(layout, Some("smoke"));
        assert_success(&out, "oci-image-tool validate");
    }
    if require_tool("umoci") {
        let image = format!("{}:smoke", layout.display());
        let out = umoci_unpack(&image, bundle);
        assert_success(&out, "umoci unpack");
        assert!(bundle.join("rootfs/bin/busybox").is_file());
    }
}

#[test]
fn registry_with_basic_auth() {
    if !require_tool("skopeo") {
        return;
    }
    let mut steps = Steps::new();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let Some(reg) = Registry::with_auth("kiln", "s3cret") else {
        return;
    };
    steps.done(&format!("registry with htpasswd started on {}", reg.addr()));
    assert_eq!(reg.get_status("/v2/"), Some(200), "with credentials");
    assert_eq!(
        reg.get_status_anonymous("/v2/"),
        Some(401),
        "without credentials"
    );

    // An OCI layout made from the rootfs alone is enough to push: umoci builds one from a
    // directory without any daemon.
    let work = TempRoot::new("smoke-auth");
    let layout = work.join("layout");
    if !require_tool("umoci") {
        return;
    }
    assert_success(
        &umoci(&["init", "--layout", layout.to_str().unwrap()]),
        "umoci init",
    );
    let image = format!("{}:base", layout.display());
    assert_success(&umoci(&["new", "--image", &image]), "umoci new");
    let bundle = work.join("bundle");
    assert_success(&umoci_unpack(&image, &bundle), "umoci unpack (empty)");
    let out = util::tools::run_tool(
        "tar",
        &[
            "-xJf",
            rootfs.to_str().unwrap(),
            "-C",
            bundle.join("rootfs").to_str().unwrap(),
        ],
    );
    assert_success(&out, "extract rootfs");
    assert_success(
        &umoci(&["repack", "--image", &image, bundle.to_str().unwrap()]),
        "umoci repack",
    );
    steps.done("umoci layout from the busybox rootfs");

    let src = format!("oci:{}:base", layout.display());
    let dest = format!("docker://{}", reg.image("auth/x:1"));
    let denied = skopeo(&["copy", "--dest-tls-verify=false", &src, &dest]);
    assert!(
        !denied.status.success(),
        "push without credentials must fail"
    );
    let creds = reg.creds_arg().unwrap();
    let out = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &src,
        &dest,
    ]);
    assert_success(&out, "skopeo copy with --dest-creds");
    steps.done("push denied without, accepted with credentials");

    // The Docker-style config.json the helper writes works for pulls too.
    let cfg = reg.write_docker_config(&work.join("docker-config"));
    let out = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--authfile",
        cfg.to_str().unwrap(),
        &dest,
    ]);
    assert_success(&out, "skopeo inspect with config.json auth");
    steps.done("inspect with config.json auth");
    let dir = reg.storage_dir().parent().unwrap().to_path_buf();
    drop(reg);
    assert_clean(&dir, "registry fixture");
}

#[test]
fn unprivileged_user_gets_a_subordinate_userns() {
    let mut steps = Steps::new();
    let Some(user) = unprivileged_user() else {
        return;
    };
    let (start, count) = user.subuid().expect("subuid range");
    assert!(count >= 65536, "subuid range too small: {count}");
    assert!(user.subgid().is_some(), "subgid range");
    let Some(map) = user.userns_uid_map() else {
        return;
    };
    println!("uid_map of kilntest's user namespace:\n{map}");
    assert!(
        map.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(&start.to_string())),
        "subordinate range {start} not mapped:\n{map}"
    );
    let out = util::tools::output(user.command("id").arg("-u"));
    assert_eq!(
        assert_success(&out, "id -u as kilntest").trim(),
        user.uid.to_string()
    );
    let dir = user.scratch_dir("smoke");
    let out = util::tools::output(user.command("touch").arg(dir.join("f")));
    assert_success(&out, "kilntest writes its scratch dir");
    steps.done("kilntest user, subordinate ranges, rootless userns");
}
