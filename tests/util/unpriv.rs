//! An unprivileged account for rootless tests: `kilntest`, with subordinate uid/gid ranges in
//! /etc/subuid and /etc/subgid so newuidmap/newgidmap can map a full 65536-id range. Creating
//! it needs root; commands then run as it through `setpriv`, which keeps the caller's
//! environment (PATH, KILN_*) except for the per-user variables it resets.
//!
//! ```ignore
//! let Some(user) = unprivileged_user() else { return };
//! let work = user.scratch_dir("build");           // owned by kilntest
//! let out = output(user.command(kiln_bin()).arg("build").current_dir(work.path()));
//! ```
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::tools::{assert_success, output, require, require_root, require_tool, TempRoot};

pub const USER: &str = "kilntest";
/// First subordinate id handed out when the user has no range yet (kept clear of the ranges
/// already in the files).
const SUB_START: u64 = 200_000;
const SUB_COUNT: u64 = 65_536;

pub struct UnprivUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Ensures the `kilntest` user and its subordinate ranges exist and returns it. None (after
/// the skip message) when not root or when setpriv/useradd are missing.
pub fn unprivileged_user() -> Option<UnprivUser> {
    if !require_root("creating and switching to the kilntest user")
        || !require_tool("setpriv")
        || !require_tool("useradd")
    {
        return None;
    }
    // Tests run on parallel threads; /etc/passwd and /etc/subuid must be edited once.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());

    if lookup_user(USER).is_none() {
        // -m: rootless tools keep state under $HOME (~/.local/share/kiln). useradd may give
        // it subordinate ranges itself (when /etc/subuid exists and login.defs says so).
        let out = output(Command::new("useradd").args(["-m", "-s", "/bin/sh", USER]));
        // Exit status 9: created concurrently by another test process.
        if out.status.code() != Some(9) {
            assert_success(&out, "useradd kilntest");
        }
    }
    let (uid, gid, home) = lookup_user(USER).expect("kilntest exists after useradd");
    ensure_subid_range(Path::new("/etc/subuid"), USER);
    ensure_subid_range(Path::new("/etc/subgid"), USER);
    Some(UnprivUser {
        name: USER.to_string(),
        uid,
        gid,
        home,
    })
}

/// (uid, gid, home) from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32, PathBuf)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && f[0] == name).then(|| {
            (
                f[2].parse().unwrap_or(u32::MAX),
                f[3].parse().unwrap_or(u32::MAX),
                PathBuf::from(f[5]),
            )
        })
    })
}

/// Appends `user:START:65536` to a subordinate-id file unless the user already has a line,
/// with START past every range in the file so no two users share ids.
fn ensure_subid_range(file: &Path, user: &str) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut end = SUB_START;
    for line in text.lines() {
        let f: Vec<&str> = line.trim().split(':').collect();
        if f.len() != 3 {
            continue;
        }
        if f[0] == user {
            return;
        }
        if let (Ok(start), Ok(count)) = (f[1].parse::<u64>(), f[2].parse::<u64>()) {
            end = end.max(start + count);
        }
    }
    let mut new = text;
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&format!("{user}:{end}:{SUB_COUNT}\n"));
    // Write beside and rename, so a reader (newuidmap) never sees half a file.
    let tmp = file.with_extension("kiln-tmp");
    std::fs::write(&tmp, new).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, file).unwrap_or_else(|e| panic!("rename {}: {e}", file.display()));
}

/// The user's range in a subordinate-id file: (start, count).
pub fn subid_range(file: &Path, user: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        (f.len() == 3 && f[0] == user)
            .then(|| Some((f[1].parse().ok()?, f[2].parse().ok()?)))
            .flatten()
    })
}

impl UnprivUser {
    /// `program` as this user: `setpriv --reuid --regid --init-groups -- program`, with HOME,
    /// USER and LOGNAME set for it and root's XDG/DOCKER/KILN_ROOT locations removed (they
    /// would point into /root). Everything else in the environment is kept.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name);
        for var in [
            "XDG_RUNTIME_DIR",
            "XDG_DATA_HOME",
            "XDG_CONFIG_HOME",
            "XDG_CACHE_HOME",
            "XDG_STATE_HOME",
            "DOCKER_CONFIG",
            "REGISTRY_AUTH_FILE",
            "KILN_ROOT",
        ] {
            c.env_remove(var);
        }
        c
    }

    /// `chown -R user:group path`.
    pub fn chown(&self, path: &Path) {
        let out = output(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{}:{}", self.uid, self.gid))
                .arg(path),
        );
        assert_success(&out, "chown");
    }

    /// A scratch directory (removed on drop, by root) that this user owns.
    pub fn scratch_dir(&self, kind: &str) -> TempRoot {
        let dir = TempRoot::new(&format!("user-{kind}"));
        self.chown(dir.path());
        dir
    }

    /// The user's subordinate uid range (start, count).
    pub fn subuid(&self) -> Option<(u64, u64)> {
        subid_range(Path::new("/etc/subuid"), &self.name)
    }

    /// The user's subordinate gid range (start, count).
    pub fn subgid(&self) -> Option<(u64, u64)> {
        subid_range(Path::new("/etc/subgid"), &self.name)
    }

    /// Checks, as this user, that a user namespace with the full subordinate mapping can be
    /// created (newuidmap/newgidmap setuid, kernel allows unprivileged user namespaces).
    /// Returns the namespace's uid_map, or None after require semantics.
    pub fn userns_uid_map(&self) -> Option<String> {
        if !require_tool("unshare") || !require_tool("newuidmap") {
            return None;
        }
        let out = output(self.command("unshare").args([
            "--map-auto",
            "--map-root-user",
            "cat",
            "/proc/self/uid_map",
        ]));
        let ok = out.status.success();
        if !require(
            ok,
            &format!(
                "a rootless user namespace with subordinate ids ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ) {
            return None;
        }
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
