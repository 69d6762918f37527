//! `--output` of `kiln build`: docker tarball, OCI tarball, OCI layout directory, or the root
//! filesystem as a directory.

use anyhow::{bail, Context, Result};
use kiln_build::reference::Reference;
use kiln_build::Built;
use kiln_oci::archive::{self, ExportImage};
use kiln_oci::store::Store;
use kiln_oci::Compression;
use std::fmt;
use std::path::PathBuf;

/// What to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// A tarball `docker load` (20.10 and later), `podman load` and skopeo read.
    Docker,
    /// An OCI image layout in a tarball.
    Oci,
    /// An OCI image layout directory.
    OciDir,
    /// The final root filesystem as a directory.
    Local,
}

/// One `--output`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    /// The kind.
    pub kind: OutputKind,
    /// Where (`-` is standard output for tarballs).
    pub dest: PathBuf,
}

impl OutputSpec {
    /// `-o PATH`.
    pub fn docker(dest: PathBuf) -> OutputSpec {
        OutputSpec {
            kind: OutputKind::Docker,
            dest,
        }
    }

    /// Parses `type=docker,dest=app.tar`.
    pub fn parse(s: &str) -> Result<OutputSpec> {
        let mut kind = None;
        let mut dest = None;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("type", t)) => {
                    kind = Some(match t {
                        "docker" => OutputKind::Docker,
                        "oci" => OutputKind::Oci,
                        "oci-dir" => OutputKind::OciDir,
                        "local" => OutputKind::Local,
                        other => bail!("--output {s:?}: unknown type {other:?} (use docker, oci, oci-dir or local)"),
                    })
                }
                Some(("dest", d)) if !d.is_empty() => dest = Some(PathBuf::from(d)),
                _ => bail!("--output {s:?}: expected type=docker|oci|oci-dir|local,dest=PATH"),
            }
        }
        let kind = kind.with_context(|| format!("--output {s:?}: type= is missing"))?;
        let dest = dest.with_context(|| format!("--output {s:?}: dest= is missing"))?;
        if dest.as_os_str() == "-" && matches!(kind, OutputKind::OciDir | OutputKind::Local) {
            bail!("--output {s:?}: a directory output cannot go to standard output");
        }
        Ok(OutputSpec { kind, dest })
    }
}

impl fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.kind {
            OutputKind::Docker => "docker",
            OutputKind::Oci => "oci",
            OutputKind::OciDir => "oci-dir",
            OutputKind::Local => "local",
        };
        write!(f, "type={t},dest={}", self.dest.display())
    }
}

/// Parses `none`, `gzip`, `gzip:9`, `zstd`, `zstd:19`.
pub fn parse_compression(s: &str) -> Result<Compression> {
    s.parse::<Compression>()
        .map_err(|e| anyhow::anyhow!("--compression {s:?}: {}", e.0))
}

/// Writes one output of a finished build.
pub fn export(
    store: &Store,
    built: &Built,
    tags: &[Reference],
    spec: &OutputSpec,
    compression: Option<Compression>,
) -> Result<()> {
    let image = ExportImage {
        manifest: built.manifest.clone(),
        names: tags.iter().map(|t| t.to_string()).collect(),
    };
    let what = || format!("writing {spec}");
    match spec.kind {
        OutputKind::Docker => write_tar(
            &spec.dest,
            store,
            &[image],
            compression.unwrap_or(Compression::None),
            archive::write_docker_archive,
        )
        .with_context(what),
        OutputKind::Oci => write_tar(
            &spec.dest,
            store,
            &[image],
            compression.unwrap_or(Compression::GZIP),
            archive::write_oci_archive,
        )
        .with_context(what),
        OutputKind::OciDir => archive::write_oci_dir(
            store,
            &[image],
            compression.unwrap_or(Compression::GZIP),
            &spec.dest,
        )
        .with_context(what),
        OutputKind::Local => {
            // Owners are kept when running as root; otherwise files belong to the caller.
            let opts = kiln_snapshot::UnpackOptions::for_current_user();
            let stats = kiln_snapshot::unpack_image(store, &built.manifest, &spec.dest, &opts)
                .with_context(what)?;
            if stats.devices_skipped > 0 {
                eprintln!(
                    "note: {} device nodes were not created (they need root)",
                    stats.devices_skipped
                );
            }
            Ok(())
        }
    }
}

type TarWriter = fn(
    &Store,
    &[ExportImage],
    Compression,
    &mut dyn std::io::Write,
) -> Result<(), archive::ArchiveError>;

/// Writes a tarball output (`dest` `-` is standard output).
pub fn write_tar(
    dest: &std::path::Path,
    store: &Store,
    images: &[ExportImage],
    c: Compression,
    write: TarWriter,
) -> Result<()> {
    with_writer(dest, |w| write(store, images, c, w))
}

/// Writes to `dest` through a temporary file renamed into place, or to stdout for `-`, so a
/// failed export never leaves a half-written tarball under the requested name.
fn with_writer<E: Into<anyhow::Error>>(
    dest: &std::path::Path,
    f: impl FnOnce(&mut dyn std::io::Write) -> Result<(), E>,
) -> Result<()> {
    if dest.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        f(&mut out).map_err(Into::into)?;
        std::io::Write::flush(&mut out)?;
        return Ok(());
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = dest
        .file_name()
        .context("the output path has no file name")?;
    let tmp = dir.join(format!(
        ".{}.kiln-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(file);
        f(&mut w).map_err(Into::into)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dest).with_context(|| format!("renaming into {}", dest.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_specs() {
        assert_eq!(
            OutputSpec::parse("type=oci,dest=a.tar").unwrap(),
            OutputSpec {
                kind: OutputKind::Oci,
                dest: "a.tar".into()
            }
        );
        assert_eq!(
            OutputSpec::parse("dest=d,type=oci-dir").unwrap().kind,
            OutputKind::OciDir
        );
        assert_eq!(
            OutputSpec::parse("type=docker,dest=-").unwrap().dest,
            PathBuf::from("-")
        );
        for (bad, msg) in [
            ("type=zip,dest=x", "unknown type \"zip\""),
            ("type=oci", "dest= is missing"),
            ("dest=x", "type= is missing"),
            ("type=local,dest=-", "cannot go to standard output"),
            ("type=oci,dest=x,extra", "expected type="),
        ] {
            let e = OutputSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(msg), "{bad}: {e}");
        }
    }
}
