//! The image model: configs, manifests, indexes, and writing an image into the store.
//!
//! Manifests and indexes use oci-spec's types; configs use kiln's own [`ImageConfig`]. Whatever
//! the type, a document's identity is its bytes: parsing keeps the bytes it was given
//! ([`Parsed`]), and writing returns the exact bytes stored, so a digest is never taken over a
//! re-serialization.

mod config;
pub mod media_type;

use std::collections::{BTreeMap, HashMap};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::de::DeserializeOwned;

pub use config::{ContainerConfig, Empty, Extra, HealthConfig, History, ImageConfig, RootFs};

use crate::digest::{Digest, DigestError};
use crate::json;
use crate::store::{Store, StoreError};

/// The most bytes a manifest or index may have (registries commonly cap manifests at 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// The most bytes an image config may have (long histories make configs large).
pub const MAX_CONFIG_SIZE: u64 = 64 << 20;

/// Errors from building, parsing or storing image documents.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A document is not valid JSON of its type.
    #[error("parse {what}: {source}")]
    Json {
        /// Which document ("manifest", "config sha256:...").
        what: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A document could not be serialized.
    #[error("serialize {what}: {source}")]
    Serialize {
        /// Which document.
        what: &'static str,
        /// The serializer's error.
        source: serde_json::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A digest kiln cannot use.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// The config lists a different number of diffIDs than there are layers.
    #[error("config has {diff_ids} diffIDs but the manifest has {layers} layers")]
    LayerCount {
        /// `rootfs.diff_ids` length.
        diff_ids: usize,
        /// Layer descriptors given.
        layers: usize,
    },
    /// A layer blob the manifest would reference is not in the store.
    #[error("layer {0} is not in the store")]
    MissingLayer(Digest),
    /// A layer media type the requested manifest format cannot express.
    #[error("layer media type {media_type} has no {format:?} equivalent")]
    UnsupportedLayer {
        /// The layer's media type.
        media_type: String,
        /// The manifest format asked for.
        format: ManifestFormat,
    },
    /// oci-spec refused to build a document.
    #[error("build {what}: {source}")]
    Build {
        /// Which document.
        what: &'static str,
        /// oci-spec's error.
        source: oci_spec::OciSpecError,
    },
}

/// Shorthand for results with [`ImageError`].
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// A parsed document together with the exact bytes it came from and their digest.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    /// The parsed value.
    pub value: T,
    /// The bytes it was parsed from; these, not a re-serialization, are what the digest covers.
    pub bytes: Vec<u8>,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

impl<T> Parsed<T> {
    /// A descriptor for these bytes.
    pub fn descriptor(&self, media_type: &str) -> Descriptor {
        descriptor(media_type, &self.digest, self.bytes.len() as u64)
    }
}

/// A descriptor with just media type, digest and size.
pub fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Descriptor {
    Descriptor::new(MediaType::from(media_type), size, digest.to_oci())
}

fn parse_with<T>(
    bytes: Vec<u8>,
    what: &str,
    parse: impl FnOnce(&[u8]) -> serde_json::Result<T>,
) -> Result<Parsed<T>> {
    let value = parse(&bytes).map_err(|source| ImageError::Json {
        what: what.to_owned(),
        source,
    })?;
    let digest = Digest::of(&bytes);
    Ok(Parsed {
        value,
        bytes,
        digest,
    })
}

fn parse_oci<T: DeserializeOwned>(bytes: Vec<u8>, what: &str) -> Result<Parsed<T>> {
    parse_with(bytes, what, json::oci_from_slice)
}

/// Parses an image manifest (OCI or Docker schema 2), keeping its bytes.
pub fn parse_manifest(bytes: Vec<u8>) -> Result<Parsed<ImageManifest>> {
    parse_oci(bytes, "manifest")
}

/// Parses an image index or Docker manifest list, keeping its bytes.
pub fn parse_index(bytes: Vec<u8>) -> Result<Parsed<ImageIndex>> {
    parse_oci(bytes, "image index")
}

/// Parses an image config, keeping its bytes.
pub fn parse_config(bytes: Vec<u8>) -> Result<Parsed<ImageConfig>> {
    parse_with(bytes, "image config", ImageConfig::from_slice)
}

/// The canonical bytes of a manifest (sorted keys, spec spelling of platform keys).
pub fn manifest_to_vec(m: &ImageManifest) -> Result<Vec<u8>> {
    json::oci_to_vec(m).map_err(|source| ImageError::Serialize {
        what: "manifest",
        source,
    })
}

/// The canonical bytes of an image index.
pub fn index_to_vec(i: &ImageIndex) -> Result<Vec<u8>> {
    json::oci_to_vec(i).map_err(|source| ImageError::Serialize {
        what: "image index",
        source,
    })
}

pub use json::to_canonical_vec;

/// Which manifest dialect to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestFormat {
    /// OCI image manifest with OCI media types.
    #[default]
    Oci,
    /// Docker schema 2 manifest with Docker media types (gzip or uncompressed layers only).
    Docker,
}

