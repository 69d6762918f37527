//! `kiln parse`: the syntax tree in BuildKit's dump format, or typed stages as JSON.

use super::DockerfileArgs;
use crate::diag::{self, Diagnostic, Severity};
use crate::input;
use anyhow::Result;
use kiln_dockerfile::stages::Dockerfile;
use kiln_dockerfile::{parser, Error};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln parse`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  kiln parse                 # ./Dockerfile as a syntax tree\n  \
kiln parse -f app.Dockerfile --json --build-arg VERSION=2 --target release"
)]
pub struct Args {
    #[command(flatten)]
    pub dockerfile: DockerfileArgs,

    /// Print the typed instructions, the stages and the build plan (after --build-arg,
    /// --target and --platform) as JSON instead of the syntax tree.
    #[arg(long)]
    pub json: bool,

    /// The build context; only used to find the default Dockerfile.
    #[arg(value_name = "CONTEXT", default_value = ".")]
    pub context: PathBuf,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    plan: &'a kiln_dockerfile::stages::Plan,
    /// Stages grouped so that each group only needs earlier groups.
    waves: Vec<Vec<usize>>,
    dockerfile: &'a Dockerfile,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let src = input::read_dockerfile(args.dockerfile.file.as_deref(), &args.context)?;
    if !args.json {
        return match parser::parse(&src.bytes) {
            Ok(ast) => {
                println!("{}", ast.dump());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Ok(report(&src, &[e])),
        };
    }
    let opts = input::build_options(&args.dockerfile)?;
    let df = match Dockerfile::parse(&src.bytes) {
        Ok(df) => df,
        Err(errs) => return Ok(report(&src, &errs)),
    };
    if let Err((msg, help)) = df.target_index(opts.target.as_deref()) {
        anyhow::bail!("{msg} ({help})");
    }
    let plan = match df.plan(&opts) {
        Ok(p) => p,
        Err(e) => return Ok(report(&src, &[e])),
    };
    let out = JsonOutput {
        dockerfile: &df,
        waves: plan.waves(),
        plan: &plan,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// Prints errors with their source lines; returns the failure exit code.
pub fn report(src: &input::Source, errors: &[Error]) -> ExitCode {
    for e in errors {
        let d = Diagnostic {
            severity: Severity::Error,
            message: &e.message,
            span: Some(e.span),
            help: e.help.as_deref(),
        };
        eprint!("{}", diag::render(&d, &src.name, &src.bytes));
    }
    ExitCode::FAILURE
}
