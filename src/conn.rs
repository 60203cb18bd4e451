//! Client connections before HTTP: protocol detection and request-head deadlines.
//!
//! Pingora reads a request head with a timeout per `read()` call only (and none at
//! all on a kept-alive connection), so a client trickling one byte at a time could
//! hold a connection forever, and it runs no application code before the head is
//! complete. [`ClientConnections`] wraps the proxy's [`ServerApp`] to close that gap:
//!
//! - It reads the first 4 bytes of every connection. `PRI ` is the HTTP/2
//!   prior-knowledge preface, handled by a proxy with h2c on; anything else goes to a
//!   proxy with h2c off, which then never waits for a 24-byte preface a short
//!   HTTP/1 request may never send.
//! - For HTTP/1 it arms a [`HeadDeadline`]: the first request head must be complete
//!   within `header_timeout`, and each later one within `keepalive_timeout` of the
//!   previous response. The proxy disarms it when a head has been read
//!   ([`head_received`]) and re-arms it when a request ends ([`request_done`]); a
//!   connection whose deadline passes is closed. HTTP/2 connections get Pingora's
//!   `h2_idle_timeout` instead.
//! - It closes upgraded connections (WebSocket, ...) whose pool a swap moved out of
//!   their slot, once the app's `drain_timeout` has passed ([`drain_moved`]).
//! - It keeps track of where each HTTP/1 request ends in the connection's byte
//!   stream ([`request_wire_end`]), so that bytes a client sent after an `Upgrade`
//!   request can be found before the request goes anywhere ([`sent_beyond`]).
//! - It tells the proxy when the process is draining (shutdown or upgrade), so
//!   responses close their connections ([`draining`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use nix::sys::socket::MsgFlags;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use crate::proxy::SlotProxy;
use crate::routing::{clock_ms, RoutingTable};
use crate::screen::Framing;

/// Set once the process starts shutting down or handing its listeners over.
static DRAINING: AtomicBool = AtomicBool::new(false);

/// Whether responses should close their connections: the process is shutting down
/// (SIGTERM) or handing its listeners to a new process (`--upgrade`, SIGQUIT).
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// From now on every response closes its connection.
pub fn start_draining() {
    if !DRAINING.swap(true, Ordering::Relaxed) {
        tracing::info!("draining: responses now close their client connections");
    }
}

/// The first bytes of the HTTP/2 connection preface.
const H2_PREFACE_START: &[u8; 4] = b"PRI ";

/// When the next request head of one HTTP/1 connection must be complete.
#[derive(Default)]
pub struct HeadDeadline {
    /// In [`clock_ms`] milliseconds; 0 while a request is being served.
    at: AtomicU64,
    /// When an upgraded connection whose pool was swapped out must close
    /// ([`drain_moved`]); 0: never.
    close_at: AtomicU64,
    /// Wakes the watchdog when a deadline is set again.
    armed: Notify,
    /// Where the last request read so far ends in the connection's byte stream
    /// (head and body, as sent); [`UNKNOWN_END`] after a chunked body.
    wire_end: AtomicU64,
}

/// [`HeadDeadline::wire_end`] once it can no longer be known from the heads alone.
const UNKNOWN_END: u64 = u64::MAX;

impl HeadDeadline {
    fn arm(&self, within: Duration) {
        self.at
            .store(clock_ms() + within.as_millis() as u64, Ordering::Relaxed);
        self.armed.notify_one();
    }

    fn disarm(&self) {
        self.at.store(0, Ordering::Relaxed);
    }

    /// Resolves once the head deadline passes while armed, or the drain deadline.
    async fn expired(&self) {
        loop {
            let head = self.at.load(Ordering::Relaxed);
            let close = self.close_at.load(Ordering::Relaxed);
            let at = match (head, close) {
                (0, c) => c,
                (h, 0) => h,
                (h, c) => h.min(c),
            };
            if at == 0 {
                self.armed.notified().await;
                continue;
            }
            let now = clock_ms();
            if now >= at {
                return;
            }
            tokio::time::sleep(Duration::from_millis(at - now)).await;
        }
    }
}

tokio::task_local! {
    static DEADLINE: Arc<HeadDeadline>;
}

/// A request head was read on this connection: no deadline while it is served.
pub fn head_received() {
    let _ = DEADLINE.try_with(|d| d.disarm());
}

/// Accounts for the request whose head (`head_len` bytes) was just read on this
/// HTTP/1 connection and returns where it ends in the connection's byte stream, if
/// that is known: it is once every earlier request had a `Content-Length` or no body.
pub fn request_wire_end(head_len: usize, framing: Framing) -> Option<u64> {
    DEADLINE
        .try_with(|d| {
            let start = d.wire_end.load(Ordering::Relaxed);
            let end = match framing {
                Framing::Length(n) if start != UNKNOWN_END => start
                    .checked_add(head_len as u64)
                    .and_then(|e| e.checked_add(n))
                    .unwrap_or(UNKNOWN_END),
                _ => UNKNOWN_END,
            };
            d.wire_end.store(end, Ordering::Relaxed);
            (end != UNKNOWN_END).then_some(end)
        })
        .ok()
        .flatten()
}

