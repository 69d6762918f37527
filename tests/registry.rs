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
    let (ok, id, err) = kiln(
        dir.path(),
        "a",
        &["build", "-q", "-t", "genesis", "genesis"],
    );
    assert!(ok, "{err}");
    let id = id.trim().to_string();
    let id = id.as_str();
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
    // A second pull transfers nothing, by kiln's count and by the registry's access log;
    // --pull=never with an unknown image is a clear error.
    let blob_gets = || reg.requests("GET", "/v2/team/genesis/blobs/");
    let before = blob_gets();
    assert!(before >= 2, "the first pull fetched config and layer");
    let (ok, out, err) = kiln(dir.path(), "b", &["pull", &dest]);
    assert!(ok, "{err}");
    assert!(out.contains("(0 new blobs"), "{out}");
    assert_eq!(blob_gets(), before, "no blob fetched again");
    assert!(reg.requests("GET", "/v2/team/genesis/manifests/1") >= 2);
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

    // The manifest kiln pushed: OCI media types, gzip layers (kiln stores its layers
    // uncompressed), and the config blob — the image ID — unchanged.
    let raw = |image: &str| -> serde_json::Value {
        let out = util::tools::skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ]);
        serde_json::from_str(&assert_success(&out, "skopeo inspect --raw")).unwrap()
    };
    let oci = raw(&dest);
    assert_eq!(
        oci["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        oci["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(oci["config"]["digest"], id);

    // --format docker: schema 2 media types, same config and layer blobs (nothing uploaded).
    let docker_dest = reg.image("team/genesis:docker");
    let (ok, out, err) = kiln(
        dir.path(),
        "a",
        &["push", "--format", "docker", "genesis", &docker_dest],
    );
    assert!(ok, "{err}");
    assert!(out.contains("0 blobs uploaded"), "{out}");
    let v2 = raw(&docker_dest);
    assert_eq!(
        v2["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        v2["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert_eq!(
        v2["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_eq!(v2["config"]["digest"], id);
    assert_eq!(v2["layers"][0]["digest"], oci["layers"][0]["digest"]);
    // Docker media types cannot carry zstd: refused before anything is sent.
    let (ok, _, err) = kiln(
        dir.path(),
        "a",
        &[
            "push",
            "--format",
            "docker",
            "--compression",
            "zstd",
            "genesis",
            &reg.image("team/zstd:1"),
        ],
    );
    assert!(!ok && err.contains("zstd"), "{err}");
    assert_eq!(reg.requests("POST", "/v2/team/zstd/"), 0);

    // kiln build --push, and --output type=registry with Docker media types.
    let built = reg.image("team/built:1");
    let (ok, _, err) = kiln(
        dir.path(),
        "a",
        &["build", "-t", &built, "--push", "genesis"],
    );
    assert!(ok, "{err}");
    let printed = err
        .lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .unwrap_or_else(|| panic!("no digest printed:\n{err}"));
    let out = util::tools::skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{built}"),
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&assert_success(&out, "skopeo inspect built")).unwrap();
    assert_eq!(v["Digest"], printed);
    let built2 = reg.image("team/built:2");
    let (ok, _, err) = kiln(
        dir.path(),
        "a",
        &[
            "build",
            "--output",
            &format!("type=registry,name={built2},oci-mediatypes=false"),
            "genesis",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        raw(&built2)["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let (ok, _, err) = kiln(dir.path(), "a", &["build", "--push", "genesis"]);
    assert!(!ok && err.contains("-t"), "--push without a name: {err}");

    // docker pulls what kiln pushed (loopback registries are plain http for docker too) and
    // runs it, in both formats.
    let Some(d) = Dockerd::start() else { return };
    for image in [&dest, &docker_dest] {
        assert_success(&d.docker(&["pull", image]), "docker pull");
        let out = assert_success(&d.run(image, &["sh", "-c", "echo ok"]), "docker run");
        assert_eq!(out.trim(), "ok");
        let out = d.docker(&["image", "inspect", "--format", "{{.Id}}", image]);
        assert_eq!(assert_success(&out, "docker image inspect").trim(), id);
    }
}

/// A fake `docker-credential-kilntest` that keeps one login in a file and logs its calls.
fn credential_helper(bin: &Path, state: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(bin).unwrap();
    let log = state.join("helper.log");
    let store = state.join("helper.json");
    let script = format!(
        "#!/bin/sh\n\
         input=$(cat)\n\
         echo \"$1 $input\" >> '{log}'\n\
         case \"$1\" in\n\
         get) if [ -f '{store}' ]; then cat '{store}'; else echo 'credentials not found in native keychain'; exit 1; fi ;;\n\
         store) printf '%s' \"$input\" > '{store}' ;;\n\
         erase) rm -f '{store}' ;;\n\
         *) exit 2 ;;\n\
         esac\n",
        log = log.display(),
        store = store.display()
    );
    let path = bin.join("docker-credential-kilntest");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    log
}

#[test]
fn credential_helpers_and_registry_auth_file() {
    let Some(reg) = Registry::with_auth("bob", "hunter2") else {
        return;
    };
    let Some(rootfs) = util::fixtures::busybox_rootfs() else {
        return;
    };
    let dir = TestDir::new("registry-helpers");
    dir.write("genesis/Dockerfile", "FROM scratch\nADD busybox.tar.xz /\n");
    std::fs::copy(rootfs, dir.path().join("genesis/busybox.tar.xz")).unwrap();
    let bin = dir.path().join("bin");
    let log = credential_helper(&bin, dir.path());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let k = |env: &[(&str, &Path)], args: &[&str], stdin: &str| {
        let mut cmd = std::process::Command::new(kiln_bin());
        cmd.current_dir(dir.path())
            .env("PATH", &path)
            .env_remove("REGISTRY_AUTH_FILE")
            .env("DOCKER_CONFIG", dir.path().join("unused-docker-config"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.arg("--root").arg(dir.path().join("store")).args(args);
        util::run_with_input(&mut cmd, stdin)
    };
    let (ok, _, err) = k(&[], &["build", "-q", "-t", "genesis", "genesis"], "");
    assert!(ok, "{err}");
    let dest = reg.image("helped:1");
    let helper_log = || std::fs::read_to_string(&log).unwrap_or_default();

    for (key, value) in [
        ("credHelpers", serde_json::json!({ reg.addr(): "kilntest" })),
        ("credsStore", serde_json::json!("kilntest")),
    ] {
        let cfg_dir = dir.path().join(format!("docker-{key}"));
        std::fs::create_dir_all(&cfg_dir).unwrap();
        let cfg = cfg_dir.join("config.json");
        std::fs::write(&cfg, serde_json::json!({ key: value }).to_string()).unwrap();
        let env = [("DOCKER_CONFIG", cfg_dir.as_path())];
        std::fs::remove_file(&log).ok();

        // The helper has nothing yet: refused with the login hint, after asking it.
        let (ok, _, err) = k(&env, &["push", "genesis", &dest], "");
        assert!(!ok && err.contains("kiln login"), "{key}: {err}");
        assert!(
            helper_log().contains(&format!("get {}", reg.addr())),
            "{key}: {}",
            helper_log()
        );
        // Login stores through the helper; the file keeps no secret.
        let (ok, _, err) = k(
            &env,
            &["login", &reg.addr(), "-u", "bob", "--password-stdin"],
            "hunter2\n",
        );
        assert!(ok, "{key}: {err}");
        assert!(helper_log().contains("store {"), "{key}: {}", helper_log());
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(
            !text.contains("auth\""),
            "{key}: no secret in the file: {text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["auths"][reg.addr()].is_object(), "{key}: {text}");
        assert!(
            v.get(key).is_some(),
            "{key}: the helper setting is kept: {text}"
        );
        // Push and pull use it.
        let (ok, _, err) = k(&env, &["push", "genesis", &dest], "");
        assert!(ok, "{key}: {err}");
        let (ok, _, err) = k(&env, &["pull", &dest], "");
        assert!(ok, "{key}: {err}");
        // Logout erases it there.
        let (ok, _, err) = k(&env, &["logout", &reg.addr()], "");
        assert!(ok, "{key}: {err}");
        assert!(
            helper_log().contains(&format!("erase {}", reg.addr())),
            "{key}: {}",
            helper_log()
        );
        let (ok, _, err) = k(&env, &["push", "genesis", &dest], "");
        assert!(!ok && err.contains("kiln login"), "{key}: {err}");
    }

    // $REGISTRY_AUTH_FILE (podman's variable) wins over DOCKER_CONFIG for reading and writing.
    let auth_file = dir.path().join("containers/auth.json");
    let docker_dir = reg.write_docker_config(&dir.path().join("docker-plain"));
    let docker_dir = docker_dir.parent().unwrap();
    let env = [
        ("REGISTRY_AUTH_FILE", auth_file.as_path()),
        ("DOCKER_CONFIG", docker_dir),
    ];
    let (ok, _, err) = k(&env, &["push", "genesis", &dest], "");
    assert!(
        !ok && err.contains("kiln login"),
        "DOCKER_CONFIG's login is not used while REGISTRY_AUTH_FILE is set: {err}"
    );
    let (ok, _, err) = k(
        &env,
        &["login", &reg.addr(), "-u", "bob", "--password-stdin"],
        "hunter2\n",
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&auth_file).unwrap()).unwrap();
    assert!(v["auths"][reg.addr()]["auth"].is_string(), "{v}");
    let (ok, _, err) = k(&env, &["push", "genesis", &dest], "");
    assert!(ok, "{err}");
    // podman reads the same file.
    if util::tools::require_tool("podman") {
        let out = std::process::Command::new("podman")
            .args(["login", "--get-login", "--authfile"])
            .arg(&auth_file)
            .arg(reg.addr())
            .output()
            .unwrap();
        assert_eq!(
            assert_success(&out, "podman login --get-login").trim(),
            "bob"
        );
    }
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
        util::run_with_input(
            std::process::Command::new(kiln_bin())
                .current_dir(dir.path())
                .env("DOCKER_CONFIG", &docker_config)
                .env_remove("REGISTRY_AUTH_FILE")
                .arg("--root")
                .arg(dir.path().join(store))
                .args(args),
            stdin.unwrap_or(""),
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

/// An image index made by podman from two kiln images: kiln picks the host's platform, or the
/// one asked for, in `kiln pull` and in FROM.
#[test]
fn multi_platform_index_selects_the_platform() {
    let Some(reg) = Registry::start() else { return };
    let Some(podman) = util::podman::Podman::new() else {
        return;
    };
    let dir = TestDir::new("registry-multi");
    let host = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    for arch in [host, other] {
        dir.write(
            &format!("{arch}/Dockerfile"),
            "FROM scratch\nCOPY arch.txt /\n",
        );
        dir.write(&format!("{arch}/arch.txt"), arch);
        let tag = format!("one:{arch}");
        let (ok, _, err) = kiln(
            dir.path(),
            "a",
            &[
                "build",
                "--platform",
                &format!("linux/{arch}"),
                "-t",
                &tag,
                arch,
            ],
        );
        assert!(ok, "{err}");
        let (ok, _, err) = kiln(dir.path(), "a", &["push", &tag, &reg.image(&tag)]);
        assert!(ok, "{err}");
    }
    let list = reg.image("multi:1");
    podman.podman_ok(&["manifest", "create", "kiln-multi"]);
    for arch in [host, other] {
        podman.podman_ok(&[
            "manifest",
            "add",
            "--tls-verify=false",
            "kiln-multi",
            &format!("docker://{}", reg.image(&format!("one:{arch}"))),
        ]);
    }
    podman.podman_ok(&[
        "manifest",
        "push",
        "--all",
        "--tls-verify=false",
        "kiln-multi",
        &format!("docker://{list}"),
    ]);
    let out = util::tools::skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{list}"),
    ]);
    let raw: serde_json::Value =
        serde_json::from_str(&assert_success(&out, "skopeo inspect --raw")).unwrap();
    assert_eq!(
        raw["manifests"].as_array().map(Vec::len),
        Some(2),
        "an index of two: {raw}"
    );

    let arch_of = |store: &str, image: &str| -> String {
        let (ok, out, err) = kiln(dir.path(), store, &["inspect", image]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["Architecture"].as_str().unwrap_or_default().to_owned()
    };
    // kiln pull: the host's platform by default, the asked one with --platform.
    let (ok, out, err) = kiln(dir.path(), "b", &["pull", &list]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("linux/{host}")), "{out}");
    assert_eq!(arch_of("b", &list), host);
    let (ok, _, err) = kiln(
        dir.path(),
        "c",
        &["pull", "--platform", &format!("linux/{other}"), &list],
    );
    assert!(ok, "{err}");
    assert_eq!(arch_of("c", &list), other);
    let (ok, _, err) = kiln(
        dir.path(),
        "c",
        &["pull", "--platform", "linux/s390x", &list],
    );
    assert!(
        !ok && err.contains("s390x") && err.contains(host) && err.contains(other),
        "a missing platform names the ones there are: {err}"
    );

    // FROM an index, in a build for either platform.
    dir.write("child/Dockerfile", format!("FROM {list}\n"));
    for (store, arch) in [("d", host), ("e", other)] {
        let (ok, _, err) = kiln(
            dir.path(),
            store,
            &[
                "build",
                "--platform",
                &format!("linux/{arch}"),
                "-t",
                "child",
                "child",
            ],
        );
        assert!(ok, "{err}");
        assert_eq!(
            util::images::tree(&dir.path().join(store), "child")["arch.txt"].content,
            arch.as_bytes(),
            "{arch}"
        );
        assert_eq!(arch_of(store, "child"), arch);
    }
}

/// `--cache-to type=registry` on one store, `--cache-from` on an empty one: every step hits
/// and the image is the same; a changed step downloads only the layers of the steps before it
/// (counted in the registry's access log). `type=inline` does the same through the image.
#[test]
fn build_cache_shared_through_a_registry() {
    let Some(reg) = Registry::start() else { return };
    let dir = TestDir::new("registry-cache");
    dir.write(
        "ctx/Dockerfile",
        "FROM scratch AS tools\nCOPY tool /tool\n\
         FROM scratch\nCOPY a /a\nCOPY b /b\nENV MODE=ci\nCOPY --from=tools /tool /tool\nCOPY c /c\n",
    );
    for f in ["a", "b", "c", "tool"] {
        dir.write(&format!("ctx/{f}"), format!("{f}\n").repeat(1000));
    }
    let cache = reg.image("cache/app:1");
    let build = |store: &str, args: &[&str]| {
        let mut all = vec!["build", "--explain-cache", "-t", "app"];
        all.extend_from_slice(args);
        all.push("ctx");
        let (ok, _, err) = kiln(dir.path(), store, &all);
        assert!(ok, "{err}");
        let id = err
            .lines()
            .find_map(|l| l.strip_prefix("writing image "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        let misses: Vec<String> = err
            .lines()
            .filter_map(|l| l.split_once(" cache miss: ").map(|(_, r)| r.to_owned()))
            .collect();
        let hits = err.lines().filter(|l| l.ends_with(" CACHED")).count();
        (id, hits, misses, err)
    };
    let to = format!("type=registry,ref={cache},mode=max");
    let from = format!("type=registry,ref={cache}");
    let (id_a, _, _, err) = build("a", &["--cache-to", &to]);
    assert!(err.contains("cache: 6 steps to"), "{err}");

    let (id_b, hits, misses, err) = build("b", &["--cache-from", &from]);
    assert_eq!((hits, misses.len()), (6, 0), "{err}");
    assert_eq!(id_b, id_a, "same steps, same times: the same image");

    // The last COPY changes: its layer is not downloaded, the others are.
    let gets = || reg.requests("GET", "/v2/cache/app/blobs/");
    let before = gets();
    dir.write("ctx/c", "changed\n");
    let (_, hits, misses, err) = build("c", &["--cache-from", &from]);
    assert_eq!(hits, 5, "{err}");
    assert_eq!(misses, ["no earlier build of this step"], "{err}");
    assert_eq!(
        gets() - before,
        4,
        "the cache list and the layers of a, b and tool; not c's:\n{}",
        reg.log_tail(12)
    );

    // A cache that is not there yet is a warning, not a failure.
    let (_, _, _, err) = build("d", &["--cache-from", &reg.image("cache/none:1")]);
    assert!(err.contains("WARNING: --cache-from"), "{err}");

    // Inline: the pushed image carries its own cache.
    let image = reg.image("team/inline:1");
    let (ok, _, err) = kiln(
        dir.path(),
        "e",
        &[
            "build",
            "-t",
            &image,
            "--push",
            "--cache-to",
            "type=inline",
            "ctx",
        ],
    );
    assert!(ok, "{err}");
    let (_, hits, misses, err) = build("f", &["--cache-from", &image]);
    // Inline carries the final image's steps only (mode=min): the tools stage runs again.
    assert_eq!((hits, misses.len()), (5, 1), "{err}");
    assert!(
        err.contains("[tools 1/1] COPY tool /tool\n#1 cache miss"),
        "{err}"
    );
}

/// `kiln pull` and `kiln push` draw a bar per blob on a terminal (run under `script`, which
/// gives them one) and print a line per blob otherwise.
#[test]
fn transfer_progress_bars_on_a_terminal_lines_otherwise() {
    let Some(reg) = Registry::start() else { return };
    if !util::tools::require_tool("script") {
        return;
    }
    let dir = TestDir::new("registry-progress");
    dir.write(
        "ctx/Dockerfile",
        "FROM scratch\nCOPY big /big\nCOPY small /small\n",
    );
    let big: Vec<u8> = (0..3_000_000u64).map(|i| (i * 7919 % 251) as u8).collect();
    dir.write("ctx/big", &big);
    dir.write("ctx/small", "small\n");
    let (ok, _, err) = kiln(dir.path(), "a", &["build", "-q", "-t", "app", "ctx"]);
    assert!(ok, "{err}");
    let dest = reg.image("team/progress:1");
    let in_terminal = |store: &str, args: &str| {
        let cmd = format!(
            "{} --root {} {args}",
            kiln_bin().display(),
            dir.path().join(store).display()
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{cmd}:\n{text}");
        text
    };
    let pushed = in_terminal("a", &format!("push app {dest}"));
    assert!(pushed.contains("\x1b[2K"), "redrawn lines: {pushed:?}");
    assert!(pushed.contains("100%"), "{pushed:?}");
    assert!(pushed.matches("uploaded\r\n").count() >= 3, "{pushed:?}");
    let pulled = in_terminal("b", &format!("pull {dest}"));
    assert!(
        pulled.contains("\x1b[2K") && pulled.contains("downloaded"),
        "{pulled:?}"
    );

    // Not a terminal: plain lines, no escape sequences.
    let (ok, _, err) = kiln(dir.path(), "c", &["pull", &dest]);
    assert!(ok, "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
    assert_eq!(err.matches(": downloading ").count(), 3, "{err}");
    assert_eq!(err.matches(": downloaded\n").count(), 3, "{err}");
    // -q: nothing but the digest.
    let (ok, out, err) = kiln(dir.path(), "d", &["pull", "-q", &dest]);
    assert!(
        ok && err.is_empty() && out.trim().starts_with("sha256:"),
        "{err}"
    );
}
