//! Running a build: stages in dependency order, each instruction applied to an image state.

use crate::archive::{self, ArchiveError};
use crate::cache::{self, CachedLayer, Inputs, Record, StepCache};
use crate::cache_io::{self, CacheExport, CacheLocation, Imported};
use crate::context::context_tree;
use crate::copy::{self, Content, CopyError, CopyRequest, Planned, SourceTree, SrcNode};
use crate::fetch::{self, FetchError};
use crate::image::{self, ImageError, ImageState};
use crate::rootfs::{clean, Kind};
use crate::users::{self, Owner};
use kiln_context::ignore::Matcher;
use kiln_dockerfile::instructions::{
    Chmod, Command, CommandLine, CopyCmd, Healthcheck, Instruction,
};
use kiln_dockerfile::stages::{BuildOptions, Dockerfile, Scope, Source};
use kiln_dockerfile::{Error as DfError, Span};
use kiln_oci::digest::Digest;
use kiln_oci::layer::LayerInfo;
use kiln_oci::reference::Reference;
use kiln_oci::store::Store;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile's bytes.
    pub dockerfile: Vec<u8>,
    /// The Dockerfile's path, for `<Dockerfile>.dockerignore`; `None` when read from stdin.
    pub dockerfile_path: Option<PathBuf>,
    /// Build args, target and platform.
    pub options: BuildOptions,
    /// `--label` values, applied to the final image.
    pub labels: BTreeMap<String, String>,
    /// `SOURCE_DATE_EPOCH`: timestamps of new history, config and layer entries.
    pub source_date_epoch: Option<i64>,
    /// Names to tag the result with.
    pub tags: Vec<Reference>,
    /// Network of RUN steps that do not say (`--network`; the host's by default).
    pub network: kiln_dockerfile::instructions::NetworkMode,
    /// When to fetch a `FROM` image from its registry.
    pub pull: PullPolicy,
    /// Registries reached over plain http besides loopback (`--insecure-registry`).
    pub insecure_registries: Vec<String>,
    /// Logins for the registries `FROM` images come from.
    pub credentials: Vec<(String, kiln_registry::Credentials)>,
    /// `--no-cache`: run every step (results are still recorded for the next build).
    pub no_cache: bool,
    /// `--no-cache-filter`: stages (by name or index) whose steps always run.
    pub no_cache_filter: Vec<String>,
    /// `--jobs`: stages built at once (0: one per CPU).
    pub jobs: usize,
    /// `--cache-from`: caches to reuse steps from.
    pub cache_from: Vec<CacheLocation>,
    /// `--cache-to`: where to export this build's steps.
    pub cache_to: Vec<CacheExport>,
    /// `--squash` / `--squash-all`.
    pub squash: Squash,
}

/// Merging the result's layers into one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Squash {
    /// Keep every layer.
    #[default]
    No,
    /// `--squash`: the target stage's new layers become one, on top of its base's layers.
    New,
    /// `--squash-all`: the whole image is one layer.
    All,
}

/// `--pull`: when a base image is fetched from its registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Only when the store does not have it.
    #[default]
    Missing,
    /// Every build, so a moved tag is followed.
    Always,
    /// Never: the store must have it.
    Never,
}

impl BuildRequest {
    /// A request with default options.
    pub fn new(context: PathBuf, dockerfile: Vec<u8>) -> BuildRequest {
        BuildRequest {
            context,
            dockerfile,
            dockerfile_path: None,
            options: BuildOptions::default(),
            labels: BTreeMap::new(),
            source_date_epoch: None,
            tags: Vec::new(),
            network: kiln_dockerfile::instructions::NetworkMode::Default,
            pull: PullPolicy::Missing,
            insecure_registries: Vec::new(),
            credentials: Vec::new(),
            no_cache: false,
            no_cache_filter: Vec::new(),
            jobs: 0,
            cache_from: Vec::new(),
            cache_to: Vec::new(),
            squash: Squash::No,
        }
    }
}

/// What the build produced.
#[derive(Clone, Debug)]
pub struct Built {
    /// Digest of the image manifest.
    pub manifest: kiln_oci::digest::Digest,
    /// Size of the manifest.
    pub manifest_size: u64,
    /// Digest of the image config (the image ID docker shows).
    pub config: kiln_oci::digest::Digest,
    /// Warnings worth showing (unused build args, ...).
    pub warnings: Vec<String>,
}

