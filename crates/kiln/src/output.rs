//! `--output` of `kiln build`: docker tarball, OCI tarball, OCI layout directory, or the root
//! filesystem as a directory.

use anyhow::{bail, Context, Result};
use kiln_build::reference::Reference;
use kiln_build::Built;
use kiln_oci::archive::{self, ExportImage};
use kiln_oci::image::ManifestFormat;
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
    /// A push to a registry.
    Registry,
}

/// One `--output`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    /// The kind.
    pub kind: OutputKind,
    /// Where (`-` is standard output for tarballs); empty for registry outputs.
    pub dest: PathBuf,
    /// Registry outputs: the references to push (empty: the build's `-t` names).
    pub names: Vec<String>,
    /// Registry outputs: manifest media types (`oci-mediatypes=true|false`); `None` is OCI,
    /// as kiln stores its images.
    pub format: Option<ManifestFormat>,
    /// `compression=` of this output, over `--compression`.
    pub compression: Option<Compression>,
}

impl OutputSpec {
    /// `-o PATH`.
    pub fn docker(dest: PathBuf) -> OutputSpec {
        OutputSpec::new(OutputKind::Docker, dest)
    }

    /// `--push`: the `-t` names to their registries.
    pub fn registry() -> OutputSpec {
        OutputSpec::new(OutputKind::Registry, PathBuf::new())
    }

    fn new(kind: OutputKind, dest: PathBuf) -> OutputSpec {
        OutputSpec {
            kind,
            dest,
            names: Vec::new(),
            format: None,
            compression: None,
        }
    }

    /// Parses `type=docker,dest=app.tar`, `type=registry[,name=REF]`, and BuildKit's
    /// `type=image,name=REF,push=true`; any of them may add `compression=ALGO[:LEVEL]`, and
    /// registry outputs `oci-mediatypes=true|false`.
    pub fn parse(s: &str) -> Result<OutputSpec> {
        let usage = "expected type=docker|oci|oci-dir|local,dest=PATH or type=registry[,name=REF]";
        let mut kind = None;
        let mut dest = None;
        let mut names = Vec::new();
        let mut push = None;
        let mut format = None;
        let mut compression = None;
        let flag = |key: &str, v: &str| match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => bail!("--output {s:?}: {key}= takes true or false"),
        };
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("type", t)) => {
                    kind = Some(match t {
                        "docker" => OutputKind::Docker,
                        "oci" => OutputKind::Oci,
                        "oci-dir" => OutputKind::OciDir,
                        "local" => OutputKind::Local,
                        "registry" | "image" => OutputKind::Registry,
                        other => bail!(
                            "--output {s:?}: unknown type {other:?} (use docker, oci, oci-dir, \
                             local or registry)"
                        ),
                    });
                    if t == "image" {
                        push.get_or_insert(false);
                    }
                }
                Some(("dest", d)) if !d.is_empty() => dest = Some(PathBuf::from(d)),
                Some(("name", n)) if !n.is_empty() => names.push(n.to_owned()),
                Some(("push", v)) => push = Some(flag("push", v)?),
                Some(("oci-mediatypes", v)) => {
                    format = Some(if flag("oci-mediatypes", v)? {
                        ManifestFormat::Oci
                    } else {
                        ManifestFormat::Docker
                    })
                }
                Some(("compression", c)) => compression = Some(parse_compression(c)?),
                _ => bail!("--output {s:?}: {usage}"),
            }
        }
        let kind = kind.with_context(|| format!("--output {s:?}: type= is missing"))?;
        if kind == OutputKind::Registry {
            if push == Some(false) {
                bail!(
                    "--output {s:?}: type=image without push=true would only name the image in \
                     the store; use -t for that"
                );
            }
            if dest.is_some() {
                bail!("--output {s:?}: a registry output takes name=REF, not dest=");
            }
            return Ok(OutputSpec {
                names,
                format,
                compression,
                ..OutputSpec::registry()
            });
        }
        if !names.is_empty() || push.is_some() || format.is_some() {
            bail!("--output {s:?}: name=, push= and oci-mediatypes= belong to type=registry");
        }
        let dest = dest.with_context(|| format!("--output {s:?}: dest= is missing"))?;
        if dest.as_os_str() == "-" && matches!(kind, OutputKind::OciDir | OutputKind::Local) {
            bail!("--output {s:?}: a directory output cannot go to standard output");
        }
        Ok(OutputSpec {
            compression,
            ..OutputSpec::new(kind, dest)
        })
    }
}

