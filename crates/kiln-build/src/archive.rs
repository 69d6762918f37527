//! ADD of a local tar archive: where each entry lands, and the entries that must be refused.
//!
//! An archive is extracted into the destination directory. Entries may not climb out of it
//! (`../x`), may not be written through a symlink the same archive planted (`link -> /etc`
//! then `link/passwd`), may not hard-link to anything outside the archive, and may not use the
//! reserved whiteout prefix `.wh.` (it would delete files when the layer is applied).

use crate::copy::{Content, Planned, SrcNode};
use crate::rootfs::{self, join, parent_of, Kind, Rootfs};
use std::collections::{BTreeMap, BTreeSet};

/// Why an archive cannot be added.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    /// `../` leads out of the destination.
    #[error("archive entry {0:?} would land outside the destination")]
    Escapes(String),
    /// A path goes through a symlink the archive itself created.
    #[error("archive entry {0:?} goes through the symlink {1:?} created by the same archive")]
    ThroughSymlink(String, String),
    /// A hard link to something not in the archive.
    #[error("archive entry {0:?} is a hard link to {1:?}, which is not in the archive")]
    LinkOutside(String, String),
    /// A `.wh.` name.
    #[error("archive entry {0:?} uses the reserved whiteout prefix .wh.")]
    Whiteout(String),
    /// Resolving the destination inside the image failed.
    #[error(transparent)]
    Resolve(#[from] rootfs::ResolveError),
}

/// Normalizes an archive path relative to the destination: leading `/` and `./` dropped, `.`
/// segments skipped, `..` allowed only while it stays inside.
fn relative(raw: &str) -> Result<String, ArchiveError> {
    let mut parts: Vec<&str> = Vec::new();
    for seg in raw.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(ArchiveError::Escapes(raw.to_string()));
                }
            }
            s => parts.push(s),
        }
    }
    Ok(parts.join("/"))
}

/// Plans the extraction of `entries` (archive order) into the directory `dest` (absolute,
/// resolved through the image's symlinks). Created parents are 0755 root-owned with mtime
/// `now`. Entries keep the archive's owner, mode and mtime.
pub fn plan_archive(
    entries: Vec<(String, SrcNode)>,
    image: &Rootfs,
    dest: &str,
    now: (i64, u32),
) -> Result<Vec<Planned>, ArchiveError> {
    let dest = image.resolve(dest, true)?;
    let mut links: BTreeSet<String> = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<Planned> = Vec::new();
    for (raw, mut node) in entries {
        let rel = relative(&raw)?;
        if rel.is_empty() {
            continue; // the archive's `./` itself
        }
        let name = rel.rsplit('/').next().unwrap_or_default();
        if name.starts_with(".wh.") {
            return Err(ArchiveError::Whiteout(raw));
        }
        let mut prefix = parent_of(&rel);
        while !prefix.is_empty() {
            if links.contains(prefix) {
                return Err(ArchiveError::ThroughSymlink(raw, prefix.to_string()));
            }
            prefix = parent_of(prefix);
        }
        if let Kind::Hardlink(target) = &node.kind {
            let t = relative(target)
                .map_err(|_| ArchiveError::LinkOutside(raw.clone(), target.clone()))?;
            if !seen.contains_key(&t) || t == rel {
                return Err(ArchiveError::LinkOutside(raw, target.clone()));
            }
            node.kind = Kind::Hardlink(join(&dest, &t));
            node.content = Content::None;
        }
        if matches!(node.kind, Kind::Symlink(_)) {
            links.insert(rel.clone());
        } else {
            links.remove(&rel);
        }
        let path = join(&dest, &rel);
        match seen.get(&rel) {
            // A later entry for the same name replaces the earlier one.
            Some(&i) => out[i] = Planned { path, node },
            None => {
                seen.insert(rel, out.len());
                out.push(Planned { path, node });
            }
        }
    }
    let mut parents = Vec::new();
    let planned: BTreeSet<&str> = out.iter().map(|p| p.path.as_str()).collect();
    let mut missing = BTreeSet::new();
    for p in &out {
        let mut d = parent_of(&p.path);
        while !d.is_empty() && !planned.contains(d) && image.get(d).is_none() {
            missing.insert(d.to_string());
            d = parent_of(d);
        }
    }
    for m in missing {
        parents.push(Planned {
            path: m,
            node: SrcNode::dir(0o755, 0, 0, now),
        });
    }
    parents.extend(out);
    Ok(sorted_with_links_first(parents))
}

