//! Writing images out: the docker tar (two layouts in one), the OCI tar and the OCI directory.
//!
//! Every output is planned first (which blobs, which manifests, the JSON files), compressing
//! layers into the store as needed, and only then written. A tar header needs each file's size
//! before its content, and planning first also means a missing blob fails the export before any
//! output is written.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use oci_spec::image::{Arch, Descriptor, ImageIndex, MediaType, Os, ANNOTATION_REF_NAME};
use serde::Serialize;
use serde_json::Value;

use super::names::{familiar_name, familiar_repo_and_tag, normalize_name, tag_of};
use super::{
    decompress_to_store, parse_digest, ArchiveError, ExportImage, Result,
    ANNOTATION_CONTAINERD_NAME, OCI_LAYOUT,
};
use crate::compression::Compression;
use crate::digest::{Digest, Sha256Reader};
use crate::image::{self, media_type, ImageConfig, ManifestFormat};
use crate::json;
use crate::layer::{self, LayerWriter, TarEntry};
use crate::store::{Store, StoreError};

/// Output buffer: tar headers are 512 bytes, so the writer would otherwise issue tiny writes.
const OUT_BUFFER: usize = 256 * 1024;
/// The most index.json bytes of an existing layout we read back.
const MAX_INDEX: u64 = 16 << 20;

/// Writes `images` as one tar that `docker load` (20.10 and newer), `podman load` and skopeo
/// (`docker-archive:` and `oci-archive:`) all read: `manifest.json` and `repositories` for
/// docker's classic loader, beside `oci-layout`, `index.json` and `blobs/sha256/` for everything
/// else. Both layouts share the blobs.
///
/// Layers are written with `compression`; see the [module docs](super) for why
/// [`Compression::None`] suits `docker load` best and why zstd does not suit dockerd 20.10.
pub fn write_docker_archive(
    store: &Store,
    images: &[ExportImage],
    compression: Compression,
    out: &mut dyn Write,
) -> Result<()> {
    let _lock = store.lock_shared()?;
    let plan = Plan::new(store, images, compression)?;
    let mut files = plan.layout_files()?;
    files.insert("manifest.json".into(), Item::Bytes(plan.docker_manifest()?));
    files.insert("repositories".into(), Item::Bytes(plan.repositories()?));
    write_tar(store, &files, out)
}

/// Writes `images` as an OCI image layout in a tar (`oci-archive:` to skopeo and podman).
pub fn write_oci_archive(
    store: &Store,
    images: &[ExportImage],
    compression: Compression,
    out: &mut dyn Write,
) -> Result<()> {
    let _lock = store.lock_shared()?;
    let plan = Plan::new(store, images, compression)?;
    write_tar(store, &plan.layout_files()?, out)
}

/// Writes `images` into the OCI image layout directory `dir`, creating it if needed.
///
/// An existing layout is added to: blobs it already has are kept, and its index.json keeps
/// every entry except those naming the same image as a new one (same `io.containerd.image.name`,
/// or, for entries without that annotation, the same `org.opencontainers.image.ref.name`).
/// A non-empty directory that is not a layout is refused. Blobs are written before index.json,
/// which is replaced atomically, so a reader never sees an entry whose blobs are missing.
pub fn write_oci_dir(
    store: &Store,
    images: &[ExportImage],
    compression: Compression,
    dir: &Path,
) -> Result<()> {
    let _lock = store.lock_shared()?;
    let plan = Plan::new(store, images, compression)?;
    let existing = open_layout_dir(dir)?;
    let blobs_dir = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs_dir).map_err(io_err("create directory", &blobs_dir))?;
    for (digest, source) in &plan.blobs {
        write_blob_file(store, &blobs_dir, digest, source)?;
    }
    sync_dir(&blobs_dir)?;
    let layout = dir.join("oci-layout");
    if !layout.exists() {
        write_file_atomic(&layout, OCI_LAYOUT)?;
    }
    let mut index = existing.unwrap_or_default();
    let mut manifests = index.manifests().clone();
    manifests.retain(|old| !plan.index.iter().any(|new| same_name(old, new)));
    for new in &plan.index {
        if !manifests.contains(new) {
            manifests.push(new.clone());
        }
    }
    index.set_manifests(manifests);
    index.set_schema_version(2);
    index.set_media_type(Some(MediaType::ImageIndex));
    write_file_atomic(&dir.join("index.json"), &image::index_to_vec(&index)?)
}

