//! Exec-form detection: does an instruction's argument text hold a JSON array of strings?
//!
//! This follows Go's `encoding/json` `Decoder`, which is what BuildKit uses, rather than
//! `serde_json`, because the details decide between three outcomes:
//!
//! * only the first JSON value is read, so text after the closing `]` is ignored
//!   (`RUN ["ls"],` is exec form in Docker);
//! * a syntax error anywhere means "not JSON" (shell form), but a well-formed array holding
//!   anything other than strings is an error;
//! * lone UTF-16 surrogates in `\u` escapes become U+FFFD instead of failing.
//!
//! The parser is iterative, so deeply nested input cannot exhaust the stack; like Go it gives
//! up (as a syntax error) beyond 10000 levels.

/// What the argument text turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JsonArgs {
    /// Not a JSON array: use the shell form.
    NotJson,
    /// A JSON array with a non-string element: an error.
    NotStrings,
    /// A JSON array of strings.
    Strings(Vec<String>),
}

/// Go's `encoding/json` maximum nesting depth.
const MAX_DEPTH: usize = 10_000;

/// Parses `text` (leading whitespace allowed) as a JSON array of strings.
pub(crate) fn parse_args(text: &str) -> JsonArgs {
    let text = text.trim_start();
    if !text.starts_with('[') {
        return JsonArgs::NotJson;
    }
    let mut reader = Reader {
        bytes: text.as_bytes(),
        pos: 0,
    };
    match reader.string_array() {
        Ok(Some(items)) => JsonArgs::Strings(items),
        Ok(None) => JsonArgs::NotStrings,
        Err(SyntaxError) => JsonArgs::NotJson,
    }
}

/// The input is not well-formed JSON.
#[derive(Debug)]
struct SyntaxError;

