//! Registry errors. Each names the image involved and says what the user can do about it.

use kiln_oci::digest::Digest;

/// Errors from talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry wants credentials we do not have, or refused the ones we sent (401).
    #[error("{image}: unauthorized by {host}: {hint}")]
    Unauthorized {
        /// The image being pulled or pushed.
        image: String,
        /// The registry host.
        host: String,
        /// What to do next.
        hint: String,
    },
    /// The credentials were accepted but do not grant this access (403, or a token registry's
    /// 401 with `error="insufficient_scope"`).
    #[error(
        "{image}: access denied by {host}: the account may lack {access} rights on this \
         repository; check the repository name or log in with another account (kiln login {host})"
    )]
    Denied {
        /// The image.
        image: String,
        /// The registry host.
        host: String,
        /// "pull" or "push".
        access: &'static str,
    },
    /// The registry does not know the manifest, tag, blob or repository (404).
    #[error("{image}: {what} not found on {host}; check the repository name and tag")]
    NotFound {
        /// The image.
        image: String,
        /// The registry host.
        host: String,
        /// What was missing ("manifest latest", "blob sha256:...").
        what: String,
    },
    /// The registry kept rate-limiting us (429) after the retries.
    #[error(
        "{image}: {host} is rate-limiting requests (429 Too Many Requests); wait and retry, or \
         log in (kiln login {host}) for a higher limit"
    )]
    TooManyRequests {
        /// The image.
        image: String,
        /// The registry host.
        host: String,
    },
    /// Any other unexpected HTTP status.
    #[error("{image}: {host} answered {status} to {what}: {message}")]
    Status {
        /// The image.
        image: String,
        /// The registry host.
        host: String,
        /// What we asked for.
        what: String,
        /// The HTTP status code.
        status: u16,
        /// The registry's own error text, if it sent one.
        message: String,
    },
    /// The registry could not be reached, or the connection broke (after the retries).
    #[error(
        "{image}: cannot talk to {host}: {source}; check the host name and network, and for a \
         plain-http registry mark it insecure"
    )]
    Transport {
        /// The image.
        image: String,
        /// The registry host.
        host: String,
        /// ureq's error.
        source: Box<ureq::Error>,
    },
    /// Content did not hash to the digest the registry or the reference promised.
    #[error(
        "{image}: {what} should be {expected} but the registry sent {actual}; the registry or \
         a proxy is serving wrong content"
    )]
    DigestMismatch {
        /// The image.
        image: String,
        /// Which document or blob.
        what: String,
        /// The digest promised.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// A blob arrived with a different size than its descriptor says.
    #[error("{image}: blob {digest} should be {expected} bytes but the registry sent {actual}")]
    SizeMismatch {
        /// The image.
        image: String,
        /// The blob.
        digest: Digest,
        /// Descriptor size.
        expected: u64,
        /// Bytes received (at most one more than expected: we stop reading there).
        actual: u64,
    },
    /// A chunked upload fell out of step: the registry refused a chunk's range (416) or
    /// reported holding other bytes than were sent.
    #[error(
        "{image}: the chunked upload of blob {digest} to {host} is out of step: for bytes {sent} \
         it answered {answer}; push again to start a new upload"
    )]
    UploadRange {
        /// The image.
        image: String,
        /// The registry host.
        host: String,
        /// The blob being uploaded.
        digest: Digest,
        /// The range kiln sent, `start-end` inclusive.
        sent: String,
        /// The registry's answer and what it says it holds ("416 Range Not Satisfiable and
        /// holds bytes 0-99").
        answer: String,
    },
    /// No manifest in the image index matches the wanted platform.
    #[error("{image}: no image for platform {wanted}; the index offers: {available}")]
    NoPlatform {
        /// The image.
        image: String,
        /// The platform asked for ("linux/arm64/v8").
        wanted: String,
        /// The platforms in the index.
        available: String,
    },
    /// A manifest of a type kiln cannot handle here.
    #[error("{image}: unsupported manifest media type {media_type:?}; kiln handles OCI and Docker schema 2 manifests and indexes")]
    UnsupportedMediaType {
        /// The image.
        image: String,
        /// The media type received.
        media_type: String,
    },
    /// The registry broke the protocol (no upload location, bad token response, ...).
    #[error("{image}: unexpected answer from {host}: {message}")]
    Protocol {
        /// The image.
        image: String,
        /// The registry (or token service) host.
        host: String,
        /// What was wrong.
        message: String,
    },
    /// Reading a response body or a blob file failed.
    #[error("{image}: {what}: {source}")]
    Io {
        /// The image.
        image: String,
        /// What we were doing.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The local store failed.
    #[error("{image}: {source}")]
    Store {
        /// The image.
        image: String,
        /// The store's error.
        source: kiln_oci::store::StoreError,
    },
    /// A manifest or index does not parse.
    #[error("{image}: {source}")]
    Image {
        /// The image.
        image: String,
        /// The parser's error.
        source: kiln_oci::image::ImageError,
    },
    /// A digest kiln cannot use (not sha256).
    #[error("{image}: {source}")]
    Digest {
        /// The image.
        image: String,
        /// The digest error.
        source: kiln_oci::digest::DigestError,
    },
}

/// Shorthand for results with [`RegistryError`].
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
