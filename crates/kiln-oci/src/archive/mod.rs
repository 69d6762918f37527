//! Image archives: writing images out of the store as tarballs or layout directories, and
//! reading such tarballs (or a plain root filesystem) back in.
//!
//! # What each function writes
//!
//! | function | output |
//! |---|---|
//! | [`write_docker_archive`] | one tar holding **both** the `docker save` layout (`manifest.json`, `repositories`) **and** an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) |
//! | [`write_oci_archive`] | the OCI image layout alone, in a tar |
//! | [`write_oci_dir`] | the OCI image layout as a directory, merged into an existing layout |
//!
//! Why one docker tar carries two layouts: dockerd up to 24 (Debian 12 ships 20.10) loads only
//! `manifest.json`, while newer dockerd (containerd image store), podman, skopeo and containerd
//! prefer, or only read, an OCI layout. The two layouts can share every blob: `manifest.json`'s
//! `Config` and `Layers` point straight into `blobs/sha256/`, so nothing is stored twice and one
//! file serves every client. This is what BuildKit's docker exporter does too, and it avoids the
//! "docker load of an OCI tar fails" trap (rules_oci#651, docker-ce-packaging#202).
//!
//! All three are deterministic: entries sorted by path, mtime 0, uid/gid 0, modes 0644/0755, no
//! user or group names, PAX headers only where ustar cannot hold a value (none for the paths
//! used here). Exporting the same images twice gives identical bytes.
//!
//! Layers are written compressed as asked. [`Compression::None`] writes the uncompressed tars a
//! build stores (what `docker save` writes too, and the fastest to `docker load`); gzip and zstd
//! go through the store's compressed-layer cache, so a layer is compressed at most once per
//! algorithm. **zstd layers cannot be loaded by dockerd before 23.0** (20.10 fails to decompress
//! them); podman, skopeo and containerd read them. When any layer's encoding changes, the image
//! gets a new OCI manifest over the *same* config blob, so the image ID docker shows (the config
//! digest) never changes with the compression.
//!
//! # What [`load_archive`] reads
//!
//! - a docker archive: the layout above, newer `docker save` output, and the legacy layout of
//!   `docker save` up to 24 (`<id>/layer.tar`, `<id>/json`, `<id>/VERSION`, `<config>.json`,
//!   `manifest.json`, `repositories`), including the symlinks docker and containers/image use
//!   for layers shared between images;
//! - an OCI archive (`oci-layout` + `index.json` + `blobs/`), as written by podman, skopeo,
//!   BuildKit or kiln. When a tar has both an OCI layout and `manifest.json`, the OCI layout wins:
//!   its manifests are kept byte for byte.
//!
//! The whole archive may be compressed (gzip, zstd, bzip2, xz; found by magic bytes). It is read
//! as a stream, once: each file is hashed and spooled into the store as it arrives (small JSON
//! files are kept in memory, within limits), and the JSON that says what it all means is read at
//! the end. Paths from the archive are only ever looked up among the archive's own entries,
//! never on the filesystem.
//!
//! [`import_rootfs`] makes a one-layer image from a root filesystem tarball, like
//! `docker import`.

mod export;
mod import;
mod load;
mod names;

use std::io;

use oci_spec::image::Descriptor;

pub use export::{registry_manifest, write_docker_archive, write_oci_archive, write_oci_dir};
pub use import::import_rootfs;
pub use load::load_archive;
pub use names::{familiar_name, normalize_name, tag_of};

use crate::compression::{Compression, Decoder, Format};
use crate::digest::{Digest, DigestError};
use crate::image::ImageError;
use crate::layer::LayerError;
use crate::store::{Store, StoreError};

/// containerd's (and BuildKit's) annotation for an image's full name in index.json.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// An image in the store to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportImage {
    /// Digest of the image's manifest blob (OCI or Docker schema 2).
    pub manifest: Digest,
    /// Full normalised names to give it (`docker.io/library/app:1`, `localhost:5000/x:2`);
    /// may be empty.
    pub names: Vec<String>,
}

