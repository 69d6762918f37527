//! Turning one file on disk into layer entries, shared by both differs.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kiln_oci::{EntryKind, LayerWriter, TarEntry};
use nix::fcntl::OFlag;

use super::{io_err, DiffError, DiffOptions, DiffStats};
use crate::overlay::{absent_xattr, is_overlay_xattr};

/// Writes entries into a layer, remembering inodes already written so that later names of
/// the same file become hard links.
pub(crate) struct Emitter<'a, W: Write> {
    w: &'a mut LayerWriter<W>,
    subsecond: bool,
    links: HashMap<(u64, u64), PathBuf>,
    pub(crate) stats: DiffStats,
}

impl<'a, W: Write> Emitter<'a, W> {
    pub(crate) fn new(w: &'a mut LayerWriter<W>, opts: &DiffOptions) -> Emitter<'a, W> {
        if opts.clamp_mtime.is_some() {
            w.set_clamp_mtime(opts.clamp_mtime);
        }
        Emitter {
            w,
            subsecond: opts.subsecond_mtime,
            links: HashMap::new(),
            stats: DiffStats::default(),
        }
    }

    fn append(&mut self, entry: &TarEntry, content: Option<&mut File>) -> Result<(), DiffError> {
        let content = content.map(|f| f as &mut dyn std::io::Read);
        self.w
            .append(entry, content)
            .map_err(|source| DiffError::Layer {
                path: entry.path.clone(),
                source,
            })?;
        self.stats.entries += 1;
        Ok(())
    }

    /// `dir/.wh.name` for a deleted `rel`.
    pub(crate) fn whiteout(&mut self, rel: &Path) -> Result<(), DiffError> {
        self.append(&TarEntry::whiteout(rel), None)?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// `rel/.wh..wh..opq`.
    pub(crate) fn opaque(&mut self, rel: &Path) -> Result<(), DiffError> {
        self.append(&TarEntry::opaque_whiteout(rel), None)?;
        self.stats.opaque_dirs += 1;
        Ok(())
    }

    /// The entry for the file at `abs`, layer path `rel`, as `meta` (from `symlink_metadata`)
    /// describes it. Sockets are counted and left out.
    pub(crate) fn node(
        &mut self,
        abs: &Path,
        rel: &Path,
        meta: &fs::Metadata,
    ) -> Result<(), DiffError> {
        let ft = meta.file_type();
        if ft.is_socket() {
            self.stats.sockets += 1;
            return Ok(());
        }
        if !ft.is_dir() && meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                let mut e = TarEntry::hardlink(rel, first.clone());
                fill_meta(&mut e, meta, self.subsecond);
                self.append(&e, None)?;
                self.stats.hardlinks += 1;
                return Ok(());
            }
            self.links
                .insert((meta.dev(), meta.ino()), rel.to_path_buf());
        }
        let mut e = if ft.is_dir() {
            TarEntry::dir(rel)
        } else if ft.is_file() {
            TarEntry::file(rel, meta.len())
        } else if ft.is_symlink() {
            TarEntry::symlink(rel, fs::read_link(abs).map_err(io_err("read link", abs))?)
        } else if ft.is_char_device() {
            let (major, minor) = device(meta.rdev());
            TarEntry::char_device(rel, major, minor)
        } else if ft.is_block_device() {
            let (major, minor) = device(meta.rdev());
            TarEntry::block_device(rel, major, minor)
        } else {
            TarEntry::fifo(rel)
        };
        fill_meta(&mut e, meta, self.subsecond);
        let (xattrs, dropped) = image_xattrs(abs)?;
        e.xattrs = xattrs;
        self.stats.xattrs_dropped += dropped;
        if e.kind == EntryKind::File {
            let mut f = open_nofollow(abs)?;
            self.append(&e, Some(&mut f))?;
            self.stats.files += 1;
            self.stats.bytes += e.size;
        } else {
            self.append(&e, None)?;
        }
        Ok(())
    }
}

fn fill_meta(e: &mut TarEntry, meta: &fs::Metadata, subsecond: bool) {
    e.mode = meta.mode() & 0o7777;
    e.uid = u64::from(meta.uid());
    e.gid = u64::from(meta.gid());
    e.mtime = meta.mtime();
    e.mtime_nanos = if subsecond {
        u32::try_from(meta.mtime_nsec()).unwrap_or(0)
    } else {
        0
    };
}

fn device(rdev: u64) -> (u32, u32) {
    let major = nix::sys::stat::major(rdev);
    let minor = nix::sys::stat::minor(rdev);
    (
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
    )
}

/// Opens a file for reading without following a symlink in its last component.
pub(crate) fn open_nofollow(abs: &Path) -> Result<File, DiffError> {
    OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(abs)
        .map_err(io_err("open", abs))
}

/// The extended attributes of `abs` that belong in an image, and how many others (besides
/// overlay's own) were dropped.
pub(crate) fn image_xattrs(abs: &Path) -> Result<(BTreeMap<String, Vec<u8>>, u64), DiffError> {
    let mut out = BTreeMap::new();
    let mut dropped = 0;
    let names = match xattr::list(abs) {
        Ok(n) => n,
        Err(e) if absent_xattr(&e) => return Ok((out, 0)),
        Err(e) => return Err(io_err("list xattrs", abs)(e)),
    };
    for name in names {
        let Some(name) = name.to_str().map(str::to_owned) else {
            dropped += 1;
            continue;
        };
        if is_overlay_xattr(&name) {
            continue;
        }
        // The host's SELinux label of the snapshot directory is not part of the image.
        if name == "security.selinux" {
            dropped += 1;
            continue;
        }
        match xattr::get(abs, &name) {
            Ok(Some(v)) => {
                out.insert(name, v);
            }
            // Removed between list and get, or hidden from us.
            Ok(None) => {}
            Err(e) if absent_xattr(&e) => {}
            Err(e) => return Err(io_err("read xattr", abs)(e)),
        }
    }
    Ok((out, dropped))
}
