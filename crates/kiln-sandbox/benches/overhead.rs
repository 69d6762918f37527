//! Per-step cost of the RUN sandbox: median wall time of a sandboxed busybox `/bin/true`
//! (plan, thread + fork, namespaces, ~30 mounts, pivot_root, exec, exit, reap, stub
//! removal), as root and as the unprivileged `kilntest` inside one build namespace (entered
//! once; only the steps are timed). Also the one-off cost of entering the build namespace.
//!
//! `cargo bench -p kiln-sandbox --bench overhead` (as root; KILN_BENCH_RUNS to change the
//! number of runs, default 60).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use kiln_sandbox::run::{self, RunIo, Stdio};
use support::*;

const TARGET_MS: f64 = 20.0;

fn runs() -> usize {
    std::env::var("KILN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
        .max(50)
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (p(0.5), v[0], p(0.9), v[v.len() - 1])
}

fn line(what: &str, n: usize, (median, min, p90, max): (f64, f64, f64, f64)) {
    let verdict = if median < TARGET_MS {
        "ok"
    } else {
        "OVER TARGET"
    };
    println!(
        "{what:<46} runs={n:<4} median={median:6.2} ms  min={min:6.2}  p90={p90:6.2}  max={max:6.2}  [{verdict}: target < {TARGET_MS} ms]"
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would too: ignore arguments.
    if !require_root() {
        return;
    }
    let Some(fs) = Rootfs::new() else { return };
    let n = runs();

    // As root: the library directly.
    let spec = fs.spec(&["/bin/true"]);
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 5 {
        let t = Instant::now();
        let io = RunIo {
            stdin: Stdio::Null,
            stdout: Stdio::Null,
            stderr: Stdio::Null,
        };
        let mut step = run::start(&spec, io).expect("start");
        assert!(step.wait().expect("wait").success());
        run::remove_stubs(&fs.path(), step.created_stubs()).expect("remove stubs");
        if i >= 5 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    line("root: sandboxed /bin/true", n, stats(times));

    // As kilntest: one build namespace, n steps inside it (timed by the probe itself).
    let Some(user) = kilntest() else { return };
    let Some(ufs) = Rootfs::new() else { return };
    ufs.chown_to(user.uid, user.gid);
    let out = user
        .command(probe())
        .arg("--rootfs")
        .arg(ufs.path())
        .args(["--repeat", &n.to_string(), "--", "/bin/true"])
        .output()
        .expect("probe");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "probe failed: {stderr}");
    let field = |k: &str| -> f64 {
        stdout
            .split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let full = stderr.contains("full_map=true");
    line(
        &format!("kilntest: step in build ns (full_map={full})"),
        n,
        (
            field("median_ms="),
            field("min_ms="),
            field("p90_ms="),
            field("max_ms="),
        ),
    );

    // The one-off: setpriv + re-exec into a new user namespace (newuidmap/newgidmap) + one
    // step, as a whole process.
    let mut whole = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let st = user
            .command(probe())
            .arg("--rootfs")
            .arg(ufs.path())
            .args(["--", "/bin/true"])
            .stderr(std::process::Stdio::null())
            .status()
            .expect("probe");
        assert!(st.success());
        whole.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (median, min, _, max) = stats(whole);
    println!(
        "kilntest: whole process (enter ns + 1 step)     runs=20   median={median:6.2} ms  min={min:6.2}  max={max:6.2}  (paid once per kiln run)"
    );
}
