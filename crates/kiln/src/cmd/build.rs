//! `kiln build`: build an image from a Dockerfile and a context.

use super::DockerfileArgs;
use crate::diag::{self, Diagnostic, Severity};
use crate::input;
use crate::output::{self, OutputSpec};
use anyhow::{bail, Context, Result};
use kiln_build::reference::Reference;
use kiln_build::{BuildError, Event, Progress};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Options of `kiln build`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  kiln build -t app:1 .\n  \
kiln build -t app:1 -o app.tar .                      # and write a docker-loadable tarball\n  \
kiln build --output type=oci,dest=app.oci.tar .\n  \
kiln build -t localhost:5000/app:1 --push .          # build and push\n  \
SOURCE_DATE_EPOCH=0 kiln build -q -t app:1 .          # reproducible; prints only the image ID\n  \
kiln build --secret id=npmrc,src=$HOME/.npmrc .       # RUN --mount=type=secret,id=npmrc\n  \
kiln build --secret id=TOKEN --ssh default .          # $TOKEN as a secret; the ssh agent")]
pub struct Args {
    #[command(flatten)]
    pub dockerfile: DockerfileArgs,

    /// Name and optionally tag the image (NAME[:TAG]); repeatable.
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<String>,

    /// Set a label on the image (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,

    /// Export the result: type=docker|oci|oci-dir|local,dest=PATH or type=registry[,name=REF]
    /// [,oci-mediatypes=false] (repeatable). For tar outputs, dest=- writes to standard output.
    #[arg(long = "output", value_name = "type=TYPE,dest=PATH")]
    pub outputs: Vec<String>,

    /// Push the result to the registry of every -t name (--output type=registry).
    #[arg(long)]
    pub push: bool,

    /// Shorthand for --output type=docker,dest=PATH: a tarball for `docker load`.
    #[arg(short = 'o', value_name = "PATH")]
    pub output_path: Option<PathBuf>,

    /// Layer compression of outputs: none, gzip[:LEVEL] or zstd[:LEVEL]
    /// (default: none for type=docker, gzip for OCI outputs and registries).
    #[arg(long, value_name = "ALGO")]
    pub compression: Option<String>,

    /// Progress output: auto (plain unless quiet) or plain.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = ["auto", "plain"])]
    pub progress: String,

    /// Network for RUN steps that do not set --network: default (the host's), host or none.
    #[arg(long, value_name = "MODE", default_value = "default", value_parser = ["default", "host", "none"])]
    pub network: String,

    /// When to fetch FROM images from their registry: missing (not in the store), always, never.
    #[arg(long, value_name = "WHEN", default_value = "missing", value_parser = ["missing", "always", "never"])]
    pub pull: String,

    /// A registry to reach over plain http (loopback registries always are); repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,

    /// Run every step; results are still recorded for later builds.
    #[arg(long)]
    pub no_cache: bool,

    /// Run every step of these stages (name or index; repeatable or comma-separated).
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    pub no_cache_filter: Vec<String>,

    /// For every step that is not a cache hit, print which input changed since the last build
    /// (a file, a build arg, the instruction, or an earlier step).
    #[arg(long)]
    pub explain_cache: bool,

    /// Reuse steps from a cache: type=local,src=DIR, type=registry,ref=REF, or REF (also an
    /// image pushed with an inline cache); repeatable.
    #[arg(long = "cache-from", value_name = "SOURCE")]
    pub cache_from: Vec<String>,

    /// Export this build's steps: type=local,dest=DIR, type=registry,ref=REF, or type=inline
    /// (in the image's config); add mode=max for every stage's steps; repeatable.
    #[arg(long = "cache-to", value_name = "DEST")]
    pub cache_to: Vec<String>,

    /// Merge the layers the final stage adds into one layer on top of its base.
    #[arg(long, conflicts_with = "squash_all")]
    pub squash: bool,

    /// Merge all layers, the base image's included, into one.
    #[arg(long)]
    pub squash_all: bool,

    /// Stages built at once when they do not depend on each other (default: one per CPU).
    #[arg(
        long,
        short = 'j',
        value_name = "N",
        default_value_t = 0,
        hide_default_value = true
    )]
    pub jobs: usize,

    /// A secret for RUN --mount=type=secret (repeatable): id=ID,src=FILE or id=ID,env=VAR
    /// (type=file|env may be given; with neither src nor env, the variable ID if set, else the
    /// file ID). Secrets reach no layer, config or history.
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR")]
    pub secrets: Vec<String>,

    /// An ssh agent for RUN --mount=type=ssh (repeatable): ID=SOCKET, or ID alone (usually
    /// `default`) for $SSH_AUTH_SOCK.
    #[arg(long = "ssh", value_name = "ID[=SOCKET]")]
    pub ssh: Vec<String>,

    /// Print only the image ID on success.
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// The build context directory.
    #[arg(value_name = "CONTEXT")]
    pub context: PathBuf,
}

