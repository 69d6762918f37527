//! Content digests (`sha256:<hex>`) and a hashing writer.
//!
//! kiln stores and references content only by SHA-256, the one algorithm every OCI and Docker
//! tool supports, so [`Digest`] accepts nothing else: a digest that parses is safe to use as a
//! file name under `blobs/sha256/`.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

const PREFIX: &str = "sha256:";
const HEX_LEN: usize = 64;

/// A validated SHA-256 content digest, `sha256:` followed by 64 lower-case hex digits.
///
/// It serializes as that string. Ordering is the string order, so sorted lists of digests are
/// stable.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

/// A string that is not a valid `sha256:<64 lower-case hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {input:?}: expected sha256: and 64 lower-case hex digits")]
pub struct DigestError {
    /// The rejected text (cut to 100 characters so hostile input cannot flood an error message).
    pub input: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::digest(bytes).into())
    }

    /// Wraps a raw 32-byte SHA-256 output.
    pub fn from_sha256(raw: [u8; 32]) -> Digest {
        let mut s = String::with_capacity(PREFIX.len() + HEX_LEN);
        s.push_str(PREFIX);
        for b in raw {
            s.push(hex_digit(b >> 4));
            s.push(hex_digit(b & 0xf));
        }
        Digest(s)
    }

    /// Builds a digest from its 64 hex digits alone (as in a blob's file name).
    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        if is_lower_hex(hex) {
            Ok(Digest(format!("{PREFIX}{hex}")))
        } else {
            Err(DigestError::new(hex))
        }
    }

    /// The 64 hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    /// The full `sha256:<hex>` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Converts to the `oci-spec` digest type used inside descriptors.
    pub fn to_oci(&self) -> oci_spec::image::Digest {
        // A validated sha256 digest always satisfies oci-spec's own check.
        oci_spec::image::Digest::from_str(&self.0).expect("sha256 digest accepted by oci-spec")
    }

    /// Converts from an `oci-spec` digest, failing for algorithms other than sha256.
    pub fn from_oci(d: &oci_spec::image::Digest) -> Result<Digest, DigestError> {
        d.to_string().parse()
    }
}

impl DigestError {
    fn new(input: &str) -> DigestError {
        DigestError {
            input: input.chars().take(100).collect(),
        }
    }
}

fn hex_digit(n: u8) -> char {
    char::from_digit(u32::from(n), 16).expect("nibble below 16")
}

fn is_lower_hex(s: &str) -> bool {
    s.len() == HEX_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Digest, DigestError> {
        match s.strip_prefix(PREFIX) {
            Some(hex) if is_lower_hex(hex) => Ok(Digest(s.to_owned())),
            _ => Err(DigestError::new(s)),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A running SHA-256 with a byte count; the building block of the tee types below.
#[derive(Clone, Default)]
pub struct Sha256Hasher {
    hasher: Sha256,
    len: u64,
}

impl Sha256Hasher {
    /// A fresh hasher.
    pub fn new() -> Sha256Hasher {
        Sha256Hasher::default()
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest and length of everything fed.
    pub fn finish(self) -> (Digest, u64) {
        (Digest::from_sha256(self.hasher.finalize().into()), self.len)
    }
}

/// A writer that hashes every byte the inner writer accepts, then passes it on.
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256Hasher,
}

impl<W: Write> Sha256Writer<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Sha256Writer<W> {
        Sha256Writer {
            inner,
            hasher: Sha256Hasher::new(),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// True when nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The inner writer, mutably (writing to it directly bypasses the hash).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Returns the inner writer (not flushed) with the digest and length of what went through.
    pub fn finish(self) -> (W, Digest, u64) {
        let (digest, len) = self.hasher.finish();
        (self.inner, digest, len)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Hash only what the inner writer took, so a short write is not counted twice.
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes every byte it returns.
pub struct Sha256Reader<R> {
    inner: R,
    hasher: Sha256Hasher,
}

impl<R: Read> Sha256Reader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Sha256Reader<R> {
        Sha256Reader {
            inner,
            hasher: Sha256Hasher::new(),
        }
    }

    /// Returns the inner reader with the digest and length of what was read.
    pub fn finish(self) -> (R, Digest, u64) {
        let (digest, len) = self.hasher.finish();
        (self.inner, digest, len)
    }
}

impl<R: Read> Read for Sha256Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_empty_input() {
        assert_eq!(Digest::of(b"").as_str(), EMPTY);
        assert_eq!(
            Digest::of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "",
            "sha256:",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
            "sha256:../../../../etc/passwd0000000000000000000000000000000000000000000",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        assert_eq!(EMPTY.parse::<Digest>().unwrap().to_string(), EMPTY);
    }

    #[test]
    fn serde_as_string() {
        let d = Digest::of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:00\"").is_err());
    }

    #[test]
    fn oci_conversion_round_trips() {
        let d = Digest::of(b"abc");
        assert_eq!(Digest::from_oci(&d.to_oci()).unwrap(), d);
        assert_eq!(Digest::from_hex(d.hex()).unwrap(), d);
    }

    #[test]
    fn writer_and_reader_agree_with_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = Sha256Writer::new(Vec::new());
        for chunk in data.chunks(777) {
            w.write_all(chunk).unwrap();
        }
        let (out, digest, len) = w.finish();
        assert_eq!(out, data);
        assert_eq!(digest, Digest::of(&data));
        assert_eq!(len, data.len() as u64);

        let mut r = Sha256Reader::new(&data[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.finish().1, Digest::of(&data));
    }
}
