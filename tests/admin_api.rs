//! The admin API of the real binary against bad input: missing or wrong tokens (401 on
//! every `/v1` route), unknown routes (404), wrong methods (405), unknown apps and
//! slots (404 on every route that takes them), malformed, incomplete, wrongly typed,
//! invalid and oversized bodies (422 naming the field, 413), and a few hundred
//! pseudo-random bodies: every refusal is a JSON error, never a 5xx, and leaves the
//! app's state exactly as it was; the process keeps serving. Also: `/healthz` and
//! `/metrics` need no token (tests/metrics.rs checks the values).

mod support;

use serde_json::{json, Value};
use support::{Slotd, Upstream, FAST_WARMUP, TOKEN};

const DEPLOY: &str = "/v1/apps/shop/slots/staging/deployment";
const SWAP: &str = "/v1/apps/shop/swap";

async fn blue_green() -> (Upstream, Upstream, Slotd) {
    support::blue_green(FAST_WARMUP).await
}

/// What a refused request must not change: the app as the API shows it, its swap
/// history, and the bytes of the state file.
#[derive(Debug, PartialEq)]
struct Snapshot {
    app: Value,
    swaps: Value,
    state_file: Vec<u8>,
}

async fn snapshot(slotd: &Slotd) -> Snapshot {
    let (status, app) = slotd.admin("GET", "/v1/apps/shop", None).await;
    assert_eq!(status, 200, "{app}");
    let (status, swaps) = slotd.admin("GET", "/v1/apps/shop/swaps", None).await;
    assert_eq!(status, 200, "{swaps}");
    Snapshot {
        app,
        swaps,
        state_file: std::fs::read(slotd.state_path()).unwrap_or_default(),
    }
}

/// Any request to the admin API: raw body bytes and any `Authorization` header.
async fn raw(
    slotd: &Slotd,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = http.request(
        method.parse().unwrap(),
        format!("http://{}{path}", slotd.admin),
    );
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.expect("admin API reachable");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, json)
}

/// Asserts `answer` is `{"error": {"code": CODE, "message": "..."}}` and returns the
/// message.
fn error_message(what: &str, answer: &Value, code: &str) -> String {
    assert_eq!(
        answer["error"]["code"], code,
        "{what}: expected a JSON error with code {code}, got {answer}"
    );
    let message = answer["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: error without message: {answer}"));
    assert!(!message.is_empty(), "{what}: empty message");
    message.to_string()
}

/// The `/v1` routes with a body that would succeed with the right token.
fn v1_routes() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        ("GET", "/v1/apps", None),
        ("GET", "/v1/apps/shop", None),
        ("GET", "/v1/apps/nope", None),
        (
            "PUT",
            DEPLOY,
            Some(json!({"version": "v9", "instances": ["127.0.0.1:9"]})),
        ),
        ("POST", SWAP, Some(json!({"source": "staging"}))),
        ("POST", "/v1/apps/shop/swap/complete", None),
        ("POST", "/v1/apps/shop/swap/cancel", None),
        ("POST", "/v1/apps/shop/rollback", None),
        ("GET", "/v1/apps/shop/swaps", None),
    ]
}

