use super::*;
use crate::rootfs::Node;

fn f(mode: u32) -> SrcNode {
    SrcNode {
        kind: Kind::File,
        mode,
        uid: 1000,
        gid: 1000,
        size: 3,
        mtime: (100, 0),
        xattrs: BTreeMap::new(),
        content: Content::None,
        link_key: None,
    }
}
fn d() -> SrcNode {
    SrcNode {
        kind: Kind::Dir,
        size: 0,
        ..f(0o750)
    }
}
fn l(t: &str) -> SrcNode {
    SrcNode {
        kind: Kind::Symlink(t.into()),
        ..f(0o777)
    }
}

/// A context: a.txt b.txt src/{main.go,util.go,sub/x.go} docs/README.md link -> /etc/passwd
fn ctx() -> SourceTree {
    let mut t = SourceTree::new(d());
    for p in ["src", "src/sub", "docs"] {
        t.insert(p, d());
    }
    for p in [
        "a.txt",
        "b.txt",
        "src/main.go",
        "src/util.go",
        "src/sub/x.go",
        "docs/README.md",
    ] {
        t.insert(p, f(0o644));
    }
    t.insert("link", l("/etc/passwd"));
    t
}

fn debian() -> Rootfs {
    let mut fs = Rootfs::new();
    let dir = Node::new_dir(0o755, 0, 0, (0, 0));
    fs.apply(0, "usr/", dir.clone());
    fs.apply(0, "usr/bin/", dir.clone());
    fs.apply(0, "etc/", dir.clone());
    fs.apply(0, "app/", dir);
    let file = Node {
        size: 1,
        ..Node::new(Kind::File, 0o644)
    };
    fs.apply(0, "etc/passwd", file);
    let link = Node::new(Kind::Symlink("usr/bin".into()), 0o777);
    fs.apply(0, "bin", link);
    fs
}

fn req<'a>(sources: &'a [String], dest: &'a str) -> CopyRequest<'a> {
    CopyRequest {
        keyword: "COPY",
        sources,
        dest,
        workdir: "/work",
        owner: None,
        chmod: None,
        excludes: &[],
        parents: false,
        preserve_owner: false,
        now: (7, 0),
        from_context: true,
    }
}

