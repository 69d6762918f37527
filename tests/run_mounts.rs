//! `RUN --mount`: cache, bind, tmpfs, secret and ssh mounts, built rootless by the unprivileged
//! `kilntest` user (the product's path), and the escapes of research/features.md §4 replayed.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use util::tools::{require_root, require_tool, TempRoot};
use util::unpriv::{unprivileged_user, UnprivUser};
use util::{kiln_bin, run, TestDir};

/// kiln as `user` (or as the test's own user) with `--root store`, in `cwd`.
fn kiln(user: Option<&UnprivUser>, cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = match user {
        Some(u) => u.command(kiln_bin()),
        None => Command::new(kiln_bin()),
    };
    cmd.current_dir(cwd)
        .arg("--root")
        .arg(cwd.join("store"))
        .args(args);
    let (out, stdout, stderr) = run(&mut cmd);
    (out.status.success(), stdout, stderr)
}

/// A work directory with the `genesis` image (busybox from scratch) in `store`, owned by the
/// unprivileged user. None (after the skip message) without root, setpriv or busybox.
struct Work {
    user: UnprivUser,
    dir: TempRoot,
}

impl Work {
    fn new(kind: &str) -> Option<Work> {
        let user = unprivileged_user()?;
        let dir = user.scratch_dir(kind);
        if !util::fixtures::busybox_context(&dir.join("genesis")) {
            return None;
        }
        user.chown(dir.path());
        let w = Work { user, dir };
        w.ok(&["build", "-q", "-t", "genesis", "genesis"]);
        Some(w)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a context `name` with `files` (path, content) and hands it to the user.
    fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.path().join(name);
        for (p, content) in files {
            let f = ctx.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, content).unwrap();
        }
        self.user.chown(&ctx);
        ctx
    }

    fn kiln(&self, args: &[&str]) -> (bool, String, String) {
        kiln(Some(&self.user), self.path(), args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kiln(args);
        assert!(ok, "kiln {args:?} failed:\n{err}");
        assert!(
            !err.contains("WARNING"),
            "a full subuid map needs no warning: {err}"
        );
        out + &err
    }

    fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    /// The image's files, and every path the layers on top of `genesis` name.
    fn image(&self, name: &str) -> (BTreeMap<String, util::images::FileInfo>, Vec<String>) {
        let tree = util::images::tree(&self.store(), name);
        let base = util::images::layers(&self.store(), "genesis").len();
        let paths = util::images::layers(&self.store(), name)
            .into_iter()
            .skip(base)
            .flatten()
            .map(|(e, _)| e.path.to_string_lossy().trim_end_matches('/').to_string())
            .collect();
        (tree, paths)
    }

    /// The instance directories of a cache id (its key is the id alone without from/owner).
    fn cache_dir(&self, id: &str) -> PathBuf {
        self.store()
            .join("cache-mounts")
            .join(kiln_oci::digest::Digest::of(id.as_bytes()).hex())
    }

    /// Nothing left behind: no mounts below the work dir, nothing in the store's tmp/.
    fn assert_clean(&self) {
        assert!(
            util::tools::mounts_under(self.path()).is_empty(),
            "mounts left: {:?}",
            util::tools::mounts_under(self.path())
        );
        let left: Vec<_> = std::fs::read_dir(self.store().join("tmp"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in tmp/: {left:?}");
    }
}

fn content(tree: &BTreeMap<String, util::images::FileInfo>, path: &str) -> String {
    let f = tree
        .get(path)
        .unwrap_or_else(|| panic!("{path} is not in the image"));
    String::from_utf8_lossy(&f.content).into_owned()
}

#[test]
fn cache_mount_persists_between_builds_and_stays_out_of_the_image() {
    let Some(w) = Work::new("cache") else { return };
    w.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM genesis\n\
             RUN --mount=type=cache,target=/var/cache/app \\\n \
               echo run >> /var/cache/app/runs && wc -l < /var/cache/app/runs > /count\n\
             RUN --mount=type=cache,target=/tmp/owned,uid=1000,gid=1000,mode=0750 \\\n \
               stat -c '%u:%g %a' /tmp/owned > /owned && touch /tmp/owned/x\n\
             RUN --mount=type=cache,id=twice,target=/a,sharing=locked \\\n \
                 --mount=type=cache,id=twice,target=/b,sharing=locked \\\n \
                 --mount=type=cache,id=twice,target=/s,source=sub,sharing=locked \\\n \
               touch /a/x /s/y && test -e /b/x && test -e /a/sub/y && echo one-dir > /twice\n",
        )],
    );
    w.ok(&["build", "-t", "c:1", "ctx"]);
    // --no-cache: the step must run again to see what its first run left in the cache.
    w.ok(&["build", "--no-cache", "-t", "c:2", "ctx"]);
    let (first, _) = w.image("c:1");
    let (second, paths) = w.image("c:2");
    assert_eq!(content(&first, "count").trim(), "1");
    assert_eq!(
        content(&second, "count").trim(),
        "2",
        "the second build sees what the first wrote"
    );
    assert_eq!(content(&second, "owned").trim(), "1000:1000 750");
    assert_eq!(
        content(&second, "twice"),
        "one-dir\n",
        "one lock for a locked id mounted twice"
    );
    // Neither the mount points nor anything written through them is in a layer; /tmp, which
    // the image has, is not copied up either.
    for p in &paths {
        assert!(
            !p.starts_with("var")
                && !p.starts_with("tmp")
                && !p.ends_with("runs")
                && !["a", "b", "s"].contains(&p.as_str()),
            "{p} is in a layer"
        );
    }
    let runs = w.cache_dir("/var/cache/app").join("0/runs");
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\nrun\n");
    w.assert_clean();
    // The caches hold files of subordinate ids (uid 1000 inside); prune removes them anyway.
    let out = w.ok(&["prune", "--cache-mounts"]);
    assert!(out.contains("Deleted 3 cache mount directories"), "{out}");
    assert!(!runs.exists());
    w.ok(&["build", "--no-cache", "-t", "c:3", "ctx"]);
    assert_eq!(
        content(&w.image("c:3").0, "count").trim(),
        "1",
        "a pruned cache starts empty"
    );
}

