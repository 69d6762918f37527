//! A virtual view of an image's root filesystem, built from its layers' tar headers.
//!
//! COPY and ADD need to know what the image already holds: whether `/bin` is a symlink to
//! `usr/bin` (so `COPY x /bin/` lands in `/usr/bin`), whether the destination is a directory,
//! and where a file's content lives. Building the view from tar headers needs no extraction,
//! no root and no user namespace. Paths are resolved the way the kernel would inside a chroot:
//! absolute symlink targets start at the image root and `..` never climbs above it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Most symlinks followed while resolving one path (Linux's limit).
const MAX_SYMLINKS: usize = 40;

/// What a path is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symlink with its target as stored.
    Symlink(String),
    /// A hard link to another path (root-relative, as stored in the tar).
    Hardlink(String),
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A named pipe.
    Fifo,
}

/// Where a file's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `size` bytes at `offset` in an uncompressed layer tar.
    Slice {
        /// The tar file.
        file: Arc<Path>,
        /// Where the data starts.
        offset: u64,
    },
    /// Created by this build, not backed by a layer yet.
    New,
}

/// One path of the filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Type.
    pub kind: Kind,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size of a regular file.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, u32),
    /// Extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Where the content lives.
    pub origin: Origin,
    /// Layer that last wrote this path (for opaque whiteouts).
    pub layer: usize,
}

impl Node {
    /// A root-owned, empty entry of `kind` with mode `mode`, created by this build.
    pub fn new(kind: Kind, mode: u32) -> Node {
        Node {
            kind,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: (0, 0),
            xattrs: BTreeMap::new(),
            origin: Origin::New,
            layer: usize::MAX,
        }
    }

    /// A directory owned by `uid:gid` with mode `mode`, created by this build.
    pub fn new_dir(mode: u32, uid: u32, gid: u32, mtime: (i64, u32)) -> Node {
        Node {
            uid,
            gid,
            mtime,
            ..Node::new(Kind::Dir, mode)
        }
    }
}

/// Why a path could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// A symlink loop or chain longer than the kernel allows.
    #[error("{path}: too many levels of symbolic links")]
    TooManyLinks {
        /// The path being resolved.
        path: String,
    },
    /// A component in the middle of the path is not a directory.
    #[error("{path}: {component} is not a directory")]
    NotADirectory {
        /// The path being resolved.
        path: String,
        /// The offending component, resolved.
        component: String,
    },
}

/// The filesystem view. Keys are root-relative paths without a leading `/` (`""` is the root).
#[derive(Clone, Debug)]
pub struct Rootfs {
    nodes: BTreeMap<String, Node>,
}

impl Default for Rootfs {
    fn default() -> Self {
        Rootfs::new()
    }
}

/// Cleans a path lexically into root-relative form: no leading `/`, no `.`, `..` resolved
/// without climbing above the root, no trailing `/`.
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

impl Rootfs {
    /// An empty filesystem: just `/` (0755, root-owned).
    pub fn new() -> Rootfs {
        let mut nodes = BTreeMap::new();
        nodes.insert(String::new(), Node::new_dir(0o755, 0, 0, (0, 0)));
        Rootfs { nodes }
    }