/// Where a blob's bytes come from.
#[derive(Debug, Clone)]
enum Source {
    /// A blob in the store, of this size.
    Store(u64),
    /// Made for this export (a re-encoded image's manifest); not stored.
    Bytes(Vec<u8>),
}

impl Source {
    fn size(&self) -> u64 {
        match self {
            Source::Store(n) => *n,
            Source::Bytes(b) => b.len() as u64,
        }
    }
}

/// One file of a tar output.
enum Item {
    Dir,
    Blob(Digest, Source),
    Bytes(Vec<u8>),
}

/// One image, ready to write.
struct Planned {
    config: Digest,
    layers: Vec<Digest>,
    last_diff_id: Option<Digest>,
    names: Vec<String>,
}

/// Everything an output holds, decided before a byte is written.
struct Plan {
    /// Every blob once, sorted by digest.
    blobs: BTreeMap<Digest, Source>,
    /// index.json entries, in the caller's image order.
    index: Vec<Descriptor>,
    images: Vec<Planned>,
}

impl Plan {
    fn new(store: &Store, images: &[ExportImage], compression: Compression) -> Result<Plan> {
        precompress(store, images, compression)?;
        let mut plan = Plan {
            blobs: BTreeMap::new(),
            index: Vec::new(),
            images: Vec::new(),
        };
        for img in images {
            plan.add(store, img, compression)?;
        }
        Ok(plan)
    }

    fn add_store_blob(&mut self, store: &Store, digest: &Digest) -> Result<()> {
        if !self.blobs.contains_key(digest) {
            let size = store.blob_size(digest)?;
            self.blobs.insert(digest.clone(), Source::Store(size));
        }
        Ok(())
    }

