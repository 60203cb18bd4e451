//! Live configuration through the real binary: `slotd reload`, `POST /v1/reload` and
//! SIGHUP apply hosts, headers and slots under continuous load without a failed
//! request; a bad file or one that drops a slot holding a deployment is refused with
//! nothing changed; settings a running process cannot change are reported.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::{eventually, metric_value, Slotd, Upstream};

/// `shop` with a production `X-Slot` header value, extra production hosts and an
/// optional `canary` slot (instance, host).
fn apps(
    blue: &str,
    green: &str,
    x_slot: &str,
    extra_host: Option<&str>,
    canary: Option<(&str, &str)>,
) -> String {
    let hosts = match extra_host {
        Some(h) => format!("\"shop.test\", \"{h}\""),
        None => "\"shop.test\"".into(),
    };
    let canary = canary
        .map(|(c, host)| {
            format!(
                "[[app.slot]]\nname = \"canary\"\nhosts = [\"{host}\"]\ninstances = [\"{c}\"]\nversion = \"v3\"\n"
            )
        })
        .unwrap_or_default();
    format!(
        r#"[[app]]
name = "shop"

[[app.slot]]
name = "production"
hosts = [{hosts}]
instances = ["{blue}"]
version = "v1"
[app.slot.headers]
X-Slot = "{x_slot}"

[[app.slot]]
name = "staging"
hosts = ["staging.shop.test"]
instances = ["{green}"]
version = "v2"

{canary}"#
    )
}

