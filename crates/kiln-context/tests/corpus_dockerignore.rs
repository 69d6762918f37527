//! Runs the shared `.dockerignore` corpus (`shared/corpus/dockerignore`)
//! against the matcher, `read_ignore_file` and the context walker.
//!
//! The corpus directory is `$KILN_CORPUS`, or `shared/corpus` beside the
//! workspace; a missing corpus is a failure.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_context::{load_ignore, read_ignore_file, walk, EntryKind, Matcher};
use serde_json::Value;

fn corpus_dir() -> PathBuf {
    let root: PathBuf = match std::env::var("KILN_CORPUS") {
        Ok(dir) => dir.into(),
        Err(_) => concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/corpus").into(),
    };
    let dir = root.join("dockerignore");
    assert!(
        dir.is_dir(),
        "corpus directory {} is missing (set KILN_CORPUS)",
        dir.display()
    );
    dir
}

fn read(name: &str) -> String {
    let path = corpus_dir().join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn report(file: &str, total: usize, misses: &[String]) {
    println!("{file}: {}/{total} cases passed", total - misses.len());
    assert!(total > 0, "{file}: no cases found");
    assert!(
        misses.is_empty(),
        "{file}: {} misses:\n{}",
        misses.len(),
        misses.join("\n")
    );
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|v| v.as_str().expect("string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn cases_tsv() {
    let text = read("cases.tsv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    assert_eq!(
        &header[..5],
        ["id", "api", "patterns_json", "path_json", "expected"]
    );
    let mut total = 0;
    let mut misses = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let id = cols[0];
        let patterns: Vec<String> = serde_json::from_str(cols[2]).expect("patterns_json");
        let path: String = serde_json::from_str(cols[3]).expect("path_json");
        let expected = cols[4];
        total += 1;
        let got = match Matcher::new(&patterns) {
            Err(_) => "error".to_owned(),
            Ok(m) => match m.matches(&path) {
                Ok(b) => b.to_string(),
                Err(_) => "error".to_owned(),
            },
        };
        if got != expected {
            misses.push(format!(
                "row {id}: patterns {patterns:?} path {path:?}: expected {expected}, got {got}"
            ));
        }
    }
    report("cases.tsv", total, &misses);
}

#[test]
fn ignorefile_readall_json() {
    let doc: Value = serde_json::from_str(&read("ignorefile-readall.json")).expect("json");
    let mut total = 0;
    let mut misses = Vec::new();
    for part in ["upstream", "derived"] {
        let cases = doc[part].as_array().unwrap_or_else(|| panic!("no {part}"));
        for (i, case) in cases.iter().enumerate() {
            total += 1;
            let input = case["input"].as_str().unwrap_or("");
            let expected = strings(&case["expected"]);
            let got = read_ignore_file(input.as_bytes());
            if got != expected {
                misses.push(format!(
                    "{part}[{i}] input {input:?}: expected {expected:?}, got {got:?}"
                ));
            }
        }
    }
    report("ignorefile-readall.json", total, &misses);
}

/// A scratch directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kiln-context-corpus-{}-{}-{}",
            std::process::id(),
            name,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Creates the `"dir x"` / `"file x"` entries of a case's tree.
fn build_tree(root: &Path, tree: &[String]) {
    for item in tree {
        let (kind, rel) = item.split_once(' ').expect("'<kind> <path>'");
        let path = root.join(rel);
        match kind {
            "dir" => fs::create_dir_all(&path).unwrap(),
            "file" => {
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, format!("content of {rel}\n")).unwrap();
            }
            other => panic!("unknown tree entry kind {other:?}"),
        }
    }
}

/// Walks `root` with `patterns`; entries as `"<dir|file|...> <path>"`.
fn walk_with(root: &Path, patterns: &[String]) -> Result<Vec<String>, String> {
    let matcher = Matcher::new(patterns).map_err(|e| e.to_string())?;
    let entries = walk(root, &matcher).map_err(|e| e.to_string())?;
    Ok(entries
        .iter()
        .map(|e| {
            let kind = match e.kind {
                EntryKind::Dir => "dir",
                EntryKind::File => "file",
                EntryKind::Symlink => "symlink",
                EntryKind::Other => "other",
            };
            format!("{kind} {}", e.rel_path)
        })
        .collect())
}

