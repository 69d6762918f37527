//! Stages, ARG/ENV scoping and the stage graph.
//!
//! [`Dockerfile::parse`] turns source bytes into stages of typed instructions, collecting every
//! error it can find. [`Dockerfile::plan`] applies build options: it expands `FROM` lines with
//! the global ARGs, resolves which stage is the target, and lists the stages the target needs
//! in an order where every stage comes after the stages it depends on (`FROM stage`,
//! `COPY --from`, `RUN --mount=from=`). [`Scope`] replays ARG/ENV semantics inside a stage and
//! expands each instruction's words with the values in effect.

use crate::ast::{Directive, Warning};
use crate::error::{Error, Span};
use crate::instructions::{
    self, ArgDef, Chmod, Command, CopyCmd, FromCmd, Instruction, KeyValue, Mount, PortSpec,
    PROXY_ARGS,
};
use crate::parser;
use crate::shell::{Env, Lexer};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Variables in order, `(name, value)`; the last entry for a name wins.
pub type Vars = Vec<(String, String)>;

/// A target or build platform, `os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// Architecture in OCI terms (`amd64`, `arm64`).
    pub architecture: String,
    /// Variant (`v7`), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform kiln runs on.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Parses `linux/amd64`, `linux/arm/v7`, or just `arm64` (OS defaults to linux).
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad =
            || format!("invalid platform {s:?}: expected os/arch[/variant], e.g. linux/amd64");
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        let (os, arch, variant) = match parts.as_slice() {
            [arch] => ("linux", *arch, None),
            [os, arch] => (*os, *arch, None),
            [os, arch, v] => (*os, *arch, Some(v.to_string())),
            _ => return Err(bad()),
        };
        let arch = match arch {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        Ok(Platform {
            os: os.to_lowercase(),
            architecture: arch.to_string(),
            variant,
        })
    }

    fn set_args(&self, prefix: &str, out: &mut Vec<(String, String)>) {
        out.push((format!("{prefix}PLATFORM"), self.to_string()));
        out.push((format!("{prefix}OS"), self.os.clone()));
        out.push((format!("{prefix}ARCH"), self.architecture.clone()));
        out.push((
            format!("{prefix}VARIANT"),
            self.variant.clone().unwrap_or_default(),
        ));
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What the caller asks of a build: `--build-arg`, `--target`, `--platform`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOptions {
    /// `--build-arg NAME=VALUE` (a `--build-arg NAME` without value is resolved by the caller).
    pub build_args: BTreeMap<String, String>,
    /// `--target`: stage name (or index).
    pub target: Option<String>,
    /// The platform being built for.
    pub target_platform: Platform,
    /// The platform the build runs on.
    pub build_platform: Platform,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            build_args: BTreeMap::new(),
            target: None,
            target_platform: Platform::host(),
            build_platform: Platform::host(),
        }
    }
}

impl BuildOptions {
    /// The automatic platform ARGs (`TARGETPLATFORM`, `BUILDARCH`, ...).
    pub fn platform_args(&self) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(8);
        self.target_platform.set_args("TARGET", &mut out);
        self.build_platform.set_args("BUILD", &mut out);
        out
    }
}

/// One build stage: a `FROM` and the instructions after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// Position among the stages (0-based, what `COPY --from=0` names).
    pub index: usize,
    /// `AS name`, lowercased.
    pub name: Option<String>,
    /// The `FROM` instruction.
    pub from: FromCmd,
    /// The `FROM` instruction's place in the source.
    pub from_span: Span,
    /// The `FROM` line.
    pub line: usize,
    /// The instructions after `FROM`.
    pub instructions: Vec<Instruction>,
}

/// An `ARG` before the first `FROM`: usable in `FROM` lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MetaArg {
    /// The declaration.
    pub arg: ArgDef,
    /// Where it is.
    pub span: Span,
}

/// A whole Dockerfile, typed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    /// Parser directives.
    pub directives: Vec<Directive>,
    /// Escape character.
    pub escape: char,
    /// ARGs before the first FROM.
    pub meta_args: Vec<MetaArg>,
    /// The stages in order.
    pub stages: Vec<Stage>,
    /// Parser warnings.
    pub warnings: Vec<Warning>,
}

