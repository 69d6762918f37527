use super::*;
use crate::error::line_col;

fn df(src: &str) -> Dockerfile {
    Dockerfile::parse(src.as_bytes()).unwrap_or_else(|e| panic!("{src}: {e:?}"))
}

fn errors(src: &str) -> Vec<(String, (usize, usize))> {
    match Dockerfile::parse(src.as_bytes()) {
        Ok(_) => panic!("{src} should fail"),
        Err(es) => es
            .into_iter()
            .map(|e| (e.message, line_col(src.as_bytes(), e.span.start)))
            .collect(),
    }
}

fn opts(args: &[(&str, &str)], target: Option<&str>) -> BuildOptions {
    BuildOptions {
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        target: target.map(str::to_string),
        target_platform: Platform::parse("linux/arm64/v8").unwrap(),
        build_platform: Platform::parse("linux/amd64").unwrap(),
    }
}

/// Walks stage `i` and returns the expanded instructions and the final RUN environment.
fn walk(d: &Dockerfile, o: &BuildOptions, i: usize) -> (Vec<Command>, Vec<(String, String)>) {
    let (globals, _) = d.global_args(o).unwrap();
    let mut scope = Scope::new(
        d,
        o,
        &globals,
        vec![("PATH".into(), "/usr/bin:/bin".into())],
    );
    let cmds = d.stages[i]
        .instructions
        .iter()
        .map(|ins| scope.step(ins).unwrap().0.command)
        .collect();
    (cmds, scope.run_env())
}

#[test]
fn stages_and_names() {
    let d =
        df("ARG V=1\nFROM a AS one\nRUN x\nFROM one AS Two\nCOPY --from=one /a /b\nFROM scratch\n");
    assert_eq!(d.meta_args.len(), 1);
    assert_eq!(d.stages.len(), 3);
    assert_eq!(d.stages[1].name.as_deref(), Some("two"));
    assert_eq!(d.stages[0].instructions.len(), 1);
    assert_eq!(d.find_stage("TWO"), Some(1));
    assert_eq!(d.find_stage("2"), Some(2));
    assert_eq!(d.find_stage("3"), None);
}

#[test]
fn structural_errors_are_all_reported() {
    let errs = errors("RUN x\nFROM a AS b\nCOPY --chmod=9 a b\nFROM c AS B\nRUNN x\n");
    let msgs: Vec<&str> = errs.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        msgs,
        vec![
            "RUN cannot come before the first FROM",
            "invalid --chmod \"9\": not an octal number (digits 0-7)",
            "duplicate stage name \"b\"",
            "unknown instruction: RUNN",
        ]
    );
    assert_eq!(errs[2].1, (4, 11));
    assert_eq!(
        errors("ARG x\n")[0].0,
        "the Dockerfile has no FROM instruction"
    );
}

#[test]
fn meta_args_expand_from_lines_only() {
    let src = "ARG BASE=alpine\nARG TAG=3.19\nFROM ${BASE}:${TAG} AS b\nRUN echo $BASE\nARG TAG\n";
    let d = df(src);
    let plan = d.plan(&opts(&[("TAG", "3.20")], None)).unwrap();
    assert_eq!(plan.stages[0].base, Source::Image("alpine:3.20".into()));
    assert!(plan.unused_build_args.is_empty());
    let (_, env) = walk(&d, &opts(&[], None), 0);
    // BASE is not redeclared in the stage: not visible; TAG is, with the global default.
    assert_eq!(env.lookup("BASE"), None);
    assert_eq!(env.lookup("TAG"), Some("3.19"));
}

#[test]
fn env_overrides_arg_and_build_args_override_defaults() {
    let src = "FROM a\nARG A=default\nARG B=b\nENV B=fromenv\nENV C=$A-$B\nARG D\nARG E=${A}x\n";
    let d = df(src);
    let o = opts(&[("A", "cli"), ("D", "dee")], None);
    let (cmds, env) = walk(&d, &o, 0);
    assert_eq!(
        cmds[3],
        Command::Env(vec![KeyValue {
            key: "C".into(),
            value: "cli-fromenv".into()
        }])
    );
    assert_eq!(env.lookup("A"), Some("cli"));
    assert_eq!(env.lookup("B"), Some("fromenv"));
    assert_eq!(env.lookup("D"), Some("dee"));
    assert_eq!(env.lookup("E"), Some("clix"));
    assert_eq!(env.lookup("PATH"), Some("/usr/bin:/bin"));
    let plan = d.plan(&o).unwrap();
    assert!(plan.unused_build_args.is_empty());
    let plan = d
        .plan(&opts(&[("NOPE", "1"), ("HTTP_PROXY", "http://p")], None))
        .unwrap();
    assert_eq!(plan.unused_build_args, vec!["NOPE".to_string()]);
}

