use super::*;
use crate::error::line_col;
use crate::parser::parse;

fn ins(src: &str) -> Result<Instruction, Error> {
    let ast = parse(src.as_bytes()).expect("parses");
    from_node(&ast.children[0], src.as_bytes())
}

fn cmd(src: &str) -> Command {
    ins(src).unwrap_or_else(|e| panic!("{src:?}: {e}")).command
}

fn err(src: &str) -> Error {
    match ins(src) {
        Ok(i) => panic!("{src:?} should fail, got {:?}", i.command),
        Err(e) => e,
    }
}

fn msg(src: &str) -> String {
    err(src).message
}

/// (line, column) where the error points.
fn at(src: &str) -> (usize, usize) {
    line_col(src.as_bytes(), err(src).span.start)
}

#[test]
fn from_forms() {
    assert_eq!(
        cmd("FROM busybox"),
        Command::From(FromCmd {
            image: "busybox".into(),
            name: None,
            platform: None
        })
    );
    assert_eq!(
        cmd("from --platform=linux/arm64 golang:1.22 As Build"),
        Command::From(FromCmd {
            image: "golang:1.22".into(),
            name: Some("build".into()),
            platform: Some("linux/arm64".into()),
        })
    );
    assert_eq!(
        msg("FROM a b"),
        "FROM requires either one or three arguments: FROM IMAGE [AS NAME]"
    );
    assert_eq!(
        msg("FROM a IS b"),
        "FROM expects `AS` before the stage name, found \"IS\""
    );
    assert_eq!(
        msg("FROM a AS 1st"),
        "invalid name for build stage: \"1st\", name can't start with a number or contain symbols"
    );
    assert_eq!(at("FROM a AS 1st"), (1, 11));
    assert_eq!(
        msg("FROM --plattform=x a"),
        "unknown flag for FROM: --plattform"
    );
    assert_eq!(
        err("FROM --plattform=x a").help.as_deref(),
        Some("did you mean --platform?")
    );
    assert_eq!(at("FROM --plattform=x a"), (1, 6));
    assert_eq!(
        msg("FROM --platform a"),
        "missing a value on flag: --platform"
    );
}

#[test]
fn run_forms_and_flags() {
    let Command::Run(r) = cmd("RUN echo hi") else {
        panic!()
    };
    assert_eq!(r.command, CommandLine::Shell("echo hi".into()));
    let Command::Run(r) = cmd(r#"RUN ["echo", "hi"]"#) else {
        panic!()
    };
    assert_eq!(
        r.command,
        CommandLine::Exec(vec!["echo".into(), "hi".into()])
    );
    let Command::Run(r) = cmd("RUN --network=none --security=insecure --device=/dev/fuse true")
    else {
        panic!()
    };
    assert_eq!(r.network, Some(NetworkMode::None));
    assert_eq!(r.security, Some(Security::Insecure));
    assert_eq!(r.devices, vec!["/dev/fuse".to_string()]);
    let Command::Run(r) = cmd("RUN --network=host true") else {
        panic!()
    };
    assert_eq!(r.network, Some(NetworkMode::Host));
    assert_eq!(
        msg("RUN --network=bridge true"),
        "unsupported network mode \"bridge\": expected default, none or host"
    );
    assert_eq!(
        msg("RUN --security=root true"),
        "unsupported security mode \"root\": expected sandbox or insecure"
    );
    assert_eq!(
        msg("RUN --network=none --network=host true"),
        "duplicate flag specified: --network"
    );
    assert_eq!(
        msg("RUN --mnt=type=cache,target=/x true"),
        "unknown flag for RUN: --mnt"
    );
    assert_eq!(msg("RUN"), "RUN requires a command to run");
    let Command::Run(r) = cmd("RUN <<EOF\necho hi\nEOF\n") else {
        panic!()
    };
    assert_eq!(r.heredocs.len(), 1);
    assert_eq!(r.heredocs[0].content, "echo hi\n");
}

