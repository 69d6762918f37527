//! `RUN`: the step's root is an overlay of the image's layer snapshots, the command runs in the
//! sandbox, and the overlay's upper directory becomes the new layer.
//!
//! Everything here runs as (namespaced) root: the CLI enters the build user namespace first
//! when kiln is started unprivileged, so snapshots keep real image ownership.

use crate::image::{ImageError, ImageState};
use crate::run_argv::step_command;
use crate::users::resolve_run_user;
use kiln_dockerfile::instructions::{NetworkMode, RunCmd};
use kiln_oci::store::Store;
use kiln_oci::Compression;
use kiln_sandbox::run::{self as sandbox, Network, RunIo, RunSpec, Stdio};
use kiln_snapshot::diff::DiffOptions;
use kiln_snapshot::snapshots::{chain_ids, ChainId, Mounts, Snapshots};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

mod cache_mount;
mod mounts;
mod ssh_proxy;

pub use cache_mount::{remove_unused as remove_cache_mounts, CacheError, Removed};
pub use mounts::{CacheMount, MountKind, StepMount};

/// Set once the build was asked to stop.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stops the build: the running step is killed (its pid-namespace init, so the whole tree
/// goes) and the build returns [`crate::BuildError::Interrupted`], unmounting and removing
/// what it made on the way. Async-signal-safe (it only sets a flag): call it from a SIGINT
/// handler.
pub fn interrupt() {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// True once [`interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Lines of output kept to show when a step fails.
const TAIL_LINES: usize = 20;

/// Why a RUN step failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The command exited non-zero.
    #[error("RUN failed with exit code {code}: {command}")]
    Failed {
        /// Exit code (128 + signal when killed).
        code: i32,
        /// The command as run.
        command: String,
        /// Its last output lines.
        tail: Vec<String>,
    },
    /// The build was interrupted (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
    /// Setting up or tearing down the step failed.
    #[error("{0}")]
    Setup(String),
    /// The image could not be read.
    #[error(transparent)]
    Image(#[from] ImageError),
}

fn setup(what: &str) -> impl Fn(String) -> RunError + '_ {
    move |e| RunError::Setup(format!("{what}: {e}"))
}

/// Everything a RUN step needs from the build.
pub struct Step<'a> {
    /// The RUN instruction, expanded.
    pub run: &'a RunCmd,
    /// Environment for the process.
    pub env: Vec<(String, String)>,
    /// Expands heredoc bodies whose delimiter was not quoted.
    pub expand: &'a dyn Fn(&str) -> String,
    /// The build's default network (`--network`).
    pub default_network: Network,
    /// `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: Option<i64>,
    /// `RUN --mount`s, resolved (secrets given as `env=` are already in `env`).
    pub mounts: Vec<StepMount<'a>>,
}

