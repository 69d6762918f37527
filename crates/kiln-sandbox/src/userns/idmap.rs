//! Subordinate id ranges and uid/gid maps: parsing /etc/subuid, building the arguments of
//! newuidmap/newgidmap, and reading the maps of the current namespace. All pure except the
//! small readers at the bottom.

use std::path::{Path, PathBuf};

/// One line of /etc/subuid or /etc/subgid: `count` host ids starting at `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIdRange {
    /// First host id of the range.
    pub start: u32,
    /// Number of ids.
    pub count: u32,
}

/// The ranges a subordinate-id file grants to a user, in file order. Lines may name the user
/// or give the numeric uid (shadow-utils accepts both); comments, blank lines, malformed
/// lines and empty ranges are skipped, as newuidmap skips them.
pub fn parse_subid_ranges(text: &str, user: Option<&str>, uid: u32) -> Vec<SubIdRange> {
    let uid_text = uid.to_string();
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let mut fields = line.split(':');
            let (owner, start, count) = (fields.next()?, fields.next()?, fields.next()?);
            if fields.next().is_some() {
                return None;
            }
            if Some(owner) != user && owner != uid_text {
                return None;
            }
            let start = start.trim().parse::<u32>().ok()?;
            let count = count.trim().parse::<u32>().ok()?;
            // A range running past the id space cannot be mapped; newuidmap would refuse it.
            (count > 0 && start.checked_add(count - 1).is_some())
                .then_some(SubIdRange { start, count })
        })
        .collect()
}

/// The mapping lines for a namespace where the caller's own id becomes 0 and the
/// subordinate ranges follow it from 1 upwards: `[0 host 1] [1 start count] ...`, each as
/// (inside, outside, count). Ranges that would push the inside ids past `u32::MAX`, or that
/// contain the caller's own id (the kernel refuses overlapping lines), are left out.
pub fn map_lines(host_id: u32, ranges: &[SubIdRange]) -> Vec<(u32, u32, u32)> {
    let mut lines = vec![(0, host_id, 1)];
    let mut next_inside: u32 = 1;
    for r in ranges {
        let overlaps_self = host_id >= r.start && host_id - r.start < r.count;
        let Some(end) = next_inside.checked_add(r.count) else {
            break;
        };
        if overlaps_self {
            continue;
        }
        lines.push((next_inside, r.start, r.count));
        next_inside = end;
    }
    lines
}

/// Arguments for `newuidmap PID ...` / `newgidmap PID ...`: the pid, then the mapping lines
/// flattened to `inside outside count` triples.
pub fn helper_args(pid: i32, host_id: u32, ranges: &[SubIdRange]) -> Vec<String> {
    let mut args = vec![pid.to_string()];
    for (inside, outside, count) in map_lines(host_id, ranges) {
        args.extend([inside.to_string(), outside.to_string(), count.to_string()]);
    }
    args
}

/// The text written to `/proc/PID/uid_map` (or gid_map) for the single-id fallback: only
/// the caller's own id, as 0. This is the one mapping an unprivileged process may write
/// without a setuid helper.
pub fn single_id_map(host_id: u32) -> String {
    format!("0 {host_id} 1\n")
}

/// One line of a kernel `uid_map`/`gid_map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapLine {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id in the parent namespace.
    pub outside: u32,
    /// Number of ids.
    pub count: u32,
}

/// Parses the contents of `/proc/PID/uid_map` or `gid_map`.
pub fn parse_kernel_map(text: &str) -> Vec<MapLine> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|x| x.parse::<u32>());
            Some(MapLine {
                inside: f.next()?.ok()?,
                outside: f.next()?.ok()?,
                count: f.next()?.ok()?,
            })
        })
        .collect()
}

/// True when the map is the initial namespace's identity map, i.e. we are not inside any
/// user namespace that maps ids.
pub fn is_identity_map(lines: &[MapLine]) -> bool {
    matches!(lines, [MapLine { inside: 0, outside: 0, count }] if *count == u32::MAX)
}

/// Whether `id` (inside the namespace) is covered by the map.
pub fn map_contains(lines: &[MapLine], id: u32) -> bool {
    lines
        .iter()
        .any(|l| id >= l.inside && id - l.inside < l.count)
}

