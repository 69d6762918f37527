//! A deterministic tar writer: ustar headers, with PAX extended headers for whatever ustar
//! cannot hold. Never GNU long names or GNU sparse, which some OCI consumers reject and which
//! would give the same tree two encodings.
//!
//! The same entries in the same order always give the same bytes: uname/gname are empty,
//! device fields are filled only for devices, and PAX records come in a fixed order.

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tar::{EntryType, Header};

use super::entry::{EntryKind, TarEntry};
use super::LayerError;

const BLOCK: usize = 512;
/// Largest value of an 8-byte octal field (uid, gid, device numbers): 7 digits.
const MAX_OCTAL_8: u64 = 0o7_777_777;
/// Largest value of a 12-byte octal field (size, mtime): 11 digits, 8 GiB - 1.
const MAX_OCTAL_12: u64 = 0o77_777_777_777;
const NAME_LEN: usize = 100;
const COPY_BUFFER: usize = 128 * 1024;

/// Writes a layer tar stream to `W`.
///
/// Call [`LayerWriter::append`] for each entry (parents before children; the writer does not
/// sort), then [`LayerWriter::finish`]. After an error the stream is unusable and further
/// appends fail.
pub struct LayerWriter<W: Write> {
    out: W,
    clamp_mtime: Option<i64>,
    state: State,
    buf: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Failed,
    Finished,
}

impl<W: Write> LayerWriter<W> {
    /// A writer over `out`.
    pub fn new(out: W) -> LayerWriter<W> {
        LayerWriter {
            out,
            clamp_mtime: None,
            state: State::Open,
            buf: Vec::new(),
        }
    }

    /// Caps modification times at `epoch` (`SOURCE_DATE_EPOCH`): later times are written as
    /// `epoch` exactly, earlier ones unchanged.
    pub fn set_clamp_mtime(&mut self, epoch: Option<i64>) {
        self.clamp_mtime = epoch;
    }

    /// The clamp in effect.
    pub fn clamp_mtime(&self) -> Option<i64> {
        self.clamp_mtime
    }

