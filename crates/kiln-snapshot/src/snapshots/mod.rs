//! Snapshots: extracted layers kept by chain ID, and the working roots of build steps.
//!
//! ```text
//! STORE/snapshots/
//!   <chain hex>/fs        the layer as an overlay lower directory: what it adds, plus
//!                         whiteouts (0/0 devices) and opaque marks for what it removes
//!   <chain hex>/flat      the whole root filesystem of the chain, without whiteouts (a
//!                         symlink to fs for a bottom layer)
//!   <chain hex>/format    "plain", "trusted" or "user": whose xattrs mark opaque dirs in fs
//!   active/<key>/         one step: upper + work (overlay), or rootfs + baseline (copy)
//!   tmp/<pid>-<n>/        everything is built here and renamed into place
//!   empty/                the lower directory of a step that starts from scratch
//! ```
//!
//! A snapshot has `fs`, `flat` or both. It appears only complete: it is filled under `tmp/`
//! and the directory renamed to its chain ID, so a killed build leaves at most a temp
//! directory, removed by the next [`Snapshots::open`] once its process is gone.
//!
//! # Steps
//!
//! [`Snapshots::prepare`] gives a step its root: with overlay, the parents' directories as
//! lower layers and a fresh upper directory; without, a full copy of the parent's root
//! ([`Mode::Copy`]). After the step, [`Snapshots::diff`] writes the change as a layer,
//! [`Snapshots::commit`] keeps the upper directory (or the copy) as the snapshot of the new
//! chain ID, so the next step stacks on it without extracting anything, and
//! [`Snapshots::remove`] drops a step that is not kept. [`Snapshots::create`] makes the
//! snapshot of a pulled layer: the caller's closure (the unpacker) fills a directory that,
//! with overlay, is a mount of the parents with a fresh upper directory, so whiteouts in the
//! layer become overlay whiteouts in the new lower directory.
//!
//! In copy mode every committed step is a whole tree (`flat`): nothing is shared between
//! steps, so disk use is the root's size times the number of steps kept.
//!
//! # Deep chains
//!
//! One mount takes at most about 200 lower directories (a page of options, see
//! [`crate::overlay`]; overlay's own limit is 500). A longer chain is cut at a layer whose
//! depth is a multiple of 64: that layer's `flat` is made once (its parents' trees merged
//! oldest first) and stands for everything below it. Cutting at fixed depths means the
//! following steps of a build find the same `flat` and reuse it.
//!
//! # Rootless
//!
//! Run all of this inside the build's user namespace. Its steps leave files owned by
//! subordinate ids, which the unprivileged user cannot change or delete from outside;
//! [`Snapshots::remove`] and [`Snapshots::remove_snapshot`] only succeed in there (or as
//! root). A snapshot made by root (opaque marks in `trusted.*`) cannot be read rootless
//! except through its `flat`.

mod chain;
pub(crate) mod tree;

use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_oci::{Compression, LayerError, LayerInfo, LayerWriter, Store};

pub use crate::overlay::{detect_mode, Mode, OverlayMount};
pub use chain::{chain_ids, ChainId};

use crate::diff::{diff_trees, diff_upper, Baseline, DiffError, DiffOptions, DiffStats};
use crate::overlay::{self, OverlayError, XattrFlavour};

/// Copies a file, or a directory with everything below it, to `dst` (which must not exist):
/// types, owners, modes, xattrs (not overlay's), times and hard links inside the tree are kept;
/// symlinks are copied as symlinks, never followed; sockets are left out. For trees nothing
/// else changes meanwhile (a mounted snapshot, a cache being seeded).
pub fn copy_path(src: &Path, dst: &Path) -> Result<(), SnapshotError> {
    tree::copy_path(src, dst)
}

/// A flattened `flat` is placed at chain depths that are multiples of this.
const FLATTEN_STRIDE: usize = 64;

