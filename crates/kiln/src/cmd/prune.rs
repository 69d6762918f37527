//! `kiln prune`: delete everything in the store that no image name reaches.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln prune`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Also delete the directories of RUN --mount=type=cache (except those a running build
    /// holds).
    #[arg(long)]
    pub cache_mounts: bool,
}

pub fn run(args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
    let cache_dir = root
        .cloned()
        .unwrap_or_else(crate::store::default_root)
        .join("cache-mounts");
    if args.cache_mounts && cache_dir.is_dir() {
        // Their files may belong to subordinate ids: only the build namespace can delete them.
        kiln_sandbox::userns::ensure_build_namespace()
            .context("entering the build namespace to remove cache mounts")?;
    }
    let has_snapshots = crate::snapshots_gc::prepare(root)?;
    let store = crate::store::open(root)?;
    let report = store.gc(&[])?;
    println!(
        "Deleted {} blobs and {} stale temporary files; reclaimed {}",
        report.removed_blobs.len(),
        report.removed_temp_files,
        crate::images::human_size(report.removed_bytes)
    );
    if has_snapshots {
        let n = crate::snapshots_gc::collect(&store)?;
        println!("Deleted {n} unused layer snapshots");
    }
    if args.cache_mounts {
        let r = kiln_build::run::remove_cache_mounts(&cache_dir)?;
        println!(
            "Deleted {} cache mount directories{}",
            r.removed,
            if r.busy > 0 {
                format!(" ({} in use, kept)", r.busy)
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
