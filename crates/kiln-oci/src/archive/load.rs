//! Reading docker and OCI archives into the store.
//!
//! The input is a stream (often stdin), read once. Each regular file is dealt with as it
//! arrives: JSON-sized metadata (`manifest.json`, `index.json`, `*.json`, legacy `json` and
//! `VERSION` files) is kept in memory within fixed limits, everything else is hashed into a
//! [`BlobWriter`](crate::BlobWriter) and committed under its digest. A partial blob is never
//! visible, and a file named `blobs/sha256/<hex>` is only committed if it hashes to `<hex>`.
//! Only when the stream has ended is the metadata read, and the paths it names are looked up
//! among the archive's own entries: nothing here opens a path the archive chose.
//!
//! If loading fails part-way, blobs already committed stay in the store unreferenced (each
//! complete and verified) until `gc`; no tag is set unless every image loaded.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndex, ANNOTATION_REF_NAME};
use serde::Deserialize;

use super::export::check_layout_version;
use super::names::normalize_name;
use super::{
    decompress_to_store, parse_digest, ArchiveError, LoadedImage, Result,
    ANNOTATION_CONTAINERD_NAME,
};
use crate::digest::Digest;
use crate::image::{self, media_type, ManifestFormat};
use crate::json;
use crate::layer::{open_layer, EntryKind, LayerError};
use crate::store::{Store, StoreError};

/// The largest JSON file accepted (manifest.json, index.json, a config). Real ones are KiBs;
/// configs with very long histories reach a few MiB.
pub(super) const MAX_JSON: u64 = 16 << 20;
/// The most metadata kept in memory for one archive: small files, entry names and link targets
/// together.
const MAX_METADATA: u64 = 64 << 20;
/// Symlinks followed in a row before giving up (docker's loader allows 255; real archives
/// need one).
const MAX_LINKS: usize = 16;
/// Image indexes nested deeper than this are refused.
const MAX_INDEX_DEPTH: usize = 4;
const COPY_BUFFER: usize = 256 * 1024;

/// Reads a docker archive or OCI archive (optionally compressed as a whole) from `reader` into
/// the store, then tags every image's names. See the [module docs](super) for the layouts
/// understood.
///
/// docker archives are converted: the config is stored byte for byte (so the image ID stays),
/// each layer is stored uncompressed and must hash to the config's diffID, and a new OCI manifest
/// is written over them. OCI archives are kept as they are: every blob is checked against its
/// digest and manifests are stored byte for byte.
///
/// Names come from `RepoTags` (docker) or from the `io.containerd.image.name` annotation, else
/// an `org.opencontainers.image.ref.name` that is a full name (OCI); a bare tag such as `latest`
/// names no repository and is ignored. All names are returned normalised
/// (`app:1` → `docker.io/library/app:1`).
pub fn load_archive(store: &Store, reader: impl Read) -> Result<Vec<LoadedImage>> {
    // Shared: a concurrent gc must not collect blobs committed here before they are tagged.
    let _lock = store.lock_shared()?;
    let archive = Archive::read(store, reader)?;
    let has_docker = archive.entries.contains_key("manifest.json");
    let images = if archive.entries.contains_key("index.json")
        && archive.entries.contains_key("oci-layout")
    {
        match archive.load_oci(store) {
            // docker ≥ 25 saves a multi-platform image's whole index but only the platform it
            // has; its manifest.json still describes a complete image.
            Err(ArchiveError::MissingBlob { .. }) if has_docker => archive.load_docker(store)?,
            other => other?,
        }
    } else if has_docker {
        archive.load_docker(store)?
    } else {
        return Err(ArchiveError::UnknownFormat(
            "no manifest.json (docker archive) or oci-layout and index.json (OCI archive)".into(),
        ));
    };
    for img in &images {
        for name in &img.names {
            store.set_tag(name, &img.manifest)?;
        }
    }
    Ok(images)
}