/// An image [`load_archive`] stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedImage {
    /// The stored manifest (or, for a multi-platform OCI entry, image index).
    pub manifest: Descriptor,
    /// Its full normalised names, each now a tag in the store. Empty for untagged images.
    pub names: Vec<String>,
}

/// Errors from writing or reading image archives. Each names the file, entry or digest at fault.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Writing the output failed.
    #[error("write {what}: {source}")]
    Write {
        /// The output or entry being written.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// Writing the output tar failed.
    #[error("write archive entry: {0}")]
    Tar(#[source] LayerError),
    /// A filesystem operation on an output directory failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The path involved.
        path: std::path::PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The input is not a readable tar stream (truncated, corrupt, bad compression).
    #[error("read archive: {0}")]
    Read(#[source] LayerError),
    /// Reading an entry's content from the input failed (usually: the archive is truncated).
    #[error("read archive entry {entry}: {source}")]
    ReadEntry {
        /// The entry.
        entry: String,
        /// The error.
        source: io::Error,
    },
    /// An entry name that could escape the archive (`..` components).
    #[error("archive entry {entry:?} is unsafe: {reason}")]
    UnsafeEntry {
        /// The entry name as found.
        entry: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A path inside a JSON file (manifest.json `Config`/`Layers`) that is unsafe.
    #[error("{file}: path {path:?} is unsafe: {reason}")]
    UnsafePath {
        /// The JSON file.
        file: String,
        /// The path it holds.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A path a JSON file refers to is not in the archive.
    #[error("{file} refers to {path:?}, which is not a file in the archive")]
    MissingEntry {
        /// The JSON file.
        file: String,
        /// The missing path.
        path: String,
    },
    /// A JSON file is larger than kiln accepts.
    #[error("archive entry {entry} is {size} bytes; JSON files are limited to {limit} bytes")]
    JsonTooLarge {
        /// The entry.
        entry: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The archive's small files together exceed what kiln keeps in memory.
    #[error("archive has more than {limit} bytes of JSON metadata (at {entry})")]
    TooMuchMetadata {
        /// The entry that went over.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// A JSON file does not parse as what it should be.
    #[error("parse {file}: {source}")]
    Json {
        /// The file.
        file: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The archive is neither a docker archive nor an OCI layout.
    #[error("not an image archive: {0}")]
    UnknownFormat(String),
    /// An `oci-layout` file with a version kiln does not read.
    #[error("{file}: unsupported OCI layout version {version:?}")]
    LayoutVersion {
        /// Where.
        file: String,
        /// The version found.
        version: String,
    },
    /// A blob's content does not match the digest its name or a descriptor promises.
    #[error("{what}: content hashes to {actual}, expected {expected}")]
    DigestMismatch {
        /// The entry or blob.
        what: String,
        /// The promised digest.
        expected: Digest,
        /// What the content hashes to.
        actual: Digest,
    },
    /// A layer's uncompressed content does not match the config's diffID for it.
    #[error("layer {layer} of {image}: uncompressed content hashes to {actual}, but the config's rootfs.diff_ids[{index}] is {expected}")]
    DiffIdMismatch {
        /// The layer's path in the archive, or its digest.
        layer: String,
        /// The image (config path or manifest digest).
        image: String,
        /// Its position.
        index: usize,
        /// The diffID the config lists.
        expected: Digest,
        /// The digest of the uncompressed content.
        actual: Digest,
    },
    /// The number of layers does not match the config's diffIDs.
    #[error("{image}: {layers} layers but the config lists {diff_ids} diffIDs")]
    LayerCount {
        /// The image.
        image: String,
        /// Layers found.
        layers: usize,
        /// `rootfs.diff_ids` length.
        diff_ids: usize,
    },
    /// A blob an index or manifest needs is neither in the archive nor in the store.
    #[error("{needed_by} needs blob {digest}, which the archive does not contain")]
    MissingBlob {
        /// What refers to it.
        needed_by: String,
        /// The blob.
        digest: Digest,
    },
    /// A digest that is not `sha256:<hex>`.
    #[error("{what}: {source}")]
    Digest {
        /// Where it was found.
        what: String,
        /// The parse error.
        source: DigestError,
    },
    /// The manifest to export is not an image manifest.
    #[error("{digest} is a {media_type}, not an image manifest")]
    NotAnImage {
        /// The blob.
        digest: Digest,
        /// What it is.
        media_type: String,
    },
    /// A layer media type kiln cannot convert.
    #[error("image {manifest}: layer {digest} has media type {media_type}, which kiln cannot re-encode as {compression}")]
    UnsupportedLayer {
        /// The manifest.
        manifest: Digest,
        /// The layer.
        digest: Digest,
        /// Its media type.
        media_type: String,
        /// The compression asked for.
        compression: Compression,
    },
    /// An image name that is not a valid reference.
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An output directory that exists but is not an OCI layout.
    #[error("{}: {reason}", path.display())]
    NotALayout {
        /// The directory.
        path: std::path::PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Building, parsing or storing an image document failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Reading, writing or compressing a layer failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
}

/// Shorthand for results with [`ArchiveError`].
pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

/// The `oci-layout` file every layout we write carries.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Parses a digest found in archive metadata, naming where it came from on failure.
fn parse_digest(what: impl FnOnce() -> String, d: &oci_spec::image::Digest) -> Result<Digest> {
    Digest::from_oci(d).map_err(|source| ArchiveError::Digest {
        what: what(),
        source,
    })
}

/// Decompresses blob `src` into a new blob that must hash to `diff_id`; returns its size.
///
/// A `src` that is not compressed cannot become `diff_id` (it would be `diff_id` itself), so it
/// fails at once with the digest it has. On any failure nothing new is stored.
pub fn decompress_to_store(
    store: &Store,
    src: &Digest,
    diff_id: &Digest,
) -> Result<u64, StoreError> {
    let path = store.blob_path(src);
    let io_err = |source| StoreError::Io {
        op: "decompress",
        path: path.clone(),
        source,
    };
    let (mut decoder, format) = Decoder::sniff(store.open_blob(src)?).map_err(io_err)?;
    if format == Format::Tar {
        return Err(StoreError::DigestMismatch {
            expected: diff_id.clone(),
            actual: src.clone(),
        });
    }
    let mut w = store.blob_writer()?;
    io::copy(&mut decoder, &mut w).map_err(io_err)?;
    Ok(w.commit(Some(diff_id))?.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{self, History, ManifestFormat};
    use crate::{layer, ImageConfig, TarEntry};

    /// A one-layer image with /hello.txt; returns (manifest, config) digests.
    fn tiny_image(store: &Store) -> (Digest, Digest) {
        let l = layer::write_layer(store, Compression::None, |w| {
            let data = b"hello\n";
            w.append(&TarEntry::file("hello.txt", 6), Some(&mut &data[..]))
        })
        .unwrap();
        let mut c = ImageConfig::new("linux", "amd64");
        c.push_layer(l.diff_id.clone(), History::default());
        let w =
            image::write_image(store, &c, &[l.descriptor()], None, ManifestFormat::Oci).unwrap();
        let d = |desc: &Descriptor| Digest::from_oci(desc.digest()).unwrap();
        (d(&w.manifest), d(&w.config))
    }

    fn docker_tar(store: &Store, manifest: &Digest, names: &[&str], c: Compression) -> Vec<u8> {
        let img = ExportImage {
            manifest: manifest.clone(),
            names: names.iter().map(|s| s.to_string()).collect(),
        };
        let mut out = Vec::new();
        write_docker_archive(store, &[img], c, &mut out).unwrap();
        out
    }

    #[test]
    fn export_is_deterministic_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let (manifest, config) = tiny_image(&store);
        for c in [Compression::None, Compression::GZIP, Compression::ZSTD] {
            // A short name is normalised on the way out.
            let a = docker_tar(&store, &manifest, &["app:1"], c);
            let b = docker_tar(&store, &manifest, &["docker.io/library/app:1"], c);
            assert_eq!(a, b, "{c}");
            let other = Store::open(dir.path().join(c.name())).unwrap();
            let loaded = load_archive(&other, &a[..]).unwrap();
            assert_eq!(loaded.len(), 1);
            assert_eq!(loaded[0].names, ["docker.io/library/app:1"]);
            let m = image::read_manifest(
                &other,
                &Digest::from_oci(loaded[0].manifest.digest()).unwrap(),
            )
            .unwrap();
            assert_eq!(
                Digest::from_oci(m.value.config().digest()).unwrap(),
                config,
                "{c}"
            );
            assert!(other.resolve("docker.io/library/app:1").unwrap().is_some());
        }
    }

    #[test]
    fn oci_dir_merges_and_replaces_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let (manifest, _) = tiny_image(&store);
        let out = dir.path().join("layout");
        let img = |name: &str| ExportImage {
            manifest: manifest.clone(),
            names: vec![name.into()],
        };
        write_oci_dir(
            &store,
            &[img("docker.io/library/a:1")],
            Compression::None,
            &out,
        )
        .unwrap();
        write_oci_dir(
            &store,
            &[img("docker.io/library/b:1")],
            Compression::GZIP,
            &out,
        )
        .unwrap();
        write_oci_dir(
            &store,
            &[img("docker.io/library/a:1")],
            Compression::GZIP,
            &out,
        )
        .unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "{index:#}");
        assert_eq!(
            entries[1]["annotations"][ANNOTATION_CONTAINERD_NAME],
            "docker.io/library/a:1"
        );
        assert_eq!(
            entries[0]["digest"], entries[1]["digest"],
            "both gzip by now"
        );
    }

    #[test]
    fn registry_manifest_compresses_and_translates_but_keeps_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (manifest, config) = tiny_image(&store);
        let read = |d: &Digest| image::read_manifest(&store, d).unwrap().value;

        let oci = registry_manifest(
            &store,
            &manifest,
            Compression::GZIP,
            Some(ManifestFormat::Oci),
        )
        .unwrap();
        assert_ne!(oci, manifest, "uncompressed layers must be re-encoded");
        let m = read(&oci);
        assert_eq!(
            m.layers()[0].media_type().to_string(),
            Compression::GZIP.oci_media_type()
        );
        assert_eq!(Digest::from_oci(m.config().digest()).unwrap(), config);
        // Already in shape: the same digest back, so a pulled image keeps its digest.
        assert_eq!(
            registry_manifest(&store, &oci, Compression::GZIP, Some(ManifestFormat::Oci)).unwrap(),
            oci
        );

        let docker = registry_manifest(
            &store,
            &manifest,
            Compression::GZIP,
            Some(ManifestFormat::Docker),
        )
        .unwrap();
        let m = read(&docker);
        assert_eq!(
            m.media_type().as_ref().unwrap().to_string(),
            image::media_type::DOCKER_MANIFEST
        );
        // No format asked: each image keeps its own dialect.
        assert_eq!(
            registry_manifest(&store, &docker, Compression::GZIP, None).unwrap(),
            docker
        );
        assert_eq!(
            registry_manifest(&store, &oci, Compression::GZIP, None).unwrap(),
            oci
        );
        assert_eq!(
            m.config().media_type().to_string(),
            image::media_type::DOCKER_CONFIG
        );
        assert_eq!(Digest::from_oci(m.config().digest()).unwrap(), config);
        assert_eq!(
            m.layers()[0].digest(),
            read(&oci).layers()[0].digest(),
            "the gzip blob is made once and shared"
        );
        // Docker media types have no zstd.
        let err = registry_manifest(
            &store,
            &manifest,
            Compression::ZSTD,
            Some(ManifestFormat::Docker),
        )
        .unwrap_err();
        assert!(err.to_string().contains("zstd"), "{err}");
    }

    #[test]
    fn index_is_refused_as_an_export_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (manifest, _) = tiny_image(&store);
        let desc = image::descriptor(
            image::media_type::OCI_MANIFEST,
            &manifest,
            store.blob_size(&manifest).unwrap(),
        );
        let index = image::build_index(vec![desc], None).unwrap();
        let (digest, _) = store
            .put_blob(&image::index_to_vec(&index).unwrap())
            .unwrap();
        let img = ExportImage {
            manifest: digest,
            names: vec![],
        };
        let err =
            write_oci_archive(&store, &[img], Compression::None, &mut io::sink()).unwrap_err();
        assert!(matches!(err, ArchiveError::NotAnImage { .. }), "{err}");
    }
}
