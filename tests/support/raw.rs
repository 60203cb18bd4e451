//! Byte-level test peers: a scripted raw-TCP upstream that answers each request with
//! exactly the bytes a test chooses (malformed responses, cut bodies, hangs), and a
//! raw client that sends exact bytes and reads whatever comes back until the proxy
//! closes the connection or a deadline passes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the scripted upstream read it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Connection number, from 0, in accept order.
    pub conn: usize,
    /// Request number on its connection, from 0.
    pub nth: usize,
    pub method: String,
    pub path: String,
    /// The whole head, as received.
    pub head: String,
    pub body_len: usize,
}

/// What the scripted upstream does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Writes these bytes and waits for the next request on the connection.
    Bytes(Vec<u8>),
    /// Writes these bytes and closes the connection.
    BytesThenClose(Vec<u8>),
    /// Writes each part after its delay, then closes.
    Parts(Vec<(Duration, Vec<u8>)>),
    /// Closes without answering.
    Close,
    /// Never answers; keeps the connection open.
    Hang,
}

/// A plain keep-alive `200` with `body`.
pub fn ok(body: &str) -> Reply {
    Reply::Bytes(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

type Script = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A raw TCP upstream on 127.0.0.1 that reads HTTP/1.1 request heads (and
/// `content-length` bodies) and answers each with what its script returns.
pub struct ScriptedUpstream {
    pub address: String,
    pub connections: Arc<AtomicUsize>,
    /// Answers whose writing failed (the proxy had closed the connection).
    pub write_failures: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedUpstream {
    pub async fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let write_failures = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let (c, s, w) = (connections.clone(), seen.clone(), write_failures.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let conn = c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_conn(
                    stream,
                    conn,
                    script.clone(),
                    s.clone(),
                    w.clone(),
                ));
            }
        });
        ScriptedUpstream {
            address,
            connections,
            write_failures,
            seen,
            task,
        }
    }

    /// Every request read so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve_conn(
    mut stream: TcpStream,
    conn: usize,
    script: Arc<Script>,
    seen: Arc<Mutex<Vec<Seen>>>,
    write_failures: Arc<AtomicUsize>,
) {
    let failed = || {
        write_failures.fetch_add(1, Ordering::SeqCst);
    };
    let mut buf = Vec::new();
    let mut nth = 0;
    loop {
        let Some(end) = read_until_head(&mut stream, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut first = head.split("\r\n").next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("").to_string();
        let body_len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())
                    .flatten()
            })
            .unwrap_or(0);
        while buf.len() < body_len {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..body_len);
        let req = Seen {
            conn,
            nth,
            method,
            path,
            head,
            body_len,
        };
        nth += 1;
        seen.lock().unwrap().push(req.clone());
        match script(&req) {
            Reply::Bytes(b) => {
                if stream.write_all(&b).await.is_err() {
                    failed();
                    return;
                }
            }
            Reply::BytesThenClose(b) => {
                if stream.write_all(&b).await.is_err() {
                    failed();
                }
                let _ = stream.shutdown().await;
                return;
            }
            Reply::Parts(parts) => {
                for (delay, b) in parts {
                    tokio::time::sleep(delay).await;
                    if stream.write_all(&b).await.is_err() {
                        failed();
                        return;
                    }
                }
                let _ = stream.shutdown().await;
                return;
            }
            Reply::Close => return,
            Reply::Hang => {
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
        }
    }
}

/// Reads until `buf` holds a whole head; returns its length (with the blank line).
async fn read_until_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// What a raw client got back.
#[derive(Debug)]
pub struct RawResponse {
    /// Everything read, as text (lossy).
    pub text: String,
    /// The proxy closed the connection (read returned 0 or a reset) before the
    /// deadline.
    pub closed: bool,
}

impl RawResponse {
    /// The status code of the first response, if any.
    pub fn status(&self) -> Option<u16> {
        let line = self.text.lines().next()?;
        line.split(' ').nth(1)?.parse().ok()
    }

    /// How many responses (status lines) came back.
    pub fn responses(&self) -> usize {
        self.text.matches("HTTP/1.1 ").count() + self.text.matches("HTTP/1.0 ").count()
    }
}

/// Sends `parts` to `addr` (each after the previous one was written, with `gap`
/// between them), then reads until the peer closes or `wait` passes.
pub async fn exchange(addr: &str, parts: &[&[u8]], gap: Duration, wait: Duration) -> RawResponse {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let _ = stream.set_nodelay(true);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 && !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        if stream.write_all(p).await.is_err() {
            break;
        }
    }
    read_all(&mut stream, wait).await
}

/// Reads until the peer closes or `wait` passes.
pub async fn read_all(stream: &mut TcpStream, wait: Duration) -> RawResponse {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut closed = false;
    loop {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
    }
    RawResponse {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}
