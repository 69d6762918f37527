//! BuildKit's shell-word lexer: variable expansion, quote removal and word splitting, as used
//! by `ENV`, `ARG`, `COPY`, `WORKDIR`, `FROM` and the other instructions that expand words.
//!
//! It follows BuildKit's `frontend/dockerfile/shell` lexer character for character,
//! including its quirks:
//!
//! * `'…'` is literal; in `"…"` the escape character escapes only `"`, `$` and itself;
//!   outside quotes it escapes anything, and a trailing one is dropped.
//! * `$name`, `${name}`, `${name:-w}`, `${name-w}`, `${name:+w}`, `${name+w}`,
//!   `${name:?msg}`, `${name?msg}`, `${name#p}`, `${name##p}`, `${name%p}`, `${name%%p}`,
//!   `${name/p/r}` and `${name//p/r}`; anything else inside `${…}` is an error.
//! * Positional and special parameters (`$1`, `$@`, `$#`, …) are looked up like any other
//!   name, so they are normally unset; a `$` that cannot start a name stays a `$`.
//! * Patterns are globs (`*`, `?`, `\` escapes, no brackets) whose wildcards do not match
//!   newlines, as with the regular expressions BuildKit compiles them to; they are matched
//!   without backtracking, in `O(pattern + value²)` time at worst.
//! * A leading byte order mark is dropped, as Go's `text/scanner` does.
//!
//! Two deliberate differences keep every input cheap: expansions nested more than
//! [`MAX_NESTING`] levels deep are an error instead of a deep recursion, and so is a word
//! whose expansions produce more than [`MAX_EXPANSION_BYTES`] bytes of text (only repeated
//! `${v//p/r}` nesting can get there: it multiplies sizes).

use std::collections::{BTreeMap, BTreeSet, HashMap};

mod glob;
mod unicode;

/// Where the lexer looks variables up.
pub trait Env {
    /// The value of `name`, or `None` when it is not set (set-but-empty is `Some("")`).
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl<S: std::hash::BuildHasher> Env for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Env for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// An ordered list of `(name, value)`; the last entry for a name wins.
impl Env for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Env for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

/// An expansion error (bad substitution, unterminated quote, `${v:?msg}` on an unset variable).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShellError(pub String);

/// The result of [`Lexer::process_word_with_matches`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded word.
    pub word: String,
    /// Variables that were looked up and found.
    pub matched: BTreeSet<String>,
    /// Variables that were looked up and not found.
    pub unmatched: BTreeSet<String>,
}

/// How deeply `${…}` expansions may nest (`${a:-${b:-${c}}}` is three levels) before
/// [`Lexer`] gives up with an error instead of risking the stack. BuildKit has no limit;
/// no real Dockerfile comes anywhere near it.
pub const MAX_NESTING: usize = 256;

/// How much expanded text one call may produce, counting every `$…` result each time it is
/// copied into the enclosing text; beyond it the call fails instead of running out of time or
/// memory. BuildKit has no limit.
pub const MAX_EXPANSION_BYTES: usize = 16 << 20;

/// The lexer; `escape` is the Dockerfile's escape character (`\` or `` ` ``).
///
/// The other fields are BuildKit's `Lex` options; [`Lexer::new`] leaves them all off, which
/// is how Dockerfile instructions are expanded.
#[derive(Clone, Debug)]
pub struct Lexer {
    /// The escape character.
    pub escape: char,
    /// Keep the quote characters in the result (BuildKit's `RawQuotes`).
    pub raw_quotes: bool,
    /// Keep escape characters in the result instead of consuming them (BuildKit's
    /// `RawEscapes`).
    pub raw_escapes: bool,
    /// Treat `'` and `"` as ordinary characters (BuildKit's `SkipProcessQuotes`).
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as they were written, e.g. `${X:-w}` stays
    /// `${X:-w}` (BuildKit's `SkipUnsetEnv`).
    pub skip_unset_env: bool,
}

