//! BuildKit-compatible Dockerfile parser: line joining, directives, heredocs, and the raw
//! instruction tree. See `../shared/corpus/buildkit-parser/README.md` for the rules.
//!
//! The parser follows BuildKit's `frontend/dockerfile/parser` package:
//!
//! * **Lines.** The input is read line by line; a leading UTF-8 byte order mark is dropped,
//!   trailing `\r`s are removed, and a line over [`MAX_LINE_LEN`] bytes is an error.
//! * **Directives.** `# syntax=`, `# escape=` and `# check=` are read only until the first
//!   line that is not one (a blank line, another comment or an instruction).
//! * **Continuations.** A line ending in the escape character (spaces and tabs may follow)
//!   continues on the next physical line, which is appended as is. Comment lines inside a
//!   continuation are dropped; empty ones are dropped with a warning.
//! * **Instructions.** Each logical line is split into keyword, `--flags` and arguments by
//!   per-instruction rules (JSON exec form, whitespace splitting, key/value pairs, ...).
//! * **Heredocs.** `RUN`, `COPY` and `ADD` (also as `ONBUILD` triggers) in shell form consume
//!   the body of each `<<WORD` they announce.
//!
//! Deliberate differences from BuildKit, none of which show in its test data:
//!
//! * Text that is not UTF-8 is decoded lossily (U+FFFD) instead of being carried as bytes,
//!   so [`Ast::dump`] shows `\u{fffd}` where BuildKit's dump would show `\xNN`.
//! * Flags are split character by character and use the escape character in effect (Go
//!   splits bytes and always uses `\`).
//! * More than [`MAX_ONBUILD_DEPTH`] chained `ONBUILD`s are an error, so nesting stays small.
//! * A too-long line is reported where it is met, even when an earlier instruction is
//!   unfinished or no instruction has been seen yet.
//!
//! Every error carries a byte [`Span`] of the original input: the offending token when it can
//! be pinned down, otherwise the instruction or line.

mod directives;
mod dump;
mod heredoc;
mod instruction;
mod json;
mod lines;
mod words;

use std::borrow::Cow;

pub use dump::{go_quote, go_quote_bytes};
pub use instruction::MAX_ONBUILD_DEPTH;
pub use lines::MAX_LINE_LEN;

use crate::ast::{Ast, Directive, Heredoc, Node, Warning};
use crate::error::{Error, Span};
use directives::Scanner;
use lines::{Joined, Line, Lines};

/// Parses a whole Dockerfile.
///
/// Fails on the inputs BuildKit's parser rejects: no instructions, a bad or repeated directive,
/// `ENV`/`LABEL` without a value or with a pair lacking `=`, a JSON array holding non-strings,
/// a line over 65535 bytes, an unterminated heredoc; and on more than [`MAX_ONBUILD_DEPTH`]
/// chained `ONBUILD`s. Unknown instructions and flags are not errors at this layer.
///
/// Never panics, whatever the bytes; time and memory are linear in the input.
pub fn parse(src: &[u8]) -> Result<Ast, Error> {
    let mut lines = Lines::new(src);
    let mut directives = Scanner::default();
    let mut children = Vec::new();
    let mut warnings = Vec::new();
    while let Some(first) = lines.next_line()? {
        let Some(logical) = read_logical(&mut lines, &first, &mut directives)? else {
            continue;
        };
        if let Some(span) = logical.empty_continuation {
            warnings.push(Warning {
                short: format!("Empty continuation line found in: {}", logical.joined.text),
                detail: "Empty continuation lines will become errors in a future release"
                    .to_string(),
                span,
            });
        }
        children.push(build_node(
            src.len(),
            &mut lines,
            &logical,
            directives.escape,
        )?);
    }
    if children.is_empty() {
        return Err(
            Error::new("file with no instructions", Span::new(0, src.len()))
                .with_help("a Dockerfile needs at least one instruction, such as FROM"),
        );
    }
    Ok(Ast {
        children,
        directives: directives.directives,
        escape: directives.escape,
        warnings,
    })
}

