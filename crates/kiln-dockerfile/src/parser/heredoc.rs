//! Heredoc detection: which words of a `RUN`/`COPY`/`ADD` line are `[n]<<[-]WORD`, and what
//! their delimiters are.
//!
//! BuildKit finds them with its shell lexer, so quoting decides: `RUN '<<EOF'` has no heredoc,
//! `RUN <<'EOF'` has one whose body is not expanded. The lexer here is a reduced version of
//! that lexer for this one job: the environment is always empty, unset variables stay as
//! written (`$EOF` is a valid delimiter), the escape character is always `\`, and whitespace
//! right after `<<` stays in the word (`<<  EOF`). A line the lexer rejects (for example an
//! unterminated quote) has no heredocs at all, as in BuildKit.

use crate::ast::Heredoc;
use crate::error::{Error, Span};

/// BuildKit always lexes heredoc words with the default escape character.
const ESCAPE: char = '\\';

/// How deeply `${...}` may nest before lexing gives up (instead of recursing without bound).
const MAX_NESTING: usize = 256;

type Lexed<T> = Result<T, String>;

/// The heredocs announced on `line` (a whole instruction line, keyword included), in order,
/// with empty contents.
pub(crate) fn from_line(line: &str) -> Result<Vec<Heredoc>, Error> {
    // BuildKit ignores lexing errors here: such a line simply has no heredocs.
    let Ok(words) = Lexer::words(line, true, true) else {
        return Ok(Vec::new());
    };
    let mut docs = Vec::new();
    for word in &words {
        if let Some(doc) = parse_word(word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Parses one word as `[n]<<[-]WORD` (whitespace allowed before `WORD`).
///
/// `Ok(None)` when it is not a heredoc word, an error when its delimiter cannot be lexed (an
/// unterminated quote). The error's span covers `word`.
pub(crate) fn parse_word(word: &str) -> Result<Option<Heredoc>, Error> {
    let digits = word.bytes().take_while(u8::is_ascii_digit).count();
    let Some(after) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, after) = match after.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, after),
    };
    // Go's `\s`: ASCII whitespace without `\v`.
    let delimiter = after.trim_start_matches(['\t', '\n', '\u{c}', '\r', ' ']);
    if delimiter.is_empty() || delimiter.contains('<') {
        return Ok(None);
    }
    let fail = |e: String| {
        Error::new(
            format!("failed to process {}: {e}", super::go_quote(delimiter)),
            Span::new(0, word.len()),
        )
    };
    let words = Lexer::words(delimiter, false, false).map_err(fail)?;
    let [name] = words.as_slice() else {
        return Ok(None);
    };
    let raw = Lexer::words(delimiter, true, false).map_err(fail)?;
    let [raw_name] = raw.as_slice() else {
        return Err(Error::new(
            format!("internal lexing of heredoc produced inconsistent results: {delimiter}"),
            Span::new(0, word.len()),
        ));
    };
    // Quotes that did quoting vanish from `name` but stay in `raw_name`; escaped quotes are
    // in both. So any difference means part of the delimiter was quoted.
    let quotes = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
    Ok(Some(Heredoc {
        name: name.clone(),
        file_descriptor: parse_fd(&word[..digits]),
        expand: quotes(name) == quotes(raw_name),
        chomp,
        content: String::new(),
    }))
}

/// The file descriptor digits; Go's `ParseUint` saturates on overflow, and none means 0.
fn parse_fd(digits: &str) -> u32 {
    if digits.is_empty() {
        return 0;
    }
    digits.parse::<u32>().unwrap_or(u32::MAX)
}

/// Words being collected: whitespace outside quotes and escapes ends a word.
#[derive(Default)]
struct Words {
    done: Vec<String>,
    current: String,
}

impl Words {
    fn add_char(&mut self, c: char) {
        if c.is_whitespace() {
            if !self.current.is_empty() {
                self.done.push(std::mem::take(&mut self.current));
            }
        } else {
            self.current.push(c);
        }
    }

    fn add_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.done.push(self.current);
        }
        self.done
    }
}