impl Default for Lexer {
    /// A lexer with the default escape character `\`.
    fn default() -> Self {
        Lexer::new('\\')
    }
}

impl Lexer {
    /// A lexer with the given escape character.
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// Sets [`Lexer::raw_quotes`].
    pub fn with_raw_quotes(mut self, on: bool) -> Self {
        self.raw_quotes = on;
        self
    }

    /// Sets [`Lexer::raw_escapes`].
    pub fn with_raw_escapes(mut self, on: bool) -> Self {
        self.raw_escapes = on;
        self
    }

    /// Sets [`Lexer::skip_process_quotes`].
    pub fn with_skip_process_quotes(mut self, on: bool) -> Self {
        self.skip_process_quotes = on;
        self
    }

    /// Sets [`Lexer::skip_unset_env`].
    pub fn with_skip_unset_env(mut self, on: bool) -> Self {
        self.skip_unset_env = on;
        self
    }

    /// Expands one word: variables expanded, quotes removed, no word splitting.
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<String, ShellError> {
        self.process_word_with_matches(word, env).map(|e| e.word)
    }

    /// Like [`Lexer::process_word`], also reporting which variables were looked up.
    ///
    /// Every lookup counts, including those in a `${v:-word}` word that ends up unused and
    /// those of positional and special parameters (`$1` looks up `1`).
    pub fn process_word_with_matches(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<Expansion, ShellError> {
        let mut sw = ShellWord::new(self, word, env);
        let expanded = sw.run(word, None)?;
        Ok(Expansion {
            word: expanded,
            matched: sw.matched,
            unmatched: sw.unmatched,
        })
    }

    /// Expands and splits into words at unquoted, unescaped whitespace; empty words dropped.
    ///
    /// The value of an unquoted expansion is split too (`a${v}b` with `v="1 2"` gives `a1`
    /// and `2b`); quoted text and escaped characters never split a word.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ShellError> {
        let mut sw = ShellWord::new(self, word, env);
        let mut words = Words::default();
        sw.run(word, Some(&mut words))?;
        Ok(words.finish())
    }
}

/// Accumulates the words of [`Lexer::process_words`].
#[derive(Default)]
struct Words {
    done: Vec<String>,
    current: String,
}

impl Words {
    /// An unprotected character: whitespace ends the current word.
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if !self.current.is_empty() {
                self.done.push(std::mem::take(&mut self.current));
            }
        } else {
            self.current.push(ch);
        }
    }

    /// Unquoted expansion results are split like ordinary text.
    fn add_str(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    /// An escaped character or quoted text: always part of the current word.
    fn add_raw_char(&mut self, ch: char) {
        self.current.push(ch);
    }

    fn add_raw_str(&mut self, s: &str) {
        self.current.push_str(s);
    }

    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.done.push(self.current);
        }
        self.done
    }
}

/// Whether Go's `unicode.IsLetter` holds.
fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphabetic()
    } else {
        unicode::in_table(unicode::LETTER, c)
    }
}

/// Whether Go's `unicode.IsDigit` holds (any decimal digit, not only ASCII).
fn is_digit(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_digit()
    } else {
        unicode::in_table(unicode::DIGIT, c)
    }
}