#[test]
fn locked_cache_serializes_concurrent_builds_and_private_ones_do_not_share() {
    let Some(w) = Work::new("locked") else { return };
    for sharing in ["locked", "private"] {
        w.context(
            sharing,
            &[(
                "Dockerfile",
                &format!(
                    "FROM genesis\nARG N\n\
                     RUN --mount=type=cache,id={sharing},target=/c,sharing={sharing} \\\n \
                         --mount=type=cache,id=watch-{sharing},target=/w,sharing=shared \\\n \
                       echo start-$N >> /c/log && echo start-$N >> /w/log && sleep 1 \\\n \
                       && echo end-$N >> /c/log && echo end-$N >> /w/log\n"
                ),
            )],
        );
        let started = Instant::now();
        let builds: Vec<_> = ["a", "b"]
            .iter()
            .map(|n| {
                w.user
                    .command(kiln_bin())
                    .current_dir(w.path())
                    .arg("--root")
                    .arg(w.store())
                    .args(["build", "-q", "--build-arg", &format!("N={n}"), sharing])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for b in builds {
            let out = b.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let took = started.elapsed();
        let dir = w.cache_dir(sharing);
        if sharing == "locked" {
            let log = std::fs::read_to_string(dir.join("0/log")).unwrap();
            let lines: Vec<&str> = log.lines().collect();
            assert_eq!(lines.len(), 4, "{log}");
            for pair in lines.chunks(2) {
                assert_eq!(
                    pair[0].strip_prefix("start-"),
                    pair[1].strip_prefix("end-"),
                    "interleaved:\n{log}"
                );
            }
            assert!(
                took >= Duration::from_secs(2),
                "two 1 s steps under one lock took {took:?}"
            );
        } else {
            // A shared cache beside it saw whether the two steps overlapped; if they did, each
            // had a directory of its own.
            let watch =
                std::fs::read_to_string(w.cache_dir(&format!("watch-{sharing}")).join("0/log"))
                    .unwrap();
            let overlapped = watch
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("start-"));
            let logs: Vec<String> = (0..2)
                .filter_map(|n| std::fs::read_to_string(dir.join(format!("{n}/log"))).ok())
                .collect();
            let total: usize = logs.iter().map(|l| l.lines().count()).sum();
            assert_eq!(total, 4, "{logs:?}");
            if overlapped {
                assert_eq!(logs.len(), 2, "private steps shared a directory: {logs:?}");
                for l in &logs {
                    assert_eq!(l.lines().count(), 2, "{l}");
                }
            } else {
                eprintln!("note: the private builds did not overlap:\n{watch}");
            }
        }
    }
    w.assert_clean();
}

#[test]
fn tmpfs_and_bind_mounts_leave_nothing_in_the_layer_and_rw_writes_are_discarded() {
    let Some(w) = Work::new("bind") else { return };
    let ctx = w.context(
        "ctx",
        &[
            ("src/a.txt", "from the context\n"),
            ("src/sub/b.txt", "b\n"),
            ("src/secret.key", "ignored\n"),
            (".dockerignore", "src/*.key\n"),
            (
                "Dockerfile",
                "FROM genesis\nWORKDIR /work\n\
                 RUN --mount=type=tmpfs,target=/scratch,size=1m \\\n \
                   echo t > /scratch/f && grep -q ' /scratch tmpfs ' /proc/mounts && echo tmpfs > /tmpfs-ok\n\
                 RUN --mount=source=src,target=/src \\\n \
                   cp /src/a.txt /copied && ls /src > /listing && stat -c '%u:%g' /src/a.txt > /owner \\\n \
                   && if touch /src/new 2>/dev/null; then echo writable > /ro; else echo read-only > /ro; fi\n\
                 RUN --mount=source=src,target=src,rw \\\n \
                   echo changed > src/a.txt && echo new > src/new && rm -r src/sub && cat src/a.txt > /rw-saw\n\
                 RUN --mount=source=src,target=src ls src > /after-rw && cat src/a.txt >> /after-rw\n",
            ),
        ],
    );
    w.ok(&["build", "-t", "b:1", "ctx"]);
    let (tree, paths) = w.image("b:1");
    assert_eq!(content(&tree, "tmpfs-ok"), "tmpfs\n");
    assert_eq!(content(&tree, "copied"), "from the context\n");
    assert_eq!(
        content(&tree, "listing"),
        "a.txt\nsub\n",
        ".dockerignore holds"
    );
    assert_eq!(
        content(&tree, "owner"),
        "0:0\n",
        "context files show as root's"
    );
    assert_eq!(content(&tree, "ro"), "read-only\n");
    assert_eq!(content(&tree, "rw-saw"), "changed\n");
    assert_eq!(
        content(&tree, "after-rw"),
        "a.txt\nsub\nfrom the context\n",
        "rw writes are discarded"
    );
    for p in &paths {
        assert!(
            !p.starts_with("scratch") && !p.starts_with("src") && !p.starts_with("work/src"),
            "{p} is in a layer"
        );
    }
    assert!(tree.contains_key("work"), "WORKDIR made /work");
    assert_eq!(
        std::fs::read_to_string(ctx.join("src/a.txt")).unwrap(),
        "from the context\n",
        "the context on the host is untouched"
    );
    assert!(!ctx.join("src/new").exists() && ctx.join("src/sub/b.txt").exists());
    w.assert_clean();
}

#[test]
fn bind_from_another_stage_or_image() {
    let Some(w) = Work::new("from") else { return };
    w.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM genesis AS builder\n\
             RUN mkdir /out && echo built > /out/artifact && chown -R 1234:1234 /out\n\
             FROM genesis\n\
             RUN --mount=type=bind,from=builder,source=/out,target=/in \\\n \
               cp /in/artifact /artifact && stat -c '%u:%g' /in/artifact > /owner\n\
             RUN --mount=from=builder,source=/out,target=/in,rw rm /in/artifact && echo x > /in/y\n\
             RUN --mount=from=builder,target=/b ls /b/out > /still-there\n\
             RUN --mount=from=genesis,source=/bin,target=/bb /bb/echo image-bind > /image\n\
             RUN --mount=type=cache,id=seeded,from=builder,source=/out,target=/c \\\n \
               cat /c/artifact > /seeded && echo again >> /c/artifact && stat -c '%u' /c > /seed-owner\n",
        )],
    );
    w.ok(&["build", "-t", "f:0", "ctx"]);
    w.ok(&["build", "--no-cache", "-t", "f:1", "ctx"]);
    let (first, _) = w.image("f:0");
    assert_eq!(
        content(&first, "seeded"),
        "built\n",
        "a new cache starts as from/source"
    );
    let (tree, paths) = w.image("f:1");
    assert_eq!(
        content(&tree, "seeded"),
        "built\nagain\n",
        "and then persists"
    );
    assert_eq!(
        content(&tree, "seed-owner"),
        "1234\n",
        "it keeps the seed's owner"
    );
    assert_eq!(content(&tree, "artifact"), "built\n");
    assert_eq!(content(&tree, "owner"), "1234:1234\n", "the stage's owners");
    assert_eq!(content(&tree, "still-there"), "artifact\n");
    assert_eq!(content(&tree, "image"), "image-bind\n");
    for p in &paths {
        assert!(
            !p.starts_with("in") && !["b", "bb", "c"].contains(&p.as_str()),
            "{p} is in a layer"
        );
    }
    w.assert_clean();
}

