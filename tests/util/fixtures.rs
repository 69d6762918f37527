//! Test inputs built from what Debian ships: a busybox root filesystem (the base image of most
//! end-to-end tests, since Docker Hub is off limits) and a FROM-scratch build context around it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::tools::{assert_success, euid, output, require_tool, script};

/// The FROM-scratch Dockerfile that turns the busybox tarball into an image.
pub const BUSYBOX_DOCKERFILE: &str = "FROM scratch\nADD rootfs.tar.xz /\nCMD [\"sh\"]\n";

/// Runs `scripts/make-busybox-rootfs.sh OUT` (panics if it fails).
pub fn make_busybox_rootfs(out: &Path) {
    let mut cmd = Command::new("bash");
    cmd.arg(script("make-busybox-rootfs.sh")).arg(out);
    assert_success(&output(&mut cmd), "make-busybox-rootfs.sh");
}

/// The busybox rootfs tarball, built once per test process into cargo's target tmp dir and
/// reused while it is newer than /bin/busybox. None (after the skip message) without
/// busybox-static.
pub fn busybox_rootfs() -> Option<PathBuf> {
    if !require_tool("/bin/busybox") {
        return None;
    }
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    Some(
        BUILT
            .get_or_init(|| {
                let dir = cache_dir();
                let out = dir.join("busybox-rootfs.tar.xz");
                if !is_newer(
                    &out,
                    Path::new("/bin/busybox"),
                    &script("make-busybox-rootfs.sh"),
                ) {
                    // The script writes a temporary file and renames it, so a concurrent test
                    // process never sees half an archive.
                    make_busybox_rootfs(&out);
                }
                out
            })
            .clone(),
    )
}

/// cargo's target/tmp when this user can write there, else a per-user dir in $TMPDIR (a
/// normal user running a root-built test binary).
fn cache_dir() -> PathBuf {
    let shared = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-fixtures");
    let probe = shared.join(format!(".probe-{}", std::process::id()));
    if std::fs::create_dir_all(&shared).is_ok() && std::fs::write(&probe, b"").is_ok() {
        let _ = std::fs::remove_file(&probe);
        return shared;
    }
    let own = std::env::temp_dir().join(format!("kiln-fixtures-uid{}", euid()));
    std::fs::create_dir_all(&own).expect("create fixture cache dir");
    own
}

/// True if `target` exists and is newer than both inputs.
fn is_newer(target: &Path, a: &Path, b: &Path) -> bool {
    let mtime = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    match (mtime(target), mtime(a), mtime(b)) {
        (Some(t), Some(a), Some(b)) => t > a && t > b,
        _ => false,
    }
}

/// Writes a build context into `dir`: `rootfs.tar.xz` (busybox) and a `Dockerfile` with
/// [`BUSYBOX_DOCKERFILE`]. Returns false (after the skip message) without busybox-static.
pub fn busybox_context(dir: &Path) -> bool {
    let Some(rootfs) = busybox_rootfs() else {
        return false;
    };
    std::fs::create_dir_all(dir).expect("create context dir");
    std::fs::copy(&rootfs, dir.join("rootfs.tar.xz")).expect("copy rootfs");
    std::fs::write(dir.join("Dockerfile"), BUSYBOX_DOCKERFILE).expect("write Dockerfile");
    true
}

/// A Debian bookworm root filesystem tarball made with `debootstrap --variant=minbase` from
/// deb.debian.org, cached across test runs in `/var/tmp/kiln-test-cache` (debootstrap takes a
/// minute and downloads ~40 MB). Needs root and debootstrap; follows the require semantics.
pub fn debian_rootfs() -> Option<PathBuf> {
    if !super::tools::require_root("debootstrap of the Debian base")
        || !super::tools::require_tool("debootstrap")
    {
        return None;
    }
    let cache = PathBuf::from("/var/tmp/kiln-test-cache");
    let tar = cache.join("debian-bookworm-minbase.tar");
    if tar.exists() {
        return Some(tar);
    }
    std::fs::create_dir_all(&cache).expect("create cache dir");
    let tmp = cache.join(format!("debootstrap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let st = std::process::Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&tmp)
        .arg("http://deb.debian.org/debian")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run debootstrap");
    assert!(
        st.success(),
        "debootstrap failed (is deb.debian.org reachable?)"
    );
    let partial = cache.join(format!("debian-{}.tar.part", std::process::id()));
    // Device nodes are left out: images never need them (the sandbox provides /dev).
    let st = std::process::Command::new("tar")
        .args([
            "--numeric-owner",
            "--xattrs",
            "--exclude=./dev/*",
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            "-C",
        ])
        .arg(&tmp)
        .arg("-cf")
        .arg(&partial)
        .arg(".")
        .status()
        .expect("tar the rootfs");
    assert!(st.success());
    std::fs::rename(&partial, &tar).expect("publish cached tarball");
    let _ = std::fs::remove_dir_all(&tmp);
    Some(tar)
}
