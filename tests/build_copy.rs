//! `kiln build` without RUN: COPY/ADD rules, metadata instructions, and hostile inputs.
//! Each test builds into its own store and reads the result back through kiln-oci.

mod util;

use kiln_oci::layer::EntryKind;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use util::images::{tree, FileInfo};
use util::{run, TestDir};

/// Runs `kiln --root <dir>/store build -t name <args> .` in `dir`.
fn build(dir: &TestDir, name: &str, extra: &[&str]) -> (bool, String, String) {
    let root = dir.path().join("store");
    let mut args = vec!["--root", root.to_str().unwrap(), "build", "-t", name];
    args.extend_from_slice(extra);
    args.push("ctx");
    let (out, stdout, stderr) = run(&mut dir.kiln(&args));
    (out.status.success(), stdout, stderr)
}

fn store(dir: &TestDir) -> PathBuf {
    dir.path().join("store")
}

fn file<'a>(t: &'a std::collections::BTreeMap<String, FileInfo>, p: &str) -> &'a FileInfo {
    t.get(p)
        .unwrap_or_else(|| panic!("{p} missing; have {:?}", t.keys().collect::<Vec<_>>()))
}

/// Makes a tar with Python's tarfile (hand-made members, including hostile ones).
fn python_tar(out: &Path, script: &str) {
    let code = format!(
        "import tarfile, io, sys\nt = tarfile.open(sys.argv[1], 'w')\n\
         def f(name, data=b'x', **kw):\n    i = tarfile.TarInfo(name); i.size = len(data)\n    \
         [setattr(i, k, v) for k, v in kw.items()]\n    t.addfile(i, io.BytesIO(data))\n\
         def l(name, target, kind=tarfile.SYMTYPE):\n    i = tarfile.TarInfo(name); i.type = kind; i.linkname = target; t.addfile(i)\n\
         def d(name):\n    i = tarfile.TarInfo(name); i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)\n\
         {script}\nt.close()\n"
    );
    let st = Command::new("python3")
        .arg("-c")
        .arg(code)
        .arg(out)
        .status()
        .expect("python3");
    assert!(st.success());
}

