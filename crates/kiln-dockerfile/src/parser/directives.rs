//! Parser directives (`# syntax=...`, `# escape=...`, `# check=...`) at the top of a file, and
//! BuildKit's `DetectSyntax`, which also knows `//` comments, a JSON object and a shebang.

use std::ops::Range;

use crate::ast::Directive;
use crate::error::{Error, Span};

/// The directives BuildKit knows; any other name ends directive scanning.
const KNOWN: [&str; 3] = ["syntax", "escape", "check"];

/// Go's regexp `\s`.
fn is_go_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ')
}

/// Byte ranges of a directive's name and value within its line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Match {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// Matches BuildKit's `^<prefix>\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`.
pub(crate) fn match_line(line: &str, prefix: &str) -> Option<Match> {
    let mut pos = line.strip_prefix(prefix).map(|_| prefix.len())?;
    let skip_spaces =
        |pos: usize| pos + (line[pos..].len() - line[pos..].trim_start_matches(is_go_space).len());
    pos = skip_spaces(pos);
    let name_start = pos;
    if !line[pos..].starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    pos += line[pos..]
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(line.len() - pos);
    let name = name_start..pos;
    pos = skip_spaces(pos);
    pos += line[pos..].strip_prefix('=').map(|_| 1)?;
    let after_equals = pos;
    pos = skip_spaces(pos);
    let value_end = line.trim_end_matches(is_go_space).len();
    let value = if value_end > pos {
        pos..value_end
    } else if pos > after_equals {
        // Only whitespace after `=`: the regex backtracks so that `(.+?)` takes the last
        // whitespace character. (BuildKit then rejects it as an escape value.)
        let last = line[after_equals..pos].chars().next_back()?;
        pos - last.len_utf8()..pos
    } else {
        return None;
    };
    Some(Match { name, value })
}

/// The directive state while reading the top of a Dockerfile.
#[derive(Debug)]
pub(crate) struct Scanner {
    /// Set at the first line that is not a directive.
    done: bool,
    /// The directives found.
    pub directives: Vec<Directive>,
    /// The escape character in effect.
    pub escape: char,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            done: false,
            directives: Vec::new(),
            escape: '\\',
        }
    }
}

impl Scanner {
    /// Whether scanning has stopped for good.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Looks at the text of the next line (leading whitespace and line terminator removed),
    /// which starts `span.start` bytes into the source.
    pub fn observe(&mut self, text: &str, line: usize, span: Span) -> Result<(), Error> {
        if self.done {
            return Ok(());
        }
        let Some(m) = match_line(text, "#") else {
            self.done = true;
            return Ok(());
        };
        let name = text[m.name].to_ascii_lowercase();
        if !KNOWN.contains(&name.as_str()) {
            self.done = true;
            return Ok(());
        }
        let value = &text[m.value.clone()];
        if self.directives.iter().any(|d| d.name == name) {
            return Err(Error::new(
                format!("only one {name} parser directive can be used"),
                span,
            )
            .with_help("remove the repeated directive"));
        }
        if name == "escape" {
            self.escape = match value {
                "\\" => '\\',
                "`" => '`',
                _ => {
                    let at = span.start + m.value.start;
                    return Err(Error::new(
                        format!("invalid escape token '{value}' does not match ` or \\"),
                        Span::new(at, at + m.value.len()),
                    )
                    .with_help("use `# escape=\\` or `# escape=``"));
                }
            };
        }
        self.directives.push(Directive {
            name,
            value: value.to_string(),
            line,
            span,
        });
        Ok(())
    }
}

/// BuildKit's `DetectSyntax` (`any_format`) and `ParseDirective`: the value of directive
/// `key` as (value up to the first space, whole value, 1-based line).
pub(crate) fn detect(key: &str, src: &[u8], any_format: bool) -> Option<(String, String, usize)> {
    let src = src.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(src);
    let (src, first_line) = match src.splitn(2, |&b| b == b'\n').next() {
        Some(first) if first.starts_with(b"#!") => (&src[(first.len() + 1).min(src.len())..], 1),
        _ => (src, 0),
    };
    let prefixes: &[&str] = if any_format { &["#", "//"] } else { &["#"] };
    for prefix in prefixes {
        let found = scan_all(src, prefix, first_line)
            .into_iter()
            .find(|(name, _, _)| name == key);
        if let Some((_, value, line)) = found {
            let reference = value.split(' ').next().unwrap_or_default().to_string();
            return Some((reference, value, line));
        }
    }
    if !any_format {
        return None;
    }
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(src).ok()?;
    match object.get(key)? {
        serde_json::Value::String(v) => Some((v.clone(), v.clone(), first_line + 1)),
        _ => None,
    }
}

/// BuildKit's `DirectiveParser.ParseAll`: the directives at the top of `src` with `prefix`,
/// as (lowercased name, value, line). Stops at the first other line or a repeated name.
fn scan_all(src: &[u8], prefix: &str, first_line: usize) -> Vec<(String, String, usize)> {
    let mut found: Vec<(String, String, usize)> = Vec::new();
    if src.is_empty() {
        return found;
    }
    // Go's line scanner yields no empty last line after a final newline.
    let body = src.strip_suffix(b"\n").unwrap_or(src);
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = String::from_utf8_lossy(raw);
        let Some(m) = match_line(&line, prefix) else {
            break;
        };
        let name = line[m.name].to_ascii_lowercase();
        if !KNOWN.contains(&name.as_str()) || found.iter().any(|(n, _, _)| *n == name) {
            break;
        }
        found.push((name, line[m.value].to_string(), first_line + i + 1));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(line: &str) -> Option<(&str, &str)> {
        match_line(line, "#").map(|m| (&line[m.name], &line[m.value]))
    }

    #[test]
    fn matches_directive_lines() {
        assert_eq!(parts("# escape=`"), Some(("escape", "`")));
        assert_eq!(parts("#escape = \\ "), Some(("escape", "\\")));
        assert_eq!(parts("#\tsyntax =  a b  "), Some(("syntax", "a b")));
        assert_eq!(parts("# key = FOO bar"), Some(("key", "FOO bar")));
        assert_eq!(parts("# escape= "), Some(("escape", " ")));
        assert_eq!(parts("# escape="), None);
        assert_eq!(parts("# 1x=y"), None);
        assert_eq!(parts("# x y=z"), None);
        assert_eq!(parts("// syntax=x"), None);
        assert_eq!(
            match_line("// syntax=x", "//").map(|m| m.value),
            Some(10..11)
        );
    }

    #[test]
    fn scanner_errors() {
        let mut s = Scanner::default();
        s.observe("# escape=`", 1, Span::new(0, 10)).unwrap();
        let err = s.observe("# ESCAPE=\\", 2, Span::new(11, 21)).unwrap_err();
        assert_eq!(err.message, "only one escape parser directive can be used");
        assert_eq!(err.span, Span::new(11, 21));

        let mut s = Scanner::default();
        let err = s.observe("# escape=x", 1, Span::new(0, 10)).unwrap_err();
        assert_eq!(
            err.message,
            "invalid escape token 'x' does not match ` or \\"
        );
        assert_eq!(err.span, Span::new(9, 10));
    }

    #[test]
    fn scanning_stops_at_other_lines() {
        let mut s = Scanner::default();
        s.observe("# syntax=a", 1, Span::default()).unwrap();
        s.observe("# comment", 2, Span::default()).unwrap();
        s.observe("# escape=`", 3, Span::default()).unwrap();
        assert!(s.done());
        assert_eq!(s.escape, '\\');
        assert_eq!(s.directives.len(), 1);
    }
}