/// Errors from the snapshot store. Each names the snapshot, key or file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A parent snapshot that is not in the store.
    #[error("snapshot {chain} does not exist")]
    NotFound {
        /// Its chain ID.
        chain: ChainId,
    },
    /// A snapshot directory without the files it should have.
    #[error("snapshot {}: {reason}", path.display())]
    Corrupt {
        /// The directory.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// A snapshot whose opaque marks are in `trusted.*`, which this process cannot read.
    #[error("snapshot {chain} was made by root (trusted.overlay xattrs) and cannot be read here")]
    Unreadable {
        /// Its chain ID.
        chain: ChainId,
    },
    /// A path to revert that is empty or climbs out of the root.
    #[error("cannot revert {}: not a path inside the root", path.display())]
    BadPath {
        /// The path as given.
        path: PathBuf,
    },
    /// A step key that cannot be a directory name.
    #[error("invalid snapshot key {key:?}: use 1-128 of A-Z a-z 0-9 . _ -, not starting with .")]
    InvalidKey {
        /// The key.
        key: String,
    },
    /// `prepare` of a key already in use.
    #[error("snapshot key {key:?} is already prepared")]
    KeyExists {
        /// The key.
        key: String,
    },
    /// A key that was never prepared (or was removed).
    #[error("snapshot key {key:?} is not prepared")]
    NoSuchKey {
        /// The key.
        key: String,
    },
    /// The caller's closure failed to fill a new snapshot.
    #[error("fill snapshot {chain}: {source}")]
    Fill {
        /// The snapshot being made.
        chain: ChainId,
        /// The closure's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Mounting or unmounting overlay failed.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// Diffing a step failed.
    #[error(transparent)]
    Diff(#[from] DiffError),
    /// Writing the layer into the content store failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

/// What a step mounts as its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mounts {
    /// An overlay mount.
    Overlay(OverlayMount),
    /// A full copy of the parent's root: use this directory as the root (bind-mount it, or
    /// run in it directly where mounting is impossible).
    Copy {
        /// The directory.
        rootfs: PathBuf,
    },
}

impl Mounts {
    /// Mounts the step's root on `target`: the overlay, or a bind mount of the copy.
    pub fn mount(&self, target: &Path) -> Result<(), OverlayError> {
        match self {
            Mounts::Overlay(m) => m.mount(target),
            Mounts::Copy { rootfs } => nix::mount::mount(
                Some(rootfs.as_path()),
                target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| OverlayError::Mount {
                target: target.to_path_buf(),
                options: format!("bind {}", rootfs.display()),
                source: e.into(),
            }),
        }
    }
}

/// Whether [`Snapshots::create`] or [`Snapshots::commit`] stored something new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The snapshot was made now.
    New,
    /// It was already there (made earlier, or by another process meanwhile); nothing was
    /// filled, or the step's result was dropped in favour of the existing one.
    Existing,
}

/// How a snapshot's `fs` marks opaque directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// No overlay marks at all (a bottom layer, or only a `flat`).
    Plain,
    /// Made by an overlay mount of this flavour.
    Overlay(XattrFlavour),
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::Plain => "plain",
            Format::Overlay(XattrFlavour::Trusted) => "trusted",
            Format::Overlay(XattrFlavour::User) => "user",
        }
    }

    fn parse(s: &str) -> Option<Format> {
        match s.trim() {
            "plain" => Some(Format::Plain),
            "trusted" => Some(Format::Overlay(XattrFlavour::Trusted)),
            "user" => Some(Format::Overlay(XattrFlavour::User)),
            _ => None,
        }
    }

    /// Whether an overlay mount in `flavour` reads this `fs` as it was written.
    fn stacks_under(self, flavour: XattrFlavour) -> bool {
        match self {
            Format::Plain => true,
            Format::Overlay(f) => f == flavour,
        }
    }
}

/// What an active step is, as written to `active/<key>/meta`.
struct ActiveMeta {
    mode: Mode,
    parent: Option<ChainId>,
}

impl ActiveMeta {
    fn to_text(&self) -> String {
        let mode = match self.mode {
            Mode::Overlay { userxattr: true } => "overlay user",
            Mode::Overlay { userxattr: false } => "overlay trusted",
            Mode::Copy => "copy",
        };
        let parent = self
            .parent
            .as_ref()
            .map_or_else(|| "-".to_owned(), |c| c.to_string());
        format!("{mode}\n{parent}\n")
    }