/// Every file of a saved image tarball (layers are uncompressed tars in it, so their files'
/// bytes are in there as they are), plus the tarball itself, as (name, bytes).
fn saved_bytes(tar: &Path) -> Vec<(String, Vec<u8>)> {
    let dir = tar.with_extension("x");
    std::fs::create_dir_all(&dir).unwrap();
    util::tools::assert_success(
        &util::tools::output(Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(&dir)),
        "tar -x",
    );
    let mut out = vec![(tar.display().to_string(), std::fs::read(tar).unwrap())];
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn secrets_by_file_and_env_reach_the_step_and_nothing_else() {
    let Some(w) = Work::new("secret") else { return };
    let file_secret = format!("file-secret-{}-c0ffee", std::process::id());
    let env_secret = format!("env-secret-{}-beef", std::process::id());
    std::fs::write(w.path().join("secret.txt"), &file_secret).unwrap();
    w.user.chown(&w.path().join("secret.txt"));
    w.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM genesis\n\
             RUN --mount=type=secret,id=tok \\\n \
               sha256sum < /run/secrets/tok > /tok.sum && stat -c '%a %u' /run/secrets/tok > /tok.mode\n\
             RUN --mount=type=secret,id=api,env=API_TOKEN,target=/etc/api \\\n \
               printf %s \"$API_TOKEN\" | sha256sum > /env.sum && stat -c '%a' /etc/api > /api.mode\n\
             RUN --mount=type=secret,id=not-given ls /run/secrets > /optional 2>&1 || echo absent > /optional\n\
             ENV AFTER=1\n",
        )],
    );
    let mut cmd = w.user.command(kiln_bin());
    cmd.current_dir(w.path())
        .env("KILN_TEST_API", &env_secret)
        .arg("--root")
        .arg(w.store())
        .args([
            "build",
            "-t",
            "s:1",
            "--secret",
            "id=tok,src=secret.txt",
            "--secret",
            "id=api,env=KILN_TEST_API",
            "ctx",
        ]);
    let (out, stdout, stderr) = run(&mut cmd);
    assert!(out.status.success(), "{stderr}");
    for s in [&file_secret, &env_secret] {
        assert!(!stdout.contains(s.as_str()) && !stderr.contains(s.as_str()));
    }
    let (tree, _) = w.image("s:1");
    let sum = |s: &str| format!("{}  -\n", kiln_oci::digest::Digest::of(s.as_bytes()).hex());
    assert_eq!(content(&tree, "tok.sum"), sum(&file_secret));
    assert_eq!(content(&tree, "tok.mode"), "400 0\n", "BuildKit's defaults");
    assert_eq!(content(&tree, "env.sum"), sum(&env_secret));
    assert_eq!(content(&tree, "api.mode"), "400\n");
    assert_eq!(
        content(&tree, "optional"),
        "absent\n",
        "optional and missing: skipped"
    );
    assert!(!tree.contains_key("run") && !tree.contains_key("etc/api"));
    // Not in any layer, config, manifest or history: grep the saved tarball and its layers.
    w.ok(&["save", "-o", "s.tar", "s:1"]);
    let files = saved_bytes(&w.path().join("s.tar"));
    assert!(files.len() > 10, "{} files", files.len());
    for (name, data) in &files {
        for s in [&file_secret, &env_secret] {
            assert!(!contains(data, s), "secret found in {name}");
        }
    }
    let history = w.ok(&["history", "--no-trunc", "s:1"]);
    assert!(
        history.contains("RUN --mount=type=secret,id=tok"),
        "history shows the RUN line as written:\n{history}"
    );
    // Nor anywhere in the store (blobs, snapshots, caches).
    let grep = Command::new("grep")
        .args(["-rlF", &file_secret])
        .arg(w.store())
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&grep.stdout)
    );
    w.assert_clean();

    // required=true without the secret: a clear error at the RUN line.
    w.context(
        "req",
        &[(
            "Dockerfile",
            "FROM genesis\nRUN --mount=type=secret,id=missing,required=true true\n",
        )],
    );
    let (ok, _, err) = w.kiln(&["build", "req"]);
    assert!(!ok);
    assert!(
        err.contains("secret \"missing\" is required") && err.contains("req/Dockerfile:2:1"),
        "{err}"
    );
}

