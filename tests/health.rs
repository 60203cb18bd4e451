//! Instance health through the real binary: active checks take a failing instance out
//! of rotation and bring it back, passive ejection after consecutive failed requests
//! with timed re-admission, all instances down (503, or fail open), and bounded
//! retries of connect failures.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use support::{eventually, metric_value, refusing_address, try_metric_value, Slotd, Upstream};

/// Fast active checks for tests: every 100 ms, 2 in a row to change the verdict.
const FAST_CHECKS: &str = r#"[app.health]
check_path = "/healthz"
check_interval = "100ms"
check_timeout = "1s"
healthy_threshold = 2
unhealthy_threshold = 2"#;

/// `healthy` and `health` of `address` in the production slot, per the admin API.
async fn instance_health(slotd: &Slotd, address: &str) -> (bool, Option<String>) {
    let (status, app) = slotd.admin("GET", "/v1/apps/shop", None).await;
    assert_eq!(status, 200, "{app}");
    let slots = app["slots"].as_array().expect("slots");
    let prod = slots
        .iter()
        .find(|s| s["name"] == "production")
        .expect("production");
    let inst = prod["deployment"]["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["address"] == address)
        .unwrap_or_else(|| panic!("no {address} in {prod}"))
        .clone();
    (
        inst["healthy"].as_bool().expect("healthy"),
        inst.get("health")
            .and_then(Value::as_str)
            .map(str::to_string),
    )
}

/// The `x-upstream` of `n` requests to production.
async fn served_by(slotd: &Slotd, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let resp = slotd.get("shop.test", "/").await;
        assert_eq!(resp.status(), 200);
        out.push(
            resp.headers()
                .get("x-upstream")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_failing_instance_out_of_rotation_and_bring_it_back() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let slotd = Slotd::start(&support::shop_app(
        &[a.address(), b.address()],
        &[],
        FAST_CHECKS,
    ))
    .await;
    // Both serve; checks run (and pass) on both.
    eventually(Duration::from_secs(10), "checks on both", || async {
        (a.health_checks.load(Ordering::SeqCst) >= 2 && b.health_checks.load(Ordering::SeqCst) >= 2)
            .then_some(())
    })
    .await;
    let both = served_by(&slotd, 4).await;
    assert!(
        both.contains(&"a".to_string()) && both.contains(&"b".to_string()),
        "{both:?}"
    );

    a.health.store(503, Ordering::SeqCst);
    eventually(Duration::from_secs(10), "a marked down", || async {
        let (healthy, why) = instance_health(&slotd, &a.address()).await;
        (!healthy).then_some(why)
    })
    .await
    .filter(|why| why.contains("active health checks"))
    .expect("the reason names the checks");
    let before = a.received.load(Ordering::SeqCst);
    assert!(served_by(&slotd, 10).await.iter().all(|u| u == "b"));
    assert_eq!(
        a.received.load(Ordering::SeqCst),
        before,
        "a got traffic while down"
    );
    let text = slotd.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            r#"slotd_instance_ejections_total{app="shop",reason="check"}"#
        ),
        1
    );
    assert!(
        metric_value(
            &text,
            r#"slotd_health_checks_total{app="shop",result="fail"}"#
        ) >= 2
    );
    assert!(text.contains(&format!(
        r#"slotd_instance_healthy{{app="shop",instance="{}",slot="production"}} 0"#,
        a.address()
    )));

    a.health.store(200, Ordering::SeqCst);
    eventually(Duration::from_secs(10), "a back up", || async {
        instance_health(&slotd, &a.address()).await.0.then_some(())
    })
    .await;
    let after = served_by(&slotd, 4).await;
    assert!(after.contains(&"a".to_string()), "{after:?}");
    assert!(slotd
        .log()
        .contains("instance down: it failed its active health checks"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_instance_down_the_slot_answers_503_unless_it_fails_open() {
    let a = Upstream::start("a").await;
    let apps = format!(
        "{}\n{}",
        support::shop_app(&[a.address()], &[], FAST_CHECKS),
        r#"[[app]]
name = "open"
[app.health]
check_path = "/healthz"
check_interval = "100ms"
unhealthy_threshold = 1
fail_open = true
[[app.slot]]
name = "production"
hosts = ["open.test"]
instances = ["ADDR"]
version = "v1"
"#
        .replace("ADDR", &a.address())
    );
    let slotd = Slotd::start(&apps).await;
    a.health.store(500, Ordering::SeqCst);
    eventually(Duration::from_secs(10), "shop answers 503", || async {
        let resp = slotd.get("shop.test", "/").await;
        (resp.status() == 503).then_some(resp.text().await.unwrap_or_default())
    })
    .await
    .contains("no healthy instance")
    .then_some(())
    .expect("the 503 body says why");
    // The same instance, down for app `open` too, still gets its traffic.
    let text = slotd.metrics().await;
    assert_eq!(
        try_metric_value(
            &text,
            r#"slotd_instance_ejections_total{app="open",reason="check"}"#
        ),
        Some(1)
    );
    let resp = slotd.get("open.test", "/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failed_requests_eject_an_instance_until_its_ejection_time_passes() {
    let good = Upstream::start("good").await;
    let dead = refusing_address();
    let extra = r#"retries = 1
[app.health]
max_failures = 2
ejection_time = "2s""#;
    let slotd = Slotd::start(&support::shop_app(
        &[dead.clone(), good.address()],
        &[],
        extra,
    ))
    .await;
    let failures = format!(
        r#"slotd_instance_failures_total{{app="shop",instance="{dead}",slot="production"}}"#
    );
    // Every request succeeds (connect failures are retried on `good`) ...
    for _ in 0..6 {
        assert_eq!(served_by(&slotd, 1).await, ["good"]);
    }
    // ... and the dead one was tried exactly twice before its ejection.
    let text = slotd.metrics().await;
    assert_eq!(metric_value(&text, &failures), 2, "{text}");
    assert_eq!(
        metric_value(
            &text,
            r#"slotd_instance_ejections_total{app="shop",reason="passive"}"#
        ),
        1
    );
    let (healthy, why) = instance_health(&slotd, &dead).await;
    assert!(!healthy);
    assert!(why.unwrap_or_default().contains("ejected"));
    assert!(slotd
        .log()
        .contains("instance ejected: consecutive failed requests"));

    // After the ejection time it gets traffic again: one more failure (still
    // retried for the client) ejects it at once.
    eventually(Duration::from_secs(10), "re-admission", || async {
        instance_health(&slotd, &dead).await.0.then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "one probation request", || async {
        assert_eq!(served_by(&slotd, 1).await, ["good"]);
        let text = slotd.metrics().await;
        (metric_value(&text, &failures) == 3).then_some(text)
    })
    .await;
    let text = slotd.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            r#"slotd_instance_ejections_total{app="shop",reason="passive"}"#
        ),
        2
    );
    assert!(!instance_health(&slotd, &dead).await.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_on_other_instances_up_to_the_apps_retries() {
    let good = Upstream::start("good").await;
    let dead = [refusing_address(), refusing_address()];
    let instances = [dead[0].clone(), dead[1].clone(), good.address()];
    // Passive ejection off, so every request starts on the next instance in turn.
    let app = |retries: u32| {
        support::shop_app(
            &instances,
            &[],
            &format!("retries = {retries}\n[app.health]\nmax_failures = 0"),
        )
    };

    // retries = 2: whichever instance a request starts on, it ends on `good`.
    let slotd = Slotd::start(&app(2)).await;
    for _ in 0..6 {
        assert_eq!(served_by(&slotd, 1).await, ["good"]);
    }
    drop(slotd);

    // retries = 0: a request that starts on a dead instance gets 502.
    let slotd = Slotd::start(&app(0)).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(slotd.get("shop.test", "/").await.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        2,
        "{statuses:?}"
    );
    let text = slotd.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            r#"slotd_upstream_errors_total{app="shop",kind="connect",slot="production"}"#
        ),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_active_checks_off_brings_back_an_instance_they_took_down() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let addresses = [a.address(), b.address()];
    let slotd = Slotd::start(&support::shop_app(&addresses, &[], FAST_CHECKS)).await;
    a.health.store(503, Ordering::SeqCst);
    eventually(Duration::from_secs(10), "a marked down", || async {
        (!instance_health(&slotd, &a.address()).await.0).then_some(())
    })
    .await;
    // The operator drops the checks (say, a wrong check_path) and reloads.
    slotd.rewrite_config("", &support::shop_app(&addresses, &[], ""));
    let (status, body) = slotd.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(instance_health(&slotd, &a.address()).await.0);
    let served = served_by(&slotd, 4).await;
    assert!(served.contains(&"a".to_string()), "{served:?}");
}
