//! Robustness: at least 200,000 generated inputs (random bytes, random words and mutated corpus
//! files) go through the parser, the typed layer and stage planning, the shell expander and the
//! .dockerignore matcher. None may panic, and none may take long: a watchdog fails the test
//! when one input runs for more than `HANG_SECS`, naming that input.
//!
//! The seed is fixed so a failure reproduces; set `KILN_FUZZ_SEED` to explore other inputs and
//! `KILN_FUZZ_SCALE` (a multiplier) for longer runs.

mod util;

use kiln_context::ignore::Matcher;
use kiln_dockerfile::shell::Lexer;
use kiln_dockerfile::stages::{BuildOptions, Dockerfile, Scope};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HANG_SECS: u64 = 5;

/// xorshift64*: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Fragments that reach the interesting corners of each grammar.
const DOCKERFILE_TOKENS: &[&str] = &[
    "FROM ",
    "RUN ",
    "COPY ",
    "ADD ",
    "ENV ",
    "ARG ",
    "LABEL ",
    "ONBUILD ",
    "HEALTHCHECK ",
    "CMD ",
    "SHELL ",
    "EXPOSE ",
    "WORKDIR ",
    "USER ",
    "STOPSIGNAL ",
    "VOLUME ",
    " AS ",
    "\\\n",
    "`\n",
    "\n",
    "\r\n",
    "# escape=`\n",
    "# syntax=x\n",
    "# check=skip=all\n",
    "<<EOF\n",
    "<<-'EOT'\n",
    "\nEOF\n",
    "\tEOT\n",
    "3<<A <<B",
    "[\"a\", \"b\"]",
    "[1, [2]]",
    "[\"\\ud800\"]",
    "--mount=type=cache,target=/x,id=../../",
    "--mount=type=secret,id=a,env=B",
    "--from=0 ",
    "--chmod=u+s ",
    "--platform=$P ",
    "${A:-${B:+x}}",
    "${A#*}",
    "${A//?/}",
    "$",
    "\"",
    "'",
    "\\",
    "=",
    " ",
    "\t",
    "\u{feff}",
    "é",
    "한",
    "\0",
    "#",
    "--",
    "--network=none ",
];

const WORD_TOKENS: &[&str] = &[
    "$", "${", "}", "{", ":-", ":+", ":?", "-", "+", "?", "#", "##", "%", "%%", "/", "//", "*",
    "\\", "\"", "'", "`", " ", "A", "B", "PWD", "EMPTY", "1", "@", "é", "한", "\\}", "\\/", ":",
    "=", "$$", "${A", "[a-", "\t",
];

const PATTERN_TOKENS: &[&str] = &[
    "*", "**", "?", "[", "]", "^", "!", "-", "\\", "/", "a", "b", ".", "..", "[a-z]", "[^/]", "{",
    "}", "(", ")", "|", "+", "$", " ", "é", "[]", "[\\]", "**/", "/**",
];

fn random_from(rng: &mut Rng, tokens: &[&str], max_tokens: usize) -> String {
    let n = rng.below(max_tokens) + 1;
    (0..n).map(|_| *rng.pick(tokens)).collect()
}

fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 => {
                let tok = rng.pick(DOCKERFILE_TOKENS).as_bytes();
                v.splice(at..at, tok.iter().copied());
            }
            2 if !v.is_empty() => {
                let end = (at + rng.below(64)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 if !v.is_empty() => {
                let start = rng.below(v.len());
                let end = (start + rng.below(128)).min(v.len());
                let chunk = v[start..end].to_vec();
                v.splice(at..at, chunk);
            }
            4 if !other.is_empty() => {
                let start = rng.below(other.len());
                let end = (start + rng.below(256)).min(other.len());
                v.splice(at..at, other[start..end].iter().copied());
            }
            _ => v.insert(at, b"\\\n`\"'$[{#< \t"[rng.below(12)]),
        }
    }
    v
}

/// Everything the front end does with one Dockerfile, as a build would.
fn exercise_dockerfile(src: &[u8]) {
    let _ = kiln_dockerfile::parser::parse(src).map(|ast| ast.dump());
    let Ok(df) = Dockerfile::parse(src) else {
        return;
    };
    let mut opts = BuildOptions::default();
    opts.build_args.insert("A".into(), "x".into());
    let Ok(plan) = df.plan(&opts) else { return };
    let _ = plan.waves();
    for stage in &df.stages {
        let mut scope = Scope::new(&df, &opts, &plan.global_args, vec![]);
        for ins in &stage.instructions {
            let _ = scope.step(ins);
        }
        let _ = scope.run_env();
    }
}

