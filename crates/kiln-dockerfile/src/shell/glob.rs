//! The shell patterns of `${v#p}`, `${v%p}`, `${v/p/r}` and `${v//p/r}`.
//!
//! BuildKit turns such a pattern into a Go regular expression (`*` becomes `.*` or `.*?`,
//! `?` becomes `.`, everything else is literal) and lets Go's leftmost-first regexp engine
//! find the match. This module gives the same answers without a regexp engine, in
//! `O(pattern + value²)` time whatever the pattern:
//!
//! * the wildcards inherit the regexp's `.`: they never match a `\n`;
//! * a match is the one a backtracking engine would find first: every `*` prefers the
//!   longest (greedy) or the shortest (lazy) span, earlier stars first;
//! * `%` and `%%` work on the reversed value with the reversed pattern, as BuildKit does.
//!
//! The escape character of patterns is always `\`, whatever the Dockerfile's escape
//! character: `\*`, `\?` and `\\` are literal, `\}` and `\/` are the delimiter characters
//! themselves, and any other `\x` makes the pattern invalid.

use super::unicode::{in_table, DIGIT, LETTER};

/// One element of a compiled pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// This exact character.
    Lit(char),
    /// `?`: any one character except `\n`.
    Any,
    /// `*`: any run of characters without a `\n`.
    Star,
}

/// "No match" in the dynamic-programming tables.
const NONE: usize = usize::MAX;

/// Compiles a shell pattern; the error text is what Go reports for a bad escape.
///
/// `Ok(None)` when the pattern has more than `max_fixed` non-star tokens, so that it cannot
/// match a text of `max_fixed` characters (the whole pattern is still checked for errors).
fn compile(pattern: &str, max_fixed: usize) -> Result<Option<Vec<Token>>, String> {
    let mut chars = pattern.chars().peekable();
    // Go's text/scanner silently drops a byte order mark at the very start of its input.
    if chars.peek() == Some(&'\u{feff}') {
        chars.next();
    }
    let mut tokens = Vec::new();
    let mut fixed = 0;
    while let Some(c) = chars.next() {
        let token = match c {
            '*' => Token::Star,
            '?' => Token::Any,
            '\\' => {
                // `\}` and `\/` only protect the delimiter: the character itself is literal.
                if matches!(chars.peek(), Some('}') | Some('/')) {
                    continue;
                }
                match chars.next() {
                    Some(e @ ('*' | '?' | '\\')) => Token::Lit(e),
                    // Go formats the scanner's EOF (-1) with %c as U+FFFD.
                    other => {
                        return Err(format!(
                            "invalid escape '\\{}'",
                            other.unwrap_or(char::REPLACEMENT_CHARACTER)
                        ))
                    }
                }
            }
            c => Token::Lit(c),
        };
        if token != Token::Star {
            fixed += 1;
        } else if tokens.last() == Some(&Token::Star) {
            // `**` prefers exactly the ends `*` prefers, greedy or lazy.
            continue;
        }
        if fixed <= max_fixed {
            tokens.push(token);
        }
    }
    Ok((fixed <= max_fixed).then_some(tokens))
}

