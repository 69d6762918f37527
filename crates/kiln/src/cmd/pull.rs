//! `kiln pull`: fetch an image from its registry into the store.

use anyhow::{Context, Result};
use kiln_dockerfile::stages::Platform;
use kiln_oci::reference::Reference;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln pull`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image: NAME[:TAG] or NAME@DIGEST (`busybox` is docker.io/library/busybox:latest).
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// The platform to pick from a multi-platform image (default: this machine's).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// A registry to reach over plain http (loopback registries always are); repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Print only the manifest digest.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
    let reference = Reference::parse(&args.image)?;
    let p = match &args.platform {
        Some(p) => Platform::parse(p).map_err(|e| anyhow::anyhow!("--platform: {e}"))?,
        None => Platform::host(),
    };
    let platform = kiln_build::registry_platform(&p);
    let store = crate::store::open(root)?;
    let _lock = store.lock_shared()?;
    let mut client = crate::auth::client_for(&args.insecure_registries, &[&reference.domain])?;
    if !args.quiet {
        client = client.with_progress(crate::transfer::display());
    }
    let report = client
        .pull(&store, &reference, &platform)
        .with_context(|| format!("pulling {}", reference.familiar()))?;
    if args.quiet {
        println!("{}", report.digest);
    } else {
        println!(
            "{}: pulled {} ({} new blobs, {})\nDigest: {}",
            reference.familiar(),
            p,
            report.blobs_fetched,
            crate::images::human_size(report.bytes_fetched),
            report.digest
        );
    }
    Ok(ExitCode::SUCCESS)
}
