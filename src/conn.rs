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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use crate::proxy::SlotProxy;
use crate::routing::{clock_ms, RoutingTable};

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
    /// Wakes the watchdog when the deadline is armed again.
    armed: Notify,
}

impl HeadDeadline {
    fn arm(&self, within: Duration) {
        self.at
            .store(clock_ms() + within.as_millis() as u64, Ordering::Relaxed);
        self.armed.notify_one();
    }

    fn disarm(&self) {
        self.at.store(0, Ordering::Relaxed);
    }

    /// Resolves once the deadline passes while armed.
    async fn expired(&self) {
        loop {
            let at = self.at.load(Ordering::Relaxed);
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

/// A request ended and the connection may be reused: the next head is due within
/// `keepalive_timeout`.
pub fn request_done(keepalive_timeout: Duration) {
    let _ = DEADLINE.try_with(|d| d.arm(keepalive_timeout));
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
                tracing::debug!("client did not complete a request head in time: closing the connection");
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.h1.cleanup().await;
        self.h2c.cleanup().await;
    }
}
