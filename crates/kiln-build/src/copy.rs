//! COPY and ADD planning: which source paths land where, with what owner and mode.
//!
//! A [`SourceTree`] is what a COPY reads from: the build context (after `.dockerignore`) or
//! another stage's or image's filesystem (`COPY --from`). [`plan_copy`] applies Docker's rules
//! — wildcards, directory contents, trailing-slash destinations, WORKDIR-relative paths, missing
//! parents, `--chown`, `--chmod`, `--exclude`, `--parents` — against the current image view and
//! returns the entries of the new layer. Nothing is read or written here; the caller streams
//! the content into the layer.

use crate::glob;
use crate::rootfs::{self, clean, join, parent_of, Kind, Rootfs};
use crate::users::Owner;
use kiln_context::ignore::Matcher;
use kiln_dockerfile::instructions::Chmod;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

/// Where an entry's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// No content (directories, links, devices).
    None,
    /// A file on the host (the build context).
    Path(PathBuf),
    /// `size` bytes at `offset` in an uncompressed tar file (a stored layer blob, or an ADD
    /// archive decompressed to a temporary file).
    Slice {
        /// The tar file.
        file: PathBuf,
        /// Where the entry's data starts.
        offset: u64,
    },
    /// Bytes held in memory (heredocs).
    Bytes(Arc<Vec<u8>>),
}

/// A source file or directory with its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrcNode {
    /// Type.
    pub kind: Kind,
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// File size.
    pub size: u64,
    /// Modification time.
    pub mtime: (i64, u32),
    /// Extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Where the bytes are.
    pub content: Content,
    /// Identity of the underlying file when it has several names (hard links).
    pub link_key: Option<(u64, u64)>,
}

impl SrcNode {
    /// A directory with no content of its own.
    pub fn dir(mode: u32, uid: u32, gid: u32, mtime: (i64, u32)) -> SrcNode {
        SrcNode {
            kind: Kind::Dir,
            mode,
            uid,
            gid,
            size: 0,
            mtime,
            xattrs: BTreeMap::new(),
            content: Content::None,
            link_key: None,
        }
    }
}

/// A tree of source paths (root-relative, `/`-separated, `""` is the root).
#[derive(Clone, Debug, Default)]
pub struct SourceTree {
    nodes: BTreeMap<String, SrcNode>,
}

/// Why a COPY cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// A source matched nothing.
    #[error("{0:?} not found in the build context or excluded by .dockerignore")]
    NotFound(String),
    /// A source matched nothing in another stage or image.
    #[error("{0:?} not found in the source image")]
    NotFoundInImage(String),
    /// Several sources need a directory destination.
    #[error("when using {0} with more than one source file, the destination must be a directory and end with a /")]
    NeedDirectory(&'static str),
    /// A file would replace a directory or go below a file.
    #[error("cannot copy to {0}: {1}")]
    Conflict(String, String),
    /// A path could not be resolved inside the image.
    #[error(transparent)]
    Resolve(#[from] rootfs::ResolveError),
    /// A malformed wildcard or exclude pattern.
    #[error("invalid pattern {0:?}: {1}")]
    Pattern(String, String),
}

impl SourceTree {
    /// An empty tree with just a root directory.
    pub fn new(root: SrcNode) -> SourceTree {
        let mut nodes = BTreeMap::new();
        nodes.insert(String::new(), root);
        SourceTree { nodes }
    }

    /// Adds a node (parents should be added first; missing ones are tolerated).
    pub fn insert(&mut self, path: &str, node: SrcNode) {
        self.nodes.insert(clean(path), node);
    }

    /// The node at a cleaned path.
    pub fn get(&self, path: &str) -> Option<&SrcNode> {
        self.nodes.get(path)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when only the root is there.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// Every path below `dir` (not `dir` itself), in order: parents before their children.
    pub fn below<'a>(
        &'a self,
        dir: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a SrcNode)> + 'a {
        self.descendants(dir)
    }

    /// Every path below `dir`, in order.
    fn descendants<'a>(
        &'a self,
        dir: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a SrcNode)> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.nodes
            .range(prefix.clone()..)
            .filter(move |(k, _)| !k.is_empty())
            .take_while(move |(k, _)| k.starts_with(&prefix))
    }

    fn children<'a>(
        &'a self,
        dir: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a SrcNode)> + 'a {
        let skip = if dir.is_empty() { 0 } else { dir.len() + 1 };
        self.descendants(dir)
            .filter(move |(k, _)| !k[skip..].contains('/'))
    }

    /// Resolves a source path: intermediate symlinks are followed inside the tree, the last
    /// component is not (a symlink named as a source is copied as a symlink).
    fn resolve(&self, path: &str) -> Result<String, CopyError> {
        Ok(rootfs::resolve_in_root(path, false, |p| {
            self.nodes.get(p).map(|n| &n.kind)
        })?)
    }

    /// The paths a source argument names: one path, or every match of a wildcard.
    pub fn find(&self, pattern: &str) -> Result<Vec<String>, CopyError> {
        let cleaned = clean(pattern);
        if !glob::has_wildcard(&cleaned) {
            let p = self.resolve(&cleaned)?;
            return Ok(if self.nodes.contains_key(&p) {
                vec![p]
            } else {
                vec![]
            });
        }
        let mut current = vec![String::new()];
        for seg in cleaned.split('/') {
            let mut next = Vec::new();
            for dir in &current {
                if glob::has_wildcard(seg) {
                    for (path, _) in self.children(dir) {
                        let name = &path[path.rfind('/').map_or(0, |i| i + 1)..];
                        let hit = glob::matches(seg, name)
                            .map_err(|e| CopyError::Pattern(pattern.to_string(), e))?;
                        if hit {
                            next.push(path.clone());
                        }
                    }
                } else if let Ok(p) = self.resolve(&join(dir, seg)) {
                    // A wildcard may have matched files; they have no children to look in.
                    if self.nodes.contains_key(&p) {
                        next.push(p);
                    }
                }
            }
            current = next;
        }
        current.sort();
        current.dedup();
        Ok(current)
    }
}

