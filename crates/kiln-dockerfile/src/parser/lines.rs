//! Physical lines of the source, and the map from a joined logical line back to the source.
//!
//! Every span the parser reports is a byte range of the *original* input, so the reader keeps
//! the offsets of each line (a leading byte order mark is skipped but still counted), and a
//! [`Joined`] line remembers which source bytes each of its pieces came from.

use std::borrow::Cow;

use crate::error::{Error, Span};

/// The longest physical line BuildKit accepts: Go's `bufio.Scanner` gives up on a line (with
/// its `\n`) longer than its 64 KiB buffer.
pub const MAX_LINE_LEN: usize = 65535;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One physical line.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Line<'a> {
    /// 1-based line number.
    pub number: usize,
    /// Offset of the first byte (after the byte order mark on line 1).
    pub start: usize,
    /// Offset just past the text, trailing `\r` (and `\n`) excluded.
    pub end: usize,
    /// The text: `src[start..end]`.
    pub text: &'a [u8],
    /// The line with its terminator, as heredoc bodies keep it.
    pub raw: &'a [u8],
}

impl Line<'_> {
    /// The text as UTF-8; invalid sequences become U+FFFD (borrowed when already valid).
    pub fn decode(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.text)
    }

    /// A span of `len` bytes starting `offset` bytes into the line.
    pub fn span(&self, offset: usize, len: usize) -> Span {
        let start = (self.start + offset).min(self.end);
        Span::new(start, (start + len).min(self.end))
    }
}

/// Reads the source one physical line at a time, like BuildKit's scanner: lines end at `\n`,
/// a final `\n` does not start another line, and over-long lines are an error.
pub(crate) struct Lines<'a> {
    src: &'a [u8],
    pos: usize,
    number: usize,
}

impl<'a> Lines<'a> {
    /// A reader over `src`, skipping a UTF-8 byte order mark at its very start.
    pub fn new(src: &'a [u8]) -> Self {
        let pos = if src.starts_with(BOM) { BOM.len() } else { 0 };
        Lines {
            src,
            pos,
            number: 0,
        }
    }

    /// The next line, `None` at the end of the input.
    pub fn next_line(&mut self) -> Result<Option<Line<'a>>, Error> {
        if self.pos >= self.src.len() {
            return Ok(None);
        }
        let start = self.pos;
        // Go's scanner counts the byte order mark as part of the first line.
        let counted_from = if self.number == 0 { 0 } else { start };
        // Searching no further than the limit keeps a huge single line cheap to reject.
        let window_end = self.src.len().min(counted_from + MAX_LINE_LEN + 1);
        let newline = self.src[start..window_end].iter().position(|&b| b == b'\n');
        let (content_end, next) = match newline {
            Some(i) => (start + i, start + i + 1),
            None if window_end == self.src.len() => (window_end, window_end),
            None => {
                return Err(Error::new(
                    format!("dockerfile line greater than max allowed size of {MAX_LINE_LEN}"),
                    Span::new(start, window_end),
                )
                .with_help("split the line with the escape character at the end of lines"))
            }
        };
        if content_end - counted_from > MAX_LINE_LEN {
            return Err(Error::new(
                format!("dockerfile line greater than max allowed size of {MAX_LINE_LEN}"),
                Span::new(start, content_end),
            )
            .with_help("split the line with the escape character at the end of lines"));
        }
        let mut end = content_end;
        while end > start && matches!(self.src[end - 1], b'\r' | b'\n') {
            end -= 1;
        }
        self.pos = next;
        self.number += 1;
        Ok(Some(Line {
            number: self.number,
            start,
            end,
            text: &self.src[start..end],
            raw: &self.src[start..next],
        }))
    }
}

/// Where one piece of a [`Joined`] line came from.
#[derive(Clone, Copy, Debug)]
struct Piece {
    /// Offset of the piece in the joined text.
    at: usize,
    /// Offset of its first byte in the source.
    src: usize,
    /// Its length in the source (differs from the text only where bytes were not UTF-8).
    src_len: usize,
}

/// A logical line: pieces of physical lines appended without separators.
#[derive(Debug, Default)]
pub(crate) struct Joined {
    /// The joined text.
    pub text: String,
    pieces: Vec<Piece>,
}