impl Dockerfile {
    /// Parses and types a Dockerfile. On failure, returns every error found (a syntax error of
    /// the parser layer stops at once; instruction errors are all collected).
    pub fn parse(src: &[u8]) -> Result<Dockerfile, Vec<Error>> {
        let ast = parser::parse(src).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let mut meta_args = Vec::new();
        let mut stages: Vec<Stage> = Vec::new();
        for node in &ast.children {
            let ins = match instructions::from_node(node, src) {
                Ok(ins) => ins,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            match (&ins.command, stages.last_mut()) {
                (Command::From(from), _) => {
                    if let Some(name) = &from.name {
                        if let Some(prev) = stages.iter().find(|s| s.name.as_ref() == Some(name)) {
                            let span = stage_name_span(src, ins.span, name);
                            errors.push(
                                Error::new(format!("duplicate stage name {name:?}"), span)
                                    .with_help(format!(
                                        "stage {name:?} is already defined on line {}",
                                        prev.line
                                    )),
                            );
                        }
                    }
                    stages.push(Stage {
                        index: stages.len(),
                        name: from.name.clone(),
                        from: from.clone(),
                        from_span: ins.span,
                        line: ins.line,
                        instructions: Vec::new(),
                    });
                }
                (Command::Arg(defs), None) => meta_args.extend(defs.iter().map(|a| MetaArg {
                    arg: a.clone(),
                    span: ins.span,
                })),
                (_, Some(stage)) => stage.instructions.push(ins),
                (cmd, None) => errors.push(
                    Error::new(
                        format!("{} cannot come before the first FROM", cmd.keyword()),
                        ins.span,
                    )
                    .with_help("only ARG may come before FROM; start the build with FROM <image>"),
                ),
            }
        }
        if stages.is_empty() && errors.is_empty() {
            let end = src.len();
            errors.push(
                Error::new(
                    "the Dockerfile has no FROM instruction",
                    Span::new(end, end),
                )
                .with_help("every build starts with FROM <image> (or FROM scratch)"),
            );
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.span.start);
            return Err(errors);
        }
        Ok(Dockerfile {
            directives: ast.directives,
            escape: ast.escape,
            meta_args,
            stages,
            warnings: ast.warnings,
        })
    }

