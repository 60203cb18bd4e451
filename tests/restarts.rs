//! Restarts without a failed request, through the real binary: graceful SIGTERM, a
//! zero-downtime binary upgrade (`--upgrade` + SIGQUIT) under continuous load, and a
//! swap killed with SIGKILL before and after its switch.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::raw::{ok, Reply, ScriptedUpstream};
use support::{eventually, Slotd, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits() {
    let up = Upstream::start("blue-1").await;
    let mut slotd = Slotd::start_with_proxy(
        "shutdown_grace = \"2s\"",
        &support::shop_app(&[up.address()], &[], ""),
    )
    .await;
    let proxy = slotd.proxy;
    let slow = tokio::spawn(async move {
        reqwest::Client::new()
            .get(format!("http://{proxy}/slow?ms=1500"))
            .header("host", "shop.test")
            .send()
            .await
    });
    eventually(
        Duration::from_secs(10),
        "the slow request upstream",
        || async { (up.in_flight.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    let signalled = Instant::now();
    slotd.signal("TERM");

    let resp = slow
        .await
        .unwrap()
        .expect("the in-flight request got its answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["connection"], "close");
    assert_eq!(resp.text().await.unwrap(), "blue-1");
    // No new connections once it stops accepting; then it exits cleanly.
    eventually(Duration::from_secs(10), "the listener to close", || async {
        tokio::net::TcpStream::connect(proxy)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let status = slotd.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    assert!(signalled.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_continuous_load_fails_no_request() {
    let up = Upstream::start("blue-1").await;
    let mut slotd = Slotd::start_with_proxy(
        "shutdown_grace = \"1s\"",
        &support::shop_app(&[up.address()], &[], ""),
    )
    .await;
    let old_pid = slotd.pid();

    // 64 keep-alive clients, each sending requests back to back until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..64 {
        let (stop, done, failed, errors) =
            (stop.clone(), done.clone(), failed.clone(), errors.clone());
        let url = format!("http://{}/", slotd.proxy);
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            while !stop.load(Ordering::SeqCst) {
                let r = http.get(&url).header("host", "shop.test").send().await;
                let outcome = match r {
                    Ok(resp) if resp.status() == 200 => {
                        resp.bytes().await.map(|_| ()).map_err(|e| format!("{e:?}"))
                    }
                    Ok(resp) => Err(format!("status {}", resp.status())),
                    Err(e) => Err(format!("{e:?}")),
                };
                match outcome {
                    Ok(()) => done.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        errors.lock().unwrap().push(e);
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    let served = |n: usize| {
        let done = done.clone();
        async move { (done.load(Ordering::SeqCst) >= n).then_some(()) }
    };
    eventually(Duration::from_secs(20), "load before the upgrade", || {
        served(200)
    })
    .await;

    // The new process waits on the upgrade socket; the old one hands its listeners
    // over on SIGQUIT, drains and exits.
    let new = slotd.spawn_upgrade();
    let sock = slotd.dir.path().join("slotd-upgrade.sock");
    eventually(Duration::from_secs(30), "the upgrade socket", || {
        let exists = sock.exists();
        async move { exists.then_some(()) }
    })
    .await;
    slotd.signal("QUIT");
    let old = slotd.wait_exit(Duration::from_secs(60)).await;
    assert!(old.success(), "the old process exited with {old}");
    slotd.adopt(new);
    assert_ne!(slotd.pid(), old_pid);
    let after = done.load(Ordering::SeqCst);
    eventually(Duration::from_secs(20), "load after the upgrade", || {
        served(after + 200)
    })
    .await;
    // The new process has the admin API too.
    eventually(Duration::from_secs(30), "the new admin API", || async {
        let (status, _) = slotd.admin("GET", "/v1/apps", None).await;
        (status == 200).then_some(())
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let (done, failed) = (done.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("upgrade under load: {done} requests answered, {failed} failed");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {:?}",
        done + failed,
        errors.lock().unwrap()
    );
    assert!(slotd
        .log()
        .contains("draining: responses now close their client connections"));
}

/// `shop` with production on `blue` and staging on `green`, warm-up on `/warm`.
fn warm_path_app(blue: &str, green: &str) -> String {
    support::shop_app(
        &[blue.to_string()],
        &[green.to_string()],
        r#"[app.warmup]
path = "/warm"
statuses = [200]
timeout = "30s"
request_timeout = "20s"
retry_interval = "100ms""#,
    )
}

/// A scripted upstream named `name` whose `/warm` answers after `warm_delay`.
async fn slow_warming(name: &'static str, warm_delay: Duration) -> ScriptedUpstream {
    ScriptedUpstream::start(move |s| {
        if s.path == "/warm" {
            let body = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                name.len()
            );
            Reply::Parts(vec![(warm_delay, body.into_bytes())])
        } else {
            ok(name)
        }
    })
    .await
}

/// The body production answers with now.
async fn production(slotd: &Slotd) -> String {
    slotd.get("shop.test", "/").await.text().await.unwrap()
}

async fn swap_in_background(slotd: &Slotd) -> tokio::task::JoinHandle<()> {
    let admin = slotd.admin;
    tokio::spawn(async move {
        // The process is killed under it: this call fails, and that is the point.
        let _ = reqwest::Client::new()
            .post(format!("http://{admin}/v1/apps/shop/swap"))
            .bearer_auth(support::TOKEN)
            .json(&serde_json::json!({"source": "staging"}))
            .send()
            .await;
    })
}

async fn app(slotd: &Slotd) -> Value {
    let (status, app) = slotd.admin("GET", "/v1/apps/shop", None).await;
    assert_eq!(status, 200);
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_killed_during_its_warm_up_did_not_happen_and_says_so() {
    let blue = slow_warming("blue", Duration::ZERO).await;
    let green = slow_warming("green", Duration::from_secs(30)).await;
    let mut slotd = Slotd::start(&warm_path_app(&blue.address, &green.address)).await;
    let swap = swap_in_background(&slotd).await;
    eventually(Duration::from_secs(10), "the swap running", || async {
        (app(&slotd).await["current_swap"]["state"] == "running").then_some(())
    })
    .await;
    slotd.kill();
    swap.abort();
    slotd.spawn_and_wait().await;

    assert_eq!(production(&slotd).await, "blue");
    let app = app(&slotd).await;
    assert!(app["current_swap"].is_null(), "{app}");
    let (_, history) = slotd.admin("GET", "/v1/apps/shop/swaps", None).await;
    let last = &history["swaps"][0];
    assert_eq!(last["state"], "failed", "{history}");
    let error = last["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("interrupted") && error.contains("routing never changed"),
        "{error}"
    );
    // A new swap can start (and, with green answering at once now, would complete).
    assert!(slotd
        .log()
        .contains("a swap was interrupted by a stop of slotd"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_killed_after_its_switch_happened_and_says_so() {
    // Green warms at once; blue (the old production, warmed in `settle`) takes 30 s.
    let blue = slow_warming("blue", Duration::from_secs(30)).await;
    let green = slow_warming("green", Duration::ZERO).await;
    let mut slotd = Slotd::start(&warm_path_app(&blue.address, &green.address)).await;
    let swap = swap_in_background(&slotd).await;
    eventually(Duration::from_secs(20), "the switch", || async {
        (production(&slotd).await == "green").then_some(())
    })
    .await;
    slotd.kill();
    swap.abort();
    slotd.spawn_and_wait().await;

    assert_eq!(production(&slotd).await, "green");
    assert_eq!(
        slotd
            .get("staging.shop.test", "/")
            .await
            .text()
            .await
            .unwrap(),
        "blue"
    );
    let (_, history) = slotd.admin("GET", "/v1/apps/shop/swaps", None).await;
    let last = &history["swaps"][0];
    assert_eq!(last["state"], "completed", "{history}");
    let settle = last["phases"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(settle["name"], "settle", "{history}");
    assert_eq!(settle["ok"], false, "{history}");
    assert!(settle["detail"].as_str().unwrap().contains("interrupted"));
    assert!(app(&slotd).await["current_swap"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_still_running_in_a_replaced_process_never_writes_over_the_new_one() {
    // Green takes 12 s to warm: the swap is still warming in the old process when it
    // lets go of the admin API (Pingora waits 5 s after SIGQUIT) and the new process
    // takes over the state; it then tries to switch while the old one drains (for up
    // to 30 s here, so the attempt surely happens before it exits).
    let blue = slow_warming("blue", Duration::ZERO).await;
    let green = slow_warming("green", Duration::from_secs(12)).await;
    let mut slotd = Slotd::start_with_proxy(
        "shutdown_grace = \"30s\"",
        &warm_path_app(&blue.address, &green.address),
    )
    .await;
    let swap = swap_in_background(&slotd).await;
    eventually(Duration::from_secs(10), "the swap running", || async {
        (app(&slotd).await["current_swap"]["state"] == "running").then_some(())
    })
    .await;

    // Killed if the test fails before it takes over.
    struct Orphan(Option<std::process::Child>);
    impl Drop for Orphan {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut new = Orphan(Some(slotd.spawn_upgrade()));
    let sock = slotd.dir.path().join("slotd-upgrade.sock");
    eventually(Duration::from_secs(30), "the upgrade socket", || {
        let exists = sock.exists();
        async move { exists.then_some(()) }
    })
    .await;
    slotd.signal("QUIT");
    // The old process's switch is refused: it stores no more state.
    eventually(
        Duration::from_secs(40),
        "the old process's switch refused",
        || {
            let log = slotd.log();
            async move {
                log.lines()
                    .any(|l| {
                        l.contains("swap failed") && l.contains("handing over to a new process")
                    })
                    .then_some(())
            }
        },
    )
    .await;
    slotd.kill();
    let _ = swap.await;
    slotd.adopt(new.0.take().expect("the new process"));
    assert!(slotd.log().contains("state store sealed"));

    // The new process closed the swap it found running; the old one, sealed, could
    // not switch behind its back. The state on disk says the same after a restart.
    for round in ["after the hand-over", "after a restart"] {
        let (_, history) = eventually(Duration::from_secs(30), "the new admin API", || async {
            let (status, history) = slotd.admin("GET", "/v1/apps/shop/swaps", None).await;
            (status == 200).then_some((status, history))
        })
        .await;
        assert_eq!(production(&slotd).await, "blue", "{round}");
        let last = &history["swaps"][0];
        assert_eq!(last["state"], "failed", "{round}: {history}");
        assert!(app(&slotd).await["current_swap"].is_null(), "{round}");
        if round == "after the hand-over" {
            slotd.kill();
            slotd.spawn_and_wait().await;
        }
    }
}
