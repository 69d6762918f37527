//! Go `filepath.Match` for one path segment, as COPY/ADD source wildcards use it: `*` and `?`
//! never match `/`, `[...]` and `[^...]` classes with ranges, `\` escapes.

/// True when `pat` contains a wildcard character (so it must be matched, not looked up).
pub fn has_wildcard(pat: &str) -> bool {
    pat.contains(['*', '?', '['])
}

/// Matches `name` against `pat`. A malformed pattern is an error.
pub fn matches(pat: &str, name: &str) -> Result<bool, String> {
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point for the last `*`: linear in practice and
    // never exponential.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' if ni < n.len() && n[ni] != '/' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    let (hit, len) = class(&p[pi..], n.get(ni).copied())?;
                    if hit {
                        pi += len;
                        ni += 1;
                        continue;
                    }
                }
                '\\' => {
                    let c = *p.get(pi + 1).ok_or("trailing backslash in pattern")?;
                    if n.get(ni) == Some(&c) {
                        pi += 2;
                        ni += 1;
                        continue;
                    }
                }
                c if n.get(ni) == Some(&c) && c != '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        } else if ni == n.len() {
            return Ok(true);
        }
        // Mismatch: let the last `*` eat one more character (never a `/`).
        match star {
            Some((sp, sn)) if sn < n.len() && n[sn] != '/' => {
                star = Some((sp, sn + 1));
                pi = sp + 1;
                ni = sn + 1;
            }
            _ => {
                validate(&p[pi.min(p.len())..])?;
                return Ok(false);
            }
        }
    }
}

/// A class at the start of `p`; returns whether `c` is in it and the class's length.
fn class(p: &[char], c: Option<char>) -> Result<(bool, usize), String> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('^') | Some('!'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut ranges = 0;
    loop {
        let Some(&ch) = p.get(i) else {
            return Err("unterminated [ in pattern".into());
        };
        if ch == ']' && ranges > 0 {
            i += 1;
            break;
        }
        ranges += 1;
        let lo = take(p, &mut i)?;
        let hi = if p.get(i) == Some(&'-') {
            i += 1;
            take(p, &mut i)?
        } else {
            lo
        };
        if lo > hi {
            return Err("bad character range in pattern".into());
        }
        if let Some(c) = c {
            hit |= lo <= c && c <= hi;
        }
    }
    let ok = c.is_some_and(|c| c != '/') && (hit != negate);
    Ok((ok, i))
}

/// One class character; an unescaped `-` or `]` here is malformed, as in Go.
fn take(p: &[char], i: &mut usize) -> Result<char, String> {
    let mut c = *p.get(*i).ok_or("unterminated [ in pattern")?;
    if c == '-' || c == ']' {
        return Err("bad character class in pattern".into());
    }
    if c == '\\' {
        *i += 1;
        c = *p.get(*i).ok_or("trailing backslash in pattern")?;
    }
    *i += 1;
    Ok(c)
}

/// Checks the rest of a pattern for syntax errors, as Go does even after a mismatch.
fn validate(p: &[char]) -> Result<(), String> {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '[' => {
                let (_, len) = class(&p[i..], None)?;
                i += len;
            }
            '\\' => {
                if i + 1 >= p.len() {
                    return Err("trailing backslash in pattern".into());
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_filepath_match_cases() {
        let yes = [
            ("abc", "abc"),
            ("*", "abc"),
            ("*c", "abc"),
            ("a*", "a"),
            ("a*/b", "abc/b"),
            ("a*b*c*d*e*/f", "axbxcxdxe/f"),
            ("a*b?c*x", "abxbbxdbxebxczzx"),
            ("ab[c]", "abc"),
            ("ab[b-d]", "abc"),
            ("ab[^c]", "abd"),
            ("ab[^e-g]", "abc"),
            ("a\\*b", "a*b"),
            ("a?b", "a☺b"),
            ("a[^a]b", "a☺b"),
            ("[\\-]", "-"),
            ("[x\\-]", "-"),
            ("*.go", "main.go"),
        ];
        for (p, n) in yes {
            assert_eq!(matches(p, n), Ok(true), "{p} ~ {n}");
        }
        let no = [
            ("abc", "abd"),
            ("*c", "abd"),
            ("a*/b", "abc/c"),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f"),
            ("a*b?c*x", "abxbbxdbxebxczzy"),
            ("ab[e-g]", "abc"),
            ("ab[^c]", "abc"),
            ("a\\*b", "ab"),
            ("a?b", "a/b"),
            ("a*b", "a/b"),
            ("*", "a/b"),
            ("[^a]", "/"),
        ];
        for (p, n) in no {
            assert_eq!(matches(p, n), Ok(false), "{p} !~ {n}");
        }
        for bad in ["[", "[^", "a[", "[a-", "\\", "[z-a]", "[]a"] {
            assert!(matches(bad, "x").is_err(), "{bad} should be malformed");
        }
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let name = "a".repeat(5000);
        let pat = format!("{}b", "a*".repeat(50));
        assert_eq!(matches(&pat, &name), Ok(false));
    }
}