/// Plain progress, BuildKit style: `#3 [build 2/4] COPY . /src` then `#3 DONE 0.1s` (or
/// `#3 CACHED`).
struct Plain {
    quiet: bool,
    explain: bool,
}

impl Progress for Plain {
    fn event(&mut self, e: Event) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = match e {
            Event::Step {
                id,
                stage,
                step,
                total,
                text,
            } => {
                let one_line: String = text
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(120)
                    .collect();
                writeln!(err, "#{id} [{stage}{step}/{total}] {one_line}")
            }
            Event::Cache { id, reason, .. } => match reason {
                Some(r) if self.explain => writeln!(err, "#{id} cache miss: {r}"),
                _ => Ok(()),
            },
            Event::Output { id, line } => writeln!(err, "#{id} {line}"),
            Event::Done { id, cached, .. } if cached => writeln!(err, "#{id} CACHED"),
            Event::Done { id, elapsed, .. } => {
                writeln!(err, "#{id} DONE {:.1}s", elapsed.as_secs_f64())
            }
            Event::Warning(w) => writeln!(err, "WARNING: {w}"),
            Event::Info(i) => writeln!(err, "{i}"),
        };
    }
}

fn parse_labels(labels: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--label {l:?}: expected KEY=VALUE"),
        })
        .collect()
}

/// `--secret id=ID[,type=file|env][,src=FILE][,env=VAR]`, as buildx reads it.
fn parse_secrets(
    specs: &[String],
) -> Result<std::collections::BTreeMap<String, kiln_build::SecretSource>> {
    use kiln_build::SecretSource;
    let mut out = std::collections::BTreeMap::new();
    for spec in specs {
        let (mut id, mut kind, mut src, mut env) = (None, None, None, None);
        for field in spec.split(',').filter(|f| !f.is_empty()) {
            let Some((k, v)) = field.split_once('=') else {
                bail!("--secret {spec:?}: expected KEY=VALUE fields, found {field:?}");
            };
            match k.to_ascii_lowercase().as_str() {
                "id" => id = Some(v.to_string()),
                "type" => kind = Some(v.to_string()),
                "src" | "source" => src = Some(v.to_string()),
                "env" => env = Some(v.to_string()),
                _ => bail!("--secret {spec:?}: unknown key {k:?} (expected id, type, src or env)"),
            }
        }
        let Some(id) = id.filter(|i| !i.is_empty()) else {
            bail!("--secret {spec:?}: id=ID is required");
        };
        let file = |path: &str| -> Result<SecretSource> {
            let p =
                std::path::absolute(path).with_context(|| format!("--secret id={id}: {path}"))?;
            if !p.is_file() {
                bail!("--secret id={id}: {} is not a readable file", p.display());
            }
            Ok(SecretSource::File(p))
        };
        let source = match (kind.as_deref(), src, env) {
            (Some("file") | None, Some(src), None) => file(&src)?,
            (Some("env") | None, None, Some(env)) => SecretSource::Env(env),
            (Some("env"), None, None) => SecretSource::Env(id.clone()),
            (Some("file"), None, None) => file(&id)?,
            (None, None, None) if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
            (None, None, None) if std::path::Path::new(&id).is_file() => file(&id)?,
            (None, None, None) => bail!(
                "--secret id={id}: give src=FILE or env=VARIABLE (there is no variable or file \
                 named {id:?})"
            ),
            (Some(t), _, _) if t != "file" && t != "env" => {
                bail!("--secret {spec:?}: type must be file or env, not {t:?}")
            }
            _ => bail!(
                "--secret {spec:?}: type=file takes src=FILE, type=env takes env=VARIABLE; \
                 not both"
            ),
        };
        out.insert(id, source);
    }
    Ok(out)
}