// === tokens ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_v1_route_without_a_token_is_a_401_json_error_and_changes_nothing() {
    let (_blue, _green, slotd) = blue_green().await;
    let before = snapshot(&slotd).await;
    for (method, path, body) in v1_routes() {
        let what = format!("{method} {path} without a token");
        let (status, answer) = slotd
            .admin_with(method, path, body.map(|b| b.to_string()), None)
            .await;
        assert_eq!(status, 401, "{what}: {answer}");
        let message = error_message(&what, &answer, "unauthorized");
        assert!(
            message.contains("Authorization: Bearer"),
            "{what}: {message}"
        );
    }
    assert_eq!(snapshot(&slotd).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_v1_route_with_a_wrong_token_is_a_401_json_error_and_changes_nothing() {
    let (_blue, _green, slotd) = blue_green().await;
    let before = snapshot(&slotd).await;
    let almost = &TOKEN[..TOKEN.len() - 1];
    let wrong_headers = [
        "Bearer wrong".to_string(),
        format!("Bearer {almost}"),
        format!("Bearer {TOKEN}x"),
        format!("Bearer x{TOKEN}"),
        "Bearer ".to_string(),
        TOKEN.to_string(),
        format!("Basic {TOKEN}"),
        format!("Token {TOKEN}"),
    ];
    for (method, path, body) in v1_routes() {
        for header in &wrong_headers {
            let what = format!("{method} {path} with `Authorization: {header}`");
            let (status, answer) = raw(
                &slotd,
                method,
                path,
                Some(header),
                body.as_ref().map(|b| b.to_string().into_bytes()),
            )
            .await;
            assert_eq!(status, 401, "{what}: {answer}");
            error_message(&what, &answer, "unauthorized");
        }
    }
    assert_eq!(snapshot(&slotd).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let (_blue, _green, slotd) = blue_green().await;
    for scheme in ["bearer", "BEARER"] {
        let (status, answer) = raw(
            &slotd,
            "GET",
            "/v1/apps/shop",
            Some(&format!("{scheme} {TOKEN}")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{scheme}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_need_no_token() {
    let (_blue, _green, slotd) = blue_green().await;
    for token in [None, Some("wrong")] {
        let (status, body) = slotd.admin_with("GET", "/healthz", None, token).await;
        assert_eq!(status, 200);
        assert_eq!(body, Value::String("ok\n".into()));
        let (status, body) = slotd.admin_with("GET", "/metrics", None, token).await;
        assert_eq!(status, 200);
        assert!(
            body.as_str().unwrap_or("").contains("slotd_build_info"),
            "{body}"
        );
    }
}

// === routes and methods ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_route_is_a_404_json_error() {
    let (_blue, _green, slotd) = blue_green().await;
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/v1"),
        ("GET", "/v1/"),
        ("GET", "/v1/nope"),
        ("GET", "/v2/apps"),
        ("GET", "/v1/apps/shop/slots"),
        ("GET", "/v1/apps/shop/slots/staging"),
        ("POST", "/v1/apps/shop/swap/complete/now"),
        ("POST", "/v1/apps/shop/swap/undo"),
        ("GET", "/v1/apps/shop/swaps/s1/extra"),
        ("GET", "/metrics/extra"),
    ] {
        for token in [Some(TOKEN), None] {
            let what = format!("{method} {path} (token: {})", token.is_some());
            let (status, answer) = slotd.admin_with(method, path, None, token).await;
            assert_eq!(status, 404, "{what}: {answer}");
            let message = error_message(&what, &answer, "not_found");
            assert!(message.contains(path), "{what}: names the path: {message}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_is_a_405_json_error_and_changes_nothing() {
    let (_blue, _green, slotd) = blue_green().await;
    let before = snapshot(&slotd).await;
    for (method, path) in [
        ("DELETE", "/v1/apps/shop"),
        ("POST", "/v1/apps"),
        ("PUT", "/v1/apps/shop"),
        ("GET", DEPLOY),
        ("POST", DEPLOY),
        ("DELETE", DEPLOY),
        ("GET", SWAP),
        ("PUT", SWAP),
        ("GET", "/v1/apps/shop/swap/complete"),
        ("DELETE", "/v1/apps/shop/swap/cancel"),
        ("GET", "/v1/apps/shop/rollback"),
        ("POST", "/v1/apps/shop/swaps"),
        ("POST", "/healthz"),
        ("DELETE", "/metrics"),
    ] {
        let what = format!("{method} {path}");
        let (status, answer) = slotd
            .admin_with(
                method,
                path,
                Some(r#"{"source": "staging"}"#.into()),
                Some(TOKEN),
            )
            .await;
        assert_eq!(status, 405, "{what}: {answer}");
        let message = error_message(&what, &answer, "method_not_allowed");
        assert!(message.contains(method), "{what}: {message}");
    }
    assert_eq!(snapshot(&slotd).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_app_or_slot_is_a_404_on_every_route_that_takes_one() {
    let (_blue, _green, slotd) = blue_green().await;
    let before = snapshot(&slotd).await;
    let good_deploy = json!({"version": "v9", "instances": ["127.0.0.1:9"]}).to_string();
    let cases: Vec<(&str, &str, Option<String>, &str)> = vec![
        ("GET", "/v1/apps/nope", None, "unknown app `nope`"),
        ("GET", "/v1/apps/nope/swaps", None, "unknown app `nope`"),
        (
            "PUT",
            "/v1/apps/nope/slots/staging/deployment",
            Some(good_deploy.clone()),
            "unknown app `nope`",
        ),
        (
            "PUT",
            "/v1/apps/shop/slots/nope/deployment",
            Some(good_deploy.clone()),
            "app `shop` has no slot `nope`",
        ),
        // An unknown app or slot is a 404 even when the body is also wrong.
        (
            "PUT",
            "/v1/apps/shop/slots/nope/deployment",
            Some("not json".into()),
            "app `shop` has no slot `nope`",
        ),
        (
            "POST",
            "/v1/apps/nope/swap",
            Some(r#"{"source": "staging"}"#.into()),
            "unknown app `nope`",
        ),
        (
            "POST",
            "/v1/apps/nope/swap",
            Some("{".into()),
            "unknown app `nope`",
        ),
        (
            "POST",
            SWAP,
            Some(r#"{"source": "nope"}"#.into()),
            "app `shop` has no slot `nope`",
        ),
        (
            "POST",
            SWAP,
            Some(r#"{"source": "staging", "target": "nope"}"#.into()),
            "app `shop` has no slot `nope`",
        ),
        (
            "POST",
            SWAP,
            Some(r#"{"source": "nope", "dry_run": true}"#.into()),
            "app `shop` has no slot `nope`",
        ),
        (
            "POST",
            SWAP,
            Some(r#"{"source": "staging", "target": "nope", "preview": true}"#.into()),
            "app `shop` has no slot `nope`",
        ),
        (
            "POST",
            "/v1/apps/nope/swap/complete",
            None,
            "unknown app `nope`",
        ),
        (
            "POST",
            "/v1/apps/nope/swap/cancel",
            None,
            "unknown app `nope`",
        ),
        ("POST", "/v1/apps/nope/rollback", None, "unknown app `nope`"),
        // Names are case-sensitive.
        ("GET", "/v1/apps/Shop", None, "unknown app `Shop`"),
    ];
    for (method, path, body, want) in cases {
        let what = format!("{method} {path} {body:?}");
        let (status, answer) = slotd.admin_with(method, path, body, Some(TOKEN)).await;
        assert_eq!(status, 404, "{what}: {answer}");
        let message = error_message(&what, &answer, "not_found");
        assert!(message.contains(want), "{what}: {message}");
    }
    // Path segments that are not valid names (or not UTF-8) are refused, never a 5xx.
    for path in [
        "/v1/apps/%FF",
        "/v1/apps/%00",
        "/v1/apps/..%2F..",
        "/v1/apps/a%20b/swaps",
    ] {
        let (status, answer) = slotd.admin_with("GET", path, None, Some(TOKEN)).await;
        assert!(
            (400..500).contains(&status),
            "GET {path}: {status} {answer}"
        );
        assert!(answer["error"]["code"].is_string(), "GET {path}: {answer}");
    }
    assert_eq!(snapshot(&slotd).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_cancel_and_rollback_with_nothing_to_act_on_are_409_and_change_nothing() {
    let (_blue, _green, slotd) = blue_green().await;
    let before = snapshot(&slotd).await;
    for (path, want) in [
        ("/v1/apps/shop/swap/complete", "nothing to complete"),
        ("/v1/apps/shop/swap/cancel", "nothing to cancel"),
        ("/v1/apps/shop/rollback", "nothing to roll back"),
    ] {
        // A body on these routes is ignored, whatever it is.
        for body in [None, Some("garbage".to_string())] {
            let (status, answer) = slotd.admin_with("POST", path, body, Some(TOKEN)).await;
            assert_eq!(status, 409, "POST {path}: {answer}");
            let message = error_message(path, &answer, "conflict");
            assert!(message.contains(want), "POST {path}: {message}");
        }
    }
    assert_eq!(snapshot(&slotd).await, before);
}

// === bodies ===

/// Sends each (body, status, code, message part) to `method path`; after each refusal
/// the app's state must be unchanged.
async fn refused_bodies(
    slotd: &Slotd,
    method: &str,
    path: &str,
    cases: &[(Option<Vec<u8>>, u16, &str, &str)],
) {
    let before = snapshot(slotd).await;
    let mut failures = Vec::new();
    for (body, want_status, want_code, want_message) in cases {
        let shown = body
            .as_ref()
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned());
        let what = format!("{method} {path} with {shown:?}");
        let (status, answer) = raw(
            slotd,
            method,
            path,
            Some(&format!("Bearer {TOKEN}")),
            body.clone(),
        )
        .await;
        let message = answer["error"]["message"].as_str().unwrap_or("");
        if status != *want_status
            || answer["error"]["code"] != *want_code
            || !message.contains(want_message)
        {
            failures.push(format!(
                "{what}: expected {want_status} {want_code} containing `{want_message}`, got {status} {answer}"
            ));
        }
        let after = snapshot(slotd).await;
        if after != before {
            failures.push(format!("{what}: the app changed:\n{before:?}\n{after:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn b(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_deployment_body_is_a_422_naming_the_problem_and_changes_nothing() {
    let (_blue, _green, slotd) = blue_green().await;
    let many: Vec<String> = (1..=1001)
        .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250 + 1))
        .collect();
    let too_many = json!({"version": "v3", "instances": many}).to_string();
    let long_version =
        json!({"version": "v".repeat(129), "instances": ["127.0.0.1:1"]}).to_string();
    let invalid_utf8 = {
        let mut v = br#"{"version": "v"#.to_vec();
        v.extend([0xff, 0xfe]);
        v.extend(br#"", "instances": ["127.0.0.1:1"]}"#);
        v
    };
    let cases: Vec<(Option<Vec<u8>>, u16, &str, &str)> = vec![
        // Not JSON at all.
        (b("nope"), 422, "invalid_request", "the body"),
        (b("<deployment/>"), 422, "invalid_request", "the body"),
        (b("version=v3&instances=127.0.0.1:1"), 422, "invalid_request", "the body"),
        (
            b(r#"{"version": "v3", "instances": ["127.0.0.1:1"]"#),
            422,
            "invalid_request",
            "EOF while parsing",
        ),
        (
            b(r#"{"version": "v3", "instances": ["127.0.0.1:1"]} trailing"#),
            422,
            "invalid_request",
            "trailing characters",
        ),
        (
            b(r#"{'version': 'v3', 'instances': ['127.0.0.1:1']}"#),
            422,
            "invalid_request",
            "the body",
        ),
        (Some(invalid_utf8), 422, "invalid_request", "the body"),
        // Empty.
        (None, 422, "invalid_request", "the body is empty; send a JSON object"),
        (b(""), 422, "invalid_request", "the body is empty"),
        (b(" \r\n\t "), 422, "invalid_request", "the body is empty"),
        // JSON, but not an object.
        (b("[]"), 422, "invalid_request", "the body"),
        (b("null"), 422, "invalid_request", "the body"),
        (b("42"), 422, "invalid_request", "the body"),
        (b(r#""v3""#), 422, "invalid_request", "the body"),
        (b("true"), 422, "invalid_request", "the body"),
        // Missing, unknown and duplicate fields are named.
        (b("{}"), 422, "invalid_request", "version: missing"),
        (
            b(r#"{"version": "v3"}"#),
            422,
            "invalid_request",
            "instances: missing",
        ),
        (
            b(r#"{"instances": ["127.0.0.1:1"]}"#),
            422,
            "invalid_request",
            "version: missing",
        ),
        (
            b(r#"{"version": "v3", "instances": ["127.0.0.1:1"], "colour": "blue"}"#),
            422,
            "invalid_request",
            "unknown field `colour`",
        ),
        (
            b(r#"{"version": "v3", "instances": ["127.0.0.1:1"], "version": "v4"}"#),
            422,
            "invalid_request",
            "duplicate field `version`",
        ),
        // Values that fail validation name the field.
        (
            b(r#"{"version": "", "instances": ["127.0.0.1:1"]}"#),
            422,
            "invalid_request",
            "version: version is empty",
        ),
        (
            b(r#"{"version": "v 3", "instances": ["127.0.0.1:1"]}"#),
            422,
            "invalid_request",
            "version: version `v 3` contains spaces or control characters",
        ),
        (
            Some(long_version.into_bytes()),
            422,
            "invalid_request",
            "version: version is longer than 128 characters",
        ),
        (
            b(r#"{"version": "v3", "instances": []}"#),
            422,
            "invalid_request",
            "instances: list at least one host:port",
        ),
        (
            b(r#"{"version": "v3", "instances": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:99999"]}"#),
            422,
            "invalid_request",
            "instances[2]: `127.0.0.1:99999` is not a valid instance address: the port must be a number from 1 to 65535",
        ),
        (
            b(r#"{"version": "v3", "instances": ["127.0.0.1:1", "localhost"]}"#),
            422,
            "invalid_request",
            "instances[1]: `localhost` is not a valid instance address: it has no port",
        ),
        (
            b(r#"{"version": "v3", "instances": [":80"]}"#),
            422,
            "invalid_request",
            "instances[0]: `:80` is not a valid instance address: the host is empty",
        ),
        (
            b(r#"{"version": "v3", "instances": ["::1:80"]}"#),
            422,
            "invalid_request",
            "instances[0]: `::1:80` is not a valid instance address: write IPv6 addresses in brackets",
        ),
        (
            b(r#"{"version": "v3", "instances": ["bad host:80"]}"#),
            422,
            "invalid_request",
            "instances[0]: `bad host:80` is not a valid instance address",
        ),
        (
            b(r#"{"version": "v3", "instances": ["127.0.0.1:1", "127.0.0.1:1"]}"#),
            422,
            "invalid_request",
            "instances[1]: `127.0.0.1:1` is listed twice",
        ),
        (
            Some(too_many.into_bytes()),
            422,
            "invalid_request",
            "instances: 1001 listed, at most 1000 are allowed",
        ),
        // Too large, whatever it holds.
        (
            Some(
                json!({"version": "v".repeat(70 * 1024), "instances": ["127.0.0.1:1"]})
                    .to_string()
                    .into_bytes(),
            ),
            413,
            "payload_too_large",
            "the body is larger than 65536 bytes",
        ),
        (
            Some(vec![b'['; 65 * 1024]),
            413,
            "payload_too_large",
            "larger than 65536 bytes",
        ),
        // Deep nesting just under the size limit is refused, not a stack overflow.
        (Some(vec![b'['; 60 * 1024]), 422, "invalid_request", "the body"),
        (
            Some(br#"{"version":"#.repeat(5000)),
            422,
            "invalid_request",
            "the body",
        ),
    ];
    refused_bodies(&slotd, "PUT", DEPLOY, &cases).await;
    assert_eq!(slotd.who_serves("staging.shop.test").await, "green-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_swap_body_is_a_422_naming_the_problem_and_changes_nothing() {
    let (_blue, _green, slotd) = blue_green().await;
    let cases: Vec<(Option<Vec<u8>>, u16, &str, &str)> = vec![
        (b("staging"), 422, "invalid_request", "the body"),
        (
            b(r#"{"source": "staging""#),
            422,
            "invalid_request",
            "EOF while parsing",
        ),
        (
            None,
            422,
            "invalid_request",
            "the body is empty; send a JSON object",
        ),
        (b("\n"), 422, "invalid_request", "the body is empty"),
        (b("[]"), 422, "invalid_request", "the body"),
        (b("null"), 422, "invalid_request", "the body"),
        (b("{}"), 422, "invalid_request", "source: missing"),
        (
            b(r#"{"target": "production"}"#),
            422,
            "invalid_request",
            "source: missing",
        ),
        (
            b(r#"{"source": "staging", "force": true}"#),
            422,
            "invalid_request",
            "unknown field `force`",
        ),
        (
            b(r#"{"source": "staging", "dryrun": true}"#),
            422,
            "invalid_request",
            "unknown field `dryrun`",
        ),
        (
            b(r#"{"source": ""}"#),
            422,
            "invalid_request",
            "source: name a slot",
        ),
        (
            b(r#"{"source": "staging", "target": ""}"#),
            422,
            "invalid_request",
            "target: name a slot",
        ),
        (
            b(r#"{"source": "staging", "target": "staging"}"#),
            422,
            "invalid_request",
            "source and target are both `staging`; name two different slots",
        ),
        // target defaults to production.
        (
            b(r#"{"source": "production"}"#),
            422,
            "invalid_request",
            "source and target are both `production`",
        ),
        (
            b(r#"{"source": "staging", "target": "staging", "dry_run": true}"#),
            422,
            "invalid_request",
            "source and target are both `staging`",
        ),
        (
            b(r#"{"source": "staging", "preview": true, "dry_run": true}"#),
            422,
            "invalid_request",
            "preview and dry_run cannot both be true",
        ),
        (
            Some(
                json!({"source": "s".repeat(70 * 1024)})
                    .to_string()
                    .into_bytes(),
            ),
            413,
            "payload_too_large",
            "the body is larger than 65536 bytes",
        ),
    ];
    refused_bodies(&slotd, "POST", SWAP, &cases).await;
    assert_eq!(slotd.who_serves("shop.test").await, "blue-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_array_instead_of_an_object_is_a_422_and_changes_nothing() {
    let (_blue, _green, slotd) = blue_green().await;
    let purple = Upstream::start("purple-1").await;
    let deploy = json!(["v9", [purple.address()]]).to_string();
    refused_bodies(
        &slotd,
        "PUT",
        DEPLOY,
        &[(
            Some(deploy.into_bytes()),
            422,
            "invalid_request",
            "JSON object",
        )],
    )
    .await;
    refused_bodies(
        &slotd,
        "POST",
        SWAP,
        &[
            (b(r#"["staging"]"#), 422, "invalid_request", "JSON object"),
            (
                b(r#"["staging", "production", false, true]"#),
                422,
                "invalid_request",
                "JSON object",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_of_the_wrong_type_is_a_422_naming_the_field() {
    let (_blue, _green, slotd) = blue_green().await;
    refused_bodies(
        &slotd,
        "PUT",
        DEPLOY,
        &[
            (
                b(r#"{"version": "v3", "instances": "x"}"#),
                422,
                "invalid_request",
                "instances",
            ),
            (
                b(r#"{"version": 3, "instances": ["127.0.0.1:1"]}"#),
                422,
                "invalid_request",
                "version",
            ),
            (
                b(r#"{"version": "v3", "instances": [1]}"#),
                422,
                "invalid_request",
                "instances[0]",
            ),
        ],
    )
    .await;
    refused_bodies(
        &slotd,
        "POST",
        SWAP,
        &[
            (b(r#"{"source": null}"#), 422, "invalid_request", "source"),
            (
                b(r#"{"source": "staging", "preview": "yes"}"#),
                422,
                "invalid_request",
                "preview",
            ),
            (
                b(r#"{"source": "staging", "target": 1}"#),
                422,
                "invalid_request",
                "target",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_is_a_422_saying_so() {
    let (_blue, _green, slotd) = blue_green().await;
    refused_bodies(
        &slotd,
        "PUT",
        DEPLOY,
        &[
            (b("nope"), 422, "invalid_request", "JSON"),
            (b("<deployment/>"), 422, "invalid_request", "JSON"),
        ],
    )
    .await;
}

// === fuzz ===

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A malformed body: random bytes, JSON-ish noise, or a valid body mutated.
fn malformed_body(rng: &mut Rng) -> Vec<u8> {
    const SEEDS: &[&str] = &[
        r#"{"version": "v3", "instances": ["127.0.0.1:9001", "[::1]:9002"]}"#,
        r#"{"source": "staging", "target": "production", "preview": false, "dry_run": true}"#,
        r#"{"source": "staging"}"#,
    ];
    const NOISE: &[u8] =
        b"{}[]\":,.-+0123456789eE truefalsenull\\u00\n\t\r\x00\xff\xc3\xa9sourceversioninstances";
    match rng.below(4) {
        0 => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
        1 => (0..rng.below(120)).map(|_| *rng.pick(NOISE)).collect(),
        _ => {
            let mut body = rng.pick(SEEDS).as_bytes().to_vec();
            for _ in 0..=rng.below(4) {
                let at = rng.below(body.len() + 1);
                match rng.below(5) {
                    0 if !body.is_empty() => {
                        let i = at.min(body.len() - 1);
                        body[i] = rng.next() as u8;
                    }
                    1 if at < body.len() => {
                        body.remove(at);
                    }
                    2 => body.insert(at, *rng.pick(NOISE)),
                    3 => body.truncate(at),
                    _ => {
                        let chunk = body[at..(at + 8).min(body.len())].to_vec();
                        body.splice(at..at, chunk);
                    }
                }
            }
            body
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_malformed_bodies_get_4xx_json_errors_and_the_process_keeps_serving() {
    let (_blue, _green, slotd) = blue_green().await;
    let before = snapshot(&slotd).await;
    let mut rng = Rng(0x5107_d5eed_u64);
    let mut sent = 0;
    let mut failures = Vec::new();
    while sent < 300 {
        let body = malformed_body(&mut rng);
        // Bodies that are JSON objects or arrays might be valid requests; the tests
        // above cover those. Everything else must be refused.
        if matches!(
            serde_json::from_slice::<Value>(&body),
            Ok(Value::Object(_) | Value::Array(_))
        ) {
            continue;
        }
        sent += 1;
        for (method, path) in [("PUT", DEPLOY), ("POST", SWAP)] {
            let (status, answer) = raw(
                &slotd,
                method,
                path,
                Some(&format!("Bearer {TOKEN}")),
                Some(body.clone()),
            )
            .await;
            let is_json_error =
                answer["error"]["code"].is_string() && answer["error"]["message"].is_string();
            if !(400..500).contains(&status) || !is_json_error {
                failures.push(format!(
                    "{method} {path} with {:?}: {status} {answer}",
                    String::from_utf8_lossy(&body)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    let (status, _) = slotd.admin_with("GET", "/healthz", None, None).await;
    assert_eq!(status, 200, "the process stopped serving:\n{}", slotd.log());
    assert_eq!(slotd.who_serves("shop.test").await, "blue-1");
    assert_eq!(slotd.who_serves("staging.shop.test").await, "green-1");
    assert_eq!(snapshot(&slotd).await, before);
    assert!(!slotd.log().contains("panicked"), "{}", slotd.log());
}
