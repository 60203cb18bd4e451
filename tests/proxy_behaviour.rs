//! Proxy behaviour through the real binary and real upstreams on 127.0.0.1: host
//! matching, the headers added on the way up and down, round-robin, the status codes
//! the proxy makes itself (404, 502, 503, 504), request and response bodies, HTTP/1.1
//! keep-alive, HTTP/2 from clients, and WebSocket upgrades (also across a swap).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::{
    eventually, metric_value, refusing_address, shop_app, Slotd, Upstream, WsUpstream, FAST_WARMUP,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// How long any single network wait in these tests may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);

/// A client that opens a fresh connection for every request. The proxy closes the
/// connection after an error it answers itself without saying so (see
/// `a_proxy_made_error_says_connection_close_when_it_closes_the_connection`), so a
/// pooled connection could be stale and fail the next request.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// GET through the proxy with a Host header, on a fresh connection.
async fn get(slotd: &Slotd, host: &str, path: &str) -> reqwest::Response {
    http()
        .get(format!("http://{}{path}", slotd.proxy))
        .header("host", host)
        .send()
        .await
        .expect("proxy reachable")
}

/// `shop` with one upstream in production and an empty staging slot.
async fn one_instance() -> (Upstream, Slotd) {
    let up = Upstream::start("blue-1").await;
    let slotd = Slotd::start(&shop_app(&[up.address()], &[], "")).await;
    (up, slotd)
}

/// GET `/echo` through the proxy with `host` and extra request headers; returns the
/// upstream's view of the request.
async fn echo(slotd: &Slotd, host: &str, headers: &[(&str, &str)]) -> Value {
    let mut req = http()
        .get(format!("http://{}/echo", slotd.proxy))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("proxy reachable");
    assert_eq!(resp.status(), 200, "GET /echo for {host}");
    resp.json().await.expect("echo JSON")
}

/// All values of a request header as the upstream saw it.
fn seen(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|s| s.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

// === raw HTTP/1 over TCP ===

/// One response read off a raw connection.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for RawResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads more bytes into `buf`; returns how many (0 at end of stream or when the
/// peer reset the connection).
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut tmp = [0u8; 16 * 1024];
    let n = tokio::time::timeout(WAIT, stream.read(&mut tmp))
        .await
        .expect("the proxy answered in time")
        .unwrap_or(0);
    buf.extend_from_slice(&tmp[..n]);
    n
}

/// Reads until `buf` holds `needle`; returns its position, or `None` at end of stream.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> Option<usize> {
    loop {
        if let Some(i) = find(buf, needle) {
            return Some(i);
        }
        if read_more(stream, buf).await == 0 {
            return None;
        }
    }
}

/// Whether the proxy closed the connection (reads end of stream, after any bytes).
async fn closed_by_proxy(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    while read_more(stream, &mut rest).await > 0 {
        assert!(rest.len() < 64 * 1024, "unexpected bytes: {rest:?}");
    }
    rest.is_empty()
}

async fn read_exact_into(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Vec<u8> {
    while buf.len() < n {
        assert!(
            read_more(stream, buf).await > 0,
            "connection closed {} bytes into a {n}-byte body",
            buf.len()
        );
    }
    buf.drain(..n).collect()
}

/// Reads one complete response; bytes after it stay in `buf`. `None` if the
/// connection closed before a response started.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> Option<RawResponse> {
    let end = match read_until(stream, buf, b"\r\n\r\n").await {
        Some(i) => i + 4,
        None => {
            assert!(buf.is_empty(), "connection closed inside a response head");
            return None;
        }
    };
    let head = String::from_utf8(buf.drain(..end).collect()).expect("ASCII response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let mut resp = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if head_request || status == 204 || status == 304 || status < 200 {
        return Some(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        loop {
            let i = read_until(stream, buf, b"\r\n")
                .await
                .expect("chunk size line");
            let line = String::from_utf8(buf.drain(..i + 2).collect()).unwrap();
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            if size == 0 {
                // Trailers, if any, end with an empty line.
                loop {
                    let i = read_until(stream, buf, b"\r\n").await.expect("trailer");
                    buf.drain(..i + 2);
                    if i == 0 {
                        break;
                    }
                }
                break;
            }
            let data = read_exact_into(stream, buf, size + 2).await;
            resp.body.extend_from_slice(&data[..size]);
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().expect("numeric content-length");
        resp.body = read_exact_into(stream, buf, len).await;
    } else {
        while read_more(stream, buf).await > 0 {}
        resp.body = std::mem::take(buf);
    }
    Some(resp)
}

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect to the proxy")
}

/// Sends `request` on a fresh connection and reads one response to the end.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = connect(addr).await;
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    read_response(&mut stream, &mut buf, false)
        .await
        .expect("a response")
}