    /// Finds a stage by name (case-insensitive) or by index.
    pub fn find_stage(&self, name: &str) -> Option<usize> {
        let lower = name.to_lowercase();
        if let Some(s) = self
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(&lower))
        {
            return Some(s.index);
        }
        name.parse::<usize>()
            .ok()
            .filter(|&i| i < self.stages.len())
    }

    /// The stage `--target` names (the last stage when `None`). The error has a message and a
    /// hint listing the stage names; it has no place in the source.
    pub fn target_index(&self, target: Option<&str>) -> Result<usize, (String, String)> {
        let Some(t) = target else {
            return Ok(self.stages.len() - 1);
        };
        self.find_stage(t).ok_or_else(|| {
            let names: Vec<String> = self.stages.iter().filter_map(|s| s.name.clone()).collect();
            let help = if names.is_empty() {
                "this Dockerfile has no named stages (use FROM image AS name)".to_string()
            } else {
                format!("stages are: {}", names.join(", "))
            };
            (format!("target stage {t:?} could not be found"), help)
        })
    }

    /// The values of the global ARGs (meta args with build-arg overrides, plus the automatic
    /// platform args) used to expand `FROM` lines, and the names of build args they consumed.
    pub fn global_args(&self, opts: &BuildOptions) -> Result<(Vars, BTreeSet<String>), Error> {
        let lexer = Lexer::new(self.escape);
        let mut vals = opts.platform_args();
        let mut used = BTreeSet::new();
        for meta in &self.meta_args {
            let name = &meta.arg.name;
            let value = if let Some(v) = opts.build_args.get(name) {
                used.insert(name.clone());
                Some(v.clone())
            } else if let Some(d) = &meta.arg.default {
                Some(
                    lexer
                        .process_word(d, &vals)
                        .map_err(|e| Error::new(format!("ARG {name}: {e}"), meta.span))?,
                )
            } else {
                None
            };
            if let Some(v) = value {
                vals.push((name.clone(), v));
            }
        }
        Ok((vals, used))
    }

    /// Applies build options: expands the `FROM` lines, picks the target and orders the stages
    /// it needs.
    pub fn plan(&self, opts: &BuildOptions) -> Result<Plan, Error> {
        let (globals, mut used) = self.global_args(opts)?;
        let lexer = Lexer::new(self.escape);
        let mut nodes = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let base_word = lexer
                .process_word(&stage.from.image, &globals)
                .map_err(|e| Error::new(format!("FROM: {e}"), stage.from_span))?;
            if base_word.is_empty() {
                return Err(Error::new(
                    format!("base name ({}) should not be blank", stage.from.image),
                    stage.from_span,
                )
                .with_help("set the ARG it uses with a default or --build-arg"));
            }
            let platform = match &stage.from.platform {
                None => None,
                Some(p) => {
                    let v = lexer.process_word(p, &globals).map_err(|e| {
                        Error::new(format!("FROM --platform: {e}"), stage.from_span)
                    })?;
                    Platform::parse(&v).map_err(|m| Error::new(m, stage.from_span))?;
                    Some(v)
                }
            };
            // Only earlier stages can be a base, as in BuildKit.
            let base = if base_word.eq_ignore_ascii_case("scratch") {
                Source::Scratch
            } else {
                let lower = base_word.to_lowercase();
                match self.stages[..stage.index]
                    .iter()
                    .find(|s| s.name.as_deref() == Some(lower.as_str()))
                {
                    Some(s) => Source::Stage(s.index),
                    None => Source::Image(base_word.clone()),
                }
            };
            let mut deps = Vec::new();
            if !matches!(base, Source::Scratch) {
                deps.push(Dependency {
                    kind: DepKind::From,
                    source: base.clone(),
                    line: stage.line,
                });
            }
            let mut scope = Scope::new(self, opts, &globals, Vec::new());
            for ins in &stage.instructions {
                let (ex, _) = scope.step(ins)?;
                self.collect_deps(stage.index, &ex, &mut deps)?;
            }
            used.extend(scope.used_build_args);
            nodes.push(StageNode {
                index: stage.index,
                name: stage.name.clone(),
                base,
                platform,
                deps,
            });
        }
        let target = self
            .target_index(opts.target.as_deref())
            .map_err(|(msg, help)| Error::new(msg, Span::default()).with_help(help))?;
        let order = topo_order(&nodes, target, &self.stages)?;
        let unused_build_args = opts
            .build_args
            .keys()
            .filter(|k| !used.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
            .cloned()
            .collect();
        Ok(Plan {
            stages: nodes,
            target,
            order,
            global_args: globals,
            unused_build_args,
        })
    }

    fn collect_deps(
        &self,
        me: usize,
        ins: &Instruction,
        deps: &mut Vec<Dependency>,
    ) -> Result<(), Error> {
        let mut push = |kind: DepKind, name: &str| -> Result<(), Error> {
            let source = match self.find_stage(name) {
                Some(i) if i == me => {
                    return Err(Error::new(
                        format!("stage {name:?} refers to itself"),
                        ins.span,
                    ))
                }
                Some(i) => Source::Stage(i),
                None => Source::Image(name.to_string()),
            };
            deps.push(Dependency {
                kind,
                source,
                line: ins.line,
            });
            Ok(())
        };
        match &ins.command {
            Command::Copy(c) => {
                if let Some(from) = &c.from {
                    push(DepKind::CopyFrom, from)?;
                }
            }
            Command::Run(r) => {
                for m in &r.mounts {
                    if let Some(from) = &m.from {
                        push(DepKind::MountFrom, from)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Where a stage's name points in its FROM line (for duplicate-name errors).
fn stage_name_span(src: &[u8], span: Span, name: &str) -> Span {
    let text =
        String::from_utf8_lossy(src.get(span.start..span.end).unwrap_or_default()).to_lowercase();
    match text.rfind(name) {
        Some(p) => Span::new(span.start + p, span.start + p + name.len()),
        None => span,
    }
}

/// Stages needed by `target`, each after its dependencies; fails on a cycle.
fn topo_order(nodes: &[StageNode], target: usize, stages: &[Stage]) -> Result<Vec<usize>, Error> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut mark = vec![Mark::New; nodes.len()];
    let mut order = Vec::new();
    // Iterative DFS: (stage, next dependency to look at).
    let mut stack = vec![(target, 0usize)];
    mark[target] = Mark::Active;
    while let Some(&mut (n, ref mut next)) = stack.last_mut() {
        let deps: Vec<usize> = nodes[n]
            .deps
            .iter()
            .filter_map(|d| match d.source {
                Source::Stage(i) => Some(i),
                _ => None,
            })
            .collect();
        if let Some(&d) = deps.get(*next) {
            *next += 1;
            match mark[d] {
                Mark::Done => {}
                Mark::Active => {
                    let name = stages[d].name.clone().unwrap_or_else(|| d.to_string());
                    return Err(Error::new(
                        format!("circular dependency between stages involving {name:?}"),
                        stages[d].from_span,
                    ));
                }
                Mark::New => {
                    mark[d] = Mark::Active;
                    stack.push((d, 0));
                }
            }
        } else {
            mark[n] = Mark::Done;
            order.push(n);
            stack.pop();
        }
    }
    Ok(order)
}

/// Where a stage, a `COPY --from` or a mount takes its files from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `FROM scratch`: nothing.
    Scratch,
    /// Another stage, by index.
    Stage(usize),
    /// An image reference.
    Image(String),
}

/// Why a stage depends on something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DepKind {
    /// Its base.
    From,
    /// `COPY --from`.
    CopyFrom,
    /// `RUN --mount=from=`.
    MountFrom,
}

/// One edge of the stage graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dependency {
    /// Why.
    pub kind: DepKind,
    /// On what.
    pub source: Source,
    /// The line that makes it.
    pub line: usize,
}

/// A stage in the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StageNode {
    /// Index into [`Dockerfile::stages`].
    pub index: usize,
    /// Stage name.
    pub name: Option<String>,
    /// The base after expansion.
    pub base: Source,
    /// `FROM --platform` after expansion.
    pub platform: Option<String>,
    /// What the stage needs: its base first, then `COPY --from` and mount sources in order.
    pub deps: Vec<Dependency>,
}