    fn add(&mut self, store: &Store, img: &ExportImage, compression: Compression) -> Result<()> {
        let bytes = store.read_blob(&img.manifest, image::MAX_MANIFEST_SIZE)?;
        let what = || format!("manifest {}", img.manifest);
        let probe: Value = serde_json::from_slice(&bytes).map_err(|source| ArchiveError::Json {
            file: what(),
            source,
        })?;
        let declared = probe
            .get("mediaType")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if declared.as_deref().is_some_and(media_type::is_index) || probe.get("manifests").is_some()
        {
            return Err(ArchiveError::NotAnImage {
                digest: img.manifest.clone(),
                media_type: declared.unwrap_or_else(|| media_type::OCI_INDEX.into()),
            });
        }
        let names = img
            .names
            .iter()
            .map(|n| normalize_name(n))
            .collect::<Result<Vec<_>>>()?;
        let manifest = image::parse_manifest(bytes)?;
        let config_desc = manifest.value.config().clone();
        let config_digest = parse_digest(what, config_desc.digest())?;
        let config = image::read_config(store, &config_digest)?.value;
        let diff_ids = &config.rootfs.diff_ids;
        let layers = manifest.value.layers();
        if layers.len() != diff_ids.len() {
            return Err(ArchiveError::LayerCount {
                image: what(),
                layers: layers.len(),
                diff_ids: diff_ids.len(),
            });
        }

        let (out_layers, changed) =
            convert_layers(store, &img.manifest, layers, diff_ids, compression)?;
        for d in &out_layers {
            let digest = parse_digest(what, d.digest())?;
            self.add_store_blob(store, &digest)?;
        }
        self.add_store_blob(store, &config_digest)?;

        let manifest_desc = if changed {
            // Same config blob, so the image ID stays; only the layer descriptors change.
            let mut cfg = config_desc;
            if cfg.media_type().to_string() == media_type::DOCKER_CONFIG {
                cfg.set_media_type(MediaType::ImageConfig);
            }
            let annotations: Option<BTreeMap<String, String>> = manifest
                .value
                .annotations()
                .as_ref()
                .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
            let m =
                image::build_manifest(cfg, &out_layers, annotations.as_ref(), ManifestFormat::Oci)?;
            let bytes = image::manifest_to_vec(&m)?;
            let digest = Digest::of(&bytes);
            let desc = image::descriptor(media_type::OCI_MANIFEST, &digest, bytes.len() as u64);
            self.blobs.insert(digest, Source::Bytes(bytes));
            desc
        } else {
            self.add_store_blob(store, &img.manifest)?;
            let mt = declared.unwrap_or_else(|| media_type::OCI_MANIFEST.into());
            let size = self.blobs[&img.manifest].size();
            image::descriptor(&mt, &img.manifest, size)
        };

        let mut desc = manifest_desc;
        desc.set_platform(platform(&config));
        if names.is_empty() {
            self.push_index(desc.clone());
        }
        for name in &names {
            let mut named = desc.clone();
            let mut a = HashMap::new();
            a.insert(ANNOTATION_CONTAINERD_NAME.to_owned(), name.clone());
            if let Some(tag) = tag_of(name) {
                a.insert(ANNOTATION_REF_NAME.to_owned(), tag);
            }
            named.set_annotations(Some(a));
            self.push_index(named);
        }
        self.images.push(Planned {
            config: config_digest,
            layers: out_layers
                .iter()
                .map(|d| parse_digest(what, d.digest()))
                .collect::<Result<_>>()?,
            last_diff_id: diff_ids.last().cloned(),
            names,
        });
        Ok(())
    }

    fn push_index(&mut self, desc: Descriptor) {
        if !self.index.contains(&desc) {
            self.index.push(desc);
        }
    }

    /// `oci-layout`, `index.json`, `blobs/` and `blobs/sha256/` with every blob.
    fn layout_files(&self) -> Result<BTreeMap<String, Item>> {
        let mut files = BTreeMap::new();
        files.insert("blobs".to_owned(), Item::Dir);
        files.insert("blobs/sha256".to_owned(), Item::Dir);
        for (digest, source) in &self.blobs {
            files.insert(
                blob_path(digest),
                Item::Blob(digest.clone(), source.clone()),
            );
        }
        files.insert("oci-layout".to_owned(), Item::Bytes(OCI_LAYOUT.to_vec()));
        let index = image::build_index(self.index.clone(), None)?;
        files.insert(
            "index.json".to_owned(),
            Item::Bytes(image::index_to_vec(&index)?),
        );
        Ok(files)
    }

    /// docker's `manifest.json`: one entry per image, paths into `blobs/sha256/`.
    fn docker_manifest(&self) -> Result<Vec<u8>> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            repo_tags: Vec<String>,
            layers: Vec<String>,
        }
        let entries: Vec<Entry> = self
            .images
            .iter()
            .map(|img| Entry {
                config: blob_path(&img.config),
                repo_tags: img.names.iter().filter_map(|n| familiar_name(n)).collect(),
                layers: img.layers.iter().map(blob_path).collect(),
            })
            .collect();
        canonical(&entries, "manifest.json")
    }

    /// docker's legacy `repositories`: familiar repository → tag → top layer.
    ///
    /// docker 20.10 reads manifest.json when present and ignores this file; it is written for
    /// older readers, keyed by the last layer's diffID as the closest thing kiln has to docker's
    /// v1 layer IDs.
    fn repositories(&self) -> Result<Vec<u8>> {
        let mut repos: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for img in &self.images {
            let Some(top) = &img.last_diff_id else {
                continue;
            };
            for name in &img.names {
                if let Some((repo, tag)) = familiar_repo_and_tag(name) {
                    repos
                        .entry(repo)
                        .or_default()
                        .insert(tag, top.hex().to_owned());
                }
            }
        }
        canonical(&repos, "repositories")
    }
}

