//! `kiln prune`: delete everything in the store that no image name reaches.

use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln prune`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
}
