//! The word splitters of the parser layer: BuildKit's quote-aware splitter for `ENV`, `LABEL`
//! and `ARG`, the plain whitespace splitter for `FROM`/`EXPOSE`/`COPY`, and the extraction of
//! leading `--flags`.

use std::ops::Range;

/// A word and where it was found in the text it was split from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Word {
    /// The word, quotes and escape characters kept.
    pub text: String,
    /// Its byte range in the input.
    pub range: Range<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between words.
    Spaces,
    /// Inside a word, outside quotes.
    Word,
    /// Inside a quoted part of a word, with the quote character.
    Quoted(char),
}

/// Splits `text` into words at whitespace outside quotes, keeping quotes and escapes.
///
/// Rules (BuildKit's `parseWords`): the escape character keeps the next character with it, so
/// that character never opens or closes a quote or splits the word, except inside `'...'`
/// where the escape character is ordinary; a trailing escape character is dropped; a word
/// made only of quotes (`""`) still counts.
pub(crate) fn split_quoted(text: &str, escape: char) -> Vec<Word> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Set once the word has a quote, so that `""` is kept even though it looks empty.
    let mut quoted = false;
    let mut start = 0;
    let mut phase = Phase::Spaces;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if phase == Phase::Spaces {
            if c.is_whitespace() {
                continue;
            }
            phase = Phase::Word;
            start = i;
        }
        match phase {
            Phase::Spaces => unreachable!("handled above"),
            Phase::Word => {
                if c.is_whitespace() {
                    finish_word(&mut words, &mut word, quoted, start..i);
                    quoted = false;
                    phase = Phase::Spaces;
                    continue;
                }
                if c == '\'' || c == '"' {
                    quoted = true;
                    phase = Phase::Quoted(c);
                } else if c == escape {
                    if let Some((_, next)) = chars.next() {
                        word.push(c);
                        word.push(next);
                    }
                    continue;
                }
                word.push(c);
            }
            Phase::Quoted(q) => {
                if c == q {
                    phase = Phase::Word;
                } else if c == escape && q != '\'' {
                    match chars.next() {
                        Some((_, next)) => {
                            word.push(c);
                            word.push(next);
                        }
                        None => phase = Phase::Word,
                    }
                    continue;
                }
                word.push(c);
            }
        }
    }
    if phase != Phase::Spaces {
        finish_word(&mut words, &mut word, quoted, start..text.len());
    }
    words
}

fn finish_word(words: &mut Vec<Word>, word: &mut String, quoted: bool, range: Range<usize>) {
    if quoted || !word.is_empty() {
        words.push(Word {
            text: std::mem::take(word),
            range,
        });
    }
    word.clear();
}

