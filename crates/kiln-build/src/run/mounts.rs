//! `RUN --mount`: each mount of a step is prepared on the host before the step starts and
//! undone when it ends; the sandbox only binds the results (or mounts a tmpfs).
//!
//! Every source is found *inside* its own root, so a Dockerfile cannot point a mount outside:
//!
//! * the build context: its file tree (after `.dockerignore`), symlinks followed inside that
//!   tree (an absolute target starts at the context's root, `..` stops there), copied into a
//!   directory of the step — so `rw` writes are discarded and the host's context is never
//!   mounted into a step;
//! * a stage or image: an overlay of its snapshots, the source resolved with `openat2`'s
//!   `RESOLVE_IN_ROOT` (a stage's `ln -s / /rootdir` leads to the stage's own root,
//!   CVE-2024-1753); writes land in the overlay's upper directory and are dropped;
//! * a cache: `STORE/cache-mounts/<sha256 of the id>` ([`super::cache_mount`]), so `id=../..`
//!   names a directory like any other (CVE-2024-9675); a `source` subdirectory is walked
//!   without following symlinks and pinned with a bind mount before the step sees it, so a
//!   concurrent build cannot swap it for a link (CVE-2024-23651);
//! * secrets: files on a tmpfs of kiln's own mount namespace, never on disk or in the root.
//!
//! Lexical `..` that would climb out of a source's root is refused before any of this, with
//! the Dockerfile location (see the build's mount resolution).

use super::cache_mount::{self, CacheDir, CacheError, CacheSpec};
use super::ssh_proxy::{self, Proxy};
use super::{ensure_snapshots, interrupted, RunError};
use crate::copy::{Content, SourceTree, SrcNode};
use crate::image::ImageState;
use crate::rootfs::{self, Kind};
use kiln_dockerfile::instructions::Sharing;
use kiln_oci::store::Store;
use kiln_sandbox::run::{BindMount, ExtraMount, TmpfsMount};
use kiln_snapshot::snapshots::Snapshots;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// One `--mount` of a step, as the build resolved it.
pub struct StepMount<'a> {
    /// Absolute, clean path in the container.
    pub target: String,
    /// Mounted read-only.
    pub readonly: bool,
    /// What it shows.
    pub kind: MountKind<'a>,
}

/// What a mount shows.
pub enum MountKind<'a> {
    /// The build context's files below `source` (root-relative, clean).
    Context {
        /// The context (after `.dockerignore`).
        tree: &'a SourceTree,
        /// Path inside it.
        source: String,
    },
    /// A stage's or an image's files below `source`.
    Image {
        /// Its state.
        state: &'a ImageState,
        /// Its name, for messages.
        name: String,
        /// Path inside it.
        source: String,
    },
    /// A directory kept between builds.
    Cache(CacheMount<'a>),
    /// An empty tmpfs.
    Tmpfs {
        /// Its size limit in bytes.
        size: Option<u64>,
    },
    /// A secret as a read-only file.
    Secret {
        /// Its content.
        data: Vec<u8>,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// Permission bits.
        mode: u32,
    },
    /// The ssh agent given with `--ssh`, as a socket of the step's own.
    Ssh {
        /// The agent's socket on the host.
        agent: PathBuf,
        /// Owner of the socket.
        uid: u32,
        /// Group of the socket.
        gid: u32,
        /// Its permission bits.
        mode: u32,
    },
}

/// `type=cache`.
pub struct CacheMount<'a> {
    /// What identifies the cache: its id, plus `from`, `source` and owner when given.
    pub key: String,
    /// `sharing=`.
    pub sharing: Sharing,
    /// Owner, group and mode of a new cache's root; `None` keeps the seed's.
    pub owner: Option<(u32, u32, u32)>,
    /// What a new cache starts with (`from=`): a [`MountKind::Context`] or
    /// [`MountKind::Image`]; empty without.
    pub seed: Option<Box<MountKind<'a>>>,
    /// Without `from`: the subdirectory of the cache to mount (`""`: all of it).
    pub subdir: String,
}

