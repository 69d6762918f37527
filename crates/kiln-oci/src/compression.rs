//! Layer compression: what we write (none, gzip, zstd) and what we can read (those plus bzip2
//! and xz, found by magic bytes).

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use crate::image::media_type;

/// How a layer blob is compressed on output.
///
/// Levels are part of the value so callers can choose them, but the compressed-blob cache is
/// keyed by [`Compression::name`] only: any gzip of a layer is as good as another, and the point
/// of the cache is never compressing a layer twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Plain tar; the blob digest equals the diffID.
    None,
    /// gzip (deflate via zlib-rs), level 0–9.
    Gzip {
        /// Compression level, 0–9 (values above 9 are treated as 9).
        level: u32,
    },
    /// zstd, multi-threaded over the available cores.
    Zstd {
        /// Compression level, 1–22 (negative values are zstd's fast modes).
        level: i32,
    },
}

impl Compression {
    /// gzip at level 6, BuildKit's and Go's default.
    pub const GZIP: Compression = Compression::Gzip { level: 6 };
    /// zstd at level 3, zstd's own default.
    pub const ZSTD: Compression = Compression::Zstd { level: 3 };

    /// `none`, `gzip` or `zstd`: the algorithm without its level.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip { .. } => "gzip",
            Compression::Zstd { .. } => "zstd",
        }
    }

    /// The OCI layer media type for a blob compressed this way.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => media_type::OCI_LAYER,
            Compression::Gzip { .. } => media_type::OCI_LAYER_GZIP,
            Compression::Zstd { .. } => media_type::OCI_LAYER_ZSTD,
        }
    }

    /// The Docker schema 2 layer media type, if Docker has one (it has none for zstd).
    pub fn docker_media_type(self) -> Option<&'static str> {
        match self {
            Compression::None => Some(media_type::DOCKER_LAYER),
            Compression::Gzip { .. } => Some(media_type::DOCKER_LAYER_GZIP),
            Compression::Zstd { .. } => None,
        }
    }

    /// The compression a layer media type implies (OCI or Docker), if it is a known layer type.
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        match mt {
            media_type::OCI_LAYER | media_type::DOCKER_LAYER => Some(Compression::None),
            media_type::OCI_LAYER_GZIP
            | media_type::DOCKER_LAYER_GZIP
            | media_type::DOCKER_LAYER_FOREIGN_GZIP
            | media_type::OCI_LAYER_NONDIST_GZIP => Some(Compression::GZIP),
            media_type::OCI_LAYER_ZSTD | media_type::OCI_LAYER_NONDIST_ZSTD => {
                Some(Compression::ZSTD)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Gzip { level } => write!(f, "gzip:{level}"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

/// A compression name that [`Compression::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {0:?}: expected none, gzip, zstd, optionally with :LEVEL")]
pub struct ParseCompressionError(pub String);

impl FromStr for Compression {
    type Err = ParseCompressionError;

    /// Accepts `none` (or `uncompressed`), `gzip`, `zstd`, and `gzip:9` / `zstd:19` forms.
    fn from_str(s: &str) -> Result<Compression, ParseCompressionError> {
        let err = || ParseCompressionError(s.to_owned());
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (s, None),
        };
        match (name, level) {
            ("none" | "uncompressed", None) => Ok(Compression::None),
            ("gzip", None) => Ok(Compression::GZIP),
            ("zstd", None) => Ok(Compression::ZSTD),
            ("gzip", Some(l)) => l
                .parse()
                .ok()
                .filter(|l| *l <= 9)
                .map(|level| Compression::Gzip { level })
                .ok_or_else(err),
            ("zstd", Some(l)) => l
                .parse()
                .ok()
                .filter(|l| (-7..=22).contains(l))
                .map(|level| Compression::Zstd { level })
                .ok_or_else(err),
            _ => Err(err()),
        }
    }
}

/// A streaming compressor in front of `W`.
pub(crate) enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub(crate) fn new(out: W, c: Compression) -> io::Result<Encoder<W>> {
        Ok(match c {
            Compression::None => Encoder::Plain(out),
            Compression::Gzip { level } => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(level.min(9)),
            )),
            Compression::Zstd { level } => Encoder::Zstd(zstd_encoder(out, level)?),
        })
    }

    /// Ends the compressed stream and returns the writer under it.
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

fn zstd_encoder<W: Write>(
    out: W,
    level: i32,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut e = zstd::stream::write::Encoder::new(out, level)?;
    // At least one worker even on one core: zstd's multi-threaded output does not depend on the
    // worker count, but differs from its single-threaded (0 workers) output, and we want the same
    // bytes for the same layer on every machine.
    e.multithread(worker_count())?;
    e.include_checksum(true)?;
    Ok(e)
}

fn worker_count() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
        .max(1)
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// A stream format found by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Not one of the compressed formats below; read as plain tar.
    Tar,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
    /// bzip2 (`BZh`).
    Bzip2,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
}

/// The longest magic number we look for.
pub(crate) const MAGIC_LEN: usize = 6;

impl Format {
    /// Recognises a format from the start of a stream (fewer than 6 bytes is fine).
    pub fn sniff(prefix: &[u8]) -> Format {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            Format::Gzip
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Format::Zstd
        } else if prefix.starts_with(b"BZh") {
            Format::Bzip2
        } else if prefix.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Format::Xz
        } else {
            Format::Tar
        }
    }
}

