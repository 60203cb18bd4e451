//! `/metrics` after known traffic, through the real binary: every value asserted
//! exactly. Request counts by class, durations, body bytes, active requests,
//! per-instance requests, failures and health, upstream errors by kind (from real
//! faulty upstreams: refusing, resetting, answering garbage, hanging), swap phase
//! durations, warm-up requests, state writes and their failures. Also the logs: swap
//! phase events, the optional access log and Pingora's own records.

mod support;

use std::time::Duration;

use serde_json::json;
use support::raw::{Reply, ScriptedUpstream};
use support::{eventually, metric_value as value, refusing_address, Slotd, Upstream, FAST_WARMUP};

const DEPLOY_PRODUCTION: &str = "/v1/apps/shop/slots/production/deployment";

/// Waits until the metrics text has every one of `lines` (counters are updated after
/// the response is sent, so a moment may pass); returns that text.
async fn wait_for_lines(slotd: &Slotd, lines: &[String]) -> String {
    let what = format!("metrics lines {lines:#?}");
    eventually(Duration::from_secs(10), &what, || async {
        let text = slotd.metrics().await;
        lines
            .iter()
            .all(|want| text.lines().any(|l| l == want))
            .then_some(text)
    })
    .await
}

async fn wait_for_metric(slotd: &Slotd, line: &str) -> String {
    wait_for_lines(slotd, &[line.to_string()]).await
}

