//! `kiln-oci`: where kiln keeps images, and the formats it keeps them in.
//!
//! This crate owns:
//! - the **content store** ([`Store`]): blobs by sha256 written atomically, tags in index.json,
//!   inter-process locks, garbage collection, the compressed-layer cache and the registry
//!   repositories each blob was seen in (for cross-repository mounts). The store root is
//!   an OCI image layout, so `skopeo inspect oci:ROOT:TAG` reads it directly;
//! - the **image model** ([`image`]): a Docker-compatible [`ImageConfig`], manifests and indexes
//!   (via oci-spec), media types, and deterministic JSON;
//! - **layers** ([`layer`]): a deterministic PAX tar writer, a hardened reader for layers in any
//!   common compression, and one-pass layer writing into the store ([`write_layer`]).
//!
//! It runs nothing and prints nothing; every failure is a typed error carrying its path or
//! digest.
//!
//! ```
//! use kiln_oci::{image, layer, Compression, ImageConfig, Store, TarEntry};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path())?;
//!
//! // One layer holding /hello.txt, stored uncompressed as builds do.
//! let layer = layer::write_layer(&store, Compression::None, |w| {
//!     let data = b"hi\n";
//!     w.append(&TarEntry::file("hello.txt", data.len() as u64), Some(&mut &data[..]))
//! })?;
//!
//! let mut config = ImageConfig::new("linux", "amd64");
//! config.config_mut().cmd = Some(vec!["cat".into(), "/hello.txt".into()]);
//! config.push_layer(layer.diff_id.clone(), image::History::default());
//! let written = image::write_image(
//!     &store, &config, &[layer.descriptor()], None, image::ManifestFormat::Oci)?;
//! store.set_tag("docker.io/library/hello:1", &written.manifest)?;
//!
//! let tagged = store.resolve("docker.io/library/hello:1")?.expect("tagged");
//! assert_eq!(tagged.digest(), written.manifest.digest());
//! // Outputs compress on demand; the result is cached per diffID.
//! let gz = layer::compress_layer(&store, &layer.diff_id, Compression::GZIP)?;
//! assert_eq!(gz.diff_id, layer.diff_id);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod archive;
pub mod compression;
pub mod digest;
pub mod image;
mod json;
pub mod layer;
pub mod reference;
pub mod store;

pub use compression::{Compression, Format};
pub use digest::{Digest, DigestError, Sha256Writer};
pub use image::{ImageConfig, ImageError};
pub use layer::{
    compress_layer, open_layer, write_layer, EntryKind, LayerError, LayerInfo, LayerWriter,
    TarEntry,
};
pub use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType, Platform};
pub use store::{BlobWriter, GcReport, Store, StoreError, StoreLock};
