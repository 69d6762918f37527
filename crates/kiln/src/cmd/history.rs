//! `kiln history`: the steps that made an image.

use crate::cmd::images::print_table;
use crate::images::{self, ago, human_size};
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln history`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image by name or ID.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Do not shorten the CREATED BY column.
    #[arg(long)]
    pub no_trunc: bool,
}

pub fn run(args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
    let store = crate::store::open(root)?;
    let img = images::find(&store, &args.image)?;
    let mut layers = img.parsed.layers().iter();
    let mut rows = Vec::new();
    for h in &img.config.history {
        let size = if h.empty_layer {
            0
        } else {
            layers.next().map_or(0, |l| l.size())
        };
        let mut by = h.created_by.clone().unwrap_or_default().replace('\n', " ");
        if !args.no_trunc && by.chars().count() > 45 {
            by = by.chars().take(44).collect::<String>() + "…";
        }
        rows.push([
            ago(h.created.as_deref()),
            by,
            human_size(size),
            h.comment.clone().unwrap_or_default(),
        ]);
    }
    rows.reverse();
    let ids: Vec<String> = (0..rows.len())
        .map(|i| {
            if i == 0 {
                img.id.hex()[..12].to_string()
            } else {
                "<missing>".into()
            }
        })
        .collect();
    let rows: Vec<[String; 5]> = rows
        .into_iter()
        .zip(ids)
        .map(|([a, b, c, d], id)| [id, a, b, c, d])
        .collect();
    print_table(
        &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}
