//! `kiln parse`: the dump format against BuildKit's corpus through the real binary, JSON output,
//! and errors on bad input.

mod util;

use std::process::Stdio;
use util::{corpus_dir, run, TestDir};

#[test]
fn parse_dump_matches_every_corpus_result() {
    let root = corpus_dir().join("buildkit-parser/testfiles");
    let mut names: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let dir = TestDir::new("parse-corpus");
    let mut misses = Vec::new();
    for case in &names {
        let df = case.join("Dockerfile");
        let (out, stdout, stderr) = run(&mut dir.kiln(&["parse", "-f", df.to_str().unwrap()]));
        let want = std::fs::read_to_string(case.join("result")).unwrap();
        if !out.status.success() || stdout != want {
            misses.push(format!("{}: {stderr}", case.display()));
        }
    }
    println!(
        "kiln parse corpus: {}/{} cases passed",
        names.len() - misses.len(),
        names.len()
    );
    assert_eq!(names.len(), 33, "expected the 33 upstream testfiles");
    assert!(misses.is_empty(), "misses:\n{}", misses.join("\n"));
}

#[test]
fn parse_reads_default_dockerfile_containerfile_and_stdin() {
    let dir = TestDir::new("parse-default");
    dir.write("Containerfile", "FROM alpine\nCMD [\"sh\"]\n");
    let (out, stdout, _) = run(&mut dir.kiln(&["parse"]));
    assert!(out.status.success());
    assert_eq!(stdout, "(from \"alpine\")\n(cmd \"sh\")\n");
    dir.write("Dockerfile", "FROM busybox\n");
    let (_, stdout, _) = run(&mut dir.kiln(&["parse", "."]));
    assert_eq!(
        stdout, "(from \"busybox\")\n",
        "Dockerfile wins over Containerfile"
    );

    let mut child = dir
        .kiln(&["parse", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from x\nrun a \\\n  b\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "(from \"x\")\n(run \"a   b\")\n"
    );
}

#[test]
fn parse_json_has_typed_stages_and_plan() {
    let dir = TestDir::new("parse-json");
    dir.write(
        "Dockerfile",
        "ARG V=1\nFROM alpine:${V} AS base\nRUN --mount=type=cache,target=/c make\n\
         FROM base AS test\nRUN exit 1\nFROM scratch\nCOPY --from=base --chmod=755 /app /app\n\
         ADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 https://x/y /y\n\
         ARG A B=2\nENV E=1 F=2\nLABEL l=1\nMAINTAINER me\nEXPOSE 80 53/udp\nVOLUME /v\nUSER u\n\
         WORKDIR /w\nONBUILD RUN echo hi\nSTOPSIGNAL SIGTERM\nHEALTHCHECK --interval=5s CMD [\"true\"]\n\
         SHELL [\"/bin/sh\", \"-c\"]\nCMD [\"sh\"]\nENTRYPOINT exec app\n",
    );
    let (out, stdout, stderr) = run(&mut dir.kiln(&["parse", "--json", "--build-arg", "V=3.20"]));
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["plan"]["stages"][0]["base"]["image"], "alpine:3.20");
    assert_eq!(
        v["plan"]["order"],
        serde_json::json!([0, 2]),
        "stage test is not needed"
    );
    assert_eq!(v["plan"]["target"], 2);
    let run0 = &v["dockerfile"]["stages"][0]["instructions"][0]["command"];
    assert_eq!(run0["instruction"], "RUN");
    assert_eq!(run0["args"]["mounts"][0]["kind"], "cache");
    let last = &v["dockerfile"]["stages"][2]["instructions"];
    let copy = &last[0]["command"]["args"];
    assert_eq!(copy["chmod"], "755");
    assert_eq!(copy["from"], "base");
    let kinds: Vec<&str> = last
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["command"]["instruction"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "COPY",
            "COPY",
            "ARG",
            "ENV",
            "LABEL",
            "MAINTAINER",
            "EXPOSE",
            "VOLUME",
            "USER",
            "WORKDIR",
            "ONBUILD",
            "STOPSIGNAL",
            "HEALTHCHECK",
            "SHELL",
            "CMD",
            "ENTRYPOINT"
        ]
    );
    assert_eq!(last[0]["command"]["args"]["is_add"], false);
    assert_eq!(last[1]["command"]["args"]["is_add"], true);
    assert_eq!(last[3]["command"]["args"][1]["key"], "F");
    assert_eq!(
        last[12]["command"]["args"]["cmd"]["interval_ns"],
        5_000_000_000u64
    );
    assert_eq!(last[10]["command"]["args"]["expression"], "RUN echo hi");

    let (out, stdout, _) = run(&mut dir.kiln(&["parse", "--json", "--target", "test"]));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["plan"]["order"], serde_json::json!([0, 1]));

    let (out, _, stderr) = run(&mut dir.kiln(&["parse", "--json", "--target", "nope"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("target stage \"nope\" could not be found (stages are: base, test)"),
        "{stderr}"
    );
}

#[test]
fn parse_errors_are_located_and_never_panic() {
    let dir = TestDir::new("parse-errors");
    dir.write("Dockerfile", "# escape=x\nFROM a\n");
    let (out, _, stderr) = run(&mut dir.kiln(&["parse"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("--> Dockerfile:1:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    dir.write("bad.json.Dockerfile", "FROM a\nCMD [\"a\", [\"nested\"]]\n");
    let (out, _, stderr) = run(&mut dir.kiln(&["parse", "-f", "bad.json.Dockerfile"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("bad.json.Dockerfile:2:"), "{stderr}");

    let (out, _, stderr) = run(&mut dir.kiln(&["parse", "-f", "missing"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("cannot read Dockerfile missing"),
        "{stderr}"
    );
    assert!(stderr.contains("use -f to name another file"), "{stderr}");

    let (out, _, stderr) = run(&mut dir.kiln(&["parse", "-f", "."]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("is a directory"), "{stderr}");

    dir.write("empty", "");
    let (out, _, stderr) = run(&mut dir.kiln(&["parse", "-f", "empty"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("error:"), "{stderr}");

    dir.write("binary", [0xff, 0xfe, 0x00, 0x80, b'\n', b'F', 0xc3]);
    let (out, _, stderr) = run(&mut dir.kiln(&["parse", "--json", "-f", "binary"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn help_is_complete() {
    let dir = TestDir::new("help");
    let (out, stdout, _) = run(&mut dir.kiln(&["--help"]));
    assert!(out.status.success());
    for word in ["parse", "check", "--version"] {
        assert!(stdout.contains(word), "kiln --help lacks {word}:\n{stdout}");
    }
    let (_, stdout, _) = run(&mut dir.kiln(&["parse", "--help"]));
    for word in [
        "--file",
        "--json",
        "--build-arg",
        "--target",
        "--platform",
        "CONTEXT",
        "Examples",
    ] {
        assert!(
            stdout.contains(word),
            "kiln parse --help lacks {word}:\n{stdout}"
        );
    }
    let (_, stdout, _) = run(&mut dir.kiln(&["check", "--help"]));
    for word in [
        "--file",
        "--build-arg",
        "--target",
        "CONTEXT",
        "Exit status",
    ] {
        assert!(
            stdout.contains(word),
            "kiln check --help lacks {word}:\n{stdout}"
        );
    }
    let (out, _, stderr) = run(&mut dir.kiln(&["parse", "--bogus"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("--bogus"), "{stderr}");
}
