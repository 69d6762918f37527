//! Applying layers: a normal root filesystem, whiteouts across layers, hostile layers that try
//! to reach outside the root, broken input, and whole images from the store.
//!
//! Layers are built with raw `tar::Header`s (the kiln writer refuses the names hostile
//! layers use). Tests that need root for part of what they check (ownership, device nodes,
//! switching to an unprivileged user) say so and check less when not root.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_oci::image::{self, History, ManifestFormat};
use kiln_oci::{Compression, ImageConfig, Store, TarEntry};
use kiln_snapshot::unpack::{unpack_image, unpack_layer, UnpackError, UnpackOptions, UnpackStats};
use tar::{EntryType, Header};

// ---------------------------------------------------------------------------------------------
// Building layers.

const T0: u64 = 1_600_000_000;

#[derive(Clone)]
struct E {
    name: Vec<u8>,
    ty: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Vec<u8>,
    data: Vec<u8>,
    dev: (u32, u32),
    pax: Vec<(String, Vec<u8>)>,
}

fn entry(name: &str, ty: EntryType, mode: u32) -> E {
    E {
        name: name.as_bytes().to_vec(),
        ty,
        mode,
        uid: 0,
        gid: 0,
        mtime: T0,
        link: Vec::new(),
        data: Vec::new(),
        dev: (0, 0),
        pax: Vec::new(),
    }
}

fn dir(name: &str) -> E {
    let name = if name.ends_with('/') {
        name.to_string()
    } else {
        format!("{name}/")
    };
    entry(&name, EntryType::Directory, 0o755)
}

fn file(name: &str, data: &str) -> E {
    E {
        data: data.as_bytes().to_vec(),
        ..entry(name, EntryType::Regular, 0o644)
    }
}

fn symlink(name: &str, target: &str) -> E {
    E {
        link: target.as_bytes().to_vec(),
        ..entry(name, EntryType::Symlink, 0o777)
    }
}

fn hardlink(name: &str, target: &str) -> E {
    E {
        link: target.as_bytes().to_vec(),
        ..entry(name, EntryType::Link, 0o644)
    }
}

fn fifo(name: &str) -> E {
    entry(name, EntryType::Fifo, 0o600)
}

fn chardev(name: &str, major: u32, minor: u32) -> E {
    E {
        dev: (major, minor),
        ..entry(name, EntryType::Char, 0o666)
    }
}

impl E {
    fn mode(mut self, mode: u32) -> E {
        self.mode = mode;
        self
    }
    fn owner(mut self, uid: u64, gid: u64) -> E {
        self.uid = uid;
        self.gid = gid;
        self
    }
    fn mtime(mut self, t: u64) -> E {
        self.mtime = t;
        self
    }
    fn pax(mut self, key: &str, value: &[u8]) -> E {
        self.pax.push((key.to_string(), value.to_vec()));
        self
    }
    fn xattr(self, name: &str, value: &[u8]) -> E {
        self.pax(&format!("SCHILY.xattr.{name}"), value)
    }
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
}

fn pax_record(body: &mut Vec<u8>, key: &str, value: &[u8]) {
    // "LEN key=value\n", where LEN counts its own digits.
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    body.extend_from_slice(format!("{len} {key}=").as_bytes());
    body.extend_from_slice(value);
    body.push(b'\n');
}

fn tar(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if !e.pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in &e.pax {
                pax_record(&mut body, k, v);
            }
            let mut h = Header::new_ustar();
            h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
            h.set_entry_type(EntryType::XHeader);
            h.set_mode(0o644);
            h.set_size(body.len() as u64);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(&body);
            pad(&mut out);
        }
        let mut h = Header::new_ustar();
        let old = h.as_old_mut();
        old.name[..e.name.len()].copy_from_slice(&e.name);
        old.linkname[..e.link.len()].copy_from_slice(&e.link);
        h.set_entry_type(e.ty);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(e.data.len() as u64);
        if matches!(e.ty, EntryType::Char | EntryType::Block) {
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn opts() -> UnpackOptions {
    UnpackOptions::for_current_user()
}

fn apply(root: &Path, entries: &[E]) -> Result<UnpackStats, UnpackError> {
    unpack_layer(root, &tar(entries)[..], &opts())
}

fn mtime(p: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Everything under `dir`: path → (kind, mode, size, mtime, content or link target).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else {
                format!("{:?}", fs::read(&p).unwrap())
            };
            let line = format!("{:o} {} {} {}", m.mode(), m.len(), m.mtime(), what);
            out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), line);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// A normal root filesystem.