/// What [`prepare`] set up for one step; undone when dropped (after the step has ended).
pub(super) struct Prepared<'s> {
    /// The sandbox's mounts, sorted by target as BuildKit sorts them (parents first).
    pub extra: Vec<ExtraMount>,
    snapshots: &'s Snapshots,
    dir: PathBuf,
    /// Mount points of ours, unmounted in reverse order.
    mounted: Vec<PathBuf>,
    /// Active snapshots of `from` overlays.
    keys: Vec<String>,
    secrets: Option<PathBuf>,
    proxies: Vec<Proxy>,
    /// Held (with their locks) until everything else is undone.
    caches: Vec<CacheDir>,
}

/// Prepares the mounts of step `key`, in `STORE/tmp/<key>-mounts`.
pub(super) fn prepare<'s>(
    store: &Store,
    snapshots: &'s Snapshots,
    key: &str,
    mounts: &[StepMount],
) -> Result<Prepared<'s>, RunError> {
    let dir = store.root().join("tmp").join(format!("{key}-mounts"));
    let mut p = Prepared {
        extra: Vec::new(),
        snapshots,
        dir: dir.clone(),
        mounted: Vec::new(),
        keys: Vec::new(),
        secrets: None,
        proxies: Vec::new(),
        caches: Vec::new(),
    };
    if mounts.is_empty() {
        return Ok(p);
    }
    fs::create_dir_all(&dir)
        .map_err(|e| RunError::Setup(format!("creating {}: {e}", dir.display())))?;
    // Caches first, in the order of their keys, so two builds that lock the same caches
    // always take them in the same order; a key used twice in one step is taken once.
    let mut caches: Vec<(usize, &CacheMount)> = mounts
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match &m.kind {
            MountKind::Cache(c) => Some((i, c)),
            _ => None,
        })
        .collect();
    caches.sort_by(|a, b| a.1.key.cmp(&b.1.key));
    let mut cache_dirs: HashMap<usize, PathBuf> = HashMap::new();
    let mut by_key: HashMap<&str, PathBuf> = HashMap::new();
    for (i, c) in caches {
        let dir = match by_key.get(c.key.as_str()) {
            Some(d) => d.clone(),
            None => {
                let d = p
                    .cache(store, c, &format!("{key}-m{i}"))
                    .map_err(|e| e.context(&mounts[i].target))?;
                by_key.insert(&c.key, d.clone());
                d
            }
        };
        cache_dirs.insert(i, dir);
    }
    let mut order: Vec<usize> = (0..mounts.len()).collect();
    order.sort_by(|a, b| mounts[*a].target.cmp(&mounts[*b].target));
    for i in order {
        let m = &mounts[i];
        let fail = |e: String| RunError::Setup(format!("RUN --mount target={}: {e}", m.target));
        let bind = |source: PathBuf, readonly: bool| {
            ExtraMount::Bind(BindMount {
                source,
                target: m.target.clone(),
                readonly,
            })
        };
        let extra = match &m.kind {
            MountKind::Context { tree, source } => {
                let at = dir.join(i.to_string());
                materialize(tree, source, &at).map_err(fail)?;
                bind(at, m.readonly)
            }
            MountKind::Image {
                state,
                name,
                source,
            } => {
                let src = p
                    .image_source(store, state, name, source, &format!("{key}-m{i}"))
                    .map_err(|e| e.context(&m.target))?;
                bind(src, m.readonly)
            }
            MountKind::Cache(c) => {
                let dir = &cache_dirs[&i];
                let src = if c.subdir.is_empty() {
                    dir.clone()
                } else {
                    let owner = c.owner.map(|(u, g, _)| (u, g));
                    let at = p.dir.join(format!("{key}-m{i}-sub"));
                    p.pin_subdir(dir, &c.subdir, owner, &at)
                        .map_err(|e| e.context(&m.target))?;
                    at
                };
                bind(src, m.readonly)
            }
            MountKind::Tmpfs { size } => ExtraMount::Tmpfs(TmpfsMount {
                target: m.target.clone(),
                size: *size,
                readonly: m.readonly,
            }),
            MountKind::Secret {
                data,
                uid,
                gid,
                mode,
            } => {
                let file = p
                    .secret_file(i, data, *uid, *gid, *mode)
                    .map_err(|e| fail(format!("writing the secret: {e}")))?;
                bind(file, true)
            }
            MountKind::Ssh {
                agent,
                uid,
                gid,
                mode,
            } => {
                let sub = dir.join(format!("ssh{i}"));
                fs::create_dir(&sub).map_err(|e| fail(e.to_string()))?;
                let proxy = ssh_proxy::start(&sub, agent, *uid, *gid, *mode)
                    .map_err(|e| fail(e.to_string()))?;
                let path = proxy.path.clone();
                p.proxies.push(proxy);
                bind(path, false)
            }
        };
        p.extra.push(extra);
    }
    Ok(p)
}

