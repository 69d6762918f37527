//! Typed instructions: the raw [`Node`]s of the parser turned into commands with validated
//! flags.
//!
//! Words are kept as written (not yet expanded): expansion needs the ARG/ENV values in effect,
//! which only the stage walk in [`crate::stages`] knows. Values that cannot contain a variable
//! (a `--chmod` of `0755`, a mount's `uid=`) are validated here, so `kiln check` reports them
//! without building anything; values containing `$` are validated after expansion.

use crate::ast::{Heredoc, Node};
use crate::error::{Error, Span};
use serde::Serialize;

mod flags;
mod mount;
mod values;

pub use mount::{Mount, MountType, Sharing};
pub use values::{parse_go_duration, parse_signal, Chmod, PortSpec};

use flags::{FlagSet, FlagSpec};

/// The instruction keywords kiln knows, in upper case.
pub const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// The build args every Dockerfile may use in `RUN` without declaring them; they are left out
/// of the image history and the cache key unless declared.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// One instruction with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Instruction {
    /// What it does.
    pub command: Command,
    /// The instruction's bytes in the source.
    pub span: Span,
    /// First line (1-based).
    pub line: usize,
    /// The instruction as written, continuations joined (used in history and errors).
    pub original: String,
}

/// A command line of `RUN`, `CMD`, `ENTRYPOINT` or `HEALTHCHECK CMD`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandLine {
    /// JSON form: run directly, no shell.
    Exec(Vec<String>),
    /// Shell form: run through the stage's `SHELL` (default `/bin/sh -c`).
    Shell(String),
}

/// A `KEY=value` pair of `ENV` or `LABEL`; the value is as written (quotes kept) until
/// expanded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// One name of an `ARG` instruction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArgDef {
    /// The argument name.
    pub name: String,
    /// The default, if one is given (as written).
    pub default: Option<String>,
}

/// `FROM [--platform=P] IMAGE [AS NAME]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FromCmd {
    /// The base: an image reference, a stage name, or `scratch` (as written).
    pub image: String,
    /// The stage name, lowercased.
    pub name: Option<String>,
    /// `--platform`, as written.
    pub platform: Option<String>,
}

/// `RUN [--mount=...]... [--network=...] [--security=...] COMMAND`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunCmd {
    /// The command.
    pub command: CommandLine,
    /// `--mount` flags in order.
    pub mounts: Vec<Mount>,
    /// `--network`.
    pub network: Option<NetworkMode>,
    /// `--security`.
    pub security: Option<Security>,
    /// `--device` values (accepted and kept; devices are not exposed to rootless builds).
    pub devices: Vec<String>,
    /// Heredocs of the command line.
    pub heredocs: Vec<Heredoc>,
}

/// `RUN --network`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// The builder's default (the host network for kiln).
    Default,
    /// No network: a fresh network namespace with only loopback.
    None,
    /// The host network.
    Host,
}

/// `RUN --security`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// The normal sandbox.
    Sandbox,
    /// All capabilities (needs an explicit entitlement at build time).
    Insecure,
}

