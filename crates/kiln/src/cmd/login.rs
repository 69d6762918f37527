//! `kiln login` and `kiln logout`: registry credentials in docker's config.json.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `kiln login`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Credentials go to $REGISTRY_AUTH_FILE, else $DOCKER_CONFIG/config.json, else\n\
~/.docker/config.json - the file docker uses, so logins are shared.\n\nExample:\n  \
echo \"$TOKEN\" | kiln login registry.example:5000 -u ci --password-stdin"
)]
pub struct LoginArgs {
    /// The registry (host[:port]; default docker.io).
    #[arg(value_name = "REGISTRY", default_value = "docker.io")]
    pub registry: String,
    /// User name.
    #[arg(short, long)]
    pub username: String,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// The password (visible to other users in the process list; prefer --password-stdin).
    #[arg(short, long)]
    pub password: Option<String>,
    /// Reach the registry over plain http.
    #[arg(long = "insecure-registry")]
    pub insecure: bool,
}

/// Options of `kiln logout`.
#[derive(clap::Args, Debug)]
pub struct LogoutArgs {
    /// The registry (default docker.io).
    #[arg(value_name = "REGISTRY", default_value = "docker.io")]
    pub registry: String,
}

pub fn login(args: LoginArgs, _root: Option<&PathBuf>) -> Result<ExitCode> {
    let password = match (&args.password, args.password_stdin) {
        (Some(p), false) => p.clone(),
        (None, true) => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the password from standard input")?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        (Some(_), true) => {
            bail!("give the password either with --password or with --password-stdin, not both")
        }
        (None, false) => bail!("a password is needed: use --password-stdin (or --password)"),
    };
    let domain = args
        .registry
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let insecure = if args.insecure {
        vec![domain.clone()]
    } else {
        Vec::new()
    };
    // Check the credentials before saving them.
    kiln_registry::Client::new()
        .with_insecure(insecure)
        .with_credentials(
            &domain,
            kiln_registry::Credentials::new(args.username.clone(), password.clone()),
        )
        .ping(&domain)
        .with_context(|| format!("logging in to {domain}"))?;
    crate::auth::store(&domain, &args.username, &password)?;
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

pub fn logout(args: LogoutArgs, _root: Option<&PathBuf>) -> Result<ExitCode> {
    if crate::auth::remove(&args.registry)? {
        println!("Removed login credentials for {}", args.registry);
    } else {
        println!("Not logged in to {}", args.registry);
    }
    Ok(ExitCode::SUCCESS)
}