/// The parser directives at the top of `src`, as [`parse`] reads them (leading whitespace
/// before `#` allowed, a byte order mark skipped). Fails like [`parse`] on a repeated
/// directive or a bad escape character.
pub fn parse_directives(src: &[u8]) -> Result<Vec<Directive>, Error> {
    let mut lines = Lines::new(src);
    let mut scanner = Scanner::default();
    while !scanner.done() {
        let Some(line) = lines.next_line()? else {
            break;
        };
        let (decoded, lead) = decode_trimmed(&line);
        let text = &decoded[lead..];
        scanner.observe(text, line.number, line.span(lead, text.len()))?;
    }
    Ok(scanner.directives)
}

/// BuildKit's `DetectSyntax`: the `syntax` directive as (image reference, whole value,
/// 1-based line).
///
/// Besides `# syntax=`, it accepts `// syntax=` lines and a document that is a JSON object
/// with a `"syntax"` string; a leading `#!` line and a byte order mark are skipped. The
/// reference is the value up to its first space (`# syntax=img // opts` gives `img`).
pub fn detect_syntax(src: &[u8]) -> Option<(String, String, usize)> {
    directives::detect("syntax", src, true)
}

/// BuildKit's `ParseDirective`: like [`detect_syntax`] for any directive `key` (such as
/// `check`), but only in the `# key=value` form.
pub fn detect_directive(key: &str, src: &[u8]) -> Option<(String, String, usize)> {
    directives::detect(key, src, false)
}

/// Splits the arguments of `ENV`, `LABEL` or `ARG` into words, as BuildKit's parser does.
///
/// Words are separated by whitespace outside quotes. Quotes are kept in the words. The escape
/// character keeps the next character with it (so `\"` opens no quote and `\ ` does not
/// split), except inside `'...'`; a trailing escape character is dropped; `""` is a word.
///
/// ```
/// use kiln_dockerfile::parser::split_words;
/// assert_eq!(split_words(r#"a="1 2" b\ c"#, '\\'), [r#"a="1 2""#, r"b\ c"]);
/// ```
pub fn split_words(text: &str, escape: char) -> Vec<String> {
    words::split_quoted(text, escape)
        .into_iter()
        .map(|w| w.text)
        .collect()
}

/// Parses one word as a heredoc announcement `[n]<<[-]WORD` (BuildKit's `ParseHeredoc`).
///
/// `Ok(None)` when it is not one (`<<`, `<EOF`, `<<EOF sh`, ...). The delimiter has its
/// quotes removed; any quoting makes [`Heredoc::expand`] false. The content is empty. Fails
/// (with a span over `word`) when the delimiter has an unterminated quote.
pub fn parse_heredoc_word(word: &str) -> Result<Option<Heredoc>, Error> {
    heredoc::parse_word(word)
}

/// The heredocs a shell-form instruction line announces, in order, with empty contents
/// (BuildKit's `heredocsFromLine`). Quoted `<<` does not count; a line with an unterminated
/// quote has none.
pub fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, Error> {
    heredoc::from_line(line)
}

/// A `<<-` heredoc body with the leading tabs of each line removed (BuildKit's
/// `ChompHeredocContent`). The parser stores bodies unchanged.
pub fn chomp_heredoc_content(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|line| line.trim_start_matches('\t'))
        .collect()
}

/// Go's `strings.ToLower`: per character, with the simple (one-to-one) case mapping.
pub(crate) fn go_lowercase(s: &str) -> String {
    s.chars()
        .map(|c| c.to_lowercase().next().unwrap_or(c))
        .collect()
}

/// One instruction's lines, joined.
struct Logical {
    joined: Joined,
    first_line: usize,
    last_line: usize,
    /// Source offset of the instruction's first character.
    start: usize,
    /// Source offset of the end of its last line (terminator excluded).
    end: usize,
    /// The first empty line inside the continuation, if any.
    empty_continuation: Option<Span>,
}

/// A line's text and the length of its leading whitespace.
fn decode_trimmed<'a>(line: &'a Line<'_>) -> (Cow<'a, str>, usize) {
    let decoded = line.decode();
    let lead = decoded.len() - decoded.trim_start().len();
    (decoded, lead)
}