/// What to copy and how.
#[derive(Clone, Debug)]
pub struct CopyRequest<'a> {
    /// `COPY` or `ADD`, for messages.
    pub keyword: &'static str,
    /// Source arguments, expanded.
    pub sources: &'a [String],
    /// Destination, expanded.
    pub dest: &'a str,
    /// The WORKDIR in effect (absolute).
    pub workdir: &'a str,
    /// `--chown`, resolved.
    pub owner: Option<Owner>,
    /// `--chmod`.
    pub chmod: Option<Chmod>,
    /// `--exclude` patterns.
    pub excludes: &'a [String],
    /// `--parents`.
    pub parents: bool,
    /// Keep the source's uid/gid when there is no `--chown` (true for `COPY --from`; files
    /// from the context are always root-owned).
    pub preserve_owner: bool,
    /// mtime of directories the copy creates.
    pub now: (i64, u32),
    /// True when the sources come from the build context (for the not-found message).
    pub from_context: bool,
}

/// One entry of the planned layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Root-relative path in the image.
    pub path: String,
    /// Final metadata and content.
    pub node: SrcNode,
}

/// Plans a COPY/ADD. Returns the new entries (created parent directories included), sorted
/// by path.
pub fn plan_copy(
    tree: &SourceTree,
    image: &Rootfs,
    req: &CopyRequest,
) -> Result<Vec<Planned>, CopyError> {
    let dest_abs = if req.dest.starts_with('/') {
        req.dest.to_string()
    } else {
        format!("{}/{}", req.workdir.trim_end_matches('/'), req.dest)
    };
    let dest_says_dir = req.dest.ends_with('/')
        || req.dest == "."
        || req.dest.ends_with("/.")
        || req.dest.is_empty();
    if req.sources.len() > 1 && !dest_says_dir {
        return Err(CopyError::NeedDirectory(req.keyword));
    }
    let excludes = if req.excludes.is_empty() {
        None
    } else {
        let normalized: Vec<String> = req.excludes.iter().map(|e| clean(e)).collect();
        Some(
            Matcher::new(&normalized)
                .map_err(|e| CopyError::Pattern(req.excludes.join(","), e.to_string()))?,
        )
    };
    let mut matched = Vec::new();
    for src in req.sources {
        let found = tree.find(src)?;
        if found.is_empty() {
            return Err(if req.from_context {
                CopyError::NotFound(src.clone())
            } else {
                CopyError::NotFoundInImage(src.clone())
            });
        }
        matched.extend(found);
    }
    let dest_is_dir = dest_says_dir || matched.len() > 1 || image.is_dir(&dest_abs);
    let dest = clean(&dest_abs);

    let mut out: BTreeMap<String, SrcNode> = BTreeMap::new();
    for src in &matched {
        let node = &tree.nodes[src];
        let base = src.rsplit('/').next().unwrap_or_default();
        if node.kind == Kind::Dir {
            let target = if req.parents {
                join(&dest, src)
            } else {
                dest.clone()
            };
            add(&mut out, image, &target, node, req, true)?;
            for (path, child) in tree.descendants(src) {
                let rel = &path[if src.is_empty() { 0 } else { src.len() + 1 }..];
                if excluded(&excludes, rel) {
                    continue;
                }
                add(&mut out, image, &join(&target, rel), child, req, false)?;
            }
        } else {
            let rel = if req.parents { src.as_str() } else { base };
            if excluded(&excludes, rel) {
                continue;
            }
            let target = if dest_is_dir {
                join(&dest, rel)
            } else {
                dest.clone()
            };
            add(&mut out, image, &target, node, req, false)?;
        }
    }
    link_hardlinks(&mut out);
    create_parents(&mut out, image, req)?;
    Ok(out
        .into_iter()
        .map(|(path, node)| Planned { path, node })
        .collect())
}

