//! Hostile and broken clients, byte by byte over raw TCP, through the real binary:
//! request smuggling shapes (400, connection closed, nothing reaches the upstream),
//! size limits (431, 414, 413), `Upgrade: h2c`, pipelined bytes after an `Upgrade`,
//! heads split across writes, slowloris heads, idle keep-alive, slow bodies and slow
//! readers.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::raw::{exchange, ok, read_all, Reply, ScriptedUpstream};
use support::{eventually, metric_value, Slotd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);

/// `shop` in front of one scripted upstream answering `ok` to everything but
/// `/hang` (never answered), with `max_body_size = 1KiB` and tight client limits.
async fn setup() -> (ScriptedUpstream, Slotd) {
    let up = ScriptedUpstream::start(|s| {
        if s.path == "/hang" {
            Reply::Hang
        } else {
            ok("fine")
        }
    })
    .await;
    let slotd = Slotd::start_with_proxy(
        r#"max_header_size = "4KiB"
max_headers = 20
max_uri_length = 512
header_timeout = "1s"
keepalive_timeout = "1s"
body_timeout = "500ms"
send_timeout = "500ms""#,
        &support::shop_app(
            std::slice::from_ref(&up.address),
            &[],
            "[app.limits]\nmax_body_size = \"1KiB\"",
        ),
    )
    .await;
    (up, slotd)
}

