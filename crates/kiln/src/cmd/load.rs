//! `kiln load`: bring images in from a docker or OCI tarball.

use anyhow::{Context, Result};
use kiln_oci::archive;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln load`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Reads `docker save` output (old and new layouts), `podman save` in both\n\
formats, OCI archives and kiln's own tarballs; gzip-compressed archives too."
)]
pub struct Args {
    /// Read from this file instead of standard input.
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,
}

pub fn run(args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
    let store = crate::store::open(root)?;
    let loaded = match &args.input {
        Some(p) if p.as_os_str() != "-" => {
            let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            archive::load_archive(&store, std::io::BufReader::new(f))
        }
        _ => archive::load_archive(&store, std::io::stdin().lock()),
    }
    .context("loading the archive")?;
    for img in &loaded {
        if img.names.is_empty() {
            // docker prints the image ID, which is the config digest.
            let id = kiln_oci::digest::Digest::from_oci(img.manifest.digest())
                .ok()
                .and_then(|m| kiln_oci::image::read_manifest(&store, &m).ok())
                .map(|m| m.value.config().digest().to_string())
                .unwrap_or_else(|| img.manifest.digest().to_string());
            println!("Loaded image ID: {id}");
        }
        for n in &img.names {
            let short = kiln_build::reference::Reference::parse(n)
                .map(|r| r.familiar())
                .unwrap_or_else(|_| n.clone());
            println!("Loaded image: {short}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
