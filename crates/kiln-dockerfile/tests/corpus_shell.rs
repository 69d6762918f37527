//! Runs BuildKit's shell-lexer test vectors (`shared/corpus/buildkit-shell/`) against
//! `kiln_dockerfile::shell`. The formats are described in that directory's README.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kiln_dockerfile::shell::Lexer;
use serde_json::Value;

fn corpus_dir() -> PathBuf {
    let base = std::env::var("KILN_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/corpus"
            ))
        });
    let dir = base.join("buildkit-shell");
    assert!(
        dir.is_dir(),
        "shell corpus directory {} is missing (set KILN_CORPUS to the corpus root)",
        dir.display()
    );
    dir
}

fn read(name: &str) -> String {
    let path = corpus_dir().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read corpus file {}: {e}", path.display()))
}

/// Prints the tally and fails listing every miss.
fn report(file: &str, passed: usize, total: usize, note: &str, misses: &[String]) {
    println!("{file}: {passed}/{total} cases passed{note}");
    assert!(
        misses.is_empty(),
        "{file}: {} of {total} cases failed:\n{}",
        misses.len(),
        misses.join("\n")
    );
    assert!(total > 0, "{file}: no cases found");
}

#[test]
fn env_var_test() {
    let text = read("envVarTest");
    let env: BTreeMap<String, String> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let lexer = Lexer::new('\\');
    let (mut total, mut passed, mut windows_only) = (0, 0, 0);
    let mut misses = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let lineno = index + 1;
        if line.starts_with('#') {
            continue;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let [platform, input, expected] = fields[..] else {
            misses.push(format!(
                "line {lineno}: not exactly 3 `|`-separated fields: {line:?}"
            ));
            continue;
        };
        match platform {
            "A" | "U" => {}
            "W" => {
                windows_only += 1;
                continue;
            }
            other => {
                misses.push(format!("line {lineno}: unknown platform {other:?}"));
                continue;
            }
        }
        total += 1;
        let got = lexer.process_word(input, &env);
        let ok = match (&got, expected) {
            (Err(_), "error") => true,
            (Ok(word), expected) => expected != "error" && word == expected,
            (Err(_), _) => false,
        };
        if ok {
            passed += 1;
        } else {
            misses.push(format!(
                "line {lineno}: {input:?}: expected {expected:?}, got {got:?}"
            ));
        }
    }
    let note = format!(" ({windows_only} Windows-only `W` rows skipped)");
    report("envVarTest", passed, total, &note, &misses);
}

#[test]
fn words_test() {
    let text = read("wordsTest");
    let lexer = Lexer::new('\\');
    let mut env: Vec<(String, String)> = Vec::new();
    let (mut total, mut passed) = (0, 0);
    let mut misses = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let lineno = index + 1;
        if line.starts_with('#') {
            continue;
        }
        if let Some(entry) = line.strip_prefix("ENV ") {
            // Leading spaces removed, trailing ones kept; later entries override.
            let entry = entry.trim_start_matches(' ');
            let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
            env.push((name.to_owned(), value.to_owned()));
            continue;
        }
        total += 1;
        let fields: Vec<&str> = line.split('|').collect();
        let [input, expected] = fields[..] else {
            misses.push(format!("line {lineno}: not exactly one `|`: {line:?}"));
            continue;
        };
        let input = input.trim();
        let expected: Vec<&str> = expected.trim_start_matches(' ').split(',').collect();
        let got = lexer.process_words(input, &env);
        let ok = match &got {
            Err(_) => expected == ["error"],
            Ok(words) => expected != ["error"] && *words == expected,
        };
        if ok {
            passed += 1;
        } else {
            misses.push(format!(
                "line {lineno}: {input:?}: expected {expected:?}, got {got:?}"
            ));
        }
    }
    report("wordsTest", passed, total, "", &misses);
}

fn string_set(case: &Value, key: &str) -> Option<BTreeSet<String>> {
    case.get(key).map(|v| {
        v.as_array()
            .unwrap_or_else(|| panic!("`{key}` is not an array in {case}"))
            .iter()
            .map(|s| s.as_str().expect("names are strings").to_owned())
            .collect()
    })
}

#[test]
fn process_with_matches() {
    let text = read("process-with-matches.json");
    let doc: Value =
        serde_json::from_str(&text).expect("process-with-matches.json is not valid JSON");
    let cases = doc["cases"].as_array().expect("`cases` is not an array");
    let lexer = Lexer::new('\\');
    let mut passed = 0;
    let mut misses = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let input = case["input"].as_str().expect("`input` is a string");
        let env: BTreeMap<String, String> = case["envs"]
            .as_object()
            .expect("`envs` is an object")
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().expect("env values are strings").to_owned(),
                )
            })
            .collect();
        let got = lexer.process_word_with_matches(input, &env);
        let mut problems = Vec::new();
        if case["error"].as_bool() == Some(true) {
            match &got {
                Ok(e) => problems.push(format!("expected an error, got {:?}", e.word)),
                Err(err) => {
                    if let Some(needle) = case["error_contains"].as_str() {
                        if !err.0.contains(needle) {
                            problems.push(format!("error {:?} does not contain {needle:?}", err.0));
                        }
                    }
                }
            }
        } else {
            let expected = case["expected"].as_str().expect("`expected` is a string");
            match &got {
                Err(err) => problems.push(format!("expected {expected:?}, got error {:?}", err.0)),
                Ok(e) => {
                    if e.word != expected {
                        problems.push(format!("expected {expected:?}, got {:?}", e.word));
                    }
                    if let Some(matches) = string_set(case, "matches") {
                        if e.matched != matches {
                            problems.push(format!("matched {:?}, expected {matches:?}", e.matched));
                        }
                    }
                    if let Some(unmatched) = string_set(case, "unmatched") {
                        if e.unmatched != unmatched {
                            problems.push(format!(
                                "unmatched {:?}, expected {unmatched:?}",
                                e.unmatched
                            ));
                        }
                    }
                }
            }
        }
        if problems.is_empty() {
            passed += 1;
        } else {
            misses.push(format!(
                "case {index} {input:?} (env {env:?}): {}",
                problems.join("; ")
            ));
        }
    }
    report(
        "process-with-matches.json",
        passed,
        cases.len(),
        "",
        &misses,
    );
}