/// `COPY` and `ADD`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CopyCmd {
    /// True for `ADD` (URLs, tar extraction, `--checksum`, `--keep-git-dir`, `--unpack`).
    pub is_add: bool,
    /// Sources, as written.
    pub sources: Vec<String>,
    /// Destination, as written.
    pub dest: String,
    /// `--from` (COPY only): a stage name, a stage index, or an image.
    pub from: Option<String>,
    /// `--chown=user[:group]`.
    pub chown: Option<String>,
    /// `--chmod`, as written (validated once it holds no variable).
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents` (COPY only).
    pub parents: bool,
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
    /// `--checksum` (ADD only).
    pub checksum: Option<String>,
    /// `--keep-git-dir` (ADD only).
    pub keep_git_dir: bool,
    /// `--unpack` (ADD only): `Some(true)` forces extraction, `Some(false)` forbids it.
    pub unpack: Option<bool>,
    /// Inline files given as heredocs (`COPY <<EOF /dst`).
    pub heredocs: Vec<Heredoc>,
}

/// `HEALTHCHECK`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    /// `HEALTHCHECK [OPTIONS] CMD command`.
    Cmd {
        /// The test command.
        command: CommandLine,
        /// `--interval` in nanoseconds (0 = inherit).
        interval_ns: i64,
        /// `--timeout` in nanoseconds.
        timeout_ns: i64,
        /// `--start-period` in nanoseconds.
        start_period_ns: i64,
        /// `--start-interval` in nanoseconds.
        start_interval_ns: i64,
        /// `--retries` (0 = inherit).
        retries: i64,
    },
}

/// `ONBUILD INSTRUCTION`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OnbuildCmd {
    /// The trigger as written (what goes into the image config's `OnBuild`).
    pub expression: String,
    /// The trigger, parsed and validated.
    pub trigger: Box<Instruction>,
}

/// Every Dockerfile instruction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(
    tag = "instruction",
    content = "args",
    rename_all = "SCREAMING_SNAKE_CASE"
)]
pub enum Command {
    /// `FROM`.
    From(FromCmd),
    /// `RUN`.
    Run(RunCmd),
    /// `CMD`.
    Cmd(CommandLine),
    /// `ENTRYPOINT`.
    Entrypoint(CommandLine),
    /// `LABEL`.
    Label(Vec<KeyValue>),
    /// `MAINTAINER` (deprecated; becomes the `author` field).
    Maintainer(String),
    /// `EXPOSE` ports as written.
    Expose(Vec<String>),
    /// `ENV`.
    Env(Vec<KeyValue>),
    /// `ADD` and `COPY`.
    Copy(CopyCmd),
    /// `VOLUME`.
    Volume(Vec<String>),
    /// `USER user[:group]`.
    User(String),
    /// `WORKDIR`.
    Workdir(String),
    /// `ARG`.
    Arg(Vec<ArgDef>),
    /// `ONBUILD`.
    Onbuild(OnbuildCmd),
    /// `STOPSIGNAL`.
    Stopsignal(String),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
    /// `SHELL` (always JSON form).
    Shell(Vec<String>),
}

impl Command {
    /// The instruction keyword in upper case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Command::From(_) => "FROM",
            Command::Run(_) => "RUN",
            Command::Cmd(_) => "CMD",
            Command::Entrypoint(_) => "ENTRYPOINT",
            Command::Label(_) => "LABEL",
            Command::Maintainer(_) => "MAINTAINER",
            Command::Expose(_) => "EXPOSE",
            Command::Env(_) => "ENV",
            Command::Copy(c) if c.is_add => "ADD",
            Command::Copy(_) => "COPY",
            Command::Volume(_) => "VOLUME",
            Command::User(_) => "USER",
            Command::Workdir(_) => "WORKDIR",
            Command::Arg(_) => "ARG",
            Command::Onbuild(_) => "ONBUILD",
            Command::Stopsignal(_) => "STOPSIGNAL",
            Command::Healthcheck(_) => "HEALTHCHECK",
            Command::Shell(_) => "SHELL",
        }
    }
}

/// Context for turning one node into an instruction: the source (to point at the offending
/// word) and the escape character.
struct Ctx<'a> {
    src: &'a [u8],
    node: &'a Node,
}

impl Ctx<'_> {
    /// Span of the instruction's keyword (first word of its first line).
    fn keyword_span(&self) -> Span {
        let s = self.node.span;
        let text = self.src.get(s.start..s.end).unwrap_or_default();
        let begin = text
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(0);
        let len = text[begin..]
            .iter()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(text.len() - begin);
        Span::new(s.start + begin, s.start + begin + len.max(1))
    }

    /// Span of the first occurrence of `needle` inside the instruction, or the keyword.
    fn span_of(&self, needle: &str) -> Span {
        let s = self.node.span;
        let text = self.src.get(s.start..s.end).unwrap_or_default();
        if !needle.is_empty() {
            if let Some(pos) = find(text, needle.as_bytes()) {
                return Span::new(s.start + pos, s.start + pos + needle.len());
            }
        }
        self.keyword_span()
    }

    /// Span of a flag by name (`--chmod`): the whole `--name[=value]` word when found.
    fn flag_span(&self, name: &str) -> Span {
        let flag = self.node.flags.iter().find(|f| flag_name(f) == name);
        match flag {
            Some(f) => {
                let sp = self.span_of(f);
                if sp != self.keyword_span() {
                    sp
                } else {
                    self.span_of(&format!("--{name}"))
                }
            }
            None => self.span_of(&format!("--{name}")),
        }
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::new(message, self.keyword_span())
    }

    fn err_at(&self, needle: &str, message: impl Into<String>) -> Error {
        Error::new(message, self.span_of(needle))
    }

    fn upper(&self) -> String {
        self.node.keyword.to_uppercase()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn flag_name(flag: &str) -> &str {
    let f = flag.trim_start_matches("--");
    f.split_once('=').map_or(f, |(n, _)| n)
}

/// Converts a parsed node into a typed instruction.
///
/// `src` is the whole Dockerfile the node came from; it is only used to point errors at the
/// offending word.
pub fn from_node(node: &Node, src: &[u8]) -> Result<Instruction, Error> {
    from_node_depth(node, src, 0)
}

fn from_node_depth(node: &Node, src: &[u8], depth: usize) -> Result<Instruction, Error> {
    let ctx = Ctx { src, node };
    let command = match node.keyword.as_str() {
        "from" => parse_from(&ctx)?,
        "run" => parse_run(&ctx)?,
        "cmd" => {
            no_flags(&ctx)?;
            Command::Cmd(command_line(node))
        }
        "entrypoint" => {
            no_flags(&ctx)?;
            Command::Entrypoint(command_line(node))
        }
        "label" => Command::Label(key_values(&ctx)?),
        "env" => Command::Env(key_values(&ctx)?),
        "maintainer" => Command::Maintainer(one_arg(&ctx)?),
        "expose" => parse_expose(&ctx)?,
        "add" => parse_copy(&ctx, true)?,
        "copy" => parse_copy(&ctx, false)?,
        "volume" => parse_volume(&ctx)?,
        "user" => Command::User(one_arg(&ctx)?),
        "workdir" => Command::Workdir(one_arg(&ctx)?),
        "arg" => parse_arg(&ctx)?,
        "onbuild" => parse_onbuild(&ctx, depth)?,
        "stopsignal" => parse_stopsignal(&ctx)?,
        "healthcheck" => parse_healthcheck(&ctx)?,
        "shell" => parse_shell(&ctx)?,
        other => return Err(unknown_instruction(&ctx, other)),
    };
    Ok(Instruction {
        command,
        span: node.span,
        line: node.start_line,
        original: node.original.clone(),
    })
}

fn unknown_instruction(ctx: &Ctx, keyword: &str) -> Error {
    let upper = keyword.to_uppercase();
    let mut err = ctx.err(format!("unknown instruction: {upper}"));
    if let Some(best) = suggest(&upper, KEYWORDS) {
        err = err.with_help(format!("did you mean {best}?"));
    }
    err
}

/// The closest candidate within an edit distance of 2, if any.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > 2 {
        return usize::MAX;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn no_flags(ctx: &Ctx) -> Result<(), Error> {
    FlagSet::parse(ctx, &[]).map(|_| ())
}

fn command_line(node: &Node) -> CommandLine {
    if node.json {
        CommandLine::Exec(node.args.clone())
    } else {
        CommandLine::Shell(node.args.first().cloned().unwrap_or_default())
    }
}

fn one_arg(ctx: &Ctx) -> Result<String, Error> {
    no_flags(ctx)?;
    match ctx.node.args.as_slice() {
        [one] if !one.trim().is_empty() => Ok(one.clone()),
        _ => Err(ctx.err(format!("{} requires exactly one argument", ctx.upper()))),
    }
}

fn parse_from(ctx: &Ctx) -> Result<Command, Error> {
    let flags = FlagSet::parse(ctx, &[FlagSpec::string("platform")])?;
    let args = &ctx.node.args;
    let (image, name) = match args.as_slice() {
        [image] => (image.clone(), None),
        [image, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            let lower = name.to_lowercase();
            if !valid_stage_name(&lower) {
                return Err(ctx.err_at(
                    name,
                    format!(
                        "invalid name for build stage: {name:?}, name can't start with a \
                         number or contain symbols"
                    ),
                ));
            }
            (image.clone(), Some(lower))
        }
        [] => return Err(ctx.err("FROM requires the name of a base image (or scratch)")),
        [_, second, ..] if args.len() == 3 => {
            return Err(ctx.err_at(
                second,
                format!("FROM expects `AS` before the stage name, found {second:?}"),
            ))
        }
        _ => {
            return Err(ctx.err("FROM requires either one or three arguments: FROM IMAGE [AS NAME]"))
        }
    };
    Ok(Command::From(FromCmd {
        image,
        name,
        platform: flags.string("platform"),
    }))
}

/// Stage names: a lowercase letter first, then letters, digits, `-`, `_` and `.`.
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn parse_run(ctx: &Ctx) -> Result<Command, Error> {
    let flags = FlagSet::parse(
        ctx,
        &[
            FlagSpec::list("mount"),
            FlagSpec::string("network"),
            FlagSpec::string("security"),
            FlagSpec::list("device"),
        ],
    )?;
    let mut mounts = Vec::new();
    for spec in flags.list("mount") {
        let m = Mount::parse(&spec)
            .map_err(|msg| Error::new(format!("invalid --mount: {msg}"), ctx.span_of(&spec)))?;
        mounts.push(m);
    }
    mount::check_unique_targets(&mounts).map_err(|msg| Error::new(msg, ctx.flag_span("mount")))?;
    let network = match flags.string("network").as_deref() {
        None => None,
        Some("default") => Some(NetworkMode::Default),
        Some("none") => Some(NetworkMode::None),
        Some("host") => Some(NetworkMode::Host),
        Some(other) => {
            return Err(Error::new(
                format!("unsupported network mode {other:?}: expected default, none or host"),
                ctx.flag_span("network"),
            ))
        }
    };
    let security = match flags.string("security").as_deref() {
        None => None,
        Some("sandbox") => Some(Security::Sandbox),
        Some("insecure") => Some(Security::Insecure),
        Some(other) => {
            return Err(Error::new(
                format!("unsupported security mode {other:?}: expected sandbox or insecure"),
                ctx.flag_span("security"),
            ))
        }
    };
    if ctx.node.args.is_empty() || (!ctx.node.json && ctx.node.args[0].trim().is_empty()) {
        return Err(ctx.err("RUN requires a command to run"));
    }
    Ok(Command::Run(RunCmd {
        command: command_line(ctx.node),
        mounts,
        network,
        security,
        devices: flags.list("device"),
        heredocs: ctx.node.heredocs.clone(),
    }))
}

fn key_values(ctx: &Ctx) -> Result<Vec<KeyValue>, Error> {
    no_flags(ctx)?;
    let args = &ctx.node.args;
    if args.is_empty() {
        return Err(ctx.err(format!("{} requires at least one argument", ctx.upper())));
    }
    let mut out = Vec::with_capacity(args.len() / 3);
    for triple in args.chunks(3) {
        let key = triple[0].clone();
        let value = triple.get(1).cloned().unwrap_or_default();
        if key.is_empty() {
            return Err(ctx.err(format!("{} names can not be blank", ctx.upper())));
        }
        out.push(KeyValue { key, value });
    }
    Ok(out)
}

fn parse_expose(ctx: &Ctx) -> Result<Command, Error> {
    no_flags(ctx)?;
    let ports = ctx.node.args.clone();
    if ports.is_empty() {
        return Err(ctx.err("EXPOSE requires at least one argument"));
    }
    for p in &ports {
        if !p.contains('$') {
            PortSpec::parse(p).map_err(|msg| ctx.err_at(p, msg))?;
        }
    }
    Ok(Command::Expose(ports))
}

fn parse_volume(ctx: &Ctx) -> Result<Command, Error> {
    no_flags(ctx)?;
    let vols = ctx.node.args.clone();
    if vols.is_empty() {
        return Err(ctx.err("VOLUME requires at least one argument"));
    }
    if vols.iter().any(|v| v.trim().is_empty()) {
        return Err(ctx.err("VOLUME specified can not be an empty string"));
    }
    Ok(Command::Volume(vols))
}

fn parse_copy(ctx: &Ctx, is_add: bool) -> Result<Command, Error> {
    let mut specs = vec![
        FlagSpec::string("chown"),
        FlagSpec::string("chmod"),
        FlagSpec::bool("link"),
        FlagSpec::list("exclude"),
    ];
    if is_add {
        specs.extend([
            FlagSpec::string("checksum"),
            FlagSpec::bool("keep-git-dir"),
            FlagSpec::bool("unpack"),
        ]);
    } else {
        specs.extend([FlagSpec::string("from"), FlagSpec::bool("parents")]);
    }
    let flags = FlagSet::parse(ctx, &specs)?;
    let name = ctx.upper();
    let mut args = ctx.node.args.clone();
    let heredocs = ctx.node.heredocs.clone();
    if args.len() < 2 {
        let msg = if args.is_empty() {
            format!("{name} requires at least two arguments: a source and a destination")
        } else {
            format!(
                "{name} requires at least two arguments, but only one was provided. \
                 Destination could not be determined"
            )
        };
        return Err(ctx.err(msg));
    }
    let dest = args.pop().unwrap_or_default();
    let chmod = flags.string("chmod");
    if let Some(mode) = &chmod {
        if !mode.contains('$') {
            Chmod::parse(mode).map_err(|msg| Error::new(msg, ctx.flag_span("chmod")))?;
        }
    }
    let chown = flags.string("chown");
    if chown.as_deref() == Some("") {
        return Err(Error::new(
            "--chown requires a user",
            ctx.flag_span("chown"),
        ));
    }
    let checksum = flags.string("checksum");
    if let Some(sum) = &checksum {
        if args.len() != 1 {
            return Err(Error::new(
                "--checksum can't be used with more than one source",
                ctx.flag_span("checksum"),
            ));
        }
        if !sum.contains('$') {
            check_checksum(sum, &args[0]).map_err(|m| Error::new(m, ctx.flag_span("checksum")))?;
        }
    }
    let from = flags.string("from");
    if from.as_deref() == Some("") {
        return Err(Error::new(
            "--from requires a stage or image name",
            ctx.flag_span("from"),
        ));
    }
    Ok(Command::Copy(CopyCmd {
        is_add,
        sources: args,
        dest,
        from,
        chown,
        chmod,
        link: flags.bool("link"),
        parents: flags.bool("parents"),
        excludes: flags.list("exclude"),
        checksum,
        keep_git_dir: flags.bool("keep-git-dir"),
        unpack: flags.opt_bool("unpack"),
        heredocs,
    }))
}

/// `--checksum`: `sha256:<64 hex>` (or `sha384`/`sha512`) for URLs; a commit hash prefix for
/// git sources.
fn check_checksum(sum: &str, source: &str) -> Result<(), String> {
    let is_git =
        source.starts_with("git@") || source.contains(".git") || source.starts_with("git://");
    if is_git && !sum.contains(':') {
        if sum.len() >= 7 && sum.len() <= 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(());
        }
        return Err(format!(
            "invalid --checksum {sum:?}: expected a git commit hash"
        ));
    }
    if !(source.starts_with("http://") || source.starts_with("https://") || is_git) {
        return Err(format!(
            "--checksum is only supported for http(s) and git sources, not {source:?}"
        ));
    }
    let (alg, hex) = sum
        .split_once(':')
        .ok_or_else(|| format!("invalid --checksum {sum:?}: expected sha256:<hex digest>"))?;
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            return Err(format!(
                "unsupported --checksum algorithm {alg:?}: use sha256"
            ))
        }
    };
    if hex.len() != want || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "invalid --checksum {sum:?}: expected {want} lowercase hex digits after {alg}:"
        ));
    }
    Ok(())
}

fn parse_arg(ctx: &Ctx) -> Result<Command, Error> {
    no_flags(ctx)?;
    if ctx.node.args.is_empty() {
        return Err(ctx.err("ARG requires at least one argument"));
    }
    let mut defs = Vec::new();
    for word in &ctx.node.args {
        let (name, default) = match word.split_once('=') {
            Some((n, d)) => (n.to_string(), Some(d.to_string())),
            None => (word.clone(), None),
        };
        if name.is_empty() {
            return Err(ctx.err_at(word, format!("ARG names can not be blank: {word:?}")));
        }
        defs.push(ArgDef { name, default });
    }
    Ok(Command::Arg(defs))
}

fn parse_onbuild(ctx: &Ctx, depth: usize) -> Result<Command, Error> {
    no_flags(ctx)?;
    let Some(inner) = ctx.node.inner.as_deref() else {
        return Err(ctx.err("ONBUILD requires at least one argument"));
    };
    match inner.keyword.as_str() {
        "onbuild" => {
            return Err(ctx.err_at(
                "ONBUILD",
                "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
            ))
        }
        "from" | "maintainer" => {
            let kw = inner.keyword.to_uppercase();
            return Err(ctx.err(format!("{kw} isn't allowed as an ONBUILD trigger")));
        }
        _ => {}
    }
    let trigger = from_node_depth(inner, ctx.src, depth + 1)?;
    let expression = strip_keyword(&ctx.node.original);
    Ok(Command::Onbuild(OnbuildCmd {
        expression,
        trigger: Box::new(trigger),
    }))
}

/// The text after the first word (the keyword) of an instruction, trimmed.
fn strip_keyword(original: &str) -> String {
    let t = original.trim_start();
    let rest = t.find(char::is_whitespace).map_or("", |i| &t[i..]);
    rest.trim().to_string()
}

fn parse_stopsignal(ctx: &Ctx) -> Result<Command, Error> {
    let sig = one_arg(ctx)?;
    if !sig.contains('$') {
        values::parse_signal(&sig).map_err(|m| ctx.err_at(&sig, m))?;
    }
    Ok(Command::Stopsignal(sig))
}

fn parse_healthcheck(ctx: &Ctx) -> Result<Command, Error> {
    let flags = FlagSet::parse(
        ctx,
        &[
            FlagSpec::string("interval"),
            FlagSpec::string("timeout"),
            FlagSpec::string("start-period"),
            FlagSpec::string("start-interval"),
            FlagSpec::string("retries"),
        ],
    )?;
    let args = &ctx.node.args;
    let Some(kind) = args.first() else {
        return Err(ctx.err("HEALTHCHECK requires an argument: CMD command, or NONE"));
    };
    match kind.to_uppercase().as_str() {
        "NONE" => {
            if args.len() > 1 || !ctx.node.flags.is_empty() {
                return Err(ctx.err("HEALTHCHECK NONE takes no arguments"));
            }
            Ok(Command::Healthcheck(Healthcheck::None))
        }
        "CMD" => {
            let rest = &args[1..];
            if rest.is_empty() || (!ctx.node.json && rest[0].trim().is_empty()) {
                return Err(ctx.err("Missing command after HEALTHCHECK CMD"));
            }
            let command = if ctx.node.json {
                CommandLine::Exec(rest.to_vec())
            } else {
                CommandLine::Shell(rest.join(" "))
            };
            let dur = |name: &str| -> Result<i64, Error> {
                let Some(v) = flags.string(name) else {
                    return Ok(0);
                };
                let ns = parse_go_duration(&v)
                    .map_err(|m| Error::new(format!("--{name}: {m}"), ctx.flag_span(name)))?;
                if ns != 0 && ns < 1_000_000 {
                    return Err(Error::new(
                        format!("--{name} cannot be less than 1ms"),
                        ctx.flag_span(name),
                    ));
                }
                Ok(ns)
            };
            let retries = match flags.string("retries") {
                None => 0,
                Some(r) => match r.parse::<i64>() {
                    Ok(n) if n >= 0 => n,
                    Ok(n) => {
                        return Err(Error::new(
                            format!("--retries cannot be negative ({n})"),
                            ctx.flag_span("retries"),
                        ))
                    }
                    Err(_) => {
                        return Err(Error::new(
                            format!("--retries expects a whole number, not {r:?}"),
                            ctx.flag_span("retries"),
                        ))
                    }
                },
            };
            Ok(Command::Healthcheck(Healthcheck::Cmd {
                command,
                interval_ns: dur("interval")?,
                timeout_ns: dur("timeout")?,
                start_period_ns: dur("start-period")?,
                start_interval_ns: dur("start-interval")?,
                retries,
            }))
        }
        other => Err(ctx
            .err_at(
                kind,
                format!("Unknown type {other:?} in HEALTHCHECK (try CMD)"),
            )
            .with_help("use HEALTHCHECK CMD <command> or HEALTHCHECK NONE")),
    }
}

fn parse_shell(ctx: &Ctx) -> Result<Command, Error> {
    no_flags(ctx)?;
    if !ctx.node.json {
        return Err(ctx
            .err("SHELL requires the arguments to be in JSON form")
            .with_help("write it as SHELL [\"/bin/bash\", \"-c\"]"));
    }
    if ctx.node.args.is_empty() {
        return Err(ctx.err("SHELL requires at least one argument"));
    }
    Ok(Command::Shell(ctx.node.args.clone()))
}

#[cfg(test)]
mod tests;
