//! Upstreams that fail in the middle of things, through the real binary, seen by a
//! raw client: an instance killed mid-response (the client never gets an answer that
//! looks complete), malformed response heads (502, the connection is not reused),
//! malformed bodies (the client connection is cut), a slow upstream (waited for while
//! it keeps sending) and the total timeout. A hanging upstream (504) is covered in
//! tests/proxy_behaviour.rs and tests/metrics.rs.

mod support;

use std::time::Duration;

use support::raw::{exchange, ok, RawResponse, Reply, ScriptedUpstream, Seen};
use support::Slotd;

/// Keep-alive GET through the proxy; reads until the proxy closes or `wait` passes.
async fn get(slotd: &Slotd, host: &str, path: &str, wait: Duration) -> RawResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    exchange(
        &slotd.proxy.to_string(),
        &[req.as_bytes()],
        Duration::ZERO,
        wait,
    )
    .await
}

/// GET with `Connection: close`: read until the proxy closes after the answer.
async fn get_once(slotd: &Slotd, host: &str, path: &str) -> RawResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    exchange(
        &slotd.proxy.to_string(),
        &[req.as_bytes()],
        Duration::ZERO,
        LONG,
    )
    .await
}

/// The body after the head of a raw response.
fn body(r: &RawResponse) -> &str {
    r.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn head(status: &str, headers: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\n{headers}\r\n").into_bytes()
}

fn script(s: &Seen) -> Reply {
    let now = Duration::ZERO;
    match s.path.as_str() {
        // killed mid-response
        "/cut-length" => {
            let mut b = head("200 OK", "content-length: 1000\r\n");
            b.extend_from_slice(&[b'x'; 300]);
            Reply::BytesThenClose(b)
        }
        "/cut-chunked" => {
            let mut b = head("200 OK", "transfer-encoding: chunked\r\n");
            b.extend_from_slice(b"5\r\nhello\r\n");
            Reply::BytesThenClose(b)
        }
        "/cut-before" => Reply::Close,
        // malformed heads
        "/two-lengths" => Reply::Bytes(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".to_vec(),
        ),
        "/bad-length" => Reply::Bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 2x\r\n\r\nok".to_vec()),
        "/bad-status" => Reply::Bytes(b"HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\nok".to_vec()),
        "/not-http" => Reply::Bytes(b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec()),
        // malformed bodies
        "/bad-chunk" => Reply::Bytes(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        "/length-and-chunked" => Reply::Bytes(
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ),
        // slow but steady: 4 parts 300 ms apart
        "/steady" => {
            let mut parts = vec![(now, head("200 OK", "content-length: 20\r\n"))];
            for _ in 0..4 {
                parts.push((Duration::from_millis(300), b"slow!".to_vec()));
            }
            Reply::Parts(parts)
        }
        _ => ok("fine"),
    }
}

async fn setup() -> (ScriptedUpstream, Slotd) {
    let up = ScriptedUpstream::start(script).await;
    let addr = up.address.clone();
    let apps = format!(
        "{}\n[[app]]\nname = \"capped\"\n[app.timeouts]\nread = \"500ms\"\ntotal = \"700ms\"\n\
         [app.health]\nmax_failures = 0\n[[app.slot]]\nname = \"production\"\n\
         hosts = [\"capped.test\"]\ninstances = [\"{addr}\"]\nversion = \"v1\"\n",
        support::shop_app(
            std::slice::from_ref(&addr),
            &[],
            "[app.timeouts]\nread = \"500ms\"\n[app.health]\nmax_failures = 0",
        )
    );
    let slotd = Slotd::start(&apps).await;
    (up, slotd)
}

const LONG: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_response_never_yields_an_answer_that_looks_complete() {
    let (_up, slotd) = setup().await;

    let r = get(&slotd, "shop.test", "/cut-length", LONG).await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    assert!(r.closed, "{r:?}");
    assert!(body(&r).len() < 1000, "{} body bytes", body(&r).len());

    let r = get(&slotd, "shop.test", "/cut-chunked", LONG).await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    assert!(r.closed, "{r:?}");
    assert!(
        !r.text.ends_with("0\r\n\r\n"),
        "a last chunk was written: {r:?}"
    );

    let r = get(&slotd, "shop.test", "/cut-before", LONG).await;
    assert_eq!(r.status(), Some(502), "{r:?}");
    assert!(r.closed, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_response_heads_get_502_and_their_connection_is_not_reused() {
    let (up, slotd) = setup().await;
    for path in ["/two-lengths", "/bad-length", "/bad-status", "/not-http"] {
        // A good answer first, so the proxy holds a pooled connection to reuse.
        let r = get_once(&slotd, "shop.test", "/warm").await;
        assert_eq!(r.status(), Some(200), "{r:?}");
        let r = get(&slotd, "shop.test", path, LONG).await;
        assert_eq!(r.status(), Some(502), "{path}: {r:?}");
        let r = get_once(&slotd, "shop.test", "/after").await;
        assert_eq!(r.status(), Some(200), "{r:?}");
        let seen = up.seen();
        let bad = seen
            .iter()
            .rev()
            .find(|s| s.path == path)
            .expect("bad request seen");
        let after = seen.last().expect("after seen");
        assert_eq!(after.path, "/after");
        assert_ne!(
            after.conn, bad.conn,
            "{path}: its connection was used again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_response_bodies_cut_the_client_connection() {
    let (_up, slotd) = setup().await;
    let r = get(&slotd, "shop.test", "/bad-chunk", LONG).await;
    assert!(r.closed, "{r:?}");
    assert!(!r.text.contains("hello"), "{r:?}");
    assert!(!r.text.ends_with("0\r\n\r\n"), "{r:?}");

    // Content-Length with chunked: the length is dropped and the chunked framing
    // used (RFC 9112 §6.3), so what reaches the client is consistently framed.
    let r = get_once(&slotd, "shop.test", "/length-and-chunked").await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    assert!(
        !r.text.to_ascii_lowercase().contains("content-length: 100"),
        "{r:?}"
    );
    assert!(r.text.ends_with("0\r\n\r\n"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_is_waited_for_while_it_keeps_sending_until_the_total_timeout() {
    let (_up, slotd) = setup().await;
    // Every gap (300 ms) is under the read timeout (500 ms): the whole body arrives.
    let r = get_once(&slotd, "shop.test", "/steady").await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    assert_eq!(body(&r), "slow!slow!slow!slow!");
    // The same upstream behind `total = "700ms"`: cut before the end.
    let r = get(&slotd, "capped.test", "/steady", LONG).await;
    assert!(r.closed, "{r:?}");
    assert!(body(&r).len() < 20, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_requests_are_sent_again_after_a_reused_connection_fails() {
    // Every connection answers its first request, then reads the second and closes
    // without answering: the shape of an upstream that closed an idle connection.
    let up = ScriptedUpstream::start(|s| if s.nth == 0 { ok("fine") } else { Reply::Close }).await;
    let slotd = Slotd::start(&support::shop_app(
        std::slice::from_ref(&up.address),
        &[],
        "",
    ))
    .await;
    let send = |raw: &'static str| {
        let addr = slotd.proxy.to_string();
        async move { exchange(&addr, &[raw.as_bytes()], Duration::ZERO, LONG).await }
    };
    let warm = "GET /warm HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n";

    assert_eq!(send(warm).await.status(), Some(200));
    let r = send("POST /pay HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc").await;
    assert_eq!(r.status(), Some(502), "{r:?}");
    let posts = up.seen().iter().filter(|s| s.path == "/pay").count();
    assert_eq!(posts, 1, "a POST that reached the upstream was sent again");

    assert_eq!(send(warm).await.status(), Some(200));
    let r = send("GET /read HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    let reads: Vec<usize> = up
        .seen()
        .iter()
        .filter(|s| s.path == "/read")
        .map(|s| s.nth)
        .collect();
    assert_eq!(
        reads,
        [1, 0],
        "sent on the reused connection, then on a new one"
    );
}
