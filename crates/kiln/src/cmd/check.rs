//! `kiln check`: validate a Dockerfile and the context's ignore file, report every problem.

use super::DockerfileArgs;
use crate::diag::{self, Diagnostic, Severity};
use crate::input::{self, Source};
use anyhow::Result;
use kiln_dockerfile::instructions::{Command, CommandLine};
use kiln_dockerfile::stages::{Dockerfile, Scope};
use kiln_dockerfile::{Error, Span};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln check`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit status is 0 when no error was found (warnings allowed), 1 otherwise.\n\n\
Examples:\n  kiln check\n  kiln check -f docker/Dockerfile.prod --build-arg VERSION=1.2 ."
)]
pub struct Args {
    #[command(flatten)]
    pub dockerfile: DockerfileArgs,

    /// The build context, whose .dockerignore (or <Dockerfile>.dockerignore) is checked too.
    #[arg(value_name = "CONTEXT", default_value = ".")]
    pub context: PathBuf,
}

/// One finding, before rendering.
struct Finding {
    severity: Severity,
    message: String,
    span: Option<Span>,
    help: Option<String>,
}

impl Finding {
    fn error(e: Error) -> Self {
        Finding {
            severity: Severity::Error,
            message: e.message,
            span: Some(e.span),
            help: e.help,
        }
    }
    fn warning(message: String, span: Span, help: Option<String>) -> Self {
        Finding {
            severity: Severity::Warning,
            message,
            span: Some(span),
            help,
        }
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let src = input::read_dockerfile(args.dockerfile.file.as_deref(), &args.context)?;
    let opts = input::build_options(&args.dockerfile)?;
    let mut findings = Vec::new();
    match Dockerfile::parse(&src.bytes) {
        Err(errs) => findings.extend(errs.into_iter().map(Finding::error)),
        Ok(df) => check_dockerfile(&df, &src.bytes, &opts, &mut findings),
    }
    findings.sort_by_key(|f| f.span.map_or(0, |s| s.start));
    let mut ignore_problems = check_ignore_file(&args, &src);

    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count()
        + ignore_problems.len();
    let warnings = findings.len() + ignore_problems.len() - errors;
    for f in &findings {
        let d = Diagnostic {
            severity: f.severity,
            message: &f.message,
            span: f.span,
            help: f.help.as_deref(),
        };
        eprint!("{}", diag::render(&d, &src.name, &src.bytes));
    }
    for p in ignore_problems.drain(..) {
        eprintln!("error: {p}");
    }
    if errors + warnings == 0 {
        eprintln!("{}: no problems found", src.name);
    } else {
        eprintln!(
            "{}: {} and {}",
            src.name,
            plural(errors, "error"),
            plural(warnings, "warning")
        );
    }
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Semantic checks past parsing: the plan, expansion in every stage, and lint warnings.
fn check_dockerfile(
    df: &Dockerfile,
    src: &[u8],
    opts: &kiln_dockerfile::stages::BuildOptions,
    out: &mut Vec<Finding>,
) {
    for w in &df.warnings {
        out.push(Finding::warning(
            w.short.clone(),
            w.span,
            Some(w.detail.clone()),
        ));
    }
    if let Err((msg, help)) = df.target_index(opts.target.as_deref()) {
        out.push(Finding {
            severity: Severity::Error,
            message: msg,
            span: None,
            help: Some(help),
        });
        return;
    }
    let plan = match df.plan(opts) {
        Ok(p) => p,
        Err(e) => {
            out.push(Finding::error(e));
            return;
        }
    };
    for name in &plan.unused_build_args {
        out.push(Finding {
            severity: Severity::Warning,
            message: format!("build argument {name:?} is not used by any ARG"),
            span: None,
            help: Some("declare it with ARG in the stage that needs it".into()),
        });
    }
    for stage in &df.stages {
        // Values the base image sets are unknown here, so only expansion errors are reported.
        let mut scope = Scope::new(df, opts, &plan.global_args, Vec::new());
        for ins in &stage.instructions {
            if let Err(e) = scope.step(ins) {
                out.push(Finding::error(e));
            }
            lint(&ins.command, ins.span, out);
        }
        if let Some(name) = &stage.name {
            let span = stage.from_span;
            let text = String::from_utf8_lossy(src.get(span.start..span.end).unwrap_or_default());
            let written = text.split_whitespace().last().unwrap_or_default();
            if written != name && written.to_lowercase() == *name {
                let w = written;
                out.push(Finding::warning(
                    format!("stage name {w:?} should be lowercase"),
                    stage.from_span,
                    Some(format!("stage names are case-insensitive; write {name:?}")),
                ));
            }
        }
    }
}

fn lint(cmd: &Command, span: Span, out: &mut Vec<Finding>) {
    match cmd {
        Command::Maintainer(_) => out.push(Finding::warning(
            "MAINTAINER is deprecated".into(),
            span,
            Some("use LABEL org.opencontainers.image.authors=\"...\" instead".into()),
        )),
        Command::Cmd(CommandLine::Shell(_)) | Command::Entrypoint(CommandLine::Shell(_)) => out
            .push(Finding::warning(
                format!(
                    "{} in shell form: signals will not reach the program",
                    cmd.keyword()
                ),
                span,
                Some(format!(
                    "use the JSON form, e.g. {} [\"program\", \"arg\"], so the program runs as \
                     PID 1 and receives SIGTERM",
                    cmd.keyword()
                )),
            )),
        _ => {}
    }
}

/// Validates the ignore file the build would use; each problem is one line of text.
fn check_ignore_file(args: &Args, src: &Source) -> Vec<String> {
    let context = &args.context;
    if !context.is_dir() {
        return vec![format!(
            "build context {} is not a directory",
            context.display()
        )];
    }
    let (patterns, file) = match kiln_context::walk::load_ignore(context, src.path.as_deref()) {
        Ok(v) => v,
        Err(e) => return vec![e.to_string()],
    };
    match kiln_context::ignore::Matcher::new(&patterns) {
        Ok(_) => Vec::new(),
        Err(e) => {
            let name =
                file.map_or_else(|| ".dockerignore".to_string(), |f| f.display().to_string());
            vec![format!("{name}: {e}")]
        }
    }
}