/// For every start position `p` in `text` (0..=len), the end of the match the regexp engine
/// would report for a match attempt starting exactly at `p`, or [`NONE`]. With `anchored`,
/// only the entry for `p = 0` is meaningful.
///
/// `best[i][p]` = end of the preferred match of `tokens[i..]` from `p`; it is computed from
/// the last token backwards, keeping only one row. A star's candidate ends form the range
/// `[p, end of p's line]`, so the preferred one (largest for greedy, smallest for lazy) that
/// lets the rest match can be carried along while `p` walks right to left.
///
/// Every token but a star consumes exactly one character, so a row only needs the columns
/// where enough text is left for the fixed tokens after it (and, anchored, where the fixed
/// tokens before it fit): `O(tokens × (len − fixed + 1))` anchored, and a pattern with more
/// fixed tokens than `len` is rejected at once. Stars never follow each other, so at worst
/// this is `O(len²)`.
fn match_ends(tokens: &[Token], text: &[char], greedy: bool, anchored: bool) -> Vec<usize> {
    let len = text.len();
    let fixed_total = tokens.iter().filter(|&&t| t != Token::Star).count();
    if fixed_total > len {
        return vec![NONE; len + 1];
    }
    // Row `tokens.len()`: the empty rest matches everywhere, ending where it starts.
    let mut next: Vec<usize> = (0..=len).collect();
    let mut cur = vec![NONE; len + 1];
    // Fixed tokens after the current one; the current row is valid on `lo..=hi` and only
    // read there.
    let mut fixed_after = 0;
    for &token in tokens.iter().rev() {
        let is_fixed = token != Token::Star;
        let fixed_before = fixed_total - fixed_after - usize::from(is_fixed);
        let lo = if anchored { fixed_before } else { 0 };
        let hi = len - fixed_after - usize::from(is_fixed);
        match token {
            Token::Lit(c) => {
                for p in lo..=hi {
                    cur[p] = if text[p] == c { next[p + 1] } else { NONE };
                }
            }
            Token::Any => {
                for p in lo..=hi {
                    cur[p] = if text[p] != '\n' { next[p + 1] } else { NONE };
                }
            }
            Token::Star => {
                // `chosen`: the preferred star end in [p, end of line] whose rest matches;
                // ends beyond `hi` leave too little text for the rest.
                let mut chosen = NONE;
                for p in (lo..=hi).rev() {
                    let rest_matches = next[p] != NONE;
                    if p == len || text[p] == '\n' {
                        // The star cannot consume text[p]: its only end is p.
                        chosen = if rest_matches { p } else { NONE };
                    } else if rest_matches && (!greedy || chosen == NONE) {
                        chosen = p;
                    }
                    cur[p] = if chosen == NONE { NONE } else { next[chosen] };
                }
            }
        }
        fixed_after += usize::from(is_fixed);
        std::mem::swap(&mut cur, &mut next);
    }
    // Columns past the last valid one of row 0 hold stale values.
    for end in &mut next[len - fixed_total + 1..] {
        *end = NONE;
    }
    next
}

/// The error for an expansion whose text would exceed `limit` bytes.
#[cold]
pub(super) fn too_large(limit: usize) -> String {
    format!("expansion too large: more than {limit} bytes of expanded text")
}

fn invalid(pattern: &str, err: String) -> String {
    format!("invalid pattern ({pattern}) in substitution: {err}")
}

/// `${value#pattern}` (`greedy` = `##`): removes the preferred match anchored at the start.
pub(super) fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let text: Vec<char> = value.chars().collect();
    let compiled = compile(pattern, text.len()).map_err(|e| invalid(pattern, e))?;
    let end = compiled.map_or(NONE, |tokens| match_ends(&tokens, &text, greedy, true)[0]);
    if end == NONE {
        return Ok(value.to_owned());
    }
    Ok(text[end..].iter().collect())
}