/// Sorts entries by path, as every kiln layer is. A hard link must come after the file it
/// names, so within each group of names for one file the first in sort order becomes the file
/// (taking the content) and the others link to it.
fn sorted_with_links_first(mut entries: Vec<Planned>) -> Vec<Planned> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let index: BTreeMap<String, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, p)| (p.path.clone(), i))
        .collect();
    // Group every hard link with the file it names.
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in entries.iter().enumerate() {
        if let Kind::Hardlink(target) = &p.node.kind {
            if let Some(&t) = index.get(target) {
                groups.entry(t).or_default().push(i);
            }
        }
    }
    for (file, links) in groups {
        let first = links
            .iter()
            .copied()
            .chain(std::iter::once(file))
            .min()
            .unwrap_or(file);
        if first == file {
            continue;
        }
        let first_path = entries[first].path.clone();
        let real = entries[file].node.clone();
        for &i in links.iter().chain(std::iter::once(&file)) {
            if i == first {
                entries[i].node = real.clone();
            } else {
                entries[i].node.kind = Kind::Hardlink(first_path.clone());
                entries[i].node.content = Content::None;
                entries[i].node.size = 0;
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(kind: Kind) -> SrcNode {
        SrcNode {
            kind,
            mode: 0o644,
            uid: 1,
            gid: 2,
            size: 0,
            mtime: (5, 0),
            xattrs: BTreeMap::new(),
            content: Content::None,
            link_key: None,
        }
    }

    fn e(path: &str, kind: Kind) -> (String, SrcNode) {
        (path.to_string(), node(kind))
    }

    #[test]
    fn extracts_under_the_destination() {
        let fs = Rootfs::new();
        let plan = plan_archive(
            vec![
                e("./", Kind::Dir),
                e("./bin/", Kind::Dir),
                e("./bin/sh", Kind::File),
                e("bin/ls", Kind::Hardlink("./bin/sh".into())),
            ],
            &fs,
            "/opt/tool",
            (9, 0),
        )
        .unwrap();
        let paths: Vec<&str> = plan.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "opt",
                "opt/tool",
                "opt/tool/bin",
                "opt/tool/bin/ls",
                "opt/tool/bin/sh"
            ]
        );
        // Sorted, `ls` comes first, so it carries the content and `sh` links to it.
        assert_eq!(plan[3].node.kind, Kind::File);
        assert_eq!(plan[4].node.kind, Kind::Hardlink("opt/tool/bin/ls".into()));
        assert_eq!(
            (plan[3].node.uid, plan[3].node.gid),
            (1, 2),
            "archive ownership is kept"
        );
    }

    #[test]
    fn hostile_archives_are_refused() {
        let fs = Rootfs::new();
        let err = |entries| {
            plan_archive(entries, &fs, "/d", (0, 0))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(vec![e("../escape", Kind::File)]),
            "archive entry \"../escape\" would land outside the destination"
        );
        assert_eq!(
            err(vec![e("a/../../x", Kind::File)]),
            "archive entry \"a/../../x\" would land outside the destination"
        );
        assert_eq!(
            err(vec![e("lnk", Kind::Symlink("/etc".into())), e("lnk/passwd", Kind::File)]),
            "archive entry \"lnk/passwd\" goes through the symlink \"lnk\" created by the same archive"
        );
        assert_eq!(
            err(vec![e("h", Kind::Hardlink("/etc/shadow".into()))]),
            "archive entry \"h\" is a hard link to \"/etc/shadow\", which is not in the archive"
        );
        assert_eq!(
            err(vec![e("h", Kind::Hardlink("../../etc/shadow".into()))]),
            "archive entry \"h\" is a hard link to \"../../etc/shadow\", which is not in the archive"
        );
        assert_eq!(
            err(vec![e("etc/.wh.passwd", Kind::File)]),
            "archive entry \"etc/.wh.passwd\" uses the reserved whiteout prefix .wh."
        );
        // Absolute names are taken relative to the destination, as tar does.
        let plan = plan_archive(vec![e("/abs", Kind::File)], &fs, "/d", (0, 0)).unwrap();
        assert_eq!(plan.last().unwrap().path, "d/abs");
        // A symlink replaced by a directory may be written through.
        let plan = plan_archive(
            vec![
                e("x", Kind::Symlink("/".into())),
                e("x/", Kind::Dir),
                e("x/f", Kind::File),
            ],
            &fs,
            "/d",
            (0, 0),
        )
        .unwrap();
        assert_eq!(plan.last().unwrap().path, "d/x/f");
    }

    #[test]
    fn destination_under_an_image_symlink_resolves_inside_the_image() {
        let mut fs = Rootfs::new();
        let link = rootfs::Node::new(Kind::Symlink("/usr/local".into()), 0o777);
        fs.apply(0, "usr/local/", rootfs::Node::new_dir(0o755, 0, 0, (0, 0)));
        fs.apply(0, "opt", link);
        let plan = plan_archive(vec![e("f", Kind::File)], &fs, "/opt", (0, 0)).unwrap();
        assert_eq!(plan.last().unwrap().path, "usr/local/f");
    }
}
