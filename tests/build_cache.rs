//! The build cache: which steps hit, which miss and why (`--explain-cache`), that a rebuild
//! with nothing changed writes nothing and gives the same image, and that nothing but kiln's
//! own records can make a hit (no cache poisoning through pulled or loaded images).

mod util;

use std::path::Path;
use util::unpriv::{unprivileged_user, UnprivUser};
use util::{kiln_bin, run, TestDir};

/// One build's outcome: the image ID and, per step, "CACHED" or the miss reason.
struct Outcome {
    id: String,
    steps: Vec<String>,
    stderr: String,
}

impl Outcome {
    fn hits(&self) -> usize {
        self.steps.iter().filter(|s| *s == "CACHED").count()
    }
}

fn build_as(user: Option<&UnprivUser>, dir: &Path, store: &Path, extra: &[&str]) -> Outcome {
    let mut cmd = match user {
        Some(u) => u.command(kiln_bin()),
        None => std::process::Command::new(kiln_bin()),
    };
    cmd.current_dir(dir)
        .arg("--root")
        .arg(store)
        .args(["build", "--explain-cache", "-t", "app"])
        .args(extra)
        .arg("ctx");
    let (out, _, stderr) = run(&mut cmd);
    assert!(
        out.status.success(),
        "kiln build {extra:?} failed:\n{stderr}"
    );
    let mut steps = Vec::new();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((_, what)) = rest.split_once(' ') else {
            continue;
        };
        if what == "CACHED" {
            steps.push("CACHED".to_owned());
        } else if let Some(reason) = what.strip_prefix("cache miss: ") {
            steps.push(reason.to_owned());
        }
    }
    let id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("writing image "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    Outcome { id, steps, stderr }
}

/// A scratch directory owned by the unprivileged user, with `genesis` (busybox from scratch)
/// built into `store` there by that user. None (after the skip message) without one.
fn rootless_work(kind: &str) -> Option<(UnprivUser, util::tools::TempRoot, std::path::PathBuf)> {
    let user = unprivileged_user()?;
    let work = user.scratch_dir(kind);
    let dir = work.path();
    if !util::fixtures::busybox_context(&dir.join("genesis")) {
        return None;
    }
    user.chown(dir);
    let store = dir.join("store");
    let mut cmd = user.command(kiln_bin());
    cmd.current_dir(dir)
        .arg("--root")
        .arg(&store)
        .args(["build", "-q", "-t", "genesis", "genesis"]);
    let (out, _, err) = run(&mut cmd);
    assert!(out.status.success(), "{err}");
    Some((user, work, store))
}

