//! `kiln check`: every problem reported with file:line:col and a caret, non-zero exit on errors.

mod util;

use util::{run, TestDir};

#[test]
fn check_reports_every_problem_with_location_and_caret() {
    let dir = TestDir::new("check-many");
    dir.write(
        "Dockerfile",
        "FROM alpine AS build\nRUNN make\nCOPY --chmod=999 a /b\nFROM alpine AS build\n\
         HEALTHCHECK --interval=5 CMD true\n",
    );
    let (out, _, stderr) = run(&mut dir.kiln(&["check"]));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = [
        "error: unknown instruction: RUNN\n --> Dockerfile:2:1\n  |\n2 | RUNN make\n  | ^^^^\n  = help: did you mean RUN?\n",
        "error: invalid --chmod \"999\": not an octal number (digits 0-7)\n --> Dockerfile:3:6\n  |\n3 | COPY --chmod=999 a /b\n  |      ^^^^^^^^^^^\n",
        "error: duplicate stage name \"build\"\n --> Dockerfile:4:16\n",
        "error: --interval: invalid duration \"5\": expected something like 30s, 1m30s or 500ms\n --> Dockerfile:5:13\n",
    ];
    for e in expected {
        assert!(stderr.contains(e), "missing\n{e}\nin\n{stderr}");
    }
    assert!(
        stderr.ends_with("Dockerfile: 4 errors and 0 warnings\n"),
        "{stderr}"
    );
}

#[test]
fn check_clean_file_and_warnings_exit_zero() {
    let dir = TestDir::new("check-clean");
    dir.write(
        "Dockerfile",
        "FROM alpine\nCOPY . /app\nCMD [\"/app/run\"]\n",
    );
    let (out, _, stderr) = run(&mut dir.kiln(&["check"]));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr, "Dockerfile: no problems found\n");

    dir.write(
        "Dockerfile",
        "FROM alpine AS Build\nMAINTAINER me\nRUN echo a \\\n\n  b\nCMD run\n",
    );
    let (out, _, stderr) = run(&mut dir.kiln(&["check", "--build-arg", "UNUSED=1"]));
    assert!(out.status.success(), "{stderr}");
    for w in [
        "warning: stage name \"Build\" should be lowercase\n --> Dockerfile:1:1",
        "warning: MAINTAINER is deprecated\n --> Dockerfile:2:1",
        "warning: Empty continuation line",
        "warning: CMD in shell form: signals will not reach the program\n --> Dockerfile:6:1",
        "warning: build argument \"UNUSED\" is not used by any ARG",
    ] {
        assert!(stderr.contains(w), "missing {w:?} in\n{stderr}");
    }
    assert!(
        stderr.ends_with("Dockerfile: 0 errors and 5 warnings\n"),
        "{stderr}"
    );
}

#[test]
fn check_reports_expansion_and_plan_errors() {
    let dir = TestDir::new("check-expand");
    dir.write(
        "Dockerfile",
        "ARG IMG\nFROM $IMG\nWORKDIR ${DIR:?set DIR}\n",
    );
    let (out, _, stderr) = run(&mut dir.kiln(&["check"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("error: base name ($IMG) should not be blank\n --> Dockerfile:2:1"),
        "{stderr}"
    );
    let (out, _, stderr) = run(&mut dir.kiln(&["check", "--build-arg", "IMG=alpine"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("WORKDIR: "), "{stderr}");
    assert!(stderr.contains("set DIR"), "{stderr}");
    assert!(stderr.contains("--> Dockerfile:3:1"), "{stderr}");
    let (out, _, stderr) = run(&mut dir.kiln(&[
        "check",
        "--build-arg",
        "IMG=alpine",
        "--build-arg",
        "DIR=/x",
        "--target",
        "zzz",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("error: target stage \"zzz\" could not be found"),
        "{stderr}"
    );
}

#[test]
fn check_validates_the_ignore_file_the_build_would_use() {
    let dir = TestDir::new("check-ignore");
    dir.write("Dockerfile", "FROM alpine\n");
    dir.write(".dockerignore", "node_modules\n[x-\n");
    let (out, _, stderr) = run(&mut dir.kiln(&["check"]));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(".dockerignore"), "{stderr}");
    assert!(stderr.contains("[x-"), "{stderr}");
    // A Dockerfile-specific ignore file wins over .dockerignore.
    dir.write("Dockerfile.dockerignore", "*.log\n");
    let (out, _, stderr) = run(&mut dir.kiln(&["check"]));
    assert!(out.status.success(), "{stderr}");
    dir.write("Dockerfile.dockerignore", "!\n");
    let (out, _, stderr) = run(&mut dir.kiln(&["check"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("Dockerfile.dockerignore"), "{stderr}");
}
