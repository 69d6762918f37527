//! Pushing an image from the store.
//!
//! For each blob of the image (config and layers), in order:
//! 1. `HEAD /v2/<repo>/blobs/<digest>`: the repository has it already, nothing to send.
//! 2. If the store records the blob in another repository of the same registry (because it was
//!    pulled from there, or pushed there), a cross-repository mount:
//!    `POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<other>`. 201 means mounted, no bytes
//!    sent; 202 means the registry would not (the source was deleted, or mounting is off) and
//!    opened an ordinary upload session instead, which step 3 uses. With Bearer auth the token
//!    for this request covers `repository:<other>:pull` as well as `repository:<repo>:pull,push`.
//! 3. An upload, streamed from the store: blobs up to the client's chunk size in one
//!    `PUT <session>?digest=`; larger ones as `PATCH` requests of one chunk each, with
//!    `Content-Range: start-end`, each to the `Location` the previous answer gave, closed by an
//!    empty `PUT <session>?digest=`.
//!
//! Then the manifest goes up as its exact stored bytes.
//!
//! Why the origins live in the store (`Store::blob_origins`) rather than being passed in by the
//! caller: the useful case is a layer the user never thinks about, such as the base image's
//! layers in `FROM registry/team/base` followed by `kiln push registry/team/app`. Only the pull
//! saw where those layers came from, possibly in another process days earlier, so it writes it
//! down next to the blob; every caller of `pull`, `push` and `FROM` gets mounts with no extra
//! plumbing, and a wrong or stale record costs one 202 answer, never a failed push.

use std::io::{Read, Seek, SeekFrom};

use kiln_oci::digest::Digest;
use kiln_oci::image::{self, media_type, MAX_MANIFEST_SIZE};
use kiln_oci::reference::Reference;
use kiln_oci::store::Store;
use ureq::http::Response;
use ureq::{Body, SendBody};

use crate::client::{Client, Target};
use crate::error::{RegistryError, Result};
use crate::progress::{Counting, Transfer};
use crate::pull::{header, remember_origins};

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushReport {
    /// The manifest digest, as the registry confirmed it.
    pub digest: Digest,
    /// Blobs uploaded; 0 when the registry already had them all.
    pub blobs_uploaded: usize,
    /// Bytes of those blobs.
    pub bytes_uploaded: u64,
    /// Blobs mounted from another repository of the same registry instead of uploaded.
    pub blobs_mounted: usize,
    /// Bytes of those blobs (not sent).
    pub bytes_mounted: u64,
    /// Blobs the repository already had.
    pub blobs_present: usize,
}

/// How one blob got into the repository.
enum Sent {
    Present,
    Mounted,
    Uploaded,
}

/// An open upload session.
struct Session {
    /// Where to send the next request (absolute URL or path, maybe with a query).
    location: String,
    /// The registry's `OCI-Chunk-Min-Length`, if it set one.
    min_chunk: u64,
}

/// What a mount request achieved.
enum Mount {
    Done,
    /// The registry declined and opened an upload session instead.
    Session(Session),
    /// The request failed (no token for the source, an error status): upload normally.
    Refused,
}

