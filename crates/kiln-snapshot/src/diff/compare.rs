//! The copy-mode differ: comparing a step's root with the parent it was copied from.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_oci::LayerWriter;

use super::entry::{image_xattrs, open_nofollow, Emitter};
use super::{io_err, DiffError, DiffOptions, DiffStats};

/// What a freshly made copy of a root looked like, so the differ can tell later which
/// directories were deleted and made again, and which files nothing has touched.
///
/// - Directories are identified by inode number and birth time. A directory with the same
///   name but another identity was replaced (`rm -rf d && mkdir d`), and is written as opaque,
///   as overlay would. Without birth times (filesystems that lack them) a reused inode number
///   is missed, and the replaced directory is written as whiteouts of each old entry instead:
///   the same result once applied.
/// - `cutoff` is a second before the copy was finished. Changing a file's content or any of
///   its metadata sets its ctime to the current time, which nobody can set back, so a file
///   whose ctime is older than that has not been touched since the copy and its content need
///   not be read. (The second of slack covers the coarse clock ctime is taken from.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Baseline {
    cutoff: (i64, i64),
    dirs: HashMap<PathBuf, DirId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirId {
    ino: u64,
    btime: Option<(i64, u32)>,
}

impl DirId {
    fn of(meta: &fs::Metadata) -> DirId {
        let btime = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| Some((i64::try_from(d.as_secs()).ok()?, d.subsec_nanos())));
        DirId {
            ino: meta.ino(),
            btime,
        }
    }
}

const BASELINE_MAGIC: &str = "kiln-baseline 1";

impl Baseline {
    /// Records the directories of `root`, which must be a copy that was just finished.
    pub fn record(root: &Path) -> Result<Baseline, DiffError> {
        let mut dirs = HashMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let abs = root.join(&rel);
            let meta = fs::symlink_metadata(&abs).map_err(io_err("stat", &abs))?;
            dirs.insert(rel.clone(), DirId::of(&meta));
            for entry in fs::read_dir(&abs).map_err(io_err("read directory", &abs))? {
                let entry = entry.map_err(io_err("read directory", &abs))?;
                if entry
                    .file_type()
                    .map_err(io_err("stat", &entry.path()))?
                    .is_dir()
                {
                    stack.push(rel.join(entry.file_name()));
                }
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), 0))
            .unwrap_or((0, 0));
        Ok(Baseline {
            cutoff: (now.0 - 1, now.1),
            dirs,
        })
    }

    /// Writes the baseline to `path`.
    pub fn save(&self, path: &Path) -> Result<(), DiffError> {
        let mut out =
            format!("{BASELINE_MAGIC} {} {}\n", self.cutoff.0, self.cutoff.1).into_bytes();
        let mut dirs: Vec<_> = self.dirs.iter().collect();
        dirs.sort_by(|a, b| a.0.cmp(b.0));
        for (rel, id) in dirs {
            let btime = match id.btime {
                Some((s, n)) => format!("{s} {n}"),
                None => "- -".to_owned(),
            };
            out.extend_from_slice(format!("{} {btime}\0", id.ino).as_bytes());
            out.extend_from_slice(rel.as_os_str().as_bytes());
            out.push(0);
        }
        fs::write(path, out).map_err(io_err("write", path))
    }

    /// Reads a baseline written by [`Baseline::save`].
    pub fn load(path: &Path) -> Result<Baseline, DiffError> {
        let bytes = fs::read(path).map_err(io_err("read", path))?;
        let bad = |reason: &str| DiffError::BadBaseline {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("no header"))?;
        let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| bad("bad header"))?;
        let rest = header
            .strip_prefix(BASELINE_MAGIC)
            .ok_or_else(|| bad("bad header"))?;
        let nums: Vec<i64> = rest
            .split_whitespace()
            .map(|n| n.parse().map_err(|_| bad("bad cutoff")))
            .collect::<Result<_, _>>()?;
        let [secs, nanos] = nums[..] else {
            return Err(bad("bad cutoff"));
        };
        let mut dirs = HashMap::new();
        let mut fields = bytes[nl + 1..].split(|&b| b == 0);
        while let Some(id) = fields.next() {
            if id.is_empty() {
                break;
            }
            let rel = fields.next().ok_or_else(|| bad("record without a path"))?;
            let id = std::str::from_utf8(id).map_err(|_| bad("bad record"))?;
            let parts: Vec<&str> = id.split(' ').collect();
            let [ino, bs, bn] = parts[..] else {
                return Err(bad("bad record"));
            };
            let ino = ino.parse().map_err(|_| bad("bad inode number"))?;
            let btime = match (bs, bn) {
                ("-", "-") => None,
                _ => Some((
                    bs.parse().map_err(|_| bad("bad birth time"))?,
                    bn.parse().map_err(|_| bad("bad birth time"))?,
                )),
            };
            dirs.insert(
                PathBuf::from(OsString::from_vec(rel.to_vec())),
                DirId { ino, btime },
            );
        }
        Ok(Baseline {
            cutoff: (secs, nanos),
            dirs,
        })
    }

    /// The directory at `rel` is not the one the copy made.
    fn replaced(&self, rel: &Path, meta: &fs::Metadata) -> bool {
        match self.dirs.get(rel) {
            Some(id) => *id != DirId::of(meta),
            None => true,
        }
    }

    /// Nothing has changed the inode since the copy.
    fn untouched(&self, meta: &fs::Metadata) -> bool {
        (meta.ctime(), meta.ctime_nsec()) < self.cutoff
    }
}

