//! Pulling an image into the store.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use kiln_oci::digest::Digest;
use kiln_oci::image::{self, media_type, MAX_MANIFEST_SIZE};
use kiln_oci::reference::Reference;
use kiln_oci::store::{Store, StoreError};
use oci_spec::image::Descriptor;
use ureq::http::Response;
use ureq::Body;

use crate::client::{Client, Target};
use crate::error::{RegistryError, Result};
use crate::progress::Transfer;

/// Concurrent blob downloads: enough to overlap latency, few enough not to annoy registries.
const DOWNLOAD_THREADS: usize = 3;

/// Every manifest type we can read, so the registry never has to down-convert (which would
/// change the digest).
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The platform to pick from a multi-platform image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture in Go's spelling, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// CPU variant, e.g. `v7`; None accepts any variant.
    pub variant: Option<String>,
}

impl Platform {
    /// A platform without a variant.
    pub fn new(os: &str, architecture: &str) -> Platform {
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    /// The same platform with a variant.
    pub fn with_variant(mut self, variant: &str) -> Platform {
        self.variant = Some(variant.to_owned());
        self
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// Descriptor of the stored (platform-specific) manifest; the tag points at it.
    pub descriptor: Descriptor,
    /// The manifest's digest.
    pub digest: Digest,
    /// Blobs (config and layers) downloaded; 0 when the store already had them all.
    pub blobs_fetched: usize,
    /// Bytes of those blobs.
    pub bytes_fetched: u64,
}

/// A manifest as fetched (already checked against its digest): exact bytes and media type.
struct Fetched {
    bytes: Vec<u8>,
    media_type: String,
}

impl Client {
    /// Pulls `reference` into `store` and tags it there as `reference.to_string()`.
    ///
    /// An index or manifest list is resolved to the manifest for `platform`; only that manifest
    /// is stored. Blobs the store already has are not downloaded. Every blob and manifest is
    /// checked against its digest before the store accepts it, and the tag is set last, so an
    /// interrupted pull leaves at most unreferenced blobs behind. The store then records the
    /// repository as an origin of each blob, for cross-repository mounts on push.
    pub fn pull(
        &self,
        store: &Store,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<PullReport> {
        let image = reference.to_string();
        let t = Target::repo(&image, reference, false);
        let (tag_or_digest, pinned) = manifest_ref(&t, reference)?;
        let mut manifest = self.fetch_manifest(&t, &tag_or_digest, pinned.as_ref())?;
        if media_type::is_index(&manifest.media_type) {
            let index =
                image::parse_index(manifest.bytes).map_err(|source| RegistryError::Image {
                    image: image.clone(),
                    source,
                })?;
            let chosen = choose_platform(&t, index.value.manifests(), platform)?;
            let digest =
                Digest::from_oci(chosen.digest()).map_err(|source| RegistryError::Digest {
                    image: image.clone(),
                    source,
                })?;
            manifest = self.fetch_manifest(&t, digest.as_str(), Some(&digest))?;
            if !media_type::is_manifest(&manifest.media_type) {
                return Err(RegistryError::UnsupportedMediaType {
                    image,
                    media_type: manifest.media_type,
                });
            }
        } else if !media_type::is_manifest(&manifest.media_type) {
            return Err(RegistryError::UnsupportedMediaType {
                image,
                media_type: manifest.media_type,
            });
        }

        let parsed =
            image::parse_manifest(manifest.bytes).map_err(|source| RegistryError::Image {
                image: image.clone(),
                source,
            })?;
        let mut wanted: Vec<(Digest, u64)> = Vec::new();
        let mut all: Vec<Digest> = Vec::new();
        for d in std::iter::once(parsed.value.config()).chain(parsed.value.layers()) {
            let digest = Digest::from_oci(d.digest()).map_err(|source| RegistryError::Digest {
                image: image.clone(),
                source,
            })?;
            if !store.has_blob(&digest) && !wanted.iter().any(|(w, _)| *w == digest) {
                wanted.push((digest.clone(), d.size()));
            }
            all.push(digest);
        }
        let bytes_fetched = self.fetch_blobs(store, &t, &wanted)?;

        // The manifest goes in only after everything it references, so the store never holds
        // a manifest with missing blobs.
        let store_err = |source| RegistryError::Store {
            image: image.clone(),
            source,
        };
        let (digest, size) = store.put_blob(&parsed.bytes).map_err(store_err)?;
        let descriptor = image::descriptor(&manifest.media_type, &digest, size);
        store.set_tag(&image, &descriptor).map_err(store_err)?;
        // Every blob of the image is now known to live in this repository, so a later push to
        // another repository of this registry can mount it (see `Client::push`).
        remember_origins(store, reference, &all);
        Ok(PullReport {
            descriptor,
            digest,
            blobs_fetched: wanted.len(),
            bytes_fetched,
        })
    }

    /// The manifest (or index) `reference` names, as exact bytes with its media type and
    /// digest, without storing anything: for documents kiln reads itself, such as build
    /// caches.
    pub fn manifest(&self, reference: &Reference) -> Result<(Digest, String, Vec<u8>)> {
        let image = reference.to_string();
        let t = Target::repo(&image, reference, false);
        let (tag_or_digest, pinned) = manifest_ref(&t, reference)?;
        let m = self.fetch_manifest(&t, &tag_or_digest, pinned.as_ref())?;
        Ok((Digest::of(&m.bytes), m.media_type, m.bytes))
    }

    /// Downloads blob `digest` (`size` bytes) of `reference`'s repository into `store`, checked
    /// against its digest; nothing when the store has it. Returns the bytes fetched.
    pub fn blob(
        &self,
        store: &Store,
        reference: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<u64> {
        if store.has_blob(digest) {
            return Ok(0);
        }
        let image = reference.to_string();
        let t = Target::repo(&image, reference, false);
        let n = self.fetch_blob(store, &t, digest, size)?;
        remember_origins(store, reference, std::slice::from_ref(digest));
        Ok(n)
    }

    /// GETs a manifest by tag or digest and checks its bytes against `expected` (when pinned)
    /// or the registry's `Docker-Content-Digest`.
    fn fetch_manifest(
        &self,
        t: &Target<'_>,
        tag_or_digest: &str,
        expected: Option<&Digest>,
    ) -> Result<Fetched> {
        let repo = t.repo.unwrap_or_default();
        let url = self.url(t.domain, &format!("/v2/{repo}/manifests/{tag_or_digest}"));
        let resp = self.send(t, |auth| {
            self.get(&url, auth)
                .header("Accept", MANIFEST_ACCEPT)
                .call()
        })?;
        let mut resp = self.check(t, resp, &format!("manifest {tag_or_digest}"))?;
        let header_digest = header(&resp, "docker-content-digest");
        let content_type = header(&resp, "content-type");
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST_SIZE)
            .read_to_vec()
            .map_err(|e| RegistryError::Io {
                image: t.image.to_owned(),
                what: format!("reading manifest {tag_or_digest}"),
                source: io::Error::other(e),
            })?;
        let digest = Digest::of(&bytes);
        let promised = match expected {
            Some(d) => Some(d.as_str().to_owned()),
            None => header_digest,
        };
        if let Some(p) = promised {
            if p != digest.as_str() {
                return Err(RegistryError::DigestMismatch {
                    image: t.image.to_owned(),
                    what: format!("manifest {tag_or_digest}"),
                    expected: p,
                    actual: digest.to_string(),
                });
            }
        }
        let media_type = media_type_of(content_type.as_deref(), &bytes);
        Ok(Fetched { bytes, media_type })
    }

    /// Downloads `blobs` with a few worker threads; returns the bytes fetched.
    fn fetch_blobs(&self, store: &Store, t: &Target<'_>, blobs: &[(Digest, u64)]) -> Result<u64> {
        let next = Mutex::new(blobs.iter());
        let total = AtomicU64::new(0);
        let first_error: Mutex<Option<RegistryError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..DOWNLOAD_THREADS.min(blobs.len()) {
                s.spawn(|| loop {
                    // Stop taking work once any download failed: the pull fails anyway.
                    if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        return;
                    }
                    let item = match next.lock() {
                        Ok(mut it) => it.next(),
                        Err(_) => None,
                    };
                    let Some((digest, size)) = item else { return };
                    match self.fetch_blob(store, t, digest, *size) {
                        Ok(n) => {
                            total.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(e);
                            }
                            return;
                        }
                    }
                });
            }
        });
        match first_error.into_inner() {
            Ok(Some(e)) => Err(e),
            _ => Ok(total.into_inner()),
        }
    }

    /// Streams one blob into the store. The store's writer hashes as it goes and `commit`
    /// refuses a mismatch, so bad content never lands under `blobs/`. A broken connection mid
    /// body is retried from the start (the partial temp file is dropped).
    fn fetch_blob(&self, store: &Store, t: &Target<'_>, digest: &Digest, size: u64) -> Result<u64> {
        let repo = t.repo.unwrap_or_default();
        let url = self.url(t.domain, &format!("/v2/{repo}/blobs/{digest}"));
        let what = format!("blob {digest}");
        let mut attempt = 0;
        self.report(Transfer::Start {
            digest,
            size,
            upload: false,
        });
        let report = |done| self.report(Transfer::Progress { digest, done });
        loop {
            attempt += 1;
            let resp = self.send(t, |auth| self.get(&url, auth).call())?;
            let resp = self.check(t, resp, &what)?;
            match copy_blob(store, t, resp, digest, size, &report) {
                // The partial temp file was dropped with its writer; start over.
                Err(CopyError::Network(_)) if attempt < 3 => continue,
                Err(CopyError::Network(e)) => {
                    return Err(RegistryError::Io {
                        image: t.image.to_owned(),
                        what: format!("downloading {what}"),
                        source: e,
                    })
                }
                Err(CopyError::Fatal(e)) => return Err(e),
                Ok(n) => {
                    self.report(Transfer::Done {
                        digest,
                        how: "downloaded",
                    });
                    return Ok(n);
                }
            }
        }
    }
}