impl Client {
    /// Pushes the image whose manifest is blob `manifest` in `store` to `reference` (its tag,
    /// or its digest when it has no tag).
    ///
    /// Blobs the registry already has (HEAD answers 200) are skipped; blobs the store knows in
    /// another repository of the same registry are mounted from there; the others are
    /// uploaded, streamed from the store, in one PUT or in PATCH chunks above the chunk size
    /// ([`Client::with_chunk_size`]). The module documentation has the details. The manifest
    /// is sent as its exact stored bytes, so its digest is the one kiln computed. Afterwards
    /// the store records this repository as an origin of every blob of the image.
    pub fn push(
        &self,
        store: &Store,
        manifest: &Digest,
        reference: &Reference,
    ) -> Result<PushReport> {
        let image = reference.to_string();
        let t = Target::repo(&image, reference, true);
        let store_err = |source| RegistryError::Store {
            image: image.clone(),
            source,
        };
        let bytes = store
            .read_blob(manifest, MAX_MANIFEST_SIZE)
            .map_err(store_err)?;
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

        let mut report = PushReport {
            digest: parsed.digest.clone(),
            blobs_uploaded: 0,
            bytes_uploaded: 0,
            blobs_mounted: 0,
            bytes_mounted: 0,
            blobs_present: 0,
        };
        let mut seen: Vec<Digest> = Vec::new();
        for d in std::iter::once(parsed.value.config()).chain(parsed.value.layers()) {
            let digest = Digest::from_oci(d.digest()).map_err(|source| RegistryError::Digest {
                image: image.clone(),
                source,
            })?;
            if seen.contains(&digest) {
                continue;
            }
            let size = store.blob_size(&digest).map_err(store_err)?;
            match self.push_blob(store, &t, &digest, size)? {
                Sent::Present => report.blobs_present += 1,
                Sent::Mounted => {
                    report.blobs_mounted += 1;
                    report.bytes_mounted += size;
                }
                Sent::Uploaded => {
                    report.blobs_uploaded += 1;
                    report.bytes_uploaded += size;
                }
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
        remember_origins(store, reference, &seen);
        Ok(report)
    }

    /// Makes sure the repository has blob `digest` (`size` bytes): HEAD, else mount, else
    /// upload.
    fn push_blob(&self, store: &Store, t: &Target<'_>, digest: &Digest, size: u64) -> Result<Sent> {
        if self.blob_exists(t, digest)? {
            self.report(Transfer::Done {
                digest,
                how: "already there",
            });
            return Ok(Sent::Present);
        }
        let session = match mount_source(store, t, digest) {
            Some(from) => match self.try_mount(t, digest, &from)? {
                Mount::Done => {
                    self.report(Transfer::Done {
                        digest,
                        how: "mounted",
                    });
                    return Ok(Sent::Mounted);
                }
                Mount::Session(s) => s,
                Mount::Refused => self.start_upload(t, digest)?,
            },
            None => self.start_upload(t, digest)?,
        };
        let chunk = self.chunk_size().max(session.min_chunk);
        self.report(Transfer::Start {
            digest,
            size,
            upload: true,
        });
        if size <= chunk {
            self.upload_whole(store, t, digest, size, &session.location)?;
        } else {
            self.upload_chunks(store, t, digest, size, chunk, session.location)?;
        }
        self.report(Transfer::Done {
            digest,
            how: "uploaded",
        });
        Ok(Sent::Uploaded)
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

    /// `POST ?mount=&from=`. Only a transport failure is an error: anything else the registry
    /// or its token service says no with leaves the ordinary upload to try (and to report the
    /// problem if it is a real one).
    fn try_mount(&self, t: &Target<'_>, digest: &Digest, from: &str) -> Result<Mount> {
        let mt = Target {
            image: t.image,
            domain: t.domain,
            repo: t.repo,
            push: true,
            mount_from: Some(from),
        };
        let url = self.url(
            t.domain,
            &format!(
                "/v2/{}/blobs/uploads/?mount={}&from={}",
                t.repo.unwrap_or_default(),
                query_escape(digest.as_str()),
                query_escape(from)
            ),
        );
        let resp = match self.send(&mt, |auth| self.post(&url, auth).send_empty()) {
            Ok(r) => r,
            Err(e @ RegistryError::Transport { .. }) => return Err(e),
            Err(_) => return Ok(Mount::Refused),
        };
        match resp.status().as_u16() {
            201 => {
                check_digest_header(t, &resp, digest, "mounted blob")?;
                Ok(Mount::Done)
            }
            202 => Ok(Mount::Session(session_from(t, &resp, digest)?)),
            _ => Ok(Mount::Refused),
        }
    }

    /// `POST /v2/<repo>/blobs/uploads/`: opens an upload session.
    fn start_upload(&self, t: &Target<'_>, digest: &Digest) -> Result<Session> {
        let url = self.url(
            t.domain,
            &format!("/v2/{}/blobs/uploads/", t.repo.unwrap_or_default()),
        );
        let resp = self.send(t, |auth| self.post(&url, auth).send_empty())?;
        let resp = self.check(t, resp, &format!("upload of blob {digest}"))?;
        session_from(t, &resp, digest)
    }

    /// Monolithic upload: one `PUT ?digest=` carrying the whole blob closes the session.
    fn upload_whole(
        &self,
        store: &Store,
        t: &Target<'_>,
        digest: &Digest,
        size: u64,
        location: &str,
    ) -> Result<()> {
        let put_url = self.upload_url(t.domain, location, digest);
        let mut open_error = None;
        let resp = self.send(t, |auth| {
            // Reopened on every attempt, so a retry sends the blob from its start.
            let file = match open_at(store, t, digest, 0) {
                Ok(f) => f,
                Err(e) => {
                    open_error = Some(e);
                    return Err(ureq::Error::Other("blob file could not be opened".into()));
                }
            };
            let counted = Counting {
                inner: file,
                done: 0,
                report: self.byte_report(digest),
            };
            self.put(&put_url, auth)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Length", size)
                .send(SendBody::from_owned_reader(counted))
        });
        if let Some(e) = open_error {
            return Err(e);
        }
        let resp = self.check(t, resp?, &format!("upload of blob {digest}"))?;
        check_digest_header(t, &resp, digest, "uploaded blob")
    }

    /// Chunked upload: `PATCH` with `Content-Range: start-end` for each `chunk` bytes, each to
    /// the `Location` the previous answer gave, then an empty `PUT ?digest=`. Each chunk is
    /// read from the store as it is sent, so memory stays bounded whatever the chunk size.
    fn upload_chunks(
        &self,
        store: &Store,
        t: &Target<'_>,
        digest: &Digest,
        size: u64,
        chunk: u64,
        mut location: String,
    ) -> Result<()> {
        let what = format!("upload of blob {digest}");
        let mut offset = 0;
        while offset < size {
            let len = chunk.min(size - offset);
            let end = offset + len - 1;
            let range = format!("{offset}-{end}");
            let url = self.absolute_url(t.domain, &location);
            let mut open_error = None;
            let resp = self.send(t, |auth| {
                let file = match open_at(store, t, digest, offset) {
                    Ok(f) => f,
                    Err(e) => {
                        open_error = Some(e);
                        return Err(ureq::Error::Other("blob file could not be opened".into()));
                    }
                };
                let counted = Counting {
                    inner: file.take(len),
                    done: offset,
                    report: self.byte_report(digest),
                };
                self.patch(&url, auth)
                    .header("Content-Type", "application/octet-stream")
                    .header("Content-Range", &range)
                    .header("Content-Length", len)
                    .send(SendBody::from_owned_reader(counted))
            });
            if let Some(e) = open_error {
                return Err(e);
            }
            let resp = resp?;
            let out_of_step = |status: u16, held: Option<String>| RegistryError::UploadRange {
                image: t.image.to_owned(),
                host: t.domain.to_owned(),
                digest: digest.clone(),
                sent: range.clone(),
                answer: match (status, held) {
                    (416, Some(h)) => format!("416 Range Not Satisfiable and holds bytes {h}"),
                    (416, None) => "416 Range Not Satisfiable".to_owned(),
                    (s, Some(h)) => format!("{s} but holds bytes {h}"),
                    (s, None) => s.to_string(),
                },
            };
            if resp.status().as_u16() == 416 {
                return Err(out_of_step(416, header(&resp, "range")));
            }
            let resp = self.check(t, resp, &format!("{what} (bytes {range})"))?;
            // The registry says how much it holds; anything but everything sent so far means
            // the next chunk would land in the wrong place.
            if let Some(held) = header(&resp, "range") {
                if range_end(&held) != Some(end) {
                    return Err(out_of_step(resp.status().as_u16(), Some(held)));
                }
            }
            location = header(&resp, "location").ok_or_else(|| RegistryError::Protocol {
                image: t.image.to_owned(),
                host: t.domain.to_owned(),
                message: format!("{what}: no Location header in the answer to PATCH"),
            })?;
            offset += len;
        }
        let put_url = self.upload_url(t.domain, &location, digest);
        let resp = self.send(t, |auth| {
            self.put(&put_url, auth)
                .header("Content-Type", "application/octet-stream")
                .send(&[][..])
        })?;
        let resp = self.check(t, resp, &what)?;
        check_digest_header(t, &resp, digest, "uploaded blob")
    }

    /// `Location` as a full URL: registries send absolute URLs or paths.
    fn absolute_url(&self, domain: &str, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            self.url(domain, location)
        }
    }

    /// The PUT URL that closes an upload: `Location` may be absolute or a path, and may
    /// already carry a query (the registry's upload state).
    fn upload_url(&self, domain: &str, location: &str, digest: &Digest) -> String {
        let base = self.absolute_url(domain, location);
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}digest={}", query_escape(digest.as_str()))
    }
}

/// The repository (path) to mount `digest` from: the most recent origin the store recorded on
/// the same registry, other than the target itself. One candidate only: a stale one costs a
/// 202 whose session the upload then uses, while trying more would leave sessions open.
fn mount_source(store: &Store, t: &Target<'_>, digest: &Digest) -> Option<String> {
    let target = t.repo.unwrap_or_default();
    store
        .blob_origins(digest)
        .ok()?
        .into_iter()
        .find_map(|origin| {
            let (domain, path) = origin.split_once('/')?;
            (domain == t.domain && !path.is_empty() && path != target).then(|| path.to_owned())
        })
}

/// The session a 202 answer opened.
fn session_from(t: &Target<'_>, resp: &Response<Body>, digest: &Digest) -> Result<Session> {
    let location = header(resp, "location").ok_or_else(|| RegistryError::Protocol {
        image: t.image.to_owned(),
        host: t.domain.to_owned(),
        message: format!("upload of blob {digest}: no Location header in the answer to POST"),
    })?;
    let min_chunk = header(resp, "oci-chunk-min-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Session {
        location,
        min_chunk,
    })
}