fn exercise_word(word: &str) {
    let env: BTreeMap<String, String> = [("A", "abcabc"), ("B", "a b  c"), ("EMPTY", "")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for esc in ['\\', '`'] {
        let lex = Lexer::new(esc);
        let _ = lex.process_word(word, &env);
        let _ = lex.process_words(word, &env);
        let _ = lex.process_word_with_matches(word, &env);
    }
}

fn exercise_ignore(patterns: &[String], paths: &[String]) {
    let text = patterns.join("\n");
    let read = kiln_context::ignore::read_ignore_file(text.as_bytes());
    for list in [patterns, &read[..]] {
        if let Ok(m) = Matcher::new(list) {
            for p in paths {
                let _ = m.matches(p);
                let _ = m.dir_may_have_exceptions(p);
            }
        }
    }
}

/// One generated input, kept for the failure message.
#[derive(Clone, Debug)]
enum Input {
    Dockerfile(Vec<u8>),
    Word(String),
    Ignore(Vec<String>, Vec<String>),
}

fn run_one(input: &Input) {
    match input {
        Input::Dockerfile(src) => exercise_dockerfile(src),
        Input::Word(w) => exercise_word(w),
        Input::Ignore(p, paths) => exercise_ignore(p, paths),
    }
}

fn corpus_files() -> Vec<Vec<u8>> {
    let root = util::corpus_dir().join("buildkit-parser");
    let mut files = Vec::new();
    for sub in ["testfiles", "testfiles-negative"] {
        for e in std::fs::read_dir(root.join(sub)).unwrap() {
            files.push(std::fs::read(e.unwrap().path().join("Dockerfile")).unwrap());
        }
    }
    files.push(std::fs::read(root.join("extracted/heredoc/Dockerfile")).unwrap());
    files.push(std::fs::read(root.join("testfile-line/Dockerfile")).unwrap());
    files
}

#[test]
fn two_hundred_thousand_generated_inputs_neither_panic_nor_hang() {
    let seed: u64 = std::env::var("KILN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b696c6e);
    let scale: usize = std::env::var("KILN_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let (n_df_random, n_df_mutated, n_words, n_ignore) = (
        40_000 * scale,
        60_000 * scale,
        60_000 * scale,
        40_000 * scale,
    );
    let total = n_df_random + n_df_mutated + n_words + n_ignore;
    assert!(total >= 200_000);
    let corpus = corpus_files();

    let done = Arc::new(AtomicUsize::new(0));
    let current: Arc<Mutex<Option<Input>>> = Arc::new(Mutex::new(None));
    let failures: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let worker = {
        let (done, current, failures) = (done.clone(), current.clone(), failures.clone());
        std::thread::spawn(move || {
            // Panics are caught and listed; keep the default hook from printing 200k traces.
            std::panic::set_hook(Box::new(|_| {}));
            let mut rng = Rng(seed);
            for i in 0..total {
                let input = if i < n_df_random {
                    let len = rng.below(400);
                    if rng.below(2) == 0 {
                        Input::Dockerfile((0..len).map(|_| rng.next() as u8).collect())
                    } else {
                        Input::Dockerfile(random_from(&mut rng, DOCKERFILE_TOKENS, 60).into_bytes())
                    }
                } else if i < n_df_random + n_df_mutated {
                    let base = rng.pick(&corpus).clone();
                    let other = rng.pick(&corpus).clone();
                    Input::Dockerfile(mutate(&mut rng, &base, &other))
                } else if i < n_df_random + n_df_mutated + n_words {
                    Input::Word(random_from(&mut rng, WORD_TOKENS, 40))
                } else {
                    let pats = (0..=rng.below(5))
                        .map(|_| random_from(&mut rng, PATTERN_TOKENS, 8))
                        .collect();
                    let paths = (0..=rng.below(4))
                        .map(|_| random_from(&mut rng, PATTERN_TOKENS, 10))
                        .collect();
                    Input::Ignore(pats, paths)
                };
                *current.lock().unwrap() = Some(input.clone());
                if catch_unwind(AssertUnwindSafe(|| run_one(&input))).is_err() {
                    failures.lock().unwrap().push(format!("panic on {input:?}"));
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            let _ = std::panic::take_hook();
        })
    };

    let mut last = (0, Instant::now());
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
        let n = done.load(Ordering::SeqCst);
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(HANG_SECS) {
            let input = current.lock().unwrap().clone();
            panic!("input #{n} ran for more than {HANG_SECS}s: {input:?}");
        }
    }
    worker.join().unwrap();
    let failures = failures.lock().unwrap();
    let n = done.load(Ordering::SeqCst);
    println!(
        "robustness: {}/{} generated inputs passed (seed {seed})",
        n - failures.len(),
        n
    );
    assert_eq!(n, total);
    assert!(
        failures.is_empty(),
        "{} failures, first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(5)].join("\n")
    );
}
