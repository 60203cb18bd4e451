//! The state store through the real binary: a restart keeps swaps and deploys, a
//! corrupt state file stops `serve` with a clear error and is left untouched.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::{eventually, shop_app, slotd_bin, Slotd, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_swapped_state_and_history() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let purple = Upstream::start("purple-1").await;
    let mut slotd = Slotd::start(&shop_app(&[blue.address()], &[green.address()], "")).await;
    let rec = slotd.swap("staging").await;
    assert_eq!(rec["state"], "completed");
    let (status, _) = slotd
        .admin(
            "PUT",
            "/v1/apps/shop/slots/staging/deployment",
            Some(json!({"version": "v3", "instances": [purple.address()]})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, before) = slotd.admin("GET", "/v1/apps/shop", None).await;

    // A crash (SIGKILL), then the same config, which still names blue for production.
    slotd.restart().await;
    assert_eq!(slotd.who_serves("shop.test").await, "green-1");
    assert_eq!(slotd.who_serves("staging.shop.test").await, "purple-1");
    let (_, after) = slotd.admin("GET", "/v1/apps/shop", None).await;
    assert_eq!(before, after);
    let (_, hist) = slotd.admin("GET", "/v1/apps/shop/swaps", None).await;
    assert_eq!(hist["swaps"][0]["id"], rec["id"]);
    // Ids keep counting after a restart.
    let next = slotd.swap("staging").await;
    assert_ne!(next["id"], rec["id"]);
    assert_eq!(slotd.who_serves("shop.test").await, "purple-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_stops_serve_and_is_not_overwritten() {
    let blue = Upstream::start("blue-1").await;
    let mut slotd = Slotd::start(&shop_app(&[blue.address()], &[], "")).await;
    slotd.kill();
    let garbage = "{\"format\": 1, \"apps\": {\"shop\": [truncated";
    std::fs::write(slotd.state_path(), garbage).unwrap();

    let out = Command::new(slotd_bin())
        .args(["serve", "--config"])
        .arg(slotd.config_path())
        .output()
        .expect("run slotd serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let state_path = slotd.state_path().display().to_string();
    assert!(
        stderr.contains(&state_path),
        "the error names the file: {stderr}"
    );
    assert!(stderr.contains("is not valid slotd state"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(slotd.state_path()).unwrap(),
        garbage
    );
    // Nothing was left listening.
    assert!(std::net::TcpListener::bind(slotd.proxy).is_ok());
    assert!(std::net::TcpListener::bind(slotd.admin).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_slot_missing_from_the_config_is_refused_while_it_holds_a_deployment() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let mut slotd = Slotd::start(&shop_app(&[blue.address()], &[green.address()], "")).await;
    slotd.kill();
    // Drop the staging slot (which holds green) from the config.
    let config = std::fs::read_to_string(slotd.config_path()).unwrap();
    let cut = config.find("[[app.slot]]\nname = \"staging\"").unwrap();
    std::fs::write(slotd.config_path(), &config[..cut]).unwrap();
    let state_before = std::fs::read_to_string(slotd.state_path()).unwrap();

    let out = Command::new(slotd_bin())
        .args(["serve", "--config"])
        .arg(slotd.config_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("slot `staging` is not in the config but holds deployment"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(slotd.state_path()).unwrap(),
        state_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_file_is_written_atomically_as_json() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let slotd = Slotd::start(&shop_app(&[blue.address()], &[green.address()], "")).await;
    slotd.swap("staging").await;
    let path = slotd.state_path();
    let state: serde_json::Value =
        eventually(Duration::from_secs(5), "a readable state file", || {
            let path = path.clone();
            async move { serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok() }
        })
        .await;
    assert_eq!(
        state["apps"]["shop"]["slots"]["production"]["version"],
        "v2"
    );
    assert_eq!(state["apps"]["shop"]["history"][0]["state"], "completed");
    let leftovers: Vec<_> = std::fs::read_dir(slotd.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}
