//! `kiln push`: upload an image to a registry.
//!
//! Blobs the store knows in another repository of the same registry (pulled from there, or
//! pushed there before) are mounted rather than uploaded; the store records those origins
//! itself on every pull and push, so there is nothing for this command to pass along.

use crate::images;
use anyhow::{Context, Result};
use kiln_oci::reference::Reference;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln push`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image in the store, by name or ID.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Where to push (default: the image's own name), e.g. localhost:5000/app:1.
    #[arg(value_name = "DEST")]
    pub dest: Option<String>,
    /// A registry to reach over plain http (loopback registries always are); repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Print only the manifest digest.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
    let store = crate::store::open(root)?;
    let _lock = store.lock_shared()?;
    let img = images::find(&store, &args.image)?;
    let dest = Reference::parse(args.dest.as_deref().unwrap_or(&args.image))?;
    let client = crate::auth::client_for(&args.insecure_registries, &[&dest.domain])?;
    let report = client
        .push(&store, &img.manifest_digest, &dest)
        .with_context(|| format!("pushing {}", dest.familiar()))?;
    if args.quiet {
        println!("{}", report.digest);
    } else {
        println!(
            "{}: pushed ({} blobs uploaded, {}; {} mounted from other repositories, {}; {} \
             already there)\nDigest: {}",
            dest.familiar(),
            report.blobs_uploaded,
            images::human_size(report.bytes_uploaded),
            report.blobs_mounted,
            images::human_size(report.bytes_mounted),
            report.blobs_present,
            report.digest
        );
    }
    Ok(ExitCode::SUCCESS)
}