/// Writes the difference between the step root `root` and `lower`, the tree it was copied
/// from, into `w`: the same entries [`super::diff_upper`] writes for the same change made on
/// an overlay (see the [module docs](super)). `baseline`, recorded right after the copy, lets
/// replaced directories come out opaque and untouched files be skipped unread; without it
/// every file whose metadata matches is compared byte by byte.
pub fn diff_trees<W: Write>(
    lower: &Path,
    root: &Path,
    baseline: Option<&Baseline>,
    opts: &DiffOptions,
    w: &mut LayerWriter<W>,
) -> Result<DiffStats, DiffError> {
    let skip = opts.skip_set()?;
    let mut force = HashSet::new();
    let (plan, stats) = loop {
        let mut cmp = Comparer {
            lower,
            root,
            baseline,
            skip: &skip,
            force: &force,
            plan: Vec::new(),
            stack: Vec::new(),
            links: HashMap::new(),
            stats: DiffStats::default(),
        };
        cmp.run()?;
        // overlay copies a file up before linking it, so a new link to an unchanged file
        // writes both names. Do the same: if any name of a multiply linked inode is written,
        // write all of them (one more pass, only when that happens).
        let unwritten = cmp.unwritten_links();
        if unwritten.is_empty() || unwritten.iter().all(|p| force.contains(p)) {
            break (cmp.plan, cmp.stats);
        }
        force.extend(unwritten);
    };
    let mut em = Emitter::new(w, opts);
    em.stats = stats;
    for p in plan.into_iter().filter(|p| p.keep) {
        match p.what {
            What::Whiteout => em.whiteout(&p.rel)?,
            What::Opaque => em.opaque(&p.rel)?,
            What::Node(meta) => em.node(&root.join(&p.rel), &p.rel, &meta)?,
        }
    }
    Ok(em.stats)
}

enum What {
    Node(fs::Metadata),
    Opaque,
    Whiteout,
}

/// One entry of the layer to be, in layer order. Unchanged directories are planned with
/// `keep` false and kept only if something below them is written.
struct Planned {
    rel: PathBuf,
    what: What,
    keep: bool,
}

/// `rel` exists in the step root (`new`) and maybe in the lower tree.
struct Visit {
    rel: PathBuf,
    new: fs::Metadata,
    lower: Option<fs::Metadata>,
}

enum Task {
    Visit(Box<Visit>),
    /// Everything below the directory planned at this index is done.
    EndDir(usize),
}

struct Comparer<'a> {
    lower: &'a Path,
    root: &'a Path,
    baseline: Option<&'a Baseline>,
    skip: &'a HashSet<PathBuf>,
    /// Non-directories written even if unchanged.
    force: &'a HashSet<PathBuf>,
    plan: Vec<Planned>,
    stack: Vec<Task>,
    /// Every name of every multiply linked non-directory in the step root.
    links: HashMap<(u64, u64), Vec<PathBuf>>,
    stats: DiffStats,
}