/// File capability `cap_net_raw+ep` (vfs_cap_data revision 2).
const CAP_NET_RAW: [u8; 20] = [
    0x01, 0, 0, 0x02, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn rootfs_layer() -> Vec<E> {
    vec![
        dir("./").mode(0o755).mtime(T0 + 1),
        dir("bin").mtime(T0 + 2),
        file("bin/busybox", "BB").mode(0o755),
        symlink("bin/sh", "busybox").mtime(T0 + 3),
        hardlink("bin/ls", "bin/busybox"),
        file("bin/ping", "PING")
            .mode(0o755)
            .xattr("security.capability", &CAP_NET_RAW)
            .xattr("user.comment", b"pings"),
        dir("dev"),
        chardev("dev/null", 1, 3).mode(0o666),
        dir("etc").mtime(T0 + 4).xattr("trusted.kiln", b"t"),
        file("etc/shadow", "root:*:\n").mode(0o640).owner(0, 42),
        dir("home"),
        dir("home/user").mode(0o700).owner(1000, 1000),
        file("home/user/.profile", "PS1=$\n").owner(1000, 1000),
        dir("run").mtime(T0 + 5),
        fifo("run/initctl").mode(0o600),
        dir("tmp").mode(0o1777),
        // No usr/ or usr/bin/ entries: parents are created as needed.
        file("usr/bin/su", "SU").mode(0o4755),
        file("usr/bin/wall", "WALL").mode(0o2755).owner(0, 5),
        dir("var").mtime(T0 + 6),
        dir("var/log").mode(0o2775).mtime(T0 + 7),
        // Debian's own layout: an absolute symlink, then content through it.
        symlink("var/run", "/run"),
        file("var/run/foo.pid", "1\n"),
        file("var/nanos", "n").pax("mtime", b"1600000000.5"),
    ]
}

#[test]
fn normal_rootfs() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let stats = apply(root, &rootfs_layer()).unwrap();
    assert_eq!(stats.entries, 23);

    assert_eq!(read(&root.join("bin/busybox")), "BB");
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let bb = fs::metadata(root.join("bin/busybox")).unwrap();
    let ls = fs::metadata(root.join("bin/ls")).unwrap();
    assert_eq!(
        (bb.ino(), bb.nlink()),
        (ls.ino(), 2),
        "hard link shares the inode"
    );

    // The pid file went through var/run -> /run inside the root.
    assert_eq!(read(&root.join("run/foo.pid")), "1\n");
    assert_eq!(
        fs::read_link(root.join("var/run")).unwrap(),
        Path::new("/run")
    );

    assert_eq!(mode(&root.join("usr/bin/su")), 0o4755);
    assert_eq!(mode(&root.join("tmp")), 0o1777);
    assert_eq!(mode(&root.join("var/log")), 0o2775);
    assert_eq!(mode(&root.join("home/user")), 0o700);
    assert_eq!(mode(&root.join("etc/shadow")), 0o640);
    assert_eq!(mode(&root.join("usr")), 0o755, "implicit parents are 0755");
    assert!(fs::symlink_metadata(root.join("run/initctl"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(mode(&root.join("run/initctl")), 0o600);

    // Directory times are the layer's, although children were created after them.
    assert_eq!(mtime(root), (T0 as i64 + 1, 0));
    assert_eq!(mtime(&root.join("bin")), (T0 as i64 + 2, 0));
    assert_eq!(mtime(&root.join("etc")), (T0 as i64 + 4, 0));
    assert_eq!(mtime(&root.join("run")), (T0 as i64 + 5, 0));
    assert_eq!(mtime(&root.join("var")), (T0 as i64 + 6, 0));
    assert_eq!(
        mtime(&root.join("bin/sh")),
        (T0 as i64 + 3, 0),
        "symlink's own time"
    );
    assert_eq!(mtime(&root.join("var/nanos")), (T0 as i64, 500_000_000));

    assert_eq!(
        xattr::get(root.join("bin/ping"), "user.comment")
            .unwrap()
            .as_deref(),
        Some(&b"pings"[..])
    );

    if is_root() {
        let sh = fs::metadata(root.join("etc/shadow")).unwrap();
        assert_eq!((sh.uid(), sh.gid()), (0, 42));
        let home = fs::metadata(root.join("home/user/.profile")).unwrap();
        assert_eq!((home.uid(), home.gid()), (1000, 1000));
        // chown before chmod: setgid survives the group change.
        let wall = fs::metadata(root.join("usr/bin/wall")).unwrap();
        assert_eq!((wall.gid(), wall.mode() & 0o7777), (5, 0o2755));
        let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!(null.mode() & 0o7777, 0o666);
        assert_eq!(stats.devices_skipped, 0);
        // Capabilities are set after chown/chmod, which would clear them.
        assert_eq!(
            xattr::get(root.join("bin/ping"), "security.capability")
                .unwrap()
                .as_deref(),
            Some(&CAP_NET_RAW[..])
        );
        assert_eq!(
            xattr::get(root.join("etc"), "trusted.kiln")
                .unwrap()
                .as_deref(),
            Some(&b"t"[..])
        );
        assert_eq!((stats.xattrs_set, stats.xattrs_failed), (3, 0));
    }
}

#[test]
fn chown_refuses_ids_out_of_range() {
    if !is_root() {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let err = apply(t.path(), &[file("f", "x").pax("uid", b"4294967296")]).unwrap_err();
    assert!(matches!(err, UnpackError::Owner { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Unprivileged: the same kind of layer applied by uid 65534.

const CHILD_ENV: &str = "KILN_SNAPSHOT_UNPRIV_DIR";
const NOBODY: u32 = 65534;

fn unprivileged_layer() -> Vec<E> {
    vec![
        dir("dev").mtime(T0),
        chardev("dev/null", 1, 3),
        fifo("fifo"),
        file("su", "SU").mode(0o4755),
        file("ping", "P")
            .xattr("security.capability", &CAP_NET_RAW)
            .xattr("user.ok", b"1"),
        file("t", "T").xattr("trusted.x", b"1"),
        // A read-only directory with content: the unpacker must still fill it.
        dir("ro").mode(0o555).mtime(T0 + 9),
        file("ro/inside", "I"),
        dir("ro2").mode(0o555),
        dir("ro2/sub").mode(0o500),
        file("ro2/sub/f", "F"),
    ]
}

/// The second layer replaces a read-only tree, which needs write access inside it.
fn unprivileged_layer2() -> Vec<E> {
    vec![file("ro2", "now a file")]
}

/// Applies both layers; returns the first one's stats.
fn apply_unprivileged(root: &Path) -> String {
    let opts = UnpackOptions::for_current_user();
    let stats = unpack_layer(root, &tar(&unprivileged_layer())[..], &opts).unwrap();
    unpack_layer(root, &tar(&unprivileged_layer2())[..], &opts).unwrap();
    format!("{stats:?}")
}

/// Runs inside the re-executed test binary as uid 65534 (see
/// `unprivileged_user_skips_devices_and_keeps_its_ownership`); does nothing otherwise.
#[test]
fn unprivileged_child_helper() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    fs::write(dir.join("stats"), apply_unprivileged(&dir.join("root"))).unwrap();
}

fn check_unprivileged_result(root: &Path, stats: &str, uid: u32) {
    assert!(stats.contains("devices_skipped: 1"), "{stats}");
    assert!(
        stats.contains("xattrs_failed: 1"),
        "security.capability refused: {stats}"
    );
    assert!(
        stats.contains("xattrs_skipped: 1"),
        "trusted.* skipped: {stats}"
    );
    assert!(stats.contains("xattrs_set: 1"), "user.* set: {stats}");
    assert!(!root.join("dev/null").exists());
    assert!(fs::symlink_metadata(root.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(mode(&root.join("su")), 0o4755);
    assert_eq!(fs::metadata(root.join("su")).unwrap().uid(), uid);
    assert_eq!(read(&root.join("ro/inside")), "I");
    assert_eq!(mode(&root.join("ro")), 0o555);
    assert_eq!(mtime(&root.join("ro")), (T0 as i64 + 9, 0));
    assert_eq!(read(&root.join("ro2")), "now a file");
}

#[test]
fn unprivileged_user_skips_devices_and_keeps_its_ownership() {
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    fs::create_dir(&work).unwrap();
    fs::create_dir(work.join("root")).unwrap();
    if !is_root() {
        let uid = nix::unistd::geteuid().as_raw();
        let stats = apply_unprivileged(&work.join("root"));
        check_unprivileged_result(&work.join("root"), &stats, uid);
        return;
    }
    // Root: run the helper test as nobody. A re-exec, not a fork: forking a multi-threaded
    // test harness and carrying on in Rust is not safe.
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = Some(nix::unistd::Uid::from_raw(NOBODY));
    let nogroup = Some(nix::unistd::Gid::from_raw(NOBODY));
    for p in [&work, &work.join("root")] {
        nix::unistd::chown(p.as_path(), nobody, nogroup).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "unprivileged_child_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &work)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = fs::read_to_string(work.join("stats")).unwrap();
    check_unprivileged_result(&work.join("root"), &stats, NOBODY);
}

// ---------------------------------------------------------------------------------------------
// Whiteouts and replacement across layers.

#[test]
fn whiteouts_opaque_dirs_and_replacement_across_layers() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    apply(
        root,
        &[
            dir("a"),
            file("a/keep", "k"),
            file("a/gone", "g"),
            file("a/keep2", "k2"),
            dir("a/sub"),
            file("a/sub/x", "x"),
            dir("b"),
            dir("b/-dir"),
            file("b/-dir/lower", "l"),
            file("b/old1", "1"),
            dir("b/olddir"),
            file("b/olddir/deep", "d"),
            file("c", "file c"),
            dir("d"),
            dir("d/inner"),
            file("d/inner/f", "f"),
            file("gone2", "g"),
            symlink("e", "a"),
        ],
    )
    .unwrap();
    let stats = apply(
        root,
        &[
            // A directory over a directory: metadata only, contents stay.
            dir("a").mode(0o700).mtime(T0 + 50),
            file("a/.wh.gone", ""),
            file("a/.wh.sub", ""),
            // Written and whited out in the same layer: whiteouts hide lower layers only.
            file("a/fresh", "new"),
            file("a/.wh.fresh", ""),
            file(".wh.gone2", ""),
            // Entries that sort before the opaque marker belong to this layer and survive it.
            dir("b/-dir"),
            file("b/-dir/upper", "u"),
            file("b/-early", "e"),
            file("b/.wh..wh..opq", ""),
            file("b/new", "n"),
            // File replaced by a directory, non-empty directory replaced by a file.
            dir("c"),
            file("c/inside", "i"),
            file("d", "file d"),
            // A whiteout for something that never existed is not an error.
            file("nowhere/.wh.nothing", ""),
            // Whiteout through a symlinked parent (e -> a).
            file("e/.wh.keep2", ""),
        ],
    )
    .unwrap();
    assert_eq!(stats.whiteouts, 7);

    assert_eq!(names(&root.join("a")), ["fresh", "keep"]);
    assert_eq!(mode(&root.join("a")), 0o700);
    assert_eq!(mtime(&root.join("a")), (T0 as i64 + 50, 0));
    assert!(!root.join("gone2").exists());
    assert_eq!(names(&root.join("b")), ["-dir", "-early", "new"]);
    assert_eq!(
        names(&root.join("b/-dir")),
        ["upper"],
        "lower content under a kept dir is hidden too"
    );
    assert!(root.join("c").is_dir());
    assert_eq!(read(&root.join("c/inside")), "i");
    assert_eq!(read(&root.join("d")), "file d");
    assert!(!root.join("nowhere").exists(), "a whiteout creates nothing");

    // A third layer: opaque a directory this time written by an earlier layer only.
    apply(
        root,
        &[dir("a"), file("a/.wh..wh..opq", ""), file("a/only", "o")],
    )
    .unwrap();
    assert_eq!(names(&root.join("a")), ["only"]);
}

#[test]
fn replacing_the_root_with_a_file_is_refused() {
    let t = tempfile::tempdir().unwrap();
    for e in [
        file("./", "x"),
        file(".", "x"),
        symlink("./", "/etc"),
        hardlink(".", "a"),
    ] {
        let err = apply(t.path(), &[file("a", "a"), e.clone()]).unwrap_err();
        assert!(
            matches!(err, UnpackError::ReplacesRoot { .. }),
            "{:?}: {err}",
            String::from_utf8_lossy(&e.name)
        );
    }
    assert!(t.path().is_dir());
}

#[test]
fn hardlink_to_a_missing_target_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let err = apply(t.path(), &[hardlink("h", "nothing")]).unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::BadLinkTarget {
                reason: "does not exist",
                ..
            }
        ),
        "{err}"
    );
    let err = apply(t.path(), &[dir("d"), hardlink("h", "d")]).unwrap_err();
    assert!(matches!(err, UnpackError::BadLinkTarget { .. }), "{err}");
}

#[test]
fn names_with_nul_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let err = apply(t.path(), &[file("x", "").pax("path", b"a\0b")]).unwrap_err();
    assert!(matches!(err, UnpackError::InvalidEntry { .. }), "{err}");
    let err = apply(t.path(), &[symlink("s", "x").pax("linkpath", b"/etc\0x")]).unwrap_err();
    assert!(matches!(err, UnpackError::InvalidEntry { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Hostile layers.

/// A root three levels below a scratch dir that holds a canary, so `../../..` from the root
/// lands on the canary's parent if anything resolves on the host.
struct Arena {
    _t: tempfile::TempDir,
    top: PathBuf,
    root: PathBuf,
    canary: PathBuf,
}

impl Arena {
    fn new() -> Arena {
        let t = tempfile::tempdir().unwrap();
        let top = t.path().to_path_buf();
        let canary = top.join("canary");
        fs::create_dir(&canary).unwrap();
        fs::write(canary.join("secret"), "secret").unwrap();
        fs::write(canary.join("keep"), "keep").unwrap();
        let root = top.join("x/y/root");
        fs::create_dir_all(&root).unwrap();
        Arena {
            _t: t,
            top,
            root,
            canary,
        }
    }

    /// Everything outside the root.
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        let mut s = snapshot(&self.top);
        s.retain(|p, _| !p.starts_with("x/y/root"));
        s
    }
}

#[test]
fn hostile_layers_stay_inside_the_root() {
    let a = Arena::new();
    let canary = a.canary.to_str().unwrap().to_string();
    let host_passwd_existed = Path::new("/passwd").exists();
    let before = a.outside();

    // Layer 1 plants the links.
    apply(
        &a.root,
        &[
            symlink("etc", "/"),
            symlink("up", "../../.."),
            symlink("abs", &canary),
            symlink("abs-secret", &format!("{canary}/secret")),
        ],
    )
    .unwrap();

    // Each attack is its own layer over that root, so one refusal does not hide another.
    // In order: some attacks rely on what earlier ones left inside the root.
    let attacks: Vec<(&str, Vec<E>, bool)> = vec![
        (
            "write through an absolute symlink to /",
            vec![file("etc/passwd", "pwned")],
            true,
        ),
        (
            "write through a ../ symlink",
            vec![file("up/canary/x", "pwned")],
            true,
        ),
        (
            "symlink then write through it, one layer",
            vec![
                symlink("s", "../../../canary"),
                file("s/secret", "pwned"),
                file("s/new", "n"),
            ],
            true,
        ),
        (
            "absolute symlink to the host dir then write, one layer",
            vec![symlink("s2", &canary), file("s2/secret", "pwned")],
            false,
        ),
        // Links the symlink itself (tar semantics), never what it points to.
        (
            "hard link to a symlink to a host file",
            vec![hardlink("h0", "abs-secret")],
            true,
        ),
        (
            "write a file over a symlink to a host file",
            vec![file("abs-secret", "pwned")],
            true,
        ),
        (
            "whiteout through a symlink to /",
            vec![file("etc/.wh.canary", "")],
            true,
        ),
        (
            "whiteout through a ../ symlink",
            vec![file("up/.wh.canary", "")],
            true,
        ),
        (
            "hard link with ../ in the target",
            vec![hardlink("h", "../../../canary/secret")],
            false,
        ),
        (
            "hard link through a ../ symlink",
            vec![hardlink("h", "up/canary/secret")],
            false,
        ),
        (
            "hard link through an absolute symlink",
            vec![hardlink("h", "abs/secret")],
            false,
        ),
        (
            "entry named ../escape",
            vec![file("../escape", "pwned")],
            false,
        ),
        (
            "entry named a/../../escape",
            vec![file("a/../../escape", "pwned")],
            false,
        ),
        (
            "absolute entry name",
            vec![file("/abs-file", "inside")],
            true,
        ),
        (
            "opaque dir through a ../ symlink",
            vec![file("up/.wh..wh..opq", "")],
            true,
        ),
    ];
    for (what, layer, should_apply) in attacks {
        let result = apply(&a.root, &layer);
        assert_eq!(result.is_ok(), should_apply, "{what}: {result:?}");
        if let Err(e) = &result {
            // Refusals name the entry.
            let shown = e.to_string();
            assert!(shown.contains('"'), "{what}: {shown}");
        }
        assert_eq!(
            a.outside(),
            before,
            "{what} changed something outside the root"
        );
    }
    assert_eq!(read(&a.canary.join("secret")), "secret");
    assert_eq!(Path::new("/passwd").exists(), host_passwd_existed);
    assert!(!a.top.join("x/y/escape").exists() && !a.top.join("x/escape").exists());
    // The opaque marker (last) cleared the root itself, which `up` resolves to; the absolute
    // name was written inside before that.
    assert!(names(&a.root).is_empty(), "{:?}", names(&a.root));
}

#[test]
fn hostile_writes_land_inside_the_root() {
    let a = Arena::new();
    let before = a.outside();
    apply(&a.root, &[symlink("etc", "/"), symlink("up", "../../..")]).unwrap();
    apply(
        &a.root,
        &[
            file("etc/passwd", "p"),
            file("up/canary/x", "x"),
            symlink("s", "../../../canary"),
            file("s/secret", "pwned"),
            file("/abs", "abs"),
            hardlink("hl", "up/passwd"),
        ],
    )
    .unwrap();
    assert_eq!(read(&a.root.join("passwd")), "p");
    assert_eq!(read(&a.root.join("canary/x")), "x");
    assert_eq!(read(&a.root.join("canary/secret")), "pwned");
    assert_eq!(read(&a.root.join("abs")), "abs");
    assert_eq!(
        fs::metadata(a.root.join("hl")).unwrap().ino(),
        fs::metadata(a.root.join("passwd")).unwrap().ino()
    );
    assert_eq!(a.outside(), before);

    // A whiteout through the symlinked parent removes the copy inside, nothing outside.
    apply(&a.root, &[file("etc/.wh.canary", "")]).unwrap();
    assert!(!a.root.join("canary").exists());
    assert_eq!(a.outside(), before);
}

// ---------------------------------------------------------------------------------------------
// Broken input.

#[test]
fn garbage_and_truncated_layers_fail_without_panicking() {
    let t = tempfile::tempdir().unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut noise = vec![0u8; 4096];
    for b in noise.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
    assert!(unpack_layer(t.path(), &noise[..], &opts()).is_err());
    // gzip magic, then nonsense.
    assert!(unpack_layer(t.path(), &[0x1f, 0x8b, 8, 0, 1, 2, 3][..], &opts()).is_err());
    // A header with a bad checksum.
    let mut bad = tar(&[file("f", "x")]);
    bad[148] ^= 1;
    assert!(unpack_layer(t.path(), &bad[..], &opts()).is_err());

    let good = tar(&[
        dir("d"),
        file("d/f", &"x".repeat(3000)),
        symlink("d/s", "f"),
        file("g", "y").xattr("user.a", b"b"),
    ]);
    for cut in (1..good.len()).step_by(37) {
        let dir = t.path().join(format!("cut{cut}"));
        fs::create_dir(&dir).unwrap();
        // Must return, whatever it returns.
        let _ = unpack_layer(&dir, &good[..cut], &opts());
    }
    // Cut inside d/f's content: an error naming the entry.
    let dir = t.path().join("mid");
    fs::create_dir(&dir).unwrap();
    let err = unpack_layer(&dir, &good[..2048], &opts()).unwrap_err();
    assert!(err.to_string().contains("d/f"), "{err}");
}

#[test]
fn unsupported_entry_types_are_errors() {
    let t = tempfile::tempdir().unwrap();
    let mut e = file("sparse", "");
    e.ty = EntryType::GNUSparse;
    let err = apply(t.path(), &[e]).unwrap_err();
    assert!(matches!(err, UnpackError::Layer(_)), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Whole images from the store, with compressed layers.

fn store_layer(
    store: &Store,
    c: Compression,
    entries: &[(TarEntry, &[u8])],
) -> kiln_oci::LayerInfo {
    kiln_oci::write_layer(store, c, |w| {
        for (e, data) in entries {
            let mut data = *data;
            let content: Option<&mut dyn std::io::Read> = if e.kind == kiln_oci::EntryKind::File {
                Some(&mut data)
            } else {
                None
            };
            w.append(e, content)?;
        }
        Ok(())
    })
    .unwrap()
}

#[test]
fn unpack_image_applies_layers_in_order() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path().join("store")).unwrap();
    let l1 = store_layer(
        &store,
        Compression::GZIP,
        &[
            (TarEntry::dir("etc"), b""),
            (TarEntry::file("etc/os-release", 3), b"v1\n"),
            (TarEntry::file("etc/old", 1), b"o"),
        ],
    );
    let l2 = store_layer(
        &store,
        Compression::ZSTD,
        &[
            (TarEntry::file("etc/os-release", 3), b"v2\n"),
            (TarEntry::whiteout("etc/old"), b""),
        ],
    );
    let l3 = store_layer(
        &store,
        Compression::None,
        &[(TarEntry::file("top", 1), b"t")],
    );
    let mut config = ImageConfig::new("linux", "amd64");
    for l in [&l1, &l2, &l3] {
        config.push_layer(l.diff_id.clone(), History::default());
    }
    let written = image::write_image(
        &store,
        &config,
        &[l1.descriptor(), l2.descriptor(), l3.descriptor()],
        None,
        ManifestFormat::Oci,
    )
    .unwrap();
    let manifest = kiln_oci::Digest::from_oci(written.manifest.digest()).unwrap();

    let dest = t.path().join("rootfs/nested");
    let stats = unpack_image(&store, &manifest, &dest, &opts()).unwrap();
    assert_eq!(read(&dest.join("etc/os-release")), "v2\n");
    assert!(!dest.join("etc/old").exists());
    assert_eq!(read(&dest.join("top")), "t");
    assert_eq!(stats.whiteouts, 1);

    // Not into a directory that has content, nor over a file.
    let err = unpack_image(&store, &manifest, &dest, &opts()).unwrap_err();
    assert!(
        matches!(err, UnpackError::DestinationNotEmpty { .. }),
        "{err}"
    );
    let f = t.path().join("a-file");
    fs::write(&f, "").unwrap();
    assert!(unpack_image(&store, &manifest, &f, &opts()).is_err());

    // A layer blob whose bytes are not what its digest says.
    let other = store_layer(
        &store,
        Compression::None,
        &[(TarEntry::file("evil", 1), b"e")],
    );
    let blob = store.blob_path(&l3.digest);
    let mut perms = fs::metadata(&blob).unwrap().permissions();
    perms.set_mode(0o644);
    fs::set_permissions(&blob, perms).unwrap();
    fs::copy(store.blob_path(&other.digest), &blob).unwrap();
    let err = unpack_image(&store, &manifest, &t.path().join("second"), &opts()).unwrap_err();
    match err {
        UnpackError::InLayer {
            index: 2, source, ..
        } => {
            assert!(
                matches!(*source, UnpackError::LayerDigest { .. }),
                "{source}"
            )
        }
        other => panic!("{other}"),
    }
}
