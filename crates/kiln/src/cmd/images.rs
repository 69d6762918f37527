//! `kiln images`: the tagged images in the store.

use crate::images::{self, ago, human_size};
use anyhow::Result;
use kiln_build::reference::Reference;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln images`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Show only image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Show full image IDs.
    #[arg(long)]
    pub no_trunc: bool,
}

pub fn run(args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
    let store = crate::store::open(root)?;
    let mut rows = Vec::new();
    for img in images::all(&store)? {
        let id = if args.no_trunc {
            img.id.to_string()
        } else {
            img.id.hex()[..12].to_string()
        };
        for tag in &img.tags {
            let (repo, t) = match Reference::parse(tag) {
                Ok(r) => (
                    r.familiar_repository(),
                    r.tag.clone().unwrap_or_else(|| "<none>".into()),
                ),
                Err(_) => (tag.clone(), "<none>".into()),
            };
            rows.push([
                repo,
                t,
                id.clone(),
                ago(img.config.created.as_deref()),
                human_size(img.size()),
            ]);
        }
    }
    rows.sort();
    if args.quiet {
        let mut seen = std::collections::BTreeSet::new();
        for r in &rows {
            if seen.insert(r[2].clone()) {
                println!("{}", r[2]);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    print_table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows);
    Ok(ExitCode::SUCCESS)
}

/// Prints left-aligned columns separated by three spaces, like docker.
pub fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut width = header.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = width[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