/// The stages of one build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Every stage, index-aligned with [`Dockerfile::stages`].
    pub stages: Vec<StageNode>,
    /// The target stage.
    pub target: usize,
    /// The stages the target needs, dependencies first, the target last. Stages not listed
    /// are never built.
    pub order: Vec<usize>,
    /// Values visible to `FROM` lines.
    pub global_args: Vec<(String, String)>,
    /// `--build-arg`s no ARG consumed (docker warns about these).
    pub unused_build_args: Vec<String>,
}

impl Plan {
    /// Groups [`Plan::order`] into waves: every stage of a wave depends only on earlier waves,
    /// so the stages of one wave can be built concurrently.
    pub fn waves(&self) -> Vec<Vec<usize>> {
        let mut level: BTreeMap<usize, usize> = BTreeMap::new();
        for &s in &self.order {
            let l = self.stages[s]
                .deps
                .iter()
                .filter_map(|d| match d.source {
                    Source::Stage(i) => level.get(&i).map(|l| l + 1),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            level.insert(s, l);
        }
        let depth = level.values().max().map_or(0, |m| m + 1);
        let mut waves = vec![Vec::new(); depth];
        for &s in &self.order {
            waves[level[&s]].push(s);
        }
        waves
    }
}

/// ARG and ENV state while walking one stage's instructions.
///
/// ENV values win over ARG values of the same name; an `ARG` takes its value from
/// `--build-arg`, else its default (expanded), else the global ARG of the same name, else an
/// automatic platform ARG; an ARG with none of these is declared but unset.
#[derive(Clone, Debug)]
pub struct Scope {
    lexer: Lexer,
    build_args: BTreeMap<String, String>,
    globals: Vec<(String, String)>,
    platform_args: Vec<(String, String)>,
    /// Declared ARGs with a value, in declaration order.
    args: Vec<(String, String)>,
    /// The environment (from the base image, then ENV).
    env: Vec<(String, String)>,
    workdir: String,
    /// `--build-arg`s this stage consumed.
    pub used_build_args: BTreeSet<String>,
}

/// Variable lookup for expansion: ENV over ARG.
struct Layered<'a>(&'a Scope);

impl Env for Layered<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.0.env.lookup(name).or_else(|| self.0.args.lookup(name))
    }
}

