use super::*;
use crate::error::line_col;

fn dump(src: &str) -> String {
    parse(src.as_bytes()).unwrap().dump()
}

/// The error for `src`, with the line and column its span starts at.
fn error(src: &[u8]) -> (String, (usize, usize)) {
    let err = parse(src).unwrap_err();
    (err.message, line_col(src, err.span.start))
}

/// The source text an error's span covers.
fn error_text(src: &str) -> String {
    let err = parse(src.as_bytes()).unwrap_err();
    src[err.span.start..err.span.end].to_string()
}

#[test]
fn no_instructions() {
    assert_eq!(error(b"").0, "file with no instructions");
    assert_eq!(
        error(b"# just a comment\n\n   \n").0,
        "file with no instructions"
    );
    assert_eq!(error(b"# syntax=x\n").0, "file with no instructions");
}

#[test]
fn duplicate_directive() {
    let src = b"# escape=`\n#  Escape = `\nFROM x\n";
    assert_eq!(
        error(src),
        (
            "only one escape parser directive can be used".to_string(),
            (2, 1)
        )
    );
    let src = b"# syntax=a\n# check=skip=all\n# SYNTAX=b\nFROM x\n";
    assert_eq!(
        error(src),
        (
            "only one syntax parser directive can be used".to_string(),
            (3, 1)
        )
    );
}

#[test]
fn bad_escape_value() {
    let src = b"# escape=x\nFROM x\n";
    let (message, at) = error(src);
    assert_eq!(message, "invalid escape token 'x' does not match ` or \\");
    assert_eq!(at, (1, 10));
    assert_eq!(error_text("  # escape = \\\\ \nFROM x"), "\\\\");
}

#[test]
fn directives_stop_at_first_other_line() {
    let ast = parse(b"# syntax=a\n\n# escape=x\nFROM x\n").unwrap();
    assert_eq!(ast.directives.len(), 1);
    assert_eq!(ast.directives[0].name, "syntax");
    assert_eq!(ast.directives[0].line, 1);
    assert_eq!(ast.escape, '\\');
    let ast = parse(b"\xEF\xBB\xBF # Escape = ` \nFROM a`\n  b\n").unwrap();
    assert_eq!(ast.escape, '`');
    assert_eq!(ast.directives[0].span, Span::new(4, 17));
    assert_eq!(ast.dump(), "(from \"a\" \"b\")");
}

#[test]
fn nested_json_is_an_error() {
    let src = "FROM x\nCMD [ \"echo\", [ \"nested json\" ] ]\n";
    let (message, at) = error(src.as_bytes());
    assert_eq!(
        message,
        "when using JSON array syntax, arrays must be comprised of strings only"
    );
    assert_eq!(at, (2, 5));
    assert_eq!(error_text(src), "[ \"echo\", [ \"nested json\" ] ]");
}

#[test]
fn env_without_value() {
    let (message, at) = error(b"FROM busybox\n\nENV PATH\n");
    assert_eq!(message, "ENV must have two arguments");
    assert_eq!(at, (3, 5));
    assert_eq!(error(b"FROM x\nLABEL a").0, "LABEL must have two arguments");
    // No arguments at all is not an error at this layer.
    assert_eq!(dump("ENV"), "(env)");
}

#[test]
fn key_value_without_equals() {
    let src = "FROM x\nENV a=1 \\\n  b c=3\n";
    let (message, at) = error(src.as_bytes());
    assert_eq!(
        message,
        "Syntax error - can't find = in \"b\". Must be of the form: name=value"
    );
    assert_eq!(at, (3, 3));
    assert_eq!(error_text(src), "b");
}

#[test]
fn line_too_long() {
    let mut src = b"FROM x\nRUN ".to_vec();
    src.extend(std::iter::repeat_n(b'a', MAX_LINE_LEN));
    src.push(b'\n');
    let (message, at) = error(&src);
    assert_eq!(
        message,
        "dockerfile line greater than max allowed size of 65535"
    );
    assert_eq!(at, (2, 1));
    // Exactly at the limit is fine.
    let mut ok = b"FROM x\n".to_vec();
    ok.extend(std::iter::repeat_n(b'#', MAX_LINE_LEN));
    assert!(parse(&ok).is_ok());
}

#[test]
fn unterminated_heredoc() {
    let src = "FROM x\nRUN <<EOF\necho\n";
    let (message, at) = error(src.as_bytes());
    assert_eq!(message, "unterminated heredoc");
    assert_eq!(at, (2, 1));
}

