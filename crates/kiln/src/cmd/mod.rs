//! One module per subcommand.

pub mod build;
pub mod check;
pub mod history;
pub mod images;
pub mod import;
pub mod info;
pub mod inspect;
pub mod load;
pub mod login;
pub mod parse;
pub mod prune;
pub mod pull;
pub mod push;
pub mod rmi;
pub mod save;
pub mod tag;

use clap::Args as ClapArgs;
use std::path::PathBuf;

/// Options shared by the commands that read a Dockerfile.
#[derive(ClapArgs, Debug, Clone)]
pub struct DockerfileArgs {
    /// The Dockerfile to read ("-" for standard input). Default: CONTEXT/Dockerfile, or
    /// CONTEXT/Containerfile when there is no Dockerfile.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// Set a build argument (repeatable). NAME alone takes the value from the environment.
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    pub build_args: Vec<String>,

    /// The stage to build; later stages and stages it does not need are left out.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,

    /// The platform to build for, os/arch[/variant] (default: this machine's).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
}