impl Comparer<'_> {
    fn run(&mut self) -> Result<(), DiffError> {
        self.children(Path::new(""), true)?;
        while let Some(task) = self.stack.pop() {
            match task {
                Task::EndDir(i) => {
                    // Unchanged directories below were dropped at their own EndDir, so
                    // anything after `i` is written.
                    if self.plan.len() > i + 1 {
                        self.plan[i].keep = true;
                    } else if !self.plan[i].keep {
                        self.plan.truncate(i);
                    }
                }
                Task::Visit(v) => {
                    let Visit { rel, new, lower } = *v;
                    self.visit(rel, new, lower)?
                }
            }
        }
        Ok(())
    }

    /// Names of inodes that are written under some name but not under these.
    fn unwritten_links(&self) -> Vec<PathBuf> {
        let mut written = HashSet::new();
        let mut inodes = HashSet::new();
        for p in self.plan.iter().filter(|p| p.keep) {
            if let What::Node(m) = &p.what {
                if !m.is_dir() && m.nlink() > 1 {
                    written.insert(p.rel.as_path());
                    inodes.insert((m.dev(), m.ino()));
                }
            }
        }
        inodes
            .iter()
            .filter_map(|k| self.links.get(k))
            .flatten()
            .filter(|p| !written.contains(p.as_path()))
            .cloned()
            .collect()
    }

    fn visit(
        &mut self,
        rel: PathBuf,
        new: fs::Metadata,
        lower: Option<fs::Metadata>,
    ) -> Result<(), DiffError> {
        if !new.is_dir() && new.nlink() > 1 {
            self.links
                .entry((new.dev(), new.ino()))
                .or_default()
                .push(rel.clone());
        }
        let Some(lower) = lower else {
            return self.add(rel, new, false);
        };
        match (new.is_dir(), lower.is_dir()) {
            (true, true) => {
                if self.baseline.is_some_and(|b| b.replaced(&rel, &new)) {
                    return self.add(rel, new, true);
                }
                let changed = !self.same_dir(&rel, &new, &lower)?;
                let index = self.plan.len();
                self.plan.push(Planned {
                    rel: rel.clone(),
                    what: What::Node(new),
                    keep: changed,
                });
                self.stack.push(Task::EndDir(index));
                self.children(&rel, true)
            }
            // overlay marks a directory made over a deleted lower file opaque.
            (true, false) => self.add(rel, new, true),
            (false, _) => {
                if !self.force.contains(&rel) && self.same_node(&rel, &new, &lower)? {
                    Ok(())
                } else {
                    self.add(rel, new, false)
                }
            }
        }
    }

    /// Plans `rel` as written whole: an added or changed entry, and all below it.
    fn add(&mut self, rel: PathBuf, new: fs::Metadata, opaque: bool) -> Result<(), DiffError> {
        let is_dir = new.is_dir();
        self.plan.push(Planned {
            rel: rel.clone(),
            what: What::Node(new),
            keep: true,
        });
        if is_dir {
            if opaque {
                self.plan.push(Planned {
                    rel: rel.clone(),
                    what: What::Opaque,
                    keep: true,
                });
            }
            self.children(&rel, false)?;
        }
        Ok(())
    }

    /// Plans the whiteouts of directory `rel` and queues its entries. With `compare` false the
    /// lower directory is hidden (new or opaque) and not read.
    fn children(&mut self, rel: &Path, compare: bool) -> Result<(), DiffError> {
        let new = self.list(self.root, rel)?;
        let lower = if compare {
            self.list(self.lower, rel)?
        } else {
            BTreeMap::new()
        };
        for name in lower.keys() {
            if !new.contains_key(name) {
                self.plan.push(Planned {
                    rel: rel.join(name),
                    what: What::Whiteout,
                    keep: true,
                });
            }
        }
        let mut lower = lower;
        let tasks: Vec<Task> = new
            .into_iter()
            .map(|(name, meta)| {
                Task::Visit(Box::new(Visit {
                    rel: rel.join(&name),
                    lower: lower.remove(&name),
                    new: meta,
                }))
            })
            .collect();
        self.stack.extend(tasks.into_iter().rev());
        Ok(())
    }

    /// The entries of `base/rel` (sorted by name bytes), less skipped ones.
    fn list(
        &mut self,
        base: &Path,
        rel: &Path,
    ) -> Result<BTreeMap<ByteName, fs::Metadata>, DiffError> {
        let abs = base.join(rel);
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(&abs).map_err(io_err("read directory", &abs))? {
            let name = entry.map_err(io_err("read directory", &abs))?.file_name();
            if self.skip.contains(&rel.join(&name)) {
                if base == self.root {
                    self.stats.skipped += 1;
                }
                continue;
            }
            let path = abs.join(&name);
            let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
            out.insert(ByteName(name), meta);
        }
        Ok(out)
    }

    fn same_dir(
        &self,
        rel: &Path,
        new: &fs::Metadata,
        lower: &fs::Metadata,
    ) -> Result<bool, DiffError> {
        Ok(same_basics(new, lower) && self.same_xattrs(rel)?)
    }

    /// Whether the non-directory `rel` is unchanged.
    fn same_node(
        &mut self,
        rel: &Path,
        new: &fs::Metadata,
        lower: &fs::Metadata,
    ) -> Result<bool, DiffError> {
        let (nt, lt) = (new.file_type(), lower.file_type());
        let same_type = (nt.is_file() && lt.is_file())
            || (nt.is_symlink() && lt.is_symlink())
            || (nt.is_char_device() && lt.is_char_device())
            || (nt.is_block_device() && lt.is_block_device())
            || (nt.is_fifo() && lt.is_fifo())
            || (nt.is_socket() && lt.is_socket());
        if !same_type || !same_basics(new, lower) || new.len() != lower.len() {
            return Ok(false);
        }
        if (nt.is_char_device() || nt.is_block_device()) && new.rdev() != lower.rdev() {
            return Ok(false);
        }
        if self.baseline.is_some_and(|b| b.untouched(new)) {
            return Ok(true);
        }
        let (na, la) = (self.root.join(rel), self.lower.join(rel));
        if nt.is_symlink()
            && fs::read_link(&na).map_err(io_err("read link", &na))?
                != fs::read_link(&la).map_err(io_err("read link", &la))?
        {
            return Ok(false);
        }
        if !self.same_xattrs(rel)? {
            return Ok(false);
        }
        if nt.is_file() {
            self.stats.compared += 1;
            return same_content(&na, &la);
        }
        Ok(true)
    }

    fn same_xattrs(&self, rel: &Path) -> Result<bool, DiffError> {
        let new = image_xattrs(&self.root.join(rel))?.0;
        let lower = image_xattrs(&self.lower.join(rel))?.0;
        Ok(new == lower)
    }
}

