//! Walking a build context: which `.dockerignore` applies, and which files,
//! directories and symlinks a build may see.
//!
//! The walk never follows symlinks (a link to `/etc/passwd` is listed as a
//! symlink, with the link's own metadata), lists entries depth-first with
//! siblings sorted by name, and applies a [`Matcher`] the way BuildKit's
//! `fsutil` does:
//!
//! * an excluded file, symlink or special file is left out;
//! * an excluded directory is not read at all, unless an exclusion (`!`)
//!   pattern could re-include something below it
//!   ([`Matcher::dir_may_have_exceptions`]). Then it is walked, and the
//!   directory itself is listed only if something inside it survives.

use std::collections::VecDeque;
use std::fs::{self, Metadata};
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::ignore::{read_ignore_file, IgnoreError, Matcher};

/// Why a context could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Reading a file or directory of the context failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path on disk that could not be read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The context root is not a directory.
    #[error("build context {path} is not a directory")]
    NotADirectory {
        /// The context path as given.
        path: PathBuf,
    },
    /// A `.dockerignore` pattern could not be evaluated.
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
}

/// What kind of file an [`Entry`] is (symlinks are never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (the link itself, not its target).
    Symlink,
    /// Anything else: FIFO, socket, device.
    Other,
}

impl EntryKind {
    fn of(file_type: fs::FileType) -> EntryKind {
        if file_type.is_symlink() {
            EntryKind::Symlink
        } else if file_type.is_dir() {
            EntryKind::Dir
        } else if file_type.is_file() {
            EntryKind::File
        } else {
            EntryKind::Other
        }
    }
}

/// One file, directory or symlink of the context that survived the
/// `.dockerignore` patterns.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path relative to the context root, `/`-separated, never empty or `.`
    /// (e.g. `src/main.rs`). Non-UTF-8 names are converted lossily; use
    /// [`Entry::path`] to open the file.
    pub rel_path: String,
    /// The full path on disk (the context path joined with the relative path).
    pub path: PathBuf,
    /// The kind of file.
    pub kind: EntryKind,
    /// `symlink_metadata` of the entry: for a symlink, the link's own.
    pub metadata: Metadata,
}

/// Finds the ignore file for a build and reads its patterns (with
/// [`read_ignore_file`]).
///
/// When `dockerfile` is given and `<dockerfile>.dockerignore` exists next to
/// it (e.g. `sub/Dockerfile.dev.dockerignore` for `sub/Dockerfile.dev`), that
/// file wins; otherwise `<context>/.dockerignore` is used; otherwise there are
/// no patterns. `dockerfile` is used as given, so a relative path is relative
/// to the current directory, like any path. Returns the patterns and the file
/// they came from (`None` when there was none).
///
/// A missing file is not an error; an unreadable one is.
pub fn load_ignore(
    context: &Path,
    dockerfile: Option<&Path>,
) -> Result<(Vec<String>, Option<PathBuf>), ContextError> {
    let mut candidates = Vec::with_capacity(2);
    if let Some(dockerfile) = dockerfile {
        if dockerfile.file_name().is_some() {
            let mut name = dockerfile.as_os_str().to_owned();
            name.push(".dockerignore");
            candidates.push(PathBuf::from(name));
        }
    }
    candidates.push(context.join(".dockerignore"));
    for candidate in candidates {
        match fs::read(&candidate) {
            Ok(bytes) => return Ok((read_ignore_file(&bytes), Some(candidate))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(ContextError::Io {
                    path: candidate,
                    source,
                })
            }
        }
    }
    Ok((Vec::new(), None))
}

/// Lists the entries of `context` that `matcher` does not exclude; see the
/// [module docs](self). Stops at the first error.
///
/// The context root itself is not listed.
pub fn walk(context: &Path, matcher: &Matcher) -> Result<Vec<Entry>, ContextError> {
    Walker::new(context, matcher).collect()
}

/// An iterator over the surviving entries of a context; [`walk`] collects it.
///
/// After an error the iterator carries on with the next entry it can read
/// (an unreadable directory is skipped).
pub struct Walker<'m> {
    root: PathBuf,
    matcher: &'m Matcher,
    inner: walkdir::IntoIter,
    /// Excluded directories being walked for possible re-includes, with their
    /// depth: listed only once something inside them is.
    pending: Vec<(usize, Entry)>,
    ready: VecDeque<Entry>,
}