    /// Number of paths, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: the root always exists.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The node at an already resolved, cleaned path.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// All paths under `dir` (not `dir` itself), in order.
    pub fn children<'a>(
        &'a self,
        dir: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Node)> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.nodes
            .range(prefix.clone()..)
            .skip_while(move |(k, _)| k.is_empty() && dir.is_empty())
            .take_while(move |(k, _)| k.starts_with(&prefix))
    }

    /// Applies one entry of layer `layer` as a container runtime would when unpacking it:
    /// whiteouts delete, opaque markers clear a directory's lower content, anything else
    /// replaces what was there. `path` is the entry name from the tar.
    pub fn apply(&mut self, layer: usize, path: &str, node: Node) {
        let path = clean(path);
        let (dir, name) = match path.rfind('/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => ("", path.as_str()),
        };
        if name == ".wh..wh..opq" {
            let dir = dir.to_string();
            let doomed: Vec<String> = self
                .children(&dir)
                .filter(|(_, n)| n.layer < layer)
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                self.nodes.remove(&k);
            }
            return;
        }
        if let Some(victim) = name.strip_prefix(".wh.") {
            let target = join(dir, victim);
            self.remove_tree(&target);
            return;
        }
        if path.is_empty() {
            // The root entry only updates metadata.
            if node.kind == Kind::Dir {
                self.nodes.insert(path, Node { layer, ..node });
            }
            return;
        }
        // Replacing a directory by a non-directory removes what was below it.
        if node.kind != Kind::Dir {
            self.remove_tree(&path);
        }
        self.ensure_parents(&path, layer);
        self.nodes.insert(path, Node { layer, ..node });
    }

    /// Inserts or replaces a path created by this build (parents must already exist).
    pub fn insert(&mut self, path: &str, node: Node) {
        let path = clean(path);
        if node.kind != Kind::Dir {
            self.remove_tree(&path);
        }
        self.nodes.insert(path, node);
    }

    fn remove_tree(&mut self, path: &str) {
        if path.is_empty() {
            return;
        }
        self.nodes.remove(path);
        let below: Vec<String> = self.children(path).map(|(k, _)| k.clone()).collect();
        for k in below {
            self.nodes.remove(&k);
        }
    }

    /// Tars may omit parent directories; unpackers create them 0755 root-owned.
    fn ensure_parents(&mut self, path: &str, layer: usize) {
        let mut p = parent_of(path);
        let mut missing = Vec::new();
        while !p.is_empty() && !matches!(self.nodes.get(p), Some(n) if n.kind == Kind::Dir) {
            missing.push(p.to_string());
            p = parent_of(p);
        }
        for m in missing {
            self.nodes.insert(
                m,
                Node {
                    layer,
                    ..Node::new_dir(0o755, 0, 0, (0, 0))
                },
            );
        }
    }

    /// Resolves `path` (absolute or root-relative) to a cleaned root-relative path, following
    /// symlinks in every component, and in the last one when `follow_last` is set. Symlinks
    /// are resolved inside the root: `/x` means the image's `/x`, and `..` stops at the root.
    /// Components that do not exist yet are kept as they are.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<String, ResolveError> {
        resolve_in_root(path, follow_last, |p| self.nodes.get(p).map(|n| &n.kind))
    }

    /// True when `path` resolves to an existing directory.
    pub fn is_dir(&self, path: &str) -> bool {
        self.resolve(path, true)
            .ok()
            .and_then(|p| self.nodes.get(&p).map(|n| n.kind == Kind::Dir))
            .unwrap_or(false)
    }
}

/// Resolves `path` inside a root whose entries `kind_of` describes (see [`Rootfs::resolve`]).
pub fn resolve_in_root<'a>(
    path: &str,
    follow_last: bool,
    kind_of: impl Fn(&str) -> Option<&'a Kind>,
) -> Result<String, ResolveError> {
    let mut pending: Vec<String> = clean(path)
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .rev()
        .collect();
    let mut done = String::new();
    let mut links = 0;
    while let Some(seg) = pending.pop() {
        if seg == ".." {
            done = parent_of(&done).to_string();
            continue;
        }
        let candidate = join(&done, &seg);
        let is_last = pending.is_empty();
        match kind_of(&candidate) {
            Some(Kind::Symlink(target)) if !is_last || follow_last => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ResolveError::TooManyLinks {
                        path: path.to_string(),
                    });
                }
                if target.starts_with('/') {
                    done.clear();
                }
                for part in target
                    .split('/')
                    .filter(|s| !s.is_empty() && *s != ".")
                    .rev()
                {
                    pending.push(part.to_string());
                }
            }
            Some(Kind::Dir) | None => done = candidate,
            Some(_) if is_last => done = candidate,
            Some(_) => {
                return Err(ResolveError::NotADirectory {
                    path: path.to_string(),
                    component: format!("/{candidate}"),
                })
            }
        }
    }
    Ok(done)
}