impl Joined {
    /// Appends `decoded[range]`, a piece of `line` (whose decoded text is `decoded`).
    pub fn push(&mut self, line: &Line<'_>, decoded: &str, range: std::ops::Range<usize>) {
        let piece = &decoded[range.clone()];
        if piece.is_empty() {
            return;
        }
        // Offsets are exact for valid UTF-8; past an invalid byte they are approximate,
        // which is good enough for pointing at a line.
        let span = line.span(range.start, piece.len());
        self.pieces.push(Piece {
            at: self.text.len(),
            src: span.start,
            src_len: span.end - span.start,
        });
        self.text.push_str(piece);
    }

    /// The source span of `self.text[range]`; `fallback` when the text is empty.
    pub fn span(&self, range: std::ops::Range<usize>, fallback: Span) -> Span {
        if self.pieces.is_empty() {
            return fallback;
        }
        let start = self.src_offset(range.start, false);
        let end = if range.end > range.start {
            self.src_offset(range.end, true)
        } else {
            start
        };
        Span::new(start, end.max(start))
    }

    /// Maps a text offset to the source; `as_end` picks the piece the offset ends rather than
    /// the one it starts, which matters exactly at piece boundaries.
    fn src_offset(&self, at: usize, as_end: bool) -> usize {
        let idx = if as_end {
            self.pieces.partition_point(|p| p.at < at)
        } else {
            self.pieces.partition_point(|p| p.at <= at)
        };
        let piece = self.pieces[idx.saturating_sub(1)];
        piece.src + (at.saturating_sub(piece.at)).min(piece.src_len)
    }

    /// The source span of `sub`, which must be a slice of `self.text`.
    pub fn span_of(&self, sub: &str, fallback: Span) -> Span {
        let start = offset_in(&self.text, sub);
        self.span(start..start + sub.len(), fallback)
    }
}

/// The byte offset of `sub` inside `outer`; `sub` must have been sliced out of `outer` (both
/// point into the same allocation, so this is plain address arithmetic).
pub(crate) fn offset_in(outer: &str, sub: &str) -> usize {
    let offset = (sub.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize);
    debug_assert!(offset <= outer.len(), "substring not taken from this line");
    offset.min(outer.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(src: &[u8]) -> Vec<(usize, usize, usize, Vec<u8>)> {
        let mut lines = Lines::new(src);
        let mut out = Vec::new();
        while let Some(l) = lines.next_line().unwrap() {
            out.push((l.number, l.start, l.end, l.text.to_vec()));
        }
        out
    }

    #[test]
    fn splits_like_go_scanner() {
        assert!(all(b"").is_empty());
        assert_eq!(all(b"a\n"), vec![(1, 0, 1, b"a".to_vec())]);
        assert_eq!(
            all(b"a\r\nb"),
            vec![(1, 0, 1, b"a".to_vec()), (2, 3, 4, b"b".to_vec())]
        );
        assert_eq!(all(b"\n"), vec![(1, 0, 0, Vec::new())]);
        assert_eq!(all(b"\xEF\xBB\xBFx"), vec![(1, 3, 4, b"x".to_vec())]);
    }

    #[test]
    fn line_length_limit() {
        let ok = vec![b'a'; MAX_LINE_LEN];
        assert_eq!(all(&ok).len(), 1);
        let mut long = b"FROM x\n".to_vec();
        long.extend(vec![b'a'; MAX_LINE_LEN + 1]);
        long.extend(b"\nRUN y\n");
        let mut lines = Lines::new(&long);
        assert!(lines.next_line().unwrap().is_some());
        let err = lines.next_line().unwrap_err();
        assert_eq!(
            err.message,
            "dockerfile line greater than max allowed size of 65535"
        );
        assert_eq!(err.span.start, 7);
    }

    #[test]
    fn joined_maps_back_to_source() {
        let src = b"RUN a \\\n  b\n";
        let mut lines = Lines::new(src);
        let l1 = lines.next_line().unwrap().unwrap();
        let l2 = lines.next_line().unwrap().unwrap();
        let mut j = Joined::default();
        let d1 = l1.decode();
        j.push(&l1, &d1, 0..6);
        let d2 = l2.decode();
        j.push(&l2, &d2, 0..3);
        assert_eq!(j.text, "RUN a   b");
        // "b" is the last byte of the second line.
        assert_eq!(j.span(8..9, Span::default()), Span::new(10, 11));
        // "a   b" runs from the first line into the second.
        assert_eq!(j.span(4..9, Span::default()), Span::new(4, 11));
        assert_eq!(j.span(0..6, Span::default()), Span::new(0, 6));
    }
}