/// Mode (with type), owner and mtime.
fn same_basics(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.mode() == b.mode()
        && a.uid() == b.uid()
        && a.gid() == b.gid()
        && a.mtime() == b.mtime()
        && a.mtime_nsec() == b.mtime_nsec()
}

fn same_content(a: &Path, b: &Path) -> Result<bool, DiffError> {
    const CHUNK: usize = 64 * 1024;
    let mut fa = open_nofollow(a)?;
    let mut fb = open_nofollow(b)?;
    let mut ba = vec![0u8; CHUNK];
    let mut bb = vec![0u8; CHUNK];
    loop {
        let na = kiln_oci::layer::read_full(&mut fa, &mut ba).map_err(io_err("read", a))?;
        let nb = kiln_oci::layer::read_full(&mut fb, &mut bb).map_err(io_err("read", b))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// A file name ordered by its bytes, as the overlay differ orders names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ByteName(OsString);

impl Ord for ByteName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_bytes().cmp(other.0.as_bytes())
    }
}

impl PartialOrd for ByteName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl AsRef<Path> for ByteName {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::create_dir_all(dir.path().join("c d")).unwrap();
        let b = Baseline::record(dir.path()).unwrap();
        assert_eq!(b.dirs.len(), 4);
        let file = dir.path().join("baseline");
        b.save(&file).unwrap();
        assert_eq!(Baseline::load(&file).unwrap(), b);
        let meta = fs::symlink_metadata(dir.path().join("a/b")).unwrap();
        assert!(!b.replaced(Path::new("a/b"), &meta));
        fs::remove_dir(dir.path().join("a/b")).unwrap();
        fs::create_dir(dir.path().join("a/b")).unwrap();
        let meta = fs::symlink_metadata(dir.path().join("a/b")).unwrap();
        assert!(b.replaced(Path::new("a/b"), &meta));
    }
}
