//! The client commands of the real binary: bad arguments and unreachable or foreign
//! admin APIs exit 2 with a useful message; refusals of a running server (unknown
//! app or slot, wrong or missing token, conflicts, invalid deployments, a swap whose
//! warm-up fails) exit 1 and print the server's message; the happy paths (`status`,
//! `deploy`, `swap` with `--dry-run` / `--preview`, `swap complete`, `swap cancel`,
//! `rollback`, `history`) exit 0 with readable tables, and `--json` prints valid JSON.

mod support;

use serde_json::Value;
use support::{
    free_port, refusing_address, run_cli, shop_app, Slotd, Upstream, FAST_WARMUP, TOKEN,
};

/// Runs the CLI against `slotd` off the async workers (the upstreams of the test run
/// on them, and a swap needs them to answer its warm-up).
async fn cli(slotd: &Slotd, args: &[&str]) -> (i32, String, String) {
    cli_with(slotd, args, Some(TOKEN)).await
}

async fn cli_with(slotd: &Slotd, args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let admin = format!("http://{}", slotd.admin);
    cli_at(Some(admin), args, token).await
}

async fn cli_at(
    admin: Option<String>,
    args: &[&str],
    token: Option<&str>,
) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let token = token.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&refs, admin.as_deref(), token.as_deref())
    })
    .await
    .expect("cli task")
}

async fn blue_green() -> (Upstream, Upstream, Slotd) {
    support::blue_green(FAST_WARMUP).await
}

fn parse_json(what: &str, stdout: &str) -> Value {
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("{what}: --json printed invalid JSON ({e}):\n{stdout}"))
}

// === usage errors: exit 2, no server needed ===

#[test]
fn bad_arguments_exit_2_with_a_message_naming_the_problem() {
    let nobody = format!("http://{}", refusing_address());
    let cases: &[(&[&str], &str)] = &[
        (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (&[], "Usage: slotd"),
        (&["swap", "--app", "shop"], "--source"),
        (&["swap", "--source", "staging"], "--app"),
        (
            &[
                "deploy",
                "--app",
                "shop",
                "--slot",
                "staging",
                "--version",
                "v2",
            ],
            "--instance",
        ),
        (
            &[
                "deploy",
                "--app",
                "shop",
                "--slot",
                "staging",
                "--instance",
                "127.0.0.1:1",
            ],
            "--version",
        ),
        (&["swap", "complete"], "--app"),
        (&["swap", "cancel"], "--app"),
        (&["rollback"], "--app"),
        (&["history"], "--app"),
        (
            &[
                "swap",
                "--app",
                "shop",
                "--source",
                "staging",
                "--preview",
                "--dry-run",
            ],
            "cannot be used with",
        ),
        (&["check", "--config"], "a value is required for '--config"),
        (
            &["status", "--frobnicate"],
            "unexpected argument '--frobnicate'",
        ),
        (&["--log-format", "xml", "check"], "invalid value 'xml'"),
    ];
    for (args, want) in cases {
        let (code, stdout, stderr) = run_cli(args, Some(&nobody), Some(TOKEN));
        assert_eq!(code, 2, "slotd {args:?}: exit {code}\n{stdout}{stderr}");
        assert!(
            stderr.contains(want),
            "slotd {args:?}: stderr should contain `{want}`:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "slotd {args:?}: {stderr}");
    }
}

#[test]
fn an_admin_url_without_an_http_scheme_exits_2_and_shows_the_fix() {
    let cases: &[(&str, &str)] = &[
        (
            "127.0.0.1:9901",
            "--admin `127.0.0.1:9901` has no scheme; write http://127.0.0.1:9901",
        ),
        (
            "https://127.0.0.1:9901",
            "scheme https is not supported; use http://HOST:PORT",
        ),
        ("", "--admin `` is not a URL"),
        ("http://", "--admin `http://` is not a URL"),
    ];
    for (admin, want) in cases {
        for args in [
            vec!["status", "--admin", admin],
            vec![
                "swap", "--app", "shop", "--source", "staging", "--admin", admin,
            ],
        ] {
            let (code, _, stderr) = run_cli(&args, None, Some(TOKEN));
            assert_eq!(code, 2, "slotd {args:?}: {stderr}");
            assert!(stderr.contains(want), "slotd {args:?}: {stderr}");
        }
    }
    // The same checks apply to SLOTD_ADMIN.
    let (code, _, stderr) = run_cli(&["status"], Some("127.0.0.1:9901"), Some(TOKEN));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("has no scheme"), "{stderr}");
}

#[test]
fn an_admin_url_where_nothing_listens_exits_2_with_cannot_reach() {
    let addr = refusing_address();
    for args in [
        vec!["status"],
        vec!["history", "--app", "shop"],
        vec!["swap", "--app", "shop", "--source", "staging"],
        vec![
            "deploy",
            "--app",
            "shop",
            "--slot",
            "staging",
            "--version",
            "v2",
            "--instance",
            "127.0.0.1:1",
        ],
        vec!["rollback", "--app", "shop"],
    ] {
        let (code, stdout, stderr) = run_cli(&args, Some(&format!("http://{addr}")), Some(TOKEN));
        assert_eq!(code, 2, "slotd {args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!(
                "cannot reach the slotd admin API at http://{addr}"
            )),
            "slotd {args:?}: {stderr}"
        );
        assert!(
            stderr.contains("SLOTD_ADMIN"),
            "says how to point it elsewhere: {stderr}"
        );
        assert!(stdout.is_empty(), "{stdout}");
    }
}