#[test]
fn onbuild_chains_are_capped() {
    let ok = format!("{}RUN x", "ONBUILD ".repeat(MAX_ONBUILD_DEPTH));
    let expected = format!(
        "{}(run \"x\"{}",
        "(onbuild ".repeat(MAX_ONBUILD_DEPTH),
        ")".repeat(9)
    );
    assert_eq!(dump(&ok), expected);
    // A long chain over many lines (each line stays under the length limit).
    let too_deep = format!("{}RUN x", "ONBUILD \\\n".repeat(100_000));
    let (message, at) = error(too_deep.as_bytes());
    assert_eq!(
        message,
        "more than 8 ONBUILD instructions nested in one another"
    );
    assert_eq!(at, (9, 1));
}

#[test]
fn keyword_flags_and_arguments() {
    assert_eq!(dump("FrOm\tx  y"), "(from \"x\" \"y\")");
    assert_eq!(
        dump("COPY --a=\"b c\" -- --d e"),
        "(copy [\"--a=b c\"] \"--d\" \"e\")"
    );
    assert_eq!(dump("COPY \"a b\" c"), "(copy \"\\\"a\" \"b\\\"\" \"c\")");
    assert_eq!(dump("FOO bar baz\nFOO"), "(foo \"\")\n(foo \"\")");
    assert_eq!(dump("HEALTHCHECK NONE"), "(healthcheck \"NONE\")");
    assert_eq!(dump("ONBUILD RUN --x y"), "(onbuild (run [\"--x\"] \"y\"))");
    assert_eq!(dump("ONBUILD"), "(onbuild)");
    assert_eq!(dump("RUN echo # hi"), "(run \"echo # hi\")");
    assert_eq!(dump("ARG a=\"1 2\" b"), "(arg \"a=\\\"1 2\\\"\" \"b\")");
    assert_eq!(
        dump("LABEL a=b c=\"d e\""),
        "(label \"a\" \"b\" \"=\" \"c\" \"\\\"d e\\\"\" \"=\")"
    );
    assert_eq!(dump("CMD [\"a\"] trailing"), "(cmd \"a\")");
}

#[test]
fn json_flag_is_recorded() {
    let ast = parse(b"CMD [\"a\"]\nCMD a\nONBUILD RUN [\"b\"]\nHEALTHCHECK CMD [\"c\"]").unwrap();
    let json: Vec<bool> = ast.children.iter().map(|n| n.json).collect();
    assert_eq!(json, [true, false, false, true]);
    assert!(ast.children[2].inner.as_ref().unwrap().json);
}

#[test]
fn continuation_details() {
    assert_eq!(dump("RUN a \\  \t\n  b"), "(run \"a   b\")");
    assert_eq!(dump("\\\nRUN a"), "(run \"a\")");
    assert_eq!(dump("RUN a\\\\\nRUN b"), "(run \"a\\\\\\\\\")\n(run \"b\")");
    assert_eq!(dump("RUN a \\\r\n# c\r\n  b\r\n"), "(run \"a   b\")");
    assert_eq!(dump("RUN a \\"), "(run \"a\")");
}

#[test]
fn positions() {
    let src = "\n  FROM a\nRUN b \\\n\n  c\n\nCOPY <<X /x\nbody\nX\n";
    let ast = parse(src.as_bytes()).unwrap();
    let lines: Vec<(usize, usize)> = ast
        .children
        .iter()
        .map(|n| (n.start_line, n.end_line))
        .collect();
    assert_eq!(lines, [(2, 2), (3, 5), (7, 9)]);
    let texts: Vec<&str> = ast
        .children
        .iter()
        .map(|n| &src[n.span.start..n.span.end])
        .collect();
    assert_eq!(texts, ["FROM a", "RUN b \\\n\n  c", "COPY <<X /x\nbody\nX"]);
    assert_eq!(ast.children[1].original, "RUN b   c");
    assert_eq!(ast.children[2].heredocs[0].content, "body\n");
    assert_eq!(ast.warnings.len(), 1);
    assert_eq!(
        ast.warnings[0].short,
        "Empty continuation line found in: RUN b   c"
    );
    assert_eq!(line_col(src.as_bytes(), ast.warnings[0].span.start), (4, 1));
}