impl<'m> Walker<'m> {
    /// Starts a walk of `context` (a directory, or a symlink to one).
    pub fn new(context: &Path, matcher: &'m Matcher) -> Walker<'m> {
        let inner = walkdir::WalkDir::new(context)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter();
        Walker {
            root: context.to_path_buf(),
            matcher,
            inner,
            pending: Vec::new(),
            ready: VecDeque::new(),
        }
    }

    fn io_error(&self, err: walkdir::Error) -> ContextError {
        let path = err
            .path()
            .map_or_else(|| self.root.clone(), Path::to_path_buf);
        let source = err
            .into_io_error()
            .unwrap_or_else(|| io::Error::other("file system loop"));
        ContextError::Io { path, source }
    }

    /// Handles one walkdir entry; `Ok` with nothing new in `ready` means
    /// "nothing to list".
    fn visit(&mut self, dent: walkdir::DirEntry) -> Result<(), ContextError> {
        let depth = dent.depth();
        if depth == 0 {
            // With `follow_root_links` (the default) a symlinked root is
            // followed, so check what it points to.
            let meta = fs::metadata(dent.path()).map_err(|source| ContextError::Io {
                path: dent.path().to_path_buf(),
                source,
            })?;
            if !meta.is_dir() {
                return Err(ContextError::NotADirectory {
                    path: self.root.clone(),
                });
            }
            return Ok(());
        }
        // Directories on the pending stack that are not ancestors of this
        // entry ended without anything surviving inside them.
        while self.pending.last().is_some_and(|(d, _)| *d >= depth) {
            self.pending.pop();
        }
        let rel_path = rel_path(&self.root, dent.path());
        let is_dir = dent.file_type().is_dir();
        let excluded = match self.matcher.matches(&rel_path) {
            Ok(excluded) => excluded,
            Err(err) => {
                if is_dir {
                    self.inner.skip_current_dir();
                }
                return Err(err.into());
            }
        };
        if excluded && !(is_dir && self.matcher.dir_may_have_exceptions(&rel_path)) {
            if is_dir {
                // Discards the directory's listing (and any error reading it)
                // before anything inside is looked at.
                self.inner.skip_current_dir();
            }
            return Ok(());
        }
        let metadata = dent.metadata().map_err(|err| self.io_error(err))?;
        let entry = Entry {
            rel_path,
            path: dent.path().to_path_buf(),
            kind: EntryKind::of(dent.file_type()),
            metadata,
        };
        if excluded {
            self.pending.push((depth, entry));
        } else {
            self.ready
                .extend(self.pending.drain(..).map(|(_, parent)| parent));
            self.ready.push_back(entry);
        }
        Ok(())
    }
}

impl Iterator for Walker<'_> {
    type Item = Result<Entry, ContextError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.ready.pop_front() {
                return Some(Ok(entry));
            }
            let dent = match self.inner.next()? {
                Ok(dent) => dent,
                Err(err) => return Some(Err(self.io_error(err))),
            };
            if let Err(err) = self.visit(dent) {
                return Some(Err(err));
            }
        }
    }
}