/// Runs one step on top of `state` and adds its layer. `output` receives each output line.
pub fn run_step(
    store: &Store,
    snapshots: &Snapshots,
    state: &mut ImageState,
    step: &Step,
    output: &mut dyn FnMut(&str),
) -> Result<StepResult, RunError> {
    let chains = ensure_snapshots(store, snapshots, state)?;
    let key = unique_key();
    let mounts = snapshots
        .prepare(&key, &chains)
        .map_err(|e| setup("preparing the step's root")(e.to_string()))?;
    let mut guard = Active {
        snapshots,
        key: key.clone(),
        mountpoint: None,
    };
    let root = store.root().join("tmp").join(format!("{key}-root"));
    std::fs::create_dir_all(&root).map_err(|e| setup("creating the mountpoint")(e.to_string()))?;
    guard.mountpoint = Some(root.clone());
    mounts
        .mount(&root)
        .map_err(|e| setup("mounting the step's root")(e.to_string()))?;

    let config_user = state.config.user().unwrap_or_default();
    let passwd = state.read_file(store, "/etc/passwd")?;
    let group = state.read_file(store, "/etc/group")?;
    let user = resolve_run_user(&config_user, passwd.as_deref(), group.as_deref())
        .map_err(|e| RunError::Setup(format!("USER {config_user}: {e}")))?;
    let cmd = step_command(
        &step.run.command,
        &step.run.heredocs,
        &state.config.shell(),
        step.expand,
    );
    let mut stubs: Vec<PathBuf> = Vec::new();
    if let Some((path, content)) = &cmd.script {
        let host = root.join(path.trim_start_matches('/'));
        std::fs::write(&host, content)
            .map_err(|e| setup("writing the heredoc script")(e.to_string()))?;
        std::fs::set_permissions(&host, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| setup("writing the heredoc script")(e.to_string()))?;
        stubs.push(PathBuf::from(path.trim_start_matches('/')));
    }
    let prepared = mounts::prepare(store, snapshots, &key, &step.mounts)?;
    let network = match step.run.network {
        Some(NetworkMode::None) => Network::None,
        Some(NetworkMode::Host) => Network::Host,
        Some(NetworkMode::Default) | None => step.default_network,
    };
    let spec = RunSpec {
        env: step.env.clone(),
        cwd: state.config.working_dir().unwrap_or_else(|| "/".into()),
        uid: user.uid,
        gid: user.gid,
        additional_gids: user.groups.clone(),
        hostname: "kiln".into(),
        network,
        hosts_file: existing("/etc/hosts"),
        resolv_conf: existing("/etc/resolv.conf"),
        extra_mounts: prepared.extra.clone(),
        ..RunSpec::new(&root, cmd.argv.clone())
    };
    let (reader, writer) =
        std::io::pipe().map_err(|e| setup("creating the output pipe")(e.to_string()))?;
    let writer: std::os::fd::OwnedFd = writer.into();
    let writer2 = writer
        .try_clone()
        .map_err(|e| setup("creating the output pipe")(e.to_string()))?;
    let io = RunIo {
        stdin: Stdio::Null,
        stdout: Stdio::Fd(writer),
        stderr: Stdio::Fd(writer2),
    };
    if interrupted() {
        return Err(RunError::Interrupted);
    }
    let mut running =
        sandbox::start(&spec, io).map_err(|e| setup("starting the step")(e.to_string()))?;
    // Signal handlers can only set a flag; this thread turns it into a kill of the step.
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (killer, finished) = (running.killer(), finished.clone());
        std::thread::spawn(move || {
            while !finished.load(std::sync::atomic::Ordering::SeqCst) {
                if interrupted() {
                    let _ = killer.kill();
                    return;
                }
                std::thread::park_timeout(std::time::Duration::from_millis(20));
            }
        })
    };
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    for line in BufReader::new(reader).split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line).into_owned();
        output(&text);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text);
    }
    let status = running
        .wait()
        .map_err(|e| setup("waiting for the step")(e.to_string()));
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    // Wake the watcher now rather than at its next poll, so a step costs no extra wait.
    watcher.thread().unpark();
    let _ = watcher.join();
    let status = status?;
    // Mount points of RUN --mount are removed only while empty: the step may have written
    // next to a mount, in a directory made for it (BuildKit keeps those too).
    let mount_stubs = running.created_mount_stubs().to_vec();
    let all_stubs = running.created_stubs().to_vec();
    stubs.extend(
        all_stubs
            .iter()
            .filter(|s| !mount_stubs.contains(s))
            .cloned(),
    );
    drop(running);
    drop(prepared);
    if status.success() && !mount_stubs.is_empty() {
        kiln_sandbox::run::remove_stubs(&root, &mount_stubs)
            .map_err(|e| setup("removing mount points")(e.to_string()))?;
    }
    guard.unmount()?;
    if interrupted() {
        return Err(RunError::Interrupted);
    }
    if !status.success() {
        return Err(RunError::Failed {
            code: status.code(),
            command: cmd.argv.join(" "),
            tail: tail.into(),
        });
    }
    snapshots
        .revert(&key, &stubs)
        .map_err(|e| setup("removing mount stubs")(e.to_string()))?;
    if let Mounts::Overlay(m) = &mounts {
        drop_stub_parents(&m.upper, &all_stubs, state.rootfs(store)?);
    }
    let opts = DiffOptions::default().clamp_mtime(step.source_date_epoch);
    let (info, stats) = snapshots
        .write_diff(&key, store, Compression::None, &opts)
        .map_err(|e| setup("writing the step's layer")(e.to_string()))?;
    let chain = match chains.last() {
        Some(parent) => parent.child(&info.diff_id),
        None => ChainId::base(&info.diff_id),
    };
    // The upper directory is exactly this layer: keep it as the layer's snapshot.
    snapshots
        .commit(&key, &chain)
        .map_err(|e| setup("keeping the step's snapshot")(e.to_string()))?;
    guard.key.clear();
    // A step that changed nothing adds no layer (BuildKit records it as an empty layer too).
    Ok(StepResult {
        layer: (stats.entries > 0).then_some(info),
    })
}

