//! `kiln-snapshot`: the root filesystems kiln builds on.
//!
//! This crate owns turning image layers into directories and back:
//!
//! * [`unpack`] applies OCI layer tars (whiteouts, hard links, devices, xattrs, ownership) onto
//!   a root directory with every path resolved inside that root by the kernel
//!   (`openat2(RESOLVE_IN_ROOT)`), so a hostile layer cannot write, link or delete outside it;
//! * [`snapshots`] keeps extracted layers by chain ID and prepares each build step's root: an
//!   overlay mount ([`overlay`], `userxattr` when rootless) or, where overlay cannot work, a copy;
//! * [`diff`] turns a step's overlay upper directory (or, in copy mode, the changed tree) back
//!   into a layer, at a cost that follows the change.
//!
//! It runs no containers and prints nothing: results and failures are returned as values.
//!
//! ```
//! use kiln_oci::{LayerWriter, TarEntry};
//! use kiln_snapshot::unpack::{unpack_layer, UnpackOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A layer with /etc/hostname and the usual /var/run -> /run symlink.
//! let mut w = LayerWriter::new(Vec::new());
//! w.append(&TarEntry::dir("etc"), None)?;
//! w.append(&TarEntry::file("etc/hostname", 5), Some(&mut &b"kiln\n"[..]))?;
//! w.append(&TarEntry::dir("run"), None)?;
//! w.append(&TarEntry::dir("var"), None)?;
//! w.append(&TarEntry::symlink("var/run", "/run"), None)?;
//! w.append(&TarEntry::file("var/run/x.pid", 0), Some(&mut &b""[..]))?;
//! w.finish()?;
//!
//! let root = tempfile::tempdir()?;
//! let stats = unpack_layer(root.path(), &w.into_inner()[..], &UnpackOptions::default())?;
//! assert_eq!(std::fs::read(root.path().join("etc/hostname"))?, b"kiln\n");
//! // The absolute symlink resolved inside the root, not on the host.
//! assert!(root.path().join("run/x.pid").exists());
//! assert_eq!(stats.entries, 6);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod unpack;

pub use unpack::{unpack_image, unpack_layer, UnpackError, UnpackOptions, UnpackStats};
pub mod diff;
pub mod overlay;
pub mod snapshots;
