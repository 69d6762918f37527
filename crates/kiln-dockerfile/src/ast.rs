//! The raw instruction tree, as BuildKit's parser layer produces it.
//!
//! This layer only joins lines and splits each instruction into flags and argument words; it
//! does not know which instructions exist or which flags they take (see
//! [`crate::instructions`] for that).

use crate::error::Span;
use serde::Serialize;

/// A heredoc attached to an instruction (`RUN <<EOF`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The file descriptor before `<<` (`3<<EOF`), 0 when absent.
    pub file_descriptor: u32,
    /// False when any part of the delimiter was quoted: the body is then not expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped (when matching the terminator here, from the body later).
    pub chomp: bool,
    /// The raw body, each line with its final `\n`.
    pub content: String,
}

/// One instruction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The instruction keyword, lowercased (`from`, `run`, ... or an unknown word).
    pub keyword: String,
    /// Leading `--flag[=value]` words, with quotes and escape characters removed.
    pub flags: Vec<String>,
    /// The argument nodes, following the per-instruction rules of BuildKit's parser.
    pub args: Vec<String>,
    /// True when the arguments came from a JSON array (exec form).
    pub json: bool,
    /// For `ONBUILD`: the wrapped instruction.
    pub inner: Option<Box<Node>>,
    /// Heredocs consumed after this instruction, in order.
    pub heredocs: Vec<Heredoc>,
    /// The joined logical line as written (keyword and arguments, continuations removed).
    pub original: String,
    /// First physical line (1-based).
    pub start_line: usize,
    /// Last physical line consumed, including skipped lines inside a continuation and heredoc
    /// bodies.
    pub end_line: usize,
    /// The bytes of the instruction in the original source, first line to last line.
    pub span: Span,
}

/// A parser directive at the top of the file (`# escape=\``).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Directive {
    /// Lowercased name: `syntax`, `escape` or `check`.
    pub name: String,
    /// Trimmed value.
    pub value: String,
    /// 1-based line.
    pub line: usize,
    /// The directive's bytes in the source.
    pub span: Span,
}

/// A non-fatal finding of the parser (for example an empty continuation line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// One-line summary.
    pub short: String,
    /// Longer explanation.
    pub detail: String,
    /// Where it was found.
    pub span: Span,
}

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ast {
    /// Top-level instructions in source order.
    pub children: Vec<Node>,
    /// Parser directives found at the top.
    pub directives: Vec<Directive>,
    /// The escape character in effect (`\` or `` ` ``).
    pub escape: char,
    /// Warnings found while parsing.
    pub warnings: Vec<Warning>,
}
