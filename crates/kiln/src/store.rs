//! Where the store lives and opening it.

use anyhow::{Context, Result};
use kiln_oci::store::Store;
use std::path::PathBuf;

/// `--root`, else `$KILN_ROOT` (handled by clap), else `/var/lib/kiln` for root and
/// `$XDG_DATA_HOME/kiln` (`~/.local/share/kiln`) for everyone else.
pub fn default_root() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/kiln");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("kiln");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/kiln")
}

/// Opens (creating if needed) the store at `root`.
pub fn open(root: Option<&PathBuf>) -> Result<Store> {
    let root = root.cloned().unwrap_or_else(default_root);
    Store::open(&root).with_context(|| format!("opening the image store at {}", root.display()))
}
