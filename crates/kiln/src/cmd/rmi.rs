//! `kiln rmi`: remove image names, and the image data no name reaches any more.

use crate::images;
use anyhow::{bail, Result};
use kiln_build::reference::Reference;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln rmi`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Images by name or ID.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
    /// Remove every name of an image given by ID.
    #[arg(short, long)]
    pub force: bool,
}

pub fn run(args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
    let has_snapshots = crate::snapshots_gc::prepare(root)?;
    let store = crate::store::open(root)?;
    for what in &args.images {
        let by_name = Reference::parse(what)
            .ok()
            .map(|r| r.to_string())
            .filter(|n| store.resolve(n).ok().flatten().is_some());
        match by_name {
            Some(name) => {
                store.remove_tag(&name)?;
                println!("Untagged: {}", Reference::parse(&name)?.familiar());
            }
            None => {
                let img = images::find(&store, what)?;
                if img.tags.len() > 1 && !args.force {
                    bail!(
                        "image {what} has {} names ({}); remove them one by one or use -f",
                        img.tags.len(),
                        img.repo_tags().join(", ")
                    );
                }
                for t in &img.tags {
                    store.remove_tag(t)?;
                    println!("Untagged: {}", Reference::parse(t)?.familiar());
                }
                println!("Deleted: {}", img.id);
            }
        }
    }
    let report = store.gc(&[])?;
    if has_snapshots {
        crate::snapshots_gc::collect(&store)?;
    }
    if !report.removed_blobs.is_empty() {
        println!(
            "Freed {} in {} blobs",
            crate::images::human_size(report.removed_bytes),
            report.removed_blobs.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
