//! `--chown` and `USER` resolution against the image's `/etc/passwd` and `/etc/group`.

/// A user and group id pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Why `user[:group]` could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// The name is not in `/etc/passwd`.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    /// The name is not in `/etc/group`.
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
    /// An empty user.
    #[error("invalid user specification {0:?}")]
    Invalid(String),
}

/// A passwd line.
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// Finds `user` in passwd text: by name, or by uid when `user` is a number.
fn lookup_user(passwd: &str, user: &str) -> Option<PasswdEntry> {
    let numeric = user.parse::<u32>().is_ok();
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || !(f[0] == user || (numeric && f[2] == user)) {
            return None;
        }
        Some(PasswdEntry {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
        })
    })
}

/// A group given as a number or a name in `/etc/group`.
fn resolve_group(g: &str, group: Option<&str>) -> Result<u32, UserError> {
    match g.parse::<u32>() {
        Ok(n) => Ok(n),
        Err(_) => {
            group_entry(group.unwrap_or(""), g).ok_or_else(|| UserError::NoGroup(g.to_string()))
        }
    }
}

fn group_entry(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 3 && f[0] == name {
            f[2].parse().ok()
        } else {
            None
        }
    })
}

/// Resolves `user[:group]` as `COPY --chown` does: numbers are used as they are, names are
/// looked up; without a group, a name's primary group is used, and a bare number uses its
/// passwd entry's group when it has one, else the same number.
pub fn resolve_owner(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<Owner, UserError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(UserError::Invalid(spec.to_string()));
    }
    let entry = lookup_user(passwd.unwrap_or(""), user);
    let (uid, primary) = match (user.parse::<u32>(), entry) {
        // A bare number keeps its passwd group when it has one, else the same number.
        (Ok(n), e) => (n, e.map_or(n, |e| e.gid)),
        (Err(_), Some(e)) => (e.uid, e.gid),
        (Err(_), None) => return Err(UserError::NoUser(user.to_string())),
    };
    let gid = match grp {
        None | Some("") => primary,
        Some(g) => resolve_group(g, group)?,
    };
    Ok(Owner { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\napp:x:1000:1001::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\napp:x:1001:\nnogroup:x:65534:\n";

    #[test]
    fn names_and_numbers() {
        let r = |s| resolve_owner(s, Some(PASSWD), Some(GROUP));
        assert_eq!(
            r("app"),
            Ok(Owner {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(r("app:staff"), Ok(Owner { uid: 1000, gid: 50 }));
        assert_eq!(
            r("_apt"),
            Ok(Owner {
                uid: 42,
                gid: 65534
            })
        );
        assert_eq!(r("10:11"), Ok(Owner { uid: 10, gid: 11 }));
        assert_eq!(
            r("1000"),
            Ok(Owner {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(r("77"), Ok(Owner { uid: 77, gid: 77 }));
        assert_eq!(r("0:staff"), Ok(Owner { uid: 0, gid: 50 }));
    }

    #[test]
    fn errors_name_what_is_missing() {
        assert_eq!(
            resolve_owner("ghost", Some(PASSWD), Some(GROUP))
                .unwrap_err()
                .to_string(),
            "unable to find user ghost: no matching entries in passwd file"
        );
        assert_eq!(
            resolve_owner("app:ghosts", Some(PASSWD), Some(GROUP))
                .unwrap_err()
                .to_string(),
            "unable to find group ghosts: no matching entries in group file"
        );
        assert!(
            resolve_owner("app", None, None).is_err(),
            "no passwd file: names cannot resolve"
        );
        assert_eq!(
            resolve_owner("5:6", None, None),
            Ok(Owner { uid: 5, gid: 6 })
        );
        assert!(resolve_owner(":x", None, None).is_err());
    }
}

/// Who a `RUN` step runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (from `/etc/group` membership).
    pub groups: Vec<u32>,
}

/// Resolves the config's `USER` for running a step, as docker does: a name or a uid that
/// passwd lists takes its primary group there, a uid passwd does not list runs with group 0,
/// and supplementary groups come from `/etc/group` membership of the user's name.
pub fn resolve_run_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<RunUser, UserError> {
    let spec = if spec.is_empty() { "0" } else { spec };
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = lookup_user(passwd.unwrap_or(""), user);
    let (name, uid, primary) = match (user.parse::<u32>(), entry) {
        (_, Some(e)) => (Some(e.name), e.uid, e.gid),
        (Ok(u), None) => (None, u, 0),
        (Err(_), None) => return Err(UserError::NoUser(user.to_string())),
    };
    let gid = match grp {
        None | Some("") => primary,
        Some(g) => resolve_group(g, group)?,
    };
    let mut groups = Vec::new();
    if let (Some(name), None) = (&name, grp) {
        for line in group.unwrap_or("").lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if g != gid && !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
        }
    }
    Ok(RunUser { uid, gid, groups })
}

#[cfg(test)]
mod run_user_tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1001:\naudio:x:29:app,other\nvideo:x:44:app\n";

    #[test]
    fn docker_semantics() {
        let r = |s| resolve_run_user(s, Some(PASSWD), Some(GROUP));
        assert_eq!(
            r(""),
            Ok(RunUser {
                uid: 0,
                gid: 0,
                groups: vec![]
            })
        );
        assert_eq!(
            r("app"),
            Ok(RunUser {
                uid: 1000,
                gid: 1001,
                groups: vec![29, 44]
            })
        );
        assert_eq!(
            r("1000"),
            Ok(RunUser {
                uid: 1000,
                gid: 1001,
                groups: vec![29, 44]
            })
        );
        assert_eq!(
            r("4242"),
            Ok(RunUser {
                uid: 4242,
                gid: 0,
                groups: vec![]
            }),
            "unknown uid runs with group 0"
        );
        assert_eq!(
            r("app:44"),
            Ok(RunUser {
                uid: 1000,
                gid: 44,
                groups: vec![]
            }),
            "an explicit group replaces them"
        );
        assert_eq!(
            r("ghost").unwrap_err().to_string(),
            "unable to find user ghost: no matching entries in passwd file"
        );
    }
}
