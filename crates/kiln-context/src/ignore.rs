//! `.dockerignore` files and pattern matching with the semantics of
//! `moby/patternmatcher` (the library BuildKit and the docker CLI use).
//!
//! * [`read_ignore_file`] turns the text of a `.dockerignore` file into a
//!   list of patterns (the `ignorefile.ReadAll` normalisation).
//! * [`Matcher`] checks those patterns once, compiles each of them once and
//!   then answers "is this context path excluded?" for any number of paths
//!   (the `MatchesOrParentMatches` algorithm).
//!
//! # Pattern language
//!
//! Patterns use Go's `filepath.Match` syntax plus `**`, always with `/` as
//! separator and anchored at the context root:
//!
//! * `*` matches any run of characters except `/`; `?` matches exactly one
//!   character (not byte) except `/`.
//! * `[abc]`, `[a-z]` and `[^a-z]` are character classes; `\` escapes the
//!   next character, inside or outside a class.
//! * `**` matches any number of path segments, including none (`**/x` also
//!   matches `x`, `a/**/b` also matches `a/b`). A trailing `**` is a prefix
//!   match (`dir/**` matches everything below `dir` but not `dir`), and a
//!   leading `**` followed by plain text is a suffix match (`**file` matches
//!   `dir/file` and `myfile`).
//! * Everything else, including the regex metacharacters `.+()|{}$`, is
//!   literal.
//!
//! # Where this deliberately differs from upstream
//!
//! The upstream matcher translates the pattern text to a Go regexp almost
//! character by character, so a few odd patterns behave strangely there. This
//! module parses the pattern properly first, so:
//!
//! * an escaped letter (`\d`, `\b`, ...) is that letter, not a regexp escape;
//! * `*`, `?` and `.` inside a character class are ordinary class members;
//! * `**` also crosses file names that contain a newline;
//! * [`Matcher::matches`] path-cleans the path it is given (`./a//b/` is
//!   `a/b`) before matching.
//!
//! None of these change the answer for any upstream test vector.

use std::borrow::Cow;

use regex::{Regex, RegexBuilder};

/// Why a pattern list could not be used.
///
/// Both variants display as `invalid .dockerignore pattern "<pattern>": <reason>`,
/// where `<pattern>` is the pattern as given (surrounding whitespace trimmed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IgnoreError {
    /// The pattern is not valid `filepath.Match` syntax (or is a lone `!`).
    /// Reported by [`Matcher::new`].
    #[error("invalid .dockerignore pattern {pattern:?}: {reason}")]
    Syntax {
        /// The offending pattern, trimmed.
        pattern: String,
        /// What is wrong with it, e.g. `bad character range`.
        reason: String,
    },
    /// The pattern passed the syntax check but cannot be compiled (for
    /// example the reversed range `l-O` in `[Local-Only]`). Reported by
    /// [`Matcher::matches`] each time the pattern is evaluated, as upstream.
    #[error("invalid .dockerignore pattern {pattern:?}: {reason}")]
    Compile {
        /// The offending pattern, trimmed.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Turns the bytes of a `.dockerignore` file into the ordered pattern list
/// that [`Matcher::new`] takes (`ignorefile.ReadAll`).
///
/// * Lines are split on `\n`; one trailing `\r` per line is dropped.
/// * A UTF-8 byte order mark at the start of the text is removed.
/// * A line whose *first* character is `#` is a comment (`  #x` is a pattern).
/// * Lines are trimmed; empty lines are dropped.
/// * A leading `!` is split off and the rest trimmed again; the rest is then
///   path-cleaned (Go `filepath.Clean`) and one leading `/` is removed unless
///   the rest is just `/`. The `!` is put back in front.
/// * A bare `!` is kept as it is; [`Matcher::new`] rejects it.
///
/// Invalid UTF-8 is replaced with U+FFFD. Empty input gives an empty list.
pub fn read_ignore_file(text: &[u8]) -> Vec<String> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    let mut out = Vec::new();
    for raw in text.split(|&b| b == b'\n') {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = String::from_utf8_lossy(raw);
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut normalised = String::new();
        if invert {
            normalised.push('!');
        }
        if !pattern.is_empty() {
            let cleaned = clean(pattern);
            let cleaned = match cleaned.strip_prefix('/') {
                Some(rest) if !rest.is_empty() => rest,
                _ => &cleaned,
            };
            normalised.push_str(cleaned);
        }
        out.push(normalised);
    }
    out
}