// === raw upstreams ===

/// A tiny upstream speaking raw TCP: reads each request head, then writes `reply` (or
/// nothing) and closes the connection.
struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start(reply: Option<&'static [u8]>) -> RawUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw upstream");
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    while find(&buf, b"\r\n\r\n").is_none() && buf.len() < 64 * 1024 {
                        match stream.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    if let Some(reply) = reply {
                        let _ = stream.write_all(reply).await;
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        RawUpstream {
            addr,
            connections,
            task,
        }
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }
}

// === host matching ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_match_case_insensitively_ignoring_the_port_and_a_trailing_dot() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let slotd = Slotd::start(&shop_app(&[blue.address()], &[green.address()], "")).await;
    for host in [
        "shop.test",
        "SHOP.TEST",
        "Shop.Test:8080",
        "shop.test.",
        "shop.test.:80",
    ] {
        let resp = slotd.get(host, "/").await;
        assert_eq!(resp.status(), 200, "Host: {host}");
        assert_eq!(header(&resp, "x-slot"), "production", "Host: {host}");
        assert_eq!(header(&resp, "x-upstream"), "blue-1", "Host: {host}");
    }
    for host in ["staging.shop.test", "Staging.SHOP.test:1234"] {
        let resp = slotd.get(host, "/").await;
        assert_eq!(resp.status(), 200, "Host: {host}");
        assert_eq!(header(&resp, "x-slot"), "staging", "Host: {host}");
        assert_eq!(header(&resp, "x-upstream"), "green-1", "Host: {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_gets_a_short_plain_text_404() {
    let (up, slotd) = one_instance().await;
    for host in ["other.test", "shop.test.example", "xshop.test", "127.0.0.1"] {
        let resp = slotd.get(host, "/").await;
        assert_eq!(resp.status(), 404, "Host: {host}");
        assert!(
            header(&resp, "content-type").starts_with("text/plain"),
            "content-type {:?}",
            resp.headers().get("content-type")
        );
        assert!(resp.headers().get("x-slot").is_none(), "no slot matched");
        let body = resp.text().await.unwrap();
        assert!(
            !body.is_empty() && body.len() < 200 && !body.contains('<'),
            "short plain body: {body:?}"
        );
    }
    assert_eq!(up.received.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_host_gets_404() {
    let (up, slotd) = one_instance().await;
    // HTTP/1.0 needs no Host header: nothing can match, so 404. (The request has a
    // header so that it is at least 24 bytes long; see
    // `a_request_shorter_than_the_http2_preface_is_answered`.)
    let resp = raw_exchange(slotd.proxy, b"GET / HTTP/1.0\r\nUser-Agent: t\r\n\r\n").await;
    assert_eq!(resp.status, 404, "{resp:?}");
    assert!(resp
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/plain")));
    // HTTP/1.1 without Host is malformed (RFC 9112 §3.2 allows a 400); slotd applies
    // the contract's "no match" rule: 404.
    let resp = raw_exchange(slotd.proxy, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(resp.status, 404, "HTTP/1.1 without Host: {resp:?}");
    assert_eq!(up.received.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_request_routes_on_its_target_authority() {
    // RFC 9112 §3.2.2: the host of an absolute-form target is the one to use. With
    // HTTP/1.1 Pingora rejects a Host that differs from it, so only a request without
    // Host (HTTP/1.0) shows the difference.
    let (up, slotd) = one_instance().await;
    let resp = raw_exchange(
        slotd.proxy,
        b"GET http://shop.test/ HTTP/1.0\r\nUser-Agent: t\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-slot"), Some("production"));
    assert_eq!(up.received.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_shorter_than_the_http2_preface_is_answered() {
    // slotd tells HTTP/2 from HTTP/1 by the first 4 bytes (src/conn.rs), so a short
    // HTTP/1 request is not left waiting for Pingora's 24-byte preface check.
    let (_up, slotd) = one_instance().await;
    // 18 bytes: a complete HTTP/1.0 request.
    let mut stream = connect(slotd.proxy).await;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let answered = tokio::time::timeout(
        Duration::from_secs(3),
        read_response(&mut stream, &mut buf, false),
    )
    .await;
    let resp = answered
        .expect("an answer within 3 s")
        .expect("an answer, not a closed connection");
    assert_eq!(resp.status, 404);
}

// === headers ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_requests_carry_forwarded_headers_and_the_original_host() {
    let (_up, slotd) = one_instance().await;
    let e = echo(&slotd, "shop.test", &[]).await;
    assert_eq!(seen(&e, "host"), ["shop.test"], "{e}");
    assert_eq!(seen(&e, "x-forwarded-for"), ["127.0.0.1"], "{e}");
    assert_eq!(seen(&e, "x-forwarded-proto"), ["http"], "{e}");
    assert_eq!(seen(&e, "x-forwarded-host"), ["shop.test"], "{e}");
    assert_eq!(seen(&e, "x-slot"), ["production"], "{e}");

    // The Host is passed on as the client wrote it, port and case included.
    let e = echo(&slotd, "Shop.Test:8080", &[]).await;
    assert_eq!(seen(&e, "host"), ["Shop.Test:8080"], "{e}");
    assert_eq!(seen(&e, "x-forwarded-host"), ["Shop.Test:8080"], "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_appends_the_client_ip_and_client_proto_and_host_are_replaced() {
    let (_up, slotd) = one_instance().await;
    let e = echo(
        &slotd,
        "shop.test",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
        ],
    )
    .await;
    assert_eq!(
        seen(&e, "x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"],
        "{e}"
    );
    assert_eq!(seen(&e, "x-forwarded-proto"), ["http"], "{e}");
    assert_eq!(seen(&e, "x-forwarded-host"), ["shop.test"], "{e}");
    // Several X-Forwarded-For lines are one list: none is lost.
    let e = echo(
        &slotd,
        "shop.test",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.2, 192.0.2.1"),
        ],
    )
    .await;
    assert_eq!(
        seen(&e, "x-forwarded-for"),
        ["203.0.113.7, 198.51.100.2, 192.0.2.1, 127.0.0.1"],
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slots_sticky_headers_override_a_client_sent_value() {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let slotd = Slotd::start(&shop_app(&[blue.address()], &[green.address()], "")).await;
    let e = echo(&slotd, "shop.test", &[("x-slot", "staging")]).await;
    assert_eq!(e["upstream"], "blue-1");
    assert_eq!(seen(&e, "x-slot"), ["production"], "{e}");
    let e = echo(&slotd, "staging.shop.test", &[("X-Slot", "production")]).await;
    assert_eq!(e["upstream"], "green-1");
    assert_eq!(seen(&e, "x-slot"), ["staging"], "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_x_slot_replacing_one_the_upstream_sent() {
    let up = RawUpstream::start(Some(
        b"HTTP/1.1 200 OK\r\nx-slot: from-upstream\r\nx-upstream: raw\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    ))
    .await;
    let plain = Upstream::start("green-1").await;
    let slotd = Slotd::start(&shop_app(&[up.address()], &[plain.address()], "")).await;
    let resp = slotd.get("shop.test", "/").await;
    assert_eq!(resp.status(), 200);
    let slots: Vec<_> = resp.headers().get_all("x-slot").iter().collect();
    assert_eq!(slots, ["production"], "exactly one x-slot, the proxy's");
    assert_eq!(header(&resp, "x-upstream"), "raw");
    assert_eq!(resp.text().await.unwrap(), "ok");

    let resp = slotd.get("staging.shop.test", "/").await;
    assert_eq!(header(&resp, "x-slot"), "staging");
}

// === choosing instances ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_spread_round_robin_over_the_pool() {
    let a = Upstream::start("blue-1").await;
    let b = Upstream::start("blue-2").await;
    let slotd = Slotd::start(&shop_app(&[a.address(), b.address()], &[], "")).await;
    const N: usize = 40;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..N {
        *counts
            .entry(slotd.who_serves("shop.test").await)
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 2, "{counts:?}");
    for (who, n) in &counts {
        assert!(
            n.abs_diff(N / 2) <= 1,
            "{who} got {n} of {N} requests: {counts:?}"
        );
    }
    assert_eq!(a.received.load(Ordering::SeqCst), counts["blue-1"]);
    assert_eq!(b.received.load(Ordering::SeqCst), counts["blue-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_is_retried_once_on_another_instance() {
    let alive = Upstream::start("blue-2").await;
    let slotd = Slotd::start(&shop_app(&[refusing_address(), alive.address()], &[], "")).await;
    const N: usize = 20;
    for i in 0..N {
        let resp = slotd.get("shop.test", "/").await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(header(&resp, "x-upstream"), "blue-2");
        assert_eq!(header(&resp, "x-slot"), "production");
    }
    assert_eq!(alive.received.load(Ordering::SeqCst), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_is_retried_only_once() {
    // Two refusing instances before the live one: a request that starts on the first
    // is retried on the second, fails again and gets a 502; the others reach the live
    // instance (directly or after one retry).
    let alive = Upstream::start("blue-3").await;
    let slotd = Slotd::start(&shop_app(
        &[refusing_address(), refusing_address(), alive.address()],
        &[],
        "",
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(&slotd, "shop.test", "/").await.status().as_u16());
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let bad = statuses.iter().filter(|&&s| s == 502).count();
    assert_eq!(ok + bad, statuses.len(), "only 200 or 502: {statuses:?}");
    assert!(ok > 0 && bad > 0, "{statuses:?}");
    assert_eq!(alive.received.load(Ordering::SeqCst), ok);
}

// === status codes the proxy makes ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_slot_answers_503_with_x_slot() {
    let (_up, slotd) = one_instance().await;
    let resp = get(&slotd, "staging.shop.test", "/").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(header(&resp, "x-slot"), "staging");
    assert!(header(&resp, "content-type").starts_with("text/plain"));
    let body = resp.text().await.unwrap();
    assert!(body.contains("no deployment"), "{body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_instances_all_refuse_connections_answers_502() {
    // Passive ejection off: with it, the instances would soon be out and answer 503
    // (tests/health.rs).
    let slotd = Slotd::start(&shop_app(
        &[refusing_address(), refusing_address()],
        &[refusing_address()],
        "[app.health]\nmax_failures = 0",
    ))
    .await;
    for host in ["shop.test", "staging.shop.test"] {
        for _ in 0..4 {
            let resp = get(&slotd, host, "/").await;
            assert_eq!(resp.status(), 502, "Host: {host}");
            assert!(!header(&resp, "x-slot").is_empty(), "x-slot on a 502");
            assert!(header(&resp, "content-type").starts_with("text/plain"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_the_read_timeout_answers_504_in_about_the_timeout() {
    let up = Upstream::start("blue-1").await;
    let slotd = Slotd::start(&shop_app(
        &[up.address()],
        &[],
        "[app.timeouts]\nread = \"300ms\"",
    ))
    .await;
    let start = Instant::now();
    let resp = get(&slotd, "shop.test", "/slow?ms=3000").await;
    let took = start.elapsed();
    assert_eq!(resp.status(), 504);
    assert_eq!(header(&resp, "x-slot"), "production");
    assert!(header(&resp, "content-type").starts_with("text/plain"));
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
        "504 after {took:?} with a 300 ms read timeout"
    );
    // A fast request to the same app is still fine.
    let resp = get(&slotd, "shop.test", "/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-upstream"), "blue-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_timeout_bounds_each_wait_not_a_whole_streaming_response() {
    // 60 chunks 10 ms apart take at least 600 ms in total, longer than the read
    // timeout; no single wait comes close to it.
    let up = Upstream::start("blue-1").await;
    let slotd = Slotd::start(&shop_app(
        &[up.address()],
        &[],
        "[app.timeouts]\nread = \"400ms\"",
    ))
    .await;
    let resp = slotd.get("shop.test", "/stream?chunks=60").await;
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.expect("the whole stream");
    assert_eq!(body.len(), 60 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_closes_the_connection_without_answering_gives_502() {
    let up = RawUpstream::start(None).await;
    let slotd = Slotd::start(&shop_app(&[up.address()], &[], "")).await;
    let resp = get(&slotd, "shop.test", "/").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(header(&resp, "x-slot"), "production");
    assert!(header(&resp, "content-type").starts_with("text/plain"));
    assert!(up.connections.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_made_error_says_connection_close_when_it_closes_the_connection() {
    let slotd = Slotd::start(&shop_app(&[refusing_address()], &[], "")).await;
    for (host, status) in [("shop.test", 502), ("staging.shop.test", 503)] {
        let mut stream = connect(slotd.proxy).await;
        let mut buf = Vec::new();
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let resp = read_response(&mut stream, &mut buf, false).await.unwrap();
        assert_eq!(resp.status, status);
        let says_close = resp
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if says_close {
            assert!(
                closed_by_proxy(&mut stream).await,
                "closed after the answer"
            );
            continue;
        }
        // It said keep-alive: the connection must take another request.
        let sent = stream.write_all(request.as_bytes()).await.is_ok();
        let second = if sent {
            read_response(&mut stream, &mut buf, false).await
        } else {
            None
        };
        assert!(
            second.is_some_and(|r| r.status == status),
            "the {status} answer said keep-alive ({:?}) but the proxy closed the connection",
            resp.header("connection")
        );
    }
}

// === bodies ===

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| b as u64).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_request_body_reaches_the_upstream_intact() {
    let (_up, slotd) = one_instance().await;
    let body = pattern(1024 * 1024);
    let expected_sum = sum(&body);

    // With a Content-Length.
    let resp = http()
        .post(format!("http://{}/echo", slotd.proxy))
        .header("host", "shop.test")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["method"], "POST");
    assert_eq!(e["body_len"], 1024 * 1024, "{e}");
    assert_eq!(e["body_sum"], expected_sum);

    // Chunked, streamed in 64 KiB pieces.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let resp = http()
        .post(format!("http://{}/echo", slotd.proxy))
        .header("host", "shop.test")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(seen(&e, "transfer-encoding"), ["chunked"], "{e}");
    assert_eq!(e["body_len"], 1024 * 1024, "{e}");
    assert_eq!(e["body_sum"], expected_sum);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_streaming_response_arrives_complete_and_as_it_is_produced() {
    let (_up, slotd) = one_instance().await;
    let resp = slotd.get("shop.test", "/stream?chunks=50").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-slot"), "production");
    let mut stream = resp.bytes_stream();
    let mut body = Vec::new();
    let mut first_at = None;
    while let Some(piece) = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("next piece in time")
    {
        let piece = piece.expect("stream piece");
        if !piece.is_empty() && first_at.is_none() {
            first_at = Some(Instant::now());
        }
        body.extend_from_slice(&piece);
    }
    let done_at = Instant::now();
    assert_eq!(body.len(), 50 * 1024);
    for (i, chunk) in body.chunks(1024).enumerate() {
        let expected = b'a' + (i % 26) as u8;
        assert!(chunk.iter().all(|&b| b == expected), "chunk {i} is intact");
    }
    // The upstream sleeps 10 ms before each chunk, so a streamed (not buffered)
    // response starts at least ~490 ms before it ends.
    let spread = done_at - first_at.unwrap();
    assert!(
        spread >= Duration::from_millis(200),
        "the response arrived in one piece ({spread:?} from first to last byte)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_requests_get_the_headers_without_a_body() {
    let (up, slotd) = one_instance().await;
    let resp = http()
        .head(format!("http://{}/", slotd.proxy))
        .header("host", "shop.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-slot"), "production");
    assert_eq!(header(&resp, "x-upstream"), "blue-1");
    assert!(resp.bytes().await.unwrap().is_empty());

    // On a raw connection: no body bytes follow the HEAD answer, so the next
    // response on the same connection parses cleanly.
    let mut stream = connect(slotd.proxy).await;
    let mut buf = Vec::new();
    stream
        .write_all(b"HEAD /echo HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_response(&mut stream, &mut buf, true).await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-slot"), Some("production"));
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let get = read_response(&mut stream, &mut buf, false).await.unwrap();
    assert_eq!(get.status, 200);
    assert_eq!(get.body, b"blue-1");
    assert!(buf.is_empty(), "stray bytes: {buf:?}");
    assert_eq!(up.received.load(Ordering::SeqCst), 3);
}

// === connections and protocols ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_on_one_keep_alive_connection_are_both_answered() {
    let (up, slotd) = one_instance().await;
    let mut stream = connect(slotd.proxy).await;
    let mut buf = Vec::new();
    for i in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            .await
            .unwrap();
        let resp = read_response(&mut stream, &mut buf, false)
            .await
            .unwrap_or_else(|| panic!("connection closed before response {i}"));
        assert_eq!(resp.status, 200, "response {i}");
        assert_eq!(resp.body, b"blue-1", "response {i}");
        assert_eq!(resp.header("x-slot"), Some("production"));
        assert!(
            !resp
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            "response {i} closes the connection: {resp:?}"
        );
    }
    // An unknown host is answered on the same connection, which stays open.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut stream, &mut buf, false).await.unwrap();
    assert_eq!(resp.status, 404);
    // A fourth one with a body, still on the same connection.
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let resp = read_response(&mut stream, &mut buf, false).await.unwrap();
    assert_eq!(resp.status, 200);
    let e: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(e["body_len"], 5);
    assert!(buf.is_empty());
    assert_eq!(up.received.load(Ordering::SeqCst), 3);
}

const PIPELINED: &[u8] =
    b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\nGET /echo HTTP/1.1\r\nHost: shop.test\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_never_get_a_wrong_or_garbled_answer() {
    let (_up, slotd) = one_instance().await;
    let mut stream = connect(slotd.proxy).await;
    stream.write_all(PIPELINED).await.unwrap();
    let mut buf = Vec::new();
    let first = read_response(&mut stream, &mut buf, false)
        .await
        .expect("the first pipelined request is answered");
    assert_eq!(first.status, 200);
    assert_eq!(first.body, b"blue-1");
    // Then either the answer to the second request, or the connection closes (the
    // client then retries, RFC 9112 §9.3.2).
    if let Some(second) = read_response(&mut stream, &mut buf, false).await {
        assert_eq!(second.status, 200);
        let e: Value = serde_json::from_slice(&second.body).expect("the /echo answer");
        assert_eq!(e["method"], "GET");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (up, slotd) = one_instance().await;
    let mut stream = connect(slotd.proxy).await;
    stream.write_all(PIPELINED).await.unwrap();
    let mut buf = Vec::new();
    let first = read_response(&mut stream, &mut buf, false).await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.body, b"blue-1");
    let second = read_response(&mut stream, &mut buf, false)
        .await
        .expect("the second pipelined request is answered, not dropped");
    assert_eq!(second.status, 200);
    let e: Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(e["method"], "GET");
    assert_eq!(up.received.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_with_prior_knowledge_are_served() {
    let (_up, slotd) = one_instance().await;
    // HTTP/2 has no Host header: the proxy routes on :authority, taken from the URL.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .http2_prior_knowledge()
        .resolve("shop.test", slotd.proxy)
        .build()
        .unwrap();
    let port = slotd.proxy.port();
    let resp = h2
        .get(format!("http://shop.test:{port}/"))
        .send()
        .await
        .expect("h2c through the proxy");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-slot"), "production");
    assert_eq!(header(&resp, "x-upstream"), "blue-1");
    assert_eq!(resp.text().await.unwrap(), "blue-1");

    // A body and the forwarded headers, over HTTP/2 downstream and HTTP/1.1 upstream.
    let body = pattern(200 * 1024);
    let resp = h2
        .post(format!("http://shop.test:{port}/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["body_len"], body.len(), "{e}");
    assert_eq!(e["body_sum"], sum(&body));
    assert_eq!(seen(&e, "host"), [format!("shop.test:{port}")], "{e}");
    assert_eq!(
        seen(&e, "x-forwarded-host"),
        [format!("shop.test:{port}")],
        "{e}"
    );
    assert_eq!(seen(&e, "x-forwarded-proto"), ["http"], "{e}");
    assert_eq!(seen(&e, "x-slot"), ["production"], "{e}");

    // Unknown authority: 404, as over HTTP/1.
    let other = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .http2_prior_knowledge()
        .resolve("other.test", slotd.proxy)
        .build()
        .unwrap();
    let resp = other
        .get(format!("http://other.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

// === WebSocket ===

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket through the proxy for `host`; checks the 101 carries x-slot.
async fn ws_connect(proxy: SocketAddr, host: &'static str, slot: &str) -> Ws {
    let mut req = format!("ws://{proxy}/chat").into_client_request().unwrap();
    req.headers_mut()
        .insert("host", HeaderValue::from_static(host));
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("WebSocket handshake in time")
        .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers().get("x-slot").and_then(|v| v.to_str().ok()),
        Some(slot)
    );
    ws
}

/// The next text message; `None` if the WebSocket ended instead.
async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a WebSocket message in time");
        match msg {
            Some(Ok(m)) if m.is_text() => return Some(m.into_text().unwrap().to_string()),
            Some(Ok(m)) if m.is_close() => return None,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Sends `text` and returns the text answer.
async fn ws_round_trip(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.expect("send");
    next_text(ws).await.expect("an answer on an open WebSocket")
}

/// Opens a WebSocket through the proxy and sends `first` over it; returns the socket
/// and the answer. Pingora 0.9.1 sometimes tears an upgrade down right after the
/// 101 (cloudflare/pingora#946; `every_websocket_upgrade_stays_open`), so the
/// handshake is tried a few times: what these tests check starts once one is up.
async fn ws_open(proxy: SocketAddr, host: &'static str, slot: &str, first: &str) -> (Ws, String) {
    for _ in 0..5 {
        let mut ws = ws_connect(proxy, host, slot).await;
        if ws.send(Message::text(first)).await.is_err() {
            continue;
        }
        if let Some(answer) = next_text(&mut ws).await {
            return (ws, answer);
        }
    }
    panic!("5 WebSocket upgrades through the proxy in a row were torn down after the 101");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_through_to_the_slot() {
    let a = WsUpstream::start("ws-a").await;
    let b = WsUpstream::start("ws-b").await;
    let slotd = Slotd::start(&shop_app(&[a.addr.to_string()], &[b.addr.to_string()], "")).await;
    let (mut ws, answer) = ws_open(slotd.proxy, "shop.test", "production", "hello").await;
    assert_eq!(answer, "ws-a: hello");
    assert_eq!(ws_round_trip(&mut ws, "again").await, "ws-a: again");
    let (mut staging, answer) = ws_open(slotd.proxy, "staging.shop.test", "staging", "hi").await;
    assert_eq!(answer, "ws-b: hi");
    assert_eq!(ws_round_trip(&mut ws, "third").await, "ws-a: third");
    let _ = ws.close(None).await;
    let _ = staging.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limits_do_not_apply_to_an_upgraded_websocket() {
    // A 1 KiB body limit and a 1 s total timeout are for requests: a WebSocket
    // carries more and lives longer, and its instance is not taken for failing.
    let a = WsUpstream::start("ws-a").await;
    let slotd = Slotd::start(&shop_app(
        &[a.addr.to_string()],
        &[],
        "[app.limits]\nmax_body_size = \"1KiB\"\n[app.timeouts]\ntotal = \"1s\"\nread = \"10s\"",
    ))
    .await;
    let (mut ws, answer) = ws_open(slotd.proxy, "shop.test", "production", "hello").await;
    assert_eq!(answer, "ws-a: hello");
    let big = "x".repeat(600);
    for _ in 0..3 {
        assert_eq!(ws_round_trip(&mut ws, &big).await, format!("ws-a: {big}"));
    }
    // Past `total`, idle meanwhile (the upstream read timeout is `read` here).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ws_round_trip(&mut ws, "later").await, "ws-a: later");
    let _ = ws.close(None).await;
    let metrics = slotd.metrics().await;
    let refused =
        support::try_metric_value(&metrics, "slotd_rejected_requests_total{status=\"413\"}");
    assert_eq!(refused.unwrap_or(0), 0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_websocket_survives_a_swap() {
    let a = WsUpstream::start("ws-a").await;
    let b = WsUpstream::start("ws-b").await;
    let slotd = Slotd::start(&shop_app(
        &[a.addr.to_string()],
        &[b.addr.to_string()],
        FAST_WARMUP,
    ))
    .await;
    let (mut old, answer) = ws_open(slotd.proxy, "shop.test", "production", "before").await;
    assert_eq!(answer, "ws-a: before");

    let rec = slotd.swap("staging").await;
    assert_eq!(rec["state"], "completed", "{rec}");

    // The connection opened before the swap still talks to A.
    assert_eq!(ws_round_trip(&mut old, "after").await, "ws-a: after");
    // New connections to production go to B. The swap has returned, so the new table
    // is published; poll briefly anyway rather than assume.
    let mut new = eventually(WAIT, "a new WebSocket served by B", || async {
        let (mut ws, answer) = ws_open(slotd.proxy, "shop.test", "production", "new").await;
        if answer == "ws-b: new" {
            Some(ws)
        } else {
            let _ = ws.close(None).await;
            None
        }
    })
    .await;
    assert_eq!(ws_round_trip(&mut new, "again").await, "ws-b: again");
    // And the old one still works after the new one was opened.
    assert_eq!(ws_round_trip(&mut old, "still").await, "ws-a: still");
    let _ = old.close(None).await;
    let _ = new.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_on_a_swapped_out_pool_is_closed_after_the_drain_timeout() {
    let a = WsUpstream::start("ws-a").await;
    let b = WsUpstream::start("ws-b").await;
    let slotd = Slotd::start(&shop_app(
        &[a.addr.to_string()],
        &[b.addr.to_string()],
        &format!("drain_timeout = \"2s\"\n{FAST_WARMUP}"),
    ))
    .await;
    let (mut old, answer) = ws_open(slotd.proxy, "shop.test", "production", "before").await;
    assert_eq!(answer, "ws-a: before");
    let generation_before = metric_value(&slotd.metrics().await, "slotd_routing_generation");

    let rec = slotd.swap("staging").await;
    assert_eq!(rec["state"], "completed", "{rec}");
    let swapped = Instant::now();
    // Still served by A during the drain, and counted.
    assert_eq!(ws_round_trip(&mut old, "after").await, "ws-a: after");
    let text = slotd.metrics().await;
    assert_eq!(
        metric_value(&text, r#"slotd_draining_connections{app="shop"}"#),
        1,
        "{text}"
    );
    let old_generation =
        format!(r#"slotd_generation_requests{{generation="{generation_before}"}}"#);
    assert!(metric_value(&text, &old_generation) >= 1, "{text}");
    let (mut new, answer) = eventually(WAIT, "a new WebSocket on B", || async {
        let (ws, answer) = ws_open(slotd.proxy, "shop.test", "production", "new").await;
        (answer == "ws-b: new").then_some((ws, answer))
    })
    .await;
    assert_eq!(answer, "ws-b: new");

    // After the drain timeout the old one is closed; the new one is not.
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match old.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(m)) if m.is_close() => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the old WebSocket stayed open");
    assert!(
        swapped.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}",
        swapped.elapsed()
    );
    assert_eq!(ws_round_trip(&mut new, "still").await, "ws-b: still");
    eventually(WAIT, "the drain gauge back to 0", || async {
        let text = slotd.metrics().await;
        (metric_value(&text, r#"slotd_draining_connections{app="shop"}"#) == 0).then_some(())
    })
    .await;
    assert!(slotd.log().contains("its drain time is over"));
    let _ = new.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known Pingora 0.9.1 bug cloudflare/pingora#946: ~1-2% of WebSocket upgrades are torn down right after the 101; run with --ignored after a Pingora upgrade"]
async fn every_websocket_upgrade_stays_open() {
    let a = WsUpstream::start("ws-a").await;
    let slotd = Slotd::start(&shop_app(&[a.addr.to_string()], &[], "")).await;
    let mut torn_down = 0;
    for i in 0..200 {
        let mut ws = ws_connect(slotd.proxy, "shop.test", "production").await;
        let text = format!("m{i}");
        let answer = match ws.send(Message::text(text.clone())).await {
            Ok(()) => next_text(&mut ws).await,
            Err(_) => None,
        };
        match answer {
            Some(answer) => assert_eq!(answer, format!("ws-a: {text}")),
            None => torn_down += 1,
        }
    }
    assert_eq!(
        torn_down, 0,
        "of 200 WebSocket upgrades, {torn_down} were torn down after the 101"
    );
}
