//! BuildKit's AST dump (`Node.Dump()`), the format of its parser test files, and Go's
//! `strconv.Quote`, which the dump uses for every flag and argument.

use crate::ast::{Ast, Node};

impl Ast {
    /// The instructions as BuildKit dumps them: one `(keyword [flags] "arg" ...)` per line, no
    /// trailing newline. Heredoc bodies, directives and comments are not part of it.
    pub fn dump(&self) -> String {
        let lines: Vec<String> = self
            .children
            .iter()
            .map(|c| format!("({})", c.dump()))
            .collect();
        lines.join("\n")
    }
}

impl Node {
    /// This instruction without the surrounding parentheses: the lowercased keyword, the flags
    /// as a Go-quoted list in brackets if there are any, then an `ONBUILD` trigger in
    /// parentheses or the Go-quoted arguments.
    pub fn dump(&self) -> String {
        let mut out = super::go_lowercase(&self.keyword);
        if !self.flags.is_empty() {
            let flags: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            out.push_str(" [");
            out.push_str(&flags.join(" "));
            out.push(']');
        }
        if let Some(inner) = &self.inner {
            out.push_str(" (");
            out.push_str(&inner.dump());
            out.push(')');
        }
        for arg in &self.args {
            out.push(' ');
            out.push_str(&go_quote(arg));
        }
        // Go trims the result, which only matters for an empty keyword.
        out.trim().to_string()
    }
}

/// Quotes `s` exactly like Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    go_quote_bytes(s.as_bytes())
}

/// Quotes bytes like Go's `strconv.Quote` does a string holding them: invalid UTF-8 bytes
/// become `\xNN`.
pub fn go_quote_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_quoted_char(&mut out, c);
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

fn push_quoted_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        c if is_go_printable(c) => out.push(c),
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
        c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
        c => out.push_str(&format!("\\U{:08x}", c as u32)),
    }
}

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and U+0020.
///
/// This is an approximation: without Unicode category tables it rejects exactly the control,
/// format, separator (other than U+0020), private-use and noncharacter code points listed
/// below plus the wholly unassigned planes, and accepts everything else, so a code point that
/// is unassigned inside an otherwise assigned block is wrongly kept raw. The rejections cover
/// every character that can realistically show up in a Dockerfile (non-breaking and
/// typographic spaces, zero-width and bidi controls, the byte order mark, soft hyphen).
pub(crate) fn is_go_printable(c: char) -> bool {
    let cp = c as u32;
    if cp < 0x80 {
        return (0x20..0x7f).contains(&cp);
    }
    !NOT_PRINTABLE
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&cp))
        && !is_noncharacter(cp)
}

/// U+FDD0..U+FDEF and the last two code points of every plane.
fn is_noncharacter(cp: u32) -> bool {
    (0xFDD0..=0xFDEF).contains(&cp) || cp & 0xFFFE == 0xFFFE
}

/// Non-printable ranges above ASCII (inclusive), in code point order.
const NOT_PRINTABLE: &[(u32, u32)] = &[
    (0x0080, 0x00A0),    // C1 controls, no-break space
    (0x00AD, 0x00AD),    // soft hyphen
    (0x0378, 0x0379),    // unassigned
    (0x0380, 0x0383),    // unassigned
    (0x038B, 0x038B),    // unassigned
    (0x038D, 0x038D),    // unassigned
    (0x03A2, 0x03A2),    // unassigned
    (0x0600, 0x0605),    // Arabic number signs (format)
    (0x061C, 0x061C),    // Arabic letter mark
    (0x06DD, 0x06DD),    // Arabic end of ayah
    (0x070F, 0x070F),    // Syriac abbreviation mark
    (0x0890, 0x0891),    // Arabic pound/piastre mark above
    (0x08E2, 0x08E2),    // Arabic disputed end of ayah
    (0x1680, 0x1680),    // Ogham space mark
    (0x180E, 0x180E),    // Mongolian vowel separator
    (0x2000, 0x200F),    // typographic spaces, zero-width characters, LRM/RLM
    (0x2028, 0x202F),    // line/paragraph separators, bidi embeddings, narrow no-break space
    (0x205F, 0x206F),    // medium math space, invisible operators, bidi isolates
    (0x3000, 0x3000),    // ideographic space
    (0xD800, 0xF8FF),    // surrogates, private use
    (0xFEFF, 0xFEFF),    // byte order mark
    (0xFFF0, 0xFFFB),    // unassigned, interlinear annotation
    (0x110BD, 0x110BD),  // Kaithi number sign
    (0x110CD, 0x110CD),  // Kaithi number sign above
    (0x13430, 0x1343F),  // Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3),  // shorthand format controls
    (0x1D173, 0x1D17A),  // musical symbol format controls
    (0x2FA1E, 0x2FFFF),  // unassigned end of plane 2
    (0x323B0, 0xE00FF),  // unassigned planes 3 (tail) to 13, tags
    (0xE01F0, 0x10FFFF), // unassigned end of plane 14, private use planes
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote("abc 123"), "\"abc 123\"");
        assert_eq!(go_quote("♥ ☃ é"), "\"♥ ☃ é\"");
        assert_eq!(
            go_quote("\" \\ / \u{8} \u{c} \n \r \t \0 \u{7} \u{b}"),
            "\"\\\" \\\\ / \\b \\f \\n \\r \\t \\x00 \\a \\v\""
        );
        assert_eq!(go_quote("\u{7f}\u{1b}"), "\"\\x7f\\x1b\"");
        assert_eq!(go_quote("\u{85}\u{a0}\u{ad}"), "\"\\u0085\\u00a0\\u00ad\"");
        assert_eq!(
            go_quote("\u{3000}\u{feff}\u{200b}"),
            "\"\\u3000\\ufeff\\u200b\""
        );
        assert_eq!(go_quote("\u{e000}\u{f0000}"), "\"\\ue000\\U000f0000\"");
        assert_eq!(go_quote("\u{fffd}😀"), "\"\u{fffd}😀\"");
        assert_eq!(go_quote("\u{fffe}"), "\"\\ufffe\"");
    }

    #[test]
    fn invalid_utf8_bytes_are_hex_escaped() {
        assert_eq!(go_quote_bytes(b"a\xffb\xc3"), "\"a\\xffb\\xc3\"");
    }

    #[test]
    fn dumps_nested_and_flags() {
        let node = |keyword: &str, flags: &[&str], args: &[&str]| Node {
            keyword: keyword.into(),
            flags: flags.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            json: false,
            inner: None,
            heredocs: Vec::new(),
            original: String::new(),
            start_line: 1,
            end_line: 1,
            span: Default::default(),
        };
        let mut onbuild = node("onbuild", &[], &[]);
        onbuild.inner = Some(Box::new(node("run", &["--x=1"], &["echo"])));
        assert_eq!(onbuild.dump(), "onbuild (run [\"--x=1\"] \"echo\")");
        assert_eq!(node("cmd", &[], &[]).dump(), "cmd");
        assert_eq!(node("", &[], &[""]).dump(), "\"\"");
        let ast = Ast {
            children: vec![node("from", &[], &["a"]), onbuild],
            directives: Vec::new(),
            escape: '\\',
            warnings: Vec::new(),
        };
        assert_eq!(
            ast.dump(),
            "(from \"a\")\n(onbuild (run [\"--x=1\"] \"echo\"))"
        );
    }
}
