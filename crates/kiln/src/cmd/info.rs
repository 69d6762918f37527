//! `kiln info`: how kiln will build on this machine.

use anyhow::Result;
use kiln_sandbox::userns::{ensure_build_namespace, NamespaceMode};
use kiln_snapshot::overlay::{detect_mode, Mode};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln info`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
    // First: unprivileged, this re-executes kiln inside the build namespace, and only the
    // re-executed process returns here to print.
    let namespace = ensure_build_namespace();
    let store_root = root.cloned().unwrap_or_else(crate::store::default_root);
    println!("kiln:            {}", env!("CARGO_PKG_VERSION"));
    println!("store:           {}", store_root.display());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel:          {}", kernel.trim());
    // Report from where builds run: inside the build namespace when unprivileged.
    let ns = match namespace {
        Ok(NamespaceMode::Root) => "none (running as root)".to_string(),
        Ok(NamespaceMode::Rootless { full_map: true, .. }) => {
            let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
            let ids: u64 = map
                .lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
                .sum();
            format!("rootless, {ids} ids mapped from /etc/subuid and /etc/subgid")
        }
        Ok(NamespaceMode::Rootless { warning, .. }) => {
            format!(
                "rootless, single id only\n                 {}",
                warning.unwrap_or_default()
            )
        }
        Err(e) => format!("unavailable: {e}"),
    };
    println!("user namespace:  {ns}");
    let probe_dir = store_root.join("tmp");
    let snapshots = match std::fs::create_dir_all(&probe_dir) {
        Ok(()) => match detect_mode(&probe_dir) {
            Mode::Overlay { userxattr: true } => {
                "overlayfs (userxattr, in the user namespace)".to_string()
            }
            Mode::Overlay { userxattr: false } => "overlayfs".to_string(),
            Mode::Copy => {
                "copies (overlayfs cannot be mounted here; builds are slower and use more disk)"
                    .to_string()
            }
        },
        Err(e) => format!("unknown: cannot create {}: {e}", probe_dir.display()),
    };
    println!("snapshots:       {snapshots}");
    Ok(ExitCode::SUCCESS)
}
