//! `kiln push`: upload an image to a registry.
//!
//! Blobs the store knows in another repository of the same registry (pulled from there, or
//! pushed there before) are mounted rather than uploaded; the store records those origins
//! itself on every pull and push, so there is nothing for this command to pass along.

use crate::images;
use anyhow::{bail, Context, Result};
use kiln_oci::image::ManifestFormat;
use kiln_oci::reference::Reference;
use kiln_oci::store::Store;
use kiln_oci::{Compression, Digest};
use kiln_registry::{Client, PushReport};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln push`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  kiln push app:1 localhost:5000/app:1\n  \
kiln push --format docker registry.example.com/team/app:1\n\n\
Layers go out gzip-compressed unless --compression says otherwise; the image ID (config digest)\n\
never changes, the manifest digest printed is the one the registry stored.")]
pub struct Args {
    /// The image in the store, by name or ID.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Where to push (default: the image's own name), e.g. localhost:5000/app:1.
    #[arg(value_name = "DEST")]
    pub dest: Option<String>,
    /// Manifest media types: oci or docker (default: as the image is stored; kiln builds are
    /// oci).
    #[arg(long, value_name = "FORMAT", value_parser = ["oci", "docker", "v2s2"])]
    pub format: Option<String>,
    /// Layer compression for the registry: gzip[:LEVEL] (default), zstd[:LEVEL] or none.
    #[arg(long, value_name = "ALGO")]
    pub compression: Option<String>,
    /// A registry to reach over plain http (loopback registries always are); repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Print only the manifest digest.
    #[arg(short, long)]
    pub quiet: bool,
}

/// How the pushed manifest looks (shared with `kiln build --push`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Manifest media types; `None` keeps the stored image's.
    pub format: Option<ManifestFormat>,
    /// Layer compression.
    pub compression: Compression,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape {
            format: None,
            compression: Compression::GZIP,
        }
    }
}

/// `--format`'s values.
pub fn parse_format(s: &str) -> Result<ManifestFormat> {
    match s {
        "oci" => Ok(ManifestFormat::Oci),
        "docker" | "v2s2" => Ok(ManifestFormat::Docker),
        other => bail!("format {other:?}: use oci or docker"),
    }
}

/// Puts image `manifest` into the shape `shape` asks for and pushes it to `dest`.
pub fn push_image(
    store: &Store,
    client: &Client,
    manifest: &Digest,
    dest: &Reference,
    shape: &Shape,
) -> Result<PushReport> {
    let ready =
        kiln_oci::archive::registry_manifest(store, manifest, shape.compression, shape.format)
            .with_context(|| format!("preparing {} for the registry", dest.familiar()))?;
    client
        .push(store, &ready, dest)
        .with_context(|| format!("pushing {}", dest.familiar()))
}

/// The line `kiln push` and `kiln build --push` print for a finished push.
pub fn describe(dest: &Reference, report: &PushReport) -> String {
    format!(
        "{}: pushed ({} blobs uploaded, {}; {} mounted from other repositories, {}; {} \
         already there)\nDigest: {}",
        dest.familiar(),
        report.blobs_uploaded,
        images::human_size(report.bytes_uploaded),
        report.blobs_mounted,
        images::human_size(report.bytes_mounted),
        report.blobs_present,
        report.digest
    )
}

pub fn run(args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
    let store = crate::store::open(root)?;
    let _lock = store.lock_shared()?;
    let img = images::find(&store, &args.image)?;
    let dest = Reference::parse(args.dest.as_deref().unwrap_or(&args.image))?;
    let mut client = crate::auth::client_for(&args.insecure_registries, &[&dest.domain])?;
    if !args.quiet {
        client = client.with_progress(crate::transfer::display());
    }
    let shape = Shape {
        format: args.format.as_deref().map(parse_format).transpose()?,
        compression: match &args.compression {
            Some(c) => crate::output::parse_compression(c)?,
            None => Compression::GZIP,
        },
    };
    let report = push_image(&store, &client, &img.manifest_digest, &dest, &shape)?;
    if args.quiet {
        println!("{}", report.digest);
    } else {
        println!("{}", describe(&dest, &report));
    }
    Ok(ExitCode::SUCCESS)
}