/// Progress of a build, for the CLI to show. Stages may run concurrently, so every event of
/// a step carries the step's `id` (1, 2, ... in the order steps start).
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// A step starts: `[stage step/total] text`.
    Step {
        /// The step's id.
        id: usize,
        /// Stage label with a trailing space (`build `, `stage-1 `), or empty for a lone
        /// unnamed stage.
        stage: &'a str,
        /// 1-based step number within the stage.
        step: usize,
        /// Steps in the stage.
        total: usize,
        /// The instruction as written.
        text: &'a str,
    },
    /// Whether the current step's result came from the cache; for a miss, why not.
    Cache {
        /// The step's id.
        id: usize,
        /// Found in the cache: the step does no work.
        hit: bool,
        /// For a miss, the input that changed since the last build (or `--no-cache`).
        reason: Option<&'a str>,
    },
    /// A line of a RUN step's output.
    Output {
        /// The step's id.
        id: usize,
        /// The line.
        line: &'a str,
    },
    /// A step finished.
    Done {
        /// The step's id.
        id: usize,
        /// How long it took.
        elapsed: Duration,
        /// It came from the cache.
        cached: bool,
    },
    /// Something the user should know.
    Warning(&'a str),
    /// What the build did besides its steps (a cache export).
    Info(&'a str),
}

/// Receives [`Event`]s (from one thread at a time).
pub trait Progress: Send {
    /// One event.
    fn event(&mut self, event: Event);
}

/// Discards progress.
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&mut self, _: Event) {}
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile has errors (with spans into it).
    #[error("the Dockerfile has {} error(s)", .0.len())]
    Dockerfile(Vec<DfError>),
    /// An instruction failed.
    #[error("{message}")]
    Step {
        /// Where in the Dockerfile.
        span: Span,
        /// What went wrong.
        message: String,
        /// What to do about it.
        help: Option<String>,
    },
    /// The context could not be read.
    #[error(transparent)]
    Context(#[from] kiln_context::walk::ContextError),
    /// The store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// `--cache-to` failed (the image itself was built and tagged).
    #[error("exporting the build cache: {0}")]
    CacheExport(String),
    /// Stopped by [`crate::run::interrupt`] (Ctrl-C); everything the build made was removed.
    #[error("interrupted")]
    Interrupted,
}

impl BuildError {
    fn step(ins: &Instruction, message: impl Into<String>) -> BuildError {
        BuildError::Step {
            span: ins.span,
            message: message.into(),
            help: None,
        }
    }
}

impl From<DfError> for BuildError {
    fn from(e: DfError) -> Self {
        BuildError::Dockerfile(vec![e])
    }
}

/// Builds the request's target stage into `store` and tags it.
pub fn build(
    store: &Store,
    req: &BuildRequest,
    progress: &mut dyn Progress,
) -> Result<Built, BuildError> {
    build_with(store, req, progress)
}

/// Where a stage's steps report: the build's one progress sink and step numbering.
struct StageProgress<'p, 'q, 'r> {
    sink: &'p Mutex<&'q mut (dyn Progress + 'r)>,
    ids: &'p AtomicUsize,
    id: usize,
}

impl StageProgress<'_, '_, '_> {
    fn send(&self, e: Event) {
        if let Ok(mut p) = self.sink.lock() {
            p.event(e);
        }
    }

    fn step(&mut self, stage: &str, step: usize, total: usize, text: &str) {
        self.id = self.ids.fetch_add(1, Ordering::SeqCst) + 1;
        self.send(Event::Step {
            id: self.id,
            stage,
            step,
            total,
            text,
        });
    }

    fn cache(&self, hit: bool, reason: Option<&str>) {
        self.send(Event::Cache {
            id: self.id,
            hit,
            reason,
        });
    }

    fn output(&self, line: &str) {
        self.send(Event::Output { id: self.id, line });
    }

    fn done(&self, elapsed: Duration, cached: bool) {
        self.send(Event::Done {
            id: self.id,
            elapsed,
            cached,
        });
    }

    fn warning(&self, w: &str) {
        self.send(Event::Warning(w));
    }
}