#[test]
fn onbuild_heredoc_and_inner_position() {
    let src = "ONBUILD RUN <<E\nx\nE\nFROM y";
    let ast = parse(src.as_bytes()).unwrap();
    let node = &ast.children[0];
    assert_eq!(node.heredocs.len(), 1);
    assert_eq!(node.heredocs[0].content, "x\n");
    let inner = node.inner.as_deref().unwrap();
    assert_eq!((inner.start_line, inner.end_line), (1, 3));
    assert_eq!(&src[inner.span.start..inner.span.end], "RUN <<E\nx\nE");
    assert_eq!(inner.original, "RUN <<E");
}

#[test]
fn crlf_heredoc_keeps_raw_lines() {
    let ast = parse(b"RUN <<-EOF\r\n\ta\r\n\tEOF\r\n").unwrap();
    assert_eq!(ast.children[0].heredocs[0].content, "\ta\r\n");
    assert_eq!(chomp_heredoc_content("\ta\n\t\tb\n"), "a\nb\n");
}

#[test]
fn invalid_utf8_never_panics() {
    let src = b"FROM \xff\xfe\nRUN \xc3 \\\n \xe2\x82\nCMD [\"\xff\"]\nENV \xff=\xfe\n";
    let ast = parse(src).unwrap();
    assert_eq!(ast.children.len(), 4);
    assert_eq!(ast.children[0].args, ["\u{fffd}\u{fffd}"]);
}

#[test]
fn large_continuations_are_linear() {
    let mut src = String::from("FROM x\nRUN a \\\n");
    for _ in 0..300_000 {
        src.push_str("  && b \\\n\n");
    }
    src.push_str("  end\n");
    let start = std::time::Instant::now();
    let ast = parse(src.as_bytes()).unwrap();
    assert_eq!(ast.children[1].end_line, 600_003);
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn helpers() {
    assert_eq!(
        split_words("foo bar 'abc xyz'", '\\'),
        ["foo", "bar", "'abc xyz'"]
    );
    let d = parse_heredoc_word("<<-'EOF'").unwrap().unwrap();
    assert_eq!((d.name.as_str(), d.chomp, d.expand), ("EOF", true, false));
    assert!(parse_heredoc_word("<<EOF sh").unwrap().is_none());
    assert_eq!(
        heredocs_from_line("RUN 4<<EOF").unwrap()[0].file_descriptor,
        4
    );
    assert_eq!(
        detect_syntax(b"#!/bin/sh\n# syntax = img // x\n"),
        Some(("img".into(), "img // x".into(), 2))
    );
    assert_eq!(detect_directive("check", b"//check=a"), None);
    assert_eq!(
        parse_directives(b"# escape=`\n# x=y\n# syntax=z\n")
            .unwrap()
            .len(),
        1
    );
    assert_eq!(go_lowercase("İSTANBUL ΣΑΣ"), "istanbul σασ");
}

/// Deterministic pseudo-random Dockerfiles built from tricky fragments: parsing must never
/// panic, and every span must lie inside the input.
#[test]
fn random_inputs_never_panic() {
    #[rustfmt::skip]
    const FRAGMENTS: &[&[u8]] = &[
        b"RUN ", b"COPY ", b"ONBUILD ", b"ENV ", b"LABEL ", b"ARG ", b"HEALTHCHECK ", b"CMD ",
        b"FROM ", b"<<", b"<<-", b"EOF", b"\\", b"`", b"\n", b"\r\n", b"\"", b"'", b"[", b"]",
        b"{", b"}", b"$", b"${", b":-", b"--", b"=", b" ", b"\t", b"#", b"# escape=`\n",
        b"# syntax=x\n", b"\xff", b"\xc3", b"\xe9", "é".as_bytes(), "\u{a0}".as_bytes(), b",",
        b"1", b"\\u", b"d800", b"null", b"\xEF\xBB\xBF", b"\tEOF\n",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = (next() % 40) as usize;
        let mut src = Vec::new();
        for _ in 0..len {
            src.extend_from_slice(FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize]);
        }
        match parse(&src) {
            Ok(ast) => {
                let _ = ast.dump();
                for node in &ast.children {
                    assert!(node.span.start <= node.span.end && node.span.end <= src.len());
                    assert!(node.start_line <= node.end_line);
                }
                for w in &ast.warnings {
                    assert!(w.span.start <= w.span.end && w.span.end <= src.len());
                }
            }
            Err(e) => assert!(
                e.span.start <= e.span.end && e.span.end <= src.len(),
                "{e:?} for {src:?}"
            ),
        }
        let text = String::from_utf8_lossy(&src);
        let _ = split_words(&text, '`');
        let _ = heredocs_from_line(&text);
        let _ = detect_syntax(&src);
    }
}