fn prod(name: &str, extra: &str, value: impl std::fmt::Display) -> String {
    let labels = if extra.is_empty() {
        r#"app="shop""#.to_string()
    } else {
        format!(r#"app="shop",{extra}"#)
    };
    format!(r#"{name}{{{labels},slot="production"}} {value}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_match_the_traffic_sent() {
    let (blue, green, slotd) = support::blue_green(FAST_WARMUP).await;
    let mut sent_bytes = 0;
    for _ in 0..5 {
        let r = slotd.get("shop.test", "/").await;
        assert_eq!(r.status(), 200);
        sent_bytes += r.bytes().await.unwrap().len();
    }
    for path in ["/status/404", "/status/404", "/status/503"] {
        let r = slotd.get("shop.test", path).await;
        sent_bytes += r.bytes().await.unwrap().len();
    }
    let body = vec![b'x'; 1000];
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{}/echo", slotd.proxy))
        .header("host", "shop.test")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    sent_bytes += r.bytes().await.unwrap().len();
    // Not shop's production: an unknown host and the staging slot.
    assert_eq!(slotd.get("unknown.test", "/").await.status(), 404);
    assert_eq!(slotd.get("staging.shop.test", "/").await.status(), 200);

    let blue_instance = format!(r#"instance="{}""#, blue.address());
    let text = wait_for_lines(
        &slotd,
        &[
            prod("slotd_requests_total", r#"class="2xx""#, 6),
            prod("slotd_requests_total", r#"class="4xx""#, 2),
            prod("slotd_requests_total", r#"class="5xx""#, 1),
            prod("slotd_requests_total", r#"class="none""#, 0),
            prod("slotd_requests_total", r#"class="3xx""#, 0),
            prod("slotd_request_duration_seconds_count", "", 9),
            prod("slotd_received_bytes_total", "", 1000),
            prod("slotd_sent_bytes_total", "", sent_bytes),
            prod("slotd_active_requests", "", 0),
            prod("slotd_instance_requests_total", &blue_instance, 9),
            prod("slotd_instance_failures_total", &blue_instance, 0),
            prod("slotd_instance_healthy", &blue_instance, 1),
            format!(
                r#"slotd_instance_healthy{{app="shop",instance="{}",slot="staging"}} 1"#,
                green.address()
            ),
            r#"slotd_requests_total{app="shop",class="2xx",slot="staging"} 1"#.into(),
            r#"slotd_deployment_info{app="shop",slot="production",version="v1"} 1"#.into(),
            r#"slotd_deployment_info{app="shop",slot="staging",version="v2"} 1"#.into(),
            r#"slotd_routing_generation 1"#.into(),
        ],
    )
    .await;
    for kind in ["connect", "timeout", "reset", "bad_response"] {
        let line = prod(
            "slotd_upstream_errors_total",
            &format!(r#"kind="{kind}""#),
            0,
        );
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    // The histogram's buckets add up: every request took less than 60 s.
    let line = prod("slotd_request_duration_seconds_bucket", r#"le="60""#, 9).replace(
        r#"le="60",slot="production""#,
        r#"slot="production",le="60""#,
    );
    assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    // Labels come from the config, never from what clients sent.
    assert!(!text.contains("unknown.test"), "{text}");
    assert!(!text.contains("/status"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_is_an_active_request() {
    let (_blue, _green, slotd) = support::blue_green(FAST_WARMUP).await;
    let proxy = slotd.proxy;
    let slow = tokio::spawn(async move {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{proxy}/slow?ms=3000"))
            .header("host", "shop.test")
            .send()
            .await
            .unwrap()
            .status()
    });
    wait_for_metric(&slotd, &prod("slotd_active_requests", "", 1)).await;
    assert_eq!(slow.await.unwrap(), 200);
    wait_for_lines(
        &slotd,
        &[
            prod("slotd_active_requests", "", 0),
            prod("slotd_requests_total", r#"class="2xx""#, 1),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_are_counted_by_kind_for_the_slot_and_the_instance() {
    // Raw upstreams that read each request head, then: close without answering,
    // answer bytes that are not HTTP, or never answer.
    let reset = ScriptedUpstream::start(|_| Reply::Close).await;
    let garbage =
        ScriptedUpstream::start(|_| Reply::BytesThenClose(b"this is not http\r\n\r\n".to_vec()))
            .await;
    let hang = ScriptedUpstream::start(|_| Reply::Hang).await;
    let refusing = refusing_address();
    let extra = format!("{FAST_WARMUP}\n[app.timeouts]\nread = \"500ms\"");
    let slotd = Slotd::start(&support::shop_app(
        std::slice::from_ref(&refusing),
        &[],
        &extra,
    ))
    .await;

    let cases = [
        (refusing.clone(), "connect", 502),
        (reset.address.clone(), "reset", 502),
        (garbage.address.clone(), "bad_response", 502),
        (hang.address.clone(), "timeout", 504),
    ];
    for (i, (address, kind, status)) in cases.iter().enumerate() {
        if i > 0 {
            let (code, body) = slotd
                .admin(
                    "PUT",
                    DEPLOY_PRODUCTION,
                    Some(json!({"version": format!("v{i}"), "instances": [address]})),
                )
                .await;
            assert_eq!(code, 200, "{body}");
        }
        let r = slotd.get("shop.test", "/").await;
        assert_eq!(r.status().as_u16(), *status, "{kind}");
        let instance = format!(r#"instance="{address}""#);
        wait_for_lines(
            &slotd,
            &[
                prod(
                    "slotd_upstream_errors_total",
                    &format!(r#"kind="{kind}""#),
                    1,
                ),
                prod("slotd_instance_requests_total", &instance, 1),
                prod("slotd_instance_failures_total", &instance, 1),
                prod("slotd_requests_total", r#"class="5xx""#, i + 1),
            ],
        )
        .await;
    }
    let text = slotd.metrics().await;
    for kind in ["connect", "timeout", "reset", "bad_response"] {
        let line = prod(
            "slotd_upstream_errors_total",
            &format!(r#"kind="{kind}""#),
            1,
        );
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    // Instances no deployment holds any more have no series.
    assert!(!text.contains(&refusing), "{text}");
    assert!(!text.contains(&reset.address), "{text}");
    let deploy_writes = r#"slotd_state_store_write_errors_total 0"#;
    assert!(text.lines().any(|l| l == deploy_writes), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_records_its_phases_warm_up_requests_and_state_writes() {
    let (_blue, _green, slotd) = support::blue_green(FAST_WARMUP).await;
    let rec = slotd.swap("staging").await;
    assert_eq!(rec["state"], "completed", "{rec}");
    let phase = |name: &str| {
        format!(r#"slotd_swap_phase_duration_seconds_count{{app="shop",phase="{name}"}} 1"#)
    };
    // One warm-up request to green before the switch, one to blue when it settles.
    let text = wait_for_lines(
        &slotd,
        &[
            r#"slotd_swaps_total{app="shop",result="completed"} 1"#.into(),
            phase("validate"),
            phase("apply-settings"),
            phase("warm-up"),
            phase("switch"),
            phase("settle"),
            r#"slotd_warmup_requests_total{app="shop"} 2"#.into(),
            r#"slotd_warmup_failures_total{app="shop"} 0"#.into(),
            r#"slotd_deployment_info{app="shop",slot="production",version="v2"} 1"#.into(),
            r#"slotd_deployment_info{app="shop",slot="staging",version="v1"} 1"#.into(),
            r#"slotd_state_store_write_errors_total 0"#.into(),
        ],
    )
    .await;
    assert!(
        !text.contains(r#"slotd_deployment_info{app="shop",slot="production",version="v1"}"#),
        "{text}"
    );
    // Start-up may write the seeded state; the swap wrote its switch and its record.
    let writes: u64 = value(&text, "slotd_state_store_write_duration_seconds_count");
    assert!(writes >= 2, "{text}");
    let generation: u64 = value(&text, "slotd_routing_generation");
    assert_eq!(generation, 2, "{text}");

    // A warm-up that fails counts its failed requests; production stays as it was.
    let (code, _) = slotd
        .admin(
            "PUT",
            "/v1/apps/shop/slots/staging/deployment",
            Some(json!({"version": "v3", "instances": [refusing_address()]})),
        )
        .await;
    assert_eq!(code, 200);
    let rec = slotd.swap("staging").await;
    assert_eq!(rec["state"], "failed", "{rec}");
    let text = wait_for_metric(&slotd, r#"slotd_swaps_total{app="shop",result="failed"} 1"#).await;
    let requests: u64 = value(&text, r#"slotd_warmup_requests_total{app="shop"}"#);
    let failures: u64 = value(&text, r#"slotd_warmup_failures_total{app="shop"}"#);
    assert!(failures >= 1 && requests == 2 + failures, "{text}");

    // The state store refusing a write: counted, and the change is refused.
    let state = slotd.state_path();
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("in-the-way"), "").unwrap();
    let (code, body) = slotd
        .admin(
            "PUT",
            "/v1/apps/shop/slots/staging/deployment",
            Some(json!({"version": "v4", "instances": [refusing_address()]})),
        )
        .await;
    assert_eq!(code, 503, "{body}");
    wait_for_metric(&slotd, "slotd_state_store_write_errors_total 1").await;

    // The swap's log: one span with one event per phase, each with its duration.
    let log = slotd.log();
    for name in ["validate", "apply-settings", "warm-up", "switch", "settle"] {
        assert!(
            log.lines()
                .any(|l| l.contains("swap{app=\"shop\" swap_id=s1")
                    && l.contains("swap phase")
                    && l.contains(&format!("phase=\"{name}\""))
                    && l.contains("duration_ms=")),
            "no {name} event in\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_off_by_default_and_one_event_per_request_when_on() {
    let (_blue, _green, quiet) = support::blue_green(FAST_WARMUP).await;
    assert_eq!(quiet.get("shop.test", "/?q=1").await.status(), 200);
    wait_for_metric(&quiet, &prod("slotd_requests_total", r#"class="2xx""#, 1)).await;
    assert!(!quiet.log().contains("slotd::access"), "{}", quiet.log());
    // Pingora's own log records reach slotd's log (SLOTD_LOG=info in tests).
    assert!(
        quiet
            .log()
            .lines()
            .any(|l| l.contains("pingora_core") && l.contains("Bootstrap")),
        "{}",
        quiet.log()
    );

    let blue = Upstream::start("blue-1").await;
    let slotd = Slotd::start_with_proxy(
        "access_log = true",
        &support::shop_app(&[blue.address()], &[], FAST_WARMUP),
    )
    .await;
    assert_eq!(
        slotd.get("shop.test", "/status/404?q=1").await.status(),
        404
    );
    assert_eq!(slotd.get("nowhere.test", "/x").await.status(), 404);
    let log = eventually(Duration::from_secs(10), "two access log events", || async {
        let log = slotd.log();
        (log.matches("slotd::access").count() >= 2).then_some(log)
    })
    .await;
    let events: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("slotd::access"))
        .collect();
    assert_eq!(events.len(), 2, "{log}");
    let e = events[0];
    for want in [
        "method=GET",
        "host=shop.test",
        "uri=/status/404?q=1",
        "status=404",
        "app=\"shop\"",
        "slot=\"production\"",
        &format!("instance=\"{}\"", blue.address()),
        "client=127.0.0.1",
        "duration_us=",
    ] {
        assert!(e.contains(want), "{want} in {e}");
    }
    let e = events[1];
    assert!(
        e.contains("host=nowhere.test") && e.contains("status=404"),
        "{e}"
    );
}