/// A failure while preparing a mount, before the target is known.
enum Failure {
    Message(String),
    Interrupted,
}

impl Failure {
    fn context(self, target: &str) -> RunError {
        match self {
            Failure::Message(m) => RunError::Setup(format!("RUN --mount target={target}: {m}")),
            Failure::Interrupted => RunError::Interrupted,
        }
    }
}

impl From<String> for Failure {
    fn from(m: String) -> Self {
        Failure::Message(m)
    }
}

impl Prepared<'_> {
    /// Mounts an overlay of `state` (its changes go nowhere) and returns where `source`
    /// resolves inside it.
    fn image_source(
        &mut self,
        store: &Store,
        state: &ImageState,
        name: &str,
        source: &str,
        key: &str,
    ) -> Result<PathBuf, Failure> {
        let chains = ensure_snapshots(store, self.snapshots, state).map_err(|e| e.to_string())?;
        let mounts = self
            .snapshots
            .prepare(key, &chains)
            .map_err(|e| format!("preparing {name}: {e}"))?;
        self.keys.push(key.to_string());
        let mp = self.dir.join(format!("{key}-root"));
        fs::create_dir(&mp).map_err(|e| format!("creating {}: {e}", mp.display()))?;
        mounts
            .mount(&mp)
            .map_err(|e| format!("mounting {name}: {e}"))?;
        self.mounted.push(mp.clone());
        match resolve_in_root(&mp, source) {
            Ok(p) => Ok(p),
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => {
                Err(format!("source {:?} not found in {name}", format!("/{source}")).into())
            }
            Err(e) => Err(format!("source {:?} in {name}: {e}", format!("/{source}")).into()),
        }
    }

    /// Takes an instance of the cache (waiting as `sharing=locked` says), held until the
    /// step is over, and returns its directory.
    fn cache(&mut self, store: &Store, c: &CacheMount, key: &str) -> Result<PathBuf, Failure> {
        let root = store.root().join("cache-mounts");
        let spec = CacheSpec {
            key: &c.key,
            sharing: c.sharing,
            owner: c.owner,
        };
        let mut seed_error = None;
        let got = {
            let mut init = |tmp: &Path| -> io::Result<()> {
                let seeded = match c.seed.as_deref() {
                    None => return fs::create_dir(tmp),
                    Some(MountKind::Context { tree, source }) => materialize(tree, source, tmp),
                    Some(MountKind::Image {
                        state,
                        name,
                        source,
                    }) => {
                        match self.image_source(store, state, name, source, &format!("{key}-seed"))
                        {
                            Ok(src) => kiln_snapshot::snapshots::copy_path(&src, tmp)
                                .map_err(|e| format!("copying {name}: {e}")),
                            Err(Failure::Message(m)) => Err(m),
                            Err(Failure::Interrupted) => Err("interrupted".into()),
                        }
                    }
                    Some(_) => {
                        Err("a cache can only start from a stage, an image or the context".into())
                    }
                };
                seeded
                    .and_then(|()| {
                        if fs::symlink_metadata(tmp).is_ok_and(|m| m.is_dir()) {
                            Ok(())
                        } else {
                            Err("the from source of a cache must be a directory".into())
                        }
                    })
                    .map_err(|m| {
                        seed_error = Some(m.clone());
                        io::Error::other(m)
                    })
            };
            cache_mount::acquire(&root, &spec, &mut init, &interrupted)
        };
        let dir = match got {
            Ok(d) => d,
            Err(CacheError::Interrupted) => return Err(Failure::Interrupted),
            Err(e) => return Err(seed_error.unwrap_or_else(|| format!("cache: {e}")).into()),
        };
        let path = dir.path.clone();
        self.caches.push(dir);
        Ok(path)
    }

    /// Opens (making what is missing) `sub` below `base` without following any symlink, and
    /// binds it onto `at`: what the step gets is that directory even if the path changes.
    fn pin_subdir(
        &mut self,
        base: &Path,
        sub: &str,
        owner: Option<(u32, u32)>,
        at: &Path,
    ) -> Result<(), Failure> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let not_dir = || {
            format!("source {sub:?} in the cache is not a directory (symlinks are not followed)")
        };
        let mut cur: OwnedFd = nix::fcntl::open(base, flags, Mode::empty())
            .map_err(|e| format!("opening the cache: {e}"))?;
        for name in sub.split('/').filter(|c| !c.is_empty()) {
            cur = match nix::fcntl::openat(&cur, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    match nix::sys::stat::mkdirat(&cur, name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(format!("creating {sub:?} in the cache: {e}").into()),
                    }
                    let fd = nix::fcntl::openat(&cur, name, flags, Mode::empty())
                        .map_err(|_| not_dir())?;
                    if let Some((uid, gid)) = owner {
                        std::os::unix::fs::fchown(&fd, Some(uid), Some(gid))
                            .map_err(|e| format!("chown {sub:?} in the cache: {e}"))?;
                    }
                    fd
                }
                Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => return Err(not_dir().into()),
                Err(e) => return Err(format!("opening {sub:?} in the cache: {e}").into()),
            };
        }
        fs::create_dir(at).map_err(|e| format!("creating {}: {e}", at.display()))?;
        nix::mount::mount(
            Some(format!("/proc/self/fd/{}", cur.as_raw_fd()).as_str()),
            at,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("binding {sub:?} of the cache: {e}"))?;
        self.mounted.push(at.to_path_buf());
        Ok(())
    }

    /// Writes a secret onto the step's secrets tmpfs (mounted on first use).
    fn secret_file(
        &mut self,
        i: usize,
        data: &[u8],
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> io::Result<PathBuf> {
        let dir = match &self.secrets {
            Some(d) => d.clone(),
            None => {
                let d = self.dir.join("secrets");
                fs::create_dir(&d)?;
                nix::mount::mount(
                    Some("tmpfs"),
                    &d,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    Some("mode=0700"),
                )?;
                self.mounted.push(d.clone());
                self.secrets = Some(d.clone());
                d
            }
        };
        let file = dir.join(i.to_string());
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)?;
        f.write_all(data)?;
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        Ok(file)
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        self.proxies.clear();
        let mut unmounted = true;
        for m in self.mounted.iter().rev() {
            unmounted &= nix::mount::umount2(m, MntFlags::MNT_DETACH).is_ok();
        }
        for k in &self.keys {
            let _ = self.snapshots.remove(k);
        }
        // Never walk into something still mounted (a cache, an image).
        if unmounted && self.dir.exists() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        self.caches.clear();
    }
}

