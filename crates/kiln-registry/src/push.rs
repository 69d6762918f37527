//! Pushing an image from the store.

use kiln_oci::digest::Digest;
use kiln_oci::image::{self, media_type, MAX_MANIFEST_SIZE};
use kiln_oci::reference::Reference;
use kiln_oci::store::Store;

use crate::client::{Client, Target};
use crate::error::{RegistryError, Result};
use crate::pull::header;

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushReport {
    /// The manifest digest, as the registry confirmed it.
    pub digest: Digest,
    /// Blobs uploaded; 0 when the registry already had them all.
    pub blobs_uploaded: usize,
    /// Bytes of those blobs.
    pub bytes_uploaded: u64,
}

impl Client {
    /// Pushes the image whose manifest is blob `manifest` in `store` to `reference` (its tag,
    /// or its digest when it has no tag).
    ///
    /// Blobs the registry already has (HEAD answers 200) are skipped; the others are uploaded
    /// in one request each (POST, then PUT `?digest=`), streamed from the store. The manifest
    /// is sent as its exact stored bytes, so its digest is the one kiln computed.
    pub fn push(
        &self,
        store: &Store,
        manifest: &Digest,
        reference: &Reference,
    ) -> Result<PushReport> {
        let image = reference.to_string();
        let t = Target {
            image: &image,
            domain: &reference.domain,
            repo: Some(&reference.path),
            push: true,
        };
        let bytes = store
            .read_blob(manifest, MAX_MANIFEST_SIZE)
            .map_err(|source| RegistryError::Store {
                image: image.clone(),
                source,
            })?;
        let parsed = image::parse_manifest(bytes).map_err(|source| RegistryError::Image {
            image: image.clone(),
            source,
        })?;
        let manifest_type = parsed
            .value
            .media_type()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_else(|| media_type::OCI_MANIFEST.to_owned());
        if !media_type::is_manifest(&manifest_type) {
            return Err(RegistryError::UnsupportedMediaType {
                image,
                media_type: manifest_type,
            });
        }

        let mut blobs_uploaded = 0;
        let mut bytes_uploaded = 0;
        let mut seen: Vec<Digest> = Vec::new();
        for d in std::iter::once(parsed.value.config()).chain(parsed.value.layers()) {
            let digest = Digest::from_oci(d.digest()).map_err(|source| RegistryError::Digest {
                image: image.clone(),
                source,
            })?;
            if seen.contains(&digest) {
                continue;
            }
            if !self.blob_exists(&t, &digest)? {
                bytes_uploaded += self.upload_blob(store, &t, &digest)?;
                blobs_uploaded += 1;
            }
            seen.push(digest);
        }

        let reference_part = match (&reference.tag, &reference.digest) {
            (Some(tag), _) => tag.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => "latest".to_owned(),
        };
        let url = self.url(
            &reference.domain,
            &format!("/v2/{}/manifests/{reference_part}", reference.path),
        );
        let resp = self.send(&t, |auth| {
            self.put(&url, auth)
                .header("Content-Type", &manifest_type)
                .send(parsed.bytes.as_slice())
        })?;
        let resp = self.check(&t, resp, &format!("manifest {reference_part}"))?;
        // The registry hashes what it stored; a different answer means the bytes were altered
        // on the way (or the registry rewrote them), and the tag would not name our image.
        if let Some(theirs) = header(&resp, "docker-content-digest") {
            if theirs != parsed.digest.as_str() {
                return Err(RegistryError::DigestMismatch {
                    image,
                    what: "pushed manifest".to_owned(),
                    expected: parsed.digest.to_string(),
                    actual: theirs,
                });
            }
        }
        Ok(PushReport {
            digest: parsed.digest,
            blobs_uploaded,
            bytes_uploaded,
        })
    }

    /// HEAD the blob: true if the registry has it.
    fn blob_exists(&self, t: &Target<'_>, digest: &Digest) -> Result<bool> {
        let url = self.url(
            t.domain,
            &format!("/v2/{}/blobs/{digest}", t.repo.unwrap_or_default()),
        );
        let resp = self.send(t, |auth| self.head(&url, auth).call())?;
        if resp.status().as_u16() == 404 {
            return Ok(false);
        }
        self.check(t, resp, &format!("blob {digest}")).map(|_| true)
    }

    /// Monolithic upload: POST opens an upload session, PUT `?digest=` sends the whole blob
    /// and closes it. Returns the bytes sent.
    fn upload_blob(&self, store: &Store, t: &Target<'_>, digest: &Digest) -> Result<u64> {
        let repo = t.repo.unwrap_or_default();
        let what = format!("upload of blob {digest}");
        let store_err = |source| RegistryError::Store {
            image: t.image.to_owned(),
            source,
        };
        let size = store.blob_size(digest).map_err(store_err)?;
        let post_url = self.url(t.domain, &format!("/v2/{repo}/blobs/uploads/"));
        let resp = self.send(t, |auth| self.post(&post_url, auth).send_empty())?;
        let resp = self.check(t, resp, &what)?;
        let location = header(&resp, "location").ok_or_else(|| RegistryError::Protocol {
            image: t.image.to_owned(),
            host: t.domain.to_owned(),
            message: format!("{what}: no Location header in the answer to POST"),
        })?;
        let put_url = self.upload_url(t.domain, &location, digest);
        let mut open_error = None;
        let resp = self.send(t, |auth| {
            // Reopened on every attempt, so a retry sends the blob from its start.
            let file = match store.open_blob(digest) {
                Ok(f) => f,
                Err(e) => {
                    open_error = Some(e);
                    return Err(ureq::Error::Other("blob file could not be opened".into()));
                }
            };
            self.put(&put_url, auth)
                .header("Content-Type", "application/octet-stream")
                .send(file)
        });
        if let Some(e) = open_error {
            return Err(store_err(e));
        }
        let resp = self.check(t, resp?, &what)?;
        if let Some(theirs) = header(&resp, "docker-content-digest") {
            if theirs != digest.as_str() {
                return Err(RegistryError::DigestMismatch {
                    image: t.image.to_owned(),
                    what: "uploaded blob".to_owned(),
                    expected: digest.to_string(),
                    actual: theirs,
                });
            }
        }
        Ok(size)
    }

    /// The PUT URL for an upload: `Location` may be absolute or a path, and may already carry
    /// a query (the registry's upload state).
    fn upload_url(&self, domain: &str, location: &str, digest: &Digest) -> String {
        let base = if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            self.url(domain, location)
        };
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}digest=sha256%3A{}", digest.hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_url_handles_relative_absolute_and_queries() {
        let c = Client::new();
        let d = Digest::of(b"x");
        let hex = d.hex().to_owned();
        assert_eq!(
            c.upload_url("127.0.0.1:5000", "/v2/a/blobs/uploads/u1", &d),
            format!("http://127.0.0.1:5000/v2/a/blobs/uploads/u1?digest=sha256%3A{hex}")
        );
        assert_eq!(
            c.upload_url("r.io", "https://r.io/v2/a/blobs/uploads/u1?_state=s", &d),
            format!("https://r.io/v2/a/blobs/uploads/u1?_state=s&digest=sha256%3A{hex}")
        );
    }
}
