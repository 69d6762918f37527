//! Front-end benchmark: parse, type and expand a large generated Dockerfile.
//!
//! Run with `make bench` (or `cargo bench -p kiln --bench frontend`). Prints one line per phase
//! with the median of several runs, in MB/s and instructions per second.

use kiln_dockerfile::parser;
use kiln_dockerfile::stages::{BuildOptions, Dockerfile, Scope};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// A Dockerfile of `stages` stages, each with a realistic mix of instructions.
fn generate(stages: usize) -> (String, usize) {
    let mut s =
        String::from("# syntax=docker/dockerfile:1\nARG BASE=debian:bookworm\nARG VERSION=1.0\n");
    let mut count = 2;
    for i in 0..stages {
        s.push_str(&format!("FROM ${{BASE}} AS stage{i}\n"));
        s.push_str("ARG VERSION\nENV APP_HOME=/srv/app PATH=/srv/app/bin:$PATH LANG=C.UTF-8\n");
        s.push_str(&format!(
            "LABEL org.opencontainers.image.version=\"${{VERSION}}\" stage=\"{i}\" \\\n      \
             org.opencontainers.image.title=\"bench ${{VERSION%%.*}}\"\n"
        ));
        s.push_str("WORKDIR $APP_HOME\n");
        s.push_str(
            "RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \\\n    \
             apt-get update && \\\n    # comment inside a continuation\n    \
             apt-get install -y --no-install-recommends ca-certificates curl git && \\\n    \
             rm -rf /var/lib/apt/lists/*\n",
        );
        s.push_str(
            "COPY --chown=app:app --chmod=0644 [\"package.json\", \"package-lock.json\", \"./\"]\n",
        );
        s.push_str("RUN <<EOF\nset -e\nnpm ci --omit=dev\nnpm cache clean --force\nEOF\n");
        if i > 0 {
            s.push_str(&format!(
                "COPY --from=stage{} /srv/app/dist ./dist\n",
                i - 1
            ));
        }
        s.push_str("EXPOSE 8080/tcp ${PORT:-9090}\nUSER app:app\n");
        s.push_str("HEALTHCHECK --interval=30s --timeout=3s CMD [\"curl\", \"-f\", \"http://localhost:8080/\"]\n");
        s.push_str("CMD [\"node\", \"dist/server.js\"]\n");
        count += if i > 0 { 14 } else { 13 };
    }
    (s, count)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        black_box(f());
        v.push(t.elapsed());
    }
    median(v)
}

fn report(phase: &str, bytes: usize, instructions: usize, d: Duration) {
    let secs = d.as_secs_f64();
    println!(
        "{phase:<28} {:>9.2} ms  {:>8.1} MB/s  {:>10.0} instructions/s",
        secs * 1e3,
        bytes as f64 / secs / 1e6,
        instructions as f64 / secs
    );
}

fn main() {
    // `cargo bench` passes --bench; a plain run takes an optional stage count.
    let stages: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let (src, n) = generate(stages);
    let bytes = src.len();
    println!(
        "generated Dockerfile: {stages} stages, {n} instructions, {:.2} MB",
        bytes as f64 / 1e6
    );
    let runs = 11;
    report(
        "parse (syntax tree)",
        bytes,
        n,
        time(runs, || parser::parse(src.as_bytes()).unwrap()),
    );
    report(
        "parse + typed instructions",
        bytes,
        n,
        time(runs, || Dockerfile::parse(src.as_bytes()).unwrap()),
    );
    let df = Dockerfile::parse(src.as_bytes()).unwrap();
    let opts = BuildOptions::default();
    report(
        "plan (FROM + graph)",
        bytes,
        n,
        time(runs, || df.plan(&opts).unwrap()),
    );
    let plan = df.plan(&opts).unwrap();
    let expand = || {
        for stage in &df.stages {
            let mut scope = Scope::new(
                &df,
                &opts,
                &plan.global_args,
                vec![("PATH".into(), "/usr/bin".into())],
            );
            for ins in &stage.instructions {
                black_box(scope.step(ins).unwrap());
            }
        }
    };
    report("expand every instruction", bytes, n, time(runs, expand));
    let all = || {
        let df = Dockerfile::parse(src.as_bytes()).unwrap();
        let plan = df.plan(&opts).unwrap();
        for stage in &df.stages {
            let mut scope = Scope::new(&df, &opts, &plan.global_args, vec![]);
            for ins in &stage.instructions {
                black_box(scope.step(ins).unwrap());
            }
        }
    };
    report("end to end", bytes, n, time(runs, all));
}