/// Reverses a pattern, keeping each `\x` pair in order (`a\*c` becomes `c\*a`).
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = chars.clone();
    let last = chars.len().wrapping_sub(1);
    let mut i = 0;
    while i < chars.len() {
        let at = last - i;
        if chars[i] == '\\' && i != last {
            out[at - 1] = '\\';
            out[at] = chars[i + 1];
            i += 2;
        } else {
            out[at] = chars[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

/// `${value%pattern}` (`greedy` = `%%`): BuildKit reverses value and pattern and trims the
/// prefix, which is what makes "shortest suffix" come out right.
pub(super) fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let reversed: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// `${value/pattern/replacement}` and, with `all`, `${value//pattern/replacement}`.
///
/// Stars are greedy and a match may start anywhere (leftmost wins). As in Go, replacing
/// every match expands `$0`/`${0}` in the replacement to the matched text (other `$name`
/// references to empty, `$$` to `$`), while replacing the first match inserts it verbatim.
///
/// Replacing every match is the one operation that multiplies sizes (`${v//*/$v}` squares
/// them), so it fails with [`too_large`]'s text once the result exceeds `limit` bytes.
pub(super) fn replace(
    pattern: &str,
    value: &str,
    replacement: &str,
    all: bool,
    limit: usize,
) -> Result<String, String> {
    let text: Vec<char> = value.chars().collect();
    let len = text.len();
    let Some(tokens) = compile(pattern, len).map_err(|e| invalid(pattern, e))? else {
        return Ok(value.to_owned());
    };
    let ends = match_ends(&tokens, &text, true, false);
    let slice = |a: usize, b: usize| -> String { text[a..b].iter().collect() };

    if !all {
        return Ok(match (0..=len).find(|&p| ends[p] != NONE) {
            Some(start) => {
                let mut out = slice(0, start);
                out.push_str(replacement);
                out.extend(&text[ends[start]..]);
                out
            }
            None => value.to_owned(),
        });
    }

    // Go's Regexp.ReplaceAllString loop, in character positions.
    let mut out = String::with_capacity(value.len());
    let mut last_end = 0;
    let mut search = 0;
    while search <= len {
        let Some(start) = (search..=len).find(|&p| ends[p] != NONE) else {
            break;
        };
        let end = ends[start];
        out.extend(&text[last_end..start]);
        // No replacement for an empty match right after the previous match.
        if end > last_end || start == 0 {
            expand_template(replacement, &slice(start, end), &mut out);
        }
        if out.len() > limit {
            return Err(too_large(limit));
        }
        last_end = end;
        // Always advance by at least one character.
        search = if end <= search { search + 1 } else { end };
    }
    out.extend(&text[last_end..]);
    Ok(out)
}

/// Go's `Regexp.Expand` for a regexp without capture groups: `$$` is `$`; `$0`/`${0}` is the
/// match; any other well-formed `$name`/`${name}` is empty; a malformed `$` stays literal.
fn expand_template(template: &str, matched: &str, out: &mut String) {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        match template_reference(rest) {
            Some((is_zero, after)) => {
                if is_zero {
                    out.push_str(matched);
                }
                rest = after;
            }
            None => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// Parses the `name` or `{name}` after a template `$`: whether it denotes group 0, and the
/// text after it; `None` when malformed.
fn template_reference(s: &str) -> Option<(bool, &str)> {
    let (braced, body) = match s.strip_prefix('{') {
        Some(body) => (true, body),
        None => (false, s),
    };
    let name_len: usize = body
        .chars()
        .take_while(|&c| c == '_' || in_table(LETTER, c) || in_table(DIGIT, c))
        .map(char::len_utf8)
        .sum();
    if name_len == 0 {
        return None;
    }
    let name = &body[..name_len];
    let mut after = &body[name_len..];
    if braced {
        after = after.strip_prefix('}')?;
    }
    // A group number is plain ASCII digits without a leading zero; only group 0 exists.
    Some((name == "0", after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replace_all_test(p: &str, v: &str, r: &str, all: bool) -> Result<String, String> {
        replace(p, v, r, all, usize::MAX)
    }

    #[test]
    fn reverse_keeps_escape_pairs() {
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("ab\\"), "\\ba");
        assert_eq!(reverse_pattern(""), "");
        assert_eq!(reverse_pattern("\\\\x"), "x\\\\");
    }

    #[test]
    fn lazy_and_greedy_prefix() {
        assert_eq!(trim_prefix("*x*y", "xxyy", false).unwrap(), "y");
        assert_eq!(trim_prefix("*x", "xxyy", true).unwrap(), "yy");
        assert_eq!(trim_prefix("*", "xxyy", false).unwrap(), "xxyy");
        assert_eq!(trim_prefix("*", "xxyy", true).unwrap(), "");
        assert_eq!(trim_suffix("\\**", "xx**", true).unwrap(), "xx");
        assert_eq!(trim_suffix("\\**\\*", "a***yy*", true).unwrap(), "a");
    }

    #[test]
    fn wildcards_stop_at_newlines() {
        assert_eq!(trim_prefix("*b", "a\nb", true).unwrap(), "a\nb");
        assert_eq!(trim_prefix("a?b", "a\nb", true).unwrap(), "a\nb");
        assert_eq!(trim_prefix("a\n*", "a\nbc\nd", true).unwrap(), "\nd");
        assert_eq!(replace_all_test("*", "ab\ncd", "-", true).unwrap(), "-\n-");
    }

    #[test]
    fn replace_all_like_go() {
        assert_eq!(
            replace_all_test("", "xxyy", "ww", true).unwrap(),
            "wwxwwxwwywwyww"
        );
        assert_eq!(replace_all_test("", "xxyy", "ww", false).unwrap(), "wwxxyy");
        assert_eq!(
            replace_all_test("x*", "axbxc", "[$0]", true).unwrap(),
            "a[xbxc]"
        );
        assert_eq!(
            replace_all_test("x", "axbx", "<${0}$$$1$.${x>", true).unwrap(),
            "a<x$$.${x>b<x$$.${x>"
        );
        assert_eq!(replace_all_test("x", "axbx", "$0", false).unwrap(), "a$0bx");
    }

    #[test]
    fn stars_merge_and_long_patterns_fail_fast() {
        assert_eq!(compile("a**?***", 1), Ok(None));
        assert!(compile("abc\\x", 1).is_err());
        let tokens = compile("a**?***", 2).unwrap().unwrap();
        assert_eq!(
            tokens,
            [Token::Lit('a'), Token::Star, Token::Any, Token::Star]
        );
        let value = "x".repeat(1000);
        let long = "x".repeat(1_000_000) + "*";
        assert_eq!(trim_prefix(&long, &value, true).unwrap(), value);
        assert_eq!(replace_all_test(&long, &value, "", true).unwrap(), value);
        assert_eq!(
            trim_prefix(&"*".repeat(1_000_000), &value, true).unwrap(),
            ""
        );
    }

    #[test]
    fn replace_all_is_bounded() {
        let value = "ab".repeat(100);
        let err = replace("", &value, "xyz", true, 500).unwrap_err();
        assert!(err.contains("too large"), "{err}");
        let out = replace("", &value, "xyz", true, 803).unwrap();
        assert_eq!(out.len(), 200 + 201 * 3);
    }

    /// What a backtracking regexp engine finds first from `p`: the definition of
    /// leftmost-first matching, exponential but fine for tiny inputs.
    fn backtrack(tokens: &[Token], text: &[char], p: usize, greedy: bool) -> Option<usize> {
        let Some((&token, rest)) = tokens.split_first() else {
            return Some(p);
        };
        let len = text.len();
        match token {
            Token::Lit(c) if p < len && text[p] == c => backtrack(rest, text, p + 1, greedy),
            Token::Any if p < len && text[p] != '\n' => backtrack(rest, text, p + 1, greedy),
            Token::Star => {
                let line_end = (p..len).find(|&q| text[q] == '\n').unwrap_or(len);
                let ends: Vec<usize> = if greedy {
                    (p..=line_end).rev().collect()
                } else {
                    (p..=line_end).collect()
                };
                ends.into_iter()
                    .find_map(|q| backtrack(rest, text, q, greedy))
            }
            _ => None,
        }
    }

    fn reference_ends(tokens: &[Token], text: &[char], greedy: bool) -> Vec<usize> {
        (0..=text.len())
            .map(|p| backtrack(tokens, text, p, greedy).unwrap_or(NONE))
            .collect()
    }

    #[test]
    fn pruned_dp_matches_reference() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n) as usize
        };
        let alphabet = ['a', 'b', '\n'];
        for _ in 0..20_000 {
            let text: Vec<char> = (0..rnd(9)).map(|_| alphabet[rnd(3)]).collect();
            let tokens: Vec<Token> = (0..rnd(7))
                .map(|_| match rnd(5) {
                    0 | 1 => Token::Star,
                    2 => Token::Any,
                    _ => Token::Lit(alphabet[rnd(3)]),
                })
                .collect();
            for greedy in [false, true] {
                let want = reference_ends(&tokens, &text, greedy);
                let got = match_ends(&tokens, &text, greedy, false);
                assert_eq!(got, want, "{tokens:?} on {text:?}, greedy {greedy}");
                let anchored = match_ends(&tokens, &text, greedy, true);
                assert_eq!(
                    anchored[0], want[0],
                    "{tokens:?} on {text:?}, greedy {greedy}"
                );
            }
        }
    }

    #[test]
    fn bad_escapes() {
        assert_eq!(
            trim_prefix("a\\b", "ab", false).unwrap_err(),
            "invalid pattern (a\\b) in substitution: invalid escape '\\b'"
        );
        assert!(trim_prefix("a\\", "ab", false).is_err());
        assert!(trim_suffix("a\\", "ab", false).is_err());
    }
}