    /// Appends one entry. Regular files need `content` yielding exactly `entry.size` bytes;
    /// other kinds take none and must have size 0.
    pub fn append(
        &mut self,
        entry: &TarEntry,
        content: Option<&mut dyn Read>,
    ) -> Result<(), LayerError> {
        match self.state {
            State::Open => {}
            State::Failed => return Err(LayerError::WriterFailed),
            State::Finished => return Err(LayerError::WriterFinished),
        }
        let result = self.append_inner(entry, content);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// Writes the end-of-archive marker (two zero blocks) and flushes. Idempotent.
    pub fn finish(&mut self) -> Result<(), LayerError> {
        match self.state {
            State::Finished => return Ok(()),
            State::Failed => return Err(LayerError::WriterFailed),
            State::Open => {}
        }
        self.out.write_all(&[0u8; 2 * BLOCK]).map_err(write_err)?;
        self.out.flush().map_err(write_err)?;
        self.state = State::Finished;
        Ok(())
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Returns the underlying writer (finish first, or the archive has no end marker).
    pub fn into_inner(self) -> W {
        self.out
    }

    fn append_inner(
        &mut self,
        entry: &TarEntry,
        content: Option<&mut dyn Read>,
    ) -> Result<(), LayerError> {
        let mtime = self.effective_mtime(entry);
        let encoded = encode(entry, mtime)?;
        let is_file = entry.kind == EntryKind::File;
        match (is_file, content.is_some()) {
            (true, false) if entry.size > 0 => {
                return Err(invalid(entry, "regular file without content"))
            }
            (false, true) => return Err(invalid(entry, "only regular files have content")),
            _ => {}
        }
        if let Some(pax) = &encoded.pax {
            self.out.write_all(pax).map_err(write_err)?;
        }
        self.out
            .write_all(encoded.header.as_bytes())
            .map_err(write_err)?;
        if let Some(content) = content {
            self.copy_content(entry, content)?;
        }
        Ok(())
    }

    fn effective_mtime(&self, entry: &TarEntry) -> (i64, u32) {
        let t = (entry.mtime, entry.mtime_nanos);
        match self.clamp_mtime {
            Some(epoch) if t > (epoch, 0) => (epoch, 0),
            _ => t,
        }
    }

    fn copy_content(&mut self, entry: &TarEntry, content: &mut dyn Read) -> Result<(), LayerError> {
        if self.buf.is_empty() {
            self.buf = vec![0u8; COPY_BUFFER];
        }
        let mut left = entry.size;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = read_some(content, &mut self.buf[..want]).map_err(|e| read_err(entry, e))?;
            if n == 0 {
                return Err(LayerError::ContentTooShort {
                    path: display(&entry.path),
                    expected: entry.size,
                    actual: entry.size - left,
                });
            }
            self.out.write_all(&self.buf[..n]).map_err(write_err)?;
            left -= n as u64;
        }
        let mut probe = [0u8; 1];
        if read_some(content, &mut probe).map_err(|e| read_err(entry, e))? != 0 {
            return Err(LayerError::ContentTooLong {
                path: display(&entry.path),
                expected: entry.size,
            });
        }
        let pad = padding(entry.size);
        self.out.write_all(&[0u8; BLOCK][..pad]).map_err(write_err)
    }
}

fn read_some(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Zero bytes needed after `size` bytes of data to reach a block boundary.
pub(crate) fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

fn write_err(source: io::Error) -> LayerError {
    LayerError::Io {
        op: "write layer",
        source,
    }
}

fn read_err(entry: &TarEntry, source: io::Error) -> LayerError {
    LayerError::Content {
        path: display(&entry.path),
        source,
    }
}

pub(crate) fn display(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn invalid(entry: &TarEntry, reason: impl Into<String>) -> LayerError {
    LayerError::InvalidEntry {
        path: display(&entry.path),
        reason: reason.into(),
    }
}

/// One entry's header block, preceded by its PAX header and records when needed.
struct Encoded {
    pax: Option<Vec<u8>>,
    header: Header,
}

fn encode(entry: &TarEntry, (secs, nanos): (i64, u32)) -> Result<Encoded, LayerError> {
    let name = header_name(entry)?;
    let mut pax = PaxRecords::default();
    let mut h = Header::new_ustar();
    h.set_entry_type(entry_type(&entry.kind));

    let ustar = h.as_ustar_mut().expect("new_ustar is ustar");
    if let Some(field) = fits_name_field(&name) {
        ustar.name[..field.len()].copy_from_slice(field);
    } else {
        pax.push("path", &name);
        fill_fallback(&mut ustar.name, &name);
    }
    if let Some(target) = link_target(entry)? {
        if let Some(field) = fits_name_field(&target) {
            ustar.linkname[..field.len()].copy_from_slice(field);
        } else {
            pax.push("linkpath", &target);
            fill_fallback(&mut ustar.linkname, &target);
        }
    }

    if entry.mode & !0o7777 != 0 {
        return Err(invalid(
            entry,
            format!("mode {:o} has bits beyond 07777", entry.mode),
        ));
    }
    h.set_mode(entry.mode);
    h.set_uid(octal_or_pax(&mut pax, "uid", entry.uid, MAX_OCTAL_8));
    h.set_gid(octal_or_pax(&mut pax, "gid", entry.gid, MAX_OCTAL_8));
    h.set_size(size_field(entry, &mut pax)?);
    h.set_mtime(mtime_field(entry, secs, nanos, &mut pax)?);
    set_device(entry, &mut h)?;
    for (name, value) in &entry.xattrs {
        check_xattr_name(entry, name)?;
        pax.push(&format!("SCHILY.xattr.{name}"), value);
    }
    h.set_cksum();

    let pax = (!pax.is_empty()).then(|| pax.into_block(&name, h.mtime().unwrap_or(0)));
    Ok(Encoded { pax, header: h })
}

fn entry_type(kind: &EntryKind) -> EntryType {
    match kind {
        EntryKind::File => EntryType::Regular,
        EntryKind::Dir => EntryType::Directory,
        EntryKind::Symlink(_) => EntryType::Symlink,
        EntryKind::Hardlink(_) => EntryType::Link,
        EntryKind::Char(..) => EntryType::Char,
        EntryKind::Block(..) => EntryType::Block,
        EntryKind::Fifo => EntryType::Fifo,
    }
}

/// The path as stored: normalised, with a trailing `/` for directories.
fn header_name(entry: &TarEntry) -> Result<Vec<u8>, LayerError> {
    let mut name =
        normalize(entry.path.as_os_str().as_bytes()).map_err(|reason| invalid(entry, reason))?;
    if entry.kind == EntryKind::Dir {
        name.push(b'/');
    }
    Ok(name)
}

/// Strips leading `/` and `./`, drops empty and `.` components; refuses `..`, NUL and an empty
/// result, none of which belong in a layer.
pub(crate) fn normalize(path: &[u8]) -> Result<Vec<u8>, &'static str> {
    if path.contains(&0) {
        return Err("path contains a NUL byte");
    }
    let mut out = Vec::with_capacity(path.len());
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err("path has a .. component"),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    if out.is_empty() {
        return Err("path is empty (the layer root is not an entry)");
    }
    Ok(out)
}

fn link_target(entry: &TarEntry) -> Result<Option<Vec<u8>>, LayerError> {
    match &entry.kind {
        EntryKind::Symlink(t) => {
            let t = t.as_os_str().as_bytes();
            if t.is_empty() || t.contains(&0) {
                return Err(invalid(entry, "symlink target is empty or has a NUL byte"));
            }
            Ok(Some(t.to_vec()))
        }
        EntryKind::Hardlink(t) => normalize(t.as_os_str().as_bytes())
            .map(Some)
            .map_err(|r| invalid(entry, format!("hard link target: {r}"))),
        _ => Ok(None),
    }
}

/// The bytes themselves if they fit a 100-byte ustar name field unambiguously: short enough
/// and plain printable ASCII (anything else goes to PAX, which says it is UTF-8 or binary).
fn fits_name_field(name: &[u8]) -> Option<&[u8]> {
    let plain = name.iter().all(|&b| (0x20..0x7f).contains(&b));
    (name.len() <= NAME_LEN && plain).then_some(name)
}

/// What a reader that ignores PAX sees: an ASCII-only cut of the real name.
fn fill_fallback(field: &mut [u8; NAME_LEN], name: &[u8]) {
    for (slot, &b) in field.iter_mut().zip(name) {
        *slot = if (0x20..0x7f).contains(&b) { b } else { b'_' };
    }
}

fn octal_or_pax(pax: &mut PaxRecords, key: &str, value: u64, max: u64) -> u64 {
    if value <= max {
        value
    } else {
        pax.push(key, value.to_string().as_bytes());
        0
    }
}

fn size_field(entry: &TarEntry, pax: &mut PaxRecords) -> Result<u64, LayerError> {
    if entry.kind != EntryKind::File {
        if entry.size != 0 {
            return Err(invalid(entry, "only regular files may have a size"));
        }
        return Ok(0);
    }
    Ok(octal_or_pax(pax, "size", entry.size, MAX_OCTAL_12))
}

fn mtime_field(
    entry: &TarEntry,
    secs: i64,
    nanos: u32,
    pax: &mut PaxRecords,
) -> Result<u64, LayerError> {
    if nanos >= 1_000_000_000 {
        return Err(invalid(entry, "mtime nanoseconds must be below 1e9"));
    }
    let in_range = (0..=MAX_OCTAL_12 as i64).contains(&secs);
    if nanos != 0 || !in_range {
        pax.push("mtime", pax_time(secs, nanos).as_bytes());
    }
    Ok(if in_range { secs as u64 } else { 0 })
}

/// A PAX time: seconds with an optional fraction (trailing zeros dropped), where a negative
/// time counts back from the epoch: (-2 s, +0.5 s) is "-1.5".
pub(crate) fn pax_time(secs: i64, nanos: u32) -> String {
    if nanos == 0 {
        return secs.to_string();
    }
    let (sign, whole, frac) = if secs < 0 {
        ("-", (-(secs + 1)) as u64, 1_000_000_000 - nanos)
    } else {
        ("", secs as u64, nanos)
    };
    let frac = format!("{frac:09}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

fn set_device(entry: &TarEntry, h: &mut Header) -> Result<(), LayerError> {
    let (major, minor) = match entry.kind {
        EntryKind::Char(a, b) | EntryKind::Block(a, b) => (a, b),
        _ => return Ok(()),
    };
    if u64::from(major) > MAX_OCTAL_8 || u64::from(minor) > MAX_OCTAL_8 {
        return Err(invalid(entry, "device number too large for ustar"));
    }
    let set = h
        .set_device_major(major)
        .and_then(|_| h.set_device_minor(minor));
    set.map_err(|e| invalid(entry, e.to_string()))
}

fn check_xattr_name(entry: &TarEntry, name: &str) -> Result<(), LayerError> {
    // The record key ends at the first '=', so a name holding one cannot round-trip.
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(invalid(
            entry,
            format!("xattr name {name:?} cannot be stored"),
        ));
    }
    Ok(())
}

/// PAX extended header records, kept in insertion order (which `encode` fixes).
///
/// Non-UTF-8 paths go into `path` records as raw bytes, as Go's archive/tar writes them. We do
/// not add `hdrcharset=BINARY`: GNU tar 1.34 warns about it, and both GNU tar and Go take the
/// bytes as they are anyway.
#[derive(Default)]
struct PaxRecords {
    records: Vec<u8>,
}

impl PaxRecords {
    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Appends `"<len> <key>=<value>\n"`, where len counts the whole record including itself.
    fn push(&mut self, key: &str, value: &[u8]) {
        let body = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while len != body + digits(len) {
            len = body + digits(len);
        }
        self.records.extend_from_slice(len.to_string().as_bytes());
        self.records.push(b' ');
        self.records.extend_from_slice(key.as_bytes());
        self.records.push(b'=');
        self.records.extend_from_slice(value);
        self.records.push(b'\n');
    }

    /// The `x` header block, the records and their padding.
    fn into_block(self, name: &[u8], mtime: u64) -> Vec<u8> {
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        let ustar = h.as_ustar_mut().expect("new_ustar is ustar");
        fill_fallback(&mut ustar.name, &pax_header_name(name));
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_size(self.records.len() as u64);
        h.set_cksum();
        let mut out = Vec::with_capacity(BLOCK * 2 + self.records.len());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&self.records);
        out.resize(out.len() + padding(self.records.len() as u64), 0);
        out
    }
}

/// `PaxHeaders.0/<base name>`, the name Go's archive/tar gives its PAX headers.
fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    let base = trimmed.rsplit(|&b| b == b'/').next().unwrap_or(trimmed);
    let mut out = b"PaxHeaders.0/".to_vec();
    out.extend_from_slice(base);
    out.truncate(NAME_LEN);
    out
}

fn digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(entries: &[(TarEntry, Option<&[u8]>)]) -> Vec<u8> {
        let mut w = LayerWriter::new(Vec::new());
        for (e, data) in entries {
            let mut r = data.map(|d| d);
            w.append(e, r.as_mut().map(|r| r as &mut dyn Read)).unwrap();
        }
        w.finish().unwrap();
        w.into_inner()
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for vlen in [0usize, 1, 85, 86, 87, 88, 990, 995, 996, 997, 10_000] {
            let mut p = PaxRecords::default();
            let value = vec![b'a'; vlen];
            p.push("path", &value);
            let text = &p.records;
            let space = text.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&text[..space])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, text.len(), "value length {vlen}");
        }
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(5, 0), "5");
        assert_eq!(pax_time(5, 500_000_000), "5.5");
        assert_eq!(pax_time(5, 1), "5.000000001");
        assert_eq!(pax_time(-2, 500_000_000), "-1.5");
        assert_eq!(pax_time(-1, 0), "-1");
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize(b"/a/./b//c/").unwrap(), b"a/b/c");
        assert_eq!(normalize(b"./x").unwrap(), b"x");
        assert!(normalize(b"a/../b").is_err());
        assert!(normalize(b"/").is_err());
        assert!(normalize(b"a\0b").is_err());
    }

    #[test]
    fn short_plain_entry_has_no_pax_and_no_device_fields() {
        let out = write(&[(TarEntry::file("a.txt", 3), Some(b"abc"))]);
        assert_eq!(out.len(), 512 + 512 + 1024);
        let h = Header::from_byte_slice(&out[..512]);
        assert_eq!(h.entry_type(), EntryType::Regular);
        let u = h.as_ustar().unwrap();
        assert_eq!(u.dev_major, [0; 8]);
        assert!(u.uname.iter().all(|&b| b == 0));
        assert_eq!(&out[512..515], b"abc");
    }

    #[test]
    fn content_length_is_checked() {
        let mut w = LayerWriter::new(Vec::new());
        let mut short: &[u8] = b"ab";
        let err = w
            .append(&TarEntry::file("f", 3), Some(&mut short))
            .unwrap_err();
        assert!(
            matches!(err, LayerError::ContentTooShort { actual: 2, .. }),
            "{err}"
        );
        // The stream is now broken, and the writer says so.
        assert!(matches!(
            w.append(&TarEntry::dir("d"), None),
            Err(LayerError::WriterFailed)
        ));

        let mut w = LayerWriter::new(Vec::new());
        let mut long: &[u8] = b"abcd";
        let err = w
            .append(&TarEntry::file("f", 3), Some(&mut long))
            .unwrap_err();
        assert!(matches!(err, LayerError::ContentTooLong { .. }), "{err}");
    }

    #[test]
    fn invalid_entries_are_refused() {
        let cases = [
            TarEntry::file("../x", 0),
            TarEntry::dir("/"),
            TarEntry::file("x", 0).with_mode(0o100644),
            TarEntry::file("x", 0).with_xattr("a=b", b"v".to_vec()),
            TarEntry::file("x", 0).with_mtime(1, 1_000_000_000),
            TarEntry::hardlink("x", "../y"),
            TarEntry::char_device("x", 1 << 22, 0),
            TarEntry {
                size: 5,
                ..TarEntry::dir("d")
            },
        ];
        for e in cases {
            let mut w = LayerWriter::new(Vec::new());
            assert!(w.append(&e, None).is_err(), "{e:?}");
        }
    }

    #[test]
    fn clamp_only_lowers() {
        let mut w = LayerWriter::new(Vec::new());
        w.set_clamp_mtime(Some(1000));
        w.append(&TarEntry::dir("new").with_mtime(5000, 7), None)
            .unwrap();
        w.append(&TarEntry::dir("old").with_mtime(10, 0), None)
            .unwrap();
        w.finish().unwrap();
        let out = w.into_inner();
        assert_eq!(Header::from_byte_slice(&out[..512]).mtime().unwrap(), 1000);
        assert_eq!(
            Header::from_byte_slice(&out[512..1024]).mtime().unwrap(),
            10
        );
    }
}