enum CopyError {
    /// Reading the response failed: worth another try.
    Network(io::Error),
    /// Anything else.
    Fatal(RegistryError),
}

fn copy_blob(
    store: &Store,
    t: &Target<'_>,
    mut resp: Response<Body>,
    digest: &Digest,
    size: u64,
    report: &dyn Fn(u64),
) -> std::result::Result<u64, CopyError> {
    let store_err = |source| {
        CopyError::Fatal(RegistryError::Store {
            image: t.image.to_owned(),
            source,
        })
    };
    let mut w = store.blob_writer().map_err(store_err)?;
    // Read at most one byte past the declared size: enough to detect an overlong blob without
    // letting a hostile server fill the disk. ureq's own body limit is lifted since the size
    // check is ours.
    let mut body = resp
        .body_mut()
        .with_config()
        .limit(size.saturating_add(1))
        .reader();
    let mut buf = vec![0u8; 256 * 1024];
    let mut received: u64 = 0;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The whole blob arrived before the connection broke: keep it, the digest check
            // at commit decides whether it is good.
            Err(_) if received == size => break,
            Err(e) => return Err(CopyError::Network(e)),
        };
        received += n as u64;
        if received > size {
            break;
        }
        report(received);
        w.write_all(&buf[..n]).map_err(|e| {
            CopyError::Fatal(RegistryError::Io {
                image: t.image.to_owned(),
                what: format!("writing blob {digest} to the store"),
                source: e,
            })
        })?;
    }
    if received != size {
        return Err(CopyError::Fatal(RegistryError::SizeMismatch {
            image: t.image.to_owned(),
            digest: digest.clone(),
            expected: size,
            actual: received,
        }));
    }
    match w.commit(Some(digest)) {
        Ok((_, n)) => Ok(n),
        Err(StoreError::DigestMismatch { expected, actual }) => {
            Err(CopyError::Fatal(RegistryError::DigestMismatch {
                image: t.image.to_owned(),
                what: "blob".to_owned(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            }))
        }
        Err(e) => Err(store_err(e)),
    }
}

