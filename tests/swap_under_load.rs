//! The swap guarantee, under load: 32 keep-alive clients send requests without pause
//! while 40 swaps run. No request may fail, and every request sent after a swap's
//! answer (with no other swap under way until its response) must reach the pool that
//! swap put into production.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{eventually, shop_app, Slotd, Upstream};

const CLIENTS: usize = 32;
const SWAPS: usize = 40;
/// Checked responses wanted in each quiet window between swaps.
const CHECKED_PER_WINDOW: u64 = 64;

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    checked: AtomicU64,
    misrouted: AtomicU64,
    examples: Mutex<Vec<String>>,
}

/// Pool expected in production after `completed` swaps: blue, green, blue, ...
fn expected_pool(completed: usize) -> &'static str {
    if completed % 2 == 0 {
        "blue"
    } else {
        "green"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swaps_under_load_fail_no_request_and_route_later_requests_to_the_new_pool() {
    let blue = [
        Upstream::start("blue-1").await,
        Upstream::start("blue-2").await,
    ];
    let green = [
        Upstream::start("green-1").await,
        Upstream::start("green-2").await,
    ];
    let slotd = Slotd::start(&shop_app(
        &blue.iter().map(Upstream::address).collect::<Vec<_>>(),
        &green.iter().map(Upstream::address).collect::<Vec<_>>(),
        "",
    ))
    .await;

    let started = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let proxy = slotd.proxy;

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (started, completed, stop, tally) = (
            started.clone(),
            completed.clone(),
            stop.clone(),
            tally.clone(),
        );
        clients.push(tokio::spawn(async move {
            // One client, one keep-alive connection, requests back to back.
            let http = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            while !stop.load(Ordering::SeqCst) {
                let done_before = completed.load(Ordering::SeqCst);
                let quiet_before = started.load(Ordering::SeqCst) == done_before;
                tally.sent.fetch_add(1, Ordering::SeqCst);
                let resp = http
                    .get(format!("http://{proxy}/"))
                    .header("host", "shop.test")
                    .send()
                    .await;
                let resp = match resp {
                    Ok(r) if r.status() == 200 => r,
                    Ok(r) => {
                        tally.failed.fetch_add(1, Ordering::SeqCst);
                        tally
                            .examples
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status()));
                        continue;
                    }
                    Err(e) => {
                        tally.failed.fetch_add(1, Ordering::SeqCst);
                        tally.examples.lock().unwrap().push(format!("error {e}"));
                        continue;
                    }
                };
                let upstream = resp
                    .headers()
                    .get("x-upstream")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                match resp.bytes().await {
                    Ok(body) if body == upstream.as_bytes() => {}
                    other => {
                        tally.failed.fetch_add(1, Ordering::SeqCst);
                        tally
                            .examples
                            .lock()
                            .unwrap()
                            .push(format!("body {other:?}"));
                        continue;
                    }
                }
                tally.ok.fetch_add(1, Ordering::SeqCst);
                // Only requests that began and ended with no swap under way have exactly
                // one right answer: the pool the last completed swap put in production.
                let quiet_after = started.load(Ordering::SeqCst) == done_before;
                if quiet_before && quiet_after {
                    tally.checked.fetch_add(1, Ordering::SeqCst);
                    if !upstream.starts_with(expected_pool(done_before)) {
                        tally.misrouted.fetch_add(1, Ordering::SeqCst);
                        tally
                            .examples
                            .lock()
                            .unwrap()
                            .push(format!("after {done_before} swaps got {upstream}"));
                    }
                }
            }
        }));
    }

    for i in 0..SWAPS {
        // Let every window collect checked responses before the next swap.
        let base = tally.checked.load(Ordering::SeqCst);
        eventually(
            Duration::from_secs(30),
            "checked responses between swaps",
            || {
                let t = tally.clone();
                async move {
                    (t.checked.load(Ordering::SeqCst) >= base + CHECKED_PER_WINDOW).then_some(())
                }
            },
        )
        .await;
        started.fetch_add(1, Ordering::SeqCst);
        let rec = slotd.swap("staging").await;
        assert_eq!(rec["state"], "completed", "swap {i}: {rec}");
        completed.fetch_add(1, Ordering::SeqCst);
    }
    let base = tally.checked.load(Ordering::SeqCst);
    eventually(Duration::from_secs(30), "checked responses after the last swap", || {
        let t = tally.clone();
        async move { (t.checked.load(Ordering::SeqCst) >= base + CHECKED_PER_WINDOW).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let sent = tally.sent.load(Ordering::SeqCst);
    let failed = tally.failed.load(Ordering::SeqCst);
    let checked = tally.checked.load(Ordering::SeqCst);
    let misrouted = tally.misrouted.load(Ordering::SeqCst);
    println!(
        "swap under load: {CLIENTS} clients, {SWAPS} swaps, {sent} requests sent, {} ok, {failed} failed, {checked} checked for routing, {misrouted} misrouted",
        tally.ok.load(Ordering::SeqCst)
    );
    let examples = tally.examples.lock().unwrap().clone();
    assert_eq!(failed, 0, "failed requests: {examples:?}");
    assert_eq!(misrouted, 0, "misrouted requests: {examples:?}");
    assert!(checked >= CHECKED_PER_WINDOW * (SWAPS as u64 + 1));

    // The history has every swap, and production ends where the count says.
    let (_, hist) = slotd.admin("GET", "/v1/apps/shop/swaps", None).await;
    let swaps = hist["swaps"].as_array().unwrap();
    assert_eq!(swaps.len(), SWAPS);
    assert!(swaps.iter().all(|r| r["state"] == "completed"));
    assert!(slotd
        .who_serves("shop.test")
        .await
        .starts_with(expected_pool(SWAPS)));
}