/// Go's `filepath.Clean` for `/`-separated paths: collapse repeated `/`,
/// drop `.` segments, resolve `..` against a preceding segment, drop `..`
/// directly below the root, remove a trailing `/`; the empty path is `.`.
/// Borrows when the path is already clean.
pub(crate) fn clean(path: &str) -> Cow<'_, str> {
    if is_clean(path) {
        return Cow::Borrowed(path);
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            _ => parts.push(seg),
        }
    }
    let joined = parts.join("/");
    Cow::Owned(match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    })
}

/// Cheap check that [`clean`] would return the path unchanged. `..` segments
/// are sent through the slow path even when they would survive.
fn is_clean(path: &str) -> bool {
    if path == "/" || path == "." {
        return true;
    }
    if path.is_empty() || path.ends_with('/') {
        return false;
    }
    let body = path.strip_prefix('/').unwrap_or(path);
    body.split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

// ---------------------------------------------------------------------------
// Pattern parsing

/// One element of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A plain character, matched literally (an unescaped `/` is a separator).
    Lit(char),
    /// A `\`-escaped character, matched literally.
    Esc(char),
    /// `*`. Two in a row form `**`.
    Star,
    /// `?`.
    Any,
    /// `[...]` or `[^...]`.
    Class(Class),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Class {
    negated: bool,
    /// Inclusive ranges; a single character is `(c, c)`. A reversed range
    /// passes the syntax check (as in Go) but makes the pattern uncompilable.
    ranges: Vec<(char, char)>,
}

impl Class {
    fn contains(&self, c: char) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }
}

/// Parses a pattern with Go `filepath.Match` syntax (Unix flavour: `\`
/// escapes). Errors are the reasons `filepath.Match` would give
/// `ErrBadPattern`.
fn parse(pattern: &str) -> Result<Vec<Tok>, &'static str> {
    let mut toks = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        let tok = match c {
            '*' => Tok::Star,
            '?' => Tok::Any,
            '\\' => match chars.next() {
                Some(e) => Tok::Esc(e),
                None => return Err("trailing backslash escapes nothing"),
            },
            '[' => {
                let negated = chars.next_if_eq(&'^').is_some();
                let mut ranges = Vec::new();
                loop {
                    if !ranges.is_empty() && chars.next_if_eq(&']').is_some() {
                        break;
                    }
                    let lo = class_char(&mut chars, ranges.is_empty())?;
                    let hi = if chars.next_if_eq(&'-').is_some() {
                        class_char(&mut chars, false)?
                    } else {
                        lo
                    };
                    ranges.push((lo, hi));
                }
                Tok::Class(Class { negated, ranges })
            }
            other => Tok::Lit(other),
        };
        toks.push(tok);
    }
    Ok(toks)
}

/// Reads one (possibly escaped) character of a class; like Go, a character
/// must be followed by more pattern text (at least the closing `]`).
fn class_char(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    first: bool,
) -> Result<char, &'static str> {
    const UNCLOSED: &str = "unclosed character class (missing ']')";
    let c = match chars.next() {
        None => return Err(UNCLOSED),
        Some('-') => return Err("bad character range"),
        Some(']') if first => {
            return Err("character class cannot start with ']' (escape it as '\\]')")
        }
        Some(']') => return Err("bad character range"),
        Some('\\') => chars.next().ok_or(UNCLOSED)?,
        Some(c) => c,
    };
    if chars.peek().is_none() {
        return Err(UNCLOSED);
    }
    Ok(c)
}

// ---------------------------------------------------------------------------
// Compilation

