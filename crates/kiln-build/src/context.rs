//! The build context as a COPY/ADD source tree.

use crate::copy::{Content, SourceTree, SrcNode};
use crate::rootfs::Kind;
use kiln_context::ignore::Matcher;
use kiln_context::walk::{self, ContextError, EntryKind};
use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Reads the context below `root`, minus what `matcher` excludes. File contents are not read;
/// entries point at their host paths. Sockets are left out, as docker does.
pub fn context_tree(root: &Path, matcher: &Matcher) -> Result<SourceTree, ContextError> {
    let root_meta = std::fs::metadata(root).map_err(|source| ContextError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let mut tree = SourceTree::new(node_for(root, &root_meta, Kind::Dir));
    for entry in walk::walk(root, matcher)? {
        let md = &entry.metadata;
        let ft = md.file_type();
        let kind = match entry.kind {
            EntryKind::Dir => Kind::Dir,
            EntryKind::File => Kind::File,
            EntryKind::Symlink => {
                let target =
                    std::fs::read_link(&entry.path).map_err(|source| ContextError::Io {
                        path: entry.path.clone(),
                        source,
                    })?;
                Kind::Symlink(target.to_string_lossy().into_owned())
            }
            EntryKind::Other if ft.is_fifo() => Kind::Fifo,
            EntryKind::Other if ft.is_char_device() => {
                Kind::Char(major(md.rdev()), minor(md.rdev()))
            }
            EntryKind::Other if ft.is_block_device() => {
                Kind::Block(major(md.rdev()), minor(md.rdev()))
            }
            EntryKind::Other => continue,
        };
        tree.insert(&entry.rel_path, node_for(&entry.path, md, kind));
    }
    Ok(tree)
}

fn node_for(path: &Path, md: &Metadata, kind: Kind) -> SrcNode {
    let is_file = kind == Kind::File;
    SrcNode {
        content: if is_file {
            Content::Path(path.to_path_buf())
        } else {
            Content::None
        },
        size: if is_file { md.len() } else { 0 },
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: (md.mtime(), md.mtime_nsec().clamp(0, 999_999_999) as u32),
        xattrs: read_xattrs(path),
        link_key: (is_file && md.nlink() > 1).then(|| (md.dev(), md.ino())),
        kind,
    }
}

/// Extended attributes worth carrying into an image: `user.*` and file capabilities. SELinux
/// labels and overlay bookkeeping describe the host, not the file.
fn read_xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(names) = xattr::list(path) else {
        return out;
    };
    for name in names {
        let name = name.to_string_lossy().into_owned();
        let keep = (name.starts_with("user.") && !name.starts_with("user.overlay."))
            || name == "security.capability";
        if keep {
            if let Ok(Some(v)) = xattr::get(path, &name) {
                out.insert(name, v);
            }
        }
    }
    out
}

fn major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32
}

fn minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_links_hardlinks_and_xattrs_without_following_links() {
        let dir = std::env::temp_dir().join(format!("kiln-ctx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a"), b"abc").unwrap();
        std::fs::hard_link(dir.join("sub/a"), dir.join("b")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("pw")).unwrap();
        std::fs::write(dir.join("ignored.log"), b"x").unwrap();
        let has_xattr = xattr::set(dir.join("sub/a"), "user.kiln", b"v").is_ok();
        let m = Matcher::new(&["*.log"]).unwrap();
        let t = context_tree(&dir, &m).unwrap();
        assert!(t.get("ignored.log").is_none());
        assert_eq!(
            t.get("pw").unwrap().kind,
            Kind::Symlink("/etc/passwd".into())
        );
        assert_eq!(t.get("pw").unwrap().content, Content::None);
        let a = t.get("sub/a").unwrap();
        assert_eq!(
            (a.size, a.content.clone()),
            (3, Content::Path(dir.join("sub/a")))
        );
        assert!(a.link_key.is_some());
        assert_eq!(a.link_key, t.get("b").unwrap().link_key);
        if has_xattr {
            assert_eq!(
                a.xattrs.get("user.kiln").map(Vec::as_slice),
                Some(&b"v"[..])
            );
        }
        assert_eq!(t.get("sub").unwrap().kind, Kind::Dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