/// Sends `raw` in one write; asserts the answer is `status`, the connection is
/// closed, and the upstream saw no request.
async fn refused(slotd: &Slotd, up: &ScriptedUpstream, raw: &str, status: u16) {
    let before = up.seen().len();
    let resp = exchange(
        &slotd.proxy.to_string(),
        &[raw.as_bytes()],
        Duration::ZERO,
        WAIT,
    )
    .await;
    assert_eq!(resp.status(), Some(status), "{raw:?} got {resp:?}");
    assert!(resp.closed, "connection left open after {raw:?}: {resp:?}");
    assert_eq!(resp.responses(), 1, "{resp:?}");
    assert_eq!(up.seen().len(), before, "{raw:?} reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_get_400_close_the_connection_and_never_reach_the_upstream() {
    let (up, slotd) = setup().await;
    let cases = [
        // CL.TE and TE.CL
        "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        // repeated or invalid Content-Length
        "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3, 3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: +3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: abc\r\n\r\n",
        // transfer codings
        "POST / HTTP/1.0\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // obsolete line folding, bare LF
        "GET / HTTP/1.1\r\nHost: shop.test\r\nX-A: 1\r\n  folded\r\n\r\n",
        "GET / HTTP/1.1\nHost: shop.test\n\n",
        "GET / HTTP/1.1\r\nHost: shop.test\nX-A: 1\r\n\r\n",
    ];
    for raw in cases {
        refused(&slotd, &up, raw, 400).await;
    }
    // After all that, an ordinary request still works.
    let resp = exchange(
        &slotd.proxy.to_string(),
        &[b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"],
        Duration::ZERO,
        WAIT,
    )
    .await;
    assert_eq!(resp.status(), Some(200), "{resp:?}");
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_uris_and_bodies_get_431_414_and_413() {
    let (up, slotd) = setup().await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: shop.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(5000)
    );
    refused(&slotd, &up, &big, 431).await;
    let many: String = (0..25).map(|i| format!("X-H{i}: v\r\n")).collect();
    refused(
        &slotd,
        &up,
        &format!("GET / HTTP/1.1\r\nHost: shop.test\r\n{many}\r\n"),
        431,
    )
    .await;
    refused(
        &slotd,
        &up,
        &format!(
            "GET /{} HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            "u".repeat(600)
        ),
        414,
    )
    .await;
    refused(
        &slotd,
        &up,
        "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 2048\r\n\r\n",
        413,
    )
    .await;
    // A chunked body has no declared length: it is cut once it passes the limit
    // (sent to a path the upstream never answers, so only the proxy can answer).
    let chunk = format!("800\r\n{}\r\n", "b".repeat(0x800));
    let resp = exchange(
        &slotd.proxy.to_string(),
        &[
            b"POST /hang HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n",
            chunk.as_bytes(),
        ],
        Duration::ZERO,
        WAIT,
    )
    .await;
    assert!(resp.closed, "{resp:?}");
    assert_eq!(resp.status(), Some(413), "{resp:?}");
    // Within the limits everything passes.
    let body = "c".repeat(1024);
    let resp = exchange(
        &slotd.proxy.to_string(),
        &[format!(
            "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{body}"
        )
        .as_bytes()],
        Duration::ZERO,
        WAIT,
    )
    .await;
    assert_eq!(resp.status(), Some(200), "{resp:?}");
    assert!(up.seen().iter().any(|s| s.body_len == 1024));
    let text = slotd.metrics().await;
    for (status, n) in [(431, 2), (414, 1), (413, 2)] {
        let series = format!(r#"slotd_rejected_requests_total{{status="{status}"}}"#);
        assert_eq!(metric_value(&text, &series), n, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_split_across_writes_is_read_whole_and_still_screened() {
    let (up, slotd) = setup().await;
    let addr = slotd.proxy.to_string();
    let gap = Duration::from_millis(50);
    let resp = exchange(
        &addr,
        &[
            b"GET /split HTTP/1.1\r\nHo",
            b"st: shop.test\r\nConnection: cl",
            b"ose\r\n\r\n",
        ],
        gap,
        WAIT,
    )
    .await;
    assert_eq!(resp.status(), Some(200), "{resp:?}");
    assert_eq!(
        up.seen().last().map(|s| s.path.clone()).as_deref(),
        Some("/split")
    );
    // A stray CRLF after a body (old clients send one) is an empty line before the
    // next request line, which is ignored.
    let resp = exchange(
        &addr,
        &[b"POST /form HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\n\r\nhello\r\nGET /next HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"],
        Duration::ZERO,
        WAIT,
    )
    .await;
    assert_eq!(resp.responses(), 2, "{resp:?}");
    assert!(!resp.text.contains(" 400 "), "{resp:?}");
    let paths: Vec<String> = up
        .seen()
        .iter()
        .rev()
        .take(2)
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(paths, ["/next", "/form"]);
    // The smuggling shape split right between the two framing headers.
    let before = up.seen().len();
    let resp = exchange(
        &addr,
        &[
            b"POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\n",
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ],
        gap,
        WAIT,
    )
    .await;
    assert_eq!(resp.status(), Some(400), "{resp:?}");
    assert!(resp.closed);
    assert_eq!(up.seen().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_h2c_is_never_forwarded() {
    let (up, slotd) = setup().await;
    let resp = exchange(
        &slotd.proxy.to_string(),
        &[b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"],
        Duration::ZERO,
        Duration::from_secs(2),
    )
    .await;
    // Answered over HTTP/1.1 as an ordinary request, not switched.
    assert_eq!(resp.status(), Some(200), "{resp:?}");
    let head = &up.seen()[0].head.to_ascii_lowercase();
    assert!(!head.contains("upgrade"), "{head}");
    assert!(!head.contains("http2-settings"), "{head}");
}

const WS_UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

const REFUSAL: &[u8] = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno";

/// `shop` in front of an upstream that refuses every upgrade (403) after `delay`
/// (none: at once, keeping the connection) and answers anything else with 200.
async fn upgrade_refusing_setup(delay: Option<Duration>) -> (ScriptedUpstream, Slotd) {
    let up = ScriptedUpstream::start(move |s| match (s.path.as_str(), delay) {
        ("/ws", None) => Reply::Bytes(REFUSAL.to_vec()),
        ("/ws", Some(d)) => Reply::Parts(vec![(d, REFUSAL.to_vec())]),
        _ => ok("fine"),
    })
    .await;
    let slotd = Slotd::start(&support::shop_app(
        std::slice::from_ref(&up.address),
        &[],
        "",
    ))
    .await;
    (up, slotd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pipelined_after_an_upgrade_request_get_400_and_never_reach_the_upstream() {
    let (up, slotd) = upgrade_refusing_setup(None).await;
    // A request smuggled behind an upgrade, as the first request of a connection.
    let smuggled = format!("{WS_UPGRADE}GET /smuggled HTTP/1.1\r\nHost: shop.test\r\n\r\n");
    refused(&slotd, &up, &smuggled, 400).await;
    // Early WebSocket frame bytes count too: the upstream has not agreed yet.
    refused(&slotd, &up, &format!("{WS_UPGRADE}\u{81}\u{1}x"), 400).await;

    // The same behind an ordinary request with a body on the same connection: the
    // first is answered, the upgrade is refused and nothing else reaches the upstream.
    let behind = format!(
        "POST /form HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\n\r\nhello{smuggled}"
    );
    let before = up.seen().len();
    let resp = exchange(
        &slotd.proxy.to_string(),
        &[behind.as_bytes()],
        Duration::ZERO,
        WAIT,
    )
    .await;
    assert_eq!(resp.status(), Some(200), "{resp:?}");
    assert_eq!(resp.responses(), 2, "{resp:?}");
    assert!(resp.text.contains("HTTP/1.1 400"), "{resp:?}");
    assert!(resp.closed, "{resp:?}");
    let paths: Vec<String> = up.seen()[before..].iter().map(|s| s.path.clone()).collect();
    assert_eq!(paths, ["/form"]);
    assert_eq!(
        metric_value(
            &slotd.metrics().await,
            "slotd_rejected_requests_total{status=\"400\"}"
        ),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_request_with_nothing_after_it_is_forwarded() {
    let (up, slotd) = upgrade_refusing_setup(None).await;
    // Sends `raw` and reads until `n` answers have begun (the connection stays open
    // after a refused upgrade).
    let answers = |raw: String, n: usize| async move {
        let mut stream = tokio::net::TcpStream::connect(slotd.proxy).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut text = String::new();
        while text.matches("HTTP/1.1 ").count() < n {
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
            match read {
                Ok(Ok(k)) if k > 0 => text.push_str(&String::from_utf8_lossy(&chunk[..k])),
                _ => break,
            }
        }
        text
    };
    // Alone, the upstream's refusal comes back (and the connection stays HTTP/1.1).
    let text = answers(WS_UPGRADE.to_string(), 1).await;
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");

    // Pipelined behind an ordinary request, the upgrade is the last thing sent.
    let behind = format!("GET /first HTTP/1.1\r\nHost: shop.test\r\n\r\n{WS_UPGRADE}");
    let text = answers(behind, 2).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("HTTP/1.1 403"), "{text}");

    // A client that half-closes after its request: its FIN is not a byte, so the
    // request is forwarded. (Whether the answer still reaches it is a race with
    // Pingora taking the FIN for an abort.)
    let mut stream = tokio::net::TcpStream::connect(slotd.proxy).await.unwrap();
    stream.write_all(WS_UPGRADE.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let resp = read_all(&mut stream, WAIT).await;
    assert!(
        resp.status() == Some(403) || resp.text.is_empty(),
        "{resp:?}"
    );

    let paths = eventually(WAIT, "the upgrade sent before a FIN is forwarded", || {
        let paths: Vec<String> = up.seen().iter().map(|s| s.path.clone()).collect();
        async move { (paths.len() == 4).then_some(paths) }
    })
    .await;
    assert_eq!(paths, ["/ws", "/first", "/ws", "/ws"]);
    let metrics = slotd.metrics().await;
    let refused =
        support::try_metric_value(&metrics, "slotd_rejected_requests_total{status=\"400\"}");
    assert_eq!(refused.unwrap_or(0), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_after_a_refused_upgrade_was_forwarded_are_never_taken_for_a_request() {
    // The upstream takes its time to refuse, and the client sends more meanwhile: too
    // late to keep the upgrade request from the upstream, but the bytes are refused
    // as they arrive and no request is read from them.
    let (up, slotd) = upgrade_refusing_setup(Some(Duration::from_secs(2))).await;
    let resp = exchange(
        &slotd.proxy.to_string(),
        &[
            WS_UPGRADE.as_bytes(),
            b"GET /smuggled HTTP/1.1\r\nHost: shop.test\r\n\r\n",
        ],
        Duration::from_millis(100),
        WAIT,
    )
    .await;
    assert_eq!(resp.status(), Some(400), "{resp:?}");
    assert_eq!(resp.responses(), 1, "{resp:?}");
    assert!(resp.closed, "{resp:?}");
    // Normally the upgrade was forwarded before the bytes came; on a slow machine the
    // check may already see them and refuse it whole. Never is a request read.
    let paths: Vec<String> = up.seen().iter().map(|s| s.path.clone()).collect();
    assert!(paths.is_empty() || paths == ["/ws"], "{paths:?}");
    // The client's doing: no error line in the log for it.
    let log = slotd.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") && l.contains("Fail to proxy")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_slower_than_the_header_timeout_is_cut_off() {
    let (up, slotd) = setup().await;
    let mut stream = tokio::net::TcpStream::connect(slotd.proxy).await.unwrap();
    let started = Instant::now();
    // One byte every 100 ms: each read is quick, the whole head never arrives in time.
    let head = b"GET / HTTP/1.1\r\nHost: shop.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for b in head.chunks(1) {
        if stream.write_all(b).await.is_err() {
            cut = true;
            break;
        }
        let r = read_all(&mut stream, Duration::from_millis(100)).await;
        if r.closed {
            assert!(r.text.is_empty(), "{r:?}");
            cut = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(cut, "the trickled head was served");
    assert!(took >= Duration::from_millis(900), "cut after {took:?}");
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
    assert!(up.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_after_the_keepalive_timeout() {
    let (_up, slotd) = setup().await;
    let mut stream = tokio::net::TcpStream::connect(slotd.proxy).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let resp = read_all(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(resp.status(), Some(200), "{resp:?}");
    assert!(
        resp.closed,
        "idle connection kept past the keep-alive timeout"
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408() {
    let (up, slotd) = setup().await;
    let resp = exchange(
        &slotd.proxy.to_string(),
        &[b"POST /hang HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 100\r\n\r\nonly part of it"],
        Duration::ZERO,
        WAIT,
    )
    .await;
    assert!(resp.closed, "{resp:?}");
    assert_eq!(resp.status(), Some(408), "{resp:?}");
    assert!(up.seen().iter().all(|s| s.body_len != 100));
    let text = slotd.metrics().await;
    assert_eq!(
        metric_value(&text, r#"slotd_rejected_requests_total{status="408"}"#),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
    const LEN: usize = 64 << 20;
    let up = ScriptedUpstream::start(|_| {
        let mut bytes = format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n").into_bytes();
        bytes.resize(bytes.len() + LEN, b'z');
        Reply::BytesThenClose(bytes)
    })
    .await;
    let slotd = Slotd::start_with_proxy(
        "send_timeout = \"500ms\"",
        &support::shop_app(std::slice::from_ref(&up.address), &[], ""),
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(slotd.proxy).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    // The client reads nothing; the proxy gives up on it and drops the upstream too.
    eventually(
        Duration::from_secs(20),
        "the upstream write to fail",
        || async { (up.write_failures.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;
    let resp = read_all(&mut stream, Duration::from_secs(10)).await;
    assert!(resp.closed);
    assert!(resp.text.len() < LEN, "the whole body arrived");
}
