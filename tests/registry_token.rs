//! Registry token auth: kiln against Debian's docker-registry configured with `auth: token`,
//! which trusts JWTs from a small token service in this test process (tests/util/token.rs).
//! This is the Bearer flow of Docker Hub and most hosted registries, end to end: 401 with a
//! Bearer challenge, a token fetched with Basic credentials for a scope, the request repeated
//! with the token.

mod util;

use std::path::Path;
use std::process::Command;

use util::registry::Registry;
use util::token::{TokenRequest, SERVICE};
use util::tools::{assert_success, require_tool};
use util::{kiln_bin, TestDir};

const USER: &str = "bob";
const PASSWORD: &str = "t0ken-s3cret";
/// Distinct from anything kiln prints, so a leak would be noticed.
const WRONG_PASSWORD: &str = "wr0ng-pa55word";

/// `kiln --root DIR/STORE ARGS` with its logins in `config_dir` (never the real ~/.docker);
/// `stdin` is written to its standard input. Returns (success, stdout, stderr).
fn kiln(
    dir: &Path,
    config_dir: &Path,
    store: &str,
    args: &[&str],
    stdin: &str,
) -> (bool, String, String) {
    util::run_with_input(
        Command::new(kiln_bin())
            .current_dir(dir)
            .env("DOCKER_CONFIG", config_dir)
            .env_remove("REGISTRY_AUTH_FILE")
            .arg("--root")
            .arg(dir.join(store))
            .args(args),
        stdin,
    )
}

/// The token requests kiln made (skopeo's are told apart by their User-Agent).
fn kiln_requests(reg: &Registry) -> Vec<TokenRequest> {
    reg.token_issuer()
        .expect("token registry")
        .requests()
        .into_iter()
        .filter(|r| r.user_agent.starts_with("kiln/"))
        .collect()
}