/// The inside ranges of a map for messages: `0-0, 1-65536`.
pub fn describe_map(lines: &[MapLine]) -> String {
    let parts: Vec<String> = lines
        .iter()
        .map(|l| format!("{}-{}", l.inside, l.inside as u64 + l.count as u64 - 1))
        .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

/// Total number of ids a map covers (more than one means subordinate ids are mapped).
pub fn mapped_count(lines: &[MapLine]) -> u64 {
    lines.iter().map(|l| l.count as u64).sum()
}

/// Reads and parses `/proc/self/uid_map` (`which` = "uid") or `gid_map`.
pub(crate) fn read_own_map(which: &str) -> Vec<MapLine> {
    std::fs::read_to_string(format!("/proc/self/{which}_map"))
        .map(|t| parse_kernel_map(&t))
        .unwrap_or_default()
}

/// Finds a setuid helper (newuidmap/newgidmap): PATH first, then the usual system
/// directories, because a login PATH for normal users often lacks the sbin ones and
/// distributions disagree on bin vs sbin.
pub(crate) fn find_helper(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# comment line
root:100000:65536
kilntest:200000:65536

1001:300000:1000
other:400000:10
kilntest:bad:line
kilntest:500000:0
kilntest:4294967290:100
kilntest:1:2:3
";

    #[test]
    fn parses_ranges_by_name_and_uid() {
        let r = parse_subid_ranges(FILE, Some("kilntest"), 1001);
        assert_eq!(
            r,
            vec![
                SubIdRange {
                    start: 200_000,
                    count: 65_536
                },
                SubIdRange {
                    start: 300_000,
                    count: 1000
                },
            ]
        );
    }

    #[test]
    fn user_without_ranges_gets_none() {
        assert!(parse_subid_ranges(FILE, Some("kilntest2"), 1002).is_empty());
        assert!(parse_subid_ranges("", Some("x"), 5).is_empty());
    }

    #[test]
    fn unknown_user_name_still_matches_by_uid() {
        let r = parse_subid_ranges(FILE, None, 1001);
        assert_eq!(
            r,
            vec![SubIdRange {
                start: 300_000,
                count: 1000
            }]
        );
    }

    #[test]
    fn helper_args_map_self_to_root_then_ranges() {
        let ranges = [SubIdRange {
            start: 100_000,
            count: 65_536,
        }];
        assert_eq!(
            helper_args(4242, 1001, &ranges),
            ["4242", "0", "1001", "1", "1", "100000", "65536"]
        );
    }

    #[test]
    fn several_ranges_follow_each_other_inside() {
        let ranges = [
            SubIdRange {
                start: 100_000,
                count: 10,
            },
            SubIdRange {
                start: 300_000,
                count: 5,
            },
        ];
        assert_eq!(
            map_lines(1000, &ranges),
            vec![(0, 1000, 1), (1, 100_000, 10), (11, 300_000, 5)]
        );
    }

    #[test]
    fn range_holding_own_id_is_skipped() {
        let ranges = [
            SubIdRange {
                start: 1000,
                count: 10,
            },
            SubIdRange {
                start: 100_000,
                count: 10,
            },
        ];
        assert_eq!(
            map_lines(1005, &ranges),
            vec![(0, 1005, 1), (1, 100_000, 10)]
        );
    }

    #[test]
    fn helper_args_without_ranges_is_just_self() {
        assert_eq!(helper_args(7, 1001, &[]), ["7", "0", "1001", "1"]);
    }

    #[test]
    fn single_map_text() {
        assert_eq!(single_id_map(1001), "0 1001 1\n");
    }

    #[test]
    fn kernel_maps() {
        let full = parse_kernel_map(
            "         0       1001          1\n         1     100000      65536\n",
        );
        assert_eq!(full.len(), 2);
        assert_eq!(mapped_count(&full), 65_537);
        assert!(map_contains(&full, 65_534));
        assert!(!map_contains(&full, 65_537));
        assert_eq!(describe_map(&full), "0-0, 1-65536");
        assert!(!is_identity_map(&full));
        let init = parse_kernel_map("         0          0 4294967295\n");
        assert!(is_identity_map(&init));
    }
}
