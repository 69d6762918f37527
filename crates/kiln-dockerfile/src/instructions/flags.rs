//! `--name[=value]` flags of one instruction, checked against what the instruction accepts.

use super::{suggest, Ctx};
use crate::error::Error;
use std::collections::BTreeMap;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `--name=value`, at most once.
    String,
    /// `--name` or `--name=true|false`, at most once.
    Bool,
    /// `--name=value`, repeatable.
    List,
}

/// One accepted flag.
pub(super) struct FlagSpec {
    name: &'static str,
    kind: Kind,
}

impl FlagSpec {
    pub(super) fn string(name: &'static str) -> Self {
        FlagSpec {
            name,
            kind: Kind::String,
        }
    }
    pub(super) fn bool(name: &'static str) -> Self {
        FlagSpec {
            name,
            kind: Kind::Bool,
        }
    }
    pub(super) fn list(name: &'static str) -> Self {
        FlagSpec {
            name,
            kind: Kind::List,
        }
    }
}

/// The parsed flags: every value given for each flag name.
pub(super) struct FlagSet {
    values: BTreeMap<&'static str, Vec<String>>,
    bools: BTreeMap<&'static str, bool>,
}

impl FlagSet {
    /// Parses the node's flags against `specs`.
    pub(super) fn parse(ctx: &Ctx, specs: &[FlagSpec]) -> Result<FlagSet, Error> {
        let mut set = FlagSet {
            values: BTreeMap::new(),
            bools: BTreeMap::new(),
        };
        let keyword = ctx.upper();
        for raw in &ctx.node.flags {
            let body = raw.strip_prefix("--").unwrap_or(raw);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let at = |msg: String| Error::new(msg, ctx.span_of(raw));
            let Some(spec) = specs.iter().find(|s| s.name == name) else {
                let mut err = at(format!("unknown flag for {keyword}: --{name}"));
                let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
                if let Some(best) = suggest(name, &names) {
                    err = err.with_help(format!("did you mean --{best}?"));
                } else if names.is_empty() {
                    err = err.with_help(format!("{keyword} takes no flags"));
                } else {
                    let list: Vec<String> = names.iter().map(|n| format!("--{n}")).collect();
                    err = err.with_help(format!("{keyword} accepts {}", list.join(", ")));
                }
                return Err(err);
            };
            let seen = set.values.contains_key(spec.name) || set.bools.contains_key(spec.name);
            if seen && spec.kind != Kind::List {
                return Err(at(format!("duplicate flag specified: --{name}")));
            }
            match spec.kind {
                Kind::Bool => {
                    let b = match value {
                        None => true,
                        Some(v) => parse_bool(v).ok_or_else(|| {
                            at(format!(
                                "expecting boolean value for flag --{name}, not: {v:?}"
                            ))
                        })?,
                    };
                    set.bools.insert(spec.name, b);
                }
                Kind::String | Kind::List => {
                    let Some(v) = value else {
                        return Err(at(format!("missing a value on flag: --{name}")));
                    };
                    set.values.entry(spec.name).or_default().push(v.to_string());
                }
            }
        }
        Ok(set)
    }

    pub(super) fn string(&self, name: &str) -> Option<String> {
        self.values.get(name).and_then(|v| v.first().cloned())
    }

    pub(super) fn list(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    pub(super) fn bool(&self, name: &str) -> bool {
        self.bools.get(name).copied().unwrap_or(false)
    }

    pub(super) fn opt_bool(&self, name: &str) -> Option<bool> {
        self.bools.get(name).copied()
    }
}

/// Go's `strconv.ParseBool`.
pub(super) fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}