impl Scope {
    /// A scope for a stage whose base image has `base_env` (`KEY=value` pairs in order).
    pub fn new(
        df: &Dockerfile,
        opts: &BuildOptions,
        globals: &[(String, String)],
        base_env: Vec<(String, String)>,
    ) -> Scope {
        Scope {
            lexer: Lexer::new(df.escape),
            build_args: opts.build_args.clone(),
            globals: globals.to_vec(),
            platform_args: opts.platform_args(),
            args: Vec::new(),
            env: base_env,
            workdir: "/".to_string(),
            used_build_args: BTreeSet::new(),
        }
    }

    /// The environment a `RUN` sees: ENV, then declared ARGs not shadowed by ENV, then proxy
    /// build args given on the command line (always passed, never recorded).
    pub fn run_env(&self) -> Vec<(String, String)> {
        let mut out = self.env.clone();
        for (k, v) in &self.args {
            if self.env.lookup(k).is_none() {
                out.push((k.clone(), v.clone()));
            }
        }
        for p in PROXY_ARGS {
            if let Some(v) = self.build_args.get(*p) {
                if out.lookup(p).is_none() {
                    out.push((p.to_string(), v.clone()));
                }
            }
        }
        dedup_last_wins(out)
    }

    /// The declared ARGs with a value, in order (what goes into a RUN's cache key).
    pub fn args(&self) -> &[(String, String)] {
        &self.args
    }

    /// The environment set by the base image and ENV.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The working directory in effect.
    pub fn workdir(&self) -> &str {
        &self.workdir
    }

    /// Starts from the base image's working directory.
    pub fn set_workdir(&mut self, dir: &str) {
        self.workdir = join_workdir("/", dir);
    }

    /// Expands one word with the values in effect.
    pub fn expand(&self, word: &str) -> Result<String, String> {
        self.lexer
            .process_word(word, &Layered(self))
            .map_err(|e| e.0)
    }

    /// Expands `ins` with the values in effect, then applies its effect on ARG/ENV/WORKDIR.
    /// Returns the expanded instruction and the names of unset variables it referenced.
    pub fn step(&mut self, ins: &Instruction) -> Result<(Instruction, BTreeSet<String>), Error> {
        let mut undefined = BTreeSet::new();
        let fail = |e: String| Error::new(format!("{}: {e}", ins.command.keyword()), ins.span);
        let command = {
            let mut word = |w: &str| -> Result<String, Error> {
                let ex = self
                    .lexer
                    .process_word_with_matches(w, &Layered(self))
                    .map_err(|e| fail(e.0))?;
                undefined.extend(ex.unmatched);
                Ok(ex.word)
            };
            match &ins.command {
                Command::Env(kvs) => Command::Env(expand_kvs(kvs, &mut word)?),
                Command::Label(kvs) => Command::Label(expand_kvs(kvs, &mut word)?),
                Command::User(u) => Command::User(word(u)?),
                Command::Workdir(w) => Command::Workdir(word(w)?),
                Command::Stopsignal(s) => {
                    let s = word(s)?;
                    instructions::parse_signal(&s).map_err(fail)?;
                    Command::Stopsignal(s)
                }
                Command::Volume(v) => {
                    Command::Volume(v.iter().map(|x| word(x)).collect::<Result<_, _>>()?)
                }
                Command::Copy(c) => Command::Copy(expand_copy(c, &mut word, &fail)?),
                Command::Run(r) => {
                    let mut r = r.clone();
                    for m in &mut r.mounts {
                        expand_mount(m, &mut word, &fail)?;
                    }
                    Command::Run(r)
                }
                Command::Expose(ports) => {
                    let mut out = Vec::new();
                    for p in ports {
                        let words = self
                            .lexer
                            .process_words(p, &Layered(self))
                            .map_err(|e| fail(e.0))?;
                        for w in words {
                            PortSpec::parse(&w).map_err(fail)?;
                            out.push(w);
                        }
                    }
                    Command::Expose(out)
                }
                other => other.clone(),
            }
        };
        self.apply(&command, ins.span)?;
        Ok((
            Instruction {
                command,
                ..ins.clone()
            },
            undefined,
        ))
    }