#[test]
fn run_mounts_of_every_type() {
    let Command::Run(r) = cmd(
        "RUN --mount=type=cache,target=/root/.cache,id=pip,sharing=locked,mode=0700,uid=1000,gid=1000 \
         --mount=type=bind,from=build,source=/out,target=/in,rw \
         --mount=type=tmpfs,target=/tmp,size=64m \
         --mount=type=secret,id=token,required,env=TOKEN \
         --mount=type=ssh \
         true",
    ) else {
        panic!()
    };
    let [cache, bind, tmpfs, secret, ssh] = r.mounts.as_slice() else {
        panic!("{:?}", r.mounts)
    };
    assert_eq!(cache.kind, MountType::Cache);
    assert_eq!(cache.target.as_deref(), Some("/root/.cache"));
    assert_eq!(cache.id.as_deref(), Some("pip"));
    assert_eq!(cache.sharing, Sharing::Locked);
    assert_eq!(
        (cache.mode.as_deref(), cache.uid.as_deref()),
        (Some("0700"), Some("1000"))
    );
    assert!(!cache.readonly);
    assert_eq!(bind.kind, MountType::Bind);
    assert_eq!(bind.from.as_deref(), Some("build"));
    assert_eq!(bind.source.as_deref(), Some("/out"));
    assert!(!bind.readonly, "rw makes a bind mount writable");
    assert_eq!(tmpfs.size.as_deref(), Some("64m"));
    assert_eq!(secret.kind, MountType::Secret);
    assert!(secret.required);
    assert_eq!(secret.env.as_deref(), Some("TOKEN"));
    assert_eq!(ssh.id.as_deref(), Some("default"));
    // Defaults.
    let Command::Run(r) = cmd("RUN --mount=target=/src true") else {
        panic!()
    };
    assert_eq!(r.mounts[0].kind, MountType::Bind);
    assert!(r.mounts[0].readonly, "bind mounts are read-only by default");
    let Command::Run(r) = cmd("RUN --mount=type=secret,id=npmrc true") else {
        panic!()
    };
    assert_eq!(r.mounts[0].target.as_deref(), Some("/run/secrets/npmrc"));
    // `source` names a secret too (and wins over `id`); the default target is the base name.
    let Command::Run(r) = cmd("RUN --mount=type=secret,id=x,source=ci/npmrc true") else {
        panic!()
    };
    assert_eq!(r.mounts[0].id.as_deref(), Some("ci/npmrc"));
    assert_eq!(r.mounts[0].source, None);
    assert_eq!(r.mounts[0].target.as_deref(), Some("/run/secrets/npmrc"));
}

#[test]
fn run_mount_errors() {
    let cases = [
        (
            "type=volume,target=/x",
            "unsupported mount type \"volume\": expected bind, cache, tmpfs, secret or ssh",
        ),
        ("type=cache", "mount type cache requires a target"),
        (
            "type=cache,target=/x,sharing=maybe",
            "unsupported sharing value \"maybe\": expected shared, private or locked",
        ),
        (
            "type=cache,target=/x,mode=999",
            "invalid mode \"999\": expected an octal number up to 7777",
        ),
        (
            "type=cache,target=/x,uid=root",
            "invalid uid \"root\": expected a number",
        ),
        (
            "type=bind,target=/x,sharing=locked",
            "sharing is not supported for mount type bind",
        ),
        (
            "type=secret,id=a,from=build",
            "from is not supported for mount type secret",
        ),
        (
            "type=tmpfs,target=/x,bogus=1",
            "unexpected key \"bogus\" in \"bogus=1\"",
        ),
        (
            "type=bind,target=/x,ro=maybe",
            "invalid value for ro: \"maybe\"",
        ),
        (
            "type=secret",
            "secret mount requires an id, a target or an env",
        ),
        ("type=ssh,source=/x", "ssh does not support source"),
        (
            "type=cache,target=\\\"/x",
            "unterminated quote in \"type=cache,target=\\\"/x\"",
        ),
    ];
    for (spec, want) in cases {
        let src = format!("RUN --mount={spec} true");
        assert_eq!(msg(&src), format!("invalid --mount: {want}"), "{src}");
    }
    assert_eq!(
        msg("RUN --mount=type=tmpfs,target=/x --mount=type=cache,target=/x/ true"),
        "mount target \"/x/\" is used by more than one --mount"
    );
}

