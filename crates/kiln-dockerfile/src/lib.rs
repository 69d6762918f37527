//! The Dockerfile front end of kiln.
//!
//! It owns everything between the bytes of a Dockerfile and a list of build stages:
//!
//! * [`parser`]: BuildKit-compatible line joining, parser directives, heredocs and the raw
//!   instruction tree ([`ast`]), whose [`ast::Ast::dump`] matches BuildKit's test dumps;
//! * [`shell`]: BuildKit's shell-word lexer (`$v`, `${v:-w}`, `${v#p}`, quoting, word splitting);
//! * [`instructions`]: typed instructions with validated flags;
//! * [`stages`]: stages, ARG/ENV scoping, `--target` selection and the stage dependency graph.
//!
//! It knows nothing about files, images or the CLI; every error carries a byte span into the
//! source so the caller can render `file:line:col` with a caret.
//!
//! ```
//! let ast = kiln_dockerfile::parser::parse(b"FROM busybox\nRUN echo hi\n").unwrap();
//! assert_eq!(ast.dump(), "(from \"busybox\")\n(run \"echo hi\")");
//! ```
#![deny(missing_docs)]

pub mod ast;
pub mod error;
pub mod instructions;
pub mod parser;
pub mod shell;
pub mod stages;

pub use error::{Error, Span};
