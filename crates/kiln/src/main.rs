//! kiln: a daemonless, rootless OCI image builder. This binary maps subcommands onto the
//! library crates; each subcommand lives in `cmd/`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cmd;
mod diag;
mod input;

/// Build OCI images from Dockerfiles, without a daemon and without root.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
#[command(after_help = "Run `kiln <command> --help` for the options of each command.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a Dockerfile's syntax tree (BuildKit's dump format) or its typed stages (--json).
    Parse(cmd::parse::Args),
    /// Validate a Dockerfile (and the context's .dockerignore) and report every problem found.
    Check(cmd::check::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parse(args) => cmd::parse::run(args),
        Command::Check(args) => cmd::check::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