    fn parse(text: &str) -> Option<ActiveMeta> {
        let mut lines = text.lines();
        let mode = match lines.next()? {
            "overlay user" => Mode::Overlay { userxattr: true },
            "overlay trusted" => Mode::Overlay { userxattr: false },
            "copy" => Mode::Copy,
            _ => return None,
        };
        let parent = match lines.next()? {
            "-" => None,
            c => Some(c.parse().ok()?),
        };
        Some(ActiveMeta { mode, parent })
    }
}

/// The snapshot store under `STORE/snapshots`. Cheap to clone; all state is on disk.
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
    mode: Mode,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Snapshots {
    /// Opens (creating if needed) the snapshot store of the content store at `store_root`,
    /// giving steps their roots the `mode` way. Temp directories of processes that are gone
    /// are removed.
    pub fn open(store_root: &Path, mode: Mode) -> Result<Snapshots, SnapshotError> {
        let s = Snapshots {
            dir: store_root.join("snapshots"),
            mode,
        };
        for d in [s.dir.clone(), s.active_dir(), s.tmp_dir(), s.empty_dir()] {
            fs::create_dir_all(&d).map_err(io_err("create directory", &d))?;
        }
        s.remove_stale_temps();
        Ok(s)
    }

    /// [`Snapshots::open`] with the mode [`detect_mode`] finds for the store's filesystem.
    pub fn open_detected(store_root: &Path) -> Result<Snapshots, SnapshotError> {
        let tmp = store_root.join("snapshots").join("tmp");
        fs::create_dir_all(&tmp).map_err(io_err("create directory", &tmp))?;
        Snapshots::open(store_root, detect_mode(&tmp))
    }

    /// The `snapshots` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How steps get their roots.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn active_dir(&self) -> PathBuf {
        self.dir.join("active")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn empty_dir(&self) -> PathBuf {
        self.dir.join("empty")
    }

    fn snap_dir(&self, chain: &ChainId) -> PathBuf {
        self.dir.join(chain.hex())
    }

    /// Whether the snapshot `chain` exists.
    pub fn exists(&self, chain: &ChainId) -> bool {
        self.snap_dir(chain).is_dir()
    }

    /// The chain IDs of all snapshots, sorted.
    pub fn list(&self) -> Result<Vec<ChainId>, SnapshotError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("read directory", &self.dir))? {
            let entry = entry.map_err(io_err("read directory", &self.dir))?;
            if let Some(hex) = entry.file_name().to_str() {
                if let Ok(d) = kiln_oci::Digest::from_hex(hex) {
                    out.push(ChainId::new(d));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Makes the snapshot `chain` (the layer on top of `parent_chain`, bottom first) unless it
    /// exists: `fill` gets a directory showing the parent's root filesystem and applies the
    /// layer to it (typically [`crate::unpack::unpack_layer`]). Its changes, whiteouts
    /// included, become the snapshot, which appears only once complete.
    pub fn create<F, E>(
        &self,
        parent_chain: &[ChainId],
        chain: &ChainId,
        fill: F,
    ) -> Result<Created, SnapshotError>
    where
        F: FnOnce(&Path) -> Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if self.exists(chain) {
            return Ok(Created::Existing);
        }
        self.check_parents(parent_chain)?;
        let tmp = self.new_temp()?;
        let result = self.fill_temp(&tmp, parent_chain, chain, fill);
        let result = result.and_then(|()| self.publish(&tmp, chain));
        if result.is_err() {
            let _ = tree::remove_tree(&tmp);
        }
        result
    }

    fn fill_temp<F, E>(
        &self,
        tmp: &Path,
        parent_chain: &[ChainId],
        chain: &ChainId,
        fill: F,
    ) -> Result<(), SnapshotError>
    where
        F: FnOnce(&Path) -> Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let fill_err = |e: E| SnapshotError::Fill {
            chain: chain.clone(),
            source: e.into(),
        };
        let fs_dir = tmp.join("fs");
        match (self.mode, parent_chain.is_empty()) {
            (_, true) => {
                mkdir(&fs_dir)?;
                fill(&fs_dir).map_err(fill_err)?;
                symlink_flat(tmp)?;
                write_format(tmp, Format::Plain)
            }
            (Mode::Overlay { userxattr }, false) => {
                let (work, merged) = (tmp.join("work"), tmp.join("merged"));
                for d in [&fs_dir, &work, &merged] {
                    mkdir(d)?;
                }
                let flavour = XattrFlavour::for_userxattr(userxattr);
                let cap = OverlayMount::lower_capacity(&fs_dir, &work, userxattr);
                let m = OverlayMount {
                    lowers: self.lowers_for(parent_chain, flavour, cap)?,
                    upper: fs_dir.clone(),
                    work: work.clone(),
                    userxattr,
                };
                m.mount(&merged)?;
                let filled = fill(&merged);
                overlay::unmount(&merged)?;
                filled.map_err(fill_err)?;
                for d in [&work, &merged] {
                    tree::remove_tree(d).map_err(io_err("remove", d))?;
                }
                write_format(tmp, Format::Overlay(flavour))
            }
            (Mode::Copy, false) => {
                let parent = self.materialize(parent_chain)?;
                let flat = tmp.join("flat");
                tree::copy_tree(&parent, &flat)?;
                fill(&flat).map_err(fill_err)?;
                write_format(tmp, Format::Plain)
            }
        }
    }

    /// Gives the step `key` its root on top of `parent_chain` (bottom layer first; empty for
    /// `FROM scratch`). With overlay this creates `active/<key>/upper` and `work` and returns
    /// the mount, newest layer first; in copy mode it copies the parent's whole root.
    pub fn prepare(&self, key: &str, parent_chain: &[ChainId]) -> Result<Mounts, SnapshotError> {
        let active = self.active_path(key)?;
        self.check_parents(parent_chain)?;
        match fs::create_dir(&active) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(SnapshotError::KeyExists {
                    key: key.to_owned(),
                })
            }
            Err(e) => return Err(io_err("create directory", &active)(e)),
        }
        let result = self.prepare_in(&active, parent_chain);
        if result.is_err() {
            let _ = tree::remove_tree(&active);
        }
        result
    }

    fn prepare_in(&self, active: &Path, parent_chain: &[ChainId]) -> Result<Mounts, SnapshotError> {
        let meta = ActiveMeta {
            mode: self.mode,
            parent: parent_chain.last().cloned(),
        };
        let mounts = match self.mode {
            Mode::Overlay { userxattr } => {
                let (upper, work) = (active.join("upper"), active.join("work"));
                mkdir(&upper)?;
                mkdir(&work)?;
                let cap = OverlayMount::lower_capacity(&upper, &work, userxattr);
                let flavour = XattrFlavour::for_userxattr(userxattr);
                Mounts::Overlay(OverlayMount {
                    lowers: self.lowers_for(parent_chain, flavour, cap)?,
                    upper,
                    work,
                    userxattr,
                })
            }
            Mode::Copy => {
                let rootfs = active.join("rootfs");
                if parent_chain.is_empty() {
                    mkdir(&rootfs)?;
                } else {
                    let parent = self.materialize(parent_chain)?;
                    tree::copy_tree(&parent, &rootfs)?;
                }
                Baseline::record(&rootfs)?.save(&active.join("baseline"))?;
                Mounts::Copy { rootfs }
            }
        };
        let meta_path = active.join("meta");
        fs::write(&meta_path, meta.to_text()).map_err(io_err("write", &meta_path))?;
        Ok(mounts)
    }

    /// Makes `paths` (relative to the root) in step `key` look as in its parent again: the
    /// mount stubs a sandbox created (`etc/resolv.conf`, `proc`, ...), before the step is
    /// diffed or committed. With overlay the upper entries are deleted; in copy mode the
    /// parent's entries are copied back.
    pub fn revert(&self, key: &str, paths: &[PathBuf]) -> Result<(), SnapshotError> {
        let (active, meta) = self.active(key)?;
        for p in paths {
            let mut rel = PathBuf::new();
            for c in p.components() {
                match c {
                    Component::Normal(n) => rel.push(n),
                    Component::RootDir | Component::CurDir => {}
                    Component::ParentDir | Component::Prefix(_) => {
                        return Err(SnapshotError::BadPath { path: p.clone() })
                    }
                }
            }
            if rel.as_os_str().is_empty() {
                return Err(SnapshotError::BadPath { path: p.clone() });
            }
            match meta.mode {
                Mode::Overlay { .. } => {
                    if let Some(path) = inside(&active.join("upper"), &rel)? {
                        tree::remove_any(&path)?;
                    }
                }
                Mode::Copy => {
                    let Some(dst) = inside(&active.join("rootfs"), &rel)? else {
                        continue;
                    };
                    tree::remove_any(&dst)?;
                    if let Some(lower) = inside(&self.active_lower(&meta)?, &rel)? {
                        if fs::symlink_metadata(&lower).is_ok() {
                            tree::copy_path(&lower, &dst)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes what step `key` changed into `w` (see [`crate::diff`]). Unmount the step's root
    /// first.
    pub fn diff<W: Write>(
        &self,
        key: &str,
        opts: &DiffOptions,
        w: &mut LayerWriter<W>,
    ) -> Result<DiffStats, SnapshotError> {
        let (active, meta) = self.active(key)?;
        let stats = match meta.mode {
            Mode::Overlay { userxattr } => {
                let opts = DiffOptions {
                    overlay_xattrs: Some(XattrFlavour::for_userxattr(userxattr)),
                    ..opts.clone()
                };
                diff_upper(&active.join("upper"), &opts, w)?
            }
            Mode::Copy => {
                let lower = self.active_lower(&meta)?;
                let baseline_path = active.join("baseline");
                let baseline = if baseline_path.exists() {
                    Some(Baseline::load(&baseline_path)?)
                } else {
                    None
                };
                diff_trees(&lower, &active.join("rootfs"), baseline.as_ref(), opts, w)?
            }
        };
        Ok(stats)
    }

    /// [`Snapshots::diff`] straight into the content store as a layer.
    pub fn write_diff(
        &self,
        key: &str,
        store: &Store,
        compression: Compression,
        opts: &DiffOptions,
    ) -> Result<(LayerInfo, DiffStats), SnapshotError> {
        let mut stats = None;
        let info = kiln_oci::write_layer(store, compression, |w| {
            stats = Some(self.diff(key, opts, w).map_err(LayerError::other)?);
            Ok(())
        })?;
        Ok((info, stats.unwrap_or_default()))
    }

    /// Keeps step `key`'s result as the snapshot `chain` (the parent's chain ID extended with
    /// the diffID of the step's layer) and ends the step. Unmount the step's root first.
    pub fn commit(&self, key: &str, chain: &ChainId) -> Result<Created, SnapshotError> {
        let (active, meta) = self.active(key)?;
        if self.exists(chain) {
            self.remove(key)?;
            return Ok(Created::Existing);
        }
        let tmp = self.new_temp()?;
        let moved = match meta.mode {
            Mode::Overlay { userxattr } => {
                let (from, to) = (active.join("upper"), tmp.join("fs"));
                fs::rename(&from, &to)
                    .map_err(io_err("move", &from))
                    .and_then(|()| {
                        write_format(
                            &tmp,
                            Format::Overlay(XattrFlavour::for_userxattr(userxattr)),
                        )
                    })
                    .and_then(|()| match meta.parent {
                        // Over nothing, the upper directory is the whole tree.
                        None => symlink_flat(&tmp),
                        Some(_) => Ok(()),
                    })
            }
            Mode::Copy => {
                let (from, to) = (active.join("rootfs"), tmp.join("flat"));
                fs::rename(&from, &to)
                    .map_err(io_err("move", &from))
                    .and_then(|()| write_format(&tmp, Format::Plain))
            }
        };
        let created = moved.and_then(|()| self.publish(&tmp, chain));
        if created.is_err() {
            let _ = tree::remove_tree(&tmp);
            return created;
        }
        self.remove(key)?;
        created
    }

    /// Ends step `key` without keeping anything. Absent keys are fine.
    pub fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let active = self.active_path(key)?;
        tree::remove_tree(&active).map_err(io_err("remove", &active))
    }

    /// Deletes the snapshot `chain`. Snapshots above it that have no `flat` of their own need
    /// it; the caller (garbage collection) decides what is unused.
    pub fn remove_snapshot(&self, chain: &ChainId) -> Result<(), SnapshotError> {
        let dir = self.snap_dir(chain);
        // Rename first so that the chain ID disappears at once even if removal stops halfway.
        let tmp = self.tmp_dir().join(format!(
            "{}-{}-gone",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::rename(&dir, &tmp) {
            Ok(()) => tree::remove_tree(&tmp).map_err(io_err("remove", &tmp)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &dir)(e)),
        }
    }

    /// The lower directories, newest first, that a step on top of `chain` mounts (making a
    /// `flat` when the chain is too deep for one mount). Copy mode has one: the full root.
    pub fn lowers(&self, chain: &[ChainId]) -> Result<Vec<PathBuf>, SnapshotError> {
        self.check_parents(chain)?;
        match self.mode {
            Mode::Overlay { userxattr } => {
                let cap = OverlayMount::lower_capacity(
                    &self.active_dir().join("k").join("upper"),
                    &self.active_dir().join("k").join("work"),
                    userxattr,
                );
                self.lowers_for(chain, XattrFlavour::for_userxattr(userxattr), cap)
            }
            Mode::Copy if chain.is_empty() => Ok(vec![self.empty_dir()]),
            Mode::Copy => Ok(vec![self.materialize(chain)?]),
        }
    }

    /// The whole root filesystem of `chain` as one directory (its `flat`), made now if needed.
    pub fn flat(&self, chain: &[ChainId]) -> Result<PathBuf, SnapshotError> {
        self.check_parents(chain)?;
        if chain.is_empty() {
            return Ok(self.empty_dir());
        }
        self.materialize(chain)
    }

    fn check_parents(&self, chain: &[ChainId]) -> Result<(), SnapshotError> {
        match chain.iter().find(|c| !self.exists(c)) {
            Some(c) => Err(SnapshotError::NotFound { chain: c.clone() }),
            None => Ok(()),
        }
    }

    fn active_path(&self, key: &str) -> Result<PathBuf, SnapshotError> {
        let ok = !key.is_empty()
            && key.len() <= 128
            && !key.starts_with('.')
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(SnapshotError::InvalidKey {
                key: key.to_owned(),
            });
        }
        Ok(self.active_dir().join(key))
    }

    fn active(&self, key: &str) -> Result<(PathBuf, ActiveMeta), SnapshotError> {
        let active = self.active_path(key)?;
        let meta_path = active.join("meta");
        let text = match fs::read_to_string(&meta_path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SnapshotError::NoSuchKey {
                    key: key.to_owned(),
                })
            }
            Err(e) => return Err(io_err("read", &meta_path)(e)),
        };
        let meta = ActiveMeta::parse(&text).ok_or_else(|| SnapshotError::Corrupt {
            path: active.clone(),
            reason: "unreadable meta file".to_owned(),
        })?;
        Ok((active, meta))
    }

    /// The tree a copy-mode step was copied from.
    fn active_lower(&self, meta: &ActiveMeta) -> Result<PathBuf, SnapshotError> {
        match &meta.parent {
            None => Ok(self.empty_dir()),
            Some(parent) => {
                let dir = self.snap_dir(parent);
                self.flat_of(&dir)?.ok_or_else(|| SnapshotError::Corrupt {
                    path: dir,
                    reason: "the parent of a copy-mode step has no flat".to_owned(),
                })
            }
        }
    }

    /// `dir/flat` resolved (`fs` for bottom layers), if the snapshot has one.
    fn flat_of(&self, dir: &Path) -> Result<Option<PathBuf>, SnapshotError> {
        let flat = dir.join("flat");
        match fs::symlink_metadata(&flat) {
            Ok(m) if m.file_type().is_symlink() => Ok(Some(dir.join("fs"))),
            Ok(_) => Ok(Some(flat)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &flat)(e)),
        }
    }

    fn format_of(&self, dir: &Path) -> Result<Format, SnapshotError> {
        let path = dir.join("format");
        let text = fs::read_to_string(&path).map_err(io_err("read", &path))?;
        Format::parse(&text).ok_or_else(|| SnapshotError::Corrupt {
            path: dir.to_path_buf(),
            reason: format!("unknown format {:?}", text.trim()),
        })
    }

    /// Lower directories for a mount over `chain`, newest first, at most `cap` of them.
    fn lowers_for(
        &self,
        chain: &[ChainId],
        flavour: XattrFlavour,
        cap: usize,
    ) -> Result<Vec<PathBuf>, SnapshotError> {
        if chain.is_empty() {
            return Ok(vec![self.empty_dir()]);
        }
        let lowers = self.stack(chain, flavour)?;
        if lowers.len() <= cap.max(1) {
            return Ok(lowers);
        }
        let top = chain.len() - 1;
        let cut = flatten_point(top, cap);
        self.materialize(&chain[..=cut])?;
        let lowers = self.stack(chain, flavour)?;
        if lowers.len() > cap.max(1) {
            // Only if someone removed the flat just made.
            return Err(SnapshotError::Corrupt {
                path: self.snap_dir(&chain[cut]),
                reason: "flattened layer vanished".to_owned(),
            });
        }
        Ok(lowers)
    }

    /// Walks down from the top of `chain` collecting `fs` directories until a `flat` (or a
    /// layer this flavour cannot stack, which is flattened).
    fn stack(
        &self,
        chain: &[ChainId],
        flavour: XattrFlavour,
    ) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut out = Vec::new();
        for i in (0..chain.len()).rev() {
            let dir = self.snap_dir(&chain[i]);
            if let Some(flat) = self.flat_of(&dir)? {
                out.push(flat);
                return Ok(out);
            }
            let fs_dir = dir.join("fs");
            if fs_dir.is_dir() && self.format_of(&dir)?.stacks_under(flavour) {
                out.push(fs_dir);
                continue;
            }
            out.push(self.materialize(&chain[..=i])?);
            return Ok(out);
        }
        // Only reached if the bottom layer has no flat, which create() always makes.
        Err(SnapshotError::Corrupt {
            path: self.snap_dir(&chain[0]),
            reason: "bottom layer without a flat".to_owned(),
        })
    }

    /// Makes (once) and returns the `flat` of the top of `chain`: the nearest `flat` below,
    /// copied, with every layer above it applied oldest first.
    fn materialize(&self, chain: &[ChainId]) -> Result<PathBuf, SnapshotError> {
        let Some(top) = chain.last() else {
            return Ok(self.empty_dir());
        };
        let top_dir = self.snap_dir(top);
        if let Some(flat) = self.flat_of(&top_dir)? {
            return Ok(flat);
        }
        let mut layers = Vec::new();
        let mut bottom = None;
        for c in chain.iter().rev() {
            let dir = self.snap_dir(c);
            if let Some(flat) = self.flat_of(&dir)? {
                bottom = Some(flat);
                break;
            }
            let flavour = match self.format_of(&dir)? {
                Format::Plain => None,
                Format::Overlay(XattrFlavour::Trusted) => {
                    if !(overlay::in_initial_userns() && nix::unistd::geteuid().is_root()) {
                        return Err(SnapshotError::Unreadable { chain: c.clone() });
                    }
                    Some(XattrFlavour::Trusted)
                }
                Format::Overlay(XattrFlavour::User) => Some(XattrFlavour::User),
            };
            layers.push((dir.join("fs"), flavour));
        }
        let tmp = self.new_temp()?;
        let flat = tmp.join("flat");
        let built = (|| {
            match &bottom {
                Some(b) => tree::copy_tree(b, &flat)?,
                None => mkdir(&flat)?,
            }
            for (fs_dir, flavour) in layers.iter().rev() {
                tree::apply_layer_dir(fs_dir, &flat, *flavour)?;
            }
            let dst = top_dir.join("flat");
            match fs::rename(&flat, &dst) {
                Ok(()) => Ok(()),
                // Someone else flattened it meanwhile.
                Err(_) if dst.is_dir() => Ok(()),
                Err(e) => Err(io_err("rename", &flat)(e)),
            }
        })();
        let _ = tree::remove_tree(&tmp);
        built?;
        Ok(top_dir.join("flat"))
    }

    fn new_temp(&self) -> Result<PathBuf, SnapshotError> {
        loop {
            let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
            let p = self.tmp_dir().join(format!("{}-{n}", std::process::id()));
            match fs::create_dir(&p) {
                Ok(()) => return Ok(p),
                // Left by an earlier process with our pid; take the next number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create directory", &p)(e)),
            }
        }
    }

    /// Renames a filled temp directory to the snapshot `chain`.
    fn publish(&self, tmp: &Path, chain: &ChainId) -> Result<Created, SnapshotError> {
        let dst = self.snap_dir(chain);
        match fs::rename(tmp, &dst) {
            Ok(()) => Ok(Created::New),
            Err(_) if self.exists(chain) => {
                let _ = tree::remove_tree(tmp);
                Ok(Created::Existing)
            }
            Err(e) => Err(io_err("rename", tmp)(e)),
        }
    }

    /// Removes temp directories whose process is gone (best effort: a failure only leaves
    /// garbage behind). A mount left on one by a killed `create` is detached first.
    fn remove_stale_temps(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let path = entry.path();
            let _ = overlay::unmount(&path.join("merged"));
            let _ = tree::remove_tree(&path);
        }
    }
}