impl ManifestFormat {
    /// The manifest media type.
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => media_type::OCI_MANIFEST,
            ManifestFormat::Docker => media_type::DOCKER_MANIFEST,
        }
    }

    /// The config media type.
    pub fn config_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => media_type::OCI_CONFIG,
            ManifestFormat::Docker => media_type::DOCKER_CONFIG,
        }
    }

    /// A layer media type translated into this format.
    pub fn layer_media_type(self, mt: &str) -> Result<String> {
        let compression = crate::Compression::from_media_type(mt);
        let mapped = match (self, compression) {
            (ManifestFormat::Oci, Some(c)) => Some(c.oci_media_type()),
            (ManifestFormat::Docker, Some(c)) => c.docker_media_type(),
            // Unknown layer types (artifacts, foreign layers) pass through untouched.
            (_, None) => return Ok(mt.to_owned()),
        };
        mapped
            .map(str::to_owned)
            .ok_or_else(|| ImageError::UnsupportedLayer {
                media_type: mt.to_owned(),
                format: self,
            })
    }
}

/// Annotations as oci-spec's builders take them; `None` when there are none (the field is then
/// left out of the JSON).
fn annotation_map(
    annotations: Option<&BTreeMap<String, String>>,
) -> Option<HashMap<String, String>> {
    annotations
        .filter(|a| !a.is_empty())
        .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Builds a schema-2 manifest over `config` and `layers`, with layer media types translated to
/// `format`.
pub fn build_manifest(
    config: Descriptor,
    layers: &[Descriptor],
    annotations: Option<&BTreeMap<String, String>>,
    format: ManifestFormat,
) -> Result<ImageManifest> {
    let mut mapped = Vec::with_capacity(layers.len());
    for layer in layers {
        let mut l = layer.clone();
        let mt = format.layer_media_type(l.media_type().as_ref())?;
        l.set_media_type(MediaType::from(mt.as_str()));
        mapped.push(l);
    }
    let mut builder = oci_spec::image::ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(format.manifest_media_type()))
        .config(config)
        .layers(mapped);
    if let Some(a) = annotation_map(annotations) {
        builder = builder.annotations(a);
    }
    builder.build().map_err(|source| ImageError::Build {
        what: "manifest",
        source,
    })
}

/// An image just written to the store.
#[derive(Debug, Clone)]
pub struct WrittenImage {
    /// Descriptor of the manifest blob (tag this).
    pub manifest: Descriptor,
    /// The manifest's exact bytes.
    pub manifest_bytes: Vec<u8>,
    /// Descriptor of the config blob.
    pub config: Descriptor,
    /// The config's exact bytes.
    pub config_bytes: Vec<u8>,
}

