//! Small value grammars of instruction arguments: `--chmod`, ports, durations, signals.

use serde::Serialize;

/// A `--chmod` value: octal (`0755`) or symbolic (`u=rwX,go=rX`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Chmod {
    /// An absolute mode, `0o7777` at most.
    Octal(u32),
    /// Symbolic clauses, applied to each file's own mode.
    Symbolic(Vec<SymbolicClause>),
}

/// One `who op perms` clause of a symbolic mode, possibly with several actions (`u+x-w`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SymbolicClause {
    /// Bit mask of `u` (0o4700), `g` (0o2070), `o` (0o1007) chosen; `a` when empty.
    who: u32,
    actions: Vec<(char, Perm)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
enum Perm {
    /// `r w x X s t` letters.
    Bits(String),
    /// `u`, `g` or `o`: copy that class's current bits.
    Copy(char),
}

impl Chmod {
    /// Parses a `--chmod` value.
    pub fn parse(s: &str) -> Result<Chmod, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match u32::from_str_radix(s, 8) {
                Ok(m) if m <= 0o7777 => Ok(Chmod::Octal(m)),
                Ok(_) => Err(format!("invalid --chmod {s:?}: octal modes go up to 7777")),
                Err(_) => Err(format!(
                    "invalid --chmod {s:?}: not an octal number (digits 0-7)"
                )),
            };
        }
        let bad = || {
            format!("invalid --chmod {s:?}: expected an octal mode like 755 or a symbolic mode like u=rwX,go=rX")
        };
        let mut clauses = Vec::new();
        for part in s.split(',') {
            let mut chars = part.chars().peekable();
            let mut who = 0;
            while let Some(&c) = chars.peek() {
                who |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    'a' => 0o7777,
                    _ => break,
                };
                chars.next();
            }
            let mut actions = Vec::new();
            while let Some(op) = chars.next() {
                if !matches!(op, '+' | '-' | '=') {
                    return Err(bad());
                }
                let mut letters = String::new();
                let mut copy = None;
                while let Some(&c) = chars.peek() {
                    match c {
                        'r' | 'w' | 'x' | 'X' | 's' | 't' if copy.is_none() => letters.push(c),
                        'u' | 'g' | 'o' if letters.is_empty() && copy.is_none() => copy = Some(c),
                        '+' | '-' | '=' => break,
                        _ => return Err(bad()),
                    }
                    chars.next();
                }
                actions.push((op, copy.map_or(Perm::Bits(letters), Perm::Copy)));
            }
            if actions.is_empty() {
                return Err(bad());
            }
            clauses.push(SymbolicClause { who, actions });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The resulting permission bits (`0o7777` part) for a file whose mode is `mode`.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(m) => return *m,
            Chmod::Symbolic(c) => c,
        };
        let mut mode = mode & 0o7777;
        for clause in clauses {
            let who = if clause.who == 0 { 0o7777 } else { clause.who };
            for (op, perm) in &clause.actions {
                let bits = match perm {
                    Perm::Bits(letters) => letter_bits(letters, mode, is_dir),
                    Perm::Copy(class) => {
                        let rwx = match class {
                            'u' => (mode >> 6) & 7,
                            'g' => (mode >> 3) & 7,
                            _ => mode & 7,
                        };
                        rwx * 0o111
                    }
                } & who;
                match op {
                    '+' => mode |= bits,
                    '-' => mode &= !bits,
                    _ => mode = (mode & !(who & 0o777 | special_of(who))) | bits,
                }
            }
        }
        mode
    }
}

/// The setuid/setgid/sticky bits that belong to the chosen classes.
fn special_of(who: u32) -> u32 {
    who & 0o7000
}

fn letter_bits(letters: &str, mode: u32, is_dir: bool) -> u32 {
    let mut bits = 0;
    for c in letters.chars() {
        bits |= match c {
            'r' => 0o444,
            'w' => 0o222,
            'x' => 0o111,
            'X' if is_dir || mode & 0o111 != 0 => 0o111,
            's' => 0o6000,
            't' => 0o1000,
            _ => 0,
        };
    }
    bits
}

/// An `EXPOSE` port: a port or range with a protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortSpec {
    /// First port.
    pub start: u16,
    /// Last port (equal to `start` for a single port).
    pub end: u16,
    /// `tcp`, `udp` or `sctp`.
    pub proto: String,
}

impl PortSpec {
    /// Parses `80`, `80/udp` or `8000-8010/tcp`.
    pub fn parse(s: &str) -> Result<PortSpec, String> {
        let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        let proto = proto.to_ascii_lowercase();
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(format!(
                "invalid protocol {proto:?} in EXPOSE {s:?}: use tcp, udp or sctp"
            ));
        }
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("invalid port {p:?} in EXPOSE {s:?}: expected 0-65535"))
        };
        let (start, end) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(ports)?, port(ports)?),
        };
        if end < start {
            return Err(format!(
                "invalid port range {ports:?} in EXPOSE: end is below start"
            ));
        }
        Ok(PortSpec { start, end, proto })
    }

    /// The ports as the image config writes them (`80/tcp`), one per port of a range.
    pub fn config_keys(&self) -> Vec<String> {
        (self.start..=self.end)
            .map(|p| format!("{p}/{}", self.proto))
            .collect()
    }
}

/// Parses a Go duration (`1m30s`, `500ms`, `1.5h`) into nanoseconds.
pub fn parse_go_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid duration {s:?}: expected something like 30s, 1m30s or 500ms");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += num * scale;
    }
    if total > i64::MAX as f64 {
        return Err(format!("invalid duration {s:?}: too long"));
    }
    let ns = total as i64;
    Ok(if neg { -ns } else { ns })
}

const SIGNALS: &[(&str, i32)] = &[
    ("ABRT", 6),
    ("ALRM", 14),
    ("BUS", 7),
    ("CHLD", 17),
    ("CLD", 17),
    ("CONT", 18),
    ("FPE", 8),
    ("HUP", 1),
    ("ILL", 4),
    ("INT", 2),
    ("IO", 29),
    ("IOT", 6),
    ("KILL", 9),
    ("PIPE", 13),
    ("POLL", 29),
    ("PROF", 27),
    ("PWR", 30),
    ("QUIT", 3),
    ("SEGV", 11),
    ("STKFLT", 16),
    ("STOP", 19),
    ("SYS", 31),
    ("TERM", 15),
    ("TRAP", 5),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("USR1", 10),
    ("USR2", 12),
    ("VTALRM", 26),
    ("WINCH", 28),
    ("XCPU", 24),
    ("XFSZ", 25),
];

/// Parses a signal as `STOPSIGNAL` accepts it: `SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let bad = || format!("invalid signal: {s:?}");
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = SIGNALS.iter().find(|(k, _)| *k == name) {
        return Ok(n);
    }
    let rt = |base: i32, rest: &str, sign: i32| -> Result<i32, String> {
        let off = if rest.is_empty() {
            0
        } else {
            rest.parse::<i32>().map_err(|_| bad())?
        };
        let n = base + sign * off;
        if (34..=64).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        }
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(34, rest.strip_prefix('+').unwrap_or(rest), 1);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(64, rest.strip_prefix('-').unwrap_or(rest), -1);
    }
    Err(bad())
}