/// The `x-slot` request header production's upstream saw, via `/echo`.
async fn x_slot_seen(slotd: &Slotd, host: &str) -> String {
    let resp = slotd.get(host, "/echo").await;
    assert_eq!(resp.status(), 200, "{host}");
    let v: Value = resp.json().await.unwrap();
    v["headers"]["x-slot"][0].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_change_hosts_headers_and_slots_without_a_failed_request() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let canary = Upstream::start("canary-1").await;
    let (b, g, c) = (blue.address(), green.address(), canary.address());
    let slotd = Slotd::start(&apps(&b, &g, "production", None, None)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (done, errors) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
        let url = format!("http://{}/", slotd.proxy);
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            while !stop.load(Ordering::SeqCst) {
                let r = http.get(&url).header("host", "shop.test").send().await;
                match r {
                    Ok(resp) if resp.status() == 200 => match resp.bytes().await {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => errors.lock().unwrap().push(format!("{e:?}")),
                    },
                    Ok(resp) => errors.lock().unwrap().push(format!("{}", resp.status())),
                    Err(e) => errors.lock().unwrap().push(format!("{e:?}")),
                }
            }
        }));
    }

    // 20 reloads, alternating between two configs, through the CLI and the API. The
    // first adds a `canary` slot (which then holds a deployment, so it stays); the
    // others move hosts and change a sticky header.
    for i in 0..20 {
        let on = i % 2 == 0;
        slotd.rewrite_config(
            "",
            &apps(
                &b,
                &g,
                if on { "prod-2" } else { "production" },
                on.then_some("www.shop.test"),
                Some((
                    c.as_str(),
                    if on {
                        "canary.shop.test"
                    } else {
                        "canary-b.shop.test"
                    },
                )),
            ),
        );
        if i % 4 == 0 {
            let (code, out, err) = slotd.cli(&["reload"]);
            assert_eq!(code, 0, "{out}{err}");
            assert!(out.contains("reloaded"), "{out}");
        } else {
            let (status, body) = slotd.admin("POST", "/v1/reload", None).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["reloaded"], true);
        }
        if on {
            assert_eq!(x_slot_seen(&slotd, "www.shop.test").await, "prod-2");
            let resp = slotd.get("canary.shop.test", "/").await;
            assert_eq!(resp.text().await.unwrap(), "canary-1");
        } else {
            assert_eq!(x_slot_seen(&slotd, "shop.test").await, "production");
            assert_eq!(slotd.get("www.shop.test", "/").await.status(), 404);
            assert_eq!(slotd.get("canary.shop.test", "/").await.status(), 404);
            let resp = slotd.get("canary-b.shop.test", "/").await;
            assert_eq!(resp.text().await.unwrap(), "canary-1");
        }
        let before = done.load(Ordering::SeqCst);
        eventually(Duration::from_secs(10), "requests between reloads", || {
            let done = done.clone();
            async move { (done.load(Ordering::SeqCst) >= before + 20).then_some(()) }
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    eprintln!(
        "reload under load: 20 reloads, {} requests answered, {} failed",
        done.load(Ordering::SeqCst),
        errors.len()
    );
    assert!(errors.is_empty(), "{errors:?}");
    let text = slotd.metrics().await;
    assert_eq!(
        metric_value(&text, r#"slotd_config_reloads_total{result="ok"}"#),
        20
    );
    assert_eq!(
        metric_value(&text, r#"slotd_config_reloads_total{result="failed"}"#),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_refused_with_the_check_errors_and_the_running_config_serves() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let (b, g) = (blue.address(), green.address());
    let slotd = Slotd::start(&apps(&b, &g, "production", None, None)).await;

    // Errors `slotd check` would print, with a new host that must not take effect.
    let bad = apps(&b, &g, "production", Some("www.shop.test"), None)
        .replace("version = \"v1\"", "version = \"v1\"\ncolour = \"blue\"");
    slotd.rewrite_config("access_log = \"yes\"", &bad);
    let (status, body) = slotd.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_config");
    let (_, _, check) = support::run_cli(
        &["check", "--config", slotd.config_path().to_str().unwrap()],
        None,
        None,
    );
    let errors: Vec<&str> = body["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(errors.len(), 2, "{body}");
    for e in &errors {
        assert!(
            check.contains(e),
            "{e} is not in `slotd check` output:\n{check}"
        );
    }
    assert_eq!(slotd.get("www.shop.test", "/").await.status(), 404);
    assert_eq!(slotd.who_serves("shop.test").await, "blue-1");

    // The CLI says no with exit status 1.
    let (code, _, err) = slotd.cli(&["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown key `colour`"), "{err}");

    // Dropping `staging`, which holds green's deployment, does not fit the state.
    let dropped = apps(&b, &g, "production", None, None);
    let dropped = &dropped[..dropped.find("[[app.slot]]\nname = \"staging\"").unwrap()];
    slotd.rewrite_config("", dropped);
    let (status, body) = slotd.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "config_does_not_fit_state");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("slot `staging`"), "{message}");
    assert_eq!(slotd.who_serves("staging.shop.test").await, "green-1");

    let text = slotd.metrics().await;
    assert_eq!(
        metric_value(&text, r#"slotd_config_reloads_total{result="failed"}"#),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_fixed_settings_wait_for_a_restart() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let (b, g) = (blue.address(), green.address());
    let slotd = Slotd::start(&apps(&b, &g, "production", None, None)).await;

    slotd.rewrite_config("", &apps(&b, &g, "production", Some("www.shop.test"), None));
    slotd.signal("HUP");
    eventually(Duration::from_secs(10), "the new host", || async {
        (slotd.get("www.shop.test", "/").await.status() == 200).then_some(())
    })
    .await;
    // The outcome is logged just after the new table is published.
    eventually(Duration::from_secs(10), "the reload in the log", || {
        let logged = slotd.log().contains("config reloaded");
        async move { logged.then_some(()) }
    })
    .await;

    // A new listen address cannot be taken live: the reload applies the rest and
    // says so; the proxy keeps its listener.
    let other = format!("127.0.0.1:{}", support::free_port());
    let text = support::server_config_with(
        other.parse().unwrap(),
        slotd.admin,
        "",
        &apps(&b, &g, "v2-header", Some("www.shop.test"), None),
    );
    std::fs::write(slotd.config_path(), text).unwrap();
    let (status, body) = slotd.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["outcome"]["restart_required"],
        serde_json::json!(["proxy.listen"])
    );
    assert_eq!(x_slot_seen(&slotd, "shop.test").await, "v2-header");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_apps_load_route_and_reload() {
    let up = Upstream::start("shared-1").await;
    let addr = up.address();
    let many = |n: usize, tag: &str| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "[[app]]\nname = \"app{i}\"\n[[app.slot]]\nname = \"production\"\nhosts = [\"app{i}.test\"]\ninstances = [\"{addr}\"]\nversion = \"v1\"\n[app.slot.headers]\nX-Tag = \"{tag}\"\n[[app.slot]]\nname = \"staging\"\nhosts = [\"staging.app{i}.test\"]\n\n"
                )
            })
            .collect()
    };
    let slotd = Slotd::start(&many(1000, "one")).await;
    for i in [0, 1, 499, 998, 999] {
        let resp = slotd.get(&format!("app{i}.test"), "/echo").await;
        assert_eq!(resp.status(), 200, "app{i}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["headers"]["x-tag"][0], "one");
    }
    let (status, apps) = slotd.admin("GET", "/v1/apps", None).await;
    assert_eq!(status, 200);
    assert_eq!(apps["apps"].as_array().unwrap().len(), 1000);

    // A reload of all 1,000 apps, and one more app.
    slotd.rewrite_config("", &many(1001, "two"));
    let (status, body) = slotd.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"]["apps"], 1001);
    for i in [0, 999, 1000] {
        let v: Value = slotd
            .get(&format!("app{i}.test"), "/echo")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(v["headers"]["x-tag"][0], "two", "app{i}");
    }
    // A swap in one app leaves the others alone.
    let (status, _) = slotd
        .admin(
            "PUT",
            "/v1/apps/app7/slots/staging/deployment",
            Some(serde_json::json!({"version": "v2", "instances": [addr]})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, rec) = slotd
        .admin(
            "POST",
            "/v1/apps/app7/swap",
            Some(serde_json::json!({"source": "staging"})),
        )
        .await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["state"], "completed", "{rec}");
    assert_eq!(slotd.get("staging.app8.test", "/").await.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_waits_for_no_swap_it_is_refused_while_one_runs_or_waits_in_preview() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let (b, g) = (blue.address(), green.address());
    // Warm-up on /slow: the swap takes about 2 s.
    let config = apps(&b, &g, "production", None, None).replace(
        "name = \"shop\"\n",
        "name = \"shop\"\n[app.warmup]\npath = \"/slow?ms=2000\"\nrequest_timeout = \"10s\"\n",
    );
    let slotd = Slotd::start(&config).await;
    let admin = slotd.admin;
    let swap = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("http://{admin}/v1/apps/shop/swap"))
            .bearer_auth(support::TOKEN)
            .json(&serde_json::json!({"source": "staging"}))
            .send()
            .await
            .unwrap()
            .status()
    });
    eventually(Duration::from_secs(10), "the swap running", || async {
        let (_, app) = slotd.admin("GET", "/v1/apps/shop", None).await;
        (app["current_swap"]["state"] == "running").then_some(())
    })
    .await;
    let (status, body) = slotd.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("swap"),
        "{body}"
    );
    assert_eq!(swap.await.unwrap(), 200);
    let (status, body) = slotd.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");

    // A swap waiting in preview was warmed with the running config: refused too,
    // until it is completed or cancelled.
    let (status, rec) = slotd
        .admin(
            "POST",
            "/v1/apps/shop/swap",
            Some(serde_json::json!({"source": "staging", "preview": true})),
        )
        .await;
    assert_eq!((status, rec["state"].as_str()), (200, Some("preview")));
    let (status, body) = slotd.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("waiting in preview"), "{body}");
    let (status, _) = slotd.admin("POST", "/v1/apps/shop/swap/cancel", None).await;
    assert_eq!(status, 200);
    let (status, body) = slotd.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");
}