/// The chain index (bottom = 0) whose `flat` a mount of `top + 1` layers with room for `cap`
/// lowers is cut at: the lowest multiple-of-[`FLATTEN_STRIDE`] depth that leaves at most
/// `cap - 1` layer directories above it.
fn flatten_point(top: usize, cap: usize) -> usize {
    let cap = cap.max(1);
    let lowest = (top + 1).saturating_sub(cap);
    let k = (lowest + 1).div_ceil(FLATTEN_STRIDE) * FLATTEN_STRIDE - 1;
    if k <= top {
        k
    } else {
        lowest.min(top)
    }
}

/// `base/rel` if every directory on the way is a real directory. A step may have replaced
/// `etc` with a symlink to anywhere; following it from outside the sandbox would reach the
/// host, so such a path has nothing to revert.
fn inside(base: &Path, rel: &Path) -> Result<Option<PathBuf>, SnapshotError> {
    let mut at = base.to_path_buf();
    let mut parts = rel.components().peekable();
    while let Some(c) = parts.next() {
        if parts.peek().is_none() {
            return Ok(Some(at.join(c)));
        }
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("stat", &at)(e)),
        }
    }
    Ok(None)
}

fn mkdir(path: &Path) -> Result<(), SnapshotError> {
    fs::create_dir(path).map_err(io_err("create directory", path))
}