    fn apply(&mut self, command: &Command, span: Span) -> Result<(), Error> {
        match command {
            Command::Env(kvs) => {
                for kv in kvs {
                    self.env.retain(|(k, _)| k != &kv.key);
                    self.env.push((kv.key.clone(), kv.value.clone()));
                }
            }
            Command::Arg(defs) => {
                for def in defs {
                    let value = if let Some(v) = self.build_args.get(&def.name) {
                        self.used_build_args.insert(def.name.clone());
                        Some(v.clone())
                    } else if let Some(d) = &def.default {
                        Some(
                            self.expand(d)
                                .map_err(|e| Error::new(format!("ARG {}: {e}", def.name), span))?,
                        )
                    } else {
                        self.globals
                            .lookup(&def.name)
                            .or_else(|| self.platform_args.lookup(&def.name))
                            .map(str::to_string)
                    };
                    self.args.retain(|(k, _)| k != &def.name);
                    if let Some(v) = value {
                        self.args.push((def.name.clone(), v));
                    }
                }
            }
            Command::Workdir(w) => self.workdir = join_workdir(&self.workdir, w),
            _ => {}
        }
        Ok(())
    }
}

/// `WORKDIR` semantics: absolute paths replace, relative ones are joined; the result is
/// cleaned.
pub fn join_workdir(current: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{current}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for seg in joined.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

fn dedup_last_wins(v: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(v.len());
    for (k, val) in v {
        out.retain(|(x, _)| x != &k);
        out.push((k, val));
    }
    out
}

fn expand_kvs(
    kvs: &[KeyValue],
    word: &mut impl FnMut(&str) -> Result<String, Error>,
) -> Result<Vec<KeyValue>, Error> {
    kvs.iter()
        .map(|kv| {
            Ok(KeyValue {
                key: word(&kv.key)?,
                value: word(&kv.value)?,
            })
        })
        .collect()
}

fn expand_opt(
    v: &Option<String>,
    word: &mut impl FnMut(&str) -> Result<String, Error>,
) -> Result<Option<String>, Error> {
    v.as_deref().map(&mut *word).transpose()
}

fn expand_copy(
    c: &CopyCmd,
    word: &mut impl FnMut(&str) -> Result<String, Error>,
    fail: &impl Fn(String) -> Error,
) -> Result<CopyCmd, Error> {
    let mut out = c.clone();
    out.sources = c
        .sources
        .iter()
        .map(|s| {
            // Heredoc sources name inline files; they are not paths to expand.
            if s.starts_with("<<") && c.heredocs.iter().any(|h| s.ends_with(h.name.as_str())) {
                Ok(s.clone())
            } else {
                word(s)
            }
        })
        .collect::<Result<_, _>>()?;
    out.dest = word(&c.dest)?;
    out.from = expand_opt(&c.from, word)?;
    out.chown = expand_opt(&c.chown, word)?;
    out.chmod = expand_opt(&c.chmod, word)?;
    if let Some(m) = &out.chmod {
        Chmod::parse(m).map_err(fail)?;
    }
    out.checksum = expand_opt(&c.checksum, word)?;
    out.excludes = c
        .excludes
        .iter()
        .map(|e| word(e))
        .collect::<Result<_, _>>()?;
    Ok(out)
}

fn expand_mount(
    m: &mut Mount,
    word: &mut impl FnMut(&str) -> Result<String, Error>,
    fail: &impl Fn(String) -> Error,
) -> Result<(), Error> {
    for field in [
        &mut m.target,
        &mut m.source,
        &mut m.from,
        &mut m.id,
        &mut m.mode,
        &mut m.uid,
        &mut m.gid,
        &mut m.env,
        &mut m.size,
    ] {
        *field = expand_opt(field, word)?;
    }
    m.check_values()
        .map_err(|msg| fail(format!("invalid --mount: {msg}")))
}

#[cfg(test)]
mod tests;
