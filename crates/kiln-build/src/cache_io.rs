//! Sharing the build cache between machines: `--cache-to` and `--cache-from`.
//!
//! An exported cache is an OCI image manifest whose config blob (media type
//! [`CACHE_CONFIG_MEDIA_TYPE`]) lists step records — cache key, time, and the index of the
//! step's layer — and whose layers are those layers, gzip-compressed. It goes to an OCI layout
//! directory (`type=local`) or to a registry (`type=registry`), where any registry stores it
//! like an image. `type=inline` puts the same list into the built image's config under
//! [`INLINE_KEY`], its layer indexes pointing at the image's own layers, so pushing the image
//! is pushing its cache.
//!
//! On import only the list is read. A layer is fetched when a step's key matches, and then
//! stored and recorded like a step kiln ran itself: a second machine downloads the layers of
//! the steps it reuses and nothing else.

use crate::cache::Record;
use kiln_oci::digest::Digest;
use kiln_oci::image::{self, media_type, ManifestFormat};
use kiln_oci::reference::Reference;
use kiln_oci::store::Store;
use kiln_oci::{Compression, ImageConfig};
use kiln_registry::Client;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Media type of an exported cache's config blob.
pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.build-cache.config.v1+json";
/// The largest step list (config blob) kiln reads from a registry.
const MAX_CACHE_LIST: u64 = 64 << 20;
/// Image config field that carries an inline cache.
pub const INLINE_KEY: &str = "kiln.build-cache.v1";

/// Where a cache goes or comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheLocation {
    /// An OCI layout directory.
    Local(PathBuf),
    /// An image reference in a registry (for `--cache-from`, also an image with an inline
    /// cache).
    Registry(Reference),
    /// The built image's own config (`--cache-to` only).
    Inline,
}

/// One `--cache-to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheExport {
    /// Where.
    pub location: CacheLocation,
    /// `mode=max`: every stage's steps; otherwise only those of the target stage and the
    /// stages it is built FROM (the final image's layers).
    pub max: bool,
}

impl CacheLocation {
    /// Parses `type=local,src|dest=DIR`, `type=registry,ref=REF`, `type=inline`, or a bare
    /// `REF` (a registry). Returns the location and `mode=max`.
    pub fn parse(s: &str) -> Result<(CacheLocation, bool), String> {
        if !s.contains('=') {
            let r = Reference::parse(s).map_err(|e| format!("{s:?}: {e}"))?;
            return Ok((CacheLocation::Registry(r), false));
        }
        let mut kind = None;
        let mut path = None;
        let mut reference = None;
        let mut max = false;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("type", t)) => kind = Some(t.to_owned()),
                Some(("src" | "dest", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
                Some(("ref", r)) => {
                    reference = Some(Reference::parse(r).map_err(|e| format!("{s:?}: {e}"))?)
                }
                Some(("mode", "max")) => max = true,
                Some(("mode", "min")) => max = false,
                // BuildKit options kiln accepts and has no use for.
                Some(("compression" | "oci-mediatypes" | "ignore-error", _)) => {}
                _ => return Err(format!("{s:?}: unknown option {part:?}")),
            }
        }
        let location = match kind.as_deref() {
            Some("local") => CacheLocation::Local(
                path.ok_or_else(|| format!("{s:?}: type=local needs dest= (or src=)"))?,
            ),
            Some("registry") => CacheLocation::Registry(
                reference.ok_or_else(|| format!("{s:?}: type=registry needs ref=REF"))?,
            ),
            Some("inline") => CacheLocation::Inline,
            Some(other) => {
                return Err(format!(
                    "{s:?}: unknown type {other:?} (use local, registry or inline)"
                ))
            }
            None => return Err(format!("{s:?}: type= is missing")),
        };
        Ok((location, max))
    }
}

/// The list of step records, as exported.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CacheDoc {
    records: Vec<DocRecord>,
    /// Layer diffIDs, in the manifest's layer order (empty inline: the image's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct DocRecord {
    key: Digest,
    created: (i64, u32),
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layer: Option<usize>,
}

/// A layer as an imported cache has it.
#[derive(Clone, Debug)]
pub struct RemoteLayer {
    digest: Digest,
    size: u64,
    diff_id: Digest,
}