/// How a compiled pattern is matched; mirrors upstream's exact / prefix /
/// suffix / regexp split, which matters for leading `**` (`**file` matches
/// `myfile`).
#[derive(Debug, Clone)]
enum Kind {
    /// The path equals the pattern.
    Exact(String),
    /// `literal**`: the path starts with `literal`.
    Prefix(String),
    /// `**literal` / `**/literal`: the path ends with the text after `**`,
    /// or, when that text starts with `/`, equals the rest of it.
    Suffix(String),
    /// Anything with wildcards.
    Regex(Regex),
    /// Passed the syntax check but cannot be compiled; the reason.
    Broken(String),
}

/// Characters `regex` treats specially; escaping them is valid both inside
/// and outside classes.
fn is_regex_meta(c: char) -> bool {
    matches!(
        c,
        '\\' | '.'
            | '+'
            | '*'
            | '?'
            | '('
            | ')'
            | '|'
            | '['
            | ']'
            | '{'
            | '}'
            | '^'
            | '$'
            | '#'
            | '&'
            | '-'
            | '~'
    )
}

fn push_literal(re: &mut String, c: char) {
    if is_regex_meta(c) {
        re.push('\\');
    }
    re.push(c);
}

/// Inside a class only these need escaping for `regex`; keeping the rest raw
/// makes `[b-d]` come out as `[b-d]`, like upstream.
fn push_class_char(re: &mut String, c: char) {
    if matches!(c, '\\' | '[' | ']' | '^' | '-' | '&' | '~') {
        re.push('\\');
    }
    re.push(c);
}

