//! Reading layer tar streams (any compression), entry by entry.
//!
//! Our own loop over 512-byte blocks, with the tar crate's `Header` decoding the fields: tar's
//! `Archive` reads a PAX or GNU long-name body into memory whatever size the header claims,
//! which a hostile layer could use to exhaust memory. Here such bodies are capped, content is
//! streamed, and every malformed field is an error, never a panic. Extraction is not done here
//! (the unpacker owns it), so paths are reported as found apart from a leading `/` or `./`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use tar::{EntryType, Header};

use super::entry::{EntryKind, TarEntry};
use super::writer::padding;
use super::LayerError;
use crate::compression::{Decoder, Format};

const BLOCK: usize = 512;
/// PAX headers carry paths and xattrs; real ones are a few KiB. Larger is refused.
const MAX_PAX_SIZE: u64 = 1 << 20;
/// GNU long names (`L`/`K`), read for compatibility with other writers.
const MAX_LONG_NAME: u64 = 64 << 10;

/// Opens a layer stream, detecting gzip, zstd, bzip2 or xz by magic bytes (anything else is
/// read as plain tar).
pub fn open_layer<R: Read>(input: R) -> Result<LayerReader<R>, LayerError> {
    let (decoder, format) = Decoder::sniff(input).map_err(|source| LayerError::Io {
        op: "read layer",
        source,
    })?;
    Ok(LayerReader {
        input: decoder,
        format,
        remaining: 0,
        pad: 0,
        done: false,
    })
}

/// A layer being read. [`LayerReader::next_entry`] moves to the next entry; the reader itself
/// then reads that entry's content (unread content is skipped on the next call).
pub struct LayerReader<R: Read> {
    input: Decoder<R>,
    format: Format,
    remaining: u64,
    pad: usize,
    done: bool,
}

/// Extension data gathered from PAX and GNU headers for the next real entry.
#[derive(Default)]
struct Pending {
    pax: BTreeMap<String, Vec<u8>>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl<R: Read> LayerReader<R> {
    /// The compression found.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The next entry, or `None` at the end of the archive. Errors are final: after one, this
    /// returns `None` (except for [`LayerError::UnsupportedEntry`], after which reading can go
    /// on with the next entry).
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, LayerError> {
        if self.done {
            return Ok(None);
        }
        let result = self.advance();
        match &result {
            Err(LayerError::UnsupportedEntry { .. }) => {}
            Err(_) => self.done = true,
            Ok(None) => self.done = true,
            Ok(Some(_)) => {}
        }
        result
    }

    /// Iterates over the remaining entries, skipping their content.
    pub fn entries(&mut self) -> Entries<'_, R> {
        Entries { reader: self }
    }

    fn advance(&mut self) -> Result<Option<TarEntry>, LayerError> {
        self.skip_rest()?;
        let mut pending = Pending::default();
        loop {
            let Some(header) = self.read_header()? else {
                return Ok(None);
            };
            let size = header
                .entry_size()
                .map_err(|e| corrupt(&header, &e.to_string()))?;
            match header.entry_type() {
                EntryType::XHeader => {
                    let body = self.read_body(&header, size, MAX_PAX_SIZE)?;
                    parse_pax(&body, &mut pending.pax).map_err(|r| corrupt(&header, r))?;
                }
                EntryType::XGlobalHeader => {
                    // Global defaults are rare in layers and unsafe to apply blindly; skip.
                    self.read_body(&header, size, MAX_PAX_SIZE)?;
                }
                EntryType::GNULongName => {
                    pending.long_name = Some(self.read_long_name(&header, size)?);
                }
                EntryType::GNULongLink => {
                    pending.long_link = Some(self.read_long_name(&header, size)?);
                }
                _ => return self.entry(&header, size, pending).map(Some),
            }
        }
    }

    /// Reads a header block; `None` at the end-of-archive zero block or a clean end of input.
    fn read_header(&mut self) -> Result<Option<Header>, LayerError> {
        let mut block = [0u8; BLOCK];
        let n = read_full(&mut self.input, &mut block).map_err(read_err)?;
        if n == 0 {
            // No end marker: truncated at an entry boundary. Accepted, as other readers do.
            return Ok(None);
        }
        if n < BLOCK {
            return Err(LayerError::Corrupt {
                path: None,
                reason: format!("archive ends inside a header ({n} of 512 bytes)"),
            });
        }
        if block.iter().all(|&b| b == 0) {
            self.drain()?;
            return Ok(None);
        }
        let mut header = Header::new_old();
        header.as_mut_bytes().copy_from_slice(&block);
        verify_checksum(&header)?;
        Ok(Some(header))
    }

    /// Reads to the end of the input, so a compressed stream's trailer and checksum are
    /// checked; a corrupt layer fails even if its damage lies past the end marker.
    fn drain(&mut self) -> Result<(), LayerError> {
        io::copy(&mut self.input, &mut io::sink())
            .map(drop)
            .map_err(read_err)
    }

