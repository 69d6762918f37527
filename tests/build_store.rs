//! The store across builds: reproducible digests, crash safety, and the image commands.

mod util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::{kiln_bin, run, TestDir};

fn kiln_at(root: &Path, cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(kiln_bin());
    c.current_dir(cwd).arg("--root").arg(root).args(args);
    c
}

/// Runs kiln on the store at `root` from `cwd`; fails the test unless it succeeds. Returns stdout.
fn kiln_ok(root: &Path, cwd: &Path, args: &[&str]) -> String {
    let (out, stdout, stderr) = run(&mut kiln_at(root, cwd, args));
    assert!(out.status.success(), "kiln {args:?}: {stderr}");
    stdout
}

fn write_context(dir: &Path, stamp: &str) {
    std::fs::create_dir_all(dir.join("src/deep")).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY src /app/\nENV A=1\nWORKDIR /app\nCMD [\"/app/run\"]\n",
    )
    .unwrap();
    std::fs::write(dir.join("src/run"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(dir.join("src/deep/data.txt"), "data").unwrap();
    // Different mtimes in the two copies; SOURCE_DATE_EPOCH must hide them.
    let st = Command::new("touch")
        .arg("-d")
        .arg(stamp)
        .arg(dir.join("src/run"))
        .arg(dir.join("src/deep/data.txt"))
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn same_input_gives_the_same_digest_with_source_date_epoch() {
    let dir = TestDir::new("repro");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_context(&a, "2024-01-01 10:00");
    std::thread::sleep(Duration::from_millis(1100));
    write_context(&b, "2025-06-30 23:59");
    let mut ids = Vec::new();
    for (ctx, store) in [(&a, "store-a"), (&b, "store-b")] {
        let root = dir.path().join(store);
        let out = kiln_at(
            &root,
            dir.path(),
            &["build", "-q", "-t", "repro:1", ctx.to_str().unwrap()],
        )
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8(out.stdout).unwrap();
        assert!(
            id.starts_with("sha256:") && id.trim().len() == 71,
            "-q prints only the image ID: {id:?}"
        );
        let (_, inspect, _) = run(&mut kiln_at(&root, dir.path(), &["inspect", "repro:1"]));
        let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        assert_eq!(v[0]["Created"], "2023-11-14T22:13:20Z");
        ids.push((id, v[0]["ManifestDigest"].as_str().unwrap().to_string()));
    }
    assert_eq!(ids[0], ids[1], "image ID and manifest digest must match");
    // Without SOURCE_DATE_EPOCH the file times show through, so the digests differ.
    let out = kiln_at(
        &dir.path().join("store-c"),
        dir.path(),
        &["build", "-q", b.to_str().unwrap()],
    )
    .env_remove("SOURCE_DATE_EPOCH")
    .output()
    .unwrap();
    assert_ne!(String::from_utf8(out.stdout).unwrap(), ids[0].0);
}

#[test]
fn image_commands_work_like_dockers() {
    let dir = TestDir::new("imgcmds");
    let ctx = dir.path().join("ctx");
    write_context(&ctx, "2024-01-01 10:00");
    let root = dir.path().join("store");
    let k = |args: &[&str]| kiln_ok(&root, dir.path(), args);
    k(&[
        "build",
        "-t",
        "app:1",
        "-t",
        "localhost:5000/team/app:v2",
        "ctx",
    ]);
    let images = k(&["images"]);
    let lines: Vec<&str> = images.lines().collect();
    assert!(
        lines[0].starts_with("REPOSITORY")
            && lines[0].contains("IMAGE ID")
            && lines[0].ends_with("SIZE"),
        "{images}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("app ") && l.contains(" 1 ")),
        "{images}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("localhost:5000/team/app") && l.contains("v2")),
        "{images}"
    );
    let ids = k(&["images", "-q"]);
    assert_eq!(ids.lines().count(), 1, "two names, one image: {ids}");
    let id = ids.trim().to_string();
    assert_eq!(id.len(), 12);

    let hist = k(&["history", "app:1"]);
    assert!(
        hist.starts_with("IMAGE")
            && hist.contains("COPY src /app/ # buildkit")
            && hist.contains("ENV A=1"),
        "{hist}"
    );

    k(&["tag", &id, "other:latest"]);
    let v: serde_json::Value = serde_json::from_str(&k(&["inspect", "other"])).unwrap();
    assert_eq!(v[0]["RepoTags"].as_array().unwrap().len(), 3);
    assert!(v[0]["Id"].as_str().unwrap().contains(&id));

    let (out, _, err) = run(&mut kiln_at(&root, dir.path(), &["rmi", &id]));
    assert!(
        !out.status.success() && err.contains("has 3 names"),
        "{err}"
    );
    assert!(k(&["rmi", "other"]).contains("Untagged: other:latest"));
    let out = k(&["rmi", "-f", &id]);
    assert!(
        out.contains("Deleted: sha256:") && out.contains("Freed"),
        "{out}"
    );
    assert_eq!(k(&["images", "-q"]), "");
    assert!(k(&["prune"]).starts_with("Deleted 0 blobs"));
    let store_blobs = std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(store_blobs, 0, "nothing is left once no name reaches it");

    let (out, _, err) = run(&mut kiln_at(&root, dir.path(), &["inspect", "nope"]));
    assert!(
        !out.status.success() && err.contains("image \"nope\" not found"),
        "{err}"
    );
}

#[test]
fn killed_builds_leave_a_usable_store() {
    let dir = TestDir::new("crash");
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    // Enough data that a build takes a while, so kills land in the middle of writes.
    let big: Vec<u8> = (0..48u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(ctx.join("big.bin"), &big).unwrap();
    for i in 0..8 {
        std::fs::write(ctx.join(format!("f{i}.txt")), format!("{i}")).unwrap();
    }
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY big.bin /a\nCOPY *.txt /t/\nCOPY big.bin /b\nLABEL x=1\n",
    )
    .unwrap();
    let root = dir.path().join("store");
    // Calibrate: how long does one build take (the faster of two, page cache warm)?
    let mut full = Duration::MAX;
    for _ in 0..2 {
        let t = Instant::now();
        let st = kiln_at(&root, dir.path(), &["build", "-q", "-t", "warm:1", "ctx"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        full = full.min(t.elapsed());
    }
    let mut seed: u64 = 0x5eed;
    let mut killed = 0;
    // Somewhere in the first 90% of a build; when a build beats the kill (machine busier or
    // idler than at calibration), the window shrinks, so 20 kills always land mid-build.
    let mut window = full.as_micros() as u64 * 9 / 10;
    let mut attempts = 0;
    while killed < 20 && attempts < 100 {
        let i = attempts;
        attempts += 1;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(seed % (window + 1));
        // Vary the content so layers are new blobs each time.
        std::fs::write(ctx.join("f0.txt"), format!("run {i}")).unwrap();
        let mut child = kiln_at(
            &root,
            dir.path(),
            &["build", "-q", "-t", &format!("k{i}:1"), "ctx"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        } else {
            window = window * 3 / 4;
        }
        let _ = child.wait();
    }
    println!(
        "crash safety: {killed} of {attempts} builds killed mid-way (full build {:.0} ms)",
        full.as_secs_f64() * 1e3
    );
    assert!(
        killed >= 20,
        "too few kills landed ({killed}); the build is too fast for this test"
    );
    assert!(
        util::images::corrupt_blobs(&root).is_empty(),
        "a blob does not match its digest"
    );
    let out = kiln_at(&root, dir.path(), &["build", "-q", "-t", "after:1", "ctx"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, images, err) = run(&mut kiln_at(&root, dir.path(), &["images"]));
    assert!(out.status.success(), "{err}");
    assert!(
        images.contains("after") && images.contains("warm"),
        "{images}"
    );
    // Dead writers' temp files are removed once older than the store's grace period (which
    // covers the instant between creating a temp file and locking it); age them past it.
    for e in std::fs::read_dir(root.join("tmp")).unwrap() {
        let st = Command::new("touch")
            .arg("-d")
            .arg("2 hours ago")
            .arg(e.unwrap().path())
            .status()
            .unwrap();
        assert!(st.success());
    }
    let (out, pruned, _) = run(&mut kiln_at(&root, dir.path(), &["prune"]));
    assert!(out.status.success());
    println!("after the kills: {}", pruned.trim());
    assert!(util::images::corrupt_blobs(&root).is_empty());
    let left: Vec<String> = std::fs::read_dir(root.join("tmp"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "prune clears dead writers' temp files, left: {left:?}"
    );
}

#[test]
fn from_archives_and_layout_directories() {
    let dir = TestDir::new("from-transports");
    let ctx = dir.path().join("ctx");
    write_context(&ctx, "2024-01-01 10:00");
    let root = dir.path().join("store-a");
    let k = |root: &Path, args: &[&str]| kiln_ok(root, dir.path(), args);
    k(
        &root,
        &[
            "build",
            "-q",
            "-t",
            "base:1",
            "-o",
            "base.tar",
            "--output",
            "type=oci-dir,dest=layout",
            "ctx",
        ],
    );
    std::fs::write(ctx.join("extra.txt"), "extra").unwrap();
    let other = dir.path().join("store-b");
    for from in [
        "docker-archive:base.tar",
        "oci-archive:base.tar",
        "oci:layout:1",
        "oci:layout",
    ] {
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {from}\nCOPY extra.txt /extra.txt\n"),
        )
        .unwrap();
        k(&other, &["build", "-q", "-t", "child:1", "ctx"]);
        let t = util::images::tree(&other, "child:1");
        assert_eq!(
            t["app/run"].content, b"#!/bin/sh\necho hi\n",
            "{from}: the base's files are there"
        );
        assert_eq!(t["extra.txt"].content, b"extra", "{from}");
    }
    std::fs::write(ctx.join("Dockerfile"), "FROM oci:missing-dir\n").unwrap();
    let (out, _, err) = run(&mut kiln_at(&other, dir.path(), &["build", "ctx"]));
    assert!(
        !out.status.success() && err.contains("missing-dir/index.json"),
        "{err}"
    );
}

#[test]
fn save_load_and_import_round_trip() {
    let dir = TestDir::new("save-load");
    let ctx = dir.path().join("ctx");
    write_context(&ctx, "2024-01-01 10:00");
    let (a, b) = (dir.path().join("store-a"), dir.path().join("store-b"));
    let k = |root: &Path, args: &[&str]| kiln_ok(root, dir.path(), args);
    let id = k(&a, &["build", "-q", "-t", "app:1", "ctx"])
        .trim()
        .to_string();
    k(&a, &["save", "-o", "app.tar", "app:1"]);
    k(
        &a,
        &["save", "--format", "oci", "-o", "app.oci.tar", "app:1"],
    );
    assert_eq!(
        k(&b, &["load", "-i", "app.tar"]).trim(),
        "Loaded image: app:1"
    );
    let v: serde_json::Value = serde_json::from_str(&k(&b, &["inspect", "app:1"])).unwrap();
    assert_eq!(
        v[0]["Id"],
        id.as_str(),
        "the image ID survives save and load"
    );
    k(&b, &["rmi", "app:1"]);
    let out = kiln_at(&b, dir.path(), &["load"])
        .stdin(std::fs::File::open(dir.path().join("app.oci.tar")).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&k(&b, &["inspect", "app:1"])).unwrap();
    assert_eq!(v[0]["Id"], id.as_str());
    // import: a root filesystem tarball becomes a one-layer image.
    let st = Command::new("tar")
        .arg("-czf")
        .arg(dir.path().join("rootfs.tgz"))
        .arg("-C")
        .arg(&ctx)
        .arg("src")
        .status()
        .unwrap();
    assert!(st.success());
    let imported = k(&b, &["import", "rootfs.tgz", "imported:v1"]);
    assert!(imported.trim().starts_with("sha256:"), "{imported}");
    let t = util::images::tree(&b, "imported:v1");
    assert_eq!(t["src/run"].content, b"#!/bin/sh\necho hi\n");
    // Saving to a terminal is refused; bad input to load is an error, not a panic.
    let out = kiln_at(&b, dir.path(), &["load", "-i", "Dockerfile-does-not-exist"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    std::fs::write(
        dir.path().join("garbage.tar"),
        b"this is not a tarball at all",
    )
    .unwrap();
    let out = kiln_at(&b, dir.path(), &["load", "-i", "garbage.tar"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("error:") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn chown_by_name_uses_the_images_passwd_and_xattrs_survive() {
    let dir = TestDir::new("chown-names");
    let Some(rootfs) = util::fixtures::busybox_rootfs() else {
        return;
    };
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(rootfs, ctx.join("busybox.tar.xz")).unwrap();
    std::fs::write(ctx.join("f"), "f").unwrap();
    let has_xattr = xattr_set(&ctx.join("f"));
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nADD busybox.tar.xz /\nCOPY --chown=nobody:nogroup f /owned-by-name\nCOPY --chown=root f /root-owned\nCOPY f /bin/f-in-bin\n",
    )
    .unwrap();
    let root = dir.path().join("store");
    let (out, _, err) = run(&mut kiln_at(
        &root,
        dir.path(),
        &["build", "-t", "named:1", "ctx"],
    ));
    assert!(out.status.success(), "{err}");
    let t = util::images::tree(&root, "named:1");
    let f = &t["owned-by-name"];
    assert_eq!(
        (f.uid, f.gid),
        (65534, 65534),
        "nobody:nogroup from the image's passwd and group"
    );
    assert_eq!((t["root-owned"].uid, t["root-owned"].gid), (0, 0));
    if has_xattr {
        assert_eq!(
            f.xattrs.get("user.kiln").map(Vec::as_slice),
            Some(&b"kept"[..]),
            "xattrs are kept"
        );
    }
    assert!(t.contains_key("bin/f-in-bin"));
}

fn xattr_set(p: &Path) -> bool {
    Command::new("setfattr")
        .args(["-n", "user.kiln", "-v", "kept"])
        .arg(p)
        .status()
        .is_ok_and(|s| s.success())
        || Command::new("python3")
            .args([
                "-c",
                "import os,sys; os.setxattr(sys.argv[1], 'user.kiln', b'kept')",
            ])
            .arg(p)
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn local_output_is_the_final_root_filesystem() {
    let dir = TestDir::new("local-out");
    let ctx = dir.path().join("ctx");
    write_context(&ctx, "2024-01-01 10:00");
    let root = dir.path().join("store");
    let (out, _, err) = run(&mut kiln_at(
        &root,
        dir.path(),
        &[
            "build",
            "-t",
            "loc:1",
            "--output",
            "type=local,dest=rootfs",
            "ctx",
        ],
    ));
    assert!(out.status.success(), "{err}");
    let fs = dir.path().join("rootfs");
    assert_eq!(
        std::fs::read(fs.join("app/run")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        std::fs::read(fs.join("app/deep/data.txt")).unwrap(),
        b"data"
    );
    // Same tree as the image's layers say.
    let t = util::images::tree(&root, "loc:1");
    for (path, info) in &t {
        let md = std::fs::symlink_metadata(fs.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(md.mode() & 0o7777, info.mode, "{path}");
        assert_eq!(md.len() * u64::from(md.is_file()), info.size, "{path}");
    }
    // A non-empty destination is refused rather than clobbered.
    let (out, _, err) = run(&mut kiln_at(
        &root,
        dir.path(),
        &["build", "--output", "type=local,dest=rootfs", "ctx"],
    ));
    assert!(!out.status.success() && err.contains("rootfs"), "{err}");
}
