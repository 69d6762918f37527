//! Registry logins, kept in docker's `config.json` so docker and kiln share them.
//!
//! The file is `$REGISTRY_AUTH_FILE` if set (podman's variable), else
//! `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. Credentials are read from
//! `auths` (base64 `user:password`), or from a `docker-credential-*` helper named by
//! `credHelpers` for the registry or by `credsStore`.

use anyhow::{bail, Context, Result};
use base64::Engine;
use kiln_registry::{Client, Credentials};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Where logins are stored.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let dir = std::env::var_os("DOCKER_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".docker")
        });
    dir.join("config.json")
}

/// The `auths` key docker uses for a registry (Docker Hub has a historical URL).
fn key_for(domain: &str) -> String {
    if domain == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        domain.to_string()
    }
}

fn read_config() -> Result<Value> {
    let path = config_path();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid JSON", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_config(v: &Value) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = config_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(v)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
}

/// The stored credentials for `domain`, if any.
pub fn lookup(domain: &str) -> Result<Option<Credentials>> {
    let config = read_config()?;
    if let Some(h) = helper_for(&config, domain) {
        return from_helper(&h, domain);
    }
    let Some(auth) = config["auths"][key_for(domain)]["auth"].as_str() else {
        return Ok(None);
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .with_context(|| {
            format!(
                "the login for {domain} in {} is not base64",
                config_path().display()
            )
        })?;
    let text = String::from_utf8_lossy(&raw);
    let Some((user, pass)) = text.split_once(':') else {
        bail!(
            "the login for {domain} in {} is not user:password",
            config_path().display()
        );
    };
    Ok(Some(Credentials::new(user, pass)))
}

/// The credential helper that keeps `domain`'s login, if the config names one.
fn helper_for(config: &Value, domain: &str) -> Option<String> {
    config["credHelpers"][domain]
        .as_str()
        .or_else(|| config["credsStore"].as_str())
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

/// Runs `docker-credential-HELPER ACTION` with `input` on its standard input (the protocol
/// docker uses: `get`/`erase` take the server URL, `store` a JSON object).
fn call_helper(helper: &str, action: &str, input: &[u8]) -> Result<std::process::Output> {
    use std::io::Write;
    let program = format!("docker-credential-{helper}");
    let mut child = std::process::Command::new(&program)
        .arg(action)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "running {program} (named in {}); is it installed and on PATH?",
                config_path().display()
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input)?;
    }
    Ok(child.wait_with_output()?)
}

/// Asks `docker-credential-HELPER get` for a registry's login.
fn from_helper(helper: &str, domain: &str) -> Result<Option<Credentials>> {
    let out = call_helper(helper, "get", key_for(domain).as_bytes())?;
    if !out.status.success() {
        // "credentials not found in native keychain": no login, not an error.
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("docker-credential-{helper} printed invalid JSON"))?;
    match (v["Username"].as_str(), v["Secret"].as_str()) {
        (Some(u), Some(s)) => Ok(Some(Credentials::new(u, s))),
        _ => Ok(None),
    }
}

/// Saves a login for `domain`, keeping everything else in the file. When the config names a
/// credential helper for it, the helper keeps the secret and the file only an empty entry,
/// as docker does.
pub fn store(domain: &str, user: &str, password: &str) -> Result<()> {
    let mut config = read_config()?;
    if !config["auths"].is_object() {
        config["auths"] = json!({});
    }
    if let Some(helper) = helper_for(&config, domain) {
        let input = json!({ "ServerURL": key_for(domain), "Username": user, "Secret": password });
        let out = call_helper(&helper, "store", input.to_string().as_bytes())?;
        if !out.status.success() {
            bail!(
                "docker-credential-{helper} could not store the login: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        config["auths"][key_for(domain)] = json!({});
    } else {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        config["auths"][key_for(domain)] = json!({ "auth": auth });
    }
    write_config(&config)
}

/// Removes the login for `domain` (from its credential helper too); false when there was none.
pub fn remove(domain: &str) -> Result<bool> {
    let mut config = read_config()?;
    let mut removed = false;
    if let Some(helper) = helper_for(&config, domain) {
        removed = call_helper(&helper, "erase", key_for(domain).as_bytes())?
            .status
            .success();
    }
    if config["auths"]
        .as_object_mut()
        .and_then(|a| a.remove(&key_for(domain)))
        .is_some()
    {
        removed = true;
        write_config(&config)?;
    }
    Ok(removed)
}

/// A client with the stored logins of `domains` and the insecure registries.
pub fn client_for(insecure: &[String], domains: &[&str]) -> Result<Client> {
    let mut client = Client::new().with_insecure(insecure.to_vec());
    for d in domains {
        if let Some(c) = lookup(d)? {
            client = client.with_credentials(d, c);
        }
    }
    Ok(client)
}