/// Whether the client has sent any byte beyond offset `end` of its connection, read
/// by the proxy already or still waiting in the socket: the kernel's count of bytes
/// received (`TCP_INFO`) says so without reading them. That count includes the
/// client's FIN, which is not a byte: one byte over is taken for a FIN when the
/// socket holds nothing more, or, for a request with a body (`body_unread` may still
/// be in the socket), always. False when the count cannot be had.
pub fn sent_beyond(stream: &Stream, end: u64, body_unread: bool) -> bool {
    let fd = stream.id();
    let Ok(info) = pingora::protocols::l4::ext::get_tcp_info(fd) else {
        return false;
    };
    let received = info.tcpi_bytes_received;
    if received <= end {
        return false;
    }
    if received - end > 1 {
        return true;
    }
    if body_unread {
        return false;
    }
    // The head was read whole, so the socket holds only what came after it.
    let mut probe = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    !matches!(nix::sys::socket::recv(fd, &mut probe, flags), Ok(0))
}

/// A request ended and the connection may be reused: the next head is due within
/// `keepalive_timeout`.
pub fn request_done(keepalive_timeout: Duration) {
    let _ = DEADLINE.try_with(|d| d.arm(keepalive_timeout));
}

/// An upgraded connection (WebSocket, ...) and the pool it was proxied to.
struct Upgraded {
    app: Arc<str>,
    slot: Arc<str>,
    deployment: Arc<str>,
    conn: Weak<HeadDeadline>,
}

/// Every upgraded connection still open (pruned as they close).
static UPGRADED: Mutex<Vec<Upgraded>> = Mutex::new(Vec::new());

/// The request on this connection was upgraded, to `deployment` serving `slot` of
/// `app`: a swap that moves that deployment out of the slot starts its drain.
pub fn upgraded(app: &Arc<str>, slot: &Arc<str>, deployment: &Arc<str>) {
    let _ = DEADLINE.try_with(|d| {
        let mut all = UPGRADED.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|u| u.conn.strong_count() > 0);
        all.push(Upgraded {
            app: app.clone(),
            slot: slot.clone(),
            deployment: deployment.clone(),
            conn: Arc::downgrade(d),
        });
    });
}

/// After `table` was published: every upgraded connection whose slot now holds
/// another deployment gets `drain_timeout(app)` more, then closes. Returns the
/// number of connections newly set to drain.
pub fn drain_moved(
    table: &RoutingTable,
    drain_timeout: impl Fn(&str) -> Option<Duration>,
) -> usize {
    let mut all = UPGRADED.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|u| u.conn.strong_count() > 0);
    let mut started = 0;
    for u in all.iter() {
        let Some(conn) = u.conn.upgrade() else {
            continue;
        };
        if conn.close_at.load(Ordering::Relaxed) != 0 {
            continue;
        }
        let now_serving = table
            .apps()
            .iter()
            .find(|a| a.name == u.app)
            .and_then(|a| a.slots.iter().find(|s| s.name == u.slot))
            .and_then(|s| s.pool.as_ref().map(|p| p.deployment_id.clone()));
        if now_serving.as_deref() == Some(&*u.deployment) {
            continue;
        }
        let Some(timeout) = drain_timeout(&u.app) else {
            continue;
        };
        conn.close_at
            .store(clock_ms() + timeout.as_millis() as u64, Ordering::Relaxed);
        conn.armed.notify_one();
        started += 1;
    }
    started
}

/// Upgraded connections draining (their pool was swapped out), by app.
pub fn draining_by_app() -> Vec<(Arc<str>, usize)> {
    let all = UPGRADED.lock().unwrap_or_else(|e| e.into_inner());
    let mut out: Vec<(Arc<str>, usize)> = Vec::new();
    for u in all.iter() {
        let draining = u
            .conn
            .upgrade()
            .is_some_and(|c| c.close_at.load(Ordering::Relaxed) != 0);
        match out.iter_mut().find(|(a, _)| *a == u.app) {
            Some((_, n)) => *n += usize::from(draining),
            None => out.push((u.app.clone(), usize::from(draining))),
        }
    }
    out
}

/// The proxy's [`ServerApp`]: detects HTTP/2 prior knowledge and enforces request-head
/// deadlines on HTTP/1 connections.
pub struct ClientConnections {
    /// h2c off.
    pub h1: Arc<HttpProxy<SlotProxy>>,
    /// h2c on: only given connections that start with the HTTP/2 preface.
    pub h2c: Arc<HttpProxy<SlotProxy>>,
    pub routing: Arc<ArcSwap<RoutingTable>>,
}

#[async_trait]
impl ServerApp for ClientConnections {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = self.routing.load().client;
        let deadline = Arc::new(HeadDeadline::default());
        deadline.arm(limits.header_timeout);
        let mut start = [0u8; 4];
        let peek = tokio::time::timeout(limits.header_timeout, stream.try_peek(&mut start));
        match peek.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "client connection closed before a request");
                return None;
            }
            Err(_) => {
                tracing::debug!("client sent no request in time: closing the connection");
                return None;
            }
        }
        if &start == H2_PREFACE_START {
            return self.h2c.process_new(stream, shutdown).await;
        }
        let served = DEADLINE.scope(deadline.clone(), self.h1.process_new(stream, shutdown));
        tokio::select! {
            r = served => r,
            () = deadline.expired() => {
                if deadline.close_at.load(Ordering::Relaxed) != 0 {
                    tracing::info!("closing an upgraded connection: its pool was swapped out and its drain time is over");
                } else {
                    tracing::debug!("client did not complete a request head in time: closing the connection");
                }
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.h1.cleanup().await;
        self.h2c.cleanup().await;
    }
}