/// One archive entry, as kept after the stream has gone by.
enum Node {
    /// A small (metadata) file's content.
    Memory(Vec<u8>),
    /// A file committed to the store.
    Blob(Digest),
    /// A symlink to this target, resolved relative to the link's directory.
    Symlink(Vec<u8>),
    /// A hard link to this archive path.
    Hardlink(Vec<u8>),
}

/// A regular file found by [`Archive::lookup`], links followed.
enum Found<'a> {
    Memory(&'a [u8]),
    Blob(&'a Digest),
}

/// The archive's files by normalised path (`a/b`, no leading `./`).
struct Archive {
    entries: HashMap<String, Node>,
}

impl Archive {
    fn read(store: &Store, reader: impl Read) -> Result<Archive> {
        let mut r = open_layer(reader).map_err(ArchiveError::Read)?;
        let mut entries = HashMap::new();
        let mut metadata = 0u64;
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let entry = match r.next_entry() {
                Ok(Some(e)) => e,
                Ok(None) => break,
                // Sparse files and the like are nothing an image archive needs; skip them.
                Err(LayerError::UnsupportedEntry { .. }) => continue,
                Err(e) => return Err(ArchiveError::Read(e)),
            };
            let Some(name) = entry_name(entry.path.as_os_str().as_bytes())? else {
                continue;
            };
            // Names and link targets are held until the end too; count them against the same
            // budget so a flood of entries cannot exhaust memory either.
            let held = match &entry.kind {
                EntryKind::File => name.len(),
                EntryKind::Symlink(t) | EntryKind::Hardlink(t) => name.len() + t.as_os_str().len(),
                _ => 0,
            };
            metadata += held as u64;
            if metadata > MAX_METADATA {
                return Err(ArchiveError::TooMuchMetadata {
                    entry: name,
                    limit: MAX_METADATA,
                });
            }
            let node = match entry.kind {
                EntryKind::File if is_metadata(&name) => {
                    if entry.size > MAX_JSON {
                        return Err(ArchiveError::JsonTooLarge {
                            entry: name,
                            size: entry.size,
                            limit: MAX_JSON,
                        });
                    }
                    metadata += entry.size;
                    if metadata > MAX_METADATA {
                        return Err(ArchiveError::TooMuchMetadata {
                            entry: name,
                            limit: MAX_METADATA,
                        });
                    }
                    let mut bytes = Vec::with_capacity(entry.size as usize);
                    (&mut r)
                        .take(entry.size)
                        .read_to_end(&mut bytes)
                        .map_err(|source| read_entry(&name, source))?;
                    if bytes.len() as u64 != entry.size {
                        return Err(read_entry(&name, io::ErrorKind::UnexpectedEof.into()));
                    }
                    Node::Memory(bytes)
                }
                EntryKind::File => Node::Blob(spool(store, &mut r, &name, &mut buf)?),
                EntryKind::Symlink(target) => Node::Symlink(target.as_os_str().as_bytes().to_vec()),
                EntryKind::Hardlink(target) => {
                    Node::Hardlink(target.as_os_str().as_bytes().to_vec())
                }
                _ => continue,
            };
            entries.insert(name, node);
        }
        Ok(Archive { entries })
    }

    /// The file at `path` (following links within the archive). `file` names the JSON that
    /// asked, for errors.
    fn lookup(&self, file: &str, path: &str) -> Result<Found<'_>> {
        let mut p = ref_path(file, path)?;
        for _ in 0..MAX_LINKS {
            let missing = || ArchiveError::MissingEntry {
                file: file.to_owned(),
                path: path.to_owned(),
            };
            match self.entries.get(&p).ok_or_else(missing)? {
                Node::Symlink(target) => p = resolve_symlink(&p, target)?,
                Node::Hardlink(target) => {
                    p = resolve_symlink("", target)?;
                }
                Node::Memory(b) => return Ok(Found::Memory(b)),
                Node::Blob(d) => return Ok(Found::Blob(d)),
            }
        }
        Err(ArchiveError::UnsafePath {
            file: file.to_owned(),
            path: path.to_owned(),
            reason: "too many levels of links",
        })
    }

    /// The bytes of a small JSON file; `file` is the JSON that named it.
    fn read_json(&self, store: &Store, file: &str, path: &str) -> Result<Vec<u8>> {
        match self.lookup(file, path)? {
            Found::Memory(b) => Ok(b.to_vec()),
            Found::Blob(d) => read_blob_json(store, d, path),
        }
    }

    /// Where a file ended up in the store, committing an in-memory file if needed.
    fn blob_of(&self, store: &Store, file: &str, path: &str) -> Result<Digest> {
        match self.lookup(file, path)? {
            Found::Memory(b) => Ok(store.put_blob(b)?.0),
            Found::Blob(d) => Ok(d.clone()),
        }
    }

    fn load_docker(&self, store: &Store) -> Result<Vec<LoadedImage>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            #[serde(default)]
            layers: Vec<String>,
        }
        const FILE: &str = "manifest.json";
        let bytes = self.read_json(store, FILE, FILE)?;
        let entries: Vec<Entry> =
            serde_json::from_slice(&bytes).map_err(|source| ArchiveError::Json {
                file: FILE.into(),
                source,
            })?;
        if entries.is_empty() {
            return Err(ArchiveError::UnknownFormat(
                "manifest.json lists no images".into(),
            ));
        }
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let names = e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| normalize_name(t))
                .collect::<Result<Vec<_>>>()?;
            let manifest = self.load_docker_image(store, &e.config, &e.layers)?;
            out.push(LoadedImage { manifest, names });
        }
        Ok(out)
    }

    fn load_docker_image(
        &self,
        store: &Store,
        config_path: &str,
        layers: &[String],
    ) -> Result<Descriptor> {
        const FILE: &str = "manifest.json";
        let config_bytes = self.read_json(store, FILE, config_path)?;
        let config = image::parse_config(config_bytes).map_err(|e| match e {
            image::ImageError::Json { source, .. } => ArchiveError::Json {
                file: config_path.to_owned(),
                source,
            },
            other => other.into(),
        })?;
        let diff_ids = &config.value.rootfs.diff_ids;
        if diff_ids.len() != layers.len() {
            return Err(ArchiveError::LayerCount {
                image: config_path.to_owned(),
                layers: layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let mut descriptors = Vec::with_capacity(layers.len());
        for (i, (path, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
            let blob = self.blob_of(store, FILE, path)?;
            let size = if blob == *diff_id {
                store.blob_size(&blob)?
            } else {
                // docker ≥ 25 and other writers may store compressed layer files.
                decompress_to_store(store, &blob, diff_id).map_err(|e| match e {
                    StoreError::DigestMismatch { expected, actual } => {
                        ArchiveError::DiffIdMismatch {
                            layer: path.clone(),
                            image: config_path.to_owned(),
                            index: i,
                            expected,
                            actual,
                        }
                    }
                    other => other.into(),
                })?
            };
            if blob != *diff_id {
                remember_compressed(store, &blob, diff_id)?;
            }
            descriptors.push(image::descriptor(media_type::OCI_LAYER, diff_id, size));
        }
        let (config_digest, config_size) = store.put_blob(&config.bytes)?;
        let config_desc = image::descriptor(media_type::OCI_CONFIG, &config_digest, config_size);
        let manifest = image::build_manifest(config_desc, &descriptors, None, ManifestFormat::Oci)?;
        let bytes = image::manifest_to_vec(&manifest)?;
        let (digest, size) = store.put_blob(&bytes)?;
        Ok(image::descriptor(media_type::OCI_MANIFEST, &digest, size))
    }

    fn load_oci(&self, store: &Store) -> Result<Vec<LoadedImage>> {
        let layout = self.read_json(store, "oci-layout", "oci-layout")?;
        check_layout_version("oci-layout", &layout)?;
        let bytes = self.read_json(store, "index.json", "index.json")?;
        let index: ImageIndex =
            json::oci_from_slice(&bytes).map_err(|source| ArchiveError::Json {
                file: "index.json".into(),
                source,
            })?;
        let mut out: Vec<LoadedImage> = Vec::new();
        for desc in index.manifests() {
            self.check_tree(store, desc, "index.json", 0)?;
            let names = names_from_annotations(desc)?;
            let digest = parse_digest(|| "index.json".into(), desc.digest())?;
            let mut clean = image::descriptor(desc.media_type().as_ref(), &digest, desc.size());
            clean.set_platform(desc.platform().clone());
            // index.json has one entry per name; return one image per manifest.
            match out
                .iter_mut()
                .find(|l| l.manifest.digest() == clean.digest())
            {
                Some(seen) => {
                    for n in names {
                        if !seen.names.contains(&n) {
                            seen.names.push(n);
                        }
                    }
                }
                None => out.push(LoadedImage {
                    manifest: clean,
                    names,
                }),
            }
        }
        if out.is_empty() {
            return Err(ArchiveError::UnknownFormat(
                "index.json lists no images".into(),
            ));
        }
        Ok(out)
    }

    /// Makes sure blob `desc` and everything it references are in the store with the right
    /// digests and sizes.
    fn check_tree(
        &self,
        store: &Store,
        desc: &Descriptor,
        needed_by: &str,
        depth: usize,
    ) -> Result<()> {
        let digest = parse_digest(|| needed_by.to_owned(), desc.digest())?;
        self.ensure_blob(store, &digest, desc.size(), needed_by)?;
        let mt = desc.media_type().to_string();
        let what = format!("{mt} {digest}");
        if media_type::is_index(&mt) {
            if depth >= MAX_INDEX_DEPTH {
                return Err(ArchiveError::UnknownFormat(format!(
                    "{what}: image indexes nested more than {MAX_INDEX_DEPTH} deep"
                )));
            }
            let index = image::read_index(store, &digest)?;
            for child in index.value.manifests() {
                self.check_tree(store, child, &what, depth + 1)?;
            }
        } else if media_type::is_manifest(&mt) {
            let manifest = image::read_manifest(store, &digest)?;
            let config = manifest.value.config();
            self.check_tree(store, config, &what, depth)?;
            for layer in manifest.value.layers() {
                self.check_tree(store, layer, &what, depth)?;
            }
            let cmt = config.media_type().to_string();
            if cmt == media_type::OCI_CONFIG || cmt == media_type::DOCKER_CONFIG {
                let cd = parse_digest(|| what.clone(), config.digest())?;
                let parsed = image::read_config(store, &cd)?;
                let diff_ids = parsed.value.rootfs.diff_ids.len();
                if diff_ids != manifest.value.layers().len() {
                    return Err(ArchiveError::LayerCount {
                        image: what,
                        layers: manifest.value.layers().len(),
                        diff_ids,
                    });
                }
            }
        }
        Ok(())
    }

    /// Blob `digest` of `size` bytes is in the store: from the archive's `blobs/sha256/`, or
    /// already there from before.
    fn ensure_blob(
        &self,
        store: &Store,
        digest: &Digest,
        size: u64,
        needed_by: &str,
    ) -> Result<()> {
        let path = format!("blobs/sha256/{}", digest.hex());
        let found = match self.lookup(needed_by, &path) {
            Ok(Found::Memory(b)) => Some(store.put_blob(b)?.0),
            Ok(Found::Blob(d)) => Some(d.clone()),
            Err(ArchiveError::MissingEntry { .. }) => None,
            Err(e) => return Err(e),
        };
        match found {
            // A link may lead to a file of other content than its name says.
            Some(actual) if actual != *digest => Err(ArchiveError::DigestMismatch {
                what: path,
                expected: digest.clone(),
                actual,
            }),
            None if !store.has_blob(digest) => Err(ArchiveError::MissingBlob {
                needed_by: needed_by.to_owned(),
                digest: digest.clone(),
            }),
            _ => {
                let actual = store.blob_size(digest)?;
                if actual != size {
                    return Err(ArchiveError::UnknownFormat(format!(
                        "{needed_by}: descriptor of {digest} says {size} bytes, the blob has {actual}"
                    )));
                }
                Ok(())
            }
        }
    }
}

/// Records a compressed layer file as the compressed form of its diffID, so a later gzip or
/// zstd export reuses it instead of compressing again. bzip2 and xz have no use there.
fn remember_compressed(store: &Store, blob: &Digest, diff_id: &Digest) -> Result<()> {
    let mut head = [0u8; 8];
    let n = store
        .open_blob(blob)?
        .read(&mut head)
        .map_err(|source| StoreError::Io {
            op: "read",
            path: store.blob_path(blob),
            source,
        })?;
    let c = match crate::Format::sniff(&head[..n]) {
        crate::Format::Gzip => crate::Compression::GZIP,
        crate::Format::Zstd => crate::Compression::ZSTD,
        _ => return Ok(()),
    };
    store.remember_compressed(diff_id, c, blob, store.blob_size(blob)?)?;
    Ok(())
}

/// Names of an index.json entry: `io.containerd.image.name`, else a ref.name that is a full
/// name rather than a bare tag.
fn names_from_annotations(desc: &Descriptor) -> Result<Vec<String>> {
    let Some(a) = desc.annotations() else {
        return Ok(Vec::new());
    };
    if let Some(name) = a.get(ANNOTATION_CONTAINERD_NAME) {
        return Ok(vec![normalize_name(name)?]);
    }
    match a.get(ANNOTATION_REF_NAME) {
        Some(r) if r.contains(['/', ':']) => Ok(vec![normalize_name(r)?]),
        _ => Ok(Vec::new()),
    }
}

fn read_blob_json(store: &Store, digest: &Digest, path: &str) -> Result<Vec<u8>> {
    let size = store.blob_size(digest)?;
    if size > MAX_JSON {
        return Err(ArchiveError::JsonTooLarge {
            entry: path.to_owned(),
            size,
            limit: MAX_JSON,
        });
    }
    Ok(store.read_blob(digest, MAX_JSON)?)
}

/// Hashes the current entry's content into the store. An entry named `blobs/sha256/<hex>` must
/// hash to `<hex>`.
fn spool(store: &Store, r: &mut impl Read, name: &str, buf: &mut [u8]) -> Result<Digest> {
    let mut w = store.blob_writer()?;
    loop {
        let n = match r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(read_entry(name, source)),
        };
        w.write_all(&buf[..n]).map_err(|source| StoreError::Io {
            op: "write blob for archive entry",
            path: name.into(),
            source,
        })?;
    }
    let expected = name
        .strip_prefix("blobs/sha256/")
        .and_then(|hex| Digest::from_hex(hex).ok());
    match w.commit(expected.as_ref()) {
        Ok((d, _)) => Ok(d),
        Err(StoreError::DigestMismatch { expected, actual }) => Err(ArchiveError::DigestMismatch {
            what: format!("archive entry {name}"),
            expected,
            actual,
        }),
        Err(e) => Err(e.into()),
    }
}

fn read_entry(name: &str, source: io::Error) -> ArchiveError {
    ArchiveError::ReadEntry {
        entry: name.to_owned(),
        source,
    }
}

/// Files kept in memory: the JSON of both layouts. Anything else goes to the store.
fn is_metadata(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    matches!(base, "repositories" | "oci-layout" | "json" | "VERSION") || base.ends_with(".json")
}

/// An entry's name as a key: components joined by `/`, `.` dropped. `None` for the archive's
/// root directory. A `..` component is refused outright: no legitimate image archive has one,
/// and a tool that extracts before reading (as docker's loader does) could be led outside its
/// directory by it.
fn entry_name(raw: &[u8]) -> Result<Option<String>> {
    let unsafe_entry = |reason| ArchiveError::UnsafeEntry {
        entry: String::from_utf8_lossy(raw).chars().take(200).collect(),
        reason,
    };
    let text = std::str::from_utf8(raw).map_err(|_| unsafe_entry("name is not UTF-8"))?;
    if text.contains('\0') {
        return Err(unsafe_entry("name contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for c in text.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(unsafe_entry("name has a .. component")),
            c => parts.push(c),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// A path from manifest.json, as an entry key. Relative paths only, without `..`: docker
/// writes nothing else, and anything else is an attempt to reach outside the archive.
fn ref_path(file: &str, path: &str) -> Result<String> {
    let unsafe_path = |reason| ArchiveError::UnsafePath {
        file: file.to_owned(),
        path: path.chars().take(200).collect(),
        reason,
    };
    if path.starts_with('/') {
        return Err(unsafe_path("absolute paths are not allowed"));
    }
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(unsafe_path("paths may not contain ..")),
            c if c.contains('\0') => return Err(unsafe_path("path contains a NUL byte")),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(unsafe_path("empty path"));
    }
    Ok(parts.join("/"))
}

/// Where a link at archive path `link` pointing at `target` leads, as an entry key. Relative
/// targets start from the link's directory (this is how docker and containers/image share one
/// layer file between images: `<id>/layer.tar -> ../<other>/layer.tar`); absolute ones from the
/// archive root. A target climbing above the root is refused.
fn resolve_symlink(link: &str, target: &[u8]) -> Result<String> {
    let target_text = String::from_utf8_lossy(target);
    let unsafe_path = |reason| ArchiveError::UnsafePath {
        file: format!("link {link}"),
        path: target_text.chars().take(200).collect(),
        reason,
    };
    let mut parts: Vec<&str> = if target.starts_with(b"/") {
        Vec::new()
    } else {
        let dir = Path::new(link)
            .parent()
            .and_then(Path::to_str)
            .unwrap_or("");
        dir.split('/').filter(|c| !c.is_empty()).collect()
    };
    let target = std::str::from_utf8(target).map_err(|_| unsafe_path("target is not UTF-8"))?;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(unsafe_path("target leads outside the archive"));
                }
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(unsafe_path("target is the archive root"));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        assert_eq!(entry_name(b"./a//b/").unwrap().as_deref(), Some("a/b"));
        assert_eq!(entry_name(b"./").unwrap(), None);
        assert!(entry_name(b"../escape").is_err());
        assert!(entry_name(b"a/../../b").is_err());
    }

    #[test]
    fn reference_paths() {
        assert_eq!(
            ref_path("m", "./blobs/sha256/ab").unwrap(),
            "blobs/sha256/ab"
        );
        for bad in ["../../etc/passwd", "/etc/passwd", "a/../b", "", "."] {
            assert!(ref_path("m", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn symlinks_resolve_inside_the_archive() {
        assert_eq!(
            resolve_symlink("id1/layer.tar", b"../id0/layer.tar").unwrap(),
            "id0/layer.tar"
        );
        assert_eq!(
            resolve_symlink("id1/layer.tar", b"/x.tar").unwrap(),
            "x.tar"
        );
        assert_eq!(
            resolve_symlink("", b"id0/layer.tar").unwrap(),
            "id0/layer.tar"
        );
        assert!(resolve_symlink("id1/layer.tar", b"../../etc/passwd").is_err());
        assert!(resolve_symlink("a", b"..").is_err());
    }

    #[test]
    fn metadata_names() {
        for m in [
            "manifest.json",
            "index.json",
            "repositories",
            "oci-layout",
            "abc.json",
            "id/json",
            "id/VERSION",
        ] {
            assert!(is_metadata(m), "{m}");
        }
        for b in ["id/layer.tar", "blobs/sha256/abc", "abc.tar"] {
            assert!(!is_metadata(b), "{b}");
        }
    }
}