/// Stops the daemon whose pid file is `pid_file` when dropped.
struct Daemon {
    pid_file: std::path::PathBuf,
}

impl Daemon {
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args(["-s", "INT", &pid.to_string()])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_with_a_relative_config_path_can_reload() {
    // A daemon works from `/`: the config file it reads again must not be looked up
    // there.
    let up = Upstream::start("blue-1").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let write_config = |extra_host: Option<&str>| {
        let text = support::server_config(
            proxy,
            admin,
            &apps(&up.address(), &up.address(), "production", extra_host, None),
        );
        std::fs::write(dir.path().join("slotd.toml"), text).unwrap();
    };
    write_config(None);
    std::fs::write(dir.path().join("admin.token"), support::TOKEN).unwrap();
    let status = std::process::Command::new(support::slotd_bin())
        .args(["serve", "--config", "slotd.toml", "--daemon"])
        .current_dir(dir.path())
        .env("SLOTD_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let daemon = Daemon {
        pid_file: dir.path().join("slotd.pid"),
    };
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{admin}{path}");
    eventually(Duration::from_secs(10), "the daemon's admin API", || {
        let req = http.get(url("/healthz")).send();
        async move { req.await.ok().filter(|r| r.status() == 200) }
    })
    .await;
    assert!(daemon.pid().is_some(), "no pid file");

    write_config(Some("www.shop.test"));
    let resp = http
        .post(url("/v1/reload"))
        .bearer_auth(support::TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let served = http
        .get(format!("http://{proxy}/"))
        .header("host", "www.shop.test")
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
}