impl fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.kind {
            OutputKind::Docker => "docker",
            OutputKind::Oci => "oci",
            OutputKind::OciDir => "oci-dir",
            OutputKind::Local => "local",
            OutputKind::Registry => "registry",
        };
        write!(f, "type={t}")?;
        if self.kind == OutputKind::Registry {
            for n in &self.names {
                write!(f, ",name={n}")?;
            }
            Ok(())
        } else {
            write!(f, ",dest={}", self.dest.display())
        }
    }
}

/// Parses `none`, `gzip`, `gzip:9`, `zstd`, `zstd:19`.
pub fn parse_compression(s: &str) -> Result<Compression> {
    s.parse::<Compression>()
        .map_err(|e| anyhow::anyhow!("--compression {s:?}: {}", e.0))
}

/// Writes one output of a finished build; a registry output adds what it pushed to `pushed`.
pub fn export(
    store: &Store,
    built: &Built,
    tags: &[Reference],
    spec: &OutputSpec,
    compression: Option<Compression>,
    insecure_registries: &[String],
    pushed: &mut Vec<String>,
) -> Result<()> {
    let image = ExportImage {
        manifest: built.manifest.clone(),
        names: tags.iter().map(|t| t.to_string()).collect(),
    };
    let what = || format!("writing {spec}");
    let compression = spec.compression.or(compression);
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
        OutputKind::Registry => {
            let names: Vec<Reference> = if spec.names.is_empty() {
                tags.to_vec()
            } else {
                spec.names
                    .iter()
                    .map(|n| Reference::parse(n).map_err(anyhow::Error::from))
                    .collect::<Result<_>>()?
            };
            if names.is_empty() {
                bail!("{spec}: nothing to push to; name the image with -t NAME or name=REF");
            }
            // The registry copy of the manifest and its gzip layers are not tagged: keep
            // `kiln prune` away from them until they are sent.
            let _lock = store.lock_shared()?;
            let shape = crate::cmd::push::Shape {
                format: spec.format,
                compression: compression.unwrap_or(Compression::GZIP),
            };
            for dest in &names {
                let client = crate::auth::client_for(insecure_registries, &[&dest.domain])?;
                let report =
                    crate::cmd::push::push_image(store, &client, &built.manifest, dest, &shape)?;
                pushed.push(crate::cmd::push::describe(dest, &report));
            }
            Ok(())
        }
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
            OutputSpec::new(OutputKind::Oci, "a.tar".into())
        );
        let r = OutputSpec::parse("type=registry,name=h:5000/a:1,oci-mediatypes=false").unwrap();
        assert_eq!(r.kind, OutputKind::Registry);
        assert_eq!(r.names, ["h:5000/a:1"]);
        assert_eq!(r.format, Some(ManifestFormat::Docker));
        let r = OutputSpec::parse("type=image,name=a,push=true,compression=zstd").unwrap();
        assert_eq!(r.kind, OutputKind::Registry);
        assert_eq!(r.compression, Some(Compression::ZSTD));
        assert_eq!(OutputSpec::parse("type=registry").unwrap().names.len(), 0);
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
            ("type=image,name=a", "without push=true"),
            ("type=registry,dest=x", "takes name=REF"),
            ("type=oci,dest=x,name=a", "belong to type=registry"),
            ("type=registry,push=maybe", "true or false"),
            ("type=oci,dest=x,compression=lzma", "--compression"),
        ] {
            let e = OutputSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(msg), "{bad}: {e}");
        }
    }
}