fn symlink_flat(dir: &Path) -> Result<(), SnapshotError> {
    let link = dir.join("flat");
    std::os::unix::fs::symlink("fs", &link).map_err(io_err("create symlink", &link))
}

fn write_format(dir: &Path, format: Format) -> Result<(), SnapshotError> {
    let path = dir.join("format");
    fs::write(&path, format!("{}\n", format.as_str())).map_err(io_err("write", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_points_are_aligned_and_leave_room() {
        for cap in [2usize, 10, 63, 64, 65, 150, 197, 500] {
            for top in 0..700usize {
                if top < cap {
                    continue;
                }
                let k = flatten_point(top, cap);
                assert!(k <= top, "top {top} cap {cap} k {k}");
                // Layers above k, plus k's flat, fit.
                assert!(top - k < cap, "top {top} cap {cap} k {k}");
                if cap >= FLATTEN_STRIDE {
                    assert_eq!((k + 1) % FLATTEN_STRIDE, 0, "top {top} cap {cap} k {k}");
                }
            }
        }
        // The same cut serves a run of growing chains.
        assert_eq!(flatten_point(200, 150), 63);
        assert_eq!(flatten_point(212, 150), 63);
        assert_eq!(flatten_point(213, 150), 127);
    }

    #[test]
    fn active_meta_round_trips() {
        let c: ChainId = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
            .parse()
            .unwrap();
        for (mode, parent) in [
            (Mode::Overlay { userxattr: true }, Some(c.clone())),
            (Mode::Overlay { userxattr: false }, None),
            (Mode::Copy, Some(c)),
        ] {
            let m = ActiveMeta { mode, parent };
            let back = ActiveMeta::parse(&m.to_text()).unwrap();
            assert_eq!((back.mode, back.parent), (m.mode, m.parent));
        }
    }

    #[test]
    fn keys_must_be_plain_names() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshots::open(dir.path(), Mode::Copy).unwrap();
        for bad in ["", ".", "..", "a/b", ".hidden", "x y"] {
            assert!(matches!(
                s.active_path(bad),
                Err(SnapshotError::InvalidKey { .. })
            ));
        }
        assert!(s.active_path("step-1.run_2").is_ok());
    }
}