fn canonical<T: Serialize>(value: &T, file: &str) -> Result<Vec<u8>> {
    json::to_canonical_vec(value).map_err(|source| ArchiveError::Json {
        file: file.to_owned(),
        source,
    })
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Layer descriptors of manifest `manifest` with every layer in `compression` (re-encoded into
/// the store where needed; see [`precompress`] to do that in parallel first), and whether any
/// descriptor changed.
fn convert_layers(
    store: &Store,
    manifest: &Digest,
    layers: &[Descriptor],
    diff_ids: &[Digest],
    compression: Compression,
) -> Result<(Vec<Descriptor>, bool)> {
    let what = || format!("manifest {manifest}");
    let mut out_layers = Vec::with_capacity(layers.len());
    let mut changed = false;
    for (i, desc) in layers.iter().enumerate() {
        let digest = parse_digest(what, desc.digest())?;
        let mt = desc.media_type().to_string();
        let unsupported = || ArchiveError::UnsupportedLayer {
            manifest: manifest.clone(),
            digest: digest.clone(),
            media_type: mt.clone(),
            compression,
        };
        let current = Compression::from_media_type(&mt).ok_or_else(unsupported)?;
        if current.name() == compression.name() {
            // An uncompressed layer is its own diffID; anything else is a broken image that
            // every loader would refuse later, with a vaguer message.
            if current == Compression::None && digest != diff_ids[i] {
                return Err(ArchiveError::DiffIdMismatch {
                    layer: digest.to_string(),
                    image: what(),
                    index: i,
                    expected: diff_ids[i].clone(),
                    actual: digest,
                });
            }
            out_layers.push(desc.clone());
            continue;
        }
        let (blob, size) = reencode_layer(
            store,
            manifest,
            i,
            &digest,
            current,
            &diff_ids[i],
            compression,
        )?;
        out_layers.push(image::descriptor(compression.oci_media_type(), &blob, size));
        changed = true;
    }
    Ok((out_layers, changed))
}

/// The manifest to send to a registry for image `manifest`: layers in `compression` and media
/// types of `format` (`None`: the image's own, OCI or Docker), stored as a new blob when anything differs (the config blob, and so the
/// image ID, stays the same). An image already in that shape comes back unchanged, so pushing a
/// pulled image keeps its digest.
///
/// kiln stores the layers it builds uncompressed; registries and their clients expect them
/// compressed, and Docker media types cannot describe zstd layers (that is an error).
pub fn registry_manifest(
    store: &Store,
    manifest: &Digest,
    compression: Compression,
    format: Option<ManifestFormat>,
) -> Result<Digest> {
    let what = || format!("manifest {manifest}");
    let parsed = image::read_manifest(store, manifest)?;
    let config_desc = parsed.value.config().clone();
    let config_digest = parse_digest(what, config_desc.digest())?;
    let config = image::read_config(store, &config_digest)?.value;
    let layers = parsed.value.layers();
    if layers.len() != config.rootfs.diff_ids.len() {
        return Err(ArchiveError::LayerCount {
            image: what(),
            layers: layers.len(),
            diff_ids: config.rootfs.diff_ids.len(),
        });
    }
    let image = ExportImage {
        manifest: manifest.clone(),
        names: Vec::new(),
    };
    precompress(store, std::slice::from_ref(&image), compression)?;
    let (out_layers, changed) = convert_layers(
        store,
        manifest,
        layers,
        &config.rootfs.diff_ids,
        compression,
    )?;
    let declared = parsed
        .value
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| media_type::OCI_MANIFEST.to_owned());
    let format = format.unwrap_or(if declared == media_type::DOCKER_MANIFEST {
        ManifestFormat::Docker
    } else {
        ManifestFormat::Oci
    });
    if !changed && declared == format.manifest_media_type() {
        return Ok(manifest.clone());
    }
    let mut cfg = config_desc;
    cfg.set_media_type(MediaType::from(format.config_media_type()));
    let annotations: Option<BTreeMap<String, String>> = parsed
        .value
        .annotations()
        .as_ref()
        .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    let m = image::build_manifest(cfg, &out_layers, annotations.as_ref(), format)?;
    let (digest, _) = store.put_blob(&image::manifest_to_vec(&m)?)?;
    Ok(digest)
}

fn platform(config: &ImageConfig) -> Option<oci_spec::image::Platform> {
    if config.os.is_empty() || config.architecture.is_empty() {
        return None;
    }
    let mut b = oci_spec::image::PlatformBuilder::default()
        .os(Os::from(config.os.as_str()))
        .architecture(Arch::from(config.architecture.as_str()));
    if let Some(v) = &config.variant {
        b = b.variant(v.clone());
    }
    b.build().ok()
}

/// One layer to re-encode before planning.
struct Job {
    manifest: Digest,
    index: usize,
    blob: Digest,
    current: Compression,
    diff_id: Digest,
}

impl Job {
    fn run(&self, store: &Store, target: Compression) -> Result<(Digest, u64)> {
        reencode_layer(
            store,
            &self.manifest,
            self.index,
            &self.blob,
            self.current,
            &self.diff_id,
            target,
        )
    }
}

/// Re-encodes, on all cores, every layer of `images` that the export will need in another
/// compression and the store has not cached yet. gzip runs on one core per stream, so layers
/// are what there is to spread; zstd already uses every core for one layer and goes one at a
/// time. Errors in reading the images are left for [`Plan::add`] to report in order.
fn precompress(store: &Store, images: &[ExportImage], compression: Compression) -> Result<()> {
    let mut jobs: Vec<Job> = Vec::new();
    for img in images {
        let Ok(manifest) = image::read_manifest(store, &img.manifest) else {
            continue;
        };
        let Ok(config_digest) = Digest::from_oci(manifest.value.config().digest()) else {
            continue;
        };
        let Ok(config) = image::read_config(store, &config_digest) else {
            continue;
        };
        let diff_ids = &config.value.rootfs.diff_ids;
        for (i, (desc, diff_id)) in manifest.value.layers().iter().zip(diff_ids).enumerate() {
            let current = Compression::from_media_type(desc.media_type().as_ref());
            let Some(current) = current.filter(|c| c.name() != compression.name()) else {
                continue;
            };
            let Ok(blob) = Digest::from_oci(desc.digest()) else {
                continue;
            };
            let done = match compression {
                Compression::None => store.has_blob(diff_id),
                c => store.compressed_for(diff_id, c)?.is_some(),
            };
            if !done && !jobs.iter().any(|j| j.diff_id == *diff_id) {
                jobs.push(Job {
                    manifest: img.manifest.clone(),
                    index: i,
                    blob,
                    current,
                    diff_id: diff_id.clone(),
                });
            }
        }
    }
    let workers = match compression {
        Compression::Zstd { .. } => 1,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
    .min(jobs.len());
    if workers <= 1 {
        for job in &jobs {
            job.run(store, compression)?;
        }
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<ArchiveError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(k) else {
                    break;
                };
                if let Err(e) = job.run(store, compression) {
                    let mut slot = failed.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                    // Let the other workers stop at their next job.
                    next.store(jobs.len(), Ordering::Relaxed);
                    break;
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The layer `blob` (compressed as `current`, diffID `diff_id`) as a blob compressed with
/// `target`, made in the store if needed. Returns its digest and size.
fn reencode_layer(
    store: &Store,
    manifest: &Digest,
    index: usize,
    blob: &Digest,
    current: Compression,
    diff_id: &Digest,
    target: Compression,
) -> Result<(Digest, u64)> {
    if let Some(hit) = store.compressed_for(diff_id, target)? {
        return Ok(hit);
    }
    if !store.has_blob(diff_id) {
        // Stored compressed only (a pulled or loaded image): decompress once, keep the result.
        decompress_to_store(store, blob, diff_id).map_err(|e| match e {
            StoreError::DigestMismatch { expected, actual } => ArchiveError::DiffIdMismatch {
                layer: blob.to_string(),
                image: manifest.to_string(),
                index,
                expected,
                actual,
            },
            other => other.into(),
        })?;
        store.remember_compressed(diff_id, current, blob, store.blob_size(blob)?)?;
    }
    if target == Compression::None {
        return Ok((diff_id.clone(), store.blob_size(diff_id)?));
    }
    let info = layer::compress_layer(store, diff_id, target)?;
    Ok((info.digest, info.size))
}

/// Writes `files` (sorted by path) as a deterministic tar.
fn write_tar(store: &Store, files: &BTreeMap<String, Item>, out: &mut dyn Write) -> Result<()> {
    let mut buffered = BufWriter::with_capacity(OUT_BUFFER, out);
    let mut w = LayerWriter::new(&mut buffered);
    for (path, item) in files {
        match item {
            Item::Dir => w
                .append(&TarEntry::dir(path.as_str()), None)
                .map_err(ArchiveError::Tar)?,
            Item::Bytes(b) => w
                .append(
                    &TarEntry::file(path.as_str(), b.len() as u64),
                    Some(&mut &b[..]),
                )
                .map_err(ArchiveError::Tar)?,
            Item::Blob(digest, Source::Bytes(b)) => {
                debug_assert_eq!(Digest::of(b), *digest);
                w.append(
                    &TarEntry::file(path.as_str(), b.len() as u64),
                    Some(&mut &b[..]),
                )
                .map_err(ArchiveError::Tar)?
            }
            Item::Blob(digest, Source::Store(size)) => {
                // Re-hash on the way out: a damaged store must not produce a quietly bad tar.
                let mut r = Sha256Reader::new(store.open_blob(digest)?);
                w.append(&TarEntry::file(path.as_str(), *size), Some(&mut r))
                    .map_err(ArchiveError::Tar)?;
                let (_, actual, _) = r.finish();
                if actual != *digest {
                    return Err(ArchiveError::DigestMismatch {
                        what: format!("store blob {digest}"),
                        expected: digest.clone(),
                        actual,
                    });
                }
            }
        }
    }
    w.finish().map_err(ArchiveError::Tar)?;
    drop(w);
    buffered.flush().map_err(|source| ArchiveError::Write {
        what: "archive".into(),
        source,
    })
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io { op, path, source }
}

/// Prepares `dir` to receive a layout: creates it, or checks that what is there is a layout of
/// a version we write. Returns its index.json, if it has one.
fn open_layout_dir(dir: &Path) -> Result<Option<ImageIndex>> {
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let layout = dir.join("oci-layout");
    match fs::read(&layout) {
        Ok(bytes) => check_layout_version(&layout.display().to_string(), &bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut entries = fs::read_dir(dir).map_err(io_err("read directory", dir))?;
            if let Some(entry) = entries.next() {
                let entry = entry.map_err(io_err("read directory", dir))?;
                return Err(ArchiveError::NotALayout {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "not empty ({:?}) and has no oci-layout file",
                        entry.file_name()
                    ),
                });
            }
            return Ok(None);
        }
        Err(e) => return Err(io_err("read", &layout)(e)),
    }
    let index_path = dir.join("index.json");
    let file = match File::open(&index_path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", &index_path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_INDEX + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", &index_path))?;
    if bytes.len() as u64 > MAX_INDEX {
        return Err(ArchiveError::JsonTooLarge {
            entry: index_path.display().to_string(),
            size: bytes.len() as u64,
            limit: MAX_INDEX,
        });
    }
    json::oci_from_slice(&bytes)
        .map(Some)
        .map_err(|source| ArchiveError::Json {
            file: index_path.display().to_string(),
            source,
        })
}

/// Accepts `oci-layout` files of version 1.x, the only major version there is.
pub(super) fn check_layout_version(file: &str, bytes: &[u8]) -> Result<()> {
    let v: Value = serde_json::from_slice(bytes).map_err(|source| ArchiveError::Json {
        file: file.to_owned(),
        source,
    })?;
    match v.get("imageLayoutVersion").and_then(Value::as_str) {
        Some(ver) if ver.starts_with("1.") => Ok(()),
        other => Err(ArchiveError::LayoutVersion {
            file: file.to_owned(),
            version: other.unwrap_or("<missing>").chars().take(50).collect(),
        }),
    }
}

/// Two index entries that name the same image, so the new one replaces the old.
fn same_name(old: &Descriptor, new: &Descriptor) -> bool {
    let get = |d: &Descriptor, k: &str| d.annotations().as_ref().and_then(|a| a.get(k)).cloned();
    match get(old, ANNOTATION_CONTAINERD_NAME) {
        Some(name) => get(new, ANNOTATION_CONTAINERD_NAME) == Some(name),
        None => {
            let old_ref = get(old, ANNOTATION_REF_NAME);
            old_ref.is_some() && old_ref == get(new, ANNOTATION_REF_NAME)
        }
    }
}

/// Copies one blob into a layout's `blobs/sha256/`, unless a file of the right size is there.
fn write_blob_file(
    store: &Store,
    blobs_dir: &Path,
    digest: &Digest,
    source: &Source,
) -> Result<()> {
    let target = blobs_dir.join(digest.hex());
    if fs::metadata(&target).is_ok_and(|m| m.is_file() && m.len() == source.size()) {
        return Ok(());
    }
    let mut temp = DirTemp::create(blobs_dir, digest.hex())?;
    let actual = match source {
        Source::Bytes(b) => {
            temp.write_all(b)?;
            Digest::of(b)
        }
        Source::Store(_) => {
            let mut r = Sha256Reader::new(store.open_blob(digest)?);
            io::copy(&mut r, &mut temp.file).map_err(io_err("write", &temp.path))?;
            r.finish().1
        }
    };
    if actual != *digest {
        return Err(ArchiveError::DigestMismatch {
            what: format!("store blob {digest}"),
            expected: digest.clone(),
            actual,
        });
    }
    temp.persist(&target)
}

/// Writes `bytes` to `target` through a temp file beside it and a rename, so readers see the
/// old file or the whole new one.
fn write_file_atomic(target: &Path, bytes: &[u8]) -> Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut temp = DirTemp::create(dir, &name)?;
    temp.write_all(bytes)?;
    temp.persist(target)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// A temp file in an output directory, deleted unless persisted. Dot-named so tools listing
/// `blobs/sha256/` skip it if a crash leaves it behind.
struct DirTemp {
    file: File,
    path: PathBuf,
    keep: bool,
}

impl DirTemp {
    fn create(dir: &Path, stem: &str) -> Result<DirTemp> {
        let path = dir.join(format!(".{stem}.{}.kiln-tmp", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        Ok(DirTemp {
            file,
            path,
            keep: false,
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(io_err("write", &self.path))
    }

    fn persist(mut self, target: &Path) -> Result<()> {
        self.file.sync_all().map_err(io_err("fsync", &self.path))?;
        fs::rename(&self.path, target).map_err(io_err("rename into place", target))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for DirTemp {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}
