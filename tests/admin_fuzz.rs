//! The admin API against hostile input, through the real binary: every route with
//! thousands of random and malformed bodies and paths (never a 5xx but 503, never a
//! panic, the server keeps answering), and its connection limits: a slow head is cut
//! off, a slow body gets 408.

mod support;

use std::time::{Duration, Instant};

use support::raw::{exchange, read_all};
use support::{Slotd, Upstream, TOKEN};
use tokio::io::AsyncWriteExt;

/// A small deterministic generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// A JSON-ish value: often valid JSON of the wrong shape, sometimes not JSON at all.
fn value(rng: &mut Rng, depth: usize) -> String {
    match rng.below(if depth > 3 { 6 } else { 9 }) {
        0 => "null".into(),
        1 => rng.pick(&["true", "false"]).into(),
        2 => rng
            .pick(&["0", "-1", "1e309", "18446744073709551616", "3.5", "-0"])
            .into(),
        3 => format!(
            "\"{}\"",
            rng.pick(&[
                "",
                "staging",
                "production",
                "v2",
                "127.0.0.1:1",
                "../../etc",
                "x y",
                "\\u0000",
                "ü🙂",
                "a\\\"b"
            ])
        ),
        4 => format!("\"{}\"", "s".repeat(rng.below(3000))),
        5 => rng
            .pick(&["{", "[", "\"", "}", "nul", "{\"a\":}", ",", ""])
            .into(),
        6 => {
            let n = rng.below(4);
            let items: Vec<String> = (0..n).map(|_| value(rng, depth + 1)).collect();
            format!("[{}]", items.join(","))
        }
        _ => {
            let keys = [
                "source",
                "target",
                "preview",
                "dry_run",
                "version",
                "instances",
                "rules",
                "slot",
                "percent",
                "",
            ];
            let n = rng.below(5);
            let fields: Vec<String> = (0..n)
                .map(|_| format!("\"{}\":{}", rng.pick(&keys), value(rng, depth + 1)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
    }
}

fn body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0 => Vec::new(),
        1 => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
        2 => format!("{}{}", "[".repeat(200 + rng.below(2000)), "]".repeat(10)).into_bytes(),
        3 => {
            let mut v = value(rng, 0).into_bytes();
            v.truncate(rng.below(v.len() + 1));
            v
        }
        _ => value(rng, 0).into_bytes(),
    }
}

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/apps"),
    ("GET", "/v1/apps/{app}"),
    ("PUT", "/v1/apps/{app}/slots/{slot}/deployment"),
    ("POST", "/v1/apps/{app}/swap"),
    ("POST", "/v1/apps/{app}/swap/complete"),
    ("POST", "/v1/apps/{app}/swap/cancel"),
    ("POST", "/v1/apps/{app}/rollback"),
    ("GET", "/v1/apps/{app}/swaps"),
    ("POST", "/v1/reload"),
    ("GET", "/v1/apps/{app}/slots/{slot}/settings"),
    ("PUT", "/v1/apps/{app}/routing"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_malformed_requests_to_every_route_never_get_a_5xx() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let slotd = Slotd::start(&support::shop_app(
        &[blue.address()],
        &[green.address()],
        support::FAST_WARMUP,
    ))
    .await;
    let http = reqwest::Client::new();
    let mut rng = Rng(0x5107_d5eed);
    let apps = [
        "shop",
        "nope",
        "SHOP",
        "%2e%2e",
        "a%00b",
        "x".repeat(300).leak(),
    ];
    let slots = ["staging", "production", "missing", "%ff", ""];
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH"];
    let mut by_status = std::collections::BTreeMap::new();
    let started = Instant::now();
    for i in 0..1500 {
        let (method, template) = ROUTES[i % ROUTES.len()];
        let method = if rng.below(8) == 0 {
            rng.pick(&methods)
        } else {
            method
        };
        let path = template
            .replace(
                "{app}",
                if rng.below(3) == 0 {
                    rng.pick(&apps)
                } else {
                    "shop"
                },
            )
            .replace("{slot}", rng.pick(&slots));
        let payload = body(&mut rng);
        let mut req = http
            .request(
                method.parse().unwrap(),
                format!("http://{}{path}", slotd.admin),
            )
            .body(payload.clone());
        if rng.below(10) != 0 {
            req = req.bearer_auth(TOKEN);
        }
        if rng.below(4) != 0 {
            req = req.header("content-type", "application/json");
        }
        let resp = req.send().await.unwrap_or_else(|e| {
            panic!(
                "{method} {path} with {:?}: no answer: {e}\n{}",
                String::from_utf8_lossy(&payload),
                slotd.log()
            )
        });
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        assert!(
            status < 500 || status == 503,
            "{method} {path} with {:?} got {status}: {text}",
            String::from_utf8_lossy(&payload)
        );
        if status >= 400 && path.starts_with("/v1") {
            let json: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{method} {path}: error not JSON: {text}"));
            assert!(json["error"]["message"].is_string(), "{text}");
        }
        *by_status.entry(status).or_insert(0) += 1;
    }
    eprintln!(
        "admin fuzz: 1500 requests in {:?}, by status {by_status:?}",
        started.elapsed()
    );
    // Still serving, state intact and consistent.
    let (status, _) = slotd.admin("GET", "/v1/apps/shop", None).await;
    assert_eq!(status, 200);
    assert!(!slotd.log().contains("panicked"), "{}", slotd.log());
    let resp = slotd.get("shop.test", "/").await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_admin_clients_are_cut_off() {
    let blue = Upstream::start("blue-1").await;
    let slotd = Slotd::start(&support::shop_app(&[blue.address()], &[], "")).await;
    let admin = slotd.admin.to_string();

    // A body that stops arriving: 408 after the body timeout (10 s).
    let started = Instant::now();
    let head = format!(
        "POST /v1/apps/shop/swap HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"source\""
    );
    let resp = exchange(
        &admin,
        &[head.as_bytes()],
        Duration::ZERO,
        Duration::from_secs(30),
    )
    .await;
    assert!(resp.text.starts_with("HTTP/1.1 408"), "{resp:?}");
    assert!(resp.text.contains("body_timeout"), "{resp:?}");
    assert!(started.elapsed() >= Duration::from_secs(9));

    // A head that never completes: the connection is closed after the header
    // timeout (10 s), with a 408 or nothing.
    let mut stream = tokio::net::TcpStream::connect(&admin).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let started = Instant::now();
    let resp = read_all(&mut stream, Duration::from_secs(30)).await;
    assert!(resp.closed, "{resp:?}");
    assert!(!resp.text.contains("200 OK"), "{resp:?}");
    assert!(started.elapsed() >= Duration::from_secs(9));

    // A head over 16 KiB is refused.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    let resp = exchange(
        &admin,
        &[big.as_bytes()],
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .await;
    assert!(resp.closed, "{resp:?}");
    assert!(!resp.text.contains("200 OK"), "{resp:?}");
}
