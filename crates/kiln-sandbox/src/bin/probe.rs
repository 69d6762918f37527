//! kiln-sandbox-probe: enters the build namespace, runs one command in the RUN sandbox and
//! exits with its exit code. For checking a machine's rootless setup by hand, and driven by
//! the rootless tests and the benchmark.
//!
//! ```text
//! kiln-sandbox-probe --rootfs DIR [--user UID[:GID]] [--groups G,G] [--cwd DIR]
//!     [--hostname NAME] [--network host|none] [--resolv FILE] [--hosts FILE]
//!     [--mount SRC:DST[:ro]] [--env K=V] [--repeat N] -- CMD [ARG...]
//! ```
//!
//! Diagnostics go to stderr, prefixed `probe:`; `--repeat N` runs the command N times with
//! its output discarded and prints `runs=N median_ms=.. min_ms=.. max_ms=..` on stdout.
//! SIGINT/SIGTERM kill the sandbox (the whole pid namespace) and exit 130/143.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kiln_sandbox::run::{self, BindMount, Killer, Network, RunIo, RunSpec, Stdio};
use kiln_sandbox::userns::{ensure_build_namespace, NamespaceMode};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};

struct Args {
    spec: RunSpec,
    repeat: Option<usize>,
}

fn usage(msg: &str) -> ! {
    eprintln!("probe: {msg}");
    eprintln!(
        "usage: kiln-sandbox-probe --rootfs DIR [--user UID[:GID]] [--groups G,G] [--cwd DIR] \
         [--hostname NAME] [--network host|none] [--resolv FILE] [--hosts FILE] \
         [--mount SRC:DST[:ro]] [--env K=V] [--repeat N] -- CMD [ARG...]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut rootfs = None;
    let mut spec = RunSpec::new("", Vec::new());
    spec.hostname = "kiln-probe".into();
    let mut repeat = None;
    let mut env_set = false;
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--rootfs" => rootfs = Some(PathBuf::from(val("--rootfs"))),
            "--user" => {
                let v = val("--user");
                let (u, g) = v.split_once(':').unwrap_or((&v, &v));
                spec.uid = u.parse().unwrap_or_else(|_| usage("bad --user"));
                spec.gid = g.parse().unwrap_or_else(|_| usage("bad --user"));
            }
            "--groups" => {
                spec.additional_gids = val("--groups")
                    .split(',')
                    .map(|g| g.parse().unwrap_or_else(|_| usage("bad --groups")))
                    .collect()
            }
            "--cwd" => spec.cwd = val("--cwd"),
            "--hostname" => spec.hostname = val("--hostname"),
            "--network" => {
                spec.network = match val("--network").as_str() {
                    "host" => Network::Host,
                    "none" => Network::None,
                    _ => usage("--network is host or none"),
                }
            }
            "--resolv" => spec.resolv_conf = Some(val("--resolv").into()),
            "--hosts" => spec.hosts_file = Some(val("--hosts").into()),
            "--mount" => {
                let v = val("--mount");
                let parts: Vec<&str> = v.split(':').collect();
                if parts.len() < 2 {
                    usage("--mount is SRC:DST[:ro]");
                }
                spec.extra_mounts.push(
                    BindMount {
                        source: parts[0].into(),
                        target: parts[1].into(),
                        readonly: parts.get(2) == Some(&"ro"),
                    }
                    .into(),
                );
            }
            "--env" => {
                let v = val("--env");
                let (k, v) = v.split_once('=').unwrap_or_else(|| usage("--env is K=V"));
                if !env_set {
                    spec.env.clear();
                    env_set = true;
                }
                spec.env.push((k.into(), v.into()));
            }
            "--repeat" => {
                repeat = Some(
                    val("--repeat")
                        .parse()
                        .unwrap_or_else(|_| usage("bad --repeat")),
                )
            }
            "--" => {
                spec.argv = it.by_ref().collect();
                break;
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    spec.rootfs = rootfs.unwrap_or_else(|| usage("--rootfs is required"));
    if spec.argv.is_empty() {
        usage("no command given");
    }
    Args { spec, repeat }
}

fn main() -> ExitCode {
    // Before anything else (and before any thread): may re-execute us.
    let mode = match ensure_build_namespace() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("probe: error: {e}");
            return ExitCode::from(125);
        }
    };
    match &mode {
        NamespaceMode::Root => eprintln!("probe: mode=root"),
        NamespaceMode::Rootless { full_map, warning } => {
            eprintln!("probe: mode=rootless full_map={full_map}");
            if let Some(w) = warning {
                eprintln!("probe: warning: {w}");
            }
        }
    }
    let args = parse_args();
    if let Some(n) = args.repeat {
        return bench(&args.spec, n);
    }

    // Signals are taken by a dedicated thread; block them here first so every later
    // thread inherits the mask (the sandbox child resets its own).
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    let killer: Arc<Mutex<Option<Killer>>> = Arc::new(Mutex::new(None));
    let got: Arc<Mutex<Option<Signal>>> = Arc::new(Mutex::new(None));
    {
        let (killer, got) = (killer.clone(), got.clone());
        std::thread::spawn(move || loop {
            if let Ok(sig) = set.wait() {
                *got.lock().unwrap_or_else(|e| e.into_inner()) = Some(sig);
                if let Some(k) = killer.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    let _ = k.kill();
                }
            }
        });
    }

    let io = RunIo {
        stdin: Stdio::Null,
        stdout: Stdio::Inherit,
        stderr: Stdio::Inherit,
    };
    let mut step = match run::start(&args.spec, io) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("probe: error: {e}");
            return ExitCode::from(125);
        }
    };
    *killer.lock().unwrap_or_else(|e| e.into_inner()) = Some(step.killer());
    // A signal that arrived before the killer was registered.
    if got.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
        let _ = step.kill();
    }
    let stubs: Vec<String> = step
        .created_stubs()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    eprintln!("probe: pid={} stubs=[{}]", step.pid(), stubs.join(","));
    let status = match step.wait() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("probe: error: {e}");
            return ExitCode::from(125);
        }
    };
    if let Err(e) = run::remove_stubs(&args.spec.rootfs, step.created_stubs()) {
        eprintln!("probe: error: {e}");
    }
    eprintln!("probe: status={status:?}");
    if let Some(sig) = *got.lock().unwrap_or_else(|e| e.into_inner()) {
        return ExitCode::from(128 + sig as u8);
    }
    ExitCode::from(status.code().clamp(0, 255) as u8)
}

fn bench(spec: &RunSpec, n: usize) -> ExitCode {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let io = RunIo {
            stdin: Stdio::Null,
            stdout: Stdio::Null,
            stderr: Stdio::Null,
        };
        let res = run::start(spec, io).and_then(|mut s| {
            let st = s.wait()?;
            run::remove_stubs(&spec.rootfs, s.created_stubs())?;
            Ok(st)
        });
        match res {
            Ok(st) if st.success() => times.push(t.elapsed().as_secs_f64() * 1000.0),
            Ok(st) => {
                eprintln!("probe: benchmark command failed: {st:?}");
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("probe: error: {e}");
                return ExitCode::from(125);
            }
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    if times.is_empty() {
        println!("runs=0");
        return ExitCode::SUCCESS;
    }
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "runs={} median_ms={:.2} min_ms={:.2} p90_ms={:.2} max_ms={:.2}",
        times.len(),
        at(0.5),
        times[0],
        at(0.9),
        times[times.len() - 1]
    );
    ExitCode::SUCCESS
}
