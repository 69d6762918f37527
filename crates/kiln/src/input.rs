//! Reading the Dockerfile and turning CLI options into build options.

use crate::cmd::DockerfileArgs;
use anyhow::{bail, Context, Result};
use kiln_dockerfile::stages::{BuildOptions, Platform};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A Dockerfile's bytes and the name to show in messages.
pub struct Source {
    pub name: String,
    pub path: Option<PathBuf>,
    pub bytes: Vec<u8>,
}

/// Largest Dockerfile we read; BuildKit's own limit on a line is 64 KiB, so anything near this
/// is not a real Dockerfile.
const MAX_DOCKERFILE: u64 = 64 << 20;

/// Reads the Dockerfile named by `-f`, or the default one in `context`.
pub fn read_dockerfile(file: Option<&Path>, context: &Path) -> Result<Source> {
    if file == Some(Path::new("-")) {
        let mut bytes = Vec::new();
        std::io::stdin()
            .take(MAX_DOCKERFILE + 1)
            .read_to_end(&mut bytes)
            .context("reading the Dockerfile from standard input")?;
        check_size(bytes.len() as u64, "standard input")?;
        return Ok(Source {
            name: "<stdin>".into(),
            path: None,
            bytes,
        });
    }
    let path = match file {
        Some(f) => f.to_path_buf(),
        None => {
            let df = context.join("Dockerfile");
            let cf = context.join("Containerfile");
            if !df.exists() && cf.exists() {
                cf
            } else {
                df
            }
        }
    };
    let meta = std::fs::metadata(&path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (use -f to name another file)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot read Dockerfile {}: {e}{hint}", path.display())
    })?;
    if meta.is_dir() {
        bail!(
            "{} is a directory, not a Dockerfile (use -f to name the file)",
            path.display()
        );
    }
    check_size(meta.len(), &path.display().to_string())?;
    let bytes = std::fs::read(&path)
        .with_context(|| format!("cannot read Dockerfile {}", path.display()))?;
    // `./Dockerfile` reads better as `Dockerfile` in messages.
    let name = path
        .strip_prefix(".")
        .unwrap_or(&path)
        .display()
        .to_string();
    Ok(Source {
        name,
        path: Some(path),
        bytes,
    })
}

fn check_size(len: u64, what: &str) -> Result<()> {
    if len > MAX_DOCKERFILE {
        bail!(
            "{what} is larger than {} MiB; that is not a Dockerfile",
            MAX_DOCKERFILE >> 20
        );
    }
    Ok(())
}

/// Turns `--build-arg`, `--target` and `--platform` into [`BuildOptions`].
pub fn build_options(args: &DockerfileArgs) -> Result<BuildOptions> {
    let mut opts = BuildOptions::default();
    for a in &args.build_args {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                opts.build_args.insert(k.to_string(), v.to_string());
            }
            Some(_) => bail!("--build-arg {a:?}: the name is empty"),
            // `--build-arg NAME` takes the value from the environment, or is ignored if unset,
            // as docker does.
            None => {
                if let Ok(v) = std::env::var(a) {
                    opts.build_args.insert(a.clone(), v);
                }
            }
        }
    }
    opts.target = args.target.clone();
    if let Some(p) = &args.platform {
        opts.target_platform =
            Platform::parse(p).map_err(|e| anyhow::anyhow!("--platform: {e}"))?;
    }
    Ok(opts)
}
