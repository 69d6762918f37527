//! The overlay differ: one walk over an upper directory.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_oci::LayerWriter;

use super::entry::Emitter;
use super::{io_err, DiffError, DiffOptions, DiffStats};
use crate::overlay::{is_opaque, is_whiteout, XattrFlavour};

/// Writes the change recorded in the overlay upper directory `upper` into `w` (see the
/// [module docs](super) for the mapping). Reads nothing but `upper`. Call it after the step's
/// overlay is unmounted, or at least after everything writing through it has stopped.
///
/// The writer is not finished, so callers can add entries of their own; with
/// [`kiln_oci::write_layer`] the closure is simply
/// `|w| diff_upper(upper, &opts, w).map(drop).map_err(LayerError::other)`.
pub fn diff_upper<W: Write>(
    upper: &Path,
    opts: &DiffOptions,
    w: &mut LayerWriter<W>,
) -> Result<DiffStats, DiffError> {
    let skip = opts.skip_set()?;
    let mut em = Emitter::new(w, opts);
    let mut stack = Vec::new();
    let root_meta = fs::symlink_metadata(upper).map_err(io_err("stat", upper))?;
    if !root_meta.is_dir() {
        return Err(io_err("read upper directory", upper)(std::io::Error::from(
            std::io::ErrorKind::NotADirectory,
        )));
    }
    let flavour = opts.overlay_xattrs;
    push_children(
        upper,
        Path::new(""),
        &skip,
        flavour,
        &mut stack,
        &mut em.stats,
    )?;
    while let Some(item) = stack.pop() {
        let abs = upper.join(&item.rel);
        if item.whiteout {
            em.whiteout(&item.rel)?;
            continue;
        }
        em.node(&abs, &item.rel, &item.meta)?;
        if item.meta.is_dir() {
            if is_opaque(&abs, flavour).map_err(io_err("read xattrs", &abs))? {
                em.opaque(&item.rel)?;
            }
            push_children(&abs, &item.rel, &skip, flavour, &mut stack, &mut em.stats)?;
        }
    }
    Ok(em.stats)
}

struct Item {
    rel: PathBuf,
    meta: fs::Metadata,
    whiteout: bool,
}

/// Queues the children of `abs` so they pop whiteouts first, then the rest, each group sorted
/// by name bytes.
fn push_children(
    abs: &Path,
    rel: &Path,
    skip: &HashSet<PathBuf>,
    flavour: Option<XattrFlavour>,
    stack: &mut Vec<Item>,
    stats: &mut DiffStats,
) -> Result<(), DiffError> {
    let mut names: Vec<OsString> = Vec::new();
    for entry in fs::read_dir(abs).map_err(io_err("read directory", abs))? {
        names.push(entry.map_err(io_err("read directory", abs))?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut whiteouts = Vec::new();
    let mut others = Vec::new();
    for name in names {
        let child_rel = rel.join(&name);
        if skip.contains(&child_rel) {
            stats.skipped += 1;
            continue;
        }
        let child_abs = abs.join(&name);
        let meta = fs::symlink_metadata(&child_abs).map_err(io_err("stat", &child_abs))?;
        let whiteout = is_whiteout(&child_abs, &meta, flavour);
        let item = Item {
            rel: child_rel,
            meta,
            whiteout,
        };
        if whiteout {
            whiteouts.push(item);
        } else {
            others.push(item);
        }
    }
    stack.extend(others.into_iter().rev());
    stack.extend(whiteouts.into_iter().rev());
    Ok(())
}