#[test]
fn env_values_see_the_previous_environment() {
    let d = df("FROM a\nENV X=1\nENV X=2 Y=$X\n");
    let (cmds, _) = walk(&d, &opts(&[], None), 0);
    assert_eq!(
        cmds[1],
        Command::Env(vec![
            KeyValue {
                key: "X".into(),
                value: "2".into()
            },
            KeyValue {
                key: "Y".into(),
                value: "1".into()
            },
        ])
    );
}

#[test]
fn platform_args() {
    let src =
        "FROM --platform=$BUILDPLATFORM img:$TARGETARCH AS b\nARG TARGETARCH\nARG BUILDOS\nRUN x\n";
    let d = df(src);
    let o = opts(&[], None);
    let plan = d.plan(&o).unwrap();
    assert_eq!(plan.stages[0].base, Source::Image("img:arm64".into()));
    assert_eq!(plan.stages[0].platform.as_deref(), Some("linux/amd64"));
    let (_, env) = walk(&d, &o, 0);
    assert_eq!(env.lookup("TARGETARCH"), Some("arm64"));
    assert_eq!(env.lookup("BUILDOS"), Some("linux"));
    assert_eq!(
        env.lookup("TARGETVARIANT"),
        None,
        "not declared in the stage"
    );
    let g: Vec<_> = plan
        .global_args
        .iter()
        .filter(|(k, _)| k == "TARGETPLATFORM")
        .collect();
    assert_eq!(g[0].1, "linux/arm64/v8");
}

#[test]
fn proxy_args_reach_run_without_declaration() {
    let d = df("FROM a\nRUN x\n");
    let (_, env) = walk(
        &d,
        &opts(&[("https_proxy", "http://p:3128"), ("OTHER", "1")], None),
        0,
    );
    assert_eq!(env.lookup("https_proxy"), Some("http://p:3128"));
    assert_eq!(env.lookup("OTHER"), None);
}

#[test]
fn copy_workdir_user_are_expanded() {
    let src = "FROM a\nARG DIR=/srv\nARG U=app\nWORKDIR $DIR\nWORKDIR sub/../app\nUSER ${U}:${U}\n\
               COPY --chown=$U --chmod=${MODE:-644} src/${U}.txt ${DIR}/\nARG PORTS=\"80 443\"\nEXPOSE $PORTS\n";
    let d = df(src);
    let o = opts(&[], None);
    let (globals, _) = d.global_args(&o).unwrap();
    let mut scope = Scope::new(&d, &o, &globals, vec![]);
    let mut cmds = Vec::new();
    for ins in &d.stages[0].instructions {
        cmds.push(scope.step(ins).unwrap().0.command);
    }
    assert_eq!(scope.workdir(), "/srv/app");
    assert_eq!(cmds[4], Command::User("app:app".into()));
    let Command::Copy(c) = &cmds[5] else { panic!() };
    assert_eq!(c.sources, vec!["src/app.txt".to_string()]);
    assert_eq!(c.dest, "/srv/");
    assert_eq!(c.chown.as_deref(), Some("app"));
    assert_eq!(c.chmod.as_deref(), Some("644"));
    assert_eq!(cmds[7], Command::Expose(vec!["80".into(), "443".into()]));
}

#[test]
fn expanded_values_are_validated() {
    let d = df("FROM a\nARG M=999\nCOPY --chmod=$M a b\n");
    let o = opts(&[], None);
    let (globals, _) = d.global_args(&o).unwrap();
    let mut scope = Scope::new(&d, &o, &globals, vec![]);
    scope.step(&d.stages[0].instructions[0]).unwrap();
    let e = scope.step(&d.stages[0].instructions[1]).unwrap_err();
    assert_eq!(
        e.message,
        "COPY: invalid --chmod \"999\": not an octal number (digits 0-7)"
    );
    let d = df("FROM a\nEXPOSE $P\n");
    let mut scope = Scope::new(&d, &o, &globals, vec![("P".into(), "http".into())]);
    let e = scope.step(&d.stages[0].instructions[0]).unwrap_err();
    assert_eq!(
        e.message,
        "EXPOSE: invalid port \"http\" in EXPOSE \"http\": expected 0-65535"
    );
}

#[test]
fn undefined_variables_are_reported() {
    let d = df("FROM a\nWORKDIR /x/$NOPE\n");
    let o = opts(&[], None);
    let mut scope = Scope::new(&d, &o, &[], vec![]);
    let (_, undefined) = scope.step(&d.stages[0].instructions[0]).unwrap();
    assert!(undefined.contains("NOPE"));
}

