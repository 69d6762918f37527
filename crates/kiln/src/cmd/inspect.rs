//! `kiln inspect`: image details as JSON, in the shape of `docker image inspect`.

use crate::images;
use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Images by name or ID.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

pub fn run(args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
    let store = crate::store::open(root)?;
    let mut out = Vec::new();
    for what in &args.images {
        let img = images::find(&store, what)?;
        out.push(describe(&img));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// The fields of `docker image inspect`, in its order.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    id: String,
    repo_tags: Vec<String>,
    repo_digests: Vec<String>,
    manifest_digest: String,
    created: Option<String>,
    author: String,
    config: Value,
    architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
    os: String,
    size: u64,
    #[serde(rename = "RootFS")]
    root_fs: RootFs,
    history: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RootFs {
    r#type: &'static str,
    layers: Vec<String>,
}

fn describe(img: &images::Found) -> Inspect {
    let c = &img.config;
    Inspect {
        id: img.id.to_string(),
        repo_tags: img.repo_tags(),
        repo_digests: Vec::new(),
        manifest_digest: img.manifest_digest.to_string(),
        created: c.created.clone(),
        author: c.author.clone().unwrap_or_default(),
        config: c
            .config
            .as_ref()
            .and_then(|cc| serde_json::to_value(cc).ok())
            .unwrap_or_else(|| json!({})),
        architecture: c.architecture.clone(),
        variant: c.variant.clone(),
        os: c.os.clone(),
        size: img.size(),
        root_fs: RootFs {
            r#type: "layers",
            layers: c.rootfs.diff_ids.iter().map(|d| d.to_string()).collect(),
        },
        history: serde_json::to_value(&c.history).unwrap_or(Value::Null),
    }
}
