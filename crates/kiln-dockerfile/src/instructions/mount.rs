//! `RUN --mount=type=...,key=value,...`.

use super::flags::parse_bool;
use serde::Serialize;

/// What kind of mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountType {
    /// Files from the context, a stage or an image (read-only unless `rw`).
    Bind,
    /// A directory kept between builds.
    Cache,
    /// An empty tmpfs.
    Tmpfs,
    /// A secret file (or environment variable) that never reaches a layer.
    Secret,
    /// The SSH agent socket.
    Ssh,
}

/// `sharing=` of a cache mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sharing {
    /// Concurrent builds use the same directory.
    Shared,
    /// Each concurrent user gets its own directory.
    Private,
    /// One user at a time; others wait.
    Locked,
}

/// One `--mount`. Values are kept as written; `mode`, `uid` and `gid` are checked when they hold
/// no variable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// The mount type (default `bind`).
    pub kind: MountType,
    /// Where it appears in the container. Secret and ssh mounts get a default.
    pub target: Option<String>,
    /// Path inside `from` (or the context) to mount.
    pub source: Option<String>,
    /// Stage or image to take the source from.
    pub from: Option<String>,
    /// Read-only.
    pub readonly: bool,
    /// Cache id, secret id or ssh id.
    pub id: Option<String>,
    /// Cache sharing mode.
    pub sharing: Sharing,
    /// File mode of the mount root, octal.
    pub mode: Option<String>,
    /// Owner uid.
    pub uid: Option<String>,
    /// Owner gid.
    pub gid: Option<String>,
    /// Fail when the secret or ssh socket is not provided.
    pub required: bool,
    /// Secret exposed as this environment variable.
    pub env: Option<String>,
    /// tmpfs size.
    pub size: Option<String>,
}