    fn read_body(&mut self, header: &Header, size: u64, max: u64) -> Result<Vec<u8>, LayerError> {
        if size > max {
            return Err(corrupt(
                header,
                &format!("extension header of {size} bytes is too large"),
            ));
        }
        let mut body = vec![0u8; size as usize];
        let n = read_full(&mut self.input, &mut body).map_err(read_err)?;
        if n < body.len() {
            return Err(truncated(header));
        }
        self.skip(padding(size) as u64, header)?;
        Ok(body)
    }

    fn read_long_name(&mut self, header: &Header, size: u64) -> Result<Vec<u8>, LayerError> {
        let mut body = self.read_body(header, size, MAX_LONG_NAME)?;
        while body.last() == Some(&0) {
            body.pop();
        }
        Ok(body)
    }

    fn skip(&mut self, n: u64, header: &Header) -> Result<(), LayerError> {
        let copied = io::copy(&mut (&mut self.input).take(n), &mut io::sink()).map_err(read_err)?;
        if copied < n {
            return Err(truncated(header));
        }
        Ok(())
    }

    /// Skips what is left of the current entry's content and padding.
    fn skip_rest(&mut self) -> Result<(), LayerError> {
        let n = self.remaining + self.pad as u64;
        let copied = io::copy(&mut (&mut self.input).take(n), &mut io::sink()).map_err(read_err)?;
        self.remaining = 0;
        self.pad = 0;
        if copied < n {
            return Err(LayerError::Corrupt {
                path: None,
                reason: "archive ends inside an entry's content".into(),
            });
        }
        Ok(())
    }

    fn entry(&mut self, header: &Header, size: u64, p: Pending) -> Result<TarEntry, LayerError> {
        let kind_byte = header.entry_type().as_byte();
        let path_bytes = pax_or(&p.pax, "path", p.long_name, || {
            header.path_bytes().into_owned()
        });
        let path = strip_root(&path_bytes);
        let header_only = matches!(kind_byte, b'1'..=b'6');
        // Set before anything can fail, so an unsupported entry's data is skipped next time.
        let data_len = if header_only {
            0
        } else {
            pax_number(&p.pax, "size", header)?.unwrap_or(size)
        };
        self.remaining = data_len;
        self.pad = padding(data_len);

        let link = || {
            pax_or(&p.pax, "linkpath", p.long_link.clone(), || {
                header
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default()
            })
        };
        let kind = match kind_byte {
            b'0' | b'7' => EntryKind::File,
            // Old (pre-POSIX) archives mark directories only by a trailing slash.
            b'\0' if path_bytes.ends_with(b"/") => EntryKind::Dir,
            b'\0' => EntryKind::File,
            b'1' => EntryKind::Hardlink(to_path(strip_root(&link()))),
            b'2' => EntryKind::Symlink(to_path(&link())),
            b'3' => {
                let (a, b) = device(header)?;
                EntryKind::Char(a, b)
            }
            b'4' => {
                let (a, b) = device(header)?;
                EntryKind::Block(a, b)
            }
            b'5' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            other => {
                return Err(LayerError::UnsupportedEntry {
                    path: String::from_utf8_lossy(path).into_owned(),
                    typeflag: other,
                })
            }
        };
        let (mtime, mtime_nanos) = match p.pax.get("mtime") {
            Some(v) => parse_pax_time(v).ok_or_else(|| corrupt(header, "bad PAX mtime"))?,
            None => (field(header, header.mtime())? as i64, 0),
        };
        Ok(TarEntry {
            path: to_path(path),
            size: if kind == EntryKind::File { data_len } else { 0 },
            kind,
            mode: field(header, header.mode())? & 0o7777,
            uid: match pax_number(&p.pax, "uid", header)? {
                Some(v) => v,
                None => field(header, header.uid())?,
            },
            gid: match pax_number(&p.pax, "gid", header)? {
                Some(v) => v,
                None => field(header, header.gid())?,
            },
            mtime,
            mtime_nanos,
            xattrs: xattrs(&p.pax),
        })
    }
}

impl<R: Read> Read for LayerReader<R> {
    /// Reads the current entry's content; 0 at its end.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.remaining) as usize;
        let n = self.input.read(&mut buf[..want])?;
        if n == 0 {
            self.done = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "layer ends inside an entry's content",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Iterator over a layer's entries (content skipped), from [`LayerReader::entries`].
pub struct Entries<'a, R: Read> {
    reader: &'a mut LayerReader<R>,
}

impl<R: Read> Iterator for Entries<'_, R> {
    type Item = Result<TarEntry, LayerError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.reader.next_entry().transpose()
    }
}

/// Reads until `buf` is full or the reader ends; returns how many bytes were read (fewer than
/// `buf.len()` only at the end). Unlike `read_exact`, the end is not an error.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_err(source: io::Error) -> LayerError {
    LayerError::Io {
        op: "read layer",
        source,
    }
}

fn corrupt(header: &Header, reason: &str) -> LayerError {
    LayerError::Corrupt {
        path: Some(String::from_utf8_lossy(&header.path_bytes()).into_owned()),
        reason: reason.to_owned(),
    }
}

fn truncated(header: &Header) -> LayerError {
    corrupt(header, "archive ends inside this entry")
}