#[test]
fn ssh_mount_reaches_the_agent() {
    for tool in ["ssh-agent", "ssh-keygen", "ssh-add", "ldd"] {
        if !require_tool(tool) {
            return;
        }
    }
    let Some(w) = Work::new("ssh") else { return };
    // ssh-add and the libraries it needs, run through their own loader: works in busybox.
    let kit = w.path().join("ctx/kit");
    std::fs::create_dir_all(&kit).unwrap();
    let ssh_add = util::tools::which("ssh-add").unwrap();
    std::fs::copy(&ssh_add, kit.join("ssh-add")).unwrap();
    let ldd = Command::new("ldd").arg(&ssh_add).output().unwrap();
    let mut loader = None;
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if word.starts_with('/') {
            let name = Path::new(word).file_name().unwrap().to_owned();
            if name.to_string_lossy().starts_with("ld-linux") {
                loader = Some(name.to_string_lossy().into_owned());
            }
            std::fs::copy(word, kit.join(&name)).unwrap();
        }
    }
    let Some(loader) = loader else {
        eprintln!("skipping: no dynamic loader in ldd's output");
        return;
    };
    w.context(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM genesis\n\
                 RUN --mount=type=ssh --mount=source=kit,target=/kit \\\n \
                   echo \"$SSH_AUTH_SOCK\" > /sock && stat -c '%F %a %u' \"$SSH_AUTH_SOCK\" >> /sock \\\n \
                   && /kit/{loader} --library-path /kit /kit/ssh-add -l > /keys\n\
                 RUN --mount=type=ssh,id=deploy,target=/agent,uid=1000,mode=0660 \\\n \
                   stat -c '%F %a %u' /agent > /custom && echo \"$SSH_AUTH_SOCK\" >> /custom\n\
                 RUN --mount=type=ssh,id=absent test ! -e /run/buildkit/ssh_agent.0 && echo skipped > /absent\n"
            ),
        )],
    );
    let key = w.path().join("id_test");
    let script = format!(
        "eval \"$(ssh-agent -s)\" >/dev/null && trap 'kill $SSH_AGENT_PID' EXIT && \
         ssh-keygen -q -t ed25519 -N '' -C kiln-mount-test -f {key} </dev/null && \
         ssh-add -q {key} 2>/dev/null && \
         {kiln} --root {store} build -t ssh:1 --ssh default --ssh deploy=$SSH_AUTH_SOCK ctx",
        key = key.display(),
        kiln = kiln_bin().display(),
        store = w.store().display(),
    );
    let (out, _, err) = run(w
        .user
        .command("sh")
        .arg("-c")
        .arg(script)
        .current_dir(w.path()));
    assert!(out.status.success(), "{err}");
    let (tree, paths) = w.image("ssh:1");
    assert_eq!(
        content(&tree, "sock"),
        "/run/buildkit/ssh_agent.0\nsocket 600 0\n"
    );
    assert!(
        content(&tree, "keys").contains("kiln-mount-test (ED25519)"),
        "ssh-add -l in the step lists the agent's key: {}",
        content(&tree, "keys")
    );
    assert_eq!(content(&tree, "custom"), "socket 660 1000\n/agent\n");
    assert_eq!(content(&tree, "absent"), "skipped\n");
    for p in &paths {
        assert!(!p.starts_with("run") && p != "agent", "{p} is in a layer");
    }
    w.assert_clean();
}