#[test]
fn token_auth_login_push_pull() {
    let Some(reg) = Registry::with_token_auth(USER, PASSWORD) else {
        return;
    };
    if !require_tool("skopeo") {
        return;
    }
    let Some(rootfs) = util::fixtures::busybox_rootfs() else {
        return;
    };
    let dir = TestDir::new("registry-token");
    dir.write("genesis/Dockerfile", "FROM scratch\nADD busybox.tar.xz /\n");
    std::fs::copy(rootfs, dir.path().join("genesis/busybox.tar.xz")).unwrap();
    // Two login files: one kiln logs in with, and one that stays empty for anonymous runs.
    let logged_in = dir.path().join("docker-config");
    let anonymous = dir.path().join("anonymous-config");
    let addr = reg.addr();
    let dest = reg.image("team/genesis:1");
    let explain = |what: &str, err: &str| {
        format!(
            "{what}:\n{err}\n--- token requests\n{:#?}\n--- registry log\n{}",
            reg.token_issuer().unwrap().requests(),
            reg.log_tail(20)
        )
    };

    let (ok, _, err) = kiln(
        dir.path(),
        &anonymous,
        "store",
        &["build", "-q", "-t", "genesis", "genesis"],
        "",
    );
    assert!(ok, "{err}");

    // Anonymous: the token service hands out a token without access, the registry refuses it,
    // and kiln says how to log in.
    let (ok, _, err) = kiln(
        dir.path(),
        &anonymous,
        "store",
        &["push", "genesis", &dest],
        "",
    );
    assert!(
        !ok && err.contains("requires credentials") && err.contains(&format!("kiln login {addr}")),
        "{}",
        explain("anonymous push is refused with a hint", &err)
    );
    let anon = kiln_requests(&reg);
    assert!(
        !anon.is_empty()
            && anon.iter().all(|r| r.user.is_none()
                && r.granted.is_empty()
                && r.service.as_deref() == Some(SERVICE)),
        "anonymous push asked for tokens without credentials: {anon:#?}"
    );
    assert!(
        anon.iter()
            .any(|r| r.scopes == ["repository:team/genesis:pull,push"]),
        "anonymous push asked for push rights: {anon:#?}"
    );
    // The registry checked the anonymous token and found it valid but empty (a bad signature
    // or audience would be logged as "invalid token" instead).
    assert!(
        reg.log_tail(50).contains("insufficient scope"),
        "{}",
        explain("the registry verified the anonymous token", &err)
    );
    println!("anonymous push: {}", err.trim());

    // A wrong password is refused by the token service; the message does not echo it.
    let (ok, _, err) = kiln(
        dir.path(),
        &logged_in,
        "store",
        &["login", &addr, "-u", USER, "--password-stdin"],
        &format!("{WRONG_PASSWORD}\n"),
    );
    assert!(
        !ok && err.contains("refused the credentials"),
        "{}",
        explain("wrong password", &err)
    );
    assert!(
        !err.contains(WRONG_PASSWORD),
        "the password never shows: {err}"
    );
    println!("wrong password: {}", err.trim());
    let refused = kiln_requests(&reg).pop().unwrap();
    assert_eq!(
        (refused.user.as_deref(), refused.status),
        (Some(USER), 401),
        "the token service refused the wrong password: {refused:#?}"
    );
    assert!(
        !logged_in.join("config.json").exists(),
        "a failed login saves nothing"
    );

    let (ok, out, err) = kiln(
        dir.path(),
        &logged_in,
        "store",
        &["login", &addr, "-u", USER, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(
        ok && out.contains("Login Succeeded"),
        "{}",
        explain("login", &err)
    );
    let accepted = kiln_requests(&reg).pop().unwrap();
    assert_eq!(
        (accepted.user.as_deref(), accepted.status),
        (Some(USER), 200),
        "login checked the password through the token service: {accepted:#?}"
    );

    let before_push = kiln_requests(&reg).len();
    let (ok, digest, err) = kiln(
        dir.path(),
        &logged_in,
        "store",
        &["push", "-q", "genesis", &dest],
        "",
    );
    assert!(ok, "{}", explain("push with a login", &err));
    let digest = digest.trim().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    let push_tokens: Vec<TokenRequest> = kiln_requests(&reg).split_off(before_push);
    // One token per registry and scope: kiln caches it for the rest of the push.
    assert_eq!(push_tokens.len(), 1, "{push_tokens:#?}");
    assert_eq!(push_tokens[0].user.as_deref(), Some(USER));
    assert_eq!(push_tokens[0].scopes, ["repository:team/genesis:pull,push"]);
    assert_eq!(
        push_tokens[0].granted,
        ["repository:team/genesis:pull,push"]
    );

    // The account may pull but not push under readonly/: the registry's insufficient-scope
    // answer is a denial of push rights, not a bad password.
    let (ok, _, err) = kiln(
        dir.path(),
        &logged_in,
        "store",
        &["push", "genesis", &reg.image("readonly/genesis:1")],
        "",
    );
    assert!(
        !ok && err.contains("access denied") && err.contains("push rights"),
        "{}",
        explain("push without push rights", &err)
    );
    assert!(!err.contains("refused the credentials"), "{err}");
    println!("push without push rights: {}", err.trim());

    // skopeo, with the same account, sees the manifest kiln pushed.
    let creds = reg.creds_arg().unwrap();
    let out = util::tools::skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &creds,
        &format!("docker://{dest}"),
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&assert_success(&out, "skopeo inspect docker://")).unwrap();
    assert_eq!(v["Digest"], digest.as_str());

    // Anonymous pull of the now existing image: refused with the same hint.
    let (ok, _, err) = kiln(dir.path(), &anonymous, "anon-store", &["pull", &dest], "");
    assert!(
        !ok && err.contains("requires credentials") && err.contains(&format!("kiln login {addr}")),
        "{}",
        explain("anonymous pull is refused with a hint", &err)
    );
    println!("anonymous pull: {}", err.trim());

    // Pull into a fresh store with the login: the same digest, through a pull-only token.
    let before_pull = kiln_requests(&reg).len();
    let (ok, out, err) = kiln(dir.path(), &logged_in, "store2", &["pull", "-q", &dest], "");
    assert!(ok, "{}", explain("pull with a login", &err));
    assert_eq!(out.trim(), digest);
    let pull_tokens: Vec<TokenRequest> = kiln_requests(&reg).split_off(before_pull);
    assert_eq!(pull_tokens.len(), 1, "{pull_tokens:#?}");
    assert_eq!(pull_tokens[0].user.as_deref(), Some(USER));
    assert_eq!(pull_tokens[0].scopes, ["repository:team/genesis:pull"]);
    assert_eq!(pull_tokens[0].granted, ["repository:team/genesis:pull"]);

    let all = kiln_requests(&reg);
    println!(
        "token requests from kiln: {} ({} anonymous, {} refused, {} granted access)",
        all.len(),
        all.iter().filter(|r| r.user.is_none()).count(),
        all.iter().filter(|r| r.status == 401).count(),
        all.iter().filter(|r| !r.granted.is_empty()).count()
    );
}
