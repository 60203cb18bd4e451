//! Shared test code: real upstream servers on 127.0.0.1, the real `slotd` binary
//! started on free ports with a temporary config and state folder, an admin API
//! client, and `eventually` for polling with a deadline (no bare sleeps).
#![allow(dead_code)]

pub mod raw;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A port nobody listens on right now.
/// Warm-up settings quick to fail on a dead instance, yet with room for a loaded machine.
pub const FAST_WARMUP: &str = r#"[app.warmup]
statuses = [200]
timeout = "3s"
request_timeout = "1s"
retry_interval = "100ms""#;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// An address that refuses connections: port 1 on a loopback address of its own.
/// (A free port found by binding could be taken later by another test's server.)
pub fn refusing_address() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("127.0.{}.{}:1", (n / 250) % 250, 2 + n % 250)
}

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === upstreams ===

/// How a test upstream answers `/`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    /// 200 with its name.
    Identity,
    /// This status for every request, with its name as the body.
    Status(u16),
}

/// A real HTTP/1.1 upstream on 127.0.0.1 that answers with its own identity.
///
/// Routes: `/` (per [`Answer`]), `/slow?ms=N` (answers after N ms), `/echo` (JSON of
/// the request's method, headers and body length), `/status/N`, `/stream?chunks=N`
/// (N chunks of 1 KiB, 10 ms apart), `/healthz` (the status in `health`, 200 at
/// first). Every response carries `x-upstream: NAME`.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    /// What `/healthz` answers.
    pub health: Arc<AtomicU16>,
    /// `/healthz` requests received.
    pub health_checks: Arc<AtomicUsize>,
    /// Requests being served right now.
    pub in_flight: Arc<AtomicUsize>,
    /// Requests received in total.
    pub received: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::start_with(name, Answer::Identity).await
    }

    pub async fn start_with(name: &str, answer: Answer) -> Upstream {
        Self::start_at(name, answer, "127.0.0.1:0").await
    }

    /// An upstream listening on `bind` (e.g. `[::1]:0`).
    pub async fn start_at(name: &str, answer: Answer, bind: &str) -> Upstream {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let in_flight = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(AtomicU16::new(200));
        let health_checks = Arc::new(AtomicUsize::new(0));
        let state = Served {
            name: name.to_string(),
            answer,
            in_flight: in_flight.clone(),
            received: received.clone(),
            health: health.clone(),
            health_checks: health_checks.clone(),
        };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| serve(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream {
            name: name.to_string(),
            addr,
            health,
            health_checks,
            in_flight,
            received,
            task,
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

struct InFlight(Arc<AtomicUsize>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn query_num(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// What one [`Upstream`] shares with its connections.
#[derive(Clone)]
struct Served {
    name: String,
    answer: Answer,
    in_flight: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    health: Arc<AtomicU16>,
    health_checks: Arc<AtomicUsize>,
}

async fn serve(state: Served, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let Served { name, answer, .. } = state;
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        state.health_checks.fetch_add(1, Ordering::SeqCst);
        let status = state.health.load(Ordering::SeqCst);
        let resp = Response::builder()
            .status(status)
            .header("x-upstream", name.as_str())
            .body(full(name.clone()));
        return Ok(resp.expect("valid test response"));
    }
    state.received.fetch_add(1, Ordering::SeqCst);
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight(state.in_flight);
    let resp = Response::builder().header("x-upstream", name.as_str());
    let resp = match path.as_str() {
        "/slow" => {
            let ms = query_num(&req, "ms").unwrap_or(2000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            resp.body(full(name.clone()))
        }
        "/echo" => {
            let method = req.method().to_string();
            let mut headers = BTreeMap::new();
            for (k, v) in req.headers() {
                headers
                    .entry(k.as_str().to_string())
                    .or_insert_with(Vec::new)
                    .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
            }
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let json = serde_json::json!({
                "upstream": name,
                "method": method,
                "headers": headers,
                "body_len": body.len(),
                "body_sum": body.iter().map(|&b| b as u64).sum::<u64>(),
            });
            resp.header("content-type", "application/json")
                .body(full(json.to_string()))
        }
        "/stream" => {
            let chunks = query_num(&req, "chunks").unwrap_or(5);
            let stream = futures_util::stream::unfold(0u64, move |i| async move {
                if i >= chunks {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((
                    Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(vec![
                        b'a' + (i % 26)
                            as u8;
                        1024
                    ]))),
                    i + 1,
                ))
            });
            resp.body(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
        }
        p if p.starts_with("/status/") => {
            let code: u16 = p["/status/".len()..].parse().unwrap_or(500);
            resp.status(code).body(full(name.clone()))
        }
        _ => match answer {
            Answer::Identity => resp.body(full(name.clone())),
            Answer::Status(code) => resp.status(code).body(full(name.clone())),
        },
    };
    Ok(resp.expect("valid test response"))
}

/// A WebSocket upstream: echoes every text message as `NAME: message`.
pub struct WsUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsUpstream {
    pub async fn start(name: &str) -> WsUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ws upstream");
        let addr = listener.local_addr().expect("addr");
        let name = name.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                tokio::spawn(async move {
                    // Plain HTTP requests (warm-up) get a 200; upgrades become WebSockets.
                    let mut peek = [0u8; 2048];
                    let Ok(n) = stream.peek(&mut peek).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&peek[..n]).to_ascii_lowercase();
                    if !head.contains("upgrade: websocket") {
                        use tokio::io::AsyncWriteExt;
                        let mut stream = stream;
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                            .await;
                        return;
                    }
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() {
                            let reply = format!("{name}: {}", msg.to_text().unwrap_or(""));
                            if ws
                                .send(tokio_tungstenite::tungstenite::Message::text(reply))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        } else if msg.is_close() {
                            break;
                        }
                    }
                });
            }
        });
        WsUpstream { addr, task }
    }
}