impl RemoteLayer {
    /// The uncompressed layer's digest.
    pub fn diff_id(&self) -> &Digest {
        &self.diff_id
    }
}

/// Where an imported cache's blobs are.
enum Blobs {
    Dir(PathBuf),
    Registry(Box<Client>, Reference),
}

/// An imported cache.
pub struct Imported {
    records: HashMap<Digest, ((i64, u32), Option<RemoteLayer>)>,
    blobs: Blobs,
    /// For messages.
    pub name: String,
}

impl Imported {
    /// Reads the cache in the OCI layout `dir`.
    pub fn open_local(dir: &Path) -> Result<Imported, String> {
        let name = dir.display().to_string();
        let read = |p: PathBuf| std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()));
        let blob = |d: &Digest| read(dir.join("blobs/sha256").join(d.hex()));
        let index: serde_json::Value = serde_json::from_slice(&read(dir.join("index.json"))?)
            .map_err(|e| format!("{name}/index.json: {e}"))?;
        let manifest = index["manifests"][0]["digest"]
            .as_str()
            .and_then(|d| d.parse::<Digest>().ok())
            .ok_or_else(|| format!("{name}: index.json names no manifest"))?;
        let bytes = blob(&manifest)?;
        if Digest::of(&bytes) != manifest {
            return Err(format!(
                "{name}: manifest {manifest} does not match its digest"
            ));
        }
        let (doc, layers) = parse(&name, bytes, |d, _| {
            let b = blob(d)?;
            if Digest::of(&b) != *d {
                return Err(format!("{name}: blob {d} does not match its digest"));
            }
            Ok(b)
        })?;
        Ok(Imported::new(
            name,
            doc,
            layers,
            Blobs::Dir(dir.to_path_buf()),
        ))
    }

    /// Reads the cache (or an image with an inline cache) at `reference`. Its config blob (the
    /// step list) is fetched into `store`, so the next build with this cache reads it locally.
    pub fn open_registry(
        client: Client,
        reference: &Reference,
        store: &Store,
    ) -> Result<Imported, String> {
        let name = reference.to_string();
        let (_, mt, bytes) = client.manifest(reference).map_err(|e| e.to_string())?;
        if media_type::is_index(&mt) {
            return Err(format!(
                "{name} is a multi-platform index; name one platform's image as the cache"
            ));
        }
        let (doc, layers) = parse(&name, bytes, |d, size| {
            if size > MAX_CACHE_LIST {
                return Err(format!(
                    "{name}: its config blob is {size} bytes, too large"
                ));
            }
            client
                .blob(store, reference, d, size)
                .map_err(|e| e.to_string())?;
            store
                .read_blob(d, MAX_CACHE_LIST)
                .map_err(|e| e.to_string())
        })?;
        Ok(Imported::new(
            name,
            doc,
            layers,
            Blobs::Registry(Box::new(client), reference.clone()),
        ))
    }

    fn new(name: String, doc: CacheDoc, layers: Vec<RemoteLayer>, blobs: Blobs) -> Imported {
        let records = doc
            .records
            .into_iter()
            .filter_map(|r| match r.layer {
                None => Some((r.key, (r.created, None))),
                Some(i) => layers.get(i).map(|l| (r.key, (r.created, Some(l.clone())))),
            })
            .collect();
        Imported {
            records,
            blobs,
            name,
        }
    }

    /// Steps the cache holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The step with `key`: its time and layer.
    pub fn find(&self, key: &Digest) -> Option<((i64, u32), Option<RemoteLayer>)> {
        self.records.get(key).cloned()
    }

    /// Makes `layer` a stored uncompressed layer of `store` (fetching and decompressing it
    /// unless the store has it). Returns its size.
    pub fn fetch(&self, store: &Store, layer: &RemoteLayer) -> Result<u64, String> {
        if let Ok(n) = store.blob_size(&layer.diff_id) {
            return Ok(n);
        }
        match &self.blobs {
            Blobs::Dir(dir) => {
                if !store.has_blob(&layer.digest) {
                    let path = dir.join("blobs/sha256").join(layer.digest.hex());
                    let mut src = std::fs::File::open(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    let mut w = store.blob_writer().map_err(|e| e.to_string())?;
                    std::io::copy(&mut src, &mut w).map_err(|e| e.to_string())?;
                    w.commit(Some(&layer.digest)).map_err(|e| e.to_string())?;
                }
            }
            Blobs::Registry(client, reference) => {
                client
                    .blob(store, reference, &layer.digest, layer.size)
                    .map_err(|e| e.to_string())?;
            }
        }
        if layer.digest != layer.diff_id {
            kiln_oci::archive::decompress_to_store(store, &layer.digest, &layer.diff_id)
                .map_err(|e| format!("layer {}: {e}", layer.diff_id))?;
            // The compressed blob is kept for pushes and exports.
            let _ = store.remember_compressed(
                &layer.diff_id,
                Compression::GZIP,
                &layer.digest,
                layer.size,
            );
        }
        store.blob_size(&layer.diff_id).map_err(|e| e.to_string())
    }
}