impl Mount {
    /// Parses the value of one `--mount` flag.
    pub fn parse(spec: &str) -> Result<Mount, String> {
        let fields = split_csv(spec)?;
        let mut kind = MountType::Bind;
        for f in &fields {
            if let Some((k, v)) = f.split_once('=') {
                if k.eq_ignore_ascii_case("type") {
                    kind = match v.to_ascii_lowercase().as_str() {
                        "bind" => MountType::Bind,
                        "cache" => MountType::Cache,
                        "tmpfs" => MountType::Tmpfs,
                        "secret" => MountType::Secret,
                        "ssh" => MountType::Ssh,
                        _ => {
                            return Err(format!(
                                "unsupported mount type {v:?}: expected bind, cache, tmpfs, \
                                 secret or ssh"
                            ))
                        }
                    };
                }
            }
        }
        let mut m = Mount {
            kind,
            target: None,
            source: None,
            from: None,
            readonly: matches!(kind, MountType::Bind | MountType::Secret | MountType::Ssh),
            id: None,
            sharing: Sharing::Shared,
            mode: None,
            uid: None,
            gid: None,
            required: false,
            env: None,
            size: None,
        };
        let type_name = format!("{kind:?}").to_lowercase();
        let only = |allowed: &[MountType], key: &str| -> Result<(), String> {
            if allowed.contains(&kind) {
                Ok(())
            } else {
                Err(format!("{key} is not supported for mount type {type_name}"))
            }
        };
        for field in &fields {
            let (key, value) = match field.split_once('=') {
                Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
                None => (field.to_ascii_lowercase(), None),
            };
            let need = |v: Option<String>| v.ok_or_else(|| format!("{key} needs a value"));
            let flag = |v: &Option<String>| -> Result<bool, String> {
                match v {
                    None => Ok(true),
                    Some(s) => {
                        parse_bool(s).ok_or_else(|| format!("invalid value for {key}: {s:?}"))
                    }
                }
            };
            match key.as_str() {
                "type" => {}
                "target" | "dst" | "destination" => m.target = Some(need(value)?),
                "source" | "src" => m.source = Some(need(value)?),
                "from" => {
                    only(&[MountType::Bind, MountType::Cache], "from")?;
                    m.from = Some(need(value)?)
                }
                "readonly" | "ro" => m.readonly = flag(&value)?,
                "readwrite" | "rw" => m.readonly = !flag(&value)?,
                "id" => m.id = Some(need(value)?),
                "sharing" => {
                    only(&[MountType::Cache], "sharing")?;
                    m.sharing = match need(value)?.as_str() {
                        "shared" => Sharing::Shared,
                        "private" => Sharing::Private,
                        "locked" => Sharing::Locked,
                        other => {
                            return Err(format!(
                                "unsupported sharing value {other:?}: expected shared, private \
                                 or locked"
                            ))
                        }
                    }
                }
                "mode" => m.mode = Some(need(value)?),
                "uid" | "gid" => {
                    let v = need(value)?;
                    if key == "uid" {
                        m.uid = Some(v)
                    } else {
                        m.gid = Some(v)
                    }
                }
                "required" => {
                    only(&[MountType::Secret, MountType::Ssh], "required")?;
                    m.required = flag(&value)?
                }
                "env" => {
                    only(&[MountType::Secret], "env")?;
                    m.env = Some(need(value)?)
                }
                "size" => {
                    only(&[MountType::Tmpfs], "size")?;
                    m.size = Some(need(value)?)
                }
                _ => return Err(format!("unexpected key {key:?} in {field:?}")),
            }
        }
        m.check_values()?;
        match kind {
            MountType::Bind | MountType::Cache | MountType::Tmpfs => {
                if m.target.as_deref().is_none_or(str::is_empty) {
                    return Err(format!("mount type {type_name} requires a target"));
                }
            }
            MountType::Secret => {
                // BuildKit: `source` names the secret as well, and wins over `id`.
                if let Some(src) = m.source.take() {
                    m.id = Some(src);
                }
                if m.id.is_none() && m.target.is_none() && m.env.is_none() {
                    return Err("secret mount requires an id, a target or an env".into());
                }
                if m.id.is_none() {
                    // The id defaults to the target's file name (or the env var name).
                    let from = m.target.as_deref().or(m.env.as_deref()).unwrap_or_default();
                    m.id = Some(from.rsplit('/').next().unwrap_or_default().to_string());
                }
                if m.target.is_none() && m.env.is_none() {
                    let id = m.id.as_deref().unwrap_or_default();
                    let base = id.rsplit('/').find(|s| !s.is_empty()).unwrap_or(id);
                    m.target = Some(format!("/run/secrets/{base}"));
                }
            }
            MountType::Ssh => {
                if m.source.is_some() {
                    return Err("ssh does not support source".into());
                }
                if m.id.is_none() {
                    m.id = Some("default".into());
                }
            }
        }
        Ok(m)
    }
}

impl Mount {
    /// Checks `mode` (octal) and `uid`/`gid` (numbers) unless they still hold a variable.
    pub fn check_values(&self) -> Result<(), String> {
        if let Some(v) = self.mode.as_deref().filter(|v| !v.contains('$')) {
            if u32::from_str_radix(v, 8).map_or(true, |m| m > 0o7777) {
                return Err(format!(
                    "invalid mode {v:?}: expected an octal number up to 7777"
                ));
            }
        }
        for (key, val) in [("uid", &self.uid), ("gid", &self.gid)] {
            if let Some(v) = val.as_deref().filter(|v| !v.contains('$')) {
                if v.parse::<u32>().is_err() {
                    return Err(format!("invalid {key} {v:?}: expected a number"));
                }
            }
        }
        Ok(())
    }
}

/// Two mounts on one target would shadow each other.
pub(super) fn check_unique_targets(mounts: &[Mount]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for m in mounts {
        if let Some(t) = &m.target {
            let norm = t.trim_end_matches('/');
            if !seen.insert(norm.to_string()) {
                return Err(format!(
                    "mount target {t:?} is used by more than one --mount"
                ));
            }
        }
    }
    Ok(())
}

/// Splits a comma-separated list where a double-quoted field may hold commas.
fn split_csv(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if quoted {
        return Err(format!("unterminated quote in {s:?}"));
    }
    out.push(cur);
    let out: Vec<String> = out.into_iter().filter(|f| !f.trim().is_empty()).collect();
    if out.is_empty() {
        return Err("empty mount specification".into());
    }
    Ok(out)
}