#[test]
fn copy_and_add_flags() {
    let Command::Copy(c) = cmd(
        "COPY --from=build --chown=app:app --chmod=0755 --link --parents --exclude=*.md --exclude=tmp a b /dst/",
    ) else {
        panic!()
    };
    assert!(!c.is_add);
    assert_eq!(c.sources, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(c.dest, "/dst/");
    assert_eq!(c.from.as_deref(), Some("build"));
    assert_eq!(c.chown.as_deref(), Some("app:app"));
    assert_eq!(c.chmod.as_deref(), Some("0755"));
    assert!(c.link && c.parents);
    assert_eq!(c.excludes, vec!["*.md".to_string(), "tmp".to_string()]);
    let sum = format!("sha256:{}", "a".repeat(64));
    let Command::Copy(c) = cmd(&format!(
        "ADD --checksum={sum} --keep-git-dir --unpack=false --chmod=u=rwX,go=rX https://example.com/x.tgz /x"
    )) else {
        panic!()
    };
    assert!(c.is_add && c.keep_git_dir);
    assert_eq!(c.unpack, Some(false));
    assert_eq!(c.checksum.as_deref(), Some(sum.as_str()));
    let Command::Copy(c) = cmd(r#"COPY ["a b", "/c d/"]"#) else {
        panic!()
    };
    assert_eq!(c.sources, vec!["a b".to_string()]);
    assert_eq!(c.dest, "/c d/");
    let Command::Copy(c) = cmd("COPY <<EOF /etc/motd\nhello\nEOF\n") else {
        panic!()
    };
    assert_eq!(c.sources, vec!["<<EOF".to_string()]);
    assert_eq!(c.heredocs[0].content, "hello\n");
}

#[test]
fn copy_and_add_errors() {
    assert_eq!(
        msg("COPY onlyone"),
        "COPY requires at least two arguments, but only one was provided. Destination could not be determined"
    );
    assert_eq!(
        msg("ADD"),
        "ADD requires at least two arguments: a source and a destination"
    );
    assert_eq!(
        msg("COPY --checksum=sha256:00 a b"),
        "unknown flag for COPY: --checksum"
    );
    assert_eq!(msg("ADD --from=build a b"), "unknown flag for ADD: --from");
    assert_eq!(
        msg("COPY --chmod=999 a b"),
        "invalid --chmod \"999\": not an octal number (digits 0-7)"
    );
    assert_eq!(at("COPY --chmod=999 a b"), (1, 6));
    assert_eq!(
        msg("COPY --chmod=17777 a b"),
        "invalid --chmod \"17777\": octal modes go up to 7777"
    );
    assert_eq!(
        msg("COPY --chmod=u=rwq a b"),
        "invalid --chmod \"u=rwq\": expected an octal mode like 755 or a symbolic mode like u=rwX,go=rX"
    );
    assert_eq!(
        msg("COPY --link=maybe a b"),
        "expecting boolean value for flag --link, not: \"maybe\""
    );
    assert_eq!(
        msg("COPY --from= a b"),
        "--from requires a stage or image name"
    );
    assert_eq!(msg("COPY --chown= a b"), "--chown requires a user");
    assert_eq!(
        msg("ADD --checksum=sha256:abc https://x/y /y"),
        "invalid --checksum \"sha256:abc\": expected 64 lowercase hex digits after sha256:"
    );
    assert_eq!(
        msg("ADD --checksum=md5:abc https://x/y /y"),
        "unsupported --checksum algorithm \"md5\": use sha256"
    );
    let sum = format!("sha256:{}", "0".repeat(64));
    assert_eq!(
        msg(&format!("ADD --checksum={sum} local.txt /y")),
        "--checksum is only supported for http(s) and git sources, not \"local.txt\""
    );
    assert_eq!(
        msg(&format!("ADD --checksum={sum} https://a/1 https://a/2 /y")),
        "--checksum can't be used with more than one source"
    );
}

#[test]
fn metadata_instructions() {
    assert_eq!(
        cmd("ENV A=1 B=\"two words\""),
        Command::Env(vec![
            KeyValue {
                key: "A".into(),
                value: "1".into()
            },
            KeyValue {
                key: "B".into(),
                value: "\"two words\"".into()
            },
        ])
    );
    assert_eq!(
        cmd("ENV LEGACY some value"),
        Command::Env(vec![KeyValue {
            key: "LEGACY".into(),
            value: "some value".into()
        }])
    );
    assert_eq!(
        cmd("LABEL org.opencontainers.image.title=kiln"),
        Command::Label(vec![KeyValue {
            key: "org.opencontainers.image.title".into(),
            value: "kiln".into()
        }])
    );
    assert_eq!(
        cmd("MAINTAINER Jane <j@x>"),
        Command::Maintainer("Jane <j@x>".into())
    );
    assert_eq!(
        cmd("EXPOSE 80 443/tcp 53/udp 7000-7010/sctp"),
        Command::Expose(vec![
            "80".into(),
            "443/tcp".into(),
            "53/udp".into(),
            "7000-7010/sctp".into()
        ])
    );
    assert_eq!(
        cmd("VOLUME /data /logs"),
        Command::Volume(vec!["/data".into(), "/logs".into()])
    );
    assert_eq!(
        cmd(r#"VOLUME ["/data"]"#),
        Command::Volume(vec!["/data".into()])
    );
    assert_eq!(cmd("USER app:staff"), Command::User("app:staff".into()));
    assert_eq!(cmd("WORKDIR /app"), Command::Workdir("/app".into()));
    assert_eq!(
        cmd("ARG A B=2 C=\"x y\""),
        Command::Arg(vec![
            ArgDef {
                name: "A".into(),
                default: None
            },
            ArgDef {
                name: "B".into(),
                default: Some("2".into())
            },
            ArgDef {
                name: "C".into(),
                default: Some("\"x y\"".into())
            },
        ])
    );
    assert_eq!(
        cmd("STOPSIGNAL SIGQUIT"),
        Command::Stopsignal("SIGQUIT".into())
    );
    assert_eq!(cmd("STOPSIGNAL 9"), Command::Stopsignal("9".into()));
    assert_eq!(cmd("STOPSIGNAL $SIG"), Command::Stopsignal("$SIG".into()));
    assert_eq!(
        cmd(r#"SHELL ["/bin/bash", "-eo", "pipefail", "-c"]"#),
        Command::Shell(vec![
            "/bin/bash".into(),
            "-eo".into(),
            "pipefail".into(),
            "-c".into()
        ])
    );
    assert_eq!(
        cmd("CMD [\"sh\"]"),
        Command::Cmd(CommandLine::Exec(vec!["sh".into()]))
    );
    assert_eq!(
        cmd("ENTRYPOINT exec top -b"),
        Command::Entrypoint(CommandLine::Shell("exec top -b".into()))
    );
}

#[test]
fn metadata_errors() {
    assert_eq!(msg("ENV"), "ENV requires at least one argument");
    assert_eq!(msg("LABEL =x"), "LABEL names can not be blank");
    assert_eq!(
        msg("EXPOSE 80/icmp"),
        "invalid protocol \"icmp\" in EXPOSE \"80/icmp\": use tcp, udp or sctp"
    );
    assert_eq!(
        msg("EXPOSE http"),
        "invalid port \"http\" in EXPOSE \"http\": expected 0-65535"
    );
    assert_eq!(at("EXPOSE 80 http"), (1, 11));
    assert_eq!(
        msg("EXPOSE 90-80"),
        "invalid port range \"90-80\" in EXPOSE: end is below start"
    );
    assert_eq!(msg("USER"), "USER requires exactly one argument");
    assert_eq!(msg("WORKDIR"), "WORKDIR requires exactly one argument");
    assert_eq!(msg("ARG"), "ARG requires at least one argument");
    assert_eq!(msg("ARG =x"), "ARG names can not be blank: \"=x\"");
    assert_eq!(msg("STOPSIGNAL SIGFOO"), "invalid signal: \"SIGFOO\"");
    assert_eq!(msg("STOPSIGNAL 99"), "invalid signal: \"99\"");
    assert_eq!(
        msg("SHELL /bin/bash -c"),
        "SHELL requires the arguments to be in JSON form"
    );
    assert_eq!(msg("CMD --foo x"), "unknown flag for CMD: --foo");
    assert_eq!(
        err("CMD --foo x").help.as_deref(),
        Some("CMD takes no flags")
    );
    assert_eq!(
        msg("VOLUME [\"\"]"),
        "VOLUME specified can not be an empty string"
    );
}

#[test]
fn healthcheck_forms() {
    assert_eq!(
        cmd("HEALTHCHECK NONE"),
        Command::Healthcheck(Healthcheck::None)
    );
    assert_eq!(
        cmd("HEALTHCHECK --interval=30s --timeout=1m30s --start-period=500ms --start-interval=2s --retries=3 CMD curl -f http://localhost/"),
        Command::Healthcheck(Healthcheck::Cmd {
            command: CommandLine::Shell("curl -f http://localhost/".into()),
            interval_ns: 30_000_000_000,
            timeout_ns: 90_000_000_000,
            start_period_ns: 500_000_000,
            start_interval_ns: 2_000_000_000,
            retries: 3,
        })
    );
    let Command::Healthcheck(Healthcheck::Cmd { command, .. }) =
        cmd(r#"HEALTHCHECK CMD ["wget", "-q", "localhost"]"#)
    else {
        panic!()
    };
    assert_eq!(
        command,
        CommandLine::Exec(vec!["wget".into(), "-q".into(), "localhost".into()])
    );
    assert_eq!(
        msg("HEALTHCHECK NONE x"),
        "HEALTHCHECK NONE takes no arguments"
    );
    assert_eq!(
        msg("HEALTHCHECK --retries=2 NONE"),
        "HEALTHCHECK NONE takes no arguments"
    );
    assert_eq!(
        msg("HEALTHCHECK CMD"),
        "Missing command after HEALTHCHECK CMD"
    );
    assert_eq!(
        msg("HEALTHCHECK RUN x"),
        "Unknown type \"RUN\" in HEALTHCHECK (try CMD)"
    );
    assert_eq!(
        msg("HEALTHCHECK --interval=10 CMD x"),
        "--interval: invalid duration \"10\": expected something like 30s, 1m30s or 500ms"
    );
    assert_eq!(
        msg("HEALTHCHECK --timeout=10us CMD x"),
        "--timeout cannot be less than 1ms"
    );
    assert_eq!(
        msg("HEALTHCHECK --retries=-1 CMD x"),
        "--retries cannot be negative (-1)"
    );
    assert_eq!(
        msg("HEALTHCHECK --retries=x CMD x"),
        "--retries expects a whole number, not \"x\""
    );
    assert_eq!(
        msg("HEALTHCHECK"),
        "HEALTHCHECK requires an argument: CMD command, or NONE"
    );
}

#[test]
fn onbuild_triggers() {
    let Command::Onbuild(o) = cmd("ONBUILD RUN --network=none make") else {
        panic!()
    };
    assert_eq!(o.expression, "RUN --network=none make");
    assert!(
        matches!(o.trigger.command, Command::Run(ref r) if r.network == Some(NetworkMode::None))
    );
    assert_eq!(
        msg("ONBUILD FROM x"),
        "FROM isn't allowed as an ONBUILD trigger"
    );
    assert_eq!(
        msg("ONBUILD MAINTAINER me"),
        "MAINTAINER isn't allowed as an ONBUILD trigger"
    );
    assert_eq!(
        msg("ONBUILD ONBUILD RUN x"),
        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
    );
    assert_eq!(
        msg("ONBUILD COPY --chmod=9 a b"),
        "invalid --chmod \"9\": not an octal number (digits 0-7)"
    );
}

#[test]
fn unknown_instruction_suggests() {
    let e = err("RUNN make");
    assert_eq!(e.message, "unknown instruction: RUNN");
    assert_eq!(e.help.as_deref(), Some("did you mean RUN?"));
    assert_eq!(at("   COPPY a b"), (1, 4));
    assert_eq!(err("FOOBARBAZ x").help, None);
}

#[test]
fn instructions_are_case_insensitive() {
    assert!(matches!(cmd("copy a b"), Command::Copy(_)));
    assert!(matches!(cmd("Run true"), Command::Run(_)));
    assert!(matches!(
        cmd("hEaLtHcHeCk NONE"),
        Command::Healthcheck(Healthcheck::None)
    ));
}

#[test]
fn chmod_symbolic_apply() {
    let m = Chmod::parse("u=rwX,go=rX").unwrap();
    assert_eq!(m.apply(0o644, false), 0o644);
    assert_eq!(m.apply(0o755, false), 0o755);
    assert_eq!(m.apply(0o600, true), 0o755);
    assert_eq!(Chmod::parse("a+x").unwrap().apply(0o644, false), 0o755);
    assert_eq!(Chmod::parse("+x").unwrap().apply(0o600, false), 0o711);
    assert_eq!(Chmod::parse("go-rwx").unwrap().apply(0o777, false), 0o700);
    assert_eq!(Chmod::parse("u+s").unwrap().apply(0o755, false), 0o4755);
    assert_eq!(Chmod::parse("g=u").unwrap().apply(0o740, false), 0o770);
    assert_eq!(Chmod::parse("o+t").unwrap().apply(0o777, true), 0o1777);
    assert_eq!(Chmod::parse("0640").unwrap().apply(0o777, false), 0o640);
    for bad in ["", "u", "z+x", "u+z", "8", "u=r,", "12345"] {
        assert!(Chmod::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn go_durations() {
    assert_eq!(parse_go_duration("0"), Ok(0));
    assert_eq!(parse_go_duration("1h2m3s"), Ok(3_723_000_000_000));
    assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
    assert_eq!(parse_go_duration("250us"), Ok(250_000));
    assert!(parse_go_duration("5").is_err());
    assert!(parse_go_duration("s").is_err());
    assert!(parse_go_duration("1d").is_err());
    assert!(parse_go_duration("").is_err());
}

#[test]
fn signals() {
    assert_eq!(parse_signal("SIGTERM"), Ok(15));
    assert_eq!(parse_signal("kill"), Ok(9));
    assert_eq!(parse_signal("SIGRTMIN+3"), Ok(37));
    assert_eq!(parse_signal("RTMAX-1"), Ok(63));
    assert!(parse_signal("0").is_err());
    assert!(parse_signal("SIGRTMIN+40").is_err());
}
