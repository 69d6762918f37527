//! Removing snapshots no tagged image needs, for `kiln prune` and `kiln rmi`.
//!
//! Snapshots of a rootless store hold files owned by subordinate ids, which only the build
//! user namespace can delete, so the commands that call this enter it first.

use anyhow::{Context, Result};
use kiln_oci::digest::Digest;
use kiln_oci::store::Store;
use kiln_snapshot::snapshots::{chain_ids, ChainId, Snapshots};
use std::collections::BTreeSet;

/// Enters the build namespace when the store has snapshots (so they can be removed);
/// returns whether there are any.
pub fn prepare(root: Option<&std::path::PathBuf>) -> Result<bool> {
    let dir = root
        .cloned()
        .unwrap_or_else(crate::store::default_root)
        .join("snapshots");
    let any = std::fs::read_dir(&dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if any {
        kiln_sandbox::userns::ensure_build_namespace()
            .context("entering the build namespace to remove snapshots")?;
    }
    Ok(any)
}

/// Removes every snapshot whose chain no tagged image's layers reach; returns how many.
pub fn collect(store: &Store) -> Result<usize> {
    let snapshots = Snapshots::open_detected(store.root()).context("opening the snapshot store")?;
    let mut keep: BTreeSet<ChainId> = BTreeSet::new();
    for (_, desc) in store.tags()? {
        let Ok(m) = Digest::from_oci(desc.digest()) else {
            continue;
        };
        let Ok(manifest) = kiln_oci::image::read_manifest(store, &m) else {
            continue;
        };
        let Ok(c) = Digest::from_oci(manifest.value.config().digest()) else {
            continue;
        };
        let Ok(config) = kiln_oci::image::read_config(store, &c) else {
            continue;
        };
        keep.extend(chain_ids(&config.value.rootfs.diff_ids));
    }
    let mut removed = 0;
    for chain in snapshots.list()? {
        if !keep.contains(&chain) {
            snapshots
                .remove_snapshot(&chain)
                .with_context(|| format!("removing snapshot {chain}"))?;
            removed += 1;
        }
    }
    Ok(removed)
}
