//! Reading what kiln stored: an image's layers and its final file tree, through kiln-oci.

use kiln_oci::digest::Digest;
use kiln_oci::layer::{open_layer, EntryKind, TarEntry};
use kiln_oci::store::Store;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// One path of an image's final filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    /// The content, for regular files.
    pub content: Vec<u8>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// The manifest digest an image name resolves to in the store at `root`.
pub fn manifest_of(root: &Path, name: &str) -> Digest {
    let store = Store::open(root).expect("open store");
    let full = if name.contains('/') {
        name.to_string()
    } else {
        format!("docker.io/library/{name}")
    };
    let full = if full.rsplit('/').next().unwrap().contains(':') {
        full
    } else {
        format!("{full}:latest")
    };
    let desc = store
        .resolve(&full)
        .expect("resolve")
        .unwrap_or_else(|| panic!("{full} not in the store"));
    Digest::from_oci(desc.digest()).unwrap()
}

/// Every layer of an image, as lists of (entry, content).
pub fn layers(root: &Path, name: &str) -> Vec<Vec<(TarEntry, Vec<u8>)>> {
    let store = Store::open(root).expect("open store");
    let manifest = kiln_oci::image::read_manifest(&store, &manifest_of(root, name))
        .unwrap()
        .value;
    manifest
        .layers()
        .iter()
        .map(|l| {
            let d = Digest::from_oci(l.digest()).unwrap();
            let mut r = open_layer(store.open_blob(&d).unwrap()).unwrap();
            let mut out = Vec::new();
            while let Some(e) = r.next_entry().unwrap() {
                let mut content = Vec::new();
                r.read_to_end(&mut content).unwrap();
                out.push((e, content));
            }
            out
        })
        .collect()
}

/// The image's filesystem after applying every layer (whiteouts included), keyed by path
/// without a leading `/` or trailing `/`.
pub fn tree(root: &Path, name: &str) -> BTreeMap<String, FileInfo> {
    let mut fs: BTreeMap<String, FileInfo> = BTreeMap::new();
    for layer in layers(root, name) {
        let mut created = std::collections::BTreeSet::new();
        for (e, content) in layer {
            let path = e.path.to_string_lossy().trim_end_matches('/').to_string();
            let (dir, base) = match path.rsplit_once('/') {
                Some((d, b)) => (d.to_string(), b.to_string()),
                None => (String::new(), path.clone()),
            };
            if base == ".wh..wh..opq" {
                let prefix = format!("{dir}/");
                fs.retain(|k, _| !k.starts_with(&prefix) || created.contains(k));
                continue;
            }
            if let Some(victim) = base.strip_prefix(".wh.") {
                let target = if dir.is_empty() {
                    victim.to_string()
                } else {
                    format!("{dir}/{victim}")
                };
                let prefix = format!("{target}/");
                fs.retain(|k, _| k != &target && !k.starts_with(&prefix));
                continue;
            }
            created.insert(path.clone());
            fs.insert(
                path,
                FileInfo {
                    kind: e.kind.clone(),
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    size: e.size,
                    mtime: e.mtime,
                    content,
                    xattrs: e.xattrs.clone(),
                },
            );
        }
    }
    fs
}

/// Checks every blob in the store against its digest; returns the bad ones.
pub fn corrupt_blobs(root: &Path) -> Vec<String> {
    let store = Store::open(root).expect("open store");
    store
        .blobs()
        .unwrap()
        .filter(|d| !store.verify_blob(d).unwrap_or(false))
        .map(|d| d.to_string())
        .collect()
}
