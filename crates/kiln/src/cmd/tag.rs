//! `kiln tag`: give an image another name.

use crate::images;
use anyhow::Result;
use kiln_build::reference::Reference;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln tag`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image, by name or ID.
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// The new name, NAME[:TAG].
    #[arg(value_name = "TARGET")]
    pub target: String,
}

pub fn run(args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
    let store = crate::store::open(root)?;
    let img = images::find(&store, &args.source)?;
    let target = Reference::parse(&args.target)?;
    store.set_tag(&target.to_string(), &img.manifest)?;
    Ok(ExitCode::SUCCESS)
}