fn excluded(m: &Option<Matcher>, rel: &str) -> bool {
    m.as_ref().is_some_and(|m| m.matches(rel).unwrap_or(false))
}

/// Adds one entry at `target` (resolved through the image's symlinks).
fn add(
    out: &mut BTreeMap<String, SrcNode>,
    image: &Rootfs,
    target: &str,
    node: &SrcNode,
    req: &CopyRequest,
    is_copy_root: bool,
) -> Result<(), CopyError> {
    let parent = resolve_planned_parent(out, image, parent_of(target))?;
    let name = target.rsplit('/').next().unwrap_or_default();
    let path = join(&parent, name);
    if path.is_empty() {
        // Copying a directory's contents to `/`: the root itself is not an entry.
        return Ok(());
    }
    let existing = image
        .get(&path)
        .map(|n| &n.kind)
        .or_else(|| out.get(&path).map(|n| &n.kind));
    if node.kind == Kind::Dir {
        match existing {
            Some(Kind::Dir) if is_copy_root => return Ok(()), // contents go into it as it is
            Some(Kind::Dir) | None => {}
            Some(Kind::Symlink(_)) if is_copy_root && image.is_dir(&format!("/{path}")) => {
                return Ok(())
            }
            Some(_) => {
                return Err(CopyError::Conflict(
                    format!("/{path}"),
                    "not a directory".into(),
                ))
            }
        }
    } else if existing == Some(&Kind::Dir) {
        return Err(CopyError::Conflict(
            format!("/{path}"),
            "cannot replace a directory with a non-directory".into(),
        ));
    }
    let mut n = node.clone();
    match (req.owner, req.preserve_owner) {
        (Some(o), _) => (n.uid, n.gid) = (o.uid, o.gid),
        (None, true) => {}
        (None, false) => (n.uid, n.gid) = (0, 0),
    }
    if let Some(chmod) = &req.chmod {
        if !matches!(n.kind, Kind::Symlink(_)) {
            n.mode = chmod.apply(n.mode, n.kind == Kind::Dir);
        }
    }
    out.insert(path, n);
    Ok(())
}

/// Resolves a directory path against the image, and against directories and symlinks this
/// copy already planned.
fn resolve_planned_parent(
    out: &BTreeMap<String, SrcNode>,
    image: &Rootfs,
    dir: &str,
) -> Result<String, CopyError> {
    Ok(rootfs::resolve_in_root(dir, true, |p| {
        out.get(p)
            .map(|n| &n.kind)
            .or_else(|| image.get(p).map(|n| &n.kind))
    })?)
}

/// Several names of one file in the copy become one file and hard links to it.
fn link_hardlinks(out: &mut BTreeMap<String, SrcNode>) {
    let mut first: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for (path, node) in out.iter_mut() {
        let Some(key) = node.link_key else { continue };
        if node.kind != Kind::File {
            continue;
        }
        match first.get(&key) {
            Some(target) => {
                node.kind = Kind::Hardlink(target.clone());
                node.content = Content::None;
                node.size = 0;
            }
            None => {
                first.insert(key, path.clone());
            }
        }
    }
}

/// Missing parent directories are created 0755, owned by the `--chown` owner (else root).
fn create_parents(
    out: &mut BTreeMap<String, SrcNode>,
    image: &Rootfs,
    req: &CopyRequest,
) -> Result<(), CopyError> {
    let owner = req.owner.unwrap_or(Owner { uid: 0, gid: 0 });
    let mut missing = BTreeSet::new();
    for path in out.keys() {
        let mut p = parent_of(path);
        while !p.is_empty() && !out.contains_key(p) {
            match image.get(p).map(|n| &n.kind) {
                Some(Kind::Dir) => break,
                Some(Kind::Symlink(_)) | None => {
                    missing.insert(p.to_string());
                }
                Some(_) => {
                    return Err(CopyError::Conflict(
                        format!("/{path}"),
                        format!("/{p} is not a directory"),
                    ))
                }
            }
            p = parent_of(p);
        }
    }
    for m in missing {
        out.insert(m, SrcNode::dir(0o755, owner.uid, owner.gid, req.now));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