/// Compiles parsed tokens, following the structure of upstream's translation:
/// `*` -> `[^/]*`, `?` -> `[^/]`, `**` (eating one following `/`) -> `(.*/)?`,
/// or `.*` at the end; a trailing `**` after plain text is a prefix match and
/// a leading `**` followed by plain text a suffix match.
///
/// Returns the kind and the regex source (also built for non-regex kinds).
fn compile(toks: &[Tok]) -> (Kind, String) {
    #[derive(PartialEq, Clone, Copy)]
    enum Ty {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut ty = Ty::Exact;
    let mut re = String::from("^");
    // Plain text seen so far, and plain text after a leading `**`.
    let mut literal = String::new();
    let mut suffix = String::new();
    let mut reversed: Option<(char, char)> = None;
    let mut i = 0;
    while i < toks.len() {
        let first = i == 0;
        match &toks[i] {
            Tok::Star if toks.get(i + 1) == Some(&Tok::Star) => {
                i += 2;
                let ate_slash = toks.get(i) == Some(&Tok::Lit('/'));
                if ate_slash {
                    i += 1;
                }
                if i == toks.len() {
                    if ty == Ty::Exact {
                        ty = Ty::Prefix;
                    } else {
                        re.push_str(".*");
                        ty = Ty::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    ty = Ty::Regex;
                }
                if first {
                    ty = Ty::Suffix;
                    if ate_slash {
                        suffix.push('/');
                    }
                }
                continue;
            }
            Tok::Star => {
                re.push_str("[^/]*");
                ty = Ty::Regex;
            }
            Tok::Any => {
                re.push_str("[^/]");
                ty = Ty::Regex;
            }
            Tok::Lit(c) => {
                push_literal(&mut re, *c);
                literal.push(*c);
                suffix.push(*c);
                // Upstream switches to a regexp on any `[` or `]`.
                if *c == ']' {
                    ty = Ty::Regex;
                }
            }
            Tok::Esc(c) => {
                push_literal(&mut re, *c);
                ty = Ty::Regex;
            }
            Tok::Class(class) => {
                re.push('[');
                if class.negated {
                    re.push('^');
                }
                for &(lo, hi) in &class.ranges {
                    push_class_char(&mut re, lo);
                    if hi != lo {
                        re.push('-');
                        push_class_char(&mut re, hi);
                        if lo > hi && reversed.is_none() {
                            reversed = Some((lo, hi));
                        }
                    }
                }
                re.push(']');
                ty = Ty::Regex;
            }
        }
        i += 1;
    }
    let kind = match ty {
        Ty::Exact => Kind::Exact(literal),
        Ty::Prefix => Kind::Prefix(literal),
        Ty::Suffix => Kind::Suffix(suffix),
        Ty::Regex => {
            re.push('$');
            if let Some((lo, hi)) = reversed {
                Kind::Broken(format!(
                    "invalid character class range \"{lo}-{hi}\" ({lo:?} comes after {hi:?})"
                ))
            } else {
                match RegexBuilder::new(&re).dot_matches_new_line(true).build() {
                    Ok(regex) => Kind::Regex(regex),
                    Err(err) => Kind::Broken(format!("cannot compile pattern: {}", one_line(&err))),
                }
            }
        }
    };
    (kind, re)
}

fn one_line(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('~'))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .unwrap_or("unknown error")
        .to_owned()
}

/// One compiled pattern.
#[derive(Debug, Clone)]
struct Pattern {
    /// The pattern as given, trimmed (for error messages).
    text: String,
    exclusion: bool,
    toks: Vec<Tok>,
    kind: Kind,
}

impl Pattern {
    fn is_match(&self, path: &str) -> Result<bool, IgnoreError> {
        Ok(match &self.kind {
            Kind::Exact(s) => path == s,
            Kind::Prefix(p) => path.starts_with(p.as_str()),
            Kind::Suffix(s) => {
                path.ends_with(s.as_str()) || s.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            Kind::Regex(re) => re.is_match(path),
            Kind::Broken(reason) => {
                return Err(IgnoreError::Compile {
                    pattern: self.text.clone(),
                    reason: reason.clone(),
                })
            }
        })
    }

    /// Could this pattern hit (match, or match a parent of) some path strictly
    /// below the clean, relative directory `dir`? May say yes when unsure.
    fn may_apply_below(&self, dir: &str) -> bool {
        let dir_segs: Vec<&str> = if dir == "." {
            Vec::new()
        } else {
            dir.split('/').collect()
        };
        match &self.kind {
            Kind::Broken(_) | Kind::Suffix(_) => return true,
            Kind::Prefix(p) => {
                // Some path below `dir` starts with `p` iff `dir/` and `p`
                // agree on their common length.
                let dir_slash = if dir == "." {
                    String::new()
                } else {
                    format!("{dir}/")
                };
                return dir_slash.starts_with(p.as_str()) || p.starts_with(dir_slash.as_str());
            }
            Kind::Exact(_) | Kind::Regex(_) => {}
        }
        // Without `**` (and without classes that can match `/`) the pattern
        // matches only paths with exactly as many segments as it has, each
        // segment matching its counterpart.
        for (k, seg) in self.toks.split(is_separator).enumerate() {
            if seg_is_wild(seg) {
                return true;
            }
            let Some(name) = dir_segs.get(k) else {
                // The pattern is deeper than `dir` and agrees so far.
                return true;
            };
            if !seg_matches(seg, name) {
                return false;
            }
        }
        // The pattern matches `dir` or one of its parents, so it hits
        // everything below `dir`.
        true
    }
}

fn is_separator(tok: &Tok) -> bool {
    matches!(tok, Tok::Lit('/') | Tok::Esc('/'))
}

/// A segment that may match across `/`: contains `**`, or a class that can
/// match `/`.
fn seg_is_wild(seg: &[Tok]) -> bool {
    seg.windows(2)
        .any(|w| w[0] == Tok::Star && w[1] == Tok::Star)
        || seg
            .iter()
            .any(|t| matches!(t, Tok::Class(c) if c.contains('/')))
}

/// Glob match of one `/`-free segment (only `*` spans several characters);
/// the classic single-backtrack algorithm, O(len(seg) * len(name)).
fn seg_matches(seg: &[Tok], name: &str) -> bool {
    let name: Vec<char> = name.chars().collect();
    let (mut p, mut c) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while c < name.len() {
        match seg.get(p) {
            Some(Tok::Star) => {
                star = Some((p, c));
                p += 1;
                continue;
            }
            Some(tok) if single_matches(tok, name[c]) => {
                p += 1;
                c += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, sc)) => {
                p = sp + 1;
                c = sc + 1;
                star = Some((sp, sc + 1));
            }
            None => return false,
        }
    }
    seg[p..].iter().all(|t| *t == Tok::Star)
}

fn single_matches(tok: &Tok, c: char) -> bool {
    match tok {
        Tok::Lit(l) | Tok::Esc(l) => *l == c,
        Tok::Any => c != '/',
        Tok::Class(class) => class.contains(c),
        Tok::Star => false,
    }
}

// ---------------------------------------------------------------------------
// Matcher

/// An ordered list of `.dockerignore` patterns, checked and compiled once.
///
/// ```
/// use kiln_context::ignore::Matcher;
///
/// let m = Matcher::new(&["node_modules", "!node_modules/keep", "*.log"]).unwrap();
/// assert!(m.matches("node_modules/a/b.js").unwrap());
/// assert!(!m.matches("node_modules/keep/x.js").unwrap());
/// assert!(m.matches("debug.log").unwrap());
/// assert!(!m.matches("logs/debug.log").unwrap()); // anchored at the root
/// ```
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
}

