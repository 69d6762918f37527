//! Snapshots, overlay mounts and the differs, end to end on real mounts.
//!
//! Each scenario builds a base image layer, runs several "steps" on the roots
//! `Snapshots::prepare` gives (creating, modifying, deleting and re-creating files and
//! directories across steps), diffs each step into a layer in a content store, and checks that
//! unpacking the layers so far gives exactly the tree the step saw (path, type, mode, owner,
//! size, link target, xattrs, content hash).
//!
//! Who runs what (test names say it):
//! - `root_*`: as root, in a private mount namespace (`unshare -m`), overlay with
//!   `trusted.overlay.*`;
//! - `userns_root_*`: root inside `unshare -Urm` (a single-id user namespace), so overlay
//!   needs `userxattr`;
//! - `rootless_*`: the unprivileged user `kilntest` (uid 1001) inside
//!   `unshare --map-root-user --map-auto -m` (its subordinate ids mapped), or with no user
//!   namespace at all, where only the copy fallback works.
//!
//! Every test re-runs its own binary under the wrapper (the child is told which test it is by
//! an environment variable), so mounts die with the child's namespace. Set up needs root; as
//! another user the tests say so and pass.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_oci::layer::open_layer;
use kiln_oci::{Compression, Digest, EntryKind, LayerWriter, Store, TarEntry};
use kiln_snapshot::diff::{diff_upper, DiffOptions};
use kiln_snapshot::overlay::{self, detect_mode, Mode};
use kiln_snapshot::snapshots::{ChainId, Created, Mounts, SnapshotError, Snapshots};
use kiln_snapshot::unpack::{unpack_layer, UnpackOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// Running a test body under another identity.

const CHILD_ENV: &str = "KILN_SNAPSHOT_TEST_CHILD";
const KILNTEST_UID: u32 = 1001;

#[derive(Debug, Clone, Copy)]
enum As {
    /// Root with a private mount namespace.
    Root,
    /// Root inside a user namespace mapping only uid 0.
    UsernsRoot,
    /// kilntest inside a user namespace with its subordinate ids.
    KilntestUserns,
    /// kilntest, no namespaces.
    Kilntest,
}

impl As {
    fn wrapper(self) -> Vec<String> {
        let kilntest = [
            "setpriv",
            "--reuid=1001",
            "--regid=1001",
            "--init-groups",
            "--reset-env",
        ];
        let v: Vec<&str> = match self {
            As::Root => vec!["unshare", "-m", "--propagation", "private"],
            As::UsernsRoot => vec!["unshare", "-Urm"],
            As::KilntestUserns => [
                &kilntest[..],
                &["unshare", "--map-root-user", "--map-auto", "-m"],
            ]
            .concat(),
            As::Kilntest => kilntest.to_vec(),
        };
        v.into_iter().map(String::from).collect()
    }
}

fn kilntest_exists() -> bool {
    Command::new("id")
        .arg("kilntest")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn in_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(name)
}

/// In the test process: runs test `name` again under `who`, with `env` added, and fails if it
/// fails. Returns false when the test cannot run here (then it passes, saying why).
fn spawn(name: &str, who: As, env: &[(&str, &str)]) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping {name}: setting up namespaces and users needs root");
        return false;
    }
    if matches!(who, As::KilntestUserns | As::Kilntest) && !kilntest_exists() {
        eprintln!("skipping {name}: no user kilntest");
        return false;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let w = who.wrapper();
    let mut cmd = Command::new(&w[0]);
    cmd.args(&w[1..])
        .arg("env")
        .arg(format!("{CHILD_ENV}={name}"))
        .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"]);
    let out = cmd.output().expect("run the test under a wrapper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed as {who:?} ({w:?}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    true
}

/// Runs `body` as `who` (in the child), or spawns the child (in the test process).
fn run_as(name: &str, who: As, body: impl FnOnce()) {
    if in_child(name) {
        body();
    } else {
        spawn(name, who, &[]);
    }
}

/// A temp directory anyone can enter, so a child running as kilntest can use it.
fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("kiln-overlay-test")
        .tempdir()
        .unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Whether this process can give files owners other than itself (root in the initial
/// namespace, or a user namespace mapping more than one id).
fn can_chown() -> bool {
    let map = fs::read_to_string("/proc/self/uid_map").unwrap();
    let ids: u64 = map
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum();
    nix::unistd::geteuid().is_root() && ids > 1
}

fn privileged() -> bool {
    overlay::in_initial_userns() && nix::unistd::geteuid().is_root()
}

// ---------------------------------------------------------------------------------------------
// Capturing trees and layers.

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    link: Option<PathBuf>,
    sha: Option<Digest>,
    rdev: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn node(path: &Path) -> Node {
    let m = fs::symlink_metadata(path).unwrap();
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else {
        's'
    };
    let mut xattrs = BTreeMap::new();
    if let Ok(names) = xattr::list(path) {
        for n in names {
            let n = n.to_string_lossy().into_owned();
            if overlay::is_overlay_xattr(&n) {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(path, &n) {
                xattrs.insert(n, v);
            }
        }
    }
    Node {
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size: if kind == 'd' { 0 } else { m.len() },
        link: (kind == 'l').then(|| fs::read_link(path).unwrap()),
        sha: (kind == 'f').then(|| Digest::of(&fs::read(path).unwrap())),
        rdev: m.rdev(),
        xattrs,
    }
}

/// Every path under `root` (not `root` itself) and what it is.
fn capture(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let n = node(&root.join(&r));
            if n.kind == 'd' {
                stack.push(r.clone());
            }
            out.insert(r, n);
        }
    }
    out
}

fn assert_same_tree(
    expected: &BTreeMap<PathBuf, Node>,
    actual: &BTreeMap<PathBuf, Node>,
    what: &str,
) {
    for (p, n) in expected {
        match actual.get(p) {
            None => panic!("{what}: {} missing (expected {n:?})", p.display()),
            Some(a) => assert_eq!(a, n, "{what}: {} differs", p.display()),
        }
    }
    for p in actual.keys() {
        assert!(
            expected.contains_key(p),
            "{what}: {} should not exist ({:?})",
            p.display(),
            actual[p]
        );
    }
}

/// A layer entry without its mtime (which differs between runs), with its content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    path: PathBuf,
    kind: EntryKind,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
    sha: Option<Digest>,
}