/// `--ssh ID[=SOCKET]`: agent sockets by id; no socket means `$SSH_AUTH_SOCK`.
fn parse_ssh(specs: &[String]) -> Result<std::collections::BTreeMap<String, PathBuf>> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = std::collections::BTreeMap::new();
    for spec in specs {
        let (id, paths) = match spec.split_once('=') {
            Some((id, p)) => (id, p.to_string()),
            None => (
                spec.as_str(),
                std::env::var("SSH_AUTH_SOCK").map_err(|_| {
                    anyhow::anyhow!("--ssh {spec}: SSH_AUTH_SOCK is not set (start ssh-agent, or give --ssh {spec}=SOCKET)")
                })?,
            ),
        };
        if id.is_empty() || paths.is_empty() {
            bail!("--ssh {spec:?}: expected ID or ID=SOCKET");
        }
        if paths.contains(',') {
            bail!("--ssh {spec:?}: kiln forwards one agent socket per id");
        }
        let path = std::path::absolute(&paths).with_context(|| format!("--ssh {spec}"))?;
        let md =
            std::fs::metadata(&path).with_context(|| format!("--ssh {id}: {}", path.display()))?;
        if !md.file_type().is_socket() {
            bail!(
                "--ssh {id}: {} is not a socket; kiln forwards ssh-agent sockets only (load the \
                 key with ssh-add and pass the agent: --ssh {id}=$SSH_AUTH_SOCK)",
                path.display()
            );
        }
        out.insert(id.to_string(), path);
    }
    Ok(out)
}

fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => {
            let n: i64 = v
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?;
            Ok(Some(n))
        }
        _ => Ok(None),
    }
}

