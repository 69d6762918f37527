//! kiln: a daemonless, rootless OCI image builder. This binary maps subcommands onto the
//! library crates; each subcommand lives in `cmd/`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod auth;
mod cmd;
mod diag;
mod images;
mod input;
mod output;
mod snapshots_gc;
mod store;
mod transfer;

/// Build OCI images from Dockerfiles, without a daemon and without root.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
#[command(after_help = "Run `kiln <command> --help` for the options of each command.")]
struct Cli {
    /// The image store (default: /var/lib/kiln as root, else $XDG_DATA_HOME/kiln or
    /// ~/.local/share/kiln).
    #[arg(long, global = true, env = "KILN_ROOT", value_name = "DIR")]
    root: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build an image from a Dockerfile and a context directory.
    Build(Box<cmd::build::Args>),
    /// Print a Dockerfile's syntax tree (BuildKit's dump format) or its typed stages (--json).
    Parse(cmd::parse::Args),
    /// List the images in the store.
    Images(cmd::images::Args),
    /// Show image details as JSON.
    Inspect(cmd::inspect::Args),
    /// Show the steps that made an image.
    History(cmd::history::Args),
    /// Give an image another name.
    Tag(cmd::tag::Args),
    /// Remove image names (and data nothing else uses).
    Rmi(cmd::rmi::Args),
    /// Delete store data that no image name reaches.
    Prune(cmd::prune::Args),
    /// Fetch an image from its registry into the store.
    Pull(cmd::pull::Args),
    /// Upload an image to a registry.
    Push(cmd::push::Args),
    /// Log in to a registry (stored in docker's config.json).
    Login(cmd::login::LoginArgs),
    /// Log out of a registry.
    Logout(cmd::login::LogoutArgs),
    /// Write images to a tarball for docker load, podman load or skopeo.
    Save(cmd::save::Args),
    /// Load images from a docker or OCI tarball.
    Load(cmd::load::Args),
    /// Create an image from a root filesystem tarball.
    Import(cmd::import::Args),
    /// Show how kiln builds on this machine: store, user namespace, snapshot mode.
    Info(cmd::info::Args),
    /// Validate a Dockerfile (and the context's .dockerignore) and report every problem found.
    Check(cmd::check::Args),
}

fn main() -> ExitCode {
    // Like other CLI tools, end quietly when the reader of our output goes away (`| head`)
    // instead of failing on every later write.
    // SAFETY: setting a signal's disposition to the default has no preconditions.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    let cli = Cli::parse();
    let root = cli.root.as_ref();
    let result = match cli.command {
        Command::Build(args) => cmd::build::run(*args, root),
        Command::Info(args) => cmd::info::run(args, root),
        Command::Images(args) => cmd::images::run(args, root),
        Command::Inspect(args) => cmd::inspect::run(args, root),
        Command::History(args) => cmd::history::run(args, root),
        Command::Tag(args) => cmd::tag::run(args, root),
        Command::Rmi(args) => cmd::rmi::run(args, root),
        Command::Prune(args) => cmd::prune::run(args, root),
        Command::Pull(args) => cmd::pull::run(args, root),
        Command::Push(args) => cmd::push::run(args, root),
        Command::Login(args) => cmd::login::login(args, root),
        Command::Logout(args) => cmd::login::logout(args, root),
        Command::Save(args) => cmd::save::run(args, root),
        Command::Load(args) => cmd::load::run(args, root),
        Command::Import(args) => cmd::import::run(args, root),
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