/// Resolves `rel` inside `root` as a chroot would (symlinks followed inside it, `..` stopping
/// at it) and returns the resulting host path.
fn resolve_in_root(root: &Path, rel: &str) -> Result<PathBuf, Errno> {
    let root =
        fs::canonicalize(root).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    if rel.is_empty() {
        return Ok(root);
    }
    let dir = nix::fcntl::open(
        &root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = nix::fcntl::openat2(&dir, rel, how)?;
    let path = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    // The kernel already kept the walk inside; this only guards against surprises.
    if !path.starts_with(&root) {
        return Err(Errno::EXDEV);
    }
    Ok(path)
}

/// Copies the part of the context below `source` to `at` (which must not exist). Everything
/// is owned by whoever runs kiln, which is root in the build namespace; modes and times are
/// kept, symlinks are copied as symlinks, hard links stay linked.
pub(crate) fn materialize(tree: &SourceTree, source: &str, at: &Path) -> Result<(), String> {
    let shown = format!("/{source}");
    let resolved = rootfs::resolve_in_root(source, true, |p| tree.get(p).map(|n| &n.kind))
        .map_err(|e| format!("source {shown:?}: {e}"))?;
    let Some(node) = tree.get(&resolved) else {
        if resolved != rootfs::clean(source) {
            return Err(format!(
                "source {shown:?} leads to {:?}, which is not in the build context (symlinks \
                 are followed inside the context, never out of it)",
                format!("/{resolved}")
            ));
        }
        return Err(format!(
            "source {shown:?} not found in the build context (or excluded by .dockerignore)"
        ));
    };
    let io = |what: &str, p: &Path| {
        let what = what.to_string();
        let p = p.to_path_buf();
        move |e: io::Error| format!("{what} {}: {e}", p.display())
    };
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    match &node.kind {
        Kind::File => write_file(at, node, &mut links).map_err(io("copying", at)),
        Kind::Dir => {
            let mut dirs = vec![(at.to_path_buf(), node)];
            create_dir(at).map_err(io("creating", at))?;
            let skip = if resolved.is_empty() {
                0
            } else {
                resolved.len() + 1
            };
            for (path, n) in tree.below(&resolved) {
                let dst = at.join(&path[skip..]);
                if let Some(parent) = dst.parent() {
                    // A directory .dockerignore left out whose child came back with `!`.
                    if !parent.exists() {
                        fs::create_dir_all(parent).map_err(io("creating", parent))?;
                    }
                }
                match &n.kind {
                    Kind::Dir => {
                        create_dir(&dst).map_err(io("creating", &dst))?;
                        dirs.push((dst, n));
                    }
                    Kind::File => write_file(&dst, n, &mut links).map_err(io("copying", &dst))?,
                    Kind::Symlink(target) => std::os::unix::fs::symlink(target, &dst)
                        .map_err(io("creating symlink", &dst))?,
                    Kind::Fifo => nix::unistd::mkfifo(&dst, Mode::from_bits_truncate(n.mode))
                        .map_err(|e| format!("creating fifo {}: {e}", dst.display()))?,
                    // Device nodes cannot be made without privileges; a bind mount of the
                    // context never needed them.
                    _ => {}
                }
            }
            // Deepest first: filling a directory changes its time, and it may be read-only.
            for (d, n) in dirs.iter().rev() {
                fs::set_permissions(d, fs::Permissions::from_mode(n.mode & 0o7777))
                    .map_err(io("chmod", d))?;
                if let Some(t) = system_time(n.mtime) {
                    File::open(d)
                        .and_then(|f| f.set_modified(t))
                        .map_err(io("setting the time of", d))?;
                }
            }
            Ok(())
        }
        other => Err(format!(
            "source {shown:?} is a {}; only files and directories can be mounted",
            match other {
                Kind::Fifo => "fifo",
                Kind::Char(..) | Kind::Block(..) => "device",
                _ => "special file",
            }
        )),
    }
}

fn create_dir(p: &Path) -> io::Result<()> {
    fs::create_dir(p)?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o700))
}