type Parsed<T> = Result<T, SyntaxError>;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn bump(&mut self) -> Parsed<u8> {
        let b = self.peek().ok_or(SyntaxError)?;
        self.pos += 1;
        Ok(b)
    }

    fn expect(&mut self, want: u8) -> Parsed<()> {
        if self.bump()? == want {
            Ok(())
        } else {
            Err(SyntaxError)
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// The top-level array: `Some(strings)`, or `None` when some element is not a string.
    /// Syntax is checked to the end of the array either way, as Go reads the whole value
    /// before converting it.
    fn string_array(&mut self) -> Parsed<Option<Vec<String>>> {
        self.expect(b'[')?;
        self.skip_ws();
        let mut items = Some(Vec::new());
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(items);
        }
        loop {
            self.skip_ws();
            if self.peek() == Some(b'"') {
                let s = self.string()?;
                if let Some(items) = items.as_mut() {
                    items.push(s);
                }
            } else {
                self.skip_value()?;
                items = None;
            }
            self.skip_ws();
            match self.bump()? {
                b',' => continue,
                b']' => return Ok(items),
                _ => return Err(SyntaxError),
            }
        }
    }

    /// Validates one value of any kind, nested containers included, without recursion.
    fn skip_value(&mut self) -> Parsed<()> {
        // Open containers, innermost last.
        let mut open: Vec<u8> = Vec::new();
        loop {
            self.skip_ws();
            let complete = match self.peek().ok_or(SyntaxError)? {
                b'[' => self.open_container(&mut open, b'[', b']')?,
                b'{' => {
                    let empty = self.open_container(&mut open, b'{', b'}')?;
                    if !empty {
                        self.object_key()?;
                    }
                    empty
                }
                b'"' => self.string().map(|_| true)?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return Err(SyntaxError),
            };
            if complete && self.close_containers(&mut open)? {
                return Ok(());
            }
        }
    }

    /// Opens `[` or `{`; true when it is closed right away (an empty container).
    fn open_container(&mut self, open: &mut Vec<u8>, opening: u8, closing: u8) -> Parsed<bool> {
        self.pos += 1;
        open.push(opening);
        // +1 for the top-level array around this value.
        if open.len() + 1 > MAX_DEPTH {
            return Err(SyntaxError);
        }
        self.skip_ws();
        if self.peek() == Some(closing) {
            self.pos += 1;
            open.pop();
            return Ok(true);
        }
        Ok(false)
    }

    /// After a complete value: closes the containers that end here. True when the outermost
    /// value is complete, false when another element follows.
    fn close_containers(&mut self, open: &mut Vec<u8>) -> Parsed<bool> {
        while let Some(&container) = open.last() {
            self.skip_ws();
            match (self.bump()?, container) {
                (b',', b'[') => return Ok(false),
                (b',', b'{') => {
                    self.skip_ws();
                    self.object_key()?;
                    return Ok(false);
                }
                (b']', b'[') | (b'}', b'{') => {
                    open.pop();
                }
                _ => return Err(SyntaxError),
            }
        }
        Ok(true)
    }

    /// `"key" :` inside an object.
    fn object_key(&mut self) -> Parsed<()> {
        if self.peek() != Some(b'"') {
            return Err(SyntaxError);
        }
        self.string()?;
        self.skip_ws();
        self.expect(b':')
    }

    /// `true`, `false` or `null`; always a complete value.
    fn literal(&mut self, word: &[u8]) -> Parsed<bool> {
        if !self.bytes[self.pos..].starts_with(word) {
            return Err(SyntaxError);
        }
        self.pos += word.len();
        Ok(true)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`; always a complete value.
    fn number(&mut self) -> Parsed<bool> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.bump()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return Err(SyntaxError),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.one_or_more_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.one_or_more_digits()?;
        }
        Ok(true)
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn one_or_more_digits(&mut self) -> Parsed<()> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(SyntaxError);
        }
        self.digits();
        Ok(())
    }

    /// A string literal, decoded.
    fn string(&mut self) -> Parsed<String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            // Copy the run of plain bytes up to the next quote, escape or control byte.
            let run = self.bytes[self.pos..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .ok_or(SyntaxError)?;
            out.push_str(&String::from_utf8_lossy(
                &self.bytes[self.pos..self.pos + run],
            ));
            self.pos += run;
            match self.bump()? {
                b'"' => return Ok(out),
                b'\\' => self.escape(&mut out)?,
                _ => return Err(SyntaxError),
            }
        }
    }

    /// One escape after the backslash.
    fn escape(&mut self, out: &mut String) -> Parsed<()> {
        let c = match self.bump()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => self.unicode_escape()?,
            _ => return Err(SyntaxError),
        };
        out.push(c);
        Ok(())
    }

    /// The rest of `\uXXXX`, combining a surrogate pair when the next escape completes it.
    /// Like Go, an unpaired surrogate becomes U+FFFD and a following escape is left alone.
    fn unicode_escape(&mut self) -> Parsed<char> {
        let unit = self.hex4()?;
        if !(0xD800..0xE000).contains(&unit) {
            return Ok(char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER));
        }
        if unit < 0xDC00 && self.bytes[self.pos..].starts_with(b"\\u") {
            let saved = self.pos;
            self.pos += 2;
            if let Ok(low @ 0xDC00..=0xDFFF) = self.hex4() {
                let c = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                return Ok(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
            }
            self.pos = saved;
        }
        Ok(char::REPLACEMENT_CHARACTER)
    }

    fn hex4(&mut self) -> Parsed<u32> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or(SyntaxError)?;
        let mut value = 0;
        for &d in digits {
            value = value * 16 + char::from(d).to_digit(16).ok_or(SyntaxError)?;
        }
        self.pos += 4;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> JsonArgs {
        JsonArgs::Strings(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn arrays_of_strings() {
        assert_eq!(parse_args("[]"), strings(&[]));
        assert_eq!(parse_args(" [ \"a\" ,\t\"b\" ] "), strings(&["a", "b"]));
        assert_eq!(
            parse_args(r#"["\" \\ \/ \b \f \n \r \t \u0000 \u2665"]"#),
            strings(&["\" \\ / \u{8} \u{c} \n \r \t \0 ♥"])
        );
        assert_eq!(parse_args(r#"["\ud83d\ude00"]"#), strings(&["😀"]));
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        assert_eq!(parse_args(r#"["\ud800"]"#), strings(&["\u{fffd}"]));
        assert_eq!(parse_args(r#"["\udc00x"]"#), strings(&["\u{fffd}x"]));
        assert_eq!(parse_args(r#"["\ud800\u0041"]"#), strings(&["\u{fffd}A"]));
    }

    #[test]
    fn trailing_text_is_ignored_like_go_decoder() {
        assert_eq!(parse_args(r#"["ls"],"#), strings(&["ls"]));
        assert_eq!(parse_args(r#"[ "a" ] ]"#), strings(&["a"]));
    }

    #[test]
    fn non_strings_are_reported() {
        for text in [
            r#"["a",42,"b"]"#,
            r#"["a",123.456,"b"]"#,
            r#"["a",{},"b"]"#,
            r#"["a",{"c": "d"},"b"]"#,
            r#"["a",["c"],"b"]"#,
            r#"["a",true,"b"]"#,
            r#"["a",null,"b"]"#,
            r#"[ "echo", [ "nested json" ] ]"#,
            r#"[-0.5e+3, [[], {"k": [1, {"z": null}]}]]"#,
        ] {
            assert_eq!(parse_args(text), JsonArgs::NotStrings, "{text}");
        }
    }

    #[test]
    fn syntax_errors_fall_back() {
        for text in [
            "",
            "a",
            "['a']",
            r#"["a""#,
            r#"["a]"#,
            r#"["a", 01]"#,
            r#"["a", {"k" 1}]"#,
            r#"["a", [1,]]"#,
            r#"["a", tru]"#,
            "[\"a\tb\"]",
            r#"["\x"]"#,
            r#"["\u12"]"#,
            r#""[\"a\"]""#,
        ] {
            assert_eq!(parse_args(text), JsonArgs::NotJson, "{text}");
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let deep = format!("[{}{}]", "[".repeat(200_000), "]".repeat(200_000));
        assert_eq!(parse_args(&deep), JsonArgs::NotJson);
        let ok = format!("[{}{}]", "[".repeat(9_000), "]".repeat(9_000));
        assert_eq!(parse_args(&ok), JsonArgs::NotStrings);
    }
}