pub fn run(args: Args, root: Option<&PathBuf>) -> Result<ExitCode> {
    if !args.context.is_dir() {
        bail!(
            "build context {} is not a directory",
            args.context.display()
        );
    }
    let src = input::read_dockerfile(args.dockerfile.file.as_deref(), &args.context)?;
    let options = input::build_options(&args.dockerfile)?;
    let preview = Preview::of(&src.bytes, &options);
    if preview.needs_run {
        // Re-executes kiln when unprivileged: do nothing with side effects before this.
        enter_build_namespace(args.quiet)?;
    }
    let cache_from = args
        .cache_from
        .iter()
        .map(|c| {
            kiln_build::cache_io::CacheLocation::parse(c)
                .map(|(l, _)| l)
                .map_err(|e| anyhow::anyhow!("--cache-from {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let cache_to = args
        .cache_to
        .iter()
        .map(|c| {
            kiln_build::cache_io::CacheLocation::parse(c)
                .map(|(location, max)| kiln_build::cache_io::CacheExport { location, max })
                .map_err(|e| anyhow::anyhow!("--cache-to {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut registries = preview.base_registries.clone();
    for l in cache_from
        .iter()
        .chain(cache_to.iter().map(|c| &c.location))
    {
        if let kiln_build::cache_io::CacheLocation::Registry(r) = l {
            registries.push(r.domain.clone());
        }
    }
    registries.sort();
    registries.dedup();
    let credentials = logins(&registries)?;
    let tags = args
        .tags
        .iter()
        .map(|t| Reference::parse(t).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;
    let mut outputs = args
        .outputs
        .iter()
        .map(|o| OutputSpec::parse(o))
        .collect::<Result<Vec<_>>>()?;
    if let Some(p) = &args.output_path {
        outputs.push(OutputSpec::docker(p.clone()));
    }
    if args.push {
        outputs.push(OutputSpec::registry());
    }
    if tags.is_empty() {
        if let Some(o) = outputs
            .iter()
            .find(|o| o.kind == output::OutputKind::Registry && o.names.is_empty())
        {
            let what = if args.push {
                "--push".to_owned()
            } else {
                o.to_string()
            };
            bail!("{what} needs a name to push to: add -t REGISTRY/NAME[:TAG]");
        }
    }
    let compression = args
        .compression
        .as_deref()
        .map(output::parse_compression)
        .transpose()?;
    let store = crate::store::open(root)?;
    let req = kiln_build::BuildRequest {
        context: args.context.clone(),
        dockerfile: src.bytes.clone(),
        dockerfile_path: src.path.clone(),
        options,
        labels: parse_labels(&args.labels)?,
        source_date_epoch: source_date_epoch()?,
        tags: tags.clone(),
        pull: match args.pull.as_str() {
            "always" => kiln_build::PullPolicy::Always,
            "never" => kiln_build::PullPolicy::Never,
            _ => kiln_build::PullPolicy::Missing,
        },
        insecure_registries: args.insecure_registries.clone(),
        credentials,
        no_cache: args.no_cache,
        no_cache_filter: args.no_cache_filter.clone(),
        jobs: args.jobs,
        cache_from,
        cache_to,
        squash: match (args.squash, args.squash_all) {
            (_, true) => kiln_build::Squash::All,
            (true, _) => kiln_build::Squash::New,
            _ => kiln_build::Squash::No,
        },
        secrets: parse_secrets(&args.secrets)?,
        ssh: parse_ssh(&args.ssh)?,
        network: match args.network.as_str() {
            "none" => kiln_dockerfile::instructions::NetworkMode::None,
            "host" => kiln_dockerfile::instructions::NetworkMode::Host,
            _ => kiln_dockerfile::instructions::NetworkMode::Default,
        },
    };
    install_interrupt_handler();
    let started = Instant::now();
    let mut progress = Plain {
        quiet: args.quiet,
        explain: args.explain_cache,
    };
    let built = match kiln_build::build(&store, &req, &mut progress) {
        Ok(b) => b,
        Err(e) => return Ok(report(&src, e)),
    };
    for out in &outputs {
        let mut pushed = Vec::new();
        output::export(
            &store,
            &built,
            &tags,
            out,
            compression,
            &args.insecure_registries,
            &mut pushed,
        )?;
        if !args.quiet {
            for p in &pushed {
                eprintln!("{p}");
            }
            eprintln!("exported {out}");
        }
    }
    if args.quiet {
        println!("{}", built.config);
    } else {
        eprintln!("writing image {} done", built.config);
        for t in &tags {
            eprintln!("naming to {t} done");
        }
        eprintln!("built in {:.1}s", started.elapsed().as_secs_f64());
    }
    Ok(ExitCode::SUCCESS)
}

/// What the CLI needs to know before the build: whether a needed stage runs commands, and
/// which registries its base images come from. One parse; errors are left for the build to
/// report with their locations.
#[derive(Default)]
struct Preview {
    needs_run: bool,
    base_registries: Vec<String>,
}

impl Preview {
    fn of(dockerfile: &[u8], options: &kiln_dockerfile::stages::BuildOptions) -> Preview {
        use kiln_dockerfile::instructions::Command;
        use kiln_dockerfile::stages::{Dockerfile, Source};
        let Ok(df) = Dockerfile::parse(dockerfile) else {
            return Preview::default();
        };
        let Ok(plan) = df.plan(options) else {
            return Preview::default();
        };
        let needs_run = plan.order.iter().any(|&i| {
            df.stages[i]
                .instructions
                .iter()
                .any(|ins| matches!(ins.command, Command::Run(_)))
        });
        let mut base_registries: Vec<String> = plan
            .stages
            .iter()
            .filter_map(|s| match &s.base {
                Source::Image(name) => Reference::parse(name).ok().map(|r| r.domain),
                _ => None,
            })
            .collect();
        base_registries.sort();
        base_registries.dedup();
        Preview {
            needs_run,
            base_registries,
        }
    }
}

/// Stored logins for `registries`.
fn logins(registries: &[String]) -> Result<Vec<(String, kiln_registry::Credentials)>> {
    let mut out = Vec::new();
    for d in registries {
        if let Some(c) = crate::auth::lookup(d)? {
            out.push((d.clone(), c));
        }
    }
    Ok(out)
}

/// RUN steps need a root that can own files as any user: unprivileged, kiln re-executes itself
/// in a user namespace (the call returns only in the re-executed process); as root, it takes a
/// private mount namespace so step mounts never show on the host and vanish with the process.
fn enter_build_namespace(quiet: bool) -> Result<()> {
    use kiln_sandbox::userns::{ensure_build_namespace, NamespaceMode};
    match ensure_build_namespace()? {
        NamespaceMode::Root => {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                .context("creating a private mount namespace")?;
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .context("making mounts private")?;
        }
        NamespaceMode::Rootless {
            warning: Some(w), ..
        } if !quiet => eprintln!("WARNING: {w}"),
        NamespaceMode::Rootless { .. } => {}
    }
    Ok(())
}

extern "C" fn on_signal(_: nix::libc::c_int) {
    kiln_build::run::interrupt();
}

/// Ctrl-C, SIGTERM and SIGHUP stop the build in an orderly way: the running step is killed and
/// the build unwinds, unmounting and removing what it made, then kiln exits with 130.
fn install_interrupt_handler() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to atomics and calls kill(2), both async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

fn report(src: &input::Source, e: BuildError) -> ExitCode {
    match e {
        BuildError::Interrupted => {
            eprintln!("interrupted: the build was stopped and its temporary files removed");
            return ExitCode::from(130);
        }
        BuildError::Dockerfile(errs) => return crate::cmd::parse::report(src, &errs),
        BuildError::Step {
            span,
            message,
            help,
        } => {
            let d = Diagnostic {
                severity: Severity::Error,
                message: &message,
                span: Some(span),
                help: help.as_deref(),
            };
            eprint!("{}", diag::render(&d, &src.name, &src.bytes));
        }
        other => eprintln!("error: {other}"),
    }
    ExitCode::FAILURE
}