/// Reads the instruction starting at `first`, following continuation lines. `None` for a
/// comment or blank line.
fn read_logical(
    lines: &mut Lines<'_>,
    first: &Line<'_>,
    directives: &mut Scanner,
) -> Result<Option<Logical>, Error> {
    let (decoded, lead) = decode_trimmed(first);
    let text = &decoded[lead..];
    directives.observe(text, first.number, first.span(lead, text.len()))?;
    if text.starts_with('#') {
        return Ok(None);
    }
    let escape = directives.escape;
    let (keep, mut continues) = continuation(text, escape);
    if keep == 0 && !continues {
        return Ok(None);
    }
    let mut logical = Logical {
        joined: Joined::default(),
        first_line: first.number,
        last_line: first.number,
        start: first.span(lead, 0).start,
        end: first.end,
        empty_continuation: None,
    };
    logical.joined.push(first, &decoded, lead..lead + keep);
    while continues {
        let Some(line) = lines.next_line()? else {
            break;
        };
        logical.last_line = line.number;
        logical.end = line.end;
        let decoded = line.decode();
        let body = decoded.trim_start();
        if body.starts_with('#') {
            continue;
        }
        if body.is_empty() {
            logical
                .empty_continuation
                .get_or_insert(line.span(0, line.text.len()));
            continue;
        }
        // Continuation lines keep their leading whitespace.
        let (keep, more) = continuation(&decoded, escape);
        logical.joined.push(&line, &decoded, 0..keep);
        continues = more;
    }
    Ok(Some(logical))
}

/// How much of `text` to keep, and whether it continues on the next line: it does when it
/// ends with the escape character (then dropped, with any spaces and tabs after it) that is
/// not itself escaped. BuildKit cannot tell `\\\` (an escaped escape, then a continuation)
/// from `\\`; neither can this.
fn continuation(text: &str, escape: char) -> (usize, bool) {
    let body = text.trim_end_matches([' ', '\t']);
    let Some(before) = body.strip_suffix(escape) else {
        return (text.len(), false);
    };
    match before.chars().next_back() {
        None => (0, true),
        Some(c) if c == escape => (text.len(), false),
        Some(_) => (before.len(), true),
    }
}

/// Parses a logical line into a node, reads its heredoc bodies, and records its position.
fn build_node(
    src_len: usize,
    lines: &mut Lines<'_>,
    logical: &Logical,
    escape: char,
) -> Result<Node, Error> {
    let whole = Span::new(logical.start, logical.end);
    let ctx = instruction::Ctx {
        joined: &logical.joined,
        escape,
        fallback: whole,
    };
    let mut node = instruction::parse(&ctx, &logical.joined.text, 0)?;
    let mut last_line = logical.last_line;
    let mut end = logical.end;
    if can_contain_heredoc(&node) && logical.joined.text.contains("<<") {
        let docs =
            heredoc::from_line(&logical.joined.text).map_err(|e| Error { span: whole, ..e })?;
        for mut doc in docs {
            let terminator = loop {
                let Some(line) = lines.next_line()? else {
                    return Err(Error::new(
                        "unterminated heredoc",
                        Span::new(whole.start, src_len),
                    )
                    .with_help(format!("end it with a line holding only `{}`", doc.name)));
                };
                if is_terminator(&line, &doc) {
                    break line;
                }
                doc.content.push_str(&String::from_utf8_lossy(line.raw));
            };
            last_line = terminator.number;
            end = terminator.end;
            node.heredocs.push(doc);
        }
    }
    // ONBUILD triggers share the position of the line that holds them.
    let mut current = Some(&mut node);
    while let Some(n) = current {
        n.start_line = logical.first_line;
        n.end_line = last_line;
        n.span = Span::new(n.span.start.min(end), end);
        current = n.inner.as_deref_mut();
    }
    node.span.start = logical.start;
    Ok(node)
}

/// Whether `line` ends the heredoc: its text is the delimiter, after leading tabs for `<<-`.
fn is_terminator(line: &Line<'_>, doc: &Heredoc) -> bool {
    let mut text = line.text;
    if doc.chomp {
        let tabs = text.iter().take_while(|&&b| b == b'\t').count();
        text = &text[tabs..];
    }
    text == doc.name.as_bytes()
}

/// `RUN`, `COPY` and `ADD` in shell form, directly or as an `ONBUILD` trigger.
fn can_contain_heredoc(node: &Node) -> bool {
    let target = match (node.keyword.as_str(), node.inner.as_deref()) {
        ("onbuild", Some(inner)) => inner,
        _ => node,
    };
    matches!(target.keyword.as_str(), "run" | "copy" | "add") && !target.json
}

#[cfg(test)]
mod tests;