#[test]
fn target_selects_needed_stages_in_dependency_order() {
    let src = "FROM alpine AS base\nRUN x\n\
               FROM base AS deps\nRUN y\n\
               FROM golang AS tools\nRUN z\n\
               FROM broken-image-that-would-fail AS unused\nRUN exit 1\n\
               FROM scratch AS final\nCOPY --from=deps /a /a\nRUN --mount=type=bind,from=tools,target=/t true\n\
               COPY --from=busybox:1.36 /bin/busybox /bin/\n";
    let d = df(src);
    let plan = d.plan(&opts(&[], None)).unwrap();
    assert_eq!(plan.target, 4);
    assert_eq!(
        plan.order,
        vec![0, 1, 2, 4],
        "the unused stage is never built"
    );
    assert_eq!(plan.stages[1].base, Source::Stage(0));
    assert_eq!(plan.stages[4].base, Source::Scratch);
    let kinds: Vec<(DepKind, Source)> = plan.stages[4]
        .deps
        .iter()
        .map(|d| (d.kind, d.source.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (DepKind::CopyFrom, Source::Stage(1)),
            (DepKind::MountFrom, Source::Stage(2)),
            (DepKind::CopyFrom, Source::Image("busybox:1.36".into())),
        ]
    );
    // base and tools are independent: one wave; deps after base; final last.
    assert_eq!(plan.waves(), vec![vec![0, 2], vec![1], vec![4]]);
    let plan = d.plan(&opts(&[], Some("DEPS"))).unwrap();
    assert_eq!(plan.order, vec![0, 1]);
    let plan = d.plan(&opts(&[], Some("2"))).unwrap();
    assert_eq!(plan.order, vec![2]);
    let e = d.plan(&opts(&[], Some("nope"))).unwrap_err();
    assert_eq!(e.message, "target stage \"nope\" could not be found");
    assert_eq!(
        e.help.as_deref(),
        Some("stages are: base, deps, tools, unused, final")
    );
}

#[test]
fn copy_from_index_and_cycles() {
    let d = df("FROM a\nRUN x\nFROM b\nCOPY --from=0 /x /x\n");
    let plan = d.plan(&opts(&[], None)).unwrap();
    assert_eq!(plan.order, vec![0, 1]);
    let d = df("FROM a AS x\nCOPY --from=y /a /a\nFROM b AS y\nCOPY --from=x /b /b\n");
    let e = d.plan(&opts(&[], None)).unwrap_err();
    assert!(
        e.message.starts_with("circular dependency between stages"),
        "{}",
        e.message
    );
    let d = df("FROM a AS x\nCOPY --from=x /a /a\n");
    assert_eq!(
        d.plan(&opts(&[], None)).unwrap_err().message,
        "stage \"x\" refers to itself"
    );
}

#[test]
fn from_a_later_stage_name_is_an_image() {
    let d = df("FROM later AS first\nFROM alpine AS later\n");
    let plan = d.plan(&opts(&[], Some("first"))).unwrap();
    assert_eq!(plan.stages[0].base, Source::Image("later".into()));
}

#[test]
fn blank_base_is_an_error() {
    let d = df("ARG IMG\nFROM $IMG\n");
    let e = d.plan(&opts(&[], None)).unwrap_err();
    assert_eq!(e.message, "base name ($IMG) should not be blank");
    let plan = d.plan(&opts(&[("IMG", "debian")], None)).unwrap();
    assert_eq!(plan.stages[0].base, Source::Image("debian".into()));
}

#[test]
fn platforms() {
    assert_eq!(
        Platform::parse("linux/arm/v7").unwrap().to_string(),
        "linux/arm/v7"
    );
    assert_eq!(Platform::parse("arm64").unwrap().to_string(), "linux/arm64");
    assert_eq!(
        Platform::parse("linux/x86_64").unwrap().architecture,
        "amd64"
    );
    assert!(Platform::parse("linux//x").is_err());
    assert!(Platform::parse("a/b/c/d").is_err());
    let d = df("FROM --platform=bogus//x a\n");
    assert!(d
        .plan(&opts(&[], None))
        .unwrap_err()
        .message
        .starts_with("invalid platform"));
}

#[test]
fn workdir_join() {
    assert_eq!(join_workdir("/", "app"), "/app");
    assert_eq!(join_workdir("/a/b", "../c/./d/"), "/a/c/d");
    assert_eq!(join_workdir("/a", "/x/../.."), "/");
}