fn summarize(store: &Store, diff_id: &Digest) -> Vec<Summary> {
    let mut r = open_layer(store.open_blob(diff_id).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(e) = r.next_entry().unwrap() {
        let sha = (e.kind == EntryKind::File).then(|| {
            let mut data = Vec::new();
            (&mut r).take(e.size).read_to_end(&mut data).unwrap();
            Digest::of(&data)
        });
        out.push(Summary {
            path: e.path,
            kind: e.kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            size: e.size,
            xattrs: e.xattrs,
            sha,
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The scenario.

/// A build in progress: a store, its snapshots, and the layers so far.
struct Build {
    dir: PathBuf,
    store: Store,
    snaps: Snapshots,
    diff_ids: Vec<Digest>,
    chain: Vec<ChainId>,
}

impl Build {
    fn new(dir: &Path, mode: Mode) -> Build {
        let store = Store::open(dir.join("store")).unwrap();
        let snaps = Snapshots::open(&dir.join("store"), mode).unwrap();
        Build {
            dir: dir.to_path_buf(),
            store,
            snaps,
            diff_ids: Vec::new(),
            chain: Vec::new(),
        }
    }

    /// Stores `layer` and makes its snapshot on top of the chain with the unpacker.
    fn pull(
        &mut self,
        fill: impl FnOnce(
            &mut LayerWriter<kiln_oci::layer::LayerSink>,
        ) -> Result<(), kiln_oci::LayerError>,
    ) {
        let info = kiln_oci::write_layer(&self.store, Compression::None, fill).unwrap();
        let chain = match self.chain.last() {
            None => ChainId::base(&info.diff_id),
            Some(c) => c.child(&info.diff_id),
        };
        let opts = UnpackOptions::for_current_user();
        let store = self.store.clone();
        let diff_id = info.diff_id.clone();
        let created = self
            .snaps
            .create(&self.chain, &chain, |root| -> Result<(), BoxError> {
                unpack_layer(root, store.open_blob(&diff_id)?, &opts)?;
                Ok(())
            })
            .unwrap();
        assert_eq!(created, Created::New);
        self.diff_ids.push(info.diff_id);
        self.chain.push(chain);
    }

    /// Runs one step; returns its layer's entries. `stubs` are made before the step like a
    /// sandbox's mount stubs, left out of the diff, and reverted before commit.
    fn step(&mut self, key: &str, run: impl FnOnce(&Path)) -> Vec<Summary> {
        let mounts = self.snaps.prepare(key, &self.chain).unwrap();
        let target = self.dir.join(format!("mnt-{key}"));
        let root = match &mounts {
            Mounts::Overlay(m) => {
                fs::create_dir_all(&target).unwrap();
                m.mount(&target).unwrap();
                target.clone()
            }
            Mounts::Copy { rootfs } => rootfs.clone(),
        };
        let stubs = ["etc/resolv.conf", "proc"];
        let stubs_existed: Vec<bool> = stubs.iter().map(|s| root.join(s).exists()).collect();
        if !stubs_existed[0] {
            fs::write(root.join(stubs[0]), b"").unwrap();
        }
        if !stubs_existed[1] {
            fs::create_dir(root.join(stubs[1])).unwrap();
        }
        run(&root);
        let mut expected = capture(&root);
        let new_stubs: Vec<PathBuf> = stubs
            .iter()
            .zip(&stubs_existed)
            .filter(|(_, e)| !**e)
            .map(|(s, _)| PathBuf::from(s))
            .collect();
        for s in &new_stubs {
            expected.remove(s);
        }
        if let Mounts::Overlay(_) = mounts {
            overlay::unmount(&target).unwrap();
        }
        let opts = DiffOptions {
            skip: new_stubs.clone(),
            ..DiffOptions::default()
        };
        let (info, stats) = self
            .snaps
            .write_diff(key, &self.store, Compression::None, &opts)
            .unwrap();
        assert_eq!(
            stats.skipped,
            new_stubs.len() as u64,
            "{key}: stubs skipped"
        );
        self.snaps.revert(key, &new_stubs).unwrap();
        let chain = self.chain.last().unwrap().child(&info.diff_id);
        assert_eq!(self.snaps.commit(key, &chain).unwrap(), Created::New);
        self.diff_ids.push(info.diff_id.clone());
        self.chain.push(chain);

        // The layers so far, unpacked from scratch, give what the step saw.
        let fresh = self.dir.join(format!("check-{key}"));
        self.unpack_all(&fresh);
        assert_same_tree(
            &expected,
            &capture(&fresh),
            &format!("{key}: layers vs merged view"),
        );
        // And so does the committed snapshot stack (and its flattened form).
        let flat = self.snaps.flat(&self.chain).unwrap();
        assert_same_tree(
            &expected,
            &capture(&flat),
            &format!("{key}: flattened snapshot"),
        );
        let layer = summarize(&self.store, &info.diff_id);
        assert!(
            layer
                .iter()
                .all(|e| !new_stubs.iter().any(|s| e.path.starts_with(s))),
            "{key}: stubs in the layer: {layer:#?}"
        );
        layer
    }

    fn unpack_all(&self, dst: &Path) {
        fs::create_dir_all(dst).unwrap();
        for d in &self.diff_ids {
            unpack_layer(
                dst,
                self.store.open_blob(d).unwrap(),
                &UnpackOptions::for_current_user(),
            )
            .unwrap();
        }
    }

    /// A fresh step's view of the current chain equals the layers unpacked.
    fn check_view(&self, key: &str) {
        let mounts = self.snaps.prepare(key, &self.chain).unwrap();
        let target = self.dir.join(format!("mnt-{key}"));
        let root = match &mounts {
            Mounts::Overlay(m) => {
                fs::create_dir_all(&target).unwrap();
                m.mount(&target).unwrap();
                target.clone()
            }
            Mounts::Copy { rootfs } => rootfs.clone(),
        };
        let view = capture(&root);
        if let Mounts::Overlay(_) = mounts {
            overlay::unmount(&target).unwrap();
        }
        self.snaps.remove(key).unwrap();
        let fresh = self.dir.join(format!("check-{key}"));
        self.unpack_all(&fresh);
        assert_same_tree(
            &capture(&fresh),
            &view,
            &format!("{key}: view of pulled layers"),
        );
    }
}

const T0: i64 = 1_600_000_000;

fn base_layer(
    w: &mut LayerWriter<kiln_oci::layer::LayerSink>,
    owners: bool,
) -> Result<(), kiln_oci::LayerError> {
    let own = |e: TarEntry, uid: u64, gid: u64| if owners { e.with_owner(uid, gid) } else { e };
    let file = |w: &mut LayerWriter<_>, e: TarEntry, data: &[u8]| {
        let e = TarEntry {
            size: data.len() as u64,
            ..e
        }
        .with_mtime(T0, 0);
        w.append(&e, Some(&mut &data[..]))
    };
    for d in [
        "etc",
        "home",
        "opt",
        "opt/d",
        "opt/d/sub",
        "srv",
        "srv/y",
        "usr",
        "usr/bin",
        "usr/share",
        "usr/share/doc",
        "usr/share/doc/a",
        "usr/share/doc/b",
        "var",
        "var/h",
        "data",
    ] {
        w.append(&TarEntry::dir(d).with_mtime(T0, 0), None)?;
    }
    w.append(
        &own(TarEntry::dir("home/u"), 1000, 1000).with_mtime(T0, 0),
        None,
    )?;
    file(w, TarEntry::file("etc/motd", 0), b"hello\n")?;
    file(
        w,
        TarEntry::file("etc/passwd", 0),
        b"root:x:0:0:root:/root:/bin/sh\n",
    )?;
    file(
        w,
        own(TarEntry::file("etc/shadow", 0).with_mode(0o640), 0, 42),
        b"root:*:1::::::\n",
    )?;
    file(w, TarEntry::file("etc/keep", 0), b"keep\n")?;
    file(
        w,
        own(TarEntry::file("home/u/file", 0), 1000, 1000),
        b"mine\n",
    )?;
    file(
        w,
        TarEntry::file("usr/bin/tool", 0).with_mode(0o755),
        b"#!/bin/sh\necho tool\n",
    )?;
    w.append(
        &TarEntry::hardlink("usr/bin/tool-link", "usr/bin/tool"),
        None,
    )?;
    file(w, TarEntry::file("usr/share/doc/a/README", 0), b"a\n")?;
    file(w, TarEntry::file("usr/share/doc/b/README", 0), b"b\n")?;
    file(w, TarEntry::file("opt/d/old1", 0), b"old1\n")?;
    file(w, TarEntry::file("opt/d/sub/old2", 0), b"old2\n")?;
    file(w, TarEntry::file("srv/x", 0), b"x\n")?;
    file(w, TarEntry::file("srv/y/inner", 0), b"y\n")?;
    file(w, TarEntry::file("var/h/z", 0), b"z\n")?;
    file(w, TarEntry::file("var/h/w", 0).with_mode(0o600), b"w\n")?;
    file(w, TarEntry::file("data/f1", 0), b"f1\n")?;
    file(w, TarEntry::file("data/f2", 0), b"f2\n")?;
    w.append(&TarEntry::symlink("bin", "usr/bin").with_mtime(T0, 0), None)?;
    Ok(())
}

/// A pulled layer with OCI whiteouts, opaque markers and a replaced type.
fn pulled_layer(
    w: &mut LayerWriter<kiln_oci::layer::LayerSink>,
) -> Result<(), kiln_oci::LayerError> {
    w.append(&TarEntry::dir("usr").with_mtime(T0, 0), None)?;
    w.append(&TarEntry::dir("usr/share").with_mtime(T0, 0), None)?;
    w.append(&TarEntry::whiteout("usr/share/doc"), None)?;
    w.append(&TarEntry::dir("var").with_mtime(T0, 0), None)?;
    w.append(&TarEntry::dir("var/h2").with_mtime(T0, 0), None)?;
    w.append(&TarEntry::opaque_whiteout("var/h2"), None)?;
    let data = b"pulled\n";
    w.append(
        &TarEntry::file("var/h2/pulled", data.len() as u64).with_mtime(T0, 0),
        Some(&mut &data[..]),
    )?;
    w.append(&TarEntry::symlink("data", "/srv").with_mtime(T0, 0), None)?;
    Ok(())
}

fn set_mtime(path: &Path, secs: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

fn sh(script: &str, root: &Path) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// security.capability granting cap_net_raw, permitted and effective (VFS_CAP_REVISION_2).
const CAP_NET_RAW: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Runs the whole scenario in `dir` with `mode`; returns every step's layer.
fn scenario(dir: &Path, mode: Mode) -> Vec<Vec<Summary>> {
    let chown = can_chown();
    let caps = privileged();
    let mut b = Build::new(dir, mode);
    assert_eq!(b.snaps.mode(), mode);
    b.pull(|w| base_layer(w, chown));
    let mut layers = Vec::new();

    layers.push(b.step("s1-basics", |r| {
        fs::create_dir(r.join("app")).unwrap();
        fs::write(r.join("app/hello"), b"hi\n").unwrap();
        fs::hard_link(r.join("app/hello"), r.join("app/hello-link")).unwrap();
        fs::write(r.join("app/run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(r.join("app/run.sh"), fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("hello", r.join("app/current")).unwrap();
        xattr::set(r.join("app/hello"), "user.kiln", b"1").unwrap();
        if caps {
            xattr::set(r.join("app/run.sh"), "security.capability", &CAP_NET_RAW).unwrap();
        }
        // Content change, chmod-only, touch-only, chown-only of lower files.
        fs::write(r.join("etc/motd"), b"changed\n").unwrap();
        fs::set_permissions(r.join("etc/passwd"), fs::Permissions::from_mode(0o600)).unwrap();
        set_mtime(&r.join("etc/keep"), T0 + 1000);
        if chown {
            std::os::unix::fs::lchown(r.join("home/u/file"), Some(2000), Some(2000)).unwrap();
        }
        // Whiteouts into the base layer: a file and a whole directory.
        fs::remove_file(r.join("data/f1")).unwrap();
        fs::remove_dir_all(r.join("usr/share/doc/a")).unwrap();
    }));

    layers.push(b.step("s2-replace", |r| {
        // Opaque: a directory deleted and made again.
        fs::remove_dir_all(r.join("opt/d")).unwrap();
        fs::create_dir(r.join("opt/d")).unwrap();
        fs::write(r.join("opt/d/new"), b"new\n").unwrap();
        // A directory over a file, a file over a directory.
        fs::remove_file(r.join("srv/x")).unwrap();
        fs::create_dir(r.join("srv/x")).unwrap();
        fs::write(r.join("srv/x/inner"), b"inner\n").unwrap();
        fs::remove_dir_all(r.join("srv/y")).unwrap();
        fs::write(r.join("srv/y"), b"file now\n").unwrap();
        // Renames: a file, and a directory (overlay refuses with EXDEV; mv copies).
        fs::rename(r.join("etc/motd"), r.join("etc/motd.old")).unwrap();
        sh("mv var/h var/h2", r);
        // Whiteout into the previous step's layer, keeping the other hard link.
        fs::remove_file(r.join("app/hello")).unwrap();
        std::os::unix::fs::symlink("run.sh", r.join("app/current.new")).unwrap();
        fs::rename(r.join("app/current.new"), r.join("app/current")).unwrap();
    }));

    layers.push(b.step("s3-recreate", |r| {
        // Re-create what earlier layers deleted.
        fs::write(r.join("data/f1"), b"f1 again\n").unwrap();
        fs::create_dir(r.join("usr/share/doc/a")).unwrap();
        fs::write(r.join("usr/share/doc/a/NEW"), b"a2\n").unwrap();
        // Delete inside the opaque directory of the previous step.
        fs::remove_file(r.join("opt/d/new")).unwrap();
        fs::create_dir(r.join("private")).unwrap();
        fs::set_permissions(r.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(r.join("app/hello"), b"hello back\n").unwrap();
        // A new name for an unchanged lower file: overlay copies it up, so both names go in.
        fs::hard_link(r.join("data/f2"), r.join("data/f2-link")).unwrap();
    }));

    // A pulled layer with OCI whiteouts on top of the committed steps, made through `create`.
    b.pull(pulled_layer);
    b.check_view("view-after-pull");
    layers.push(b.step("s4-after-pull", |r| {
        fs::write(r.join("var/h2/pulled"), b"edited\n").unwrap();
        fs::remove_file(r.join("etc/keep")).unwrap();
    }));
    layers
}

fn expect_entries(layers: &[Vec<Summary>]) {
    let paths = |i: usize| -> Vec<String> {
        layers[i]
            .iter()
            .map(|e| e.path.to_string_lossy().into_owned())
            .collect()
    };
    let s1 = paths(0);
    for p in [
        "data/.wh.f1",
        "usr/share/doc/.wh.a",
        "etc/motd",
        "etc/passwd",
        "etc/keep",
        "app/run.sh",
    ] {
        assert!(s1.contains(&p.to_string()), "step 1 lacks {p}: {s1:?}");
    }
    // Whiteouts come before the other entries of their directory.
    let data = s1.iter().position(|p| p == "data/.wh.f1").unwrap();
    assert_eq!(s1[data - 1], "data");
    let link = layers[0]
        .iter()
        .find(|e| e.path == Path::new("app/hello-link"))
        .unwrap();
    assert_eq!(link.kind, EntryKind::Hardlink("app/hello".into()));
    let run = layers[0]
        .iter()
        .find(|e| e.path == Path::new("app/run.sh"))
        .unwrap();
    assert_eq!(run.mode, 0o4755);
    let s2 = paths(1);
    for p in [
        "opt/d/.wh..wh..opq",
        "srv/x/.wh..wh..opq",
        "var/.wh.h",
        "etc/.wh.motd",
        "app/.wh.hello",
    ] {
        assert!(s2.contains(&p.to_string()), "step 2 lacks {p}: {s2:?}");
    }
    let s3 = paths(2);
    assert!(s3.contains(&"opt/d/.wh.new".to_string()), "{s3:?}");
    let f2 = layers[2]
        .iter()
        .find(|e| e.path == Path::new("data/f2"))
        .unwrap();
    assert_eq!(f2.kind, EntryKind::File);
    let f2_link = layers[2]
        .iter()
        .find(|e| e.path == Path::new("data/f2-link"))
        .unwrap();
    assert_eq!(f2_link.kind, EntryKind::Hardlink("data/f2".into()));
    for l in layers {
        assert!(l
            .iter()
            .all(|e| !e.xattrs.keys().any(|k| k.contains(".overlay."))));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn root_overlay_steps_apply_to_the_merged_view() {
    run_as(
        "root_overlay_steps_apply_to_the_merged_view",
        As::Root,
        || {
            let dir = tempdir();
            let mode = detect_mode(dir.path());
            assert_eq!(mode, Mode::Overlay { userxattr: false });
            let layers = scenario(dir.path(), mode);
            expect_entries(&layers);
            let caps = layers[0]
                .iter()
                .find(|e| e.path == Path::new("app/run.sh"))
                .unwrap();
            assert_eq!(
                caps.xattrs.get("security.capability"),
                Some(&CAP_NET_RAW.to_vec())
            );
        },
    );
}

#[test]
fn root_copy_fallback_gives_the_same_layers() {
    run_as("root_copy_fallback_gives_the_same_layers", As::Root, || {
        let (a, b) = (tempdir(), tempdir());
        let over = scenario(a.path(), Mode::Overlay { userxattr: false });
        let copy = scenario(b.path(), Mode::Copy);
        assert_eq!(over.len(), copy.len());
        for (i, (o, c)) in over.iter().zip(&copy).enumerate() {
            assert_eq!(o, c, "step {i}: overlay and copy layers differ");
        }
    });
}

#[test]
fn userns_root_userxattr_steps_apply_to_the_merged_view() {
    run_as(
        "userns_root_userxattr_steps_apply_to_the_merged_view",
        As::UsernsRoot,
        || {
            let dir = tempdir();
            let mode = detect_mode(dir.path());
            assert_eq!(mode, Mode::Overlay { userxattr: true });
            expect_entries(&scenario(dir.path(), mode));
        },
    );
}

#[test]
fn rootless_kilntest_userxattr_steps_match_the_copy_fallback() {
    run_as(
        "rootless_kilntest_userxattr_steps_match_the_copy_fallback",
        As::KilntestUserns,
        || {
            assert!(can_chown(), "subordinate ids are mapped");
            let (a, b) = (tempdir(), tempdir());
            let mode = detect_mode(a.path());
            assert_eq!(mode, Mode::Overlay { userxattr: true });
            let over = scenario(a.path(), mode);
            expect_entries(&over);
            let copy = scenario(b.path(), Mode::Copy);
            for (i, (o, c)) in over.iter().zip(&copy).enumerate() {
                assert_eq!(o, c, "step {i}: overlay and copy layers differ");
            }
        },
    );
}

#[test]
fn rootless_kilntest_without_userns_falls_back_to_copies() {
    run_as(
        "rootless_kilntest_without_userns_falls_back_to_copies",
        As::Kilntest,
        || {
            assert_eq!(nix::unistd::getuid().as_raw(), KILNTEST_UID);
            let dir = tempdir();
            let mode = detect_mode(dir.path());
            assert_eq!(mode, Mode::Copy);
            expect_entries(&scenario(dir.path(), mode));
        },
    );
}

/// Builds `n` layers with steps (each adds `layers/i`, deletes `layers/i-2`, rewrites
/// `counter`) and mounts a step on top of all of them.
fn deep_chain(dir: &Path, n: usize) -> (usize, Vec<PathBuf>) {
    let mode = detect_mode(dir);
    assert!(matches!(mode, Mode::Overlay { .. }));
    let mut b = Build::new(dir, mode);
    b.pull(|w| {
        w.append(&TarEntry::dir("layers"), None)?;
        w.append(&TarEntry::file("counter", 1), Some(&mut &b"0"[..]))
    });
    let target = dir.join("mnt");
    fs::create_dir(&target).unwrap();
    for i in 1..n {
        let key = format!("l{i}");
        let Mounts::Overlay(m) = b.snaps.prepare(&key, &b.chain).unwrap() else {
            panic!("overlay mode gives overlay mounts");
        };
        m.mount(&target).unwrap();
        fs::write(target.join(format!("layers/{i}")), i.to_string()).unwrap();
        if i >= 3 {
            fs::remove_file(target.join(format!("layers/{}", i - 2))).unwrap();
        }
        fs::write(target.join("counter"), i.to_string()).unwrap();
        overlay::unmount(&target).unwrap();
        let diff_id = Digest::of(format!("layer {i}").as_bytes());
        let chain = b.chain.last().unwrap().child(&diff_id);
        b.snaps.commit(&key, &chain).unwrap();
        b.chain.push(chain);
    }
    assert_eq!(b.chain.len(), n);
    let Mounts::Overlay(m) = b.snaps.prepare("top", &b.chain).unwrap() else {
        panic!("overlay mode gives overlay mounts");
    };
    assert!(
        m.options().len() > overlay::max_data_len(),
        "absolute paths would not fit"
    );
    m.mount(&target).unwrap();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(target.to_str().unwrap()))
        .expect("the mount is listed");
    let lowerdir = line
        .split(',')
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap();
    let mounted_lowers = lowerdir.split(':').count();
    assert_eq!(mounted_lowers, m.lowers.len());
    let mut names: Vec<String> = fs::read_dir(target.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want = vec![(n - 1).to_string(), (n - 2).to_string()];
    want.sort();
    assert_eq!(names, want);
    assert_eq!(
        fs::read_to_string(target.join("counter")).unwrap(),
        (n - 1).to_string()
    );
    overlay::unmount(&target).unwrap();
    b.snaps.remove("top").unwrap();
    (mounted_lowers, m.lowers)
}

#[test]
fn root_deep_chain_130_lowers_in_one_mount() {
    run_as("root_deep_chain_130_lowers_in_one_mount", As::Root, || {
        let dir = tempdir();
        let (mounted, lowers) = deep_chain(dir.path(), 130);
        assert_eq!(mounted, 130, "no flattening below the page limit");
        assert!(lowers.last().unwrap().ends_with("flat") || lowers.last().unwrap().ends_with("fs"));
    });
}

#[test]
fn userns_root_deep_chain_130_lowers_in_one_mount() {
    run_as(
        "userns_root_deep_chain_130_lowers_in_one_mount",
        As::UsernsRoot,
        || {
            let dir = tempdir();
            assert_eq!(deep_chain(dir.path(), 130).0, 130);
        },
    );
}

#[test]
fn root_deep_chain_past_one_mount_is_flattened() {
    run_as(
        "root_deep_chain_past_one_mount_is_flattened",
        As::Root,
        || {
            let dir = tempdir();
            let (mounted, lowers) = deep_chain(dir.path(), 300);
            assert!(mounted < 300 && mounted > 100, "{mounted} lowers");
            let bottom = lowers.last().unwrap();
            assert!(
                bottom.ends_with("flat"),
                "cut at a flattened layer: {}",
                bottom.display()
            );
            // Cut at a fixed depth (a multiple of 64 layers), so later steps reuse it.
            assert_eq!((300 - mounted + 1) % 64, 0, "{mounted} lowers");
        },
    );
}

#[test]
fn root_differ_maps_every_whiteout_form() {
    if !privileged() {
        eprintln!("skipping: mknod and trusted.* xattrs need root");
        return;
    }
    let dir = tempdir();
    let u = dir.path().join("upper");
    for d in ["a", "op", "opx", "opu", "skipme", "etc"] {
        fs::create_dir_all(u.join(d)).unwrap();
    }
    let mk = |p: &Path| {
        nix::sys::stat::mknod(
            p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap()
    };
    // Two whiteouts sharing an inode, as overlay makes them: two whiteouts, not a hard link.
    mk(&u.join("a/gone"));
    fs::hard_link(u.join("a/gone"), u.join("gone-too")).unwrap();
    // An xattr whiteout (overlay reads these since 6.7).
    fs::write(u.join("a/xgone"), b"").unwrap();
    xattr::set(u.join("a/xgone"), "trusted.overlay.whiteout", b"").unwrap();
    // Opaque in both namespaces; "x" is not opaque.
    xattr::set(u.join("op"), "trusted.overlay.opaque", b"y").unwrap();
    xattr::set(u.join("opu"), "user.overlay.opaque", b"y").unwrap();
    xattr::set(u.join("opx"), "trusted.overlay.opaque", b"x").unwrap();
    fs::write(u.join("op/kept"), b"kept").unwrap();
    // Overlay's bookkeeping goes, real xattrs stay.
    fs::write(u.join("a/file"), b"data").unwrap();
    xattr::set(u.join("a/file"), "trusted.overlay.origin", b"\0\x01").unwrap();
    xattr::set(u.join("a/file"), "user.overlay.origin", b"").unwrap();
    xattr::set(u.join("a/file"), "user.mime", b"text/plain").unwrap();
    xattr::set(u.join("a/file"), "security.capability", &CAP_NET_RAW).unwrap();
    fs::hard_link(u.join("a/file"), u.join("a/file2")).unwrap();
    // A socket cannot go in a tar; a device and a fifo can.
    let _sock = std::os::unix::net::UnixListener::bind(u.join("a/sock")).unwrap();
    nix::sys::stat::mknod(
        &u.join("a/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    nix::unistd::mkfifo(
        &u.join("a/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    fs::write(u.join("skipme/x"), b"x").unwrap();
    fs::write(u.join("etc/hosts"), b"").unwrap();
    set_mtime(&u.join("a/file"), 2_000_000_000);

    let opts = DiffOptions::default()
        .skip("/skipme")
        .skip("etc/hosts")
        .clamp_mtime(Some(1_700_000_000));
    let mut w = LayerWriter::new(Vec::new());
    let stats = diff_upper(&u, &opts, &mut w).unwrap();
    w.finish().unwrap();
    let tar = w.into_inner();
    let mut r = open_layer(&tar[..]).unwrap();
    let mut got = Vec::new();
    while let Some(e) = r.next_entry().unwrap() {
        got.push(e);
    }
    let paths: Vec<&str> = got.iter().map(|e| e.path.to_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            ".wh.gone-too",
            "a",
            "a/.wh.gone",
            "a/.wh.xgone",
            "a/fifo",
            "a/file",
            "a/file2",
            "a/null",
            "etc",
            "op",
            "op/.wh..wh..opq",
            "op/kept",
            "opu",
            "opu/.wh..wh..opq",
            "opx",
        ]
    );
    let by = |p: &str| got.iter().find(|e| e.path == Path::new(p)).unwrap();
    let file = by("a/file");
    assert_eq!(
        file.xattrs.keys().collect::<Vec<_>>(),
        ["security.capability", "user.mime"]
    );
    assert_eq!(file.mtime, 1_700_000_000, "clamped");
    assert_eq!(by("a/file2").kind, EntryKind::Hardlink("a/file".into()));
    assert_eq!(by("a/null").kind, EntryKind::Char(1, 3));
    assert_eq!(by("a/fifo").kind, EntryKind::Fifo);
    assert_eq!(stats.whiteouts, 3);
    assert_eq!(stats.opaque_dirs, 2);
    assert_eq!(stats.hardlinks, 1);
    assert_eq!(stats.sockets, 1);
    assert_eq!(stats.skipped, 2);

    // Told the mount's namespace, the differ ignores look-alikes in the other one: on a
    // mount without userxattr, user.overlay.opaque is something a step wrote.
    let trusted_only = DiffOptions {
        overlay_xattrs: Some(overlay::XattrFlavour::Trusted),
        ..DiffOptions::default()
    };
    let mut w = LayerWriter::new(Vec::new());
    let stats = diff_upper(&u, &trusted_only, &mut w).unwrap();
    assert_eq!(stats.opaque_dirs, 1, "only op, not opu");
}

/// Makes a committed snapshot full of files owned by other ids, unwritable directories, and
/// an active step with overlay's own `work/work` (mode 000).
fn foreign_owned_snapshot(dir: &Path, owner: u32) -> (Snapshots, ChainId) {
    fs::create_dir_all(dir).unwrap();
    let mode = detect_mode(dir);
    let mut b = Build::new(dir, mode);
    b.pull(|w| {
        w.append(&TarEntry::dir("etc"), None)?;
        w.append(
            &TarEntry::dir("srv").with_owner(u64::from(owner), u64::from(owner)),
            None,
        )
    });
    b.step("foreign", |r| {
        fs::create_dir_all(r.join("srv/ro/deep")).unwrap();
        fs::write(r.join("srv/ro/deep/f"), b"f").unwrap();
        for p in ["srv/ro/deep/f", "srv/ro/deep", "srv/ro"] {
            std::os::unix::fs::lchown(r.join(p), Some(owner), Some(owner)).unwrap();
        }
        fs::set_permissions(r.join("srv/ro/deep"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(r.join("srv/ro"), fs::Permissions::from_mode(0o000)).unwrap();
    });
    let Mounts::Overlay(m) = b.snaps.prepare("left-active", &b.chain).unwrap() else {
        panic!("overlay mode");
    };
    let target = dir.join("mnt-left");
    fs::create_dir(&target).unwrap();
    m.mount(&target).unwrap();
    fs::create_dir(target.join("y")).unwrap();
    fs::write(target.join("y/f"), b"f").unwrap();
    for p in ["y/f", "y"] {
        std::os::unix::fs::lchown(target.join(p), Some(owner), Some(owner)).unwrap();
    }
    overlay::unmount(&target).unwrap();
    (b.snaps.clone(), b.chain.last().unwrap().clone())
}

#[test]
fn root_cleanup_removes_foreign_owned_snapshots() {
    run_as(
        "root_cleanup_removes_foreign_owned_snapshots",
        As::Root,
        || {
            let dir = tempdir();
            let (snaps, top) = foreign_owned_snapshot(dir.path(), 4242);
            snaps.remove("left-active").unwrap();
            snaps.remove_snapshot(&top).unwrap();
            assert!(!snaps.exists(&top));
            assert!(!snaps.dir().join("active/left-active").exists());
            for c in snaps.list().unwrap() {
                snaps.remove_snapshot(&c).unwrap();
            }
            assert!(snaps.list().unwrap().is_empty());
        },
    );
}

const CLEANUP_DIR_ENV: &str = "KILN_SNAPSHOT_TEST_DIR";

/// Inside the build user namespace everything is removable; from outside, kilntest cannot
/// remove what the step left owned by a subordinate id.
#[test]
fn rootless_kilntest_cleanup_works_only_inside_the_userns() {
    let name = "rootless_kilntest_cleanup_works_only_inside_the_userns";
    if in_child(name) {
        let dir = PathBuf::from(std::env::var(CLEANUP_DIR_ENV).unwrap());
        if can_chown() {
            // Inside: make two, remove one completely.
            let (snaps, top) = foreign_owned_snapshot(&dir.join("inside"), 1000);
            snaps.remove("left-active").unwrap();
            snaps.remove_snapshot(&top).unwrap();
            assert!(!snaps.exists(&top));
            let (_, top) = foreign_owned_snapshot(&dir.join("left"), 1000);
            fs::write(dir.join("left-chain"), top.to_string()).unwrap();
        } else {
            // Outside: the same call fails, naming the path.
            let top: ChainId = fs::read_to_string(dir.join("left-chain"))
                .unwrap()
                .parse()
                .unwrap();
            let snaps = Snapshots::open(&dir.join("left/store"), Mode::Copy).unwrap();
            let err = snaps.remove_snapshot(&top).unwrap_err();
            assert!(matches!(err, SnapshotError::Io { .. }), "{err}");
            let err = snaps.remove("left-active").unwrap_err();
            assert!(err.to_string().contains("left-active"), "{err}");
        }
        return;
    }
    if !nix::unistd::geteuid().is_root() || !kilntest_exists() {
        eprintln!("skipping {name}: needs root and the user kilntest");
        return;
    }
    let dir = tempdir();
    nix::unistd::chown(
        dir.path(),
        Some(nix::unistd::Uid::from_raw(KILNTEST_UID)),
        Some(nix::unistd::Gid::from_raw(KILNTEST_UID)),
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    spawn(name, As::KilntestUserns, &[(CLEANUP_DIR_ENV, d)]);
    spawn(name, As::Kilntest, &[(CLEANUP_DIR_ENV, d)]);
    // Root cleans up what kilntest could not (tempdir's drop).
}

/// A step that turned `etc` into a symlink to a host directory must not make `revert` of
/// `etc/resolv.conf` delete the host's file.
#[test]
fn revert_does_not_follow_symlinks_out_of_the_step() {
    let dir = tempdir();
    let host = dir.path().join("host-etc");
    fs::create_dir(&host).unwrap();
    fs::write(host.join("resolv.conf"), b"precious").unwrap();
    let snaps = Snapshots::open(&dir.path().join("store"), Mode::Copy).unwrap();
    let Mounts::Copy { rootfs } = snaps.prepare("s", &[]).unwrap() else {
        panic!("copy mode");
    };
    std::os::unix::fs::symlink(&host, rootfs.join("etc")).unwrap();
    snaps
        .revert("s", &[PathBuf::from("/etc/resolv.conf")])
        .unwrap();
    assert_eq!(fs::read(host.join("resolv.conf")).unwrap(), b"precious");
    assert!(matches!(
        snaps.revert("s", &[PathBuf::from("../x")]),
        Err(SnapshotError::BadPath { .. })
    ));
    snaps.remove("s").unwrap();
    assert!(host.join("resolv.conf").exists());
}

#[test]
fn create_is_atomic_and_idempotent() {
    let dir = tempdir();
    let snaps = Snapshots::open(dir.path(), Mode::Copy).unwrap();
    let c = ChainId::base(&Digest::of(b"layer"));
    let err = snaps
        .create(&[], &c, |root| -> Result<(), BoxError> {
            fs::write(root.join("half"), b"x")?;
            Err("unpacking failed".into())
        })
        .unwrap_err();
    assert!(matches!(err, SnapshotError::Fill { .. }), "{err}");
    assert!(!snaps.exists(&c), "a failed fill leaves nothing");
    assert_eq!(fs::read_dir(snaps.dir().join("tmp")).unwrap().count(), 0);
    let made = snaps
        .create(&[], &c, |root| fs::write(root.join("f"), b"x"))
        .unwrap();
    assert_eq!(made, Created::New);
    let again = snaps
        .create(&[], &c, |_| -> Result<(), BoxError> {
            panic!("not called again")
        })
        .unwrap();
    assert_eq!(again, Created::Existing);
    let missing = ChainId::base(&Digest::of(b"missing"));
    assert!(matches!(
        snaps.prepare("k", &[c, missing]),
        Err(SnapshotError::NotFound { .. })
    ));
    assert!(matches!(
        snaps.diff(
            "never",
            &DiffOptions::default(),
            &mut LayerWriter::new(Vec::new())
        ),
        Err(SnapshotError::NoSuchKey { .. })
    ));
}
