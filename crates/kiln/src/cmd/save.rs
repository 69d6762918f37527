//! `kiln save`: write images to a tarball that docker, podman and skopeo load.

use crate::images;
use crate::output::{self, parse_compression};
use anyhow::{bail, Result};
use kiln_oci::archive::{self, ExportImage};
use kiln_oci::Compression;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln save`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "The default docker format is also an OCI image layout, so one file serves\n\
`docker load`, `podman load`, and skopeo's docker-archive: and oci-archive: transports."
)]
pub struct Args {
    /// Images by name or ID.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
    /// Write to this file instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// docker (manifest.json + OCI layout) or oci (OCI layout only).
    #[arg(long, default_value = "docker", value_parser = ["docker", "oci"])]
    pub format: String,
    /// Layer compression: none, gzip[:LEVEL], zstd[:LEVEL] (default none for docker, gzip for oci).
    #[arg(long, value_name = "ALGO")]
    pub compression: Option<String>,
}

pub fn run(args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
    let dest = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
    if dest.as_os_str() == "-" && std::io::stdout().is_terminal() {
        bail!(
            "refusing to write an image tarball to a terminal; use -o FILE or redirect the output"
        );
    }
    let store = crate::store::open(root)?;
    let mut list = Vec::new();
    for what in &args.images {
        let img = images::find(&store, what)?;
        // Saving by name keeps just that name; by ID, every name the image has.
        let names = match kiln_build::reference::Reference::parse(what) {
            Ok(r) if img.tags.contains(&r.to_string()) => vec![r.to_string()],
            _ => img.tags.clone(),
        };
        list.push(ExportImage {
            manifest: img.manifest_digest.clone(),
            names,
        });
    }
    let compression = args
        .compression
        .as_deref()
        .map(parse_compression)
        .transpose()?;
    if args.format == "oci" {
        output::write_tar(
            &dest,
            &store,
            &list,
            compression.unwrap_or(Compression::GZIP),
            archive::write_oci_archive,
        )?;
    } else {
        output::write_tar(
            &dest,
            &store,
            &list,
            compression.unwrap_or(Compression::None),
            archive::write_docker_archive,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