#[test]
fn mount_escapes_are_refused_or_stay_inside() {
    let Some(w) = Work::new("escapes") else {
        return;
    };
    let outside = std::env::temp_dir().join(format!("kiln-escape-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&outside);
    let ctx = w.context(
        "ctx",
        &[
            ("inside/file", "in the context\n"),
            (
                "Dockerfile",
                &format!(
                    "FROM genesis AS base\n\
                     RUN mkdir /data && echo stage > /data/f && ln -s / /rootdir\n\
                     FROM genesis\n\
                     RUN --mount=type=cache,id=../../../../../../../..{outside},target=/c touch /c/escaped\n\
                     RUN --mount=source=up,target=/m ls /m > /up-listing\n\
                     RUN --mount=from=base,source=/rootdir,target=/r,rw touch /r/BREAKOUT && ls /r > /r-listing\n",
                    outside = outside.display()
                ),
            ),
        ],
    );
    // A relative link that climbs out of the context resolves at the context's root.
    std::os::unix::fs::symlink("../../../../../../../..", ctx.join("up")).unwrap();
    std::os::unix::fs::symlink("/etc", ctx.join("etc-link")).unwrap();
    w.user.chown(&ctx);
    w.ok(&["build", "-t", "e:1", "ctx"]);
    assert!(!outside.exists(), "id=../.. made {}", outside.display());
    let id = format!("../../../../../../../..{}", outside.display());
    assert!(w.cache_dir(&id).join("0/escaped").exists());
    let (tree, _) = w.image("e:1");
    let up = content(&tree, "up-listing");
    assert!(
        up.contains("inside") && up.contains("Dockerfile") && !up.contains("proc"),
        "{up}"
    );
    let r = content(&tree, "r-listing");
    assert!(r.contains("BREAKOUT") && r.contains("data"), "{r}");
    assert!(!Path::new("/BREAKOUT").exists());

    // Refused, with the Dockerfile location.
    for (n, (line, want)) in [
        (
            "RUN --mount=source=../x,target=/x true",
            "points outside the build context",
        ),
        (
            "RUN --mount=source=inside/../../x,target=/x true",
            "points outside the build context",
        ),
        (
            "RUN --mount=from=genesis,source=/../../etc,target=/x true",
            "points outside image \"genesis\"",
        ),
        (
            "RUN --mount=source=etc-link/passwd,target=/x true",
            "leads to \"/etc/passwd\", which is not in the build context",
        ),
        (
            "RUN --mount=type=cache,target=/c,source=../.. true",
            "points outside the cache",
        ),
        (
            "RUN --mount=type=tmpfs,target=/ true",
            "would cover the root",
        ),
        (
            "RUN --mount=type=tmpfs,target=/proc/x true",
            "is inside /proc",
        ),
    ]
    .iter()
    .enumerate()
    {
        let dir = format!("bad{n}");
        let bad = w.context(&dir, &[("Dockerfile", &format!("FROM genesis\n{line}\n"))]);
        std::os::unix::fs::symlink("/etc", bad.join("etc-link")).unwrap();
        let (ok, _, err) = w.kiln(&["build", &dir]);
        assert!(!ok, "{line} was built");
        assert!(err.contains(want), "{line}: {err}");
        assert!(
            err.contains(&format!("{dir}/Dockerfile:2:1")),
            "{line}: no location in {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    w.assert_clean();
}

/// CVE-2024-1753 as Buildah's test replays it, built as real root: there a write through the
/// link would reach the host's `/`.
#[test]
fn cve_2024_1753_bind_of_a_stage_symlink_to_root_writes_nowhere_as_root() {
    if !require_root("a build as real root") {
        return;
    }
    let dir = TestDir::new("cve-2024-1753");
    if !util::fixtures::busybox_context(&dir.path().join("genesis")) {
        return;
    }
    let marker = format!("BIND_BREAKOUT_{}", std::process::id());
    dir.write(
        "ctx/Dockerfile",
        format!(
            "FROM genesis AS base\nRUN ln -s / /rootdir\nFROM genesis\n\
             RUN --mount=type=bind,from=base,source=/rootdir,destination=/exploit,rw touch /exploit/{marker}\n"
        ),
    );
    let (ok, _, err) = kiln(None, dir.path(), &["build", "-t", "genesis", "genesis"]);
    assert!(ok, "{err}");
    let (ok, _, err) = kiln(None, dir.path(), &["build", "-t", "cve:1", "ctx"]);
    assert!(ok, "{err}");
    assert!(
        !Path::new("/").join(&marker).exists(),
        "the step wrote to the host's /"
    );
    let tree = util::images::tree(&dir.path().join("store"), "cve:1");
    assert!(!tree.keys().any(|k| k.contains(&marker)));
}

#[test]
fn ctrl_c_while_waiting_for_a_locked_cache_stops_the_build() {
    let Some(w) = Work::new("lock-wait") else {
        return;
    };
    w.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM genesis\nARG N\n\
             RUN --mount=type=cache,id=wait,target=/c,sharing=locked echo $N > /c/holder && sleep 4\n",
        )],
    );
    let spawn = |n: &str| {
        w.user
            .command(kiln_bin())
            .current_dir(w.path())
            .arg("--root")
            .arg(w.store())
            .args(["build", "-q", "--build-arg", &format!("N={n}"), "ctx"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let holder = spawn("first");
    let holder_file = w.cache_dir("wait").join("0/holder");
    assert!(
        util::tools::wait_until(Duration::from_secs(20), || holder_file.exists()),
        "the first build never got the cache"
    );
    let waiter = spawn("second");
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    assert!(util::tools::signal(waiter.id() as i32, 2));
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "stopped only after {:?}: it waited for the lock",
        asked.elapsed()
    );
    let first = holder.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(std::fs::read_to_string(&holder_file).unwrap(), "first\n");
    w.assert_clean();
}

/// Mounts of every type, on targets that exist in the image and on targets that do not: kiln's
/// rootless image must have the same files as BuildKit's.
const MOUNTS_VS_BUILDKIT: &str = "FROM genesis\nWORKDIR /work\n\
RUN --mount=type=cache,target=/root/.cache echo x > /root/.cache/f && echo one > /one\n\
RUN --mount=type=cache,id=deep,target=/var/cache/new/deep echo x > /var/cache/new/deep/f && echo two > /two\n\
RUN --mount=type=tmpfs,target=/tmp/t echo t > /tmp/t/x && mkdir -p /srv && echo three > /srv/three\n\
RUN --mount=type=bind,source=src,target=/mnt/src cp /mnt/src/a.txt /copied\n\
RUN --mount=type=bind,source=src,target=rel,rw echo changed > rel/a.txt && echo four > /four\n\
RUN --mount=type=secret,id=tok,required=true wc -c < /run/secrets/tok > /toklen\n\
RUN --mount=type=secret,id=tok,target=/etc/tok-file cat /etc/tok-file > /dev/null\n\
RUN --mount=type=bind,source=src,target=/opt/mnt/src ls /opt/mnt/src > /opt/listing\n";

#[test]
fn mounts_leave_the_same_files_as_buildkit() {
    let Some(w) = Work::new("vs-buildkit") else {
        return;
    };
    let ctx = w.context(
        "ctx",
        &[("src/a.txt", "a\n"), ("Dockerfile", MOUNTS_VS_BUILDKIT)],
    );
    std::fs::write(w.path().join("tok.txt"), "not in the image\n").unwrap();
    w.user.chown(w.path());
    w.ok(&["save", "-o", "genesis.tar", "genesis"]);
    w.ok(&[
        "build",
        "-t",
        "m:kiln",
        "--secret",
        "id=tok,src=tok.txt",
        "-o",
        "m-kiln.tar",
        "ctx",
    ]);
    let Some(d) = util::dockerd::Dockerd::start() else {
        return;
    };
    util::tools::assert_success(&d.load(&w.path().join("genesis.tar")), "docker load");
    let secret = format!("id=tok,src={}", w.path().join("tok.txt").display());
    util::tools::assert_success(
        &d.buildkit_build(
            &ctx,
            &ctx.join("Dockerfile"),
            "m:bk",
            &["--network", "none", "--secret", &secret],
        ),
        "BuildKit build",
    );
    util::tools::assert_success(&d.load(&w.path().join("m-kiln.tar")), "docker load kiln's");
    let bk = d.exported_tree("m:bk", w.path());
    let kl = d.exported_tree("m:kiln", w.path());
    // dockerd 20.10 bundles BuildKit 0.8, which leaves the directories it made as mount points
    // in the image; BuildKit 0.10 and later remove them while empty (its MountStubsCleaner), as
    // kiln does. Those, and only those, may differ.
    let targets = [
        "root/.cache",
        "var/cache/new/deep",
        "tmp/t",
        "mnt/src",
        "work/rel",
        "run/secrets/tok",
        "etc/tok-file",
        "opt/mnt/src",
    ];
    let is_mount_point = |p: &str| {
        targets
            .iter()
            .any(|t| *t == p || t.starts_with(&format!("{p}/")))
    };
    let mut stubs = 0;
    for path in bk
        .keys()
        .chain(kl.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        match (bk.get(path), kl.get(path)) {
            (a, b) if a == b => {}
            (Some(dir), None) if dir.starts_with("b'5'") && is_mount_point(path) => stubs += 1,
            (a, b) => panic!("{path}: BuildKit {a:?} vs kiln {b:?}"),
        }
    }
    println!(
        "compared {} paths with BuildKit; {stubs} old-BuildKit mount points left out",
        bk.len()
    );
    assert!(bk.len() > 250, "{}", bk.len());
    for (f, want) in [
        ("copied", "a\n"),
        ("toklen", "17\n"),
        ("opt/listing", "a.txt\n"),
    ] {
        assert!(kl.contains_key(f), "{f} missing ({want:?})");
    }
}

/// What a bind mount reads from the context is part of the RUN's cache key: a rebuild hits,
/// and a changed bound file makes the step run again (named by --explain-cache).
#[test]
fn a_bound_context_file_is_part_of_the_run_key() {
    let Some(w) = Work::new("bind-key") else {
        return;
    };
    let ctx = w.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM genesis\nRUN --mount=type=bind,source=src,target=/src cat /src/a > /copied\n",
            ),
            ("src/a", "one\n"),
        ],
    );
    w.ok(&["build", "-t", "k:1", "ctx"]);
    let again = w.ok(&["build", "--explain-cache", "-t", "k:2", "ctx"]);
    assert!(again.contains("#1 CACHED"), "{again}");
    std::fs::write(ctx.join("src/a"), "two\n").unwrap();
    let changed = w.ok(&["build", "--explain-cache", "-t", "k:3", "ctx"]);
    assert!(
        changed.contains("#1 cache miss: mount 0 changed"),
        "{changed}"
    );
    let (tree, _) = w.image("k:3");
    assert_eq!(content(&tree, "copied"), "two\n");
}
