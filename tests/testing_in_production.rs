//! Testing in production through the real binary: routing rules split new
//! production visitors by percent and pin them with the `x-slot-routing-name`
//! cookie; the query parameter opts in (or out, with `self`); 0 % means opt-in only;
//! `--reset-pins` unpins everyone; rules survive a restart; bad rules are refused.

mod support;

use serde_json::{json, Value};
use support::blue_green;

/// GET / on production with optional cookie and query; (upstream, Set-Cookie).
async fn visit(
    http: &reqwest::Client,
    proxy: std::net::SocketAddr,
    query: &str,
    cookie: Option<&str>,
) -> (String, Option<String>) {
    let mut req = http
        .get(format!("http://{proxy}/{query}"))
        .header("host", "shop.test");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let set = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    let who = resp.headers()["x-upstream"].to_str().unwrap().to_string();
    (who, set)
}

/// The `name=value` part of a Set-Cookie.
fn pin(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_of_new_visitors_goes_to_the_slot_and_stays_pinned() {
    let (_blue, _green, mut slotd) = blue_green("").await;
    let (status, body) = slotd
        .admin(
            "PUT",
            "/v1/apps/shop/routing",
            Some(json!({"rules": [{"slot": "staging", "percent": 20}]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // 4,000 new visitors: about 20 % to staging, each told its pin.
    let n = 4000;
    let mut green = 0;
    let mut green_pin = None;
    let mut blue_pin = None;
    for _ in 0..n {
        let (who, set) = visit(&http, slotd.proxy, "", None).await;
        let set = pin(&set.expect("a new visitor gets a pin"));
        if who == "green-1" {
            green += 1;
            assert_eq!(set, "x-slot-routing-name=staging:0");
            green_pin = Some(set);
        } else {
            assert_eq!(set, "x-slot-routing-name=self:0");
            blue_pin = Some(set);
        }
    }
    let share = f64::from(green) / f64::from(n);
    eprintln!(
        "split: {green} of {n} new visitors to staging ({:.2} %, rule 20 %)",
        share * 100.0
    );
    assert!((0.17..=0.23).contains(&share), "share {share}");

    // Pinned visitors never flap, and are not told again.
    let (green_pin, blue_pin) = (green_pin.unwrap(), blue_pin.unwrap());
    for _ in 0..50 {
        assert_eq!(
            visit(&http, slotd.proxy, "", Some(&green_pin)).await,
            ("green-1".into(), None)
        );
        assert_eq!(
            visit(
                &http,
                slotd.proxy,
                "",
                Some(&format!("a=b; {blue_pin}; c=d"))
            )
            .await,
            ("blue-1".into(), None)
        );
    }

    // Rules live in the state: they survive a restart.
    slotd.restart().await;
    let (_, app) = slotd.admin("GET", "/v1/apps/shop", None).await;
    assert_eq!(
        app["routing"]["rules"],
        json!([{"slot": "staging", "percent": 20}])
    );
    assert_eq!(
        visit(&http, slotd.proxy, "", Some(&green_pin)).await.0,
        "green-1"
    );
    // Other hostnames are not split.
    assert_eq!(slotd.who_serves("staging.shop.test").await, "green-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_percent_is_opt_in_and_reset_pins_unpins_everyone() {
    let (_blue, _green, slotd) = blue_green("").await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (code, out, err) = slotd.cli(&[
        "route",
        "--app",
        "shop",
        "--slot",
        "staging",
        "--percent",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("staging") && out.contains("0%"), "{out}");

    for _ in 0..300 {
        assert_eq!(visit(&http, slotd.proxy, "", None).await.0, "blue-1");
    }
    // Opting in with the query parameter sets the pin; `self` opts out.
    let (who, set) = visit(&http, slotd.proxy, "?x-slot-routing-name=staging", None).await;
    assert_eq!(who, "green-1");
    let staging_pin = pin(&set.unwrap());
    assert_eq!(staging_pin, "x-slot-routing-name=staging:0");
    assert_eq!(
        visit(&http, slotd.proxy, "", Some(&staging_pin)).await.0,
        "green-1"
    );
    let (who, set) = visit(
        &http,
        slotd.proxy,
        "?a=1&x-slot-routing-name=self",
        Some(&staging_pin),
    )
    .await;
    assert_eq!(who, "blue-1");
    assert_eq!(pin(&set.unwrap()), "x-slot-routing-name=self:0");
    // A slot without a rule cannot be opted into.
    let (who, _) = visit(&http, slotd.proxy, "?x-slot-routing-name=nope", None).await;
    assert_eq!(who, "blue-1");

    // 100 % and then a reset: the old pins stop counting.
    let (code, _, err) = slotd.cli(&[
        "route",
        "--app",
        "shop",
        "--slot",
        "staging",
        "--percent",
        "100",
    ]);
    assert_eq!(code, 0, "{err}");
    let (who, set) = visit(&http, slotd.proxy, "", Some("x-slot-routing-name=self:0")).await;
    assert_eq!(
        (who.as_str(), set),
        ("blue-1", None),
        "a pinned visitor stays"
    );
    let (code, out, err) = slotd.cli(&[
        "route",
        "--app",
        "shop",
        "--slot",
        "staging",
        "--percent",
        "0",
        "--reset-pins",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pin generation 1"), "{out}");
    let (who, set) = visit(&http, slotd.proxy, "", Some(&staging_pin)).await;
    assert_eq!(who, "blue-1", "the old staging pin is ignored");
    assert_eq!(pin(&set.unwrap()), "x-slot-routing-name=self:1");

    // Removing the rule: a current pin to it falls back to production.
    let (_, set) = visit(&http, slotd.proxy, "?x-slot-routing-name=staging", None).await;
    let new_pin = pin(&set.unwrap());
    assert_eq!(new_pin, "x-slot-routing-name=staging:1");
    let (code, _, err) = slotd.cli(&["route", "--app", "shop", "--slot", "staging", "--remove"]);
    assert_eq!(code, 0, "{err}");
    let (who, set) = visit(&http, slotd.proxy, "", Some(&new_pin)).await;
    assert_eq!(
        (who.as_str(), set),
        ("blue-1", None),
        "no rules: no split, no pins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_are_refused_and_change_nothing() {
    let (_blue, _green, slotd) = blue_green("").await;
    let cases = [
        (
            json!({"rules": [{"slot": "staging", "percent": 101}]}),
            "percent",
        ),
        (
            json!({"rules": [{"slot": "production", "percent": 10}]}),
            "production",
        ),
        (
            json!({"rules": [{"slot": "nope", "percent": 10}]}),
            "no slot `nope`",
        ),
        (
            json!({"rules": [{"slot": "staging", "percent": 10}, {"slot": "staging", "percent": 5}]}),
            "has a rule already",
        ),
        (json!({"rules": "staging"}), "expected an array"),
        (json!({"rule": []}), "rules: missing"),
        (json!({"rules": [{"slot": "staging"}]}), "rules[0]"),
    ];
    for (body, says) in cases {
        let (status, answer) = slotd
            .admin("PUT", "/v1/apps/shop/routing", Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body} -> {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    let (_, app): (u16, Value) = slotd.admin("GET", "/v1/apps/shop", None).await;
    assert_eq!(app["routing"]["rules"], json!([]));

    // A change made against rules that changed meanwhile is refused (409), so two
    // `slotd route` at once cannot drop each other's rule.
    let ten = json!([{"slot": "staging", "percent": 10}]);
    let (status, _) = slotd
        .admin(
            "PUT",
            "/v1/apps/shop/routing",
            Some(json!({"rules": ten, "expected_rules": []})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, answer) = slotd
        .admin(
            "PUT",
            "/v1/apps/shop/routing",
            Some(json!({"rules": [], "expected_rules": []})),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("changed since they were read"));
    let (_, app): (u16, Value) = slotd.admin("GET", "/v1/apps/shop", None).await;
    assert_eq!(app["routing"]["rules"], ten);
    // The CLI reads, then sends with what it read.
    let admin = format!("http://{}", slotd.admin);
    let (code, out, err) = support::run_cli(
        &["route", "--app", "shop", "--slot", "staging", "--remove"],
        Some(&admin),
        Some(support::TOKEN),
    );
    assert_eq!(code, 0, "{out}{err}");
    let (_, app): (u16, Value) = slotd.admin("GET", "/v1/apps/shop", None).await;
    assert_eq!(app["routing"]["rules"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_comes_with_the_final_answer_not_a_100_continue() {
    let (_blue, _green, slotd) = blue_green("").await;
    let (status, _) = slotd
        .admin(
            "PUT",
            "/v1/apps/shop/routing",
            Some(json!({"rules": [{"slot": "staging", "percent": 100}]})),
        )
        .await;
    assert_eq!(status, 200);
    let resp = support::raw::exchange(
        &slotd.proxy.to_string(),
        &[b"POST /echo HTTP/1.1\r\nHost: shop.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"],
        std::time::Duration::ZERO,
        std::time::Duration::from_secs(5),
    )
    .await;
    let text = resp.text.to_ascii_lowercase();
    let last_head = text.rsplit("http/1.1 ").next().unwrap();
    assert!(last_head.starts_with("200"), "{text}");
    assert!(
        last_head.contains("set-cookie: x-slot-routing-name=staging:0"),
        "{text}"
    );
}