fn paths(listing: &[String]) -> Vec<&str> {
    listing
        .iter()
        .map(|l| l.split_once(' ').map_or(l.as_str(), |(_, p)| p))
        .collect()
}

/// Checks one context-walk case; returns what went wrong.
fn run_walk_case(index: usize, case: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let tmp = TempDir::new(&format!("walk{index}"));
    let root = &tmp.0;
    build_tree(root, &strings(&case["tree"]));

    if let Some(per) = case["per_dockerfile_ignore"].as_object() {
        for spec in per.values() {
            let ignore_file = spec["ignore_file"].as_str().expect("ignore_file");
            fs::write(
                root.join(ignore_file),
                spec["ignore_text"].as_str().unwrap(),
            )
            .unwrap();
        }
        for (dockerfile, spec) in per {
            let ignore_file = spec["ignore_file"].as_str().unwrap();
            let (patterns, source) = match load_ignore(root, Some(&root.join(dockerfile))) {
                Ok(found) => found,
                Err(e) => {
                    problems.push(format!("{dockerfile}: load_ignore failed: {e}"));
                    continue;
                }
            };
            if source.as_deref() != Some(root.join(ignore_file).as_path()) {
                problems.push(format!(
                    "{dockerfile}: expected patterns from {ignore_file}, got {source:?}"
                ));
            }
            match walk_with(root, &patterns) {
                Err(e) => problems.push(format!("{dockerfile}: walk failed: {e}")),
                Ok(listing) => {
                    let present = paths(&listing);
                    for want in strings(&spec["context_has"]) {
                        if !present.contains(&want.as_str()) {
                            problems.push(format!("{dockerfile}: {want} missing from {listing:?}"));
                        }
                    }
                    for unwanted in strings(&spec["context_lacks"]) {
                        if present.contains(&unwanted.as_str()) {
                            problems.push(format!(
                                "{dockerfile}: {unwanted} should be excluded: {listing:?}"
                            ));
                        }
                    }
                }
            }
        }
        return problems;
    }

    let patterns = if let Some(text) = case["dockerignore_text"].as_str() {
        // Goes through the real ignore file, as a build would.
        fs::write(root.join(".dockerignore"), text).unwrap();
        match load_ignore(root, None) {
            Ok((patterns, Some(_))) => patterns,
            Ok((_, None)) => {
                problems.push("load_ignore did not find .dockerignore".to_owned());
                return problems;
            }
            Err(e) => {
                problems.push(format!("load_ignore failed: {e}"));
                return problems;
            }
        }
    } else {
        strings(&case["exclude"])
    };

    let result = walk_with(root, &patterns);
    if case["expected_error"].as_bool() == Some(true) {
        if let Ok(listing) = result {
            problems.push(format!("expected an error, got {listing:?}"));
        }
        return problems;
    }
    let listing = match result {
        Ok(listing) => listing,
        Err(e) => {
            problems.push(format!("unexpected error: {e}"));
            return problems;
        }
    };
    let present = paths(&listing);
    if let Some(expected) = case.get("expected") {
        let expected = strings(expected);
        if listing != expected {
            problems.push(format!("expected {expected:?}, got {listing:?}"));
        }
    }
    for key in ["present_after_COPY", "open_ok"] {
        for want in strings(&case[key]) {
            if !present.contains(&want.as_str()) {
                problems.push(format!("{key}: {want} missing from {listing:?}"));
            }
        }
    }
    for key in ["absent_after_COPY", "open_not_exist"] {
        for unwanted in strings(&case[key]) {
            if present.contains(&unwanted.as_str()) {
                problems.push(format!("{key}: {unwanted} present in {listing:?}"));
            }
        }
    }
    problems
}

#[test]
fn context_walk_cases_json() {
    let doc: Value = serde_json::from_str(&read("context-walk-cases.json")).expect("json");
    let cases = doc["cases"].as_array().expect("cases");
    let mut misses = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let problems = run_walk_case(i, case);
        if !problems.is_empty() {
            let source = case["source"].as_str().unwrap_or("?");
            misses.push(format!("case {i} ({source}): {}", problems.join("; ")));
        }
    }
    report("context-walk-cases.json", cases.len(), &misses);
}