#[test]
fn metadata_instructions_reach_the_config() {
    let dir = TestDir::new("meta");
    dir.write(
        "ctx/Dockerfile",
        "FROM scratch\nLABEL a=1 \"b c\"=\"d e\"\nMAINTAINER kiln <k@example.com>\n\
         ENV PATH=/usr/bin:/bin GREETING=\"hello world\"\nENV GREETING=hi\nEXPOSE 80 53/udp 7000-7001\n\
         VOLUME /data\nVOLUME [\"/logs\"]\nUSER 1000:1000\nWORKDIR /app\nWORKDIR sub\nSTOPSIGNAL SIGQUIT\n\
         HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD [\"true\"]\nSHELL [\"/bin/ash\", \"-c\"]\n\
         ONBUILD COPY . /src\nCMD [\"--old\"]\nENTRYPOINT [\"/bin/app\"]\nCMD run --fast\nARG V=1\n",
    );
    let (ok, _, err) = build(&dir, "meta:1", &["--label", "from-cli=yes"]);
    assert!(ok, "{err}");
    for step in ["#1 [1/18] LABEL a=1", "#10 [10/18] WORKDIR sub", "DONE"] {
        assert!(err.contains(step), "progress lacks {step:?}:\n{err}");
    }
    let (out, stdout, _) =
        run(&mut dir.kiln(&["--root", store(&dir).to_str().unwrap(), "inspect", "meta:1"]));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let c = &v[0]["Config"];
    assert_eq!(
        c["Labels"],
        serde_json::json!({"a": "1", "b c": "d e", "from-cli": "yes"})
    );
    assert_eq!(
        c["Env"],
        serde_json::json!(["PATH=/usr/bin:/bin", "GREETING=hi"])
    );
    assert_eq!(
        c["ExposedPorts"],
        serde_json::json!({"53/udp": {}, "7000/tcp": {}, "7001/tcp": {}, "80/tcp": {}})
    );
    assert_eq!(c["Volumes"], serde_json::json!({"/data": {}, "/logs": {}}));
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["WorkingDir"], "/app/sub");
    assert_eq!(c["StopSignal"], "SIGQUIT");
    assert_eq!(
        c["Healthcheck"],
        serde_json::json!({"Test": ["CMD", "true"], "Interval": 30_000_000_000u64, "Timeout": 5_000_000_000u64, "Retries": 3})
    );
    assert_eq!(c["Shell"], serde_json::json!(["/bin/ash", "-c"]));
    assert_eq!(c["OnBuild"], serde_json::json!(["COPY . /src"]));
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/app"]));
    assert_eq!(
        c["Cmd"],
        serde_json::json!(["/bin/ash", "-c", "run --fast"]),
        "shell form runs through SHELL"
    );
    assert_eq!(v[0]["Author"], "kiln <k@example.com>");
    assert_eq!(v[0]["RepoTags"], serde_json::json!(["meta:1"]));
    assert_eq!(v[0]["Os"], "linux");
    let history = v[0]["History"].as_array().unwrap();
    assert_eq!(history.len(), 17, "every instruction but ARG is recorded");
    let layers: Vec<bool> = history
        .iter()
        .map(|h| h["empty_layer"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(
        layers.iter().filter(|e| !**e).count(),
        2,
        "only the two WORKDIRs made layers"
    );
    assert_eq!(v[0]["RootFS"]["Layers"].as_array().unwrap().len(), 2);
    // WORKDIR directories are created owned by the USER in effect.
    let t = tree(&store(&dir), "meta:1");
    assert_eq!(
        (
            file(&t, "app").uid,
            file(&t, "app/sub").gid,
            file(&t, "app/sub").kind.clone()
        ),
        (1000, 1000, EntryKind::Dir)
    );
}

#[test]
fn entrypoint_resets_an_inherited_cmd_and_onbuild_triggers_run() {
    let dir = TestDir::new("onbuild");
    dir.write(
        "ctx/Dockerfile",
        "FROM scratch\nCMD [\"base\"]\nONBUILD COPY trigger.txt /from-trigger\nONBUILD LABEL t=1\n",
    );
    dir.write("ctx/trigger.txt", "t");
    let (ok, _, err) = build(&dir, "base:1", &[]);
    assert!(ok, "{err}");
    dir.write("ctx/Dockerfile", "FROM base:1\nENTRYPOINT [\"/x\"]\n");
    let (ok, _, err) = build(&dir, "child:1", &[]);
    assert!(ok, "{err}");
    let (_, stdout, _) = run(&mut dir.kiln(&[
        "--root",
        store(&dir).to_str().unwrap(),
        "inspect",
        "child:1",
    ]));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v[0]["Config"]["Cmd"],
        serde_json::Value::Null,
        "ENTRYPOINT clears the base's CMD"
    );
    assert_eq!(
        v[0]["Config"]["OnBuild"],
        serde_json::Value::Null,
        "triggers are consumed"
    );
    assert_eq!(v[0]["Config"]["Labels"]["t"], "1");
    let t = tree(&store(&dir), "child:1");
    assert_eq!(file(&t, "from-trigger").content, b"t");
}

fn copy_context(dir: &TestDir) {
    dir.write("ctx/a.txt", "a");
    dir.write("ctx/b.txt", "bb");
    dir.write("ctx/src/main.go", "package main");
    dir.write("ctx/src/sub/x.go", "x");
    dir.write("ctx/docs/README.md", "readme");
    dir.write("ctx/docs/guide.txt", "guide");
    dir.write("ctx/ignored.log", "no");
    dir.write("ctx/.dockerignore", "*.log\n");
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("ctx/passwd-link")).unwrap();
    std::fs::hard_link(
        dir.path().join("ctx/a.txt"),
        dir.path().join("ctx/a-hard.txt"),
    )
    .unwrap();
}