/// The manifest for `want` from an index: exact os and architecture, and the variant when one
/// is asked for.
fn choose_platform<'d>(
    t: &Target<'_>,
    manifests: &'d [Descriptor],
    want: &Platform,
) -> Result<&'d Descriptor> {
    let found = manifests.iter().find(|d| {
        d.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == want.os
                && p.architecture().to_string() == want.architecture
                && match &want.variant {
                    Some(v) => p.variant().as_deref() == Some(v.as_str()),
                    None => true,
                }
        })
    });
    found.ok_or_else(|| {
        let available: Vec<String> = manifests
            .iter()
            .filter_map(|d| d.platform().as_ref())
            .map(|p| {
                let mut s = format!("{}/{}", p.os(), p.architecture());
                if let Some(v) = p.variant() {
                    s.push('/');
                    s.push_str(v);
                }
                s
            })
            .collect();
        RegistryError::NoPlatform {
            image: t.image.to_owned(),
            wanted: want.to_string(),
            available: if available.is_empty() {
                "(none)".to_owned()
            } else {
                available.join(", ")
            },
        }
    })
}

/// What names the manifest in the URL (the digest, else the tag, else `latest`), and the
/// digest its bytes must have when the reference pins one.
fn manifest_ref(t: &Target<'_>, reference: &Reference) -> Result<(String, Option<Digest>)> {
    Ok(match (&reference.digest, &reference.tag) {
        (Some(d), _) => (d.clone(), Some(parse_digest(t, d)?)),
        (None, Some(tag)) => (tag.clone(), None),
        (None, None) => ("latest".to_owned(), None),
    })
}

