//! `kiln import`: make a one-layer image from a root filesystem tarball, like `docker import`.

use anyhow::{Context, Result};
use kiln_build::reference::Reference;
use kiln_dockerfile::stages::Platform;
use kiln_oci::archive;
use kiln_oci::digest::Digest;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln import`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The tarball (plain, gzip, bzip2, xz or zstd); - for standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Name for the image, NAME[:TAG].
    #[arg(value_name = "NAME[:TAG]")]
    pub name: Option<String>,
    /// The platform the files are for (default: this machine's).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
}

pub fn run(args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
    let platform = match &args.platform {
        Some(p) => Platform::parse(p).map_err(|e| anyhow::anyhow!("--platform: {e}"))?,
        None => Platform::host(),
    };
    let name = args.name.as_deref().map(Reference::parse).transpose()?;
    let store = crate::store::open(root)?;
    let created = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok());
    let import = |r: &mut dyn std::io::Read| {
        archive::import_rootfs(
            &store,
            r,
            &platform.os,
            &platform.architecture,
            platform.variant.as_deref(),
            created,
        )
    };
    let desc = if args.file.as_os_str() == "-" {
        import(&mut std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&args.file)
            .with_context(|| format!("opening {}", args.file.display()))?;
        import(&mut std::io::BufReader::new(f))
    }
    .context("importing the root filesystem")?;
    if let Some(n) = &name {
        store.set_tag(&n.to_string(), &desc)?;
    }
    let manifest = Digest::from_oci(desc.digest()).map_err(kiln_oci::image::ImageError::from)?;
    let parsed = kiln_oci::image::read_manifest(&store, &manifest)?;
    println!("{}", parsed.value.config().digest());
    Ok(ExitCode::SUCCESS)
}