/// The registry's `Docker-Content-Digest`, when it sends one, must be the blob's.
fn check_digest_header(
    t: &Target<'_>,
    resp: &Response<Body>,
    digest: &Digest,
    what: &str,
) -> Result<()> {
    match header(resp, "docker-content-digest") {
        Some(theirs) if theirs != digest.as_str() => Err(RegistryError::DigestMismatch {
            image: t.image.to_owned(),
            what: what.to_owned(),
            expected: digest.to_string(),
            actual: theirs,
        }),
        _ => Ok(()),
    }
}

/// The blob file, positioned at `offset`.
fn open_at(store: &Store, t: &Target<'_>, digest: &Digest, offset: u64) -> Result<std::fs::File> {
    let mut file = store
        .open_blob(digest)
        .map_err(|source| RegistryError::Store {
            image: t.image.to_owned(),
            source,
        })?;
    if offset > 0 {
        file.seek(SeekFrom::Start(offset))
            .map_err(|source| RegistryError::Io {
                image: t.image.to_owned(),
                what: format!("reading blob {digest} from the store"),
                source,
            })?;
    }
    Ok(file)
}

/// The last byte a `Range` header (`0-1023`, or `bytes=0-1023`) covers; None unless it starts
/// at 0.
fn range_end(value: &str) -> Option<u64> {
    let v = value.trim();
    let v = v
        .strip_prefix("bytes=")
        .or_else(|| v.strip_prefix("bytes "))
        .unwrap_or(v);
    let (start, end) = v.split_once('-')?;
    if start.trim() != "0" {
        return None;
    }
    end.trim().parse().ok()
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for query values: digests
/// have a `:`, repository names `/`).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_reads_the_common_spellings() {
        assert_eq!(range_end("0-1023"), Some(1023));
        assert_eq!(range_end("bytes=0-99"), Some(99));
        assert_eq!(range_end(" bytes 0-5 "), Some(5));
        assert_eq!(range_end("10-20"), None);
        assert_eq!(range_end("garbage"), None);
    }

    #[test]
    fn query_escape_keeps_unreserved_only() {
        assert_eq!(query_escape("sha256:ab/c-d_e.f~"), "sha256%3Aab%2Fc-d_e.f~");
    }

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
