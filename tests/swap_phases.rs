//! Swap phases through the real binary: in-flight requests across a swap, warm-up
//! failures, preview / complete / cancel, conflicts, rollback, deploy.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::{eventually, refusing_address, shop_app, Answer, Slotd, Upstream};

const FAST_WARMUP: &str = r#"[app.warmup]
statuses = [200]
timeout = "1500ms"
request_timeout = "500ms"
retry_interval = "100ms""#;

async fn blue_green() -> (Vec<Upstream>, Vec<Upstream>, Slotd) {
    let blue = vec![
        Upstream::start("blue-1").await,
        Upstream::start("blue-2").await,
    ];
    let green = vec![
        Upstream::start("green-1").await,
        Upstream::start("green-2").await,
    ];
    let slotd = Slotd::start(&shop_app(
        &blue.iter().map(Upstream::address).collect::<Vec<_>>(),
        &green.iter().map(Upstream::address).collect::<Vec<_>>(),
        FAST_WARMUP,
    ))
    .await;
    (blue, green, slotd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_started_before_a_swap_finish_on_their_original_pool() {
    let (blue, _green, slotd) = blue_green().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut slow = Vec::new();
    for _ in 0..6 {
        let req = http
            .get(format!("http://{}/slow?ms=2000", slotd.proxy))
            .header("host", "shop.test")
            .send();
        slow.push(tokio::spawn(req));
    }
    // Wait until the blue instances hold all six requests, then swap.
    eventually(Duration::from_secs(10), "slow requests at blue", || {
        let n: usize = blue
            .iter()
            .map(|u| u.in_flight.load(Ordering::SeqCst))
            .sum();
        async move { (n == 6).then_some(()) }
    })
    .await;
    let rec = slotd.swap("staging").await;
    assert_eq!(rec["state"], "completed", "{rec}");
    assert!(slotd.who_serves("shop.test").await.starts_with("green"));
    let in_flight_after_swap: usize = blue
        .iter()
        .map(|u| u.in_flight.load(Ordering::SeqCst))
        .sum();
    assert_eq!(
        in_flight_after_swap, 6,
        "the swap returned while the slow requests were still running"
    );
    for r in slow {
        let resp = r.await.unwrap().expect("slow request completes");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-slot"], "production");
        let body = resp.text().await.unwrap();
        assert!(body.starts_with("blue"), "slow request finished on {body}");
    }
}

/// Sends requests to production without pause until stopped; returns (ok, failed).
fn load_production(
    slotd: &Slotd,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64, Vec<String>)> {
    let proxy = slotd.proxy;
    tokio::spawn(async move {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut seen = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match http
                .get(format!("http://{proxy}/"))
                .header("host", "shop.test")
                .send()
                .await
            {
                Ok(r) if r.status() == 200 => {
                    let who = r.headers()["x-upstream"].to_str().unwrap_or("").to_string();
                    if !seen.contains(&who) {
                        seen.push(who);
                    }
                    ok.fetch_add(1, Ordering::SeqCst);
                }
                _ => {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        (ok.into_inner(), failed.into_inner(), seen)
    })
}

/// Runs a swap of staging into production while production is under load; returns
/// the record, the failed production requests, and the instances that answered.
async fn swap_under_production_load(slotd: &Slotd) -> (serde_json::Value, u64, u64, Vec<String>) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = load_production(slotd, stop.clone());
    let rec = slotd.swap("staging").await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed, seen) = load.await.unwrap();
    (rec, ok, failed, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmup_that_cannot_connect_fails_the_swap_and_production_keeps_serving() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let dead = refusing_address();
    let slotd = Slotd::start(&shop_app(
        &[blue.address()],
        &[green.address(), dead.clone()],
        FAST_WARMUP,
    ))
    .await;
    let (rec, ok, failed, seen) = swap_under_production_load(&slotd).await;

    assert_eq!(rec["state"], "failed", "{rec}");
    let error = rec["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("instance {dead} did not warm up")),
        "{error}"
    );
    assert!(error.contains("connect failed"), "{error}");
    assert!(
        !error.contains(&green.address()),
        "the healthy instance is not blamed: {error}"
    );
    let phases: Vec<_> = rec["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["validate", "apply-settings", "warm-up"]);
    assert_eq!(rec["phases"][2]["ok"], false);

    assert_eq!(
        failed, 0,
        "production failed requests during the failed swap"
    );
    assert!(ok > 0);
    assert_eq!(
        seen,
        vec!["blue-1".to_string()],
        "production only ever served blue"
    );
    assert_eq!(slotd.who_serves("shop.test").await, "blue-1");
    let (_, app) = slotd.admin("GET", "/v1/apps/shop", None).await;
    assert_eq!(app["slots"][0]["deployment"]["version"], "v1");
    let (_, hist) = slotd.admin("GET", "/v1/apps/shop/swaps", None).await;
    assert_eq!(hist["swaps"][0]["state"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmup_answered_with_an_unaccepted_status_fails_the_swap() {
    let blue = Upstream::start("blue-1").await;
    let good = Upstream::start("green-1").await;
    let bad = Upstream::start_with("green-2", Answer::Status(500)).await;
    let slotd = Slotd::start(&shop_app(
        &[blue.address()],
        &[good.address(), bad.address()],
        FAST_WARMUP,
    ))
    .await;
    let (rec, _, failed, seen) = swap_under_production_load(&slotd).await;

    assert_eq!(rec["state"], "failed", "{rec}");
    let error = rec["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "instance {} did not warm up: answered 500",
            bad.address()
        )),
        "{error}"
    );
    assert!(
        bad.received.load(Ordering::SeqCst) >= 2,
        "the bad instance was retried"
    );
    assert_eq!(failed, 0);
    assert_eq!(seen, vec!["blue-1".to_string()]);
    assert_eq!(slotd.who_serves("shop.test").await, "blue-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_waits_and_cancel_leaves_routing_unchanged() {
    let (_blue, _green, slotd) = blue_green().await;
    let (status, rec) = slotd
        .admin(
            "POST",
            "/v1/apps/shop/swap",
            Some(json!({"source": "staging", "preview": true})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(rec["state"], "preview", "{rec}");
    assert!(slotd.who_serves("shop.test").await.starts_with("blue"));

    // While in preview the app is busy: another swap is refused, and so is a deploy
    // into one of the two slots.
    let (status, err) = slotd
        .admin(
            "POST",
            "/v1/apps/shop/swap",
            Some(json!({"source": "staging"})),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "conflict");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("preview"));
    let (status, _) = slotd
        .admin(
            "PUT",
            "/v1/apps/shop/slots/staging/deployment",
            Some(json!({"version": "v3", "instances": ["127.0.0.1:1"]})),
        )
        .await;
    assert_eq!(status, 409);
    let (_, app) = slotd.admin("GET", "/v1/apps/shop", None).await;
    assert_eq!(app["current_swap"]["id"], rec["id"]);

    let (status, cancelled) = slotd.admin("POST", "/v1/apps/shop/swap/cancel", None).await;
    assert_eq!(status, 200);
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["id"], rec["id"]);
    assert!(slotd.who_serves("shop.test").await.starts_with("blue"));
    let (_, app) = slotd.admin("GET", "/v1/apps/shop", None).await;
    assert!(app["current_swap"].is_null());

    // Nothing is left to complete or cancel.
    let (status, _) = slotd
        .admin("POST", "/v1/apps/shop/swap/complete", None)
        .await;
    assert_eq!(status, 409);
    let (status, _) = slotd.admin("POST", "/v1/apps/shop/swap/cancel", None).await;
    assert_eq!(status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_then_complete_switches() {
    let (_blue, _green, slotd) = blue_green().await;
    let (_, rec) = slotd
        .admin(
            "POST",
            "/v1/apps/shop/swap",
            Some(json!({"source": "staging", "preview": true})),
        )
        .await;
    assert_eq!(rec["state"], "preview");
    assert!(slotd.who_serves("shop.test").await.starts_with("blue"));
    let (status, done) = slotd
        .admin("POST", "/v1/apps/shop/swap/complete", None)
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["state"], "completed");
    assert_eq!(done["id"], rec["id"]);
    let phases: Vec<_> = done["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        ["validate", "apply-settings", "warm-up", "switch", "settle"]
    );
    assert!(slotd.who_serves("shop.test").await.starts_with("green"));
    // Sticky headers stayed with the slots: green now gets production's X-Slot.
    let echo: serde_json::Value = slotd.get("shop.test", "/echo").await.json().await.unwrap();
    assert_eq!(echo["headers"]["x-slot"][0], "production");
    assert!(echo["upstream"].as_str().unwrap().starts_with("green"));
    let echo: serde_json::Value = slotd
        .get("staging.shop.test", "/echo")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(echo["headers"]["x-slot"][0], "staging");
    assert!(echo["upstream"].as_str().unwrap().starts_with("blue"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_swaps_back_the_last_completed_swap() {
    let (_blue, _green, slotd) = blue_green().await;
    let (status, _) = slotd.admin("POST", "/v1/apps/shop/rollback", None).await;
    assert_eq!(status, 409, "nothing to roll back yet");

    let first = slotd.swap("staging").await;
    assert!(slotd.who_serves("shop.test").await.starts_with("green"));
    let (status, back) = slotd.admin("POST", "/v1/apps/shop/rollback", None).await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(back["state"], "completed");
    assert_eq!(back["trigger"], "rollback");
    assert_eq!(back["rollback_of"], first["id"]);
    assert!(slotd.who_serves("shop.test").await.starts_with("blue"));
    assert!(slotd
        .who_serves("staging.shop.test")
        .await
        .starts_with("green"));

    // A deploy to staging since the last swap means there is nothing safe to roll back.
    let other = Upstream::start("purple-1").await;
    let (status, _) = slotd
        .admin(
            "PUT",
            "/v1/apps/shop/slots/staging/deployment",
            Some(json!({"version": "v3", "instances": [other.address()]})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, err) = slotd.admin("POST", "/v1/apps/shop/rollback", None).await;
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("now holds"),
        "{err}"
    );
    assert!(slotd.who_serves("shop.test").await.starts_with("blue"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_replaces_a_slots_pool_and_keeps_its_hosts() {
    let (_blue, _green, slotd) = blue_green().await;
    let purple = Upstream::start("purple-1").await;
    let (status, slot) = slotd
        .admin(
            "PUT",
            "/v1/apps/shop/slots/staging/deployment",
            Some(json!({"version": "v3", "instances": [purple.address()]})),
        )
        .await;
    assert_eq!(status, 200, "{slot}");
    assert_eq!(slot["name"], "staging");
    assert_eq!(slot["hosts"][0], "staging.shop.test");
    assert_eq!(slot["deployment"]["version"], "v3");
    assert_eq!(
        slot["deployment"]["instances"][0]["address"],
        purple.address()
    );
    assert_eq!(slotd.who_serves("staging.shop.test").await, "purple-1");
    assert!(slotd.who_serves("shop.test").await.starts_with("blue"));
    let rec = slotd.swap("staging").await;
    assert_eq!(rec["source_deployment"]["version"], "v3");
    assert_eq!(slotd.who_serves("shop.test").await, "purple-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_from_an_empty_slot_or_into_itself_is_refused() {
    let blue = Upstream::start("blue-1").await;
    let slotd = Slotd::start(&shop_app(&[blue.address()], &[], FAST_WARMUP)).await;
    let (status, err) = slotd
        .admin(
            "POST",
            "/v1/apps/shop/swap",
            Some(json!({"source": "staging"})),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("holds no deployment"));
    let (status, _) = slotd
        .admin(
            "POST",
            "/v1/apps/shop/swap",
            Some(json!({"source": "production"})),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = slotd
        .admin(
            "POST",
            "/v1/apps/shop/swap",
            Some(json!({"source": "nope"})),
        )
        .await;
    assert_eq!(status, 404);
    // An empty slot answers 503, production is untouched.
    assert_eq!(slotd.get("staging.shop.test", "/").await.status(), 503);
    assert_eq!(slotd.who_serves("shop.test").await, "blue-1");
    let (_, hist) = slotd.admin("GET", "/v1/apps/shop/swaps", None).await;
    assert_eq!(
        hist["swaps"].as_array().unwrap().len(),
        0,
        "refusals leave no record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_describes_the_swap_and_changes_nothing() {
    let (_blue, _green, slotd) = blue_green().await;
    let (status, plan) = slotd
        .admin(
            "POST",
            "/v1/apps/shop/swap",
            Some(json!({"source": "staging", "dry_run": true})),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["moves"][0]["from"], "staging");
    assert_eq!(plan["moves"][0]["to"], "production");
    assert_eq!(plan["moves"][0]["headers_after"]["X-Slot"], "production");
    assert_eq!(plan["moves"][1]["headers_after"]["X-Slot"], "staging");
    assert!(slotd.who_serves("shop.test").await.starts_with("blue"));
    let (_, hist) = slotd.admin("GET", "/v1/apps/shop/swaps", None).await;
    assert_eq!(hist["swaps"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_to_an_auto_swap_slot_is_warmed_and_swapped_in() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let apps = shop_app(&[blue.address()], &[green.address()], FAST_WARMUP).replace(
        "hosts = [\"staging.shop.test\"]",
        "hosts = [\"staging.shop.test\"]\nauto_swap = \"production\"",
    );
    let slotd = Slotd::start(&apps).await;
    let purple = Upstream::start("purple-1").await;
    let (status, slot) = slotd
        .admin(
            "PUT",
            "/v1/apps/shop/slots/staging/deployment",
            Some(json!({"version": "v3", "instances": [purple.address()]})),
        )
        .await;
    assert_eq!(status, 200, "{slot}");
    assert_eq!(slot["auto_swap_started"]["target"], "production");
    let rec = eventually(Duration::from_secs(10), "the auto-swap to finish", || {
        let slotd = &slotd;
        async move {
            let (_, hist) = slotd.admin("GET", "/v1/apps/shop/swaps", None).await;
            let first = hist["swaps"].get(0)?.clone();
            (first["state"] == "completed").then_some(first)
        }
    })
    .await;
    assert_eq!(rec["trigger"], "auto-swap");
    assert_eq!(rec["source_deployment"]["version"], "v3");
    assert_eq!(slotd.who_serves("shop.test").await, "purple-1");
    assert_eq!(slotd.who_serves("staging.shop.test").await, "blue-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_auto_swap_leaves_production_untouched() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let apps = shop_app(&[blue.address()], &[green.address()], FAST_WARMUP).replace(
        "hosts = [\"staging.shop.test\"]",
        "hosts = [\"staging.shop.test\"]\nauto_swap = \"production\"",
    );
    let slotd = Slotd::start(&apps).await;
    let dead = refusing_address();
    let (status, _) = slotd
        .admin(
            "PUT",
            "/v1/apps/shop/slots/staging/deployment",
            Some(json!({"version": "v3", "instances": [dead]})),
        )
        .await;
    assert_eq!(status, 200);
    let rec = eventually(Duration::from_secs(10), "the auto-swap to fail", || {
        let slotd = &slotd;
        async move {
            let (_, hist) = slotd.admin("GET", "/v1/apps/shop/swaps", None).await;
            let first = hist["swaps"].get(0)?.clone();
            (first["state"] == "failed").then_some(first)
        }
    })
    .await;
    assert_eq!(rec["trigger"], "auto-swap");
    assert_eq!(slotd.who_serves("shop.test").await, "blue-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_survives_a_restart_and_can_be_completed() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let mut slotd = Slotd::start(&shop_app(
        &[blue.address()],
        &[green.address()],
        FAST_WARMUP,
    ))
    .await;
    let (_, rec) = slotd
        .admin(
            "POST",
            "/v1/apps/shop/swap",
            Some(json!({"source": "staging", "preview": true})),
        )
        .await;
    assert_eq!(rec["state"], "preview");
    slotd.restart().await;
    assert_eq!(slotd.who_serves("shop.test").await, "blue-1");
    let (status, _) = slotd
        .admin(
            "POST",
            "/v1/apps/shop/swap",
            Some(json!({"source": "staging"})),
        )
        .await;
    assert_eq!(
        status, 409,
        "the preview still holds the app after a restart"
    );
    let (status, done) = slotd
        .admin("POST", "/v1/apps/shop/swap/complete", None)
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["id"], rec["id"]);
    assert_eq!(slotd.who_serves("shop.test").await, "green-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_into_an_empty_slot_can_be_rolled_back() {
    let blue = Upstream::start("blue-1").await;
    let slotd = Slotd::start(&shop_app(&[blue.address()], &[], FAST_WARMUP)).await;
    let (status, rec) = slotd
        .admin(
            "POST",
            "/v1/apps/shop/swap",
            Some(json!({"source": "production", "target": "staging"})),
        )
        .await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["state"], "completed");
    assert_eq!(slotd.get("shop.test", "/").await.status(), 503);
    assert_eq!(slotd.who_serves("staging.shop.test").await, "blue-1");
    let (status, back) = slotd.admin("POST", "/v1/apps/shop/rollback", None).await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(back["state"], "completed");
    assert_eq!(slotd.who_serves("shop.test").await, "blue-1");
    assert_eq!(slotd.get("staging.shop.test", "/").await.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_travel_with_the_deployment_sticky_ones_stay_and_clients_cannot_spoof_them() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let apps = format!(
        r#"[[app]]
name = "shop"
[app.settings_headers]
FEATURE = "X-Feature"
DB_URL = "X-Db"

[[app.slot]]
name = "production"
hosts = ["shop.test"]
instances = ["{blue}"]
version = "v1"
sticky_settings = ["DB_URL", "REGION"]
[app.slot.settings]
FEATURE = "on"
DB_URL = "prod-db"
REGION = "eu"

[[app.slot]]
name = "staging"
hosts = ["staging.shop.test"]
instances = ["{green}"]
version = "v2"
sticky_settings = ["DB_URL"]
[app.slot.settings]
DB_URL = "staging-db"
"#,
        blue = blue.address(),
        green = green.address()
    );
    let slotd = Slotd::start(&apps).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let echo = |host: &'static str| {
        let http = http.clone();
        let proxy = slotd.proxy;
        async move {
            let v: serde_json::Value = http
                .get(format!("http://{proxy}/echo"))
                .header("host", host)
                .header("x-feature", "spoofed")
                .header("x-db", "spoofed")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (
                v["upstream"].as_str().unwrap().to_string(),
                v["headers"]["x-feature"][0].as_str().map(str::to_string),
                v["headers"]["x-db"][0].as_str().map(str::to_string),
            )
        }
    };
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        echo("shop.test").await,
        ("blue-1".into(), some("on"), some("prod-db"))
    );
    assert_eq!(
        echo("staging.shop.test").await,
        ("green-1".into(), None, some("staging-db"))
    );

    // The settings API: effective values, stickiness, the header that carries each.
    let (status, v) = slotd
        .admin("GET", "/v1/apps/shop/slots/production/settings", None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["settings"],
        json!([
            {"name": "DB_URL", "value": "prod-db", "sticky": true, "header": "x-db"},
            {"name": "FEATURE", "value": "on", "sticky": false, "header": "x-feature"},
            {"name": "REGION", "value": "eu", "sticky": true, "header": null},
        ])
    );
    let (status, _) = slotd
        .admin("GET", "/v1/apps/shop/slots/nope/settings", None)
        .await;
    assert_eq!(status, 404);

    // A dry run shows the settings each pool serves with before and after, and warns
    // about the sticky setting only production has.
    let (status, plan) = slotd
        .admin(
            "POST",
            "/v1/apps/shop/swap",
            Some(json!({"source": "staging", "dry_run": true})),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(
        plan["moves"][0]["settings_before"],
        json!({"DB_URL": "staging-db"})
    );
    assert_eq!(
        plan["moves"][0]["settings_after"],
        json!({"DB_URL": "prod-db", "REGION": "eu"})
    );
    assert_eq!(
        plan["moves"][1]["settings_after"],
        json!({"DB_URL": "staging-db", "FEATURE": "on"})
    );
    let warnings = plan["warnings"].to_string();
    assert!(
        warnings.contains("`REGION`") && warnings.contains("`staging`"),
        "{plan}"
    );
    let (code, out, err) =
        slotd.cli(&["swap", "--app", "shop", "--source", "staging", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("setting DB_URL: staging-db -> prod-db"),
        "{out}"
    );
    assert!(out.contains("warning: sticky setting `REGION`"), "{out}");

    slotd.swap("staging").await;
    // FEATURE travelled with blue's deployment; DB_URL stayed with each slot.
    assert_eq!(
        echo("shop.test").await,
        ("green-1".into(), None, some("prod-db"))
    );
    assert_eq!(
        echo("staging.shop.test").await,
        ("blue-1".into(), some("on"), some("staging-db"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_may_be_hostnames_resolved_before_the_table_is_built() {
    let (_blue, _green, slotd) = blue_green().await;
    // Listen where `localhost` resolves first on this machine (127.0.0.1 or ::1).
    let first = tokio::net::lookup_host("localhost:0")
        .await
        .unwrap()
        .next()
        .unwrap();
    let bind = SocketAddr::new(first.ip(), 0).to_string();
    let purple = Upstream::start_at("purple-1", Answer::Identity, &bind).await;
    let by_name = format!("localhost:{}", purple.addr.port());
    let (status, slot) = slotd
        .admin(
            "PUT",
            "/v1/apps/shop/slots/staging/deployment",
            Some(json!({"version": "v3", "instances": [by_name]})),
        )
        .await;
    assert_eq!(status, 200, "{slot}");
    assert_eq!(slotd.who_serves("staging.shop.test").await, "purple-1");
    let rec = slotd.swap("staging").await;
    assert_eq!(rec["state"], "completed", "{rec}");
    assert_eq!(slotd.who_serves("shop.test").await, "purple-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_whose_outcome_cannot_be_stored_ends_instead_of_staying_running() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let slotd = Slotd::start(&shop_app(
        &[blue.address()],
        &[green.address()],
        "[app.warmup]\npath = \"/slow?ms=3000\"\ntimeout = \"10s\"\nrequest_timeout = \"5s\"",
    ))
    .await;
    let state = slotd.state_path();
    let swap = slotd.admin(
        "POST",
        "/v1/apps/shop/swap",
        Some(json!({"source": "staging", "preview": true})),
    );
    // While the warm-up runs, the store stops taking writes (a folder is in the way
    // of the state file), so the preview cannot be recorded.
    let break_store = async {
        eventually(Duration::from_secs(5), "the swap to be running", || async {
            let (_, app) = slotd.admin("GET", "/v1/apps/shop", None).await;
            (app["current_swap"]["state"] == "running").then_some(())
        })
        .await;
        std::fs::remove_file(&state).unwrap();
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("in-the-way"), "").unwrap();
    };
    let ((status, body), ()) = tokio::join!(swap, break_store);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "state_store_unavailable", "{body}");

    // It is not left running: nothing waits in preview, and the history says why.
    let (_, app) = slotd.admin("GET", "/v1/apps/shop", None).await;
    assert!(app["current_swap"].is_null(), "{app}");
    let (status, err) = slotd
        .admin("POST", "/v1/apps/shop/swap/complete", None)
        .await;
    assert_eq!(status, 409, "{err}");
    let (_, history) = slotd.admin("GET", "/v1/apps/shop/swaps", None).await;
    let last = &history["swaps"][0];
    assert_eq!(last["state"], "failed", "{history}");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("the preview could not be recorded"),
        "{history}"
    );
    assert!(slotd.who_serves("shop.test").await.starts_with("blue"));

    // Once the store takes writes again, the next swap runs.
    std::fs::remove_dir_all(&state).unwrap();
    let rec = slotd.swap("staging").await;
    assert_eq!(rec["state"], "completed", "{rec}");
    assert!(slotd.who_serves("shop.test").await.starts_with("green"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_deployment_of_an_empty_slot_gets_the_slots_configured_settings() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let apps = format!(
        r#"[[app]]
name = "shop"
[app.settings_headers]
FEATURE = "X-Feature"

[[app.slot]]
name = "production"
hosts = ["shop.test"]
instances = ["{blue}"]
version = "v1"

[[app.slot]]
name = "staging"
hosts = ["staging.shop.test"]
sticky_settings = ["DB_URL"]
[app.slot.settings]
FEATURE = "beta"
DB_URL = "staging-db"
"#,
        blue = blue.address()
    );
    let slotd = Slotd::start(&apps).await;
    let (status, body) = slotd
        .admin(
            "PUT",
            "/v1/apps/shop/slots/staging/deployment",
            Some(json!({"version": "v2", "instances": [green.address()]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, v) = slotd
        .admin("GET", "/v1/apps/shop/slots/staging/settings", None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["settings"],
        json!([
            {"name": "DB_URL", "value": "staging-db", "sticky": true, "header": null},
            {"name": "FEATURE", "value": "beta", "sticky": false, "header": "x-feature"},
        ])
    );
    let echo: serde_json::Value = slotd
        .get("staging.shop.test", "/echo")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(echo["headers"]["x-feature"][0], "beta", "{echo}");
}
