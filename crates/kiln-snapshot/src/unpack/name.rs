//! Entry names: from what a tar header says to the components the unpacker resolves.
//!
//! This is the lexical half of containment. Names are cleaned the way Docker cleans them
//! (`a/./b//c` → `a/b/c`, `a/../b` → `b`) and refused if they climb above the root, so no
//! `..` ever reaches the kernel. The other half, symlinks met on the way, is left to
//! `openat2(RESOLVE_IN_ROOT)`, because only the kernel can resolve them without a race.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_oci::layer::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX};

/// AUFS keeps its own bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`) under this prefix; old
/// Docker layers may still carry it. It is never image content.
const AUFS_META_PREFIX: &str = ".wh..wh.";

/// Why a name cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameError {
    /// The name holds a NUL byte, which no path syscall can take.
    Nul,
    /// After cleaning, the name climbs above the root.
    Escapes,
}

/// A path inside the root: no leading `/`, no empty, `.` or `..` components. Empty means the
/// root itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CleanPath(PathBuf);

impl CleanPath {
    /// Cleans a layer path. Leading `/` is dropped (layer paths are relative to the root
    /// whatever they say); a `..` that would climb above the root is an error.
    pub(crate) fn parse(raw: &Path) -> Result<CleanPath, NameError> {
        let bytes = raw.as_os_str().as_bytes();
        if bytes.contains(&0) {
            return Err(NameError::Nul);
        }
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in bytes.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    if parts.pop().is_none() {
                        return Err(NameError::Escapes);
                    }
                }
                _ => parts.push(part),
            }
        }
        Ok(CleanPath(PathBuf::from(OsStr::from_bytes(
            &parts.join(&b'/'),
        ))))
    }

    /// The root directory itself.
    pub(crate) fn root() -> CleanPath {
        CleanPath(PathBuf::new())
    }

    /// The path as given to `openat2` relative to the root fd.
    pub(crate) fn as_path(&self) -> &Path {
        &self.0
    }

    /// Parent directory and final name; `None` for the root.
    pub(crate) fn split(&self) -> Option<(&Path, &OsStr)> {
        let name = self.0.file_name()?;
        Some((self.0.parent().unwrap_or(Path::new("")), name))
    }

    /// Each component, in order.
    fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0
            .as_os_str()
            .as_bytes()
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
    }
}

/// What an entry asks for, judged by its name alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Create or replace the entry.
    Write,
    /// `.wh.NAME`: remove `NAME` from the directory `dir`.
    Whiteout {
        /// The directory holding the whiteout.
        dir: PathBuf,
        /// The name it hides.
        name: OsString,
    },
    /// `.wh..wh..opq`: hide what lower layers have in `dir`.
    Opaque {
        /// The opaque directory.
        dir: PathBuf,
    },
    /// AUFS metadata; ignored as Docker ignores it.
    AufsMeta,
    /// `.wh.` with nothing usable after it (`.wh.`, `.wh..`, `.wh...`).
    BadWhiteout,
}

/// Classifies a cleaned path.
pub(crate) fn action(path: &CleanPath) -> Action {
    let Some((dir, name)) = path.split() else {
        return Action::Write;
    };
    let name = name.as_bytes();
    if name == OPAQUE_WHITEOUT.as_bytes() {
        return Action::Opaque {
            dir: dir.to_path_buf(),
        };
    }
    if path
        .components()
        .any(|c| c.starts_with(AUFS_META_PREFIX.as_bytes()))
    {
        return Action::AufsMeta;
    }
    let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) else {
        return Action::Write;
    };
    if matches!(hidden, b"" | b"." | b"..") {
        return Action::BadWhiteout;
    }
    Action::Whiteout {
        dir: dir.to_path_buf(),
        name: OsStr::from_bytes(hidden).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> Result<String, NameError> {
        CleanPath::parse(Path::new(s)).map(|p| p.as_path().to_string_lossy().into_owned())
    }

    #[test]
    fn cleaning_matches_docker() {
        assert_eq!(clean("a/b/c"), Ok("a/b/c".into()));
        assert_eq!(clean("./a//b/./c/"), Ok("a/b/c".into()));
        assert_eq!(clean("/abs"), Ok("abs".into()));
        assert_eq!(clean("a/../b"), Ok("b".into()));
        assert_eq!(clean("a/b/../../c"), Ok("c".into()));
        assert_eq!(clean("a/.."), Ok("".into()));
        assert_eq!(clean("."), Ok("".into()));
        assert_eq!(clean(""), Ok("".into()));
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for bad in [
            "..",
            "../escape",
            "a/../../b",
            "/../x",
            "./../x",
            "a/b/../../../c",
        ] {
            assert_eq!(clean(bad), Err(NameError::Escapes), "{bad}");
        }
    }

    #[test]
    fn nul_is_refused() {
        let p = PathBuf::from(OsStr::from_bytes(b"a\0b"));
        assert_eq!(CleanPath::parse(&p), Err(NameError::Nul));
    }

    #[test]
    fn split_gives_parent_and_name() {
        let p = CleanPath::parse(Path::new("var/run/foo.pid")).unwrap();
        assert_eq!(
            p.split(),
            Some((Path::new("var/run"), OsStr::new("foo.pid")))
        );
        let p = CleanPath::parse(Path::new("top")).unwrap();
        assert_eq!(p.split(), Some((Path::new(""), OsStr::new("top"))));
        assert_eq!(CleanPath::parse(Path::new("/")).unwrap().split(), None);
    }

    fn act(s: &str) -> Action {
        action(&CleanPath::parse(Path::new(s)).unwrap())
    }

    #[test]
    fn whiteouts_are_recognised() {
        assert_eq!(act("etc/passwd"), Action::Write);
        assert_eq!(act(""), Action::Write);
        assert_eq!(
            act("etc/.wh.passwd"),
            Action::Whiteout {
                dir: "etc".into(),
                name: "passwd".into()
            }
        );
        assert_eq!(
            act(".wh.top"),
            Action::Whiteout {
                dir: "".into(),
                name: "top".into()
            }
        );
        assert_eq!(
            act("var/cache/.wh..wh..opq"),
            Action::Opaque {
                dir: "var/cache".into()
            }
        );
        assert_eq!(act(".wh..wh..opq"), Action::Opaque { dir: "".into() });
    }

    #[test]
    fn whiteouts_cannot_name_dot_or_dotdot() {
        assert_eq!(act("a/.wh."), Action::BadWhiteout);
        assert_eq!(act("a/.wh.."), Action::BadWhiteout);
        assert_eq!(act("a/.wh..."), Action::BadWhiteout);
        // ".wh...." hides a file named "...", an ordinary name to the kernel.
        assert!(matches!(act("a/.wh...."), Action::Whiteout { .. }));
    }

    #[test]
    fn aufs_metadata_is_skipped() {
        assert_eq!(act(".wh..wh.plnk"), Action::AufsMeta);
        assert_eq!(act(".wh..wh.plnk/123.456"), Action::AufsMeta);
        assert_eq!(act("a/.wh..wh.aufs"), Action::AufsMeta);
    }
}