/// The most memory an xz stream may ask for; xz's own presets stay far below this, so only a
/// hostile header reaches it.
const XZ_MEMLIMIT: u64 = 1 << 30;

/// A decompressor chosen by [`Format::sniff`], reading `R` with the sniffed bytes put back.
pub(crate) enum Decoder<R: Read> {
    Plain(Prefixed<R>),
    Gzip(Box<flate2::read::MultiGzDecoder<Prefixed<R>>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, io::BufReader<Prefixed<R>>>>),
    Bzip2(Box<bzip2::read::MultiBzDecoder<Prefixed<R>>>),
    Xz(Box<liblzma::read::XzDecoder<Prefixed<R>>>),
}

pub(crate) type Prefixed<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

impl<R: Read> Decoder<R> {
    /// Reads the first bytes of `r`, picks a decoder and returns it with the format found.
    pub(crate) fn sniff(mut r: R) -> io::Result<(Decoder<R>, Format)> {
        let prefix = read_prefix(&mut r)?;
        let format = Format::sniff(&prefix);
        let input = io::Cursor::new(prefix).chain(r);
        let decoder = match format {
            Format::Tar => Decoder::Plain(input),
            Format::Gzip => Decoder::Gzip(Box::new(flate2::read::MultiGzDecoder::new(input))),
            Format::Zstd => Decoder::Zstd(Box::new(zstd::stream::read::Decoder::new(input)?)),
            Format::Bzip2 => Decoder::Bzip2(Box::new(bzip2::read::MultiBzDecoder::new(input))),
            Format::Xz => {
                let stream = liblzma::stream::Stream::new_stream_decoder(
                    XZ_MEMLIMIT,
                    liblzma::stream::CONCATENATED,
                )
                .map_err(io::Error::other)?;
                Decoder::Xz(Box::new(liblzma::read::XzDecoder::new_stream(
                    input, stream,
                )))
            }
        };
        Ok((decoder, format))
    }
}

fn read_prefix<R: Read>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; MAGIC_LEN];
    let mut n = 0;
    while n < MAGIC_LEN {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
            Decoder::Bzip2(r) => r.read(buf),
            Decoder::Xz(r) => r.read(buf),
        }
    }
}

/// A reader of `input` decompressed according to its magic bytes (gzip, zstd, bzip2, xz, or
/// plain bytes passed through), and the format found.
pub fn decompress<R: Read>(input: R) -> io::Result<(impl Read, Format)> {
    Decoder::sniff(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_magic_numbers() {
        assert_eq!(Format::sniff(&[0x1f, 0x8b, 8]), Format::Gzip);
        assert_eq!(Format::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Format::Zstd);
        assert_eq!(Format::sniff(b"BZh91AY"), Format::Bzip2);
        assert_eq!(
            Format::sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
            Format::Xz
        );
        assert_eq!(Format::sniff(b"etc/"), Format::Tar);
        assert_eq!(Format::sniff(b""), Format::Tar);
        assert_eq!(Format::sniff(&[0x1f]), Format::Tar);
    }

    #[test]
    fn parse_names() {
        assert_eq!("gzip".parse::<Compression>().unwrap(), Compression::GZIP);
        assert_eq!(
            "zstd:19".parse::<Compression>().unwrap(),
            Compression::Zstd { level: 19 }
        );
        assert_eq!(
            "uncompressed".parse::<Compression>().unwrap(),
            Compression::None
        );
        assert!("gzip:10".parse::<Compression>().is_err());
        assert!("lz4".parse::<Compression>().is_err());
        assert_eq!(Compression::Gzip { level: 1 }.to_string(), "gzip:1");
    }

    fn round_trip(c: Compression) {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
        let mut e = Encoder::new(Vec::new(), c).unwrap();
        e.write_all(&data).unwrap();
        let out = e.finish().unwrap();
        let (mut d, format) = Decoder::sniff(&out[..]).unwrap();
        let mut back = Vec::new();
        d.read_to_end(&mut back).unwrap();
        assert_eq!(back, data, "{c}");
        let expect = match c {
            Compression::None => Format::Tar,
            Compression::Gzip { .. } => Format::Gzip,
            Compression::Zstd { .. } => Format::Zstd,
        };
        assert_eq!(format, expect);
    }

    #[test]
    fn encoders_round_trip_through_sniffing_decoder() {
        round_trip(Compression::None);
        round_trip(Compression::GZIP);
        round_trip(Compression::ZSTD);
    }

    #[test]
    fn bzip2_and_xz_are_read() {
        let data = b"hello hello hello hello".repeat(100);
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        bz.write_all(&data).unwrap();
        let bz = bz.finish().unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&data).unwrap();
        let xz = xz.finish().unwrap();
        for (blob, format) in [(bz, Format::Bzip2), (xz, Format::Xz)] {
            let (mut d, f) = Decoder::sniff(&blob[..]).unwrap();
            assert_eq!(f, format);
            let mut back = Vec::new();
            d.read_to_end(&mut back).unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn zstd_output_does_not_depend_on_worker_count() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let outputs: Vec<Vec<u8>> = [1u32, 2, 4]
            .iter()
            .map(|&n| {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
                e.multithread(n).unwrap();
                e.include_checksum(true).unwrap();
                e.write_all(&data).unwrap();
                e.finish().unwrap()
            })
            .collect();
        assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    }
}