/// Writes `config` and a manifest over `layers` into the store.
///
/// The layers must already be stored and match `config.rootfs.diff_ids` in number. Returns the
/// manifest descriptor (without platform: kiln's index.json entries name one image each).
pub fn write_image(
    store: &Store,
    config: &ImageConfig,
    layers: &[Descriptor],
    annotations: Option<&BTreeMap<String, String>>,
    format: ManifestFormat,
) -> Result<WrittenImage> {
    if config.rootfs.diff_ids.len() != layers.len() {
        return Err(ImageError::LayerCount {
            diff_ids: config.rootfs.diff_ids.len(),
            layers: layers.len(),
        });
    }
    for layer in layers {
        let d = Digest::from_oci(layer.digest())?;
        if !store.has_blob(&d) {
            return Err(ImageError::MissingLayer(d));
        }
    }
    let config_bytes = config.to_vec().map_err(|source| ImageError::Serialize {
        what: "image config",
        source,
    })?;
    let (config_digest, config_size) = store.put_blob(&config_bytes)?;
    let config_desc = descriptor(format.config_media_type(), &config_digest, config_size);
    let manifest = build_manifest(config_desc.clone(), layers, annotations, format)?;
    let manifest_bytes = manifest_to_vec(&manifest)?;
    let (digest, size) = store.put_blob(&manifest_bytes)?;
    Ok(WrittenImage {
        manifest: descriptor(format.manifest_media_type(), &digest, size),
        manifest_bytes,
        config: config_desc,
        config_bytes,
    })
}

/// Reads and parses a manifest blob from the store.
pub fn read_manifest(store: &Store, digest: &Digest) -> Result<Parsed<ImageManifest>> {
    parse_manifest(store.read_blob(digest, MAX_MANIFEST_SIZE)?)
}

/// Reads and parses an index blob from the store.
pub fn read_index(store: &Store, digest: &Digest) -> Result<Parsed<ImageIndex>> {
    parse_index(store.read_blob(digest, MAX_MANIFEST_SIZE)?)
}

/// Reads and parses a config blob from the store.
pub fn read_config(store: &Store, digest: &Digest) -> Result<Parsed<ImageConfig>> {
    parse_config(store.read_blob(digest, MAX_CONFIG_SIZE)?)
}

/// Builds an image index over `manifests` (for multi-platform outputs).
pub fn build_index(
    manifests: Vec<Descriptor>,
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<ImageIndex> {
    let mut builder = oci_spec::image::ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests);
    if let Some(a) = annotation_map(annotations) {
        builder = builder.annotations(a);
    }
    builder.build().map_err(|source| ImageError::Build {
        what: "image index",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_keeps_foreign_bytes() {
        // Whitespace and key order that we would never write ourselves.
        let text = br#"{ "schemaVersion": 2,
            "config": {"size": 2, "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "mediaType": "application/vnd.oci.empty.v1+json"},
            "layers": [] }"#;
        let p = parse_manifest(text.to_vec()).unwrap();
        assert_eq!(p.bytes, text);
        assert_eq!(p.digest, Digest::of(text));
        assert_eq!(p.value.schema_version(), 2);
    }

    #[test]
    fn docker_format_maps_layer_types() {
        let f = ManifestFormat::Docker;
        assert_eq!(
            f.layer_media_type(media_type::OCI_LAYER_GZIP).unwrap(),
            media_type::DOCKER_LAYER_GZIP
        );
        assert!(f.layer_media_type(media_type::OCI_LAYER_ZSTD).is_err());
        assert_eq!(
            ManifestFormat::Oci
                .layer_media_type(media_type::DOCKER_LAYER_GZIP)
                .unwrap(),
            media_type::OCI_LAYER_GZIP
        );
    }

    #[test]
    fn write_image_checks_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut cfg = ImageConfig::new("linux", "amd64");
        let (layer, size) = store.put_blob(b"not really a tar").unwrap();
        let ld = descriptor(media_type::OCI_LAYER, &layer, size);
        assert!(matches!(
            write_image(
                &store,
                &cfg,
                std::slice::from_ref(&ld),
                None,
                ManifestFormat::Oci
            ),
            Err(ImageError::LayerCount { .. })
        ));
        cfg.push_layer(layer, History::default());
        let w = write_image(&store, &cfg, &[ld], None, ManifestFormat::Oci).unwrap();
        let m = read_manifest(&store, &Digest::from_oci(w.manifest.digest()).unwrap()).unwrap();
        assert_eq!(m.bytes, w.manifest_bytes);
        let c = read_config(
            &store,
            &Digest::from_oci(m.value.config().digest()).unwrap(),
        )
        .unwrap();
        assert_eq!(c.value, cfg);
    }
}
