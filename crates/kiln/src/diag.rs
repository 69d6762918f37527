//! Rendering problems in a Dockerfile as `file:line:col` with the source line and a caret.

use kiln_dockerfile::error::line_col;
use kiln_dockerfile::Span;
use std::fmt::Write;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding to show.
pub struct Diagnostic<'a> {
    pub severity: Severity,
    pub message: &'a str,
    pub span: Option<Span>,
    pub help: Option<&'a str>,
}

/// Renders a diagnostic like:
///
/// ```text
/// error: unknown instruction: RUNN
///  --> Dockerfile:5:1
///   |
/// 5 | RUNN make
///   | ^^^^
///   = help: did you mean RUN?
/// ```
pub fn render(d: &Diagnostic, file: &str, src: &[u8]) -> String {
    let label = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut out = format!("{label}: {}\n", d.message);
    match d.span {
        Some(span) => {
            let (line, col) = line_col(src, span.start);
            let pad = " ".repeat(line.to_string().len());
            let at = span.start.min(src.len());
            let line_start = src[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            let line_end = src[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(src.len(), |p| at + p);
            let text = String::from_utf8_lossy(&src[line_start..line_end]);
            // Keep tabs so the caret lines up under tab-indented text.
            let indent: String = String::from_utf8_lossy(&src[line_start..at])
                .chars()
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let covered = &src[at..span.end.clamp(at, line_end)];
            let width = String::from_utf8_lossy(covered)
                .trim_end_matches('\r')
                .chars()
                .count();
            let _ = writeln!(out, "{pad}--> {file}:{line}:{col}");
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{line} | {}", text.trim_end());
            let _ = writeln!(out, "{pad} | {indent}{}", "^".repeat(width.max(1)));
        }
        None => {
            let _ = writeln!(out, " --> {file}");
        }
    }
    if let Some(h) = d.help {
        let pad = " ".repeat(
            d.span
                .map_or(1, |s| line_col(src, s.start).0.to_string().len()),
        );
        let _ = writeln!(out, "{pad} = help: {h}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_under_the_span() {
        let src = b"FROM a\nCOPY --chmod=999 a b\n";
        let d = Diagnostic {
            severity: Severity::Error,
            message: "bad chmod",
            span: Some(Span::new(12, 23)),
            help: Some("use 755"),
        };
        assert_eq!(
            render(&d, "Dockerfile", src),
            "error: bad chmod\n --> Dockerfile:2:6\n  |\n2 | COPY --chmod=999 a b\n  |      ^^^^^^^^^^^\n  = help: use 755\n"
        );
    }

    #[test]
    fn span_past_line_end_and_multibyte() {
        let src = "FROM a\nRUN ünïcode \\\n  more\n".as_bytes();
        let start = src.windows(3).position(|w| w == b"RUN").unwrap();
        let d = Diagnostic {
            severity: Severity::Warning,
            message: "w",
            span: Some(Span::new(start, src.len())),
            help: None,
        };
        let out = render(&d, "df", src);
        assert!(out.contains("2 | RUN ünïcode \\\n"), "{out}");
        assert!(out.contains("  | ^^^^^^^^^^^^^\n"), "{out}");
    }

    #[test]
    fn empty_source_and_eof_span() {
        let d = Diagnostic {
            severity: Severity::Error,
            message: "empty",
            span: Some(Span::new(0, 0)),
            help: None,
        };
        let out = render(&d, "Dockerfile", b"");
        assert!(
            out.starts_with("error: empty\n --> Dockerfile:1:1\n"),
            "{out}"
        );
    }
}