#[test]
fn an_unreadable_token_file_exits_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.token");
    let nobody = format!("http://{}", refusing_address());
    for file in [missing.as_path(), dir.path()] {
        let f = file.display().to_string();
        let (code, _, stderr) = run_cli(
            &["status", "--token-file", &f, "--admin", &nobody],
            None,
            None,
        );
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(&format!("--token-file: cannot read {f}")),
            "{stderr}"
        );
        assert!(
            !stderr.contains("cannot reach"),
            "the token file is read before the server is contacted: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_url_that_does_not_speak_http_exits_2() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
            let _ = s.shutdown().await;
        }
    });
    let (code, stdout, stderr) =
        cli_at(Some(format!("http://{addr}")), &["status"], Some(TOKEN)).await;
    server.abort();
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains("cannot reach the slotd admin API"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_url_of_a_server_that_is_not_slotd_exits_2() {
    // An HTTP server that answers 200 with plain text to every path.
    let other = Upstream::start("not-slotd").await;
    let (code, stdout, stderr) = cli_at(
        Some(format!("http://{}", other.addr)),
        &["status"],
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains("without JSON; is it a slotd admin API?"),
        "{stderr}"
    );
}

// === the server says no: exit 1 with its message ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_app_exits_1_with_the_404_message_for_every_command() {
    let (_blue, _green, slotd) = blue_green().await;
    for args in [
        vec!["status", "--app", "nope"],
        vec!["history", "--app", "nope"],
        vec!["swap", "--app", "nope", "--source", "staging"],
        vec!["swap", "--app", "nope", "--source", "staging", "--dry-run"],
        vec!["swap", "complete", "--app", "nope"],
        vec!["swap", "cancel", "--app", "nope"],
        vec!["rollback", "--app", "nope"],
        vec![
            "deploy",
            "--app",
            "nope",
            "--slot",
            "staging",
            "--version",
            "v3",
            "--instance",
            "127.0.0.1:1",
        ],
    ] {
        let (code, stdout, stderr) = cli(&slotd, &args).await;
        assert_eq!(code, 1, "slotd {args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("404 Not Found: unknown app `nope`"),
            "slotd {args:?}: {stderr}"
        );
        assert!(stdout.is_empty(), "slotd {args:?}: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_slot_exits_1_with_the_404_message() {
    let (_blue, _green, slotd) = blue_green().await;
    for args in [
        vec!["swap", "--app", "shop", "--source", "nope"],
        vec![
            "swap", "--app", "shop", "--source", "staging", "--target", "nope",
        ],
        vec![
            "deploy",
            "--app",
            "shop",
            "--slot",
            "nope",
            "--version",
            "v3",
            "--instance",
            "127.0.0.1:1",
        ],
    ] {
        let (code, _, stderr) = cli(&slotd, &args).await;
        assert_eq!(code, 1, "slotd {args:?}: {stderr}");
        assert!(
            stderr.contains("404 Not Found: app `shop` has no slot `nope`"),
            "slotd {args:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_exits_1_with_the_401_message() {
    let (_blue, _green, slotd) = blue_green().await;
    let (code, _, stderr) = cli_with(&slotd, &["status"], Some("not-the-token")).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("401 Unauthorized: wrong token"), "{stderr}");

    let (code, _, stderr) = cli_with(&slotd, &["status"], None).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("401 Unauthorized: missing `Authorization: Bearer TOKEN` header"),
        "{stderr}"
    );

    // A token file with the wrong token is the same "no".
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t");
    std::fs::write(&file, "also-not-the-token\n").unwrap();
    let f = file.display().to_string();
    let (code, _, stderr) = cli_with(
        &slotd,
        &[
            "swap",
            "--app",
            "shop",
            "--source",
            "staging",
            "--token-file",
            &f,
        ],
        None,
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("401 Unauthorized: wrong token"), "{stderr}");
    // ... and nothing was swapped.
    assert_eq!(slotd.who_serves("shop.test").await, "blue-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_and_invalid_requests_exit_1_with_the_servers_reason() {
    let (_blue, _green, slotd) = blue_green().await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["swap", "complete", "--app", "shop"],
            "409 Conflict: nothing to complete",
        ),
        (
            &["swap", "cancel", "--app", "shop"],
            "409 Conflict: nothing to cancel",
        ),
        (
            &["rollback", "--app", "shop"],
            "409 Conflict: nothing to roll back",
        ),
        (
            &["swap", "--app", "shop", "--source", "staging", "--target", "staging"],
            "422 Unprocessable Entity: source and target are both `staging`",
        ),
        (
            &["deploy", "--app", "shop", "--slot", "staging", "--version", "v3", "--instance", "127.0.0.1"],
            "422 Unprocessable Entity: instances[0]: `127.0.0.1` is not a valid instance address: it has no port",
        ),
        (
            &["deploy", "--app", "shop", "--slot", "staging", "--version", "v 3", "--instance", "127.0.0.1:1"],
            "422 Unprocessable Entity: version: version `v 3` contains spaces",
        ),
        (
            &["deploy", "--app", "shop", "--slot", "staging", "--version", "v3", "--instance", "127.0.0.1:1", "--instance", "127.0.0.1:1"],
            "instances[1]: `127.0.0.1:1` is listed twice",
        ),
    ];
    let (_, before) = slotd.admin("GET", "/v1/apps/shop", None).await;
    for (args, want) in cases {
        let (code, stdout, stderr) = cli(&slotd, args).await;
        assert_eq!(code, 1, "slotd {args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(want),
            "slotd {args:?}: want `{want}` in {stderr}"
        );
    }
    let (_, after) = slotd.admin("GET", "/v1/apps/shop", None).await;
    assert_eq!(before, after, "a refused command changed the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_that_fails_warm_up_exits_1_and_prints_the_failed_phase() {
    let blue = Upstream::start("blue-1").await;
    let dead = refusing_address();
    let slotd = Slotd::start(&shop_app(
        &[blue.address()],
        std::slice::from_ref(&dead),
        FAST_WARMUP,
    ))
    .await;

    let (code, stdout, stderr) =
        cli(&slotd, &["swap", "--app", "shop", "--source", "staging"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("staging -> production: FAILED"), "{stdout}");
    let warm_up = stdout
        .lines()
        .find(|l| l.starts_with("warm-up"))
        .unwrap_or_else(|| panic!("no warm-up row:\n{stdout}"));
    assert!(warm_up.contains("FAILED"), "{warm_up}");
    assert!(warm_up.contains(&dead), "names the instance: {warm_up}");
    assert!(!stdout.lines().any(|l| l.starts_with("switch")), "{stdout}");
    assert!(
        stdout.contains(&format!("error: instance {dead} did not warm up")),
        "{stdout}"
    );
    assert!(stderr.contains("swap s1 failed"), "{stderr}");
    assert_eq!(slotd.who_serves("shop.test").await, "blue-1");

    // With --json: the record is printed and the exit status is still 1.
    let (code, stdout, stderr) = cli(
        &slotd,
        &["swap", "--app", "shop", "--source", "staging", "--json"],
    )
    .await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let rec = parse_json("swap --json", &stdout);
    assert_eq!(rec["state"], "failed", "{rec}");
    assert_eq!(rec["phases"][2]["name"], "warm-up");
    assert_eq!(rec["phases"][2]["ok"], false);

    let (code, stdout, _) = cli(&slotd, &["history", "--app", "shop"]).await;
    assert_eq!(code, 0);
    let rows: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows.iter().all(|r| r.contains("failed")), "{stdout}");
}

// === happy paths: exit 0 with readable tables ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_each_slot_with_hosts_version_and_instances() {
    let (blue, green, slotd) = blue_green().await;
    for args in [vec!["status"], vec!["status", "--app", "shop"]] {
        let (code, stdout, stderr) = cli(&slotd, &args).await;
        assert_eq!(code, 0, "slotd {args:?}: {stderr}");
        assert!(stdout.starts_with("app shop\n"), "{stdout}");
        let header = stdout.lines().nth(1).unwrap_or("");
        for col in ["SLOT", "HOSTS", "VERSION", "DEPLOYMENT", "INSTANCES"] {
            assert!(header.contains(col), "{header}");
        }
        let production = stdout
            .lines()
            .find(|l| l.starts_with("production"))
            .unwrap();
        assert!(production.contains("shop.test"), "{production}");
        assert!(production.contains("v1"), "{production}");
        assert!(production.contains(&blue.address()), "{production}");
        let staging = stdout.lines().find(|l| l.starts_with("staging")).unwrap();
        assert!(staging.contains("staging.shop.test"), "{staging}");
        assert!(staging.contains("v2"), "{staging}");
        assert!(staging.contains(&green.address()), "{staging}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_then_swap_then_history_then_rollback_print_readable_tables() {
    let (blue, _green, slotd) = blue_green().await;
    let purple = Upstream::start("purple-1").await;

    let (code, stdout, stderr) = cli(
        &slotd,
        &[
            "deploy",
            "--app",
            "shop",
            "--slot",
            "staging",
            "--version",
            "v3",
            "--instance",
            &purple.address(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!(
            "deployed v3 (d3) to slot staging: {}",
            purple.address()
        )),
        "{stdout}"
    );

    let (code, stdout, stderr) = cli(
        &slotd,
        &["swap", "--app", "shop", "--source", "staging", "--dry-run"],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("dry run: swap staging -> production of app shop (nothing was changed)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("d3 (v3): staging -> production"),
        "{stdout}"
    );
    assert!(
        stdout.contains("header X-Slot: staging -> production"),
        "{stdout}"
    );
    assert_eq!(slotd.who_serves("shop.test").await, "blue-1");

    let (code, stdout, stderr) =
        cli(&slotd, &["swap", "--app", "shop", "--source", "staging"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("swap s1 of app shop: staging -> production: COMPLETED"),
        "{stdout}"
    );
    assert!(stdout.contains("PHASE"), "{stdout}");
    for phase in ["validate", "apply-settings", "warm-up", "switch", "settle"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(phase))
            .unwrap_or_else(|| panic!("no {phase} row:\n{stdout}"));
        assert!(row.contains(" ok "), "{row}");
    }
    assert_eq!(slotd.who_serves("shop.test").await, "purple-1");

    let (code, stdout, stderr) = cli(&slotd, &["history", "--app", "shop"]).await;
    assert_eq!(code, 0, "{stderr}");
    let header = stdout.lines().next().unwrap_or("");
    for col in ["ID", "STARTED", "SWAP", "TRIGGER", "STATE"] {
        assert!(header.contains(col), "{stdout}");
    }
    let row = stdout.lines().nth(1).unwrap_or("");
    assert!(row.starts_with("s1"), "{stdout}");
    assert!(row.contains("staging (v3) -> production"), "{row}");
    assert!(row.contains("api"), "{row}");
    assert!(row.contains("completed"), "{row}");

    let (code, stdout, stderr) = cli(&slotd, &["rollback", "--app", "shop"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("swap s2 of app shop: staging -> production: COMPLETED"),
        "{stdout}"
    );
    assert_eq!(slotd.who_serves("shop.test").await, blue.name);

    let (code, stdout, _) = cli(&slotd, &["history", "--app", "shop"]).await;
    assert_eq!(code, 0);
    let newest = stdout.lines().nth(1).unwrap_or("");
    assert!(
        newest.starts_with("s2") && newest.contains("rollback"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_then_cancel_and_preview_then_complete_print_their_states() {
    let (_blue, _green, slotd) = blue_green().await;

    let (code, stdout, stderr) = cli(
        &slotd,
        &["swap", "--app", "shop", "--source", "staging", "--preview"],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("staging -> production: PREVIEW"),
        "{stdout}"
    );
    assert!(stdout.contains("routing is unchanged"), "{stdout}");
    assert!(
        stdout.contains("slotd swap complete --app shop"),
        "{stdout}"
    );
    let (_, status, _) = cli(&slotd, &["status", "--app", "shop"]).await;
    assert!(status.contains("is waiting in preview"), "{status}");

    let (code, stdout, stderr) = cli(&slotd, &["swap", "cancel", "--app", "shop"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("staging -> production: CANCELLED"),
        "{stdout}"
    );
    assert_eq!(slotd.who_serves("shop.test").await, "blue-1");

    let (code, _, stderr) = cli(
        &slotd,
        &["swap", "--app", "shop", "--source", "staging", "--preview"],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = cli(&slotd, &["swap", "complete", "--app", "shop"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("staging -> production: COMPLETED"),
        "{stdout}"
    );
    assert_eq!(slotd.who_serves("shop.test").await, "green-1");
}

/// What a command's JSON answer must show.
type Check = fn(&Value) -> bool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_valid_json_for_every_command() {
    let (_blue, _green, slotd) = blue_green().await;
    let purple = Upstream::start("purple-1").await;
    let p = purple.address();
    let steps: Vec<(Vec<&str>, Check)> = vec![
        (vec!["status"], |v| v["apps"][0]["name"] == "shop"),
        (vec!["status", "--app", "shop"], |v| {
            v["slots"][0]["name"] == "production"
        }),
        (
            vec![
                "deploy",
                "--app",
                "shop",
                "--slot",
                "staging",
                "--version",
                "v3",
                "--instance",
                p.as_str(),
            ],
            |v| v["deployment"]["version"] == "v3",
        ),
        (
            vec!["swap", "--app", "shop", "--source", "staging", "--dry-run"],
            |v| v["dry_run"] == true,
        ),
        (
            vec!["swap", "--app", "shop", "--source", "staging", "--preview"],
            |v| v["state"] == "preview",
        ),
        (vec!["swap", "cancel", "--app", "shop"], |v| {
            v["state"] == "cancelled"
        }),
        (
            vec!["swap", "--app", "shop", "--source", "staging", "--preview"],
            |v| v["state"] == "preview",
        ),
        (vec!["swap", "complete", "--app", "shop"], |v| {
            v["state"] == "completed"
        }),
        (vec!["rollback", "--app", "shop"], |v| {
            v["trigger"] == "rollback"
        }),
        (vec!["history", "--app", "shop"], |v| {
            v["swaps"].as_array().is_some_and(|s| s.len() == 3)
        }),
    ];
    for (mut args, ok) in steps {
        args.push("--json");
        let (code, stdout, stderr) = cli(&slotd, &args).await;
        assert_eq!(code, 0, "slotd {args:?}: {stderr}");
        let v = parse_json(&format!("{args:?}"), &stdout);
        assert!(ok(&v), "slotd {args:?}: {v:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_can_come_from_a_token_file_and_the_admin_url_from_a_flag() {
    let (_blue, _green, slotd) = blue_green().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let f = file.display().to_string();
    let admin = format!("http://{}", slotd.admin);
    // SLOTD_ADMIN points nowhere; --admin wins.
    let elsewhere = format!("http://127.0.0.1:{}", free_port());
    let (code, stdout, stderr) = cli_at(
        Some(elsewhere),
        &[
            "status",
            "--app",
            "shop",
            "--admin",
            &admin,
            "--token-file",
            &f,
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("app shop"), "{stdout}");
}