#[test]
fn copy_follows_dockers_rules() {
    let dir = TestDir::new("copy");
    copy_context(&dir);
    dir.write(
        "ctx/Dockerfile",
        "FROM scratch\nCOPY a.txt /dst/file\nCOPY a.txt b.txt /multi/\nCOPY src /contents\nCOPY *.txt /wild/\n\
         WORKDIR /w\nCOPY a.txt rel/\nCOPY --chown=10:20 --chmod=0600 a.txt /owned\n\
         COPY --chmod=u=rwX,go=rX src /sym/\nCOPY --exclude=*.md docs /docs/\nCOPY --parents src/sub/x.go /p/\n\
         COPY passwd-link /link\nCOPY a.txt a-hard.txt /hl/\nCOPY . /all/\n",
    );
    let (ok, _, err) = build(&dir, "copy:1", &[]);
    assert!(ok, "{err}");
    let t = tree(&store(&dir), "copy:1");
    assert_eq!(file(&t, "dst/file").content, b"a");
    assert_eq!(
        (
            file(&t, "multi/a.txt").content.as_slice(),
            file(&t, "multi/b.txt").content.as_slice()
        ),
        (&b"a"[..], &b"bb"[..])
    );
    assert_eq!(
        file(&t, "contents/main.go").content,
        b"package main",
        "a directory's contents, not the directory"
    );
    assert!(t.contains_key("contents/sub/x.go") && !t.contains_key("contents/src"));
    assert!(
        t.contains_key("wild/a.txt")
            && t.contains_key("wild/b.txt")
            && t.contains_key("wild/a-hard.txt")
    );
    assert_eq!(file(&t, "w/rel/a.txt").content, b"a", "relative to WORKDIR");
    let owned = file(&t, "owned");
    assert_eq!((owned.uid, owned.gid, owned.mode), (10, 20, 0o600));
    assert_eq!(
        (file(&t, "sym/main.go").mode, file(&t, "sym/sub").mode),
        (0o644, 0o755)
    );
    assert!(
        t.contains_key("docs/guide.txt") && !t.contains_key("docs/README.md"),
        "--exclude"
    );
    assert!(t.contains_key("p/src/sub/x.go"), "--parents keeps the path");
    assert_eq!(
        file(&t, "link").kind,
        EntryKind::Symlink("/etc/passwd".into()),
        "a context symlink is copied as a link"
    );
    let hl = [
        file(&t, "hl/a.txt").kind.clone(),
        file(&t, "hl/a-hard.txt").kind.clone(),
    ];
    assert!(
        hl.contains(&EntryKind::File) && hl.iter().any(|k| matches!(k, EntryKind::Hardlink(_))),
        "{hl:?}"
    );
    assert!(!t.contains_key("all/ignored.log"), ".dockerignore applies");
    assert!(t.contains_key("all/Dockerfile"));
    let a = file(&t, "all/a.txt");
    assert_eq!((a.uid, a.gid), (0, 0), "context files become root-owned");
}