/// The separators of BuildKit's `[\t\v\f\r ]+` splitting (no `\n`, no Unicode spaces).
pub(crate) fn is_separator(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Splits at runs of `[ \t\v\f\r]`; quotes are not special.
pub(crate) fn split_separators(text: &str) -> Vec<String> {
    text.split(is_separator)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Cuts `text` once at its first run of `[ \t\v\f\r]`: the part before and the rest after.
pub(crate) fn cut_at_separator(text: &str) -> Option<(&str, &str)> {
    let at = text.find(is_separator)?;
    let rest = text[at..].trim_start_matches(is_separator);
    Some((&text[..at], rest))
}

/// Pulls the leading `--flag` words off `text`: the flags (quotes and escape characters
/// removed) and the rest of the text, untrimmed.
///
/// Flags are taken while the next word starts with `--`; a word that is exactly `--` ends them
/// and is dropped. Unlike the shell, the escape character also escapes inside `'...'`.
pub(crate) fn extract_flags(text: &str, escape: char) -> (&str, Vec<String>) {
    let mut flags = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut phase = Phase::Spaces;
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match phase {
            Phase::Spaces => {
                if c.is_whitespace() {
                    chars.next();
                    continue;
                }
                if !text[i..].starts_with("--") {
                    return (&text[i..], flags);
                }
                phase = Phase::Word;
            }
            Phase::Word => {
                chars.next();
                if c.is_whitespace() {
                    if word == "--" {
                        return (&text[i..], flags);
                    }
                    if quoted || !word.is_empty() {
                        flags.push(std::mem::take(&mut word));
                    }
                    quoted = false;
                    phase = Phase::Spaces;
                } else if c == '\'' || c == '"' {
                    quoted = true;
                    phase = Phase::Quoted(c);
                } else if c == escape {
                    // The escaped character is kept literally; a trailing escape is dropped.
                    if let Some((_, next)) = chars.next() {
                        word.push(next);
                    }
                } else {
                    word.push(c);
                }
            }
            Phase::Quoted(q) => {
                chars.next();
                if c == q {
                    phase = Phase::Word;
                } else if c == escape {
                    match chars.next() {
                        Some((_, next)) => word.push(next),
                        None => phase = Phase::Word,
                    }
                } else {
                    word.push(c);
                }
            }
        }
    }
    if phase != Phase::Spaces && word != "--" && (quoted || !word.is_empty()) {
        flags.push(word);
    }
    ("", flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str, escape: char) -> Vec<String> {
        split_quoted(text, escape)
            .into_iter()
            .map(|w| w.text)
            .collect()
    }

    #[test]
    fn quoted_words() {
        assert_eq!(texts("foo bar", '\\'), ["foo", "bar"]);
        assert_eq!(texts("foo\\ bar", '\\'), ["foo\\ bar"]);
        assert_eq!(texts("a \"b c\" 'd e'", '\\'), ["a", "\"b c\"", "'d e'"]);
        assert_eq!(texts("\"\" x", '\\'), ["\"\"", "x"]);
        assert_eq!(texts("a\\", '\\'), ["a"]);
        assert_eq!(texts("'a\\' b", '\\'), ["'a\\'", "b"]);
        assert_eq!(texts("\"a\\\" b\"", '\\'), ["\"a\\\" b\""]);
        assert_eq!(texts("a`  b", '`'), ["a` ", "b"]);
        assert_eq!(texts("  ", '\\'), Vec::<String>::new());
    }

    #[test]
    fn word_ranges() {
        let w = split_quoted(" ab  \"c d\" ", '\\');
        assert_eq!(w[0].range, 1..3);
        assert_eq!(w[1].range, 5..10);
    }

    #[test]
    fn flags() {
        assert_eq!(extract_flags("foo /tmp", '\\'), ("foo /tmp", vec![]));
        assert_eq!(
            extract_flags("--a=1 --b foo", '\\'),
            ("foo", vec!["--a=1".to_string(), "--b".to_string()])
        );
        assert_eq!(
            extract_flags("--a -- foo", '\\'),
            (" foo", vec!["--a".to_string()])
        );
        assert_eq!(extract_flags("-- foo", '\\'), (" foo", vec![]));
        assert_eq!(
            extract_flags("--m=\"type=cache\" x", '\\'),
            ("x", vec!["--m=type=cache".to_string()])
        );
        assert_eq!(
            extract_flags("--x='a\\'b' y", '\\'),
            ("y", vec!["--x=a'b".to_string()])
        );
        assert_eq!(
            extract_flags("--only", '\\'),
            ("", vec!["--only".to_string()])
        );
        assert_eq!(extract_flags("--", '\\'), ("", vec![]));
        assert_eq!(extract_flags("-x y", '\\'), ("-x y", vec![]));
    }

    #[test]
    fn separators() {
        assert_eq!(split_separators("a \t b\u{b}c"), ["a", "b", "c"]);
        assert_eq!(split_separators("a\u{a0}b"), ["a\u{a0}b"]);
        assert_eq!(cut_at_separator("k  v w"), Some(("k", "v w")));
        assert_eq!(cut_at_separator("k"), None);
    }
}