fn paths(v: &[Planned]) -> Vec<&str> {
    v.iter().map(|p| p.path.as_str()).collect()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn file_to_file_and_into_directory() {
    let fs = debian();
    let src = s(&["a.txt"]);
    assert_eq!(
        paths(&plan_copy(&ctx(), &fs, &req(&src, "/opt/renamed")).unwrap()),
        ["opt", "opt/renamed"]
    );
    assert_eq!(
        paths(&plan_copy(&ctx(), &fs, &req(&src, "/opt/")).unwrap()),
        ["opt", "opt/a.txt"]
    );
    // An existing directory receives the file even without a trailing slash.
    assert_eq!(
        paths(&plan_copy(&ctx(), &fs, &req(&src, "/app")).unwrap()),
        ["app/a.txt"]
    );
    // Relative to WORKDIR; `.` is the WORKDIR itself.
    assert_eq!(
        paths(&plan_copy(&ctx(), &fs, &req(&src, "rel/")).unwrap()),
        ["work", "work/rel", "work/rel/a.txt"]
    );
    assert_eq!(
        paths(&plan_copy(&ctx(), &fs, &req(&src, ".")).unwrap()),
        ["work", "work/a.txt"]
    );
}

#[test]
fn ownership_and_created_parents() {
    let fs = debian();
    let src = s(&["a.txt"]);
    let plan = plan_copy(&ctx(), &fs, &req(&src, "/x/y/")).unwrap();
    let file = &plan[2].node;
    assert_eq!(
        (file.uid, file.gid, file.mode, file.mtime),
        (0, 0, 0o644, (100, 0)),
        "context files become root-owned"
    );
    let created = &plan[0].node;
    assert_eq!(
        (created.kind.clone(), created.mode, created.mtime),
        (Kind::Dir, 0o755, (7, 0))
    );
    let mut r = req(&src, "/x/y/");
    r.owner = Some(Owner { uid: 42, gid: 43 });
    let plan = plan_copy(&ctx(), &fs, &r).unwrap();
    assert!(
        plan.iter().all(|p| (p.node.uid, p.node.gid) == (42, 43)),
        "--chown covers created parents too"
    );
    r.owner = None;
    r.preserve_owner = true;
    let plan = plan_copy(&ctx(), &fs, &r).unwrap();
    assert_eq!((plan[2].node.uid, plan[0].node.uid), (1000, 0));
}

#[test]
fn directory_contents_not_the_directory() {
    let fs = debian();
    let src = s(&["src"]);
    let plan = plan_copy(&ctx(), &fs, &req(&src, "/app/")).unwrap();
    assert_eq!(
        paths(&plan),
        ["app/main.go", "app/sub", "app/sub/x.go", "app/util.go"]
    );
    let plan = plan_copy(&ctx(), &fs, &req(&src, "/new")).unwrap();
    assert_eq!(
        paths(&plan),
        [
            "new",
            "new/main.go",
            "new/sub",
            "new/sub/x.go",
            "new/util.go"
        ]
    );
    assert_eq!(
        plan[0].node.mode, 0o750,
        "a created destination takes the source directory's mode"
    );
    let all = s(&["."]);
    assert_eq!(
        plan_copy(&ctx(), &fs, &req(&all, "/ctx/")).unwrap().len(),
        11
    );
}

#[test]
fn wildcards_and_multiple_sources() {
    let fs = debian();
    let src = s(&["*.txt"]);
    assert_eq!(
        paths(&plan_copy(&ctx(), &fs, &req(&src, "/t/")).unwrap()),
        ["t", "t/a.txt", "t/b.txt"]
    );
    let src = s(&["src/*.go"]);
    assert_eq!(
        paths(&plan_copy(&ctx(), &fs, &req(&src, "/g/")).unwrap()),
        ["g", "g/main.go", "g/util.go"]
    );
    let src = s(&["src/*/x.go"]);
    assert_eq!(
        paths(&plan_copy(&ctx(), &fs, &req(&src, "/g/")).unwrap()),
        ["g", "g/x.go"]
    );
    let two = s(&["a.txt", "b.txt"]);
    assert_eq!(
        plan_copy(&ctx(), &fs, &req(&two, "/nodir")).unwrap_err().to_string(),
        "when using COPY with more than one source file, the destination must be a directory and end with a /"
    );
    let none = s(&["*.rs"]);
    assert_eq!(
        plan_copy(&ctx(), &fs, &req(&none, "/"))
            .unwrap_err()
            .to_string(),
        "\"*.rs\" not found in the build context or excluded by .dockerignore"
    );
    let bad = s(&["[x-"]);
    assert!(matches!(
        plan_copy(&ctx(), &fs, &req(&bad, "/")),
        Err(CopyError::Pattern(..))
    ));
}

#[test]
fn symlinks_are_copied_as_links_and_sources_cannot_escape() {
    let fs = debian();
    let src = s(&["link"]);
    let plan = plan_copy(&ctx(), &fs, &req(&src, "/l")).unwrap();
    assert_eq!(plan[0].node.kind, Kind::Symlink("/etc/passwd".into()));
    let up = s(&["../../../etc/passwd"]);
    assert!(matches!(
        plan_copy(&ctx(), &fs, &req(&up, "/x")),
        Err(CopyError::NotFound(_))
    ));
}

#[test]
fn destination_under_symlinked_dir_stays_in_the_image() {
    let fs = debian();
    let src = s(&["a.txt"]);
    assert_eq!(
        paths(&plan_copy(&ctx(), &fs, &req(&src, "/bin/")).unwrap()),
        ["usr/bin/a.txt"]
    );
    assert_eq!(
        paths(&plan_copy(&ctx(), &fs, &req(&src, "/bin/tool")).unwrap()),
        ["usr/bin/tool"]
    );
    let mut hostile = debian();
    let link = Node::new(Kind::Symlink("/".into()), 0o777);
    hostile.apply(0, "escape", link);
    assert_eq!(
        paths(&plan_copy(&ctx(), &hostile, &req(&src, "/escape/etc/x")).unwrap()),
        ["etc/x"]
    );
}

#[test]
fn conflicts() {
    let fs = debian();
    let src = s(&["a.txt"]);
    assert_eq!(
        plan_copy(&ctx(), &fs, &req(&src, "/etc/passwd/x"))
            .unwrap_err()
            .to_string(),
        "cannot copy to /etc/passwd/x: /etc/passwd is not a directory"
    );
    assert_eq!(
        plan_copy(&ctx(), &fs, &req(&s(&["src"]), "/etc/passwd"))
            .unwrap_err()
            .to_string(),
        "cannot copy to /etc/passwd: not a directory"
    );
}

#[test]
fn chmod_exclude_parents() {
    let fs = debian();
    let src = s(&["src"]);
    let mut r = req(&src, "/app/");
    r.chmod = Some(Chmod::parse("u=rwX,go=rX").unwrap());
    let excl = s(&["sub"]);
    r.excludes = &excl;
    let plan = plan_copy(&ctx(), &fs, &r).unwrap();
    assert_eq!(paths(&plan), ["app/main.go", "app/util.go"]);
    assert!(plan.iter().all(|p| p.node.mode == 0o644));
    let srcs = s(&["src/sub/x.go", "docs/README.md"]);
    let mut r = req(&srcs, "/p/");
    r.parents = true;
    assert_eq!(
        paths(&plan_copy(&ctx(), &fs, &r).unwrap()),
        [
            "p",
            "p/docs",
            "p/docs/README.md",
            "p/src",
            "p/src/sub",
            "p/src/sub/x.go"
        ]
    );
    let octal = s(&["a.txt"]);
    let mut r = req(&octal, "/o");
    r.chmod = Some(Chmod::parse("0600").unwrap());
    assert_eq!(plan_copy(&ctx(), &fs, &r).unwrap()[0].node.mode, 0o600);
}

#[test]
fn hardlinks_stay_hardlinks() {
    let mut t = ctx();
    t.insert(
        "h1",
        SrcNode {
            link_key: Some((1, 99)),
            ..f(0o644)
        },
    );
    t.insert(
        "h2",
        SrcNode {
            link_key: Some((1, 99)),
            ..f(0o644)
        },
    );
    let src = s(&["h1", "h2"]);
    let plan = plan_copy(&t, &debian(), &req(&src, "/h/")).unwrap();
    assert_eq!(plan[1].node.kind, Kind::File);
    assert_eq!(plan[2].node.kind, Kind::Hardlink("h/h1".into()));
}