// === the slotd process ===

/// The real `slotd` binary serving a temporary config.
pub struct Slotd {
    pub dir: tempfile::TempDir,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Drop for Slotd {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn slotd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_slotd")
}

/// `[proxy]`, `[admin]` and `[state]` for a test server; `apps` is appended.
pub fn server_config(proxy: SocketAddr, admin: SocketAddr, apps: &str) -> String {
    server_config_with(proxy, admin, "", apps)
}

/// [`server_config`] with extra `[proxy]` lines.
pub fn server_config_with(
    proxy: SocketAddr,
    admin: SocketAddr,
    proxy_extra: &str,
    apps: &str,
) -> String {
    let proxy_extra = if proxy_extra.is_empty() {
        String::new()
    } else {
        format!("\n{proxy_extra}")
    };
    format!(
        r#"[proxy]
listen = ["{proxy}"]
threads = 2{proxy_extra}

[admin]
listen = "{admin}"
token_file = "admin.token"

[state]
path = "state.json"

{apps}
"#
    )
}

/// Two-slot app `shop`: production on `shop.test`, staging on `staging.shop.test`.
pub fn shop_app(production: &[String], staging: &[String], extra: &str) -> String {
    let list = |v: &[String]| {
        v.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let staging_deployment = if staging.is_empty() {
        String::new()
    } else {
        format!("instances = [{}]\nversion = \"v2\"", list(staging))
    };
    format!(
        r#"[[app]]
name = "shop"
{extra}

[[app.slot]]
name = "production"
hosts = ["shop.test"]
instances = [{}]
version = "v1"
[app.slot.headers]
X-Slot = "production"

[[app.slot]]
name = "staging"
hosts = ["staging.shop.test"]
{staging_deployment}
[app.slot.headers]
X-Slot = "staging"
"#,
        list(production)
    )
}

impl Slotd {
    /// Starts slotd with `apps` (TOML of `[[app]]` tables) in a fresh folder.
    pub async fn start(apps: &str) -> Slotd {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, apps).await
    }

    /// Starts slotd in `dir`, writing a fresh config there.
    pub async fn start_in(dir: tempfile::TempDir, apps: &str) -> Slotd {
        Self::start_configured(dir, "", apps).await
    }

    /// Starts slotd with extra `[proxy]` lines (e.g. `access_log = true`).
    pub async fn start_with_proxy(proxy_extra: &str, apps: &str) -> Slotd {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_configured(dir, proxy_extra, apps).await
    }

    async fn start_configured(dir: tempfile::TempDir, proxy_extra: &str, apps: &str) -> Slotd {
        std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
        let mut s = Slotd {
            dir,
            proxy: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            child: None,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        // A port found free can be taken (by a client socket of another test) before
        // slotd binds it: then pick new ports and start again.
        for attempt in 1.. {
            s.proxy = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            s.admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            s.rewrite_config(proxy_extra, apps);
            match s.try_spawn_and_wait().await {
                Ok(()) => break,
                Err(log) if attempt < 5 && log.contains("cannot listen on") => {
                    let _ = std::fs::remove_file(s.dir.path().join("slotd.log"));
                }
                Err(log) => panic!("slotd did not start:\n{log}"),
            }
        }
        s
    }

    /// Rewrites the config file with the same listeners and token (for reloads).
    pub fn rewrite_config(&self, proxy_extra: &str, apps: &str) {
        std::fs::write(
            self.config_path(),
            server_config_with(self.proxy, self.admin, proxy_extra, apps),
        )
        .unwrap();
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("slotd.toml")
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slotd.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        self.child = Some(self.spawn_process(&[]));
    }

    fn spawn_process(&self, extra: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("slotd.log"))
            .unwrap();
        Command::new(slotd_bin())
            .args(["serve", "--config"])
            .arg(self.config_path())
            .args(extra)
            .env("SLOTD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn slotd")
    }

    /// The process id of the running slotd.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("slotd is running").id()
    }

