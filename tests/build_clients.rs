//! Images built by kiln, handed to real clients: docker 20.10 (`docker load`, `docker run`),
//! podman, skopeo, and the OCI JSON schemas; and the image config compared with BuildKit's for
//! the same Dockerfile.

mod util;

#[path = "../crates/kiln-oci/tests/common/mod.rs"]
mod oci_common;

use kiln_oci::digest::Digest;
use kiln_oci::store::Store;
use serde_json::Value;
use std::path::Path;
use util::dockerd::Dockerd;
use util::podman::Podman;
use util::tools::{assert_success, require_tool};
use util::{kiln_bin, run, TestDir};

fn kiln(root: &Path, cwd: &Path, args: &[&str]) -> String {
    let (out, stdout, stderr) = run(std::process::Command::new(kiln_bin())
        .current_dir(cwd)
        .arg("--root")
        .arg(root)
        .args(args));
    assert!(out.status.success(), "kiln {args:?} failed:\n{stderr}");
    stdout
}

/// examples/genesis: FROM scratch, ADD busybox.tar.xz /, CMD ["sh"].
fn genesis(dir: &TestDir) -> Option<String> {
    let rootfs = util::fixtures::busybox_rootfs()?;
    std::fs::create_dir_all(dir.path().join("genesis")).unwrap();
    std::fs::copy(rootfs, dir.path().join("genesis/busybox.tar.xz")).unwrap();
    std::fs::copy(
        util::tools::workspace_root().join("examples/genesis/Dockerfile"),
        dir.path().join("genesis/Dockerfile"),
    )
    .unwrap();
    let id = kiln(
        &dir.path().join("store"),
        dir.path(),
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
    Some(id.trim().to_string())
}

#[test]
fn genesis_runs_in_docker_and_podman_and_reads_in_skopeo() {
    let dir = TestDir::new("clients");
    let Some(id) = genesis(&dir) else { return };
    let tar = dir.path().join("genesis.tar");

    if let Some(d) = Dockerd::start() {
        assert_success(&d.load(&tar), "docker load");
        let out = assert_success(&d.run("genesis", &["sh", "-c", "echo ok"]), "docker run");
        assert_eq!(out.trim(), "ok");
        let inspected = d.docker_ok(&["image", "inspect", "--format", "{{.Id}}", "genesis"]);
        assert_eq!(inspected.trim(), id, "docker sees kiln's image ID");
        // The gzip variant of the same tarball loads too.
        kiln(
            &dir.path().join("store"),
            dir.path(),
            &[
                "save",
                "--compression",
                "gzip",
                "-o",
                "genesis-gz.tar",
                "genesis",
            ],
        );
        assert_success(&d.docker(&["rmi", "genesis"]), "docker rmi");
        assert_success(
            &d.load(&dir.path().join("genesis-gz.tar")),
            "docker load (gzip layers)",
        );
        let out = assert_success(&d.run("genesis", &["sh", "-c", "echo gz"]), "docker run");
        assert_eq!(out.trim(), "gz");
    }

    if let Some(p) = Podman::new() {
        assert_success(&p.load(&tar), "podman load");
        let out = assert_success(&p.run("genesis", &["sh", "-c", "echo ok"]), "podman run");
        assert_eq!(out.trim(), "ok");
    }

    if require_tool("skopeo") {
        for transport in ["docker-archive", "oci-archive"] {
            let out = util::tools::skopeo(&[
                "inspect",
                "--raw",
                &format!("{transport}:{}", tar.display()),
            ]);
            assert_success(&out, &format!("skopeo inspect {transport}"));
        }
        let store = dir.path().join("store");
        let out = util::tools::skopeo(&[
            "inspect",
            &format!("oci:{}:docker.io/library/genesis:latest", store.display()),
        ]);
        let v: Value =
            serde_json::from_str(&assert_success(&out, "skopeo inspect oci: of the store"))
                .unwrap();
        assert_eq!(v["Architecture"], "amd64");
        assert_eq!(v["Layers"].as_array().unwrap().len(), 1);
    }
}

#[test]
fn documents_kiln_writes_validate_against_the_oci_schemas() {
    let dir = TestDir::new("schemas");
    dir.write(
        "ctx/Dockerfile",
        "FROM scratch\nCOPY a /a\nLABEL x=y\nENV A=1\nEXPOSE 80\nVOLUME /v\nHEALTHCHECK CMD [\"true\"]\nCMD [\"/a\"]\n",
    );
    dir.write("ctx/a", "a");
    let root = dir.path().join("store");
    kiln(&root, dir.path(), &["build", "-t", "schema:1", "ctx"]);
    let schemas = oci_common::OciSchemas::new();
    let check = |mt: &str, bytes: &[u8], what: &str| {
        if let Err(e) = schemas.validate(mt, bytes) {
            panic!("{what} fails the {mt} schema: {e}");
        }
    };
    check(
        "application/vnd.oci.image.index.v1+json",
        &std::fs::read(root.join("index.json")).unwrap(),
        "store index.json",
    );
    check(
        "application/vnd.oci.layout.header.v1+json",
        &std::fs::read(root.join("oci-layout")).unwrap(),
        "oci-layout",
    );
    let store = Store::open(&root).unwrap();
    let m = util::images::manifest_of(&root, "schema:1");
    let manifest = store.read_blob(&m, 1 << 20).unwrap();
    check(
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
        "manifest",
    );
    let parsed: Value = serde_json::from_slice(&manifest).unwrap();
    let config = Digest::from_hex(
        parsed["config"]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    )
    .unwrap();
    check(
        "application/vnd.oci.image.config.v1+json",
        &store.read_blob(&config, 1 << 20).unwrap(),
        "config",
    );
    // The OCI outputs too.
    kiln(
        &root,
        dir.path(),
        &["build", "-q", "--output", "type=oci-dir,dest=layout", "ctx"],
    );
    check(
        "application/vnd.oci.image.index.v1+json",
        &std::fs::read(dir.path().join("layout/index.json")).unwrap(),
        "oci-dir index.json",
    );
    if require_tool("umoci") {
        let out = util::tools::umoci(&[
            "stat",
            "--image",
            &format!("{}:latest", dir.path().join("layout").display()),
        ]);
        // The oci-dir output of an untagged build names nothing; a tagged one must stat.
        let _ = out;
        kiln(
            &root,
            dir.path(),
            &[
                "build",
                "-q",
                "-t",
                "named:v1",
                "--output",
                "type=oci-dir,dest=layout2",
                "ctx",
            ],
        );
        let out = util::tools::umoci(&[
            "stat",
            "--image",
            &format!("{}:v1", dir.path().join("layout2").display()),
        ]);
        assert_success(&out, "umoci stat of the oci-dir output");
    }
}

/// The Config docker shows for an image, without the fields dockerd fills per image.
fn docker_config(d: &Dockerd, image: &str) -> Value {
    let out = d.docker_ok(&["image", "inspect", "--format", "{{json .Config}}", image]);
    let mut v: Value = serde_json::from_str(out.trim()).unwrap();
    v.as_object_mut().unwrap().remove("Image");
    v
}

#[test]
fn config_matches_buildkit_for_every_metadata_instruction() {
    let Some(d) = Dockerd::start() else { return };
    let dir = TestDir::new("vs-buildkit");
    let dockerfile = "FROM scratch\nLABEL a=1 \"b c\"=\"d e\"\nMAINTAINER kiln <k@example.com>\nENV PATH=/usr/bin:/bin GREETING=\"hello world\"\n\
                      EXPOSE 80 53/udp 7000-7001\nVOLUME /data\nVOLUME [\"/logs\"]\nUSER 1000:1000\nWORKDIR /app\nWORKDIR sub\n\
                      STOPSIGNAL SIGQUIT\nHEALTHCHECK --interval=30s --timeout=5s --start-period=1s --retries=3 CMD [\"true\"]\n\
                      SHELL [\"/bin/ash\", \"-c\"]\nONBUILD COPY . /src\nENTRYPOINT [\"/bin/app\"]\nCMD run --fast\nARG V=1\n";
    dir.write("ctx/Dockerfile", dockerfile);
    let out = d.buildkit_build(
        &dir.path().join("ctx"),
        &dir.path().join("ctx/Dockerfile"),
        "bk:1",
        &[],
    );
    assert_success(&out, "BuildKit build");
    kiln(
        &dir.path().join("store"),
        dir.path(),
        &["build", "-t", "kl:1", "-o", "kl.tar", "ctx"],
    );
    assert_success(&d.load(&dir.path().join("kl.tar")), "docker load");
    let (bk, kl) = (docker_config(&d, "bk:1"), docker_config(&d, "kl:1"));
    let keys: std::collections::BTreeSet<&String> = bk
        .as_object()
        .unwrap()
        .keys()
        .chain(kl.as_object().unwrap().keys())
        .collect();
    let mut diffs = Vec::new();
    for k in keys {
        if bk.get(k) != kl.get(k) {
            diffs.push(format!(
                "{k}: BuildKit {:?} vs kiln {:?}",
                bk.get(k),
                kl.get(k)
            ));
        }
    }
    println!(
        "compared {} Config fields with BuildKit",
        bk.as_object().unwrap().len()
    );
    assert!(
        diffs.is_empty(),
        "Config differs from BuildKit's:\n{}",
        diffs.join("\n")
    );
    let author = |img: &str| d.docker_ok(&["image", "inspect", "--format", "{{.Author}}", img]);
    assert_eq!(author("bk:1"), author("kl:1"));
}

/// docs/ko/quickstart.md, step by step: examples/first-image builds, loads and serves its page.
#[test]
fn the_quickstart_image_serves_its_page() {
    let dir = TestDir::new("quickstart");
    let Some(rootfs) = util::fixtures::busybox_rootfs() else {
        return;
    };
    let ctx = dir.path().join("first-image");
    std::fs::create_dir_all(&ctx).unwrap();
    let example = util::tools::workspace_root().join("examples/first-image");
    for f in ["Dockerfile", "index.html"] {
        std::fs::copy(example.join(f), ctx.join(f)).unwrap();
    }
    std::fs::copy(rootfs, ctx.join("busybox.tar.xz")).unwrap();
    let root = dir.path().join("store");
    kiln(&root, dir.path(), &["check", "first-image"]);
    kiln(
        &root,
        dir.path(),
        &["build", "-t", "first-image:1.0", "first-image"],
    );
    kiln(
        &root,
        dir.path(),
        &["save", "-o", "first-image.tar", "first-image:1.0"],
    );
    let Some(d) = Dockerd::start() else { return };
    assert_success(&d.load(&dir.path().join("first-image.tar")), "docker load");
    // The CMD runs httpd in the foreground; start it in the background here and fetch the page.
    let out = d.run(
        "first-image:1.0",
        &[
            "sh",
            "-c",
            "httpd -p 8080 -h /www && sleep 0.5 && wget -qO- http://127.0.0.1:8080/",
        ],
    );
    let page = assert_success(&out, "docker run");
    assert!(page.contains("Hello from my first kiln image"), "{page}");
    let user = d.docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{.Config.WorkingDir}}",
        "first-image:1.0",
    ]);
    assert_eq!(user.trim(), "65534:65534 /www");
}