impl Matcher {
    /// Builds a matcher (`patternmatcher.New`).
    ///
    /// Each pattern is trimmed (empty ones are dropped), path-cleaned (Go
    /// `filepath.Clean`), and a leading `!` makes it an exclusion (a
    /// re-include). A lone `!` and anything that is not valid
    /// `filepath.Match` syntax (unclosed `[`, `[-]`, `[x-]`, `[a-b-c]`,
    /// `[]a]`, a trailing `\`) is an [`IgnoreError::Syntax`].
    ///
    /// Like upstream, this does not strip a leading `/` and cleans *before*
    /// splitting off the `!`; pass patterns through [`read_ignore_file`] first
    /// to get the `.dockerignore` normalisation.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Matcher, IgnoreError> {
        let mut compiled = Vec::with_capacity(patterns.len());
        for raw in patterns {
            let text = raw.as_ref().trim();
            if text.is_empty() {
                continue;
            }
            let cleaned = clean(text);
            let (exclusion, body) = match cleaned.strip_prefix('!') {
                Some("") => {
                    return Err(IgnoreError::Syntax {
                        pattern: text.to_owned(),
                        reason: "a lone \"!\" re-includes nothing; put a pattern after it"
                            .to_owned(),
                    })
                }
                Some(rest) => (true, rest),
                None => (false, &*cleaned),
            };
            let toks = parse(body).map_err(|reason| IgnoreError::Syntax {
                pattern: text.to_owned(),
                reason: reason.to_owned(),
            })?;
            let (kind, _) = compile(&toks);
            compiled.push(Pattern {
                text: text.to_owned(),
                exclusion,
                toks,
                kind,
            });
        }
        Ok(Matcher { patterns: compiled })
    }

    /// Is `path` (relative to the context root, `/`-separated) excluded?
    /// (`MatchesOrParentMatches`.)
    ///
    /// The path is path-cleaned first; `.` (the root itself) is never
    /// excluded. Then the patterns are walked in order with a flag `matched`
    /// that starts `false`: an ordinary pattern is looked at only while
    /// `matched` is `false`, an exclusion only while it is `true`. A pattern
    /// hits when it matches the path or any of its parent directories, and a
    /// hit sets `matched` to "not an exclusion". The final flag is the answer,
    /// so the last applicable pattern wins.
    ///
    /// Errors only for a pattern that passed [`Matcher::new`] but cannot be
    /// compiled, when that pattern is evaluated.
    pub fn matches(&self, path: &str) -> Result<bool, IgnoreError> {
        let path = clean(path);
        let path: &str = &path;
        if path == "." {
            return Ok(false);
        }
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            if pattern.is_match(path)? || Self::parent_matches(pattern, path)? {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// Does the pattern match one of the parent directories of `path`
    /// (`a`, `a/b`, ... for `a/b/c`)?
    fn parent_matches(pattern: &Pattern, path: &str) -> Result<bool, IgnoreError> {
        for (i, b) in path.bytes().enumerate() {
            if b == b'/' && pattern.is_match(&path[..i])? {
                return Ok(true);
            }
        }
        // Upstream's parent list for `/x` also holds `/` itself.
        if path.len() > 1 && path.starts_with('/') && !path[1..].contains('/') {
            return pattern.is_match("/");
        }
        Ok(false)
    }

    /// Could some exclusion (`!`) pattern re-include a path strictly below the
    /// directory `dir` (relative, `/`-separated)?
    ///
    /// A context walker that finds `dir` excluded must still descend into it
    /// when this is `true` (fsutil behaviour); when it is `false`, nothing
    /// below `dir` can survive and the directory can be skipped unread. The
    /// answer is conservative: it may be `true` when nothing ends up
    /// re-included (always for patterns starting with `**`), but it is never
    /// `false` when something could be. Exclusions that come before every
    /// ordinary pattern are ignored, since they can never apply.
    pub fn dir_may_have_exceptions(&self, dir: &str) -> bool {
        let Some(first_include) = self.patterns.iter().position(|p| !p.exclusion) else {
            return false;
        };
        let dir = clean(dir);
        self.patterns[first_include + 1..]
            .iter()
            .any(|p| p.exclusion && p.may_apply_below(&dir))
    }

    /// Whether any pattern is an exclusion (`!pattern`).
    pub fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Number of patterns kept (empty ones are dropped).
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether there are no patterns, so nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_name(pattern: &str) -> (&'static str, String) {
        let toks = parse(pattern).expect("valid pattern");
        let (kind, re) = compile(&toks);
        let name = match kind {
            Kind::Exact(_) => "exact",
            Kind::Prefix(_) => "prefix",
            Kind::Suffix(_) => "suffix",
            Kind::Regex(_) | Kind::Broken(_) => "regexp",
        };
        (name, re)
    }

    fn corpus_dir() -> std::path::PathBuf {
        match std::env::var("KILN_CORPUS") {
            Ok(dir) => dir.into(),
            Err(_) => concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/corpus").into(),
        }
    }

    /// compile-cases.tsv: upstream's match type for each pattern, and for
    /// regexp patterns the regexp text (ours is built the same way).
    #[test]
    fn compile_cases_match_upstream_strategy() {
        let file = corpus_dir().join("dockerignore/compile-cases.tsv");
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let mut total = 0;
        let mut misses = Vec::new();
        for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            let cols: Vec<&str> = line.split('\t').collect();
            let pattern: String = serde_json::from_str(cols[0]).unwrap();
            let want_type = cols[1];
            let want_re: String = serde_json::from_str(cols[2]).unwrap();
            total += 1;
            let (got_type, got_re) = kind_name(&pattern);
            let re_ok = want_type != "regexp" || got_re == want_re;
            if got_type != want_type || !re_ok {
                misses.push(format!(
                    "{pattern:?}: want {want_type} {want_re:?}, got {got_type} {got_re:?}"
                ));
            }
        }
        println!(
            "compile-cases.tsv: {}/{} cases passed",
            total - misses.len(),
            total
        );
        assert!(misses.is_empty(), "misses:\n{}", misses.join("\n"));
    }

    #[test]
    fn clean_like_go() {
        for (input, want) in [
            ("", "."),
            (".", "."),
            ("./", "."),
            ("/", "/"),
            ("//", "/"),
            ("a/", "a"),
            ("./a", "a"),
            ("a//b/../c", "a/c"),
            ("a/../..", ".."),
            ("../a/..", ".."),
            ("/../a", "/a"),
            ("a/b/./c/", "a/b/c"),
            ("!./keep", "!./keep"),
            ("..", ".."),
            ("a/..", "."),
            ("/a/b", "/a/b"),
        ] {
            assert_eq!(clean(input), want, "clean({input:?})");
        }
    }

    #[test]
    fn error_messages_name_pattern_and_problem() {
        let cases = [
            ("[x-]", "invalid .dockerignore pattern \"[x-]\": bad character range"),
            ("[-]", "invalid .dockerignore pattern \"[-]\": bad character range"),
            ("[a-b-c]", "invalid .dockerignore pattern \"[a-b-c]\": bad character range"),
            (
                "  a[  ",
                "invalid .dockerignore pattern \"a[\": unclosed character class (missing ']')",
            ),
            (
                "\\",
                "invalid .dockerignore pattern \"\\\\\": trailing backslash escapes nothing",
            ),
            (
                "[]a]",
                "invalid .dockerignore pattern \"[]a]\": character class cannot start with ']' (escape it as '\\]')",
            ),
            (
                "!",
                "invalid .dockerignore pattern \"!\": a lone \"!\" re-includes nothing; put a pattern after it",
            ),
            (
                "![x-]",
                "invalid .dockerignore pattern \"![x-]\": bad character range",
            ),
        ];
        for (pattern, want) in cases {
            let err = Matcher::new(&["ok", pattern]).unwrap_err();
            assert!(matches!(err, IgnoreError::Syntax { .. }), "{pattern:?}");
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn uncompilable_pattern_errors_on_every_match() {
        let m = Matcher::new(&["[Local-Only]/"]).expect("passes the syntax check");
        for _ in 0..3 {
            let err = m.matches("x").unwrap_err();
            assert!(matches!(err, IgnoreError::Compile { .. }));
            assert_eq!(
                err.to_string(),
                "invalid .dockerignore pattern \"[Local-Only]/\": invalid character class range \"l-O\" ('l' comes after 'O')"
            );
        }
        // Not evaluated (an exclusion while nothing matched): no error, as upstream.
        let m = Matcher::new(&["a", "![z-a]"]).unwrap();
        assert!(!m.matches("b").unwrap());
        assert!(m.matches("a").is_err());
    }

    #[test]
    fn odd_patterns_are_sane() {
        let m = Matcher::new(&["\\d"]).unwrap();
        assert!(m.matches("d").unwrap());
        assert!(!m.matches("1").unwrap());
        let m = Matcher::new(&["a[*?.]b"]).unwrap();
        assert!(m.matches("a*b").unwrap());
        assert!(m.matches("a.b").unwrap());
        assert!(!m.matches("axb").unwrap());
        let m = Matcher::new(&["[&&~-]x"]).unwrap_err();
        assert!(m.to_string().contains("bad character range"));
        let m = Matcher::new(&["[&~^\\-]x"]).unwrap();
        for p in ["&x", "~x", "^x", "-x"] {
            assert!(m.matches(p).unwrap(), "{p}");
        }
        let m = Matcher::new(&["**/*.log"]).unwrap();
        assert!(m.matches("a\nb/c.log").unwrap());
        let m = Matcher::new(&["**file"]).unwrap();
        assert!(m.matches("myfile").unwrap());
    }

    #[test]
    fn exceptions_below_dirs() {
        let m = Matcher::new(&["foo*", "!foo/bar2"]).unwrap();
        assert!(m.dir_may_have_exceptions("foo"));
        assert!(!m.dir_may_have_exceptions("foo2"));
        assert!(!m.dir_may_have_exceptions("foo/baz"));
        assert!(m.dir_may_have_exceptions("foo/bar2"));
        assert!(m.dir_may_have_exceptions("foo/bar2/deeper"));

        let m = Matcher::new(&["node_modules", "!node_modules/*/keep"]).unwrap();
        assert!(m.dir_may_have_exceptions("node_modules"));
        assert!(m.dir_may_have_exceptions("node_modules/x"));
        assert!(!m.dir_may_have_exceptions("node_modules/x/other"));
        assert!(!m.dir_may_have_exceptions("other"));

        let m = Matcher::new(&["**", "!**/keep"]).unwrap();
        assert!(m.dir_may_have_exceptions("anything/at/all"));

        let m = Matcher::new(&["*", "!src/**"]).unwrap();
        assert!(m.dir_may_have_exceptions("src"));
        assert!(m.dir_may_have_exceptions("src/x"));
        assert!(!m.dir_may_have_exceptions("srcx"));
        assert!(!m.dir_may_have_exceptions("build"));

        let m = Matcher::new(&["a", "!a/**/keep"]).unwrap();
        assert!(m.dir_may_have_exceptions("a/b/c"));
        assert!(!m.dir_may_have_exceptions("b"));

        // An exclusion listed before every ordinary pattern never applies.
        let m = Matcher::new(&["!foo/keep", "foo"]).unwrap();
        assert!(!m.dir_may_have_exceptions("foo"));
        // No exclusions at all.
        let m = Matcher::new(&["foo"]).unwrap();
        assert!(!m.dir_may_have_exceptions("foo"));
    }

    /// Small deterministic PRNG (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn string(&mut self, alphabet: &[&str], max_len: usize) -> String {
            let len = self.below(max_len + 1);
            (0..len)
                .map(|_| alphabet[self.below(alphabet.len())])
                .collect()
        }
    }

    const PATTERN_ALPHABET: &[&str] = &[
        "a", "b", "/", "*", "**", "?", "[", "]", "^", "-", "\\", "!", ".", "..", " ", "☺", "[a-b]",
        "[^a]", "$", "(", "{",
    ];
    const PATH_ALPHABET: &[&str] = &["a", "b", "/", ".", "..", "☺", "*", "-", "ab"];

    /// Random patterns and paths: no panics, and for patterns without `**`
    /// the compiled form agrees with segment-wise glob matching.
    #[test]
    fn random_patterns_never_panic_and_agree() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let pattern = rng.string(PATTERN_ALPHABET, 8);
            let path = rng.string(PATH_ALPHABET, 8);
            if let Ok(m) = Matcher::new(&[&pattern]) {
                let _ = m.matches(&path);
                let _ = m.dir_may_have_exceptions(&path);
            }
            let Ok(toks) = parse(&pattern) else { continue };
            let (kind, _) = compile(&toks);
            let has_double_star = toks
                .windows(2)
                .any(|w| w[0] == Tok::Star && w[1] == Tok::Star);
            let Kind::Regex(re) = &kind else { continue };
            if has_double_star
                || toks
                    .iter()
                    .any(|t| matches!(t, Tok::Class(c) if c.contains('/')))
            {
                continue;
            }
            let segs: Vec<&[Tok]> = toks.split(is_separator).collect();
            let names: Vec<&str> = path.split('/').collect();
            let by_segments = segs.len() == names.len()
                && segs.iter().zip(&names).all(|(s, n)| seg_matches(s, n));
            assert_eq!(
                re.is_match(&path),
                by_segments,
                "pattern {pattern:?} path {path:?}"
            );
        }
    }

    /// If an excluded directory has no possible exceptions, everything below
    /// it really is excluded.
    #[test]
    fn skipping_dirs_without_exceptions_is_sound() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        const SEG: &[&str] = &["a", "b", "ab", "ba", "c"];
        const PAT: &[&str] = &["a", "b", "/", "*", "**", "?", "[ab]", "[^a]", "c"];
        let mut checked = 0;
        for _ in 0..20_000 {
            let patterns: Vec<String> = (0..1 + rng.below(4))
                .map(|_| {
                    let bang = if rng.below(2) == 0 { "!" } else { "" };
                    format!("{bang}{}", rng.string(PAT, 6))
                })
                .collect();
            let Ok(m) = Matcher::new(&patterns) else {
                continue;
            };
            let depth = 1 + rng.below(3);
            let dir: Vec<&str> = (0..depth).map(|_| SEG[rng.below(SEG.len())]).collect();
            let dir = dir.join("/");
            if m.matches(&dir) != Ok(true) || m.dir_may_have_exceptions(&dir) {
                continue;
            }
            for _ in 0..5 {
                let below: Vec<&str> = (0..1 + rng.below(3))
                    .map(|_| SEG[rng.below(SEG.len())])
                    .collect();
                let path = format!("{dir}/{}", below.join("/"));
                checked += 1;
                assert_eq!(
                    m.matches(&path),
                    Ok(true),
                    "patterns {patterns:?} dir {dir:?} path {path:?}"
                );
            }
        }
        assert!(checked > 1000, "only {checked} checks");
    }

    #[test]
    fn read_ignore_file_edge_cases() {
        assert_eq!(read_ignore_file(b""), Vec::<String>::new());
        assert_eq!(read_ignore_file(b"\n\n\r\n"), Vec::<String>::new());
        assert_eq!(read_ignore_file(b"#c\r\n!  /a/  \r\n/"), ["!a", "/"]);
        assert_eq!(read_ignore_file(b"a\xffb"), ["a\u{fffd}b"]);
        assert_eq!(read_ignore_file(b"//x//"), ["x"]);
    }
}