/// POSIX special parameters; `$0` is one too but is read as a number first.
fn is_special_param(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// How Go's `%c` shows a rune read by `text/scanner`: its EOF (-1) comes out as U+FFFD.
fn rune_text(ch: Option<char>) -> char {
    ch.unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// Quotes `s` like Go's `%q`, for the `failed to process "…"` error prefix.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            ' ' => out.push(' '),
            c if unicode::in_table(unicode::GRAPHIC, c) => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

#[cold]
#[inline(never)]
fn missing_brace() -> String {
    "syntax error: missing '}'".to_owned()
}

#[cold]
#[inline(never)]
fn missing_slash() -> String {
    "syntax error: missing '/' in ${}".to_owned()
}

#[cold]
#[inline(never)]
fn bad_substitution() -> String {
    "syntax error: bad substitution".to_owned()
}

#[cold]
#[inline(never)]
fn too_deep() -> String {
    format!("syntax error: more than {MAX_NESTING} nested ${{...}} expansions")
}

/// The modifier as BuildKit shows it: the character after the name and, after a colon, the
/// one after that.
#[cold]
#[inline(never)]
fn unsupported(first: Option<char>, second: Option<char>) -> String {
    let mut modifier = rune_text(first).to_string();
    if first == Some(':') {
        modifier.push(rune_text(second));
    }
    format!("unsupported modifier ({modifier}) in substitution")
}

#[cold]
#[inline(never)]
fn unterminated(stop: char) -> String {
    format!("unexpected end of statement while looking for matching {stop}")
}

/// The state of one expansion: BuildKit's `shellWord`, reading the input one character at a
/// time like Go's `text/scanner` (`peek`/`next`).
struct ShellWord<'a> {
    lexer: &'a Lexer,
    env: &'a dyn Env,
    src: &'a str,
    /// Byte offset of the next character.
    pos: usize,
    /// Whether escape characters are currently kept (patterns of `#`, `%` and `/` keep them
    /// for the pattern compiler).
    raw_escapes: bool,
    /// Current `${…}` nesting depth.
    depth: usize,
    /// What is left of [`MAX_EXPANSION_BYTES`].
    budget: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

type Res<T> = Result<T, String>;

impl<'a> ShellWord<'a> {
    fn new(lexer: &'a Lexer, src: &'a str, env: &'a dyn Env) -> Self {
        // Go's text/scanner drops a byte order mark at the very start of its input.
        let pos = if src.starts_with('\u{feff}') {
            '\u{feff}'.len_utf8()
        } else {
            0
        };
        ShellWord {
            lexer,
            env,
            src,
            pos,
            raw_escapes: lexer.raw_escapes,
            depth: 0,
            budget: MAX_EXPANSION_BYTES,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        }
    }

    /// The whole input, with BuildKit's error prefix.
    fn run(&mut self, source: &str, words: Option<&mut Words>) -> Result<String, ShellError> {
        let raw = self.raw_escapes;
        self.process_stop_on(None, raw, words)
            .map_err(|e| ShellError(format!("failed to process {}: {e}", go_quote(source))))
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek()?;
        self.pos += ch.len_utf8();
        Some(ch)
    }

    /// Accounts for `n` more bytes of expanded text.
    fn charge(&mut self, n: usize) -> Res<()> {
        match self.budget.checked_sub(n) {
            Some(rest) => {
                self.budget = rest;
                Ok(())
            }
            None => Err(glob::too_large(MAX_EXPANSION_BYTES)),
        }
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        match self.env.lookup(name) {
            Some(value) => {
                if !self.matched.contains(name) {
                    self.matched.insert(name.to_owned());
                }
                Some(value.to_owned())
            }
            None => {
                if !self.unmatched.contains(name) {
                    self.unmatched.insert(name.to_owned());
                }
                None
            }
        }
    }

    /// Reads up to the unescaped, unquoted `stop` character (consumed) or, with `None`, to
    /// the end of the input; `raw` is the escape mode for this stretch.
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw: bool,
        words: Option<&mut Words>,
    ) -> Res<String> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw);
        let result = self.stop_on_inner(stop, words);
        self.raw_escapes = saved;
        result
    }

    fn stop_on_inner(&mut self, stop: Option<char>, mut words: Option<&mut Words>) -> Res<String> {
        let escape = self.lexer.escape;
        let quotes = !self.lexer.skip_process_quotes;
        let mut result = String::new();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.next();
                return Ok(result);
            }
            if ch == '$' || (quotes && (ch == '\'' || ch == '"')) {
                let part = match ch {
                    '$' => self.process_dollar()?,
                    '\'' => self.process_single_quote()?,
                    _ => self.process_double_quote()?,
                };
                self.charge(part.len())?;
                result.push_str(&part);
                if let Some(w) = words.as_deref_mut() {
                    if ch == '$' {
                        w.add_str(&part);
                    } else {
                        w.add_raw_str(&part);
                    }
                }
                continue;
            }
            self.next();
            if ch == escape {
                if self.raw_escapes {
                    result.push(ch);
                    if let Some(w) = words.as_deref_mut() {
                        w.add_raw_char(ch);
                    }
                }
                // The escape escapes the next character; a trailing one is dropped.
                let Some(escaped) = self.next() else {
                    break;
                };
                result.push(escaped);
                if let Some(w) = words.as_deref_mut() {
                    w.add_raw_char(escaped);
                }
            } else {
                result.push(ch);
                if let Some(w) = words.as_deref_mut() {
                    w.add_char(ch);
                }
            }
        }
        match stop {
            Some(stop) => Err(unterminated(stop)),
            None => Ok(result),
        }
    }

    /// `'…'`: everything literal up to the next `'`.
    fn process_single_quote(&mut self) -> Res<String> {
        let raw = self.lexer.raw_quotes;
        let mut result = String::new();
        self.next();
        if raw {
            result.push('\'');
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .to_owned(),
                    )
                }
                Some('\'') => {
                    if raw {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    /// `"…"`: `$` expands; the escape character escapes only `"`, `$` and itself.
    fn process_double_quote(&mut self) -> Res<String> {
        let raw = self.lexer.raw_quotes;
        let escape = self.lexer.escape;
        let mut result = String::new();
        self.next();
        if raw {
            result.push('"');
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .to_owned(),
                    )
                }
                Some('"') => {
                    self.next();
                    if raw {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    self.charge(value.len())?;
                    result.push_str(&value);
                }
                Some(mut ch) => {
                    self.next();
                    if ch == escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            // A trailing escape is dropped (the missing `"` is reported next).
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == escape => {
                                self.next();
                                ch = c;
                            }
                            // Before anything else the escape character is literal.
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    /// `$name`, `${name}` and `${name<modifier>…}`; the `$` is the next character.
    ///
    /// This and [`ShellWord::process_braced`], [`ShellWord::stop_on_brace`] and
    /// [`ShellWord::process_stop_on`] form the recursion of nested expansions, so they keep
    /// their frames small and leave the real work to non-recursive helpers.
    fn process_dollar(&mut self) -> Res<String> {
        self.next();
        if self.peek() != Some('{') {
            return Ok(self.expand_plain());
        }
        self.next();
        if self.depth >= MAX_NESTING {
            return Err(too_deep());
        }
        self.depth += 1;
        let result = self.process_braced();
        self.depth -= 1;
        result
    }

    /// `$name`, after the `$`.
    #[inline(never)]
    fn expand_plain(&mut self) -> String {
        let name = self.process_name();
        if name.is_empty() {
            return "$".to_owned();
        }
        match self.get_env(&name) {
            Some(value) => value,
            None if self.lexer.skip_unset_env => format!("${name}"),
            None => String::new(),
        }
    }

    /// The part of `${…}` after the `{`.
    fn process_braced(&mut self) -> Res<String> {
        match self.peek() {
            None => return Err(missing_brace()),
            Some('{' | '}' | ':') => return Err(bad_substitution()),
            Some(_) => {}
        }
        let name = self.process_name();
        let first = self.next();
        match first {
            Some('}') => Ok(self.expand_braced(&name)),
            Some(':' | '+' | '-' | '?' | '#' | '%') => {
                // After a colon, whatever follows is the operator; a bad one is reported only
                // once the word has been read.
                let colon = first == Some(':');
                let op = if colon { self.next() } else { first };
                let pattern = matches!(op, Some('#' | '%'));
                if colon && pattern {
                    return Err(unsupported(first, op));
                }
                let word = self.stop_on_brace(pattern)?;
                self.apply_modifier(&name, colon, op, word)
            }
            Some('/') => {
                let all = self.peek() == Some('/');
                if all {
                    self.next();
                }
                let pattern = match self.process_stop_on(Some('/'), true, None) {
                    Ok(pattern) => pattern,
                    Err(_) if self.peek().is_none() => return Err(missing_slash()),
                    Err(e) => return Err(e),
                };
                let replacement = self.stop_on_brace(true)?;
                self.apply_replace(&name, &pattern, &replacement, all)
            }
            _ => Err(unsupported(first, None)),
        }
    }

    /// `${name}`.
    #[inline(never)]
    fn expand_braced(&mut self, name: &str) -> String {
        match self.get_env(name) {
            Some(value) => value,
            None if self.lexer.skip_unset_env => format!("${{{name}}}"),
            None => String::new(),
        }
    }

    /// `${name<op>word}` and `${name:<op>word}` (`colon`), once `word` has been read.
    #[inline(never)]
    fn apply_modifier(
        &mut self,
        name: &str,
        colon: bool,
        op: Option<char>,
        word: String,
    ) -> Res<String> {
        let value = self.get_env(name);
        if value.is_none() && self.lexer.skip_unset_env {
            let colon = if colon { ":" } else { "" };
            return Ok(format!("${{{name}{colon}{}{word}}}", rune_text(op)));
        }
        // With the colon, set-but-empty counts as unset.
        let unset = match &value {
            None => true,
            Some(v) => colon && v.is_empty(),
        };
        match op {
            Some('-') => Ok(if unset {
                word
            } else {
                value.unwrap_or_default()
            }),
            Some('+') => Ok(if unset { String::new() } else { word }),
            Some('?') if unset => {
                let message = if !word.is_empty() {
                    word.as_str()
                } else if value.is_none() {
                    "is not allowed to be unset"
                } else {
                    "is not allowed to be empty"
                };
                Err(format!("{name}: {message}"))
            }
            Some('?') => Ok(value.unwrap_or_default()),
            Some(op @ ('#' | '%')) => {
                // `##` / `%%`: the doubled operator is the first character of the word.
                let (pattern, greedy) = match word.strip_prefix(op) {
                    Some(rest) => (rest, true),
                    None => (word.as_str(), false),
                };
                let value = value.unwrap_or_default();
                if op == '%' {
                    glob::trim_suffix(pattern, &value, greedy)
                } else {
                    glob::trim_prefix(pattern, &value, greedy)
                }
            }
            // Only reachable after a colon: the other operators are all handled above.
            _ if colon => Err(unsupported(Some(':'), op)),
            _ => Err(unsupported(op, None)),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}` (`all`).
    #[inline(never)]
    fn apply_replace(
        &mut self,
        name: &str,
        pattern: &str,
        replacement: &str,
        all: bool,
    ) -> Res<String> {
        let value = self.get_env(name);
        if value.is_none() && self.lexer.skip_unset_env {
            return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
        }
        let value = value.unwrap_or_default();
        glob::replace(pattern, &value, replacement, all, self.budget)
    }

    /// The word of a `${name<op>word}` up to its closing `}`.
    fn stop_on_brace(&mut self, raw: bool) -> Res<String> {
        match self.process_stop_on(Some('}'), raw, None) {
            Ok(word) => Ok(word),
            Err(_) if self.peek().is_none() => Err(missing_brace()),
            Err(e) => Err(e),
        }
    }

    /// A variable name: a run of digits, one special parameter character, or letters,
    /// digits and `_` (Unicode letters and digits included, as in Go). May be empty.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(d) = self.peek().filter(|&c| is_digit(c)) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.next();
                return ch.to_string();
            }
            if !is_letter(ch) && !is_digit(ch) && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn word(lexer: &Lexer, input: &str, pairs: &[(&str, &str)]) -> Result<String, String> {
        lexer.process_word(input, &env(pairs)).map_err(|e| e.0)
    }

    fn words(input: &str, pairs: &[(&str, &str)]) -> Vec<String> {
        Lexer::new('\\').process_words(input, &env(pairs)).unwrap()
    }

    #[test]
    fn backtick_escape() {
        let lx = Lexer::new('`');
        let e = [("PWD", "/home"), ("X", "*a"), ("Y", "`ab")];
        // The backslash is an ordinary character.
        assert_eq!(word(&lx, r"he\$PWD", &e).unwrap(), r"he\/home");
        assert_eq!(word(&lx, "he`$PWD", &e).unwrap(), "he$PWD");
        assert_eq!(word(&lx, "a`b``c`", &e).unwrap(), "ab`c");
        assert_eq!(
            word(&lx, r#""a`"b`$c``d`e\f""#, &e).unwrap(),
            r#"a"b$c`d`e\f"#
        );
        assert_eq!(word(&lx, r#""a\""#, &e).unwrap(), r"a\");
        assert_eq!(word(&lx, "${X#*`}}", &e).unwrap(), "*a");
        // Patterns always use `\` as their own escape.
        assert_eq!(word(&lx, r"${X#\*}", &e).unwrap(), "a");
        assert_eq!(word(&lx, "${Y#`*}", &e).unwrap(), "ab");
        let split = lx.process_words("a` b c`\td", &env(&[])).unwrap();
        assert_eq!(split, ["a b", "c\td"]);
    }

    #[test]
    fn error_texts() {
        let lx = Lexer::new('\\');
        let e = [("VAR", ""), ("ARG", "x"), ("SET", "v")];
        let cases = [
            ("${VAR:?message here$ARG}", "VAR: message herex"),
            ("${NOPE?}", "NOPE: is not allowed to be unset"),
            ("${VAR:?}", "VAR: is not allowed to be empty"),
            ("${}", "syntax error: bad substitution"),
            ("${:-x}", "syntax error: bad substitution"),
            ("${", "syntax error: missing '}'"),
            ("${SET:-abc", "syntax error: missing '}'"),
            ("${SET/abc", "syntax error: missing '/' in ${}"),
            ("${SET", "unsupported modifier (\u{fffd}) in substitution"),
            ("${SET:YYY}", "unsupported modifier (:Y) in substitution"),
            ("${SET:=x}", "unsupported modifier (:=) in substitution"),
            ("${SET=x}", "unsupported modifier (=) in substitution"),
            ("${SET:#x}", "unsupported modifier (:#) in substitution"),
            ("${SET.}", "unsupported modifier (.) in substitution"),
            (
                "'abc",
                "unexpected end of statement while looking for matching single-quote",
            ),
            (
                "\"abc",
                "unexpected end of statement while looking for matching double-quote",
            ),
            (
                r"${SET#a\b}",
                r"invalid pattern (a\b) in substitution: invalid escape '\b'",
            ),
        ];
        for (input, message) in cases {
            let err = word(&lx, input, &e).unwrap_err();
            let full = format!(
                "failed to process \"{}\": {message}",
                input.replace('\\', "\\\\").replace('"', "\\\"")
            );
            assert_eq!(err, full, "input {input:?}");
        }
        let err = word(&lx, "a\"\n\t\u{7f}\u{a0}é", &e).unwrap_err();
        assert!(
            err.starts_with(r#"failed to process "a\"\n\t\x7f\u00a0é": "#),
            "{err}"
        );
    }

    fn nested(levels: usize) -> String {
        let mut s = "${a:-".repeat(levels - 1);
        s.push_str("${a}");
        s.push_str(&"}".repeat(levels - 1));
        s
    }

    #[test]
    fn recursion_cap() {
        let lx = Lexer::new('\\');
        let e = [("a", "v")];
        assert_eq!(word(&lx, &nested(MAX_NESTING), &e).unwrap(), "v");
        let err = word(&lx, &nested(MAX_NESTING + 1), &e).unwrap_err();
        assert!(err.contains("nested"), "{err}");
        // Far deeper input, with quotes in between, errors instead of overflowing the stack.
        let deep = "\"${a:-".repeat(10_000) + &"}\"".repeat(10_000);
        assert!(word(&lx, &deep, &e).unwrap_err().contains("nested"));
        assert!(word(&lx, &"${a:-".repeat(100_000), &e).is_err());
        assert!(word(&lx, &"${a/".repeat(100_000), &e).is_err());
    }

    #[test]
    fn expansion_size_is_bounded() {
        let lx = Lexer::new('\\');
        let big = "x".repeat(3000);
        let e = [("C", big.as_str())];
        // 3001 × 3000 bytes is fine; squaring that again is not.
        assert_eq!(
            word(&lx, "${C///$C}", &e).unwrap().len(),
            3000 + 3001 * 3000
        );
        let start = Instant::now();
        let err = word(&lx, "${C///${C///$C}}", &e).unwrap_err();
        assert!(err.contains("expansion too large"), "{err}");
        let err = word(&lx, &"${C///$C}".repeat(20), &e).unwrap_err();
        assert!(err.contains("expansion too large"), "{err}");
        // A huge pattern against a short value is rejected without matching.
        assert_eq!(word(&lx, "${C#${C///$C}}", &e).unwrap(), big);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn pathological_glob_is_fast() {
        let lx = Lexer::new('\\');
        let value = "a".repeat(10_000);
        let e = [("v", value.as_str())];
        let start = Instant::now();
        for input in [
            "${v##*a*a*a*a*a*a*a*b}",
            "${v#*a*a*a*a*a*a*a*b}",
            "${v%%*a*a*a*a*a*a*a*b}",
            "${v%*a*a*a*a*a*a*a*b}",
            "${v//*a*a*a*a*a*a*a*b/x}",
        ] {
            assert_eq!(word(&lx, input, &e).unwrap(), value, "{input}");
        }
        assert_eq!(word(&lx, "${v##*a*a*a*a*a*a*a*a}", &e).unwrap(), "");
        assert_eq!(word(&lx, "${v##a*a}", &e).unwrap(), "");
        assert_eq!(word(&lx, "${v%%a*a}", &e).unwrap(), "");
        assert_eq!(word(&lx, "${v#a*a}", &e).unwrap().len(), 9_998);
        assert_eq!(word(&lx, "${v%a*a}", &e).unwrap().len(), 9_998);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn patterns() {
        let lx = Lexer::new('\\');
        let e = [("F", "a.b.c"), ("N", "l1\nl2"), ("H", "#x"), ("P", "a\\")];
        assert_eq!(word(&lx, "${F#*.}", &e).unwrap(), "b.c");
        assert_eq!(word(&lx, "${F##*.}", &e).unwrap(), "c");
        assert_eq!(word(&lx, "${F%.*}", &e).unwrap(), "a.b");
        assert_eq!(word(&lx, "${F%%.*}", &e).unwrap(), "a");
        assert_eq!(word(&lx, "${F/./-}", &e).unwrap(), "a-b.c");
        assert_eq!(word(&lx, "${F//./-}", &e).unwrap(), "a-b-c");
        // `$0` is expanded by the lexer first; a surviving `$0` is the regexp's whole match.
        assert_eq!(word(&lx, "${F//?/<$0>}", &e).unwrap(), "<><><><><>");
        assert_eq!(word(&lx, r"${F//?/\$0}", &e).unwrap(), r"\a\.\b\.\c");
        assert_eq!(word(&lx, r"${F/?/\$0}", &e).unwrap(), r"\$0.b.c");
        assert_eq!(word(&lx, "${F//?/<'$0'>}", &e).unwrap(), "<a><.><b><.><c>");
        // Quotes do not protect wildcards; wildcards stop at newlines.
        assert_eq!(word(&lx, "${F#'*'.}", &e).unwrap(), "b.c");
        assert_eq!(word(&lx, "${N##*}", &e).unwrap(), "\nl2");
        assert_eq!(word(&lx, "${N%%*}", &e).unwrap(), "l1\n");
        // `##` is recognised after expansion of the word.
        let e2 = [("F", "xxa"), ("H", "#*x"), ("L", "*x")];
        assert_eq!(word(&lx, "${F#$H}", &e2).unwrap(), "a");
        assert_eq!(word(&lx, "${F#$L}", &e2).unwrap(), "xa");
        assert!(word(&lx, "${F#$P}", &e)
            .unwrap_err()
            .contains("invalid escape"));
    }

    #[test]
    fn names_and_specials() {
        let lx = Lexer::new('\\');
        let e = [("é1", "E"), ("a٣", "A"), ("x", "X")];
        assert_eq!(word(&lx, "$é1-$a٣-$x·", &e).unwrap(), "E-A-X·");
        assert_eq!(word(&lx, "$٣x", &e).unwrap(), "x");
        assert_eq!(word(&lx, "$@@ $$$ $.", &e).unwrap(), "@ $ $.");
        assert_eq!(word(&lx, "${+x}${%x}${#}", &e).unwrap(), "");
        let m = lx
            .process_word_with_matches("$1 ${x:-$y} ${x+$z}", &env(&e))
            .unwrap();
        assert_eq!(m.word, " X ");
        assert_eq!(m.matched, BTreeSet::from(["x".to_owned()]));
        let unmatched: BTreeSet<String> = ["1", "y", "z"].map(String::from).into();
        assert_eq!(m.unmatched, unmatched);
        // A leading byte order mark is dropped, as Go's scanner does.
        assert_eq!(word(&lx, "\u{feff}a\u{feff}", &e).unwrap(), "a\u{feff}");
    }

    #[test]
    fn word_splitting() {
        let e = [("s", " a\u{3000}b  "), ("q", "")];
        assert_eq!(words("x${s}y", &e), ["x", "a", "b", "y"]);
        assert_eq!(words("x\"${s}\"y", &e), ["x a\u{3000}b  y"]);
        assert_eq!(words(" '' \"\" $q ${q} a\\  b ", &e), ["a ", "b"]);
        assert_eq!(words("\u{a0}a\u{85}b\u{200b}", &e), ["a", "b\u{200b}"]);
        assert!(words("", &e).is_empty());
    }

    #[test]
    fn options() {
        let e = env(&[("A", "1")]);
        let raw = Lexer::new('\\').with_raw_quotes(true);
        assert_eq!(raw.process_word(r#"'$A' "$A""#, &e).unwrap(), r#"'$A' "1""#);
        let esc = Lexer::new('\\').with_raw_escapes(true);
        assert_eq!(
            esc.process_word(r#"\$A "\$A""#, &e).unwrap(),
            r#"\$A "\$A""#.replace('"', "")
        );
        let skip = Lexer::new('\\').with_skip_unset_env(true);
        assert_eq!(
            skip.process_word("$A $B ${B} ${B:-x} ${B//p/r} ${A:+y}", &e)
                .unwrap(),
            "1 $B ${B} ${B:-x} ${B/p/r} y"
        );
        let noq = Lexer::new('\\').with_skip_process_quotes(true);
        assert_eq!(noq.process_word(r#"'$A "x"#, &e).unwrap(), r#"'1 "x"#);
    }

    /// A tiny xorshift generator, so the smoke test needs no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_inputs_never_panic() {
        const PIECES: &[&str] = &[
            "$", "{", "}", ":", "-", "+", "?", "#", "%", "/", "\\", "'", "\"", "`", "*", " ", "a",
            "A", "1", "0", "@", "!", ".", "=", "\n", "é", "한", "\u{feff}", "${", "${A", "${B:-",
            "$A", "}}",
        ];
        let e = env(&[("A", "a*b?c\\d/e}f"), ("B", ""), ("C", "  x  y ")]);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for escape in ['\\', '`'] {
            let lx = Lexer::new(escape);
            for _ in 0..20_000 {
                let len = (rng.next() % 24) as usize;
                let input: String = (0..len)
                    .map(|_| PIECES[(rng.next() % PIECES.len() as u64) as usize])
                    .collect();
                let _ = lx.process_word(&input, &e);
                let _ = lx.process_words(&input, &e);
            }
        }
    }
}