fn build_with(
    store: &Store,
    req: &BuildRequest,
    progress: &mut dyn Progress,
) -> Result<Built, BuildError> {
    let df = Dockerfile::parse(&req.dockerfile).map_err(BuildError::Dockerfile)?;
    let plan = df.plan(&req.options)?;
    // Blobs written before the tag lands are unreachable; the shared lock keeps `prune` (which
    // takes it exclusively) from deleting them under us.
    let _lock = store.lock_shared().map_err(ImageError::from)?;
    refuse_unsupported(&df, &plan.order)?;
    let mut warnings = Vec::new();
    if !plan.unused_build_args.is_empty() {
        let w = format!(
            "build args not consumed by any ARG: {}",
            plan.unused_build_args.join(", ")
        );
        progress.event(Event::Warning(&w));
        warnings.push(w);
    }
    let now = match req.source_date_epoch {
        Some(e) => (e, 0),
        None => {
            let d = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            (d.as_secs() as i64, d.subsec_nanos())
        }
    };
    let mut imports = Vec::new();
    for from in &req.cache_from {
        let opened = match from {
            CacheLocation::Local(dir) => Imported::open_local(dir),
            CacheLocation::Registry(r) => Imported::open_registry(registry_client(req), r),
            CacheLocation::Inline => Err("type=inline is for --cache-to".into()),
        };
        match opened {
            Ok(c) => imports.push(c),
            // A missing cache is what a first build in CI sees: a warning, not a failure.
            Err(e) => {
                let w = format!("--cache-from: {e}; building without it");
                progress.event(Event::Warning(&w));
                warnings.push(w);
            }
        }
    }
    let cache =
        StepCache::open(store.root(), &build_id(req, &df, plan.target)).with_imports(imports);
    let context = Mutex::new(None);
    let snapshots = Mutex::new(None);
    let sink = Mutex::new(&mut *progress);
    let ids = AtomicUsize::new(0);
    let mut stages: BTreeMap<usize, ImageState> = BTreeMap::new();
    let mut stage_keys: BTreeMap<usize, Digest> = BTreeMap::new();
    // Layers each stage starts with (what --squash keeps).
    let mut base_layers: BTreeMap<usize, usize> = BTreeMap::new();

    // Every base image is pulled and loaded once, however many stages start from it.
    let mut bases: BTreeMap<&str, (ImageState, Digest)> = BTreeMap::new();
    for &index in &plan.order {
        if let Source::Image(name) = &plan.stages[index].base {
            if bases.contains_key(name.as_str()) {
                continue;
            }
            let state = ensure_pulled(store, req, name)
                .and_then(|()| image::load(store, name))
                .map_err(|e| BuildError::Step {
                    span: df.stages[index].from_span,
                    message: e.to_string(),
                    help: e.help(),
                })?;
            let key = state.content_key()?;
            bases.insert(name, (state, key));
        }
    }

    // Stages of one wave depend only on earlier waves: up to `jobs` of them run at once.
    let jobs = match req.jobs {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    for wave in plan.waves() {
        for chunk in wave.chunks(jobs) {
            let results: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|&index| {
                        let (base, base_key) = match &plan.stages[index].base {
                            Source::Scratch => {
                                let p = &req.options.target_platform;
                                (
                                    ImageState::scratch(p),
                                    cache::base_key("scratch", &[p.to_string().as_bytes()]),
                                )
                            }
                            Source::Stage(i) => (stages[i].clone(), stage_keys[i].clone()),
                            Source::Image(name) => bases[name.as_str()].clone(),
                        };
                        base_layers.insert(index, base.layer_count());
                        // The finished stages this one may COPY --from.
                        let needed = plan.stages[index]
                            .deps
                            .iter()
                            .filter_map(|d| match d.source {
                                Source::Stage(i) => Some((i, stages[&i].clone())),
                                _ => None,
                            })
                            .collect();
                        let mut ctx = Ctx {
                            store,
                            req,
                            df: &df,
                            now,
                            step_now: now,
                            context: &context,
                            stages: needed,
                            tmp: store.root().join("tmp"),
                            snapshots: &snapshots,
                            cache: &cache,
                        };
                        let mut progress = StageProgress {
                            sink: &sink,
                            ids: &ids,
                            id: 0,
                        };
                        let globals = &plan.global_args;
                        scope.spawn(move || {
                            let stage = &ctx.df.stages[index];
                            // BuildKit's labels: the stage name, `stage-N` when unnamed,
                            // nothing for a lone stage.
                            let label = match (&stage.name, ctx.df.stages.len()) {
                                (Some(n), _) => format!("{n} "),
                                (None, 1) => String::new(),
                                (None, _) => format!("stage-{index} "),
                            };
                            ctx.run_stage(index, base, base_key, globals, &label, &mut progress)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join()).collect()
            });
            for (&index, result) in chunk.iter().zip(results) {
                let (state, key) = result.map_err(|_| BuildError::Step {
                    span: df.stages[index].from_span,
                    message: "the stage's worker thread panicked".into(),
                    help: None,
                })??;
                stages.insert(index, state);
                stage_keys.insert(index, key);
            }
        }
    }
    cache.finish();
    // mode=min exports the steps of the final image: the target stage and those it is FROM.
    let mut chain = vec![plan.target];
    while let Source::Stage(i) = &plan.stages[*chain.last().expect("non-empty")].base {
        chain.push(*i);
    }
    let steps_of = |max: bool| -> Vec<(Digest, Record)> {
        cache
            .steps()
            .into_iter()
            .filter(|(stage, _, _)| max || chain.contains(stage))
            .map(|(_, k, r)| (k, r))
            .collect()
    };
    let mut last = stages.remove(&plan.target).expect("target built");
    let squash_from = match req.squash {
        Squash::No => None,
        Squash::New => Some(base_layers[&plan.target]),
        Squash::All => Some(0),
    };
    if let Some(from) = squash_from {
        last.squash(store, from, req.source_date_epoch, now)?;
    }
    if req
        .cache_to
        .iter()
        .any(|c| c.location == CacheLocation::Inline)
    {
        cache_io::add_inline(&mut last.config.0, &steps_of(false));
    }
    for (k, v) in &req.labels {
        last.config.labels_mut().insert(k.clone(), v.clone());
    }
    // The image is as new as its newest step: a rebuild that ran nothing gives the same ID.
    let created = last.newest_step().unwrap_or(now);
    last.config.set_created(created);
    let (manifest, manifest_size, config) = last.commit(store)?;
    for tag in &req.tags {
        store
            .set_tag(
                &tag.to_string(),
                &kiln_oci::image::descriptor(
                    kiln_oci::image::media_type::OCI_MANIFEST,
                    &manifest,
                    manifest_size,
                ),
            )
            .map_err(ImageError::from)?;
    }
    for export in &req.cache_to {
        if export.location == CacheLocation::Inline {
            continue;
        }
        let line = cache_io::export(store, &steps_of(export.max), &export.location, || {
            registry_client(req)
        })
        .map_err(BuildError::CacheExport)?;
        progress.event(Event::Info(&line));
    }
    Ok(Built {
        manifest,
        manifest_size,
        config,
        warnings,
    })
}

/// Fetches a base image from its registry as the pull policy says (archive transports and
/// images already in the store need nothing).
fn ensure_pulled(store: &Store, req: &BuildRequest, name: &str) -> Result<(), ImageError> {
    if req.pull == PullPolicy::Never
        || ["oci:", "oci-archive:", "docker-archive:"]
            .iter()
            .any(|p| name.starts_with(p))
    {
        return Ok(());
    }
    let reference = Reference::parse(name)?;
    if req.pull == PullPolicy::Missing && store.resolve(&reference.to_string())?.is_some() {
        return Ok(());
    }
    let p = &req.options.target_platform;
    let mut platform = kiln_registry::Platform::new(&p.os, &p.architecture);
    if let Some(v) = &p.variant {
        platform = platform.with_variant(v);
    }
    registry_client(req)
        .pull(store, &reference, &platform)
        .map_err(|e| ImageError::Unsupported(format!("pulling {}: {e}", reference.familiar())))?;
    Ok(())
}

/// A registry client with the request's logins and insecure registries.
fn registry_client(req: &BuildRequest) -> kiln_registry::Client {
    let mut client = kiln_registry::Client::new().with_insecure(req.insecure_registries.clone());
    for (domain, c) in &req.credentials {
        client = client.with_credentials(domain, c.clone());
    }
    client
}

/// RUN features that come with later work fail before any work is done.
fn refuse_unsupported(df: &Dockerfile, order: &[usize]) -> Result<(), BuildError> {
    let mut errors = Vec::new();
    for &i in order {
        for ins in &df.stages[i].instructions {
            let Command::Run(r) = &ins.command else {
                continue;
            };
            let unsupported = if !r.mounts.is_empty() {
                Some("RUN --mount is not supported yet")
            } else if r.security == Some(kiln_dockerfile::instructions::Security::Insecure) {
                Some("RUN --security=insecure is not supported")
            } else if !r.devices.is_empty() {
                Some("RUN --device is not supported")
            } else {
                None
            };
            if let Some(msg) = unsupported {
                errors.push(DfError::new(msg, ins.span));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(BuildError::Dockerfile(errors))
    }
}

/// Names one build of a Dockerfile in a context, for `--explain-cache`'s memory of the last
/// build's inputs.
fn build_id(req: &BuildRequest, df: &Dockerfile, target: usize) -> String {
    let context = std::fs::canonicalize(&req.context).unwrap_or_else(|_| req.context.clone());
    let dockerfile = req
        .dockerfile_path
        .as_ref()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
    let target = df.stages[target]
        .name
        .clone()
        .unwrap_or_else(|| target.to_string());
    format!(
        "{}\0{}\0{target}",
        context.display(),
        dockerfile.map_or_else(|| "-".into(), |p| p.display().to_string())
    )
}

/// One stage's build: its own view of the stages it reads, and what all stages share.
struct Ctx<'a> {
    store: &'a Store,
    req: &'a BuildRequest,
    df: &'a Dockerfile,
    now: (i64, u32),
    /// The time of the current step's history entry: now, or when a cached step first ran.
    step_now: (i64, u32),
    /// The build context, read once by the first stage that needs it.
    context: &'a Mutex<Option<SourceTree>>,
    /// Finished stages this one reads (and images it COPYs from).
    stages: BTreeMap<usize, ImageState>,
    tmp: PathBuf,
    snapshots: &'a Mutex<Option<Arc<kiln_snapshot::snapshots::Snapshots>>>,
    cache: &'a StepCache,
}

/// What a step needs before the cache is asked: its inputs, and for COPY/ADD the planned
/// entries (planning is how the files it selects are known).
struct Prepared {
    inputs: Inputs,
    planned: Option<Vec<Planned>>,
}

impl Ctx<'_> {
    fn run_stage(
        &mut self,
        index: usize,
        mut state: ImageState,
        mut key: Digest,
        globals: &[(String, String)],
        label: &str,
        progress: &mut StageProgress,
    ) -> Result<(ImageState, Digest), BuildError> {
        let stage = &self.df.stages[index];
        let base_env = state.config.env_pairs();
        let mut scope = Scope::new(self.df, &self.req.options, globals, base_env);
        if let Some(wd) = state.config.working_dir() {
            scope.set_workdir(&wd);
        }
        // ONBUILD triggers of the base run first, then are cleared from the new image.
        let triggers = state.config.take_onbuild();
        let mut steps: Vec<Instruction> = Vec::new();
        for t in &triggers {
            let parsed =
                Dockerfile::parse(format!("FROM scratch\n{t}\n").as_bytes()).map_err(|e| {
                    BuildError::Step {
                        span: stage.from_span,
                        message: format!(
                            "ONBUILD trigger {t:?} of the base image: {}",
                            e[0].message
                        ),
                        help: None,
                    }
                })?;
            let mut ins = parsed.stages[0].instructions[0].clone();
            ins.span = stage.from_span;
            steps.push(ins);
        }
        steps.extend(stage.instructions.iter().cloned());
        let mut cmd_set_here = false;
        let total = steps.len();
        let no_cache = self.req.no_cache
            || self
                .req
                .no_cache_filter
                .iter()
                .any(|f| stage.name.as_deref() == Some(f.as_str()) || *f == index.to_string());
        for (n, ins) in steps.iter().enumerate() {
            if crate::run::interrupted() {
                return Err(BuildError::Interrupted);
            }
            progress.step(label, n + 1, total, ins.original.trim());
            let started = Instant::now();
            let (ex, _) = scope.step(ins)?;
            let prepared = self.prepare(&mut state, &scope, &ex, &key)?;
            let new_key = prepared.inputs.key();
            let position = format!("{index}/{n}");
            let cached = if no_cache {
                None
            } else {
                self.cache.lookup(self.store, &new_key)
            };
            let reason = match (&cached, no_cache) {
                (Some(_), _) => None,
                (None, true) => Some("--no-cache".to_owned()),
                (None, false) => Some(self.cache.explain_miss(&position, &prepared.inputs)),
            };
            progress.cache(cached.is_some(), reason.as_deref());
            self.step_now = cached.as_ref().map_or(self.now, |r| r.created);
            let made = self.apply(
                &mut state,
                &scope,
                &ex,
                &mut cmd_set_here,
                progress,
                prepared.planned,
                cached.as_ref(),
            )?;
            let hit = cached.is_some();
            let record = match cached {
                Some(r) => r,
                None => {
                    let record = Record {
                        created: self.now,
                        layer: made.as_ref().map(CachedLayer::of),
                    };
                    // A record that cannot be written only costs the next build time.
                    if let Err(e) = self.cache.insert(&new_key, &record) {
                        progress.warning(&format!(
                            "could not record the step in the build cache: {e}"
                        ));
                    }
                    record
                }
            };
            self.cache.used(index, &new_key, &record);
            self.cache.note(&position, &prepared.inputs);
            key = new_key;
            progress.done(started.elapsed(), hit);
        }
        Ok((state, key))
    }

    /// The inputs of `ins` after the step whose key is `parent`.
    fn prepare(
        &mut self,
        state: &mut ImageState,
        scope: &Scope,
        ins: &Instruction,
        parent: &Digest,
    ) -> Result<Prepared, BuildError> {
        let mut inputs = Inputs::after(parent);
        let canonical = serde_json::to_string(&ins.command)
            .map_err(|e| BuildError::step(ins, format!("describing the step: {e}")))?;
        inputs.push("instruction", canonical);
        let planned = match &ins.command {
            Command::Copy(cp) => {
                let planned = self.plan_copy(state, scope, ins, cp)?;
                let blobs = self.store.root().join("blobs");
                let mut groups: BTreeMap<(u64, u64), &str> = BTreeMap::new();
                for p in &planned {
                    let n = &p.node;
                    let content = self
                        .cache
                        .content_digest(p, &blobs)
                        .map_err(|e| BuildError::step(ins, format!("reading {}: {e}", p.path)))?;
                    // Two names of one file stay one file: the group is part of the input.
                    let group = n
                        .link_key
                        .map(|k| *groups.entry(k).or_insert(p.path.as_str()))
                        .unwrap_or("");
                    let xattrs: Vec<String> = n
                        .xattrs
                        .iter()
                        .map(|(k, v)| format!("{k}={}", Digest::of(v)))
                        .collect();
                    inputs.push(
                        format!("file /{}", p.path),
                        format!(
                            "{:?} {:o} {}:{} {} {} [{}] {group}",
                            n.kind,
                            n.mode,
                            n.uid,
                            n.gid,
                            n.size,
                            content.map_or_else(|| "-".to_owned(), |d| d.to_string()),
                            xattrs.join(",")
                        ),
                    );
                }
                Some(planned)
            }
            Command::Run(_) => {
                for (k, v) in scope.run_env() {
                    inputs.push(format!("env {k}"), cache::hidden(&v));
                }
                inputs.push("network", format!("{:?}", self.req.network));
                None
            }
            // Everything else (WORKDIR's directory included) follows from the instruction and
            // the image, which the parent key already fixes.
            _ => None,
        };
        Ok(Prepared { inputs, planned })
    }

    /// Applies one step to `state`; returns the layer it wrote, if any. With `cached`, the
    /// step's layer comes from the cache and no files are read or commands run.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        state: &mut ImageState,
        scope: &Scope,
        ins: &Instruction,
        cmd_set_here: &mut bool,
        progress: &mut StageProgress,
        planned: Option<Vec<Planned>>,
        cached: Option<&Record>,
    ) -> Result<Option<LayerInfo>, BuildError> {
        let created_by = history_text(ins);
        if let Some(record) = cached {
            if let Command::Copy(_) | Command::Run(_) | Command::Workdir(_) = &ins.command {
                if let Command::Workdir(_) = &ins.command {
                    state.config.set_working_dir(scope.workdir());
                }
                match &record.layer {
                    Some(layer) => self.push_layer(state, layer.info(), &created_by)?,
                    None => state.add_empty_history(
                        &created_by,
                        self.req.source_date_epoch,
                        self.step_now,
                    ),
                }
                return Ok(None);
            }
        }
        if let Command::Run(r) = &ins.command {
            return self.run(state, scope, ins, r, &created_by, progress);
        }
        let c = &mut state.config;
        match &ins.command {
            Command::Copy(cp) => {
                let entries = match planned {
                    Some(p) => p,
                    None => self.plan_copy(state, scope, ins, cp)?,
                };
                return self.commit_layer(state, &entries, &created_by).map(Some);
            }
            Command::Workdir(_) => {
                let wd = scope.workdir().to_string();
                c.set_working_dir(&wd);
                // The directory is created when missing, owned by the current USER.
                let rootfs = state.rootfs(self.store)?;
                if !rootfs.is_dir(&wd) {
                    let owner = match state.config.user() {
                        Some(u) if !u.is_empty() => self.owner_of(state, ins, &u)?,
                        _ => Owner { uid: 0, gid: 0 },
                    };
                    let dir = SrcNode::dir(0o755, owner.uid, owner.gid, self.now);
                    let tree = SourceTree::new(dir.clone());
                    let req = CopyRequest {
                        keyword: "WORKDIR",
                        sources: &[".".to_string()],
                        dest: &format!("{wd}/"),
                        workdir: "/",
                        owner: Some(owner),
                        chmod: None,
                        excludes: &[],
                        parents: false,
                        preserve_owner: false,
                        now: self.now,
                        from_context: false,
                    };
                    let rootfs = state.rootfs(self.store)?;
                    let mut entries = copy::plan_copy(&tree, rootfs, &req)
                        .map_err(|e| BuildError::step(ins, format!("WORKDIR: {e}")))?;
                    if let Some(last) = entries.iter_mut().find(|p| p.path == clean(&wd)) {
                        last.node = dir;
                    }
                    return self.commit_layer(state, &entries, &created_by).map(Some);
                }
            }
            Command::Env(kvs) => {
                for kv in kvs {
                    c.set_env(&kv.key, &kv.value);
                }
            }
            Command::Label(kvs) => {
                for kv in kvs {
                    c.labels_mut().insert(kv.key.clone(), kv.value.clone());
                }
            }
            Command::Maintainer(m) => c.set_author(m),
            Command::Expose(ports) => {
                for p in ports {
                    let spec = kiln_dockerfile::instructions::PortSpec::parse(p)
                        .map_err(|m| BuildError::step(ins, m))?;
                    for key in spec.config_keys() {
                        c.add_exposed_port(&key);
                    }
                }
            }
            Command::Volume(vs) => {
                for v in vs {
                    c.add_volume(v);
                }
            }
            Command::User(u) => c.set_user(u),
            Command::Stopsignal(s) => c.set_stop_signal(s),
            Command::Shell(sh) => c.set_shell(sh.clone()),
            Command::Cmd(cl) => {
                let argv = argv_of(cl, &c.shell());
                c.set_cmd(Some(argv));
                c.mark_args_escaped();
                *cmd_set_here = true;
            }
            Command::Entrypoint(cl) => {
                let argv = argv_of(cl, &c.shell());
                c.set_entrypoint(Some(argv));
                c.mark_args_escaped();
                // A CMD inherited from the base makes no sense with a new ENTRYPOINT.
                if !*cmd_set_here {
                    c.set_cmd(None);
                }
            }
            Command::Healthcheck(h) => match h {
                Healthcheck::None => c.set_healthcheck_none(),
                Healthcheck::Cmd {
                    command,
                    interval_ns,
                    timeout_ns,
                    start_period_ns,
                    start_interval_ns,
                    retries,
                } => {
                    let test = match command {
                        CommandLine::Exec(v) => std::iter::once("CMD".to_string())
                            .chain(v.iter().cloned())
                            .collect(),
                        CommandLine::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                    };
                    c.set_healthcheck(
                        test,
                        *interval_ns,
                        *timeout_ns,
                        *start_period_ns,
                        *start_interval_ns,
                        *retries,
                    );
                }
            },
            Command::Onbuild(o) => c.add_onbuild(&o.expression),
            Command::Arg(_) => return Ok(None), // no history entry, as BuildKit does
            Command::From(_) | Command::Run(_) => {
                return Err(BuildError::step(
                    ins,
                    format!("{} is not supported here", ins.command.keyword()),
                ))
            }
        }
        state.add_empty_history(&created_by, self.req.source_date_epoch, self.step_now);
        Ok(None)
    }

    /// A RUN step: sandboxed on an overlay of the image's snapshots; its changes are the layer.
    fn run(
        &mut self,
        state: &mut ImageState,
        scope: &Scope,
        ins: &Instruction,
        r: &kiln_dockerfile::instructions::RunCmd,
        created_by: &str,
        progress: &mut StageProgress,
    ) -> Result<Option<LayerInfo>, BuildError> {
        let snapshots = {
            let mut cell = self
                .snapshots
                .lock()
                .map_err(|_| BuildError::step(ins, "the snapshot store lock is poisoned"))?;
            match &*cell {
                Some(s) => s.clone(),
                None => {
                    let s = kiln_snapshot::snapshots::Snapshots::open_detected(self.store.root())
                        .map_err(|e| {
                        BuildError::step(ins, format!("opening the snapshot store: {e}"))
                    })?;
                    cell.insert(Arc::new(s)).clone()
                }
            }
        };
        let snapshots = snapshots.as_ref();
        let expand = |s: &str| scope.expand(s).unwrap_or_else(|_| s.to_string());
        let default_network = match self.req.network {
            kiln_dockerfile::instructions::NetworkMode::None => kiln_sandbox::run::Network::None,
            _ => kiln_sandbox::run::Network::Host,
        };
        let step = crate::run::Step {
            run: r,
            env: scope.run_env(),
            expand: &expand,
            default_network,
            source_date_epoch: self.req.source_date_epoch,
        };
        let mut emit = |line: &str| progress.output(line);
        let result =
            crate::run::run_step(self.store, snapshots, state, &step, &mut emit).map_err(|e| {
                match e {
                    crate::run::RunError::Interrupted => BuildError::Interrupted,
                    crate::run::RunError::Failed {
                        code,
                        command,
                        tail,
                    } => BuildError::Step {
                        span: ins.span,
                        message: format!("RUN failed with exit code {code}"),
                        help: Some(format!(
                            "the command was: {command}\nits last output:\n{}",
                            tail.join("\n")
                        )),
                    },
                    other => BuildError::step(ins, other.to_string()),
                }
            })?;
        match result.layer {
            Some(info) => {
                self.push_layer(state, info.clone(), created_by)?;
                Ok(Some(info))
            }
            None => {
                state.add_empty_history(created_by, self.req.source_date_epoch, self.step_now);
                Ok(None)
            }
        }
    }

    /// Writes planned entries as the state's next layer.
    fn commit_layer(
        &self,
        state: &mut ImageState,
        entries: &[Planned],
        created_by: &str,
    ) -> Result<LayerInfo, BuildError> {
        Ok(state.add_layer(
            self.store,
            entries,
            self.req.source_date_epoch,
            self.step_now,
            created_by,
        )?)
    }

    /// Adds a stored layer (just made, or from the cache) to the state.
    fn push_layer(
        &self,
        state: &mut ImageState,
        info: LayerInfo,
        created_by: &str,
    ) -> Result<(), BuildError> {
        Ok(state.push_layer(
            self.store,
            info,
            self.req.source_date_epoch,
            self.step_now,
            created_by,
        )?)
    }

    fn owner_of(
        &self,
        state: &mut ImageState,
        ins: &Instruction,
        spec: &str,
    ) -> Result<Owner, BuildError> {
        let needs_files = spec
            .split(':')
            .any(|p| !p.is_empty() && p.parse::<u32>().is_err());
        let (passwd, group) = if needs_files || !spec.contains(':') {
            (
                state.read_file(self.store, "/etc/passwd")?,
                state.read_file(self.store, "/etc/group")?,
            )
        } else {
            (None, None)
        };
        users::resolve_owner(spec, passwd.as_deref(), group.as_deref())
            .map_err(|e| BuildError::step(ins, e.to_string()))
    }

    /// The build context as a COPY source, read on first use by any stage.
    fn context(&self) -> Result<SourceTree, BuildError> {
        let mut cell = self.context.lock().map_err(|_| {
            BuildError::Image(ImageError::Unsupported(
                "the build context lock is poisoned".into(),
            ))
        })?;
        if let Some(tree) = &*cell {
            return Ok(tree.clone());
        }
        let (patterns, _) = kiln_context::walk::load_ignore(
            &self.req.context,
            self.req.dockerfile_path.as_deref(),
        )?;
        let matcher = Matcher::new(&patterns).map_err(kiln_context::walk::ContextError::from)?;
        let tree = context_tree(&self.req.context, &matcher)?;
        Ok(cell.insert(tree).clone())
    }

    fn plan_copy(
        &mut self,
        state: &mut ImageState,
        scope: &Scope,
        ins: &Instruction,
        cp: &CopyCmd,
    ) -> Result<Vec<Planned>, BuildError> {
        let kw = if cp.is_add { "ADD" } else { "COPY" };
        let fail = |e: String| BuildError::step(ins, format!("{kw}: {e}"));
        let owner = match &cp.chown {
            Some(spec) => Some(self.owner_of(state, ins, spec)?),
            None => None,
        };
        let chmod = cp
            .chmod
            .as_deref()
            .map(Chmod::parse)
            .transpose()
            .map_err(fail)?;
        let workdir = scope.workdir().to_string();

        // Heredocs: inline files.
        if !cp.heredocs.is_empty() {
            let mut tree = SourceTree::new(dir_node(self.now));
            let mut names = Vec::new();
            for h in &cp.heredocs {
                let body = crate::run_argv::heredoc_text(h, |t| scope.expand(t)).map_err(fail)?;
                let node = SrcNode {
                    kind: Kind::File,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    size: body.len() as u64,
                    mtime: self.now,
                    xattrs: BTreeMap::new(),
                    content: Content::Bytes(std::sync::Arc::new(body.into_bytes())),
                    link_key: None,
                };
                tree.insert(&h.name, node);
                names.push(h.name.clone());
            }
            let req = self.copy_request(kw, &names, cp, &workdir, owner, chmod, false, false);
            let rootfs = state.rootfs(self.store)?;
            return copy::plan_copy(&tree, rootfs, &req).map_err(|e| fail(e.to_string()));
        }

        // ADD of URLs: each download is one file.
        if cp.is_add && cp.sources.iter().any(|s| fetch::is_url(s)) {
            if cp.sources.len() != 1 {
                return Err(fail(
                    "mixing several sources with URLs is not supported; use one ADD per URL".into(),
                ));
            }
            let url = &cp.sources[0];
            let got = fetch::fetch(url, &self.tmp, cp.checksum.as_deref())
                .map_err(|e: FetchError| fail(e.to_string()))?;
            let mut tree = SourceTree::new(dir_node(self.now));
            let node = SrcNode {
                kind: Kind::File,
                mode: 0o600,
                uid: 0,
                gid: 0,
                size: got.size,
                mtime: (got.last_modified.unwrap_or(self.now.0), 0),
                xattrs: BTreeMap::new(),
                content: Content::Path(got.path.clone()),
                link_key: None,
            };
            tree.insert(&got.file_name, node);
            let names = vec![got.file_name.clone()];
            let req = self.copy_request(kw, &names, cp, &workdir, owner, chmod, false, false);
            let rootfs = state.rootfs(self.store)?;
            let plan = copy::plan_copy(&tree, rootfs, &req).map_err(|e| fail(e.to_string()));
            state.keep_temp(got.path);
            return plan;
        }

        // COPY --from: another stage or an image.
        if let Some(from) = &cp.from {
            let src_state = match self.df.find_stage(from) {
                Some(i) => self
                    .stages
                    .get_mut(&i)
                    .ok_or_else(|| fail(format!("stage {from:?} is not built before this one")))?,
                None => {
                    let loaded = image::load(self.store, from).map_err(|e| fail(e.to_string()))?;
                    self.stages.insert(usize::MAX - self.stages.len(), loaded);
                    let key = *self.stages.keys().next_back().expect("inserted");
                    self.stages.get_mut(&key).expect("inserted")
                }
            };
            let tree = src_state.source_tree(self.store)?;
            let req = self.copy_request(kw, &cp.sources, cp, &workdir, owner, chmod, true, false);
            let rootfs = state.rootfs(self.store)?;
            return copy::plan_copy(&tree, rootfs, &req)
                .map_err(|e: CopyError| fail(e.to_string()));
        }

        // From the context; ADD extracts local archives.
        let context = self.context()?;
        if cp.is_add && cp.unpack != Some(false) {
            let mut archives = Vec::new();
            for s in &cp.sources {
                for path in context.find(s).map_err(|e| fail(e.to_string()))? {
                    if let Some(SrcNode {
                        kind: Kind::File,
                        content: Content::Path(p),
                        ..
                    }) = context.get(&path)
                    {
                        if image::is_archive(p).map_err(|e| fail(e.to_string()))? {
                            archives.push(p.clone());
                        }
                    }
                }
            }
            if !archives.is_empty() {
                if archives.len() != cp.sources.len() {
                    return Err(fail(
                        "mixing archives and plain files in one ADD is not supported; split it"
                            .into(),
                    ));
                }
                let dest = if cp.dest.starts_with('/') {
                    cp.dest.clone()
                } else {
                    format!("{workdir}/{}", cp.dest)
                };
                let mut out = Vec::new();
                for a in archives {
                    let (tar_path, entries) =
                        image::index_archive(self.store, &a).map_err(|e| fail(e.to_string()))?;
                    state.keep_temp(tar_path);
                    let rootfs = state.rootfs(self.store)?;
                    let planned = archive::plan_archive(entries, rootfs, &dest, self.now)
                        .map_err(|e: ArchiveError| fail(e.to_string()))?;
                    out.extend(planned);
                }
                return Ok(out);
            }
        }
        let req = self.copy_request(kw, &cp.sources, cp, &workdir, owner, chmod, false, true);
        let rootfs = state.rootfs(self.store)?;
        copy::plan_copy(&context, rootfs, &req).map_err(|e| fail(e.to_string()))
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_request<'b>(
        &self,
        keyword: &'static str,
        sources: &'b [String],
        cp: &'b CopyCmd,
        workdir: &'b str,
        owner: Option<Owner>,
        chmod: Option<Chmod>,
        preserve_owner: bool,
        from_context: bool,
    ) -> CopyRequest<'b> {
        CopyRequest {
            keyword,
            sources,
            dest: &cp.dest,
            workdir,
            owner,
            chmod,
            excludes: &cp.excludes,
            parents: cp.parents,
            preserve_owner,
            now: self.now,
            from_context,
        }
    }
}

fn dir_node(now: (i64, u32)) -> SrcNode {
    SrcNode::dir(0o755, 0, 0, now)
}

/// The argv of CMD/ENTRYPOINT: exec form as is, shell form through the image's SHELL.
fn argv_of(cl: &CommandLine, shell: &[String]) -> Vec<String> {
    match cl {
        CommandLine::Exec(v) => v.clone(),
        CommandLine::Shell(s) => shell
            .iter()
            .cloned()
            .chain(std::iter::once(s.clone()))
            .collect(),
    }
}

/// The history `created_by` text, in BuildKit's style (the instruction as written, with
/// `# buildkit` after file operations).
fn history_text(ins: &Instruction) -> String {
    let text = ins.original.trim();
    match &ins.command {
        Command::Copy(_) | Command::Run(_) => format!("{text} # buildkit"),
        _ => text.to_string(),
    }
}