/// Reads a cache manifest (or an image manifest with an inline cache) and its config.
fn parse(
    name: &str,
    manifest: Vec<u8>,
    mut blob: impl FnMut(&Digest, u64) -> Result<Vec<u8>, String>,
) -> Result<(CacheDoc, Vec<RemoteLayer>), String> {
    let m = image::parse_manifest(manifest).map_err(|e| format!("{name}: {e}"))?;
    let config_desc = m.value.config();
    let config_digest: Digest =
        Digest::from_oci(config_desc.digest()).map_err(|e| e.to_string())?;
    let config = blob(&config_digest, config_desc.size())?;
    let (doc, diff_ids) = if config_desc.media_type().to_string() == CACHE_CONFIG_MEDIA_TYPE {
        let doc: CacheDoc =
            serde_json::from_slice(&config).map_err(|e| format!("{name}: cache list: {e}"))?;
        let ids = doc.diff_ids.clone();
        (doc, ids)
    } else {
        let image =
            ImageConfig::from_slice(&config).map_err(|e| format!("{name}: image config: {e}"))?;
        let doc: CacheDoc = match image.extra.get(INLINE_KEY) {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| format!("{name}: inline cache: {e}"))?,
            None => return Err(format!("{name} is an image without an inline build cache")),
        };
        (doc, image.rootfs.diff_ids)
    };
    let layers = m.value.layers();
    if layers.len() != diff_ids.len() {
        return Err(format!(
            "{name}: {} layers but {} diffIDs",
            layers.len(),
            diff_ids.len()
        ));
    }
    let remote = layers
        .iter()
        .zip(diff_ids)
        .map(|(d, diff_id)| {
            Ok(RemoteLayer {
                digest: Digest::from_oci(d.digest()).map_err(|e| e.to_string())?,
                size: d.size(),
                diff_id,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok((doc, remote))
}

/// The records of a build to export: (key, record), in build order.
pub type Steps = [(Digest, Record)];

/// Writes `steps` as an inline cache into `config`, whose layers are `diff_ids`. Steps whose
/// layer is not one of them are left out.
pub fn add_inline(config: &mut ImageConfig, steps: &Steps) {
    let index: HashMap<&Digest, usize> = config
        .rootfs
        .diff_ids
        .iter()
        .enumerate()
        .map(|(i, d)| (d, i))
        .collect();
    let records = steps
        .iter()
        .filter_map(|(key, r)| {
            let layer = match &r.layer {
                Some(l) => Some(*index.get(&l.diff_id)?),
                None => None,
            };
            Some(DocRecord {
                key: key.clone(),
                created: r.created,
                layer,
            })
        })
        .collect();
    let doc = CacheDoc {
        records,
        diff_ids: Vec::new(),
    };
    if let Ok(v) = serde_json::to_value(doc) {
        config.extra.insert(INLINE_KEY.to_owned(), v);
    }
}

/// Writes `steps` as a cache manifest into `store` (gzip layers, compressed once); returns
/// its digest, and the blobs it references.
fn write_manifest(store: &Store, steps: &Steps) -> Result<(Digest, Vec<Digest>), String> {
    let mut layers = Vec::new();
    let mut diff_ids: Vec<Digest> = Vec::new();
    let mut position: BTreeMap<Digest, usize> = BTreeMap::new();
    let mut records = Vec::new();
    for (key, r) in steps {
        let layer = match &r.layer {
            None => None,
            Some(l) => Some(match position.get(&l.diff_id) {
                Some(&i) => i,
                None => {
                    let info =
                        kiln_oci::layer::compress_layer(store, &l.diff_id, Compression::GZIP)
                            .map_err(|e| format!("compressing layer {}: {e}", l.diff_id))?;
                    layers.push(image::descriptor(info.media_type, &info.digest, info.size));
                    diff_ids.push(l.diff_id.clone());
                    position.insert(l.diff_id.clone(), layers.len() - 1);
                    layers.len() - 1
                }
            }),
        };
        records.push(DocRecord {
            key: key.clone(),
            created: r.created,
            layer,
        });
    }
    let doc = CacheDoc { records, diff_ids };
    let config = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
    let (cd, cs) = store.put_blob(&config).map_err(|e| e.to_string())?;
    let manifest = image::build_manifest(
        image::descriptor(CACHE_CONFIG_MEDIA_TYPE, &cd, cs),
        &layers,
        None,
        ManifestFormat::Oci,
    )
    .map_err(|e| e.to_string())?;
    let bytes = image::manifest_to_vec(&manifest).map_err(|e| e.to_string())?;
    let (md, _) = store.put_blob(&bytes).map_err(|e| e.to_string())?;
    let mut blobs = vec![md.clone(), cd];
    for l in &layers {
        blobs.push(Digest::from_oci(l.digest()).map_err(|e| e.to_string())?);
    }
    Ok((md, blobs))
}

/// Exports `steps` to a layout directory or a registry. Returns a summary line.
pub fn export(
    store: &Store,
    steps: &Steps,
    location: &CacheLocation,
    client: impl FnOnce() -> Client,
) -> Result<String, String> {
    let (manifest, blobs) = write_manifest(store, steps)?;
    match location {
        CacheLocation::Local(dir) => {
            write_layout(store, dir, &manifest, &blobs)?;
            Ok(format!("cache: {} steps to {}", steps.len(), dir.display()))
        }
        CacheLocation::Registry(reference) => {
            let report = client()
                .push(store, &manifest, reference)
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "cache: {} steps to {} ({} blobs uploaded)",
                steps.len(),
                reference.familiar(),
                report.blobs_uploaded
            ))
        }
        CacheLocation::Inline => Err("an inline cache is written into the image".into()),
    }
}

/// Copies `blobs` into the OCI layout `dir` and points its index.json at `manifest`.
fn write_layout(
    store: &Store,
    dir: &Path,
    manifest: &Digest,
    blobs: &[Digest],
) -> Result<(), String> {
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    let blob_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir).map_err(|e| io("creating", &blob_dir, e))?;
    for d in blobs {
        let target = blob_dir.join(d.hex());
        if target.exists() {
            continue;
        }
        let tmp = blob_dir.join(format!(".{}.tmp-{}", d.hex(), std::process::id()));
        std::fs::copy(store.blob_path(d), &tmp).map_err(|e| io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &target).map_err(|e| io("writing", &target, e))?;
    }
    let layout = dir.join("oci-layout");
    std::fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| io("writing", &layout, e))?;
    let size = store.blob_size(manifest).map_err(|e| e.to_string())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": [{
            "mediaType": media_type::OCI_MANIFEST,
            "digest": manifest.to_string(),
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"}
        }]
    });
    let path = dir.join("index.json");
    let tmp = dir.join(format!(".index.json.tmp-{}", std::process::id()));
    std::fs::write(&tmp, index.to_string()).map_err(|e| io("writing", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("writing", &path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_specs() {
        let (l, max) = CacheLocation::parse("type=local,dest=/tmp/c,mode=max").unwrap();
        assert_eq!(l, CacheLocation::Local("/tmp/c".into()));
        assert!(max);
        let (r, max) = CacheLocation::parse("type=registry,ref=localhost:5000/c:1").unwrap();
        assert!(matches!(r, CacheLocation::Registry(_)));
        assert!(!max);
        assert_eq!(
            CacheLocation::parse("type=inline").unwrap().0,
            CacheLocation::Inline
        );
        assert!(matches!(
            CacheLocation::parse("localhost:5000/app:1").unwrap().0,
            CacheLocation::Registry(_)
        ));
        for bad in [
            "type=s3,ref=x",
            "type=local",
            "type=registry",
            "type=local,dest=x,foo=1",
        ] {
            assert!(CacheLocation::parse(bad).is_err(), "{bad}");
        }
    }
}