fn system_time((secs, nanos): (i64, u32)) -> Option<SystemTime> {
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

fn write_file(
    dst: &Path,
    node: &SrcNode,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    if let Some(key) = node.link_key {
        if let Some(first) = links.get(&key) {
            return fs::hard_link(first, dst);
        }
        links.insert(key, dst.to_path_buf());
    }
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    match &node.content {
        Content::None => {}
        Content::Bytes(b) => out.write_all(b)?,
        Content::Path(p) => {
            // The context may change under us; never follow a symlink swapped in.
            let mut f = OpenOptions::new()
                .read(true)
                .custom_flags(OFlag::O_NOFOLLOW.bits())
                .open(p)?;
            io::copy(&mut f, &mut out)?;
        }
        Content::Slice { file, offset } => {
            let mut f = File::open(file)?;
            f.seek(SeekFrom::Start(*offset))?;
            io::copy(&mut f.take(node.size), &mut out)?;
        }
    }
    out.set_permissions(fs::Permissions::from_mode(node.mode & 0o7777))?;
    if let Some(t) = system_time(node.mtime) {
        out.set_modified(t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_context::ignore::Matcher;

    fn context(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-mounts-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("ctx/src/sub")).unwrap();
        fs::write(d.join("ctx/src/a.txt"), "a").unwrap();
        fs::write(d.join("ctx/src/sub/b.txt"), "b").unwrap();
        fs::write(d.join("ctx/src/skip.log"), "ignored").unwrap();
        fs::set_permissions(d.join("ctx/src/a.txt"), fs::Permissions::from_mode(0o751)).unwrap();
        fs::hard_link(d.join("ctx/src/a.txt"), d.join("ctx/src/a-link")).unwrap();
        std::os::unix::fs::symlink("/etc", d.join("ctx/etc-link")).unwrap();
        std::os::unix::fs::symlink("../../../..", d.join("ctx/up")).unwrap();
        std::os::unix::fs::symlink("src/a.txt", d.join("ctx/to-a")).unwrap();
        d
    }

    fn tree(ctx: &Path) -> SourceTree {
        crate::context::context_tree(ctx, &Matcher::new(&["**/*.log"]).unwrap()).unwrap()
    }

    #[test]
    fn copies_a_subtree_with_modes_links_and_dockerignore() {
        let d = context("subtree");
        let t = tree(&d.join("ctx"));
        materialize(&t, "src", &d.join("out")).unwrap();
        assert_eq!(fs::read_to_string(d.join("out/sub/b.txt")).unwrap(), "b");
        assert!(!d.join("out/skip.log").exists(), ".dockerignore holds");
        let md = fs::metadata(d.join("out/a.txt")).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o751);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(md.ino(), fs::metadata(d.join("out/a-link")).unwrap().ino());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlinks_resolve_inside_the_context() {
        let d = context("links");
        let t = tree(&d.join("ctx"));
        // `up` climbs to the context's root, not the host's.
        materialize(&t, "up/src/sub", &d.join("out1")).unwrap();
        assert!(d.join("out1/b.txt").exists());
        // An absolute link names the context's /etc, which is not there.
        let e = materialize(&t, "etc-link/passwd", &d.join("out2")).unwrap_err();
        assert!(e.contains("leads to \"/etc/passwd\""), "{e}");
        assert!(!d.join("out2").exists());
        // A link to a file mounts the file.
        materialize(&t, "to-a", &d.join("out3")).unwrap();
        assert_eq!(fs::read_to_string(d.join("out3")).unwrap(), "a");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn resolve_in_root_stays_inside() {
        let d = context("resolve");
        let root = d.join("ctx");
        let canon = fs::canonicalize(&root).unwrap();
        assert_eq!(resolve_in_root(&root, "up").unwrap(), canon);
        assert_eq!(
            resolve_in_root(&root, "up/src/sub").unwrap(),
            canon.join("src/sub")
        );
        assert_eq!(resolve_in_root(&root, "etc-link"), Err(Errno::ENOENT));
        fs::create_dir(root.join("etc")).unwrap();
        assert_eq!(
            resolve_in_root(&root, "etc-link").unwrap(),
            canon.join("etc")
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