/// What a step produced.
pub struct StepResult {
    /// The new layer, or `None` when the step changed no file.
    pub layer: Option<kiln_oci::layer::LayerInfo>,
}

/// Creating the `/etc/hosts` and `/etc/resolv.conf` stubs copies their directory up into the
/// step's upper dir. Once the stubs are gone, such a directory is a change only when it is
/// not empty or its mode or owner differ from the image's; otherwise drop it, as BuildKit
/// restores the parents of its mount stubs.
fn drop_stub_parents(upper: &Path, stubs: &[PathBuf], image: &crate::rootfs::Rootfs) {
    use std::os::unix::fs::MetadataExt;
    for stub in stubs {
        let mut dir = stub.parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            let up = upper.join(d);
            let rel = d.to_string_lossy();
            let Ok(md) = std::fs::symlink_metadata(&up) else {
                break;
            };
            let empty = std::fs::read_dir(&up)
                .map(|mut r| r.next().is_none())
                .unwrap_or(false);
            let same = image.get(&rel).is_some_and(|n| {
                n.kind == crate::rootfs::Kind::Dir
                    && n.mode == md.mode() & 0o7777
                    && n.uid == md.uid()
                    && n.gid == md.gid()
            });
            let opaque = kiln_snapshot::overlay::is_opaque(&up, None).unwrap_or(true);
            if !(md.is_dir() && empty && same && !opaque) || std::fs::remove_dir(&up).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

/// The host's file, when it exists (`/etc/hosts`, `/etc/resolv.conf`).
fn existing(p: &str) -> Option<PathBuf> {
    Path::new(p).exists().then(|| PathBuf::from(p))
}

/// Extracts each layer of the image into a snapshot once; later builds reuse them.
fn ensure_snapshots(
    store: &Store,
    snapshots: &Snapshots,
    state: &ImageState,
) -> Result<Vec<ChainId>, RunError> {
    // Stages running at once often share a base: the first extracts it, the others wait for
    // it and find it there, so each layer is extracted once per store.
    static EXTRACTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let chains = chain_ids(&state.diff_ids());
    for (i, chain) in chains.iter().enumerate() {
        if snapshots.exists(chain) {
            continue;
        }
        let _one_at_a_time = EXTRACTING.lock().unwrap_or_else(|e| e.into_inner());
        if snapshots.exists(chain) {
            continue;
        }
        let tar = state.layer_tar(store, i)?;
        let opts = kiln_snapshot::UnpackOptions {
            chown: true,
            ..Default::default()
        };
        snapshots
            .create(&chains[..i], chain, |dir: &Path| {
                let f = std::fs::File::open(&tar)?;
                kiln_snapshot::unpack_layer(dir, std::io::BufReader::new(f), &opts)
                    .map(drop)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            })
            .map_err(|e| setup("extracting a base layer")(e.to_string()))?;
    }
    Ok(chains)
}

fn unique_key() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "run-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Unmounts and removes a step's active snapshot however the step ends.
struct Active<'a> {
    snapshots: &'a Snapshots,
    /// Cleared once committed.
    key: String,
    mountpoint: Option<PathBuf>,
}

impl Active<'_> {
    fn unmount(&mut self) -> Result<(), RunError> {
        if let Some(m) = self.mountpoint.take() {
            kiln_snapshot::overlay::unmount(&m)
                .map_err(|e| RunError::Setup(format!("unmounting the step's root: {e}")))?;
            let _ = std::fs::remove_dir(&m);
        }
        Ok(())
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        let _ = self.unmount();
        if !self.key.is_empty() {
            let _ = self.snapshots.remove(&self.key);
        }
    }
}