/// The parent of a root-relative path (`""` for top-level names).
pub fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// Joins a root-relative directory and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else if name.is_empty() {
        dir.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(layer: usize) -> Node {
        Node {
            size: 1,
            layer,
            ..Node::new(Kind::File, 0o644)
        }
    }
    fn dir() -> Node {
        Node::new_dir(0o755, 0, 0, (0, 0))
    }
    fn link(t: &str) -> Node {
        Node::new(Kind::Symlink(t.into()), 0o777)
    }

    fn debianish() -> Rootfs {
        let mut fs = Rootfs::new();
        fs.apply(0, "usr/", dir());
        fs.apply(0, "usr/bin/", dir());
        fs.apply(0, "usr/bin/sh", file(0));
        fs.apply(0, "bin", link("usr/bin"));
        fs.apply(0, "etc/", dir());
        fs.apply(0, "etc/passwd", file(0));
        fs.apply(0, "var/run", link("/run"));
        fs
    }

    #[test]
    fn symlinked_parent_resolves_inside_the_root() {
        let fs = debianish();
        assert_eq!(fs.resolve("/bin/foo", false).unwrap(), "usr/bin/foo");
        assert_eq!(fs.resolve("bin", true).unwrap(), "usr/bin");
        assert_eq!(fs.resolve("bin", false).unwrap(), "bin");
        assert_eq!(fs.resolve("/var/run/x.pid", false).unwrap(), "run/x.pid");
        assert!(fs.is_dir("/bin"));
        assert!(!fs.is_dir("/etc/passwd"));
    }

    #[test]
    fn hostile_links_stay_inside() {
        let mut fs = Rootfs::new();
        fs.apply(0, "etc", link("/"));
        fs.apply(0, "up", link("../../../../.."));
        fs.apply(0, "loop", link("loop2"));
        fs.apply(0, "loop2", link("loop"));
        assert_eq!(fs.resolve("/etc/passwd", false).unwrap(), "passwd");
        assert_eq!(fs.resolve("/up/etc/shadow", false).unwrap(), "shadow");
        assert_eq!(fs.resolve("/../../x", false).unwrap(), "x");
        assert!(matches!(
            fs.resolve("/loop/x", false),
            Err(ResolveError::TooManyLinks { .. })
        ));
    }

    #[test]
    fn file_in_the_middle_is_not_a_directory() {
        let fs = debianish();
        let e = fs.resolve("/etc/passwd/x", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/passwd/x: /etc/passwd is not a directory"
        );
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let mut fs = debianish();
        fs.apply(0, "opt/a/1", file(0));
        fs.apply(0, "opt/a/2", file(0));
        fs.apply(1, "etc/.wh.passwd", file(1));
        assert!(fs.get("etc/passwd").is_none());
        fs.apply(1, "opt/a/", dir());
        fs.apply(1, "opt/a/new", file(1));
        fs.apply(1, "opt/a/.wh..wh..opq", file(1));
        let kids: Vec<&String> = fs.children("opt/a").map(|(k, _)| k).collect();
        assert_eq!(
            kids,
            vec!["opt/a/new"],
            "opaque keeps this layer's entries only"
        );
        fs.apply(2, ".wh.opt", file(2));
        assert!(fs.get("opt").is_none() && fs.get("opt/a/new").is_none());
        assert!(fs.get("optx").is_none());
    }

    #[test]
    fn implied_parents_and_replacement() {
        let mut fs = Rootfs::new();
        fs.apply(0, "a/b/c", file(0));
        assert_eq!(fs.get("a/b").unwrap().kind, Kind::Dir);
        fs.apply(1, "a", file(1));
        assert!(
            fs.get("a/b").is_none(),
            "a file replacing a dir removes its content"
        );
        assert_eq!(fs.len(), 2);
    }

    #[test]
    fn clean_paths() {
        assert_eq!(clean("/a//b/./c/"), "a/b/c");
        assert_eq!(clean("../../x"), "x");
        assert_eq!(clean("/"), "");
    }
}