/// The reduced shell lexer (see the module docs).
struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    /// Keep quote characters in the output.
    raw_quotes: bool,
    /// Keep escape characters in the output (changes inside some `${...}` forms).
    raw_escapes: bool,
    depth: usize,
}

impl<'a> Lexer<'a> {
    fn words(src: &'a str, raw_quotes: bool, raw_escapes: bool) -> Lexed<Vec<String>> {
        let mut lexer = Lexer {
            src,
            pos: 0,
            raw_quotes,
            raw_escapes,
            depth: 0,
        };
        let mut words = Words::default();
        lexer.stop_on(None, raw_escapes, Some(&mut words))?;
        Ok(words.finish())
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// Reads to the unquoted `stop` character (consumed) or to the end.
    fn stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
        mut words: Option<&mut Words>,
    ) -> Lexed<String> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let mut result = String::new();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.next();
                self.raw_escapes = saved;
                return Ok(result);
            }
            let special = match c {
                '$' => Some(self.dollar()?),
                '\'' => Some(self.single_quote()?),
                '"' => Some(self.double_quote()?),
                '<' => Some(self.angle_brackets()),
                _ => None,
            };
            if let Some(part) = special {
                result.push_str(&part);
                if let Some(w) = words.as_deref_mut() {
                    // A variable's value is split like plain text; quoted text is not.
                    if c == '$' {
                        w.add_str(&part);
                    } else {
                        w.current.push_str(&part);
                    }
                }
                continue;
            }
            self.next();
            if c != ESCAPE {
                result.push(c);
                if let Some(w) = words.as_deref_mut() {
                    w.add_char(c);
                }
                continue;
            }
            if self.raw_escapes {
                result.push(c);
                if let Some(w) = words.as_deref_mut() {
                    w.current.push(c);
                }
            }
            // A trailing escape character is dropped.
            let Some(escaped) = self.next() else { break };
            result.push(escaped);
            if let Some(w) = words.as_deref_mut() {
                w.current.push(escaped);
            }
        }
        self.raw_escapes = saved;
        match stop {
            Some(stop) => Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            )),
            None => Ok(result),
        }
    }

    fn single_quote(&mut self) -> Lexed<String> {
        let mut result = String::new();
        self.next();
        if self.raw_quotes {
            result.push('\'');
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => {
                    if self.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Lexed<String> {
        let mut result = String::new();
        self.next();
        if self.raw_quotes {
            result.push('"');
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => {
                    self.next();
                    if self.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.dollar()?;
                    result.push_str(&value);
                }
                Some(mut c) => {
                    self.next();
                    if c == ESCAPE {
                        if self.raw_escapes {
                            result.push(c);
                        }
                        match self.peek() {
                            // A trailing escape is dropped (and the quote is unterminated).
                            None => continue,
                            // Only these can be escaped inside double quotes.
                            Some(next @ ('"' | '$' | ESCAPE)) => {
                                self.next();
                                c = next;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(c);
                }
            }
        }
    }

    /// `<`, or `<<` followed by any whitespace, which stays in the word so that `<<  EOF` is
    /// one heredoc word.
    fn angle_brackets(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.next();
        let mut result = String::from("<<");
        while let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
            result.push(c);
            self.next();
        }
        result
    }

    /// `$name` or `${...}`; with no variables set, each stays as written.
    fn dollar(&mut self) -> Lexed<String> {
        self.depth += 1;
        let result = if self.depth > MAX_NESTING {
            Err("variable expansions nested too deeply".to_string())
        } else {
            self.dollar_inner()
        };
        self.depth -= 1;
        result
    }

    fn dollar_inner(&mut self) -> Lexed<String> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.name();
            return Ok(format!("${name}"));
        }
        self.next();
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.name();
        let shown = |c: Option<char>| c.unwrap_or(char::REPLACEMENT_CHARACTER);
        match self.next() {
            Some('}') => Ok(format!("${{{name}}}")),
            Some(':') => {
                let modifier = self.next();
                if matches!(modifier, Some('#' | '%')) {
                    return Err(format!(
                        "unsupported modifier (:{}) in substitution",
                        shown(modifier)
                    ));
                }
                let word = self.modifier_word(false)?;
                Ok(format!("${{{name}:{}{word}}}", shown(modifier)))
            }
            Some(m @ ('+' | '-' | '?' | '#' | '%')) => {
                let word = self.modifier_word(m == '#' || m == '%')?;
                Ok(format!("${{{name}{m}{word}}}"))
            }
            Some('/') => {
                if self.peek() == Some('/') {
                    self.next();
                }
                let pattern = self
                    .stop_on(Some('/'), true, None)
                    .map_err(|e| self.at_end_or(e, "syntax error: missing '/' in ${}"))?;
                let replacement = self.modifier_word(true)?;
                Ok(format!("${{{name}/{pattern}/{replacement}}}"))
            }
            other => Err(format!(
                "unsupported modifier ({}) in substitution",
                shown(other)
            )),
        }
    }

    /// The word of `${name<modifier>word}`, up to the closing brace.
    fn modifier_word(&mut self, raw_escapes: bool) -> Lexed<String> {
        self.stop_on(Some('}'), raw_escapes, None)
            .map_err(|e| self.at_end_or(e, "syntax error: missing '}'"))
    }

    /// BuildKit reports a missing terminator when the input ran out.
    fn at_end_or(&self, error: String, at_end: &str) -> String {
        if self.peek().is_none() {
            at_end.to_string()
        } else {
            error
        }
    }

    /// A variable name: a run of digits, one special parameter, or letters, digits and `_`.
    fn name(&mut self) -> String {
        let mut name = String::new();
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    name.push(d);
                    self.next();
                }
                return name;
            }
            Some(c @ ('@' | '*' | '#' | '?' | '-' | '$' | '!')) => {
                self.next();
                name.push(c);
                return name;
            }
            _ => {}
        }
        while let Some(c) = self.peek().filter(|&c| c.is_alphanumeric() || c == '_') {
            name.push(c);
            self.next();
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(line: &str) -> Vec<String> {
        from_line(line)
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect()
    }

    #[test]
    fn words_of_a_line() {
        assert_eq!(names("RUN <<EOF"), ["EOF"]);
        assert_eq!(names("RUN <<-EOF"), ["EOF"]);
        assert_eq!(names("RUN <<- EOF"), Vec::<String>::new());
        assert_eq!(names("RUN << -EOF"), ["-EOF"]);
        assert_eq!(names("RUN <<EOF <<EOF2"), ["EOF", "EOF2"]);
        assert_eq!(names("RUN '<<EOF'"), Vec::<String>::new());
        assert_eq!(names("RUN <<  EOF  > foo"), ["EOF"]);
        assert_eq!(names("RUN <<$EOF"), ["$EOF"]);
        assert_eq!(names("RUN <<${X:-a}"), ["${X:-a}"]);
        // An unterminated quote anywhere on the line means no heredocs.
        assert_eq!(names("RUN <<EOF echo 'oops"), Vec::<String>::new());
        assert_eq!(names("RUN <<EOF ${}"), Vec::<String>::new());
    }

    #[test]
    fn file_descriptor_and_flags() {
        let d = parse_word("3<<-'X'").unwrap().unwrap();
        assert_eq!(
            (d.file_descriptor, d.chomp, d.expand, d.name.as_str()),
            (3, true, false, "X")
        );
        let d = parse_word("99999999999<<X").unwrap().unwrap();
        assert_eq!(d.file_descriptor, u32::MAX);
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        let err = parse_word("<<'EOF").unwrap_err();
        assert_eq!(
            err.message,
            "failed to process \"'EOF\": unexpected end of statement while looking for matching \
             single-quote"
        );
        assert_eq!(err.span, Span::new(0, 6));
    }

    #[test]
    fn deep_expansions_do_not_overflow() {
        let line = format!("RUN <<EOF {}", "${a:-".repeat(100_000));
        assert!(from_line(&line).unwrap().is_empty());
    }
}