fn parse_digest(t: &Target<'_>, d: &str) -> Result<Digest> {
    d.parse::<Digest>().map_err(|source| RegistryError::Digest {
        image: t.image.to_owned(),
        source,
    })
}

/// Records that `blobs` exist in `reference`'s repository. Best effort: origins are only hints
/// for mounting, so failing to write one must not fail the pull or push that learnt it.
pub(crate) fn remember_origins(store: &Store, reference: &Reference, blobs: &[Digest]) {
    let repository = format!("{}/{}", reference.domain, reference.path);
    for d in blobs {
        let _ = store.remember_blob_origin(d, &repository);
    }
}

pub(crate) fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
}

/// The media type from `Content-Type` (without parameters), else the document's own
/// `mediaType`, else OCI manifest (the only type allowed to omit both).
fn media_type_of(content_type: Option<&str>, bytes: &[u8]) -> String {
    let known = |m: &str| media_type::is_manifest(m) || media_type::is_index(m);
    if let Some(ct) = content_type {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        if known(ct) {
            return ct.to_owned();
        }
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe {
            media_type: Some(m),
            ..
        }) => m,
        Ok(Probe {
            manifests: Some(_), ..
        }) => media_type::OCI_INDEX.to_owned(),
        _ => media_type::OCI_MANIFEST.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_prefers_header_then_document() {
        assert_eq!(
            media_type_of(
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
                b"{}"
            ),
            media_type::OCI_INDEX
        );
        assert_eq!(
            media_type_of(
                Some("application/json"),
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            ),
            media_type::DOCKER_MANIFEST
        );
        assert_eq!(
            media_type_of(None, br#"{"manifests":[]}"#),
            media_type::OCI_INDEX
        );
        assert_eq!(media_type_of(None, b"{}"), media_type::OCI_MANIFEST);
    }
}