fn blob_count(store: &Path) -> usize {
    std::fs::read_dir(store.join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn inspect(store: &Path, image: &str) -> serde_json::Value {
    let (out, stdout, stderr) = run(std::process::Command::new(kiln_bin())
        .arg("--root")
        .arg(store)
        .args(["inspect", image]));
    assert!(out.status.success(), "{stderr}");
    serde_json::from_str::<serde_json::Value>(&stdout).unwrap()[0].clone()
}

const NODE_STYLE: &str = "FROM scratch\n\
COPY package.json /app/\n\
COPY src /app/src\n\
ENV MODE=production\n\
LABEL team=core\n\
HEALTHCHECK --interval=30s CMD [\"/check\"]\n\
ONBUILD COPY . /child\n\
WORKDIR /app\n";

#[test]
fn hits_misses_and_why() {
    let dir = TestDir::new("cache");
    let store = dir.path().join("store");
    dir.write("ctx/Dockerfile", NODE_STYLE);
    dir.write("ctx/package.json", "{\"name\": \"app\"}\n");
    dir.write("ctx/src/a.js", "a\n");
    dir.write("ctx/src/b.js", "b\n");
    let steps = 7;

    let first = build_as(None, dir.path(), &store, &[]);
    assert_eq!(first.steps.len(), steps, "{}", first.stderr);
    assert!(
        first
            .steps
            .iter()
            .all(|s| s == "no earlier build of this step"),
        "{:?}",
        first.steps
    );

    // Nothing changed: every step hits, no blob is written, the image ID is the same.
    let blobs = blob_count(&store);
    let again = build_as(None, dir.path(), &store, &[]);
    assert_eq!(again.hits(), steps, "{}", again.stderr);
    assert!(!again.stderr.contains(" DONE "), "{}", again.stderr);
    assert_eq!(again.id, first.id);
    assert_eq!(blob_count(&store), blobs, "a no-op rebuild writes nothing");

    // A new mtime alone is not a change (content, mode and owner are).
    let b = dir.path().join("ctx/src/b.js");
    let f = std::fs::File::options().write(true).open(&b).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(100))
        .unwrap();
    drop(f);
    let touched = build_as(None, dir.path(), &store, &[]);
    assert_eq!(touched.hits(), steps, "{:?}", touched.steps);

    // One source file: the manifest COPY still hits; the sources COPY names the file; the
    // steps after it follow.
    dir.write("ctx/src/b.js", "b2\n");
    let edited = build_as(None, dir.path(), &store, &[]);
    assert_eq!(edited.steps[0], "CACHED");
    assert_eq!(edited.steps[1], "file /app/src/b.js changed");
    assert!(
        edited.steps[2..]
            .iter()
            .all(|s| s == "an earlier step changed"),
        "{:?}",
        edited.steps
    );
    assert_ne!(edited.id, first.id);

    // Mode bits are an input.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o600)).unwrap();
    let chmod = build_as(None, dir.path(), &store, &[]);
    assert_eq!(chmod.steps[1], "file /app/src/b.js changed");
    // A new file and a removed one.
    dir.write("ctx/src/c.js", "c\n");
    std::fs::remove_file(dir.path().join("ctx/src/a.js")).unwrap();
    let files = build_as(None, dir.path(), &store, &[]);
    assert_eq!(
        files.steps[1],
        "file /app/src/c.js added; file /app/src/a.js removed"
    );

    // HEALTHCHECK, ONBUILD and LABEL are part of the key (CVE-2024-24557 was a cache that
    // ignored them), and the image shows the new values.
    let before = build_as(None, dir.path(), &store, &[]);
    assert_eq!(before.hits(), steps);
    for (old, new, field, value) in [
        (
            "--interval=30s",
            "--interval=31s",
            "Healthcheck",
            serde_json::json!(31_000_000_000u64),
        ),
        (
            "ONBUILD COPY . /child",
            "ONBUILD RUN echo owned",
            "OnBuild",
            serde_json::json!(["RUN echo owned"]),
        ),
        (
            "team=core",
            "team=edge",
            "Labels",
            serde_json::json!({"team": "edge"}),
        ),
    ] {
        let text = std::fs::read_to_string(dir.path().join("ctx/Dockerfile")).unwrap();
        dir.write("ctx/Dockerfile", text.replace(old, new));
        let out = build_as(None, dir.path(), &store, &[]);
        let changed = out
            .steps
            .iter()
            .position(|s| s == "the instruction changed")
            .unwrap_or_else(|| panic!("{new}: {:?}", out.steps));
        assert!(
            out.steps[..changed].iter().all(|s| s == "CACHED"),
            "{new}: {:?}",
            out.steps
        );
        let config = &inspect(&store, "app")["Config"];
        let got = match field {
            "Healthcheck" => config["Healthcheck"]["Interval"].clone(),
            _ => config[field].clone(),
        };
        assert_eq!(got, value, "{new}: {config}");
    }

    // --no-cache runs everything and says so; the next build hits again.
    let forced = build_as(None, dir.path(), &store, &["--no-cache"]);
    assert!(
        forced.steps.iter().all(|s| s == "--no-cache"),
        "{:?}",
        forced.steps
    );
    assert_eq!(
        build_as(None, dir.path(), &store, &[]).hits(),
        steps,
        "records written under --no-cache are used later"
    );

    // A damaged record is a miss, not an error.
    let steps_dir = store.join("cache/steps");
    for e in std::fs::read_dir(&steps_dir).unwrap() {
        std::fs::write(e.unwrap().path(), b"{garbage").unwrap();
    }
    let damaged = build_as(None, dir.path(), &store, &[]);
    assert_eq!(damaged.hits(), 0, "{:?}", damaged.steps);
    assert_eq!(
        damaged.steps[0],
        "no record (pruned, or the last build did not finish)"
    );
    assert_eq!(build_as(None, dir.path(), &store, &[]).hits(), steps);
}

#[test]
fn no_cache_filter_and_stages_chain() {
    let dir = TestDir::new("cache-stages");
    let store = dir.path().join("store");
    dir.write(
        "ctx/Dockerfile",
        "FROM scratch AS deps\nCOPY package.json /\n\
         FROM scratch AS app\nCOPY --from=deps /package.json /deps.json\nCOPY src /src\n",
    );
    dir.write("ctx/package.json", "{}\n");
    dir.write("ctx/src/a", "a\n");
    let first = build_as(None, dir.path(), &store, &[]);
    assert_eq!(first.steps.len(), 3, "{}", first.stderr);
    let filtered = build_as(None, dir.path(), &store, &["--no-cache-filter", "app"]);
    assert_eq!(
        filtered.steps,
        ["CACHED", "--no-cache", "--no-cache"],
        "{}",
        filtered.stderr
    );
    // The same bytes from a changed stage: COPY --from keys on content, so it still hits.
    dir.write(
        "ctx/Dockerfile",
        "FROM scratch AS deps\nCOPY package.json /\nENV X=1\n\
         FROM scratch AS app\nCOPY --from=deps /package.json /deps.json\nCOPY src /src\n",
    );
    let same_bytes = build_as(None, dir.path(), &store, &[]);
    assert_eq!(
        same_bytes.steps[2..],
        ["CACHED", "CACHED"],
        "{:?}",
        same_bytes.steps
    );
}

/// An image that claims to be the result of a step is never taken for a cache hit: only
/// records kiln wrote after running a step count (CVE-2024-24557 was the opposite).
#[test]
fn a_loaded_look_alike_image_is_not_a_cache_hit() {
    let dir = TestDir::new("cache-poison");
    dir.write(
        "ctx/Dockerfile",
        "FROM scratch\nCOPY a /a\nHEALTHCHECK CMD [\"/ok\"]\n",
    );
    dir.write("ctx/a", "real\n");
    let a = dir.path().join("a");
    build_as(None, dir.path(), &a, &[]);
    let tar = dir.path().join("app.tar");
    let (out, _, err) = run(std::process::Command::new(kiln_bin())
        .arg("--root")
        .arg(&a)
        .args(["save", "-o"])
        .arg(&tar)
        .arg("app"));
    assert!(out.status.success(), "{err}");
    let b = dir.path().join("b");
    let (out, _, err) = run(std::process::Command::new(kiln_bin())
        .arg("--root")
        .arg(&b)
        .args(["load", "-i"])
        .arg(&tar));
    assert!(out.status.success(), "{err}");
    let built = build_as(None, dir.path(), &b, &[]);
    assert_eq!(built.hits(), 0, "{:?}", built.steps);
}

/// The node-style Dockerfile with a RUN install step, built rootless: a source edit re-runs
/// only the last COPY; a manifest edit re-runs the install.
#[test]
fn rootless_install_step_reruns_only_when_the_manifest_changes() {
    let Some((user, work, store)) = rootless_work("cache-run") else {
        return;
    };
    let dir = work.path();
    std::fs::create_dir_all(dir.join("ctx/src")).unwrap();
    std::fs::write(
        dir.join("ctx/Dockerfile"),
        "FROM genesis\nWORKDIR /app\nCOPY package.json ./\n\
         RUN echo installing && cp package.json installed.json && cat /proc/sys/kernel/random/uuid > stamp\n\
         COPY src ./src\n",
    )
    .unwrap();
    std::fs::write(dir.join("ctx/package.json"), "{\"v\": 1}\n").unwrap();
    std::fs::write(dir.join("ctx/src/index.js"), "1\n").unwrap();
    user.chown(dir);

    // The RUN's output line, not its command line.
    let installed = |o: &Outcome| {
        o.stderr
            .lines()
            .any(|l| l.starts_with('#') && l.ends_with(" installing"))
    };
    let first = build_as(Some(&user), dir, &store, &[]);
    assert!(installed(&first), "{}", first.stderr);
    let stamp = |store: &Path| {
        util::images::tree(store, "app")["app/stamp"]
            .content
            .clone()
    };
    let stamp1 = stamp(&store);

    let again = build_as(Some(&user), dir, &store, &[]);
    assert_eq!(again.hits(), 4, "{}", again.stderr);
    assert!(!installed(&again), "{}", again.stderr);
    assert_eq!(again.id, first.id);

    std::fs::write(dir.join("ctx/src/index.js"), "2\n").unwrap();
    let source = build_as(Some(&user), dir, &store, &[]);
    assert_eq!(
        source.steps,
        [
            "CACHED",
            "CACHED",
            "CACHED",
            "file /app/src/index.js changed"
        ],
        "{}",
        source.stderr
    );
    assert!(!installed(&source), "{}", source.stderr);
    assert_eq!(stamp(&store), stamp1, "the install layer is reused");

    std::fs::write(dir.join("ctx/package.json"), "{\"v\": 2}\n").unwrap();
    let manifest = build_as(Some(&user), dir, &store, &[]);
    assert_eq!(
        manifest.steps[..2],
        ["CACHED", "file /app/package.json changed"]
    );
    assert_eq!(manifest.steps[2], "an earlier step changed");
    assert!(installed(&manifest), "{}", manifest.stderr);
    assert_eq!(
        util::images::tree(&store, "app")["app/installed.json"].content,
        b"{\"v\": 2}\n",
        "the install ran again"
    );

    // A build arg the RUN sees (HTTP_PROXY is predefined) is an input of the RUN, named in
    // the explanation but never stored in clear.
    let with_arg = build_as(
        Some(&user),
        dir,
        &store,
        &["--build-arg", "HTTP_PROXY=secret-proxy"],
    );
    assert_eq!(
        with_arg.steps,
        [
            "CACHED",
            "CACHED",
            "build arg or env HTTP_PROXY added",
            "an earlier step changed"
        ],
        "{}",
        with_arg.stderr
    );
    let (out, _, _) = run(std::process::Command::new("grep")
        .args(["-r", "-l", "secret-proxy"])
        .arg(store.join("cache")));
    assert!(
        !out.status.success(),
        "the arg's value is not in the cache files"
    );
}

/// Two builder stages that do not depend on each other run at once; a stage the target does
/// not need never runs (it would fail).
#[test]
fn independent_stages_run_at_once_and_unused_ones_never() {
    let Some((user, work, store)) = rootless_work("cache-jobs") else {
        return;
    };
    let dir = work.path();
    std::fs::create_dir_all(dir.join("ctx")).unwrap();
    std::fs::write(
        dir.join("ctx/Dockerfile"),
        "FROM genesis AS one\nRUN sleep 2 && echo one > /one\n\
         FROM genesis AS two\nRUN sleep 2 && echo two > /two\n\
         FROM genesis AS broken\nRUN echo never-runs && exit 1\n\
         FROM genesis\nCOPY --from=one /one /\nCOPY --from=two /two /\n",
    )
    .unwrap();
    user.chown(dir);

    // A first build extracts the base into a snapshot once; the timed builds measure the stages.
    build_as(Some(&user), dir, &store, &["--jobs", "2"]);
    let timed = |jobs: &str| {
        let started = std::time::Instant::now();
        let o = build_as(Some(&user), dir, &store, &["--no-cache", "--jobs", jobs]);
        (started.elapsed(), o)
    };
    let (parallel, o) = timed("2");
    assert!(!o.stderr.contains("never-runs"), "{}", o.stderr);
    let tree = util::images::tree(&store, "app");
    assert_eq!(tree["one"].content, b"one\n");
    assert_eq!(tree["two"].content, b"two\n");
    // Both sleeps' steps started before either finished.
    let step_of = |text: &str| {
        o.stderr
            .lines()
            .position(|l| l.contains(text) && l.contains("RUN"))
            .unwrap_or_else(|| panic!("{text}: {}", o.stderr))
    };
    let first_done = o
        .stderr
        .lines()
        .position(|l| l.contains(" DONE "))
        .unwrap_or(0);
    assert!(
        step_of("echo one") < first_done && step_of("echo two") < first_done,
        "both RUNs start before the first ends:\n{}",
        o.stderr
    );
    assert!(
        parallel < std::time::Duration::from_secs(3),
        "two 2 s stages with --jobs 2 took {parallel:?}:\n{}",
        o.stderr
    );
    let (serial, _) = timed("1");
    assert!(
        serial >= std::time::Duration::from_secs(4),
        "with --jobs 1 they take turns: {serial:?}"
    );
}

/// `--cache-to type=local` then `--cache-from type=local` into an empty store: every step
/// hits, the image is the same, and a damaged cache directory is a warning.
#[test]
fn local_cache_export_and_import() {
    let dir = TestDir::new("cache-local");
    dir.write("ctx/Dockerfile", NODE_STYLE);
    dir.write("ctx/package.json", "{}\n");
    dir.write("ctx/src/a.js", "a\n");
    let cache = dir.path().join("cache-dir");
    let to = format!("type=local,dest={}", cache.display());
    let from = format!("type=local,src={}", cache.display());
    let a = build_as(
        None,
        dir.path(),
        &dir.path().join("a"),
        &["--cache-to", &to],
    );
    assert!(cache.join("index.json").is_file());
    let b = build_as(
        None,
        dir.path(),
        &dir.path().join("b"),
        &["--cache-from", &from],
    );
    assert_eq!(b.hits(), 7, "{}", b.stderr);
    assert_eq!(b.id, a.id);
    std::fs::write(cache.join("index.json"), b"{").unwrap();
    let c = build_as(
        None,
        dir.path(),
        &dir.path().join("c"),
        &["--cache-from", &from],
    );
    assert_eq!(c.hits(), 0);
    assert!(c.stderr.contains("WARNING: --cache-from"), "{}", c.stderr);
}

/// `--squash` merges the final stage's new layers into one above the base; `--squash-all`
/// makes one layer of everything. The filesystem is the same as unsquashed: deletions of base
/// files stay deleted, a directory removed and made again keeps only its new content.
#[test]
fn squash_and_squash_all_keep_the_filesystem() {
    if !util::tools::require_root("RUN as root") {
        return;
    }
    let dir = TestDir::new("squash");
    let store = dir.path().join("store");
    if !util::fixtures::busybox_context(&dir.path().join("genesis")) {
        return;
    }
    let (out, _, err) = run(std::process::Command::new(kiln_bin())
        .arg("--root")
        .arg(&store)
        .current_dir(dir.path())
        .args(["build", "-q", "-t", "genesis", "genesis"]));
    assert!(out.status.success(), "{err}");
    dir.write(
        "ctx/Dockerfile",
        "FROM genesis\n\
         RUN rm /bin/vi && mkdir -p /d /keep && echo 1 > /d/a && echo k > /keep/k\n\
         COPY f /f\n\
         RUN rm -rf /d && mkdir /d && echo 2 > /d/b && ln /f /hard && rm /keep/k\n",
    );
    dir.write("ctx/f", "file\n");
    let mut trees = Vec::new();
    for (tag, flag, layers) in [
        ("plain", None, 4),
        ("squashed", Some("--squash"), 2),
        ("all", Some("--squash-all"), 1),
    ] {
        let mut cmd = std::process::Command::new(kiln_bin());
        cmd.arg("--root")
            .arg(&store)
            .current_dir(dir.path())
            .args(["build", "-q", "-t", tag]);
        cmd.args(flag).arg("ctx");
        let (out, _, err) = run(&mut cmd);
        assert!(out.status.success(), "{tag}: {err}");
        assert_eq!(util::images::layers(&store, tag).len(), layers, "{tag}");
        let info = inspect(&store, tag);
        let history = info["History"].as_array().unwrap();
        let non_empty = history.iter().filter(|h| h["empty_layer"] != true).count();
        assert_eq!(non_empty, layers, "{tag}: one history entry per layer");
        let tree = util::images::tree(&store, tag);
        assert!(!tree.contains_key("bin/vi"), "{tag}");
        assert!(!tree.contains_key("d/a"), "{tag}");
        assert!(!tree.contains_key("keep/k"), "{tag}");
        assert_eq!(tree["d/b"].content, b"2\n", "{tag}");
        assert_eq!(tree["f"].content, b"file\n", "{tag}");
        assert!(tree.contains_key("hard"), "{tag}");
        assert!(tree.contains_key("bin/sh"), "{tag}");
        trees.push((tag, tree));
    }
    let names = |t: &std::collections::BTreeMap<String, util::images::FileInfo>| {
        t.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(names(&trees[0].1), names(&trees[1].1), "--squash");
    assert_eq!(names(&trees[0].1), names(&trees[2].1), "--squash-all");
}

/// SOURCE_DATE_EPOCH clamps the times in new layers, so it is part of every step's key: a layer
/// made without it is never reused by a reproducible build.
#[test]
fn source_date_epoch_is_an_input() {
    let dir = TestDir::new("cache-sde");
    let store = dir.path().join("store");
    dir.write("ctx/Dockerfile", "FROM scratch\nCOPY a /a\n");
    dir.write("ctx/a", "a\n");
    build_as(None, dir.path(), &store, &[]);
    let (out, _, err) = run(std::process::Command::new(kiln_bin())
        .current_dir(dir.path())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .arg("--root")
        .arg(&store)
        .args(["build", "--explain-cache", "-t", "app", "ctx"]));
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("#1 cache miss: SOURCE_DATE_EPOCH added"),
        "{err}"
    );
}
