//! The parser against BuildKit's parser test data (`buildkit-parser` in the shared corpus).
//!
//! The corpus is found at `$KILN_CORPUS` or else `../../../shared/corpus` from this crate. Each
//! group prints `<group>: N/M cases passed` (run with `--nocapture` to see it) and fails listing
//! every case that did not pass; no case is skipped.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_dockerfile::ast::Heredoc;
use kiln_dockerfile::parser::{
    detect_directive, detect_syntax, heredocs_from_line, parse, parse_directives,
    parse_heredoc_word, split_words,
};
use serde_json::Value;

/// The `buildkit-parser` corpus directory; panics with a clear message when it is missing.
fn corpus() -> PathBuf {
    let root = std::env::var_os("KILN_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/corpus"
            ))
        });
    let dir = root.join("buildkit-parser");
    assert!(
        dir.join("README.md").is_file(),
        "parser corpus not found at {} (set KILN_CORPUS to the shared corpus directory)",
        dir.display()
    );
    dir
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&read(path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The case directories of `dir`, sorted.
fn case_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// The rows of a TSV file after its header, each split at tabs.
fn tsv_rows(path: &Path) -> Vec<Vec<String>> {
    let text = String::from_utf8(read(path)).expect("TSV is UTF-8");
    text.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// A JSON string literal from the corpus tables.
fn json_string(literal: &str) -> String {
    serde_json::from_str(literal).unwrap_or_else(|e| panic!("bad JSON string {literal}: {e}"))
}

fn json_strings(literal: &str) -> Vec<String> {
    serde_json::from_str(literal).unwrap_or_else(|e| panic!("bad JSON list {literal}: {e}"))
}

/// Pass/fail bookkeeping for one group of cases.
struct Group {
    name: &'static str,
    total: usize,
    misses: Vec<String>,
}

impl Group {
    fn new(name: &'static str) -> Self {
        Group {
            name,
            total: 0,
            misses: Vec::new(),
        }
    }

    /// Records one case: `Ok` passes, `Err` explains the miss.
    fn case(&mut self, label: impl AsRef<str>, outcome: Result<(), String>) {
        self.total += 1;
        if let Err(why) = outcome {
            self.misses.push(format!("{}: {why}", label.as_ref()));
        }
    }

    /// Prints the tally and fails when any case missed or fewer cases than expected ran.
    fn finish(self, expected_total: usize) {
        println!(
            "{}: {}/{} cases passed",
            self.name,
            self.total - self.misses.len(),
            self.total
        );
        assert_eq!(
            self.total, expected_total,
            "{}: expected {expected_total} cases, found {}",
            self.name, self.total
        );
        assert!(
            self.misses.is_empty(),
            "{} misses:\n{}",
            self.name,
            self.misses.join("\n")
        );
    }
}

fn check_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

#[test]
fn positive_testfiles() {
    let mut group = Group::new("testfiles");
    for dir in case_dirs(&corpus().join("testfiles")) {
        let label = dir.file_name().unwrap().to_string_lossy().into_owned();
        let outcome = (|| {
            let want = String::from_utf8(read(&dir.join("result"))).map_err(|e| e.to_string())?;
            let ast = parse(&read(&dir.join("Dockerfile"))).map_err(|e| format!("error: {e}"))?;
            let got = ast.dump() + "\n";
            if got == want {
                Ok(())
            } else {
                Err(format!("dump differs\n--- got\n{got}--- want\n{want}"))
            }
        })();
        group.case(label, outcome);
    }
    group.finish(33);
}

#[test]
fn negative_testfiles() {
    let mut group = Group::new("testfiles-negative");
    for dir in case_dirs(&corpus().join("testfiles-negative")) {
        let label = dir.file_name().unwrap().to_string_lossy().into_owned();
        let outcome = match parse(&read(&dir.join("Dockerfile"))) {
            Ok(ast) => Err(format!("parsed without error:\n{}", ast.dump())),
            Err(_) => Ok(()),
        };
        group.case(label, outcome);
    }
    group.finish(4);
}

fn heredoc_from_json(v: &Value) -> Heredoc {
    Heredoc {
        name: v["Name"].as_str().expect("Name").to_string(),
        file_descriptor: v["FileDescriptor"].as_u64().expect("FileDescriptor") as u32,
        expand: v["Expand"].as_bool().expect("Expand"),
        chomp: v["Chomp"].as_bool().expect("Chomp"),
        content: v["Content"].as_str().expect("Content").to_string(),
    }
}

#[test]
fn extracted_heredoc() {
    let dir = corpus().join("extracted/heredoc");
    let expected = read_json(&dir.join("expected.json"));
    let expected = expected.as_array().expect("a list of instructions");
    let ast = parse(&read(&dir.join("Dockerfile"))).expect("heredoc Dockerfile parses");
    let mut group = Group::new("extracted/heredoc");
    for (i, want) in expected.iter().enumerate() {
        let want_dump = want["dump"].as_str().expect("dump");
        let outcome = match ast.children.get(i) {
            None => Err("missing instruction".to_string()),
            Some(node) => {
                let want_docs: Vec<Heredoc> = want["heredocs"]
                    .as_array()
                    .expect("heredocs")
                    .iter()
                    .map(heredoc_from_json)
                    .collect();
                check_eq("dump", format!("({})", node.dump()), want_dump.to_string())
                    .and_then(|()| check_eq("heredocs", &node.heredocs, &want_docs))
            }
        };
        group.case(format!("#{i} {want_dump}"), outcome);
    }
    group.case(
        "instruction count",
        check_eq("instructions", ast.children.len(), expected.len()),
    );
    let dump_file = String::from_utf8(read(&dir.join("expected-dump.txt"))).expect("UTF-8");
    group.case(
        "expected-dump.txt",
        check_eq("dump", ast.dump() + "\n", dump_file),
    );
    group.finish(expected.len() + 2);
}

#[test]
fn extracted_heredoc_words() {
    let rows = tsv_rows(&corpus().join("extracted/heredoc-words.tsv"));
    let mut group = Group::new("extracted/heredoc-words.tsv");
    for row in &rows {
        let (function, input, expected) = (row[0].as_str(), json_string(&row[1]), row[2].as_str());
        let label = format!("{function}({input:?})");
        let outcome = match function {
            "ParseHeredoc" => match (parse_heredoc_word(&input), expected) {
                (Ok(None), "not-a-heredoc") | (Err(_), "error") => Ok(()),
                (Ok(Some(doc)), want) if want.starts_with("name=") => {
                    check_eq("name", doc.name.as_str(), &want["name=".len()..])
                }
                (got, want) => Err(format!("got {got:?}, want {want}")),
            },
            "heredocsFromLine" => match heredocs_from_line(&input) {
                Ok(docs) => check_eq(
                    "names",
                    docs.into_iter().map(|d| d.name).collect::<Vec<_>>(),
                    json_strings(expected),
                ),
                Err(e) => Err(format!("error: {e}")),
            },
            other => Err(format!("unknown function {other}")),
        };
        group.case(label, outcome);
    }
    group.finish(rows.len().max(1));
}

#[test]
fn extracted_json_arrays() {
    let rows = tsv_rows(&corpus().join("extracted/json-arrays.tsv"));
    let mut group = Group::new("extracted/json-arrays.tsv");
    for row in &rows {
        let input = json_string(&row[0]);
        let src = format!("CMD {input}");
        let outcome = match (parse(src.as_bytes()), row[1].as_str()) {
            (Ok(ast), "valid") => {
                let node = &ast.children[0];
                check_eq("json", node.json, true)
                    .and_then(|()| check_eq("args", node.args.clone(), json_strings(&row[2])))
            }
            (Err(e), "error-not-string-array") => check_eq(
                "error",
                e.message.as_str(),
                "when using JSON array syntax, arrays must be comprised of strings only",
            ),
            (Ok(ast), want) => Err(format!("parsed as {}, want {want}", ast.dump())),
            (Err(e), want) => Err(format!("error {e}, want {want}")),
        };
        group.case(format!("{input:?}"), outcome);
    }
    group.finish(rows.len().max(1));
}

#[test]
fn extracted_name_val() {
    let rows = tsv_rows(&corpus().join("extracted/name-val.tsv"));
    let mut group = Group::new("extracted/name-val.tsv");
    for row in &rows {
        let src = format!("{} {}", row[0], json_string(&row[1]));
        let outcome = match (parse(src.as_bytes()), row[2].strip_prefix("error: ")) {
            (Ok(ast), None) => {
                check_eq("args", ast.children[0].args.clone(), json_strings(&row[2]))
            }
            (Err(e), Some(message)) => check_eq("error", e.message.as_str(), message),
            (Ok(ast), Some(message)) => {
                Err(format!("parsed as {}, want error {message}", ast.dump()))
            }
            (Err(e), None) => Err(format!("error: {e}")),
        };
        group.case(src, outcome);
    }
    group.finish(rows.len().max(1));
}

#[test]
fn extracted_parse_words() {
    let rows = tsv_rows(&corpus().join("extracted/parse-words.tsv"));
    let mut group = Group::new("extracted/parse-words.tsv");
    for row in &rows {
        let input = json_string(&row[0]);
        let outcome = check_eq("words", split_words(&input, '\\'), json_strings(&row[1]));
        group.case(format!("{input:?}"), outcome);
    }
    group.finish(rows.len().max(1));
}

/// A DetectSyntax-style expectation: `ok`, and `ref`/`cmdline`/`line` where given.
fn check_detected(found: Option<(String, String, usize)>, want: &Value) -> Result<(), String> {
    let ok = want["ok"].as_bool().expect("ok");
    let Some((reference, cmdline, line)) = found else {
        return if ok {
            Err("nothing detected".into())
        } else {
            Ok(())
        };
    };
    if !ok {
        return Err(format!("detected {reference:?} but expected nothing"));
    }
    if let Some(want) = want.get("ref").and_then(Value::as_str) {
        check_eq("ref", reference.as_str(), want)?;
    }
    if let Some(want) = want.get("cmdline").and_then(Value::as_str) {
        check_eq("cmdline", cmdline.as_str(), want)?;
    }
    if let Some(want) = want.get("line").and_then(Value::as_u64) {
        check_eq("line", line as u64, want)?;
    }
    Ok(())
}

/// The input of a directives case, with its optional hex prefix (a byte order mark).
fn directive_input(case: &Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(hex) = case.get("input_hex_prefix").and_then(Value::as_str) {
        for pair in hex.as_bytes().chunks(2) {
            let digits = std::str::from_utf8(pair).expect("hex");
            bytes.push(u8::from_str_radix(digits, 16).expect("hex digits"));
        }
    }
    bytes.extend_from_slice(case["input"].as_str().expect("input").as_bytes());
    bytes
}

#[test]
fn extracted_directives() {
    let cases = read_json(&corpus().join("extracted/directives.json"));
    let mut group = Group::new("extracted/directives.json");
    let mut expected_total = 0;
    for case in cases["ParseAll"].as_array().expect("ParseAll") {
        let input = directive_input(case);
        let want: Vec<(String, String)> = case["expected"]
            .as_array()
            .expect("expected")
            .iter()
            .map(|d| {
                (
                    d["name"].as_str().unwrap().to_string(),
                    d["value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let outcome = match parse_directives(&input) {
            Ok(found) => check_eq(
                "directives",
                found
                    .into_iter()
                    .map(|d| (d.name, d.value))
                    .collect::<Vec<_>>(),
                want,
            ),
            Err(e) => Err(format!("error: {e}")),
        };
        group.case(
            format!("ParseAll {:?}", String::from_utf8_lossy(&input)),
            outcome,
        );
        expected_total += 1;
    }
    for case in cases["DetectSyntax"].as_array().expect("DetectSyntax") {
        let input = directive_input(case);
        let outcome = check_detected(detect_syntax(&input), case);
        group.case(
            format!("DetectSyntax {:?}", String::from_utf8_lossy(&input)),
            outcome,
        );
        expected_total += 1;
    }
    for case in cases["ParseDirective(check)"]
        .as_array()
        .expect("ParseDirective(check)")
    {
        let input = directive_input(case);
        let outcome = check_detected(detect_directive("check", &input), case);
        group.case(
            format!(
                "ParseDirective(check) {:?}",
                String::from_utf8_lossy(&input)
            ),
            outcome,
        );
        expected_total += 1;
    }
    group.finish(expected_total.max(1));
}

#[test]
fn extracted_line_numbers() {
    let dir = corpus();
    let want = read_json(&dir.join("extracted/line-numbers.json"));
    let ast = parse(&read(&dir.join("testfile-line/Dockerfile"))).expect("testfile-line parses");
    let mut group = Group::new("extracted/line-numbers.json");
    let root = (
        ast.children.first().map(|n| n.start_line),
        ast.children.last().map(|n| n.end_line),
    );
    let want_root = (
        want["root"]["StartLine"].as_u64().map(|v| v as usize),
        want["root"]["EndLine"].as_u64().map(|v| v as usize),
    );
    group.case("root", check_eq("root lines", root, want_root));
    let children = want["children"].as_array().expect("children");
    for (i, pair) in children.iter().enumerate() {
        let want = (
            pair[0].as_u64().unwrap() as usize,
            pair[1].as_u64().unwrap() as usize,
        );
        let got = ast.children.get(i).map(|n| (n.start_line, n.end_line));
        group.case(format!("child {i}"), check_eq("lines", got, Some(want)));
    }
    group.case(
        "child count",
        check_eq("children", ast.children.len(), children.len()),
    );
    group.finish(children.len() + 2);
}

#[test]
fn extracted_empty_continuation_warnings() {
    let dir = corpus().join("extracted/empty-continuation-warnings");
    let want = read_json(&dir.join("expected.json"));
    let ast = parse(&read(&dir.join("Dockerfile"))).expect("the Dockerfile parses");
    let mut group = Group::new("extracted/empty-continuation-warnings");
    let count = want["warning_count"].as_u64().expect("warning_count") as usize;
    group.case("count", check_eq("warnings", ast.warnings.len(), count));
    let contains = want["warnings_contain"]
        .as_array()
        .expect("warnings_contain");
    for (i, needles) in contains.iter().enumerate() {
        let outcome = match ast.warnings.get(i) {
            None => Err("missing warning".to_string()),
            Some(w) => needles
                .as_array()
                .expect("needles")
                .iter()
                .map(|n| n.as_str().expect("needle"))
                .find(|n| !w.short.contains(n))
                .map_or(Ok(()), |n| {
                    Err(format!("{:?} does not contain {n:?}", w.short))
                }),
        };
        group.case(format!("warning {i}"), outcome);
    }
    let detail = want["first_warning_detail_contains"]
        .as_str()
        .expect("detail");
    group.case(
        "detail",
        match ast.warnings.first() {
            Some(w) if w.detail.contains(detail) => Ok(()),
            other => Err(format!("first warning {other:?} lacks {detail:?}")),
        },
    );
    let dump: Vec<&str> = want["derived_dump_not_upstream"]
        .as_array()
        .expect("dump")
        .iter()
        .map(|v| v.as_str().expect("line"))
        .collect();
    group.case("dump", check_eq("dump", ast.dump(), dump.join("\n")));
    group.finish(contains.len() + 3);
}