/// `path` relative to `root`, `/`-separated.
fn rel_path(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut out = String::new();
    for component in rel.components() {
        if let Component::Normal(name) = component {
            if !out.is_empty() {
                out.push('/');
            }
            out.push_str(&name.to_string_lossy());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scratch directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "kiln-context-unit-{}-{}-{}",
                std::process::id(),
                name,
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self, rel: &str, text: &str) {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }

        fn dir(&self, rel: &str) {
            fs::create_dir_all(self.0.join(rel)).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            make_readable(&self.0);
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn make_readable(dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
            if entry.file_type().is_dir() {
                let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o755));
            }
        }
    }

    fn listing(context: &Path, patterns: &[&str]) -> Vec<String> {
        let matcher = Matcher::new(patterns).unwrap();
        walk(context, &matcher)
            .unwrap()
            .into_iter()
            .map(|e| format!("{:?} {}", e.kind, e.rel_path))
            .collect()
    }

    #[test]
    fn dockerfile_specific_ignore_file_wins() {
        let t = TempDir::new("load");
        let ctx = &t.0;
        // Nothing at all.
        assert_eq!(load_ignore(ctx, None).unwrap(), (vec![], None));
        assert_eq!(
            load_ignore(ctx, Some(&ctx.join("Dockerfile"))).unwrap(),
            (vec![], None)
        );

        t.file(".dockerignore", "root\n");
        t.file("sub/Dockerfile.dev", "FROM scratch\n");
        t.file(
            "sub/Dockerfile.dev.dockerignore",
            "# specific\n/specific/\n",
        );
        t.file("Dockerfile", "FROM scratch\n");

        // Without a Dockerfile, or when it has no own file: the context's.
        let root = (vec!["root".to_owned()], Some(ctx.join(".dockerignore")));
        assert_eq!(load_ignore(ctx, None).unwrap(), root);
        assert_eq!(
            load_ignore(ctx, Some(&ctx.join("Dockerfile"))).unwrap(),
            root
        );

        // The Dockerfile-specific file beside it wins.
        let dockerfile = ctx.join("sub/Dockerfile.dev");
        assert_eq!(
            load_ignore(ctx, Some(&dockerfile)).unwrap(),
            (
                vec!["specific".to_owned()],
                Some(ctx.join("sub/Dockerfile.dev.dockerignore"))
            )
        );

        t.file("Dockerfile.dockerignore", "!\n");
        assert_eq!(
            load_ignore(ctx, Some(&ctx.join("Dockerfile"))).unwrap(),
            (
                vec!["!".to_owned()],
                Some(ctx.join("Dockerfile.dockerignore"))
            )
        );

        // Only the context's file, no Dockerfile-specific one.
        fs::remove_file(ctx.join(".dockerignore")).unwrap();
        assert_eq!(load_ignore(ctx, Some(&dockerfile)).unwrap().0, ["specific"]);
        fs::remove_file(ctx.join("sub/Dockerfile.dev.dockerignore")).unwrap();
        assert_eq!(load_ignore(ctx, Some(&dockerfile)).unwrap(), (vec![], None));
    }

    #[test]
    fn unreadable_ignore_file_is_an_error_with_its_path() {
        let t = TempDir::new("loaderr");
        // A directory where the file should be cannot be read as a file.
        t.dir(".dockerignore");
        let err = load_ignore(&t.0, None).unwrap_err();
        let path = t.0.join(".dockerignore");
        assert!(matches!(&err, ContextError::Io { path: p, .. } if *p == path));
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read {}: ", path.display())),
            "{err}"
        );
    }

    #[test]
    fn symlinks_are_listed_not_followed() {
        use std::os::unix::fs::symlink;
        let t = TempDir::new("symlink");
        t.file("real/inner.txt", "x");
        symlink("/etc/passwd", t.0.join("passwd")).unwrap();
        symlink("real", t.0.join("dirlink")).unwrap();
        symlink("/nonexistent/target", t.0.join("dangling")).unwrap();

        let entries = walk(&t.0, &Matcher::default()).unwrap();
        let names: Vec<_> = entries
            .iter()
            .map(|e| format!("{:?} {}", e.kind, e.rel_path))
            .collect();
        assert_eq!(
            names,
            [
                "Symlink dangling",
                "Symlink dirlink",
                "Symlink passwd",
                "Dir real",
                "File real/inner.txt"
            ]
        );
        let passwd = entries.iter().find(|e| e.rel_path == "passwd").unwrap();
        assert!(passwd.metadata.file_type().is_symlink());
        assert_eq!(passwd.path, t.0.join("passwd"));
        // The link's own size: the length of the target string.
        assert_eq!(passwd.metadata.len(), "/etc/passwd".len() as u64);
    }

    #[test]
    fn excluded_entries_and_lazy_parent_dirs() {
        let t = TempDir::new("lazy");
        t.file("a/keep/x.js", "");
        t.file("a/other.js", "");
        t.file("b/y", "");
        t.dir("c/empty");
        t.file("top.log", "");
        t.file("z", "");
        assert_eq!(
            listing(&t.0, &["a", "!a/keep", "*.log", "c/*"]),
            [
                "Dir a",
                "Dir a/keep",
                "File a/keep/x.js",
                "Dir b",
                "File b/y",
                "Dir c",
                "File z"
            ]
        );
        // The exception matches nothing that exists: the excluded dir is not listed.
        assert_eq!(
            listing(&t.0, &["a", "!a/nothing", "b", "c", "top.log"]),
            ["File z"]
        );
        // Depth-first, siblings by name.
        assert_eq!(
            listing(&t.0, &["**/*.js", "!**/x.js"]),
            [
                "Dir a",
                "Dir a/keep",
                "File a/keep/x.js",
                "Dir b",
                "File b/y",
                "Dir c",
                "Dir c/empty",
                "File top.log",
                "File z"
            ]
        );
    }

    /// Makes `<base>/<rel>/...` a chain of directories whose deepest path is
    /// longer than PATH_MAX, so reading it fails even for root. Built by
    /// renaming shorter chains into each other.
    fn too_deep_dir(base: &Path, rel: &str) {
        let seg = "d".repeat(200);
        let chain = |top: &Path| {
            let mut p = top.to_path_buf();
            for _ in 0..9 {
                p.push(&seg);
            }
            fs::create_dir_all(&p).unwrap();
            p
        };
        let mut leaf = chain(&base.join(rel));
        for i in 0..2 {
            let scratch = base.join(format!("scratch{i}"));
            chain(&scratch);
            let moved = leaf.join(format!("x{i}"));
            fs::rename(scratch.join(&seg), &moved).unwrap();
            fs::remove_dir(&scratch).unwrap();
            leaf = moved;
            for _ in 0..8 {
                leaf.push(&seg);
            }
        }
        assert!(leaf.as_os_str().len() > 4096);
    }

    #[test]
    fn excluded_dirs_without_exceptions_are_not_read() {
        use std::os::unix::fs::PermissionsExt;
        let t = TempDir::new("noread");
        t.file("keep.txt", "");
        // Unreadable as a normal user (root can still read it) ...
        t.file("excluded/locked/secret", "");
        fs::set_permissions(
            t.0.join("excluded/locked"),
            fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        // ... and unreadable for everyone, because its path is too long.
        too_deep_dir(&t.0, "excluded/deep");

        assert_eq!(listing(&t.0, &["excluded", "!keep.txt"]), ["File keep.txt"]);
        assert_eq!(
            listing(&t.0, &["excluded/", "!other/**"]),
            ["File keep.txt"]
        );

        // When the walk has to go in, the unreadable directory is an error
        // that names the path.
        for patterns in [&[][..], &["excluded", "!**/keep"][..]] {
            let matcher = Matcher::new(patterns).unwrap();
            let err = walk(&t.0, &matcher).unwrap_err();
            let ContextError::Io { path, .. } = &err else {
                panic!("unexpected error {err}");
            };
            assert!(path.starts_with(t.0.join("excluded")), "{err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("cannot read {}", t.0.display())),
                "{err}"
            );
        }
    }

    #[test]
    fn context_errors() {
        let t = TempDir::new("ctxerr");
        t.file("file", "");
        let missing = t.0.join("missing");
        let err = walk(&missing, &Matcher::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read {}: ", missing.display())),
            "{err}"
        );
        let err = walk(&t.0.join("file"), &Matcher::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "build context {} is not a directory",
                t.0.join("file").display()
            )
        );
        // A broken pattern is reported by the walk, not a panic.
        let matcher = Matcher::new(&["[z-a]"]).unwrap();
        let err = walk(&t.0, &matcher).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid .dockerignore pattern \"[z-a]\": invalid character class range \"z-a\" ('z' comes after 'a')"
        );
    }

    #[test]
    fn symlinked_context_root_is_followed() {
        use std::os::unix::fs::symlink;
        let t = TempDir::new("rootlink");
        t.file("ctx/a", "");
        symlink("ctx", t.0.join("link")).unwrap();
        assert_eq!(listing(&t.0.join("link"), &[]), ["File a"]);
    }
}