    /// Sends `signal` (e.g. "TERM", "QUIT") to the running slotd.
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Waits until the process exits (within `deadline`); returns its exit status.
    pub async fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("slotd is running");
        eventually(deadline, "slotd to exit", || {
            let status = child.try_wait().ok().flatten();
            async move { status }
        })
        .await
    }

    /// Starts a second slotd with `--upgrade` on the same config: it takes the
    /// listeners over once the running one gets SIGQUIT. Returns it (not waited for).
    pub fn spawn_upgrade(&self) -> Child {
        self.spawn_process(&["--upgrade"])
    }

    /// Makes `child` the process this handle manages (after an upgrade).
    pub fn adopt(&mut self, child: Child) {
        self.child = Some(child);
    }

    /// Spawns the binary and waits until the admin API and the proxy answer.
    pub async fn spawn_and_wait(&mut self) {
        if let Err(log) = self.try_spawn_and_wait().await {
            panic!("slotd did not start:\n{log}");
        }
    }

    /// Like [`Self::spawn_and_wait`]; on failure returns the log.
    async fn try_spawn_and_wait(&mut self) -> Result<(), String> {
        self.spawn();
        let (admin, proxy) = (self.admin, self.proxy);
        let http = self.http.clone();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "slotd exited with {status} during start-up:\n{}",
                    self.log()
                ));
            }
            let admin_ok = http
                .get(format!("http://{admin}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            let proxy_ok = tokio::net::TcpStream::connect(proxy).await.is_ok();
            if admin_ok && proxy_ok {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(format!("slotd did not become ready:\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the process and starts it again with the same folder.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn_and_wait().await;
    }

    /// A request to the admin API with the token; returns status and JSON (or the
    /// text as a JSON string).
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.admin_with(method, path, body.map(|b| b.to_string()), Some(TOKEN))
            .await
    }

    pub async fn admin_with(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let method: reqwest::Method = method.parse().unwrap();
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.admin));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("admin API reachable");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    /// Runs a swap and returns its record; panics unless the API answered 200.
    pub async fn swap(&self, source: &str) -> Value {
        let (status, rec) = self
            .admin(
                "POST",
                "/v1/apps/shop/swap",
                Some(serde_json::json!({"source": source})),
            )
            .await;
        assert_eq!(status, 200, "swap answer: {rec}");
        rec
    }

    /// The instance (x-upstream) behind `host` now, via the proxy.
    pub async fn who_serves(&self, host: &str) -> String {
        let resp = self.get(host, "/").await;
        assert_eq!(resp.status(), 200, "GET / for {host}");
        resp.headers()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    /// GET through the proxy with a Host header.
    pub async fn get(&self, host: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("http://{}{path}", self.proxy))
            .header("host", host)
            .send()
            .await
            .expect("proxy reachable")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, body) = self.admin_with("GET", "/metrics", None, None).await;
        assert_eq!(status, 200);
        body.as_str().unwrap_or("").to_string()
    }

    /// Runs the CLI against this server; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        run_cli(args, Some(&format!("http://{}", self.admin)), Some(TOKEN))
    }
}

/// Sends `signal` (a name such as "TERM") to process `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -s {signal} {pid} failed");
}

/// Runs `slotd ARGS` with optional SLOTD_ADMIN / SLOTD_TOKEN.
pub fn run_cli(args: &[&str], admin: Option<&str>, token: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(slotd_bin());
    cmd.args(args)
        .env_remove("SLOTD_ADMIN")
        .env_remove("SLOTD_TOKEN");
    if let Some(a) = admin {
        cmd.env("SLOTD_ADMIN", a);
    }
    if let Some(t) = token {
        cmd.env("SLOTD_TOKEN", t);
    }
    let out = cmd.output().expect("run slotd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of the series whose line starts with `series ` (first match); panics
/// when there is none.
pub fn metric_value(text: &str, series: &str) -> u64 {
    try_metric_value(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// The value of the series whose line starts with `series `, if exported.
pub fn try_metric_value(text: &str, series: &str) -> Option<u64> {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

/// The path of a file in `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `shop` with one blue instance in production and one green one in staging.
pub async fn blue_green(extra: &str) -> (Upstream, Upstream, Slotd) {
    let blue = Upstream::start("blue-1").await;
    let green = Upstream::start("green-1").await;
    let slotd = Slotd::start(&shop_app(&[blue.address()], &[green.address()], extra)).await;
    (blue, green, slotd)
}
