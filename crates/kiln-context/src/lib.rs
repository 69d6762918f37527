//! The build context of a kiln build: which files a build may see.
//!
//! This crate owns two things:
//!
//! * [`ignore`]: `.dockerignore` files and patterns with the semantics of
//!   `moby/patternmatcher`, the library BuildKit and the docker CLI use.
//!   [`read_ignore_file`] normalises the file text into patterns, and
//!   [`Matcher`] decides whether a context path is excluded (ordered patterns,
//!   `!` re-includes, the last applicable pattern wins, a pattern that matches
//!   a directory excludes everything below it).
//! * [`walk`]: finding the ignore file for a build ([`load_ignore`]:
//!   `<Dockerfile>.dockerignore` beside the Dockerfile beats
//!   `<context>/.dockerignore`) and listing the surviving entries of the
//!   context ([`walk()`], [`Walker`]): depth-first in name order, symlinks
//!   never followed, excluded directories skipped without being read unless a
//!   `!` pattern could re-include something inside them.
//!
//! It does not archive or hash the context; callers get [`Entry`] values with
//! the relative path, kind and metadata of each file.
//!
//! # Example
//!
//! ```
//! use kiln_context::{read_ignore_file, walk, Matcher};
//!
//! let patterns = read_ignore_file(b"# build output\n/target/\n*.log\n!keep.log\n");
//! assert_eq!(patterns, ["target", "*.log", "!keep.log"]);
//!
//! let matcher = Matcher::new(&patterns)?;
//! assert!(matcher.matches("target/debug/kiln")?); // below an excluded directory
//! assert!(matcher.matches("build.log")?);
//! assert!(!matcher.matches("keep.log")?); // re-included by a later `!` pattern
//! assert!(!matcher.matches("src/build.log")?); // patterns are anchored at the root
//!
//! // Walking a context with it.
//! let context = std::env::temp_dir().join(format!("kiln-context-doc-{}", std::process::id()));
//! std::fs::create_dir_all(context.join("target/debug"))?;
//! for file in ["main.rs", "build.log", "keep.log", "target/debug/kiln"] {
//!     std::fs::write(context.join(file), "")?;
//! }
//! let entries = walk(&context, &matcher)?;
//! let names: Vec<&str> = entries.iter().map(|e| e.rel_path.as_str()).collect();
//! assert_eq!(names, ["keep.log", "main.rs"]);
//! std::fs::remove_dir_all(&context)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod ignore;
pub mod walk;

pub use ignore::{read_ignore_file, IgnoreError, Matcher};
pub use walk::{load_ignore, walk, ContextError, Entry, EntryKind, Walker};