fn field<T>(header: &Header, value: io::Result<T>) -> Result<T, LayerError> {
    value.map_err(|e| corrupt(header, &e.to_string()))
}

/// Accepts the unsigned sum (the standard) or the signed one (some old writers).
fn verify_checksum(header: &Header) -> Result<(), LayerError> {
    let stored = field(header, header.cksum())?;
    let bytes = header.as_bytes();
    let (mut unsigned, mut signed) = (0u32, 0i32);
    for (i, &b) in bytes.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i32::from(b as i8);
    }
    if stored == unsigned || stored as i32 == signed {
        Ok(())
    } else {
        Err(corrupt(header, "header checksum mismatch"))
    }
}

fn pax_or(
    pax: &BTreeMap<String, Vec<u8>>,
    key: &str,
    gnu: Option<Vec<u8>>,
    header: impl FnOnce() -> Vec<u8>,
) -> Vec<u8> {
    pax.get(key).cloned().or(gnu).unwrap_or_else(header)
}

fn pax_number(
    pax: &BTreeMap<String, Vec<u8>>,
    key: &str,
    h: &Header,
) -> Result<Option<u64>, LayerError> {
    match pax.get(key) {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| corrupt(h, &format!("bad PAX {key}"))),
    }
}

fn device(header: &Header) -> Result<(u32, u32), LayerError> {
    let major = field(header, header.device_major())?.unwrap_or(0);
    let minor = field(header, header.device_minor())?.unwrap_or(0);
    Ok((major, minor))
}

fn xattrs(pax: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    pax.iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("SCHILY.xattr.")?;
            Some((name.to_owned(), v.clone()))
        })
        .collect()
}

/// Drops leading `/` and `./` and a trailing `/`.
fn strip_root(mut p: &[u8]) -> &[u8] {
    loop {
        if let Some(rest) = p.strip_prefix(b"/") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix(b"./") {
            p = rest;
        } else {
            break;
        }
    }
    if p == b"." {
        return b"";
    }
    while let Some(rest) = p.strip_suffix(b"/") {
        p = rest;
    }
    p
}

fn to_path(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

/// Parses PAX records into `out` (later keys win). Keys are UTF-8 by the standard; values are
/// kept as bytes (paths may be binary, xattr values are).
fn parse_pax(mut body: &[u8], out: &mut BTreeMap<String, Vec<u8>>) -> Result<(), &'static str> {
    while !body.is_empty() {
        // Some writers pad the body with NULs.
        if body.iter().all(|&b| b == 0) {
            break;
        }
        let space = body
            .iter()
            .position(|&b| b == b' ')
            .ok_or("PAX record without a length")?;
        let len: usize = std::str::from_utf8(&body[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("PAX record with a bad length")?;
        if len <= space + 1 || len > body.len() || body[len - 1] != b'\n' {
            return Err("PAX record length does not match its content");
        }
        let record = &body[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("PAX record without '='")?;
        let key = std::str::from_utf8(&record[..eq]).map_err(|_| "PAX key is not UTF-8")?;
        out.insert(key.to_owned(), record[eq + 1..].to_vec());
        body = &body[len..];
    }
    Ok(())
}

/// Parses a PAX time ("123", "123.5", "-1.5") into seconds and nanoseconds past them.
pub(crate) fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    // Only nanosecond precision is kept; further digits are dropped.
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: u32 = digits.parse().ok()?;
    if !negative {
        return Some((whole, nanos));
    }
    if nanos == 0 {
        Some((whole.checked_neg()?, 0))
    } else {
        Some((whole.checked_neg()?.checked_sub(1)?, 1_000_000_000 - nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::writer::pax_time;

    #[test]
    fn pax_time_round_trips() {
        for (s, n) in [
            (0, 0),
            (5, 500_000_000),
            (-2, 500_000_000),
            (-1, 0),
            (1_700_000_000, 1),
        ] {
            assert_eq!(
                parse_pax_time(pax_time(s, n).as_bytes()),
                Some((s, n)),
                "{s} {n}"
            );
        }
        assert_eq!(parse_pax_time(b"1.1234567899"), Some((1, 123_456_789)));
        for bad in [&b""[..], b"-", b"1.2.3", b"x", b"1e5", b".5"] {
            assert_eq!(parse_pax_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pax_parser_rejects_malformed_records() {
        let mut m = BTreeMap::new();
        assert!(parse_pax(b"12 path=abc\n", &mut m).is_ok());
        assert_eq!(m["path"], b"abc");
        for bad in [
            &b"99 path=abc\n"[..],
            b"3 a\n",
            b"x path=a\n",
            b"12 path=abc_",
            b"5 ab=\n",
        ] {
            assert!(
                parse_pax(bad, &mut BTreeMap::new()).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn strip_root_forms() {
        assert_eq!(strip_root(b"./a/b/"), b"a/b");
        assert_eq!(strip_root(b"/a"), b"a");
        assert_eq!(strip_root(b"./"), b"");
        assert_eq!(strip_root(b"."), b"");
        assert_eq!(strip_root(b"a/../b"), b"a/../b");
    }
}