#[test]
fn copy_errors_are_clear() {
    let dir = TestDir::new("copy-errors");
    copy_context(&dir);
    for (df, want) in [
        (
            "FROM scratch\nCOPY missing.txt /x\n",
            "\"missing.txt\" not found in the build context or excluded by .dockerignore",
        ),
        (
            "FROM scratch\nCOPY ignored.log /x\n",
            "\"ignored.log\" not found in the build context",
        ),
        (
            "FROM scratch\nCOPY a.txt b.txt /nodir\n",
            "the destination must be a directory and end with a /",
        ),
        (
            "FROM scratch\nCOPY --chown=nobody a.txt /x\n",
            "unable to find user nobody: no matching entries in passwd file",
        ),
        (
            "FROM scratch\nCOPY a.txt /f\nCOPY b.txt /f/x\n",
            "/f is not a directory",
        ),
        (
            "FROM scratch\nRUN --security=insecure true\n",
            "RUN --security=insecure is not supported",
        ),
        (
            "FROM nosuchimage:1\n",
            "image nosuchimage:1 not found in the store",
        ),
    ] {
        dir.write("ctx/Dockerfile", df);
        let (ok, _, err) = build(&dir, "bad:1", &["--pull", "never"]);
        assert!(!ok, "{df} should fail");
        assert!(err.contains(want), "{df}: expected {want:?} in\n{err}");
        assert!(
            err.contains("--> ctx/Dockerfile:"),
            "{df}: no location in\n{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let (_, stdout, _) =
        run(&mut dir.kiln(&["--root", store(&dir).to_str().unwrap(), "images", "-q"]));
    assert_eq!(stdout, "", "failed builds tag nothing");
}

#[test]
fn add_extracts_local_archives_of_every_compression() {
    let dir = TestDir::new("add");
    let payload = dir.path().join("payload");
    std::fs::create_dir_all(payload.join("bin")).unwrap();
    std::fs::write(payload.join("bin/tool"), "#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("tool", payload.join("bin/alias")).unwrap();
    std::fs::create_dir_all(dir.path().join("ctx")).unwrap();
    let mut df = String::from("FROM scratch\n");
    for (name, flag) in [
        ("p.tar", ""),
        ("p.tar.gz", "-z"),
        ("p.tar.bz2", "-j"),
        ("p.tar.xz", "-J"),
        ("p.tar.zst", "--zstd"),
    ] {
        let mut cmd = Command::new("tar");
        cmd.arg("-c")
            .arg("--owner=7")
            .arg("--group=8")
            .arg("-C")
            .arg(&payload);
        if !flag.is_empty() {
            cmd.arg(flag);
        }
        let st = cmd
            .arg("-f")
            .arg(dir.path().join("ctx").join(name))
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        df.push_str(&format!("ADD {name} /{}/\n", name.replace('.', "_")));
    }
    df.push_str("ADD --unpack=false p.tar.gz /raw/\n");
    dir.write("ctx/Dockerfile", &df);
    let (ok, _, err) = build(&dir, "add:1", &[]);
    assert!(ok, "{err}");
    let t = tree(&store(&dir), "add:1");
    for d in ["p_tar", "p_tar_gz", "p_tar_bz2", "p_tar_xz", "p_tar_zst"] {
        let tool = file(&t, &format!("{d}/bin/tool"));
        assert_eq!(
            (tool.content.as_slice(), tool.uid, tool.gid),
            (&b"#!/bin/sh\n"[..], 7, 8),
            "{d}: archive owners are kept"
        );
        assert_eq!(
            file(&t, &format!("{d}/bin/alias")).kind,
            EntryKind::Symlink("tool".into())
        );
    }
    assert_eq!(
        file(&t, "raw/p.tar.gz").kind,
        EntryKind::File,
        "--unpack=false copies the archive"
    );
}

#[test]
fn hostile_archives_and_links_are_contained() {
    let dir = TestDir::new("hostile");
    dir.write("ctx/a.txt", "a");
    python_tar(&dir.path().join("ctx/dotdot.tar"), "f('../escape')");
    python_tar(
        &dir.path().join("ctx/through.tar"),
        "l('lnk', '/etc')\nf('lnk/passwd', b'owned')",
    );
    python_tar(
        &dir.path().join("ctx/hardlink.tar"),
        "l('h', '/etc/shadow', tarfile.LNKTYPE)",
    );
    python_tar(&dir.path().join("ctx/whiteout.tar"), "f('.wh.passwd')");
    for (tar, want) in [
        ("dotdot.tar", "archive entry \"../escape\" would land outside the destination"),
        ("through.tar", "archive entry \"lnk/passwd\" goes through the symlink \"lnk\" created by the same archive"),
        ("hardlink.tar", "is a hard link to \"etc/shadow\", which is not in the archive"),
        ("whiteout.tar", "uses the reserved whiteout prefix .wh."),
    ] {
        dir.write("ctx/Dockerfile", format!("FROM scratch\nADD {tar} /etc/\n"));
        let (ok, _, err) = build(&dir, "hostile:1", &[]);
        assert!(!ok && err.contains(want), "{tar}: expected {want:?} in\n{err}");
    }
    // A base that plants absolute and relative escape links: later COPYs land inside the image.
    python_tar(
        &dir.path().join("ctx/base.tar"),
        "d('usr')\nd('usr/bin')\nl('bin', 'usr/bin')\nl('escape', '/')\nl('up', '../../..')",
    );
    dir.write(
        "ctx/Dockerfile",
        "FROM scratch\nADD base.tar /\nCOPY a.txt /bin/\nCOPY a.txt /escape/etc/x\nCOPY a.txt /up/tmp/y\n",
    );
    let (ok, _, err) = build(&dir, "contained:1", &[]);
    assert!(ok, "{err}");
    let t = tree(&store(&dir), "contained:1");
    assert_eq!(
        file(&t, "usr/bin/a.txt").content,
        b"a",
        "COPY to /bin/ follows bin -> usr/bin inside the image"
    );
    assert_eq!(
        file(&t, "etc/x").content,
        b"a",
        "escape -> / resolves to the image root"
    );
    assert_eq!(
        file(&t, "tmp/y").content,
        b"a",
        ".. stops at the image root"
    );
    assert!(!Path::new("/etc/x").exists() && !Path::new("/tmp/y").exists());
    assert!(util::images::corrupt_blobs(&store(&dir)).is_empty());
}

/// Serves one file over HTTP on loopback for `requests` requests.
fn serve(body: &'static [u8], requests: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..requests {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(body);
        }
    });
    format!("http://{addr}/dl/tool.sh")
}

#[test]
fn add_url_with_checksum() {
    let dir = TestDir::new("add-url");
    let url = serve(b"echo downloaded\n", 2);
    let sum = "sha256:f1eb24846b77fd5a3b8e42af9b0f35bf4b95ffe8e0a52aee7f07faa2b5b7c1a6";
    dir.write(
        "ctx/Dockerfile",
        format!("FROM scratch\nADD --checksum={sum} {url} /opt/\n"),
    );
    let (ok, _, err) = build(&dir, "url:1", &[]);
    if ok {
        panic!("the placeholder checksum cannot match");
    }
    let actual = err
        .split("got ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect(&err)
        .to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    dir.write(
        "ctx/Dockerfile",
        format!("FROM scratch\nADD --checksum={actual} {url} /opt/\n"),
    );
    let (ok, _, err) = build(&dir, "url:1", &[]);
    assert!(ok, "{err}");
    let t = tree(&store(&dir), "url:1");
    let f = file(&t, "opt/tool.sh");
    assert_eq!(
        (f.content.as_slice(), f.mode, f.mtime),
        (&b"echo downloaded\n"[..], 0o600, 784_111_777)
    );
}
