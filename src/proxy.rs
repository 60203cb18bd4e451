//! HOT PATH ONLY: the Pingora `ProxyHttp` implementation.
//!
//! Per request: `new_ctx` takes one snapshot of the routing table (`load_full`, the
//! only read of the `ArcSwap`), and every later phase reads that snapshot, so a
//! request never sees half of two tables and in-flight requests finish on the pool
//! they started with while a swap publishes a new table. Host → app/slot → pool →
//! instance (round-robin among healthy ones). No locks, no awaits on the control
//! plane, no label lookups: everything was precomputed when the table was built.
//!
//! Status codes the proxy makes itself: 404 unknown host, 503 empty slot or no
//! healthy instance, 502 upstream failure, 504 upstream timeout. A connect failure
//! is retried on another instance (`[[app]] retries`, default 1); a failure on a
//! reused upstream connection only for idempotent requests. Failed requests count
//! against the instance (passive ejection, [`crate::routing::InstanceHealth`]).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::metrics::UpstreamError;
use crate::routing::{PassiveEjection, Pick, Pool, PoolInstance, RoutingTable, SlotRef, SlotRoute};
use crate::{conn, screen};

/// The data plane.
pub struct SlotProxy {
    routing: Arc<ArcSwap<RoutingTable>>,
}

impl SlotProxy {
    pub fn new(routing: Arc<ArcSwap<RoutingTable>>) -> Self {
        SlotProxy { routing }
    }
}

/// Per-request state: the table snapshot and what was chosen from it.
pub struct RequestCtx {
    table: Arc<RoutingTable>,
    started: Instant,
    /// Set once the host matched; the slot's active-requests gauge counts the
    /// request from then until the context is dropped.
    slot: Option<SlotRef>,
    instance: Option<usize>,
    /// Instances whose connection failed for this request, so retries avoid them.
    failed: Vec<usize>,
    /// Retries made so far (bounded by the app's `retries`).
    retries: u32,
    /// The upstream answered with a final response head (or a `101`).
    answered: bool,
    /// The connection was upgraded (`101`): what flows now is not a request body
    /// or a response, and no request timeout or body limit applies to it.
    upgraded: bool,
    /// Why the proxy answered 503 itself, for the body.
    unavailable: &'static str,
    /// The host the request is for, as sent (see [`request_host`]).
    host: Option<HeaderValue>,
    /// Why screening refused the request.
    rejection: Option<&'static str>,
    /// Request body bytes seen so far (for `max_body_size`).
    body_bytes: u64,
    /// A testing-in-production pin to set on the response.
    set_cookie: Option<HeaderValue>,
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        self.table.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(r) = self.slot {
            self.table.slot(r).metrics.active.dec();
        }
    }
}

const X_SLOT: &str = "x-slot";

/// The kind of an upstream failure; `None` for failures that are not the upstream's.
fn upstream_error_kind(e: &Error) -> Option<UpstreamError> {
    if e.esource() != &ErrorSource::Upstream {
        return None;
    }
    Some(match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::TLSWantX509Lookup
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError
        | ErrorType::ConnectError
        | ErrorType::BindError
        | ErrorType::SocketError
        | ErrorType::ConnectProxyFailure => UpstreamError::Connect,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => UpstreamError::Timeout,
        ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
            UpstreamError::Reset
        }
        ErrorType::HTTPStatus(_) => return None,
        _ => UpstreamError::BadResponse,
    })
}

/// The host a request is for: the authority of an HTTP/2 request or of an HTTP/1
/// absolute-form target (`GET http://shop.example.com/ HTTP/1.1`, which takes
/// precedence over Host per RFC 9112), else the Host header (shared, not copied).
fn request_host(req: &RequestHeader) -> Option<HeaderValue> {
    if let Some(a) = req.uri.authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    if let Some(a) = absolute_form_authority(req.raw_path()) {
        return HeaderValue::from_bytes(a).ok();
    }
    req.headers.get(http::header::HOST).cloned()
}

/// `host[:port]` of an absolute-form request target, without any userinfo.
fn absolute_form_authority(target: &[u8]) -> Option<&[u8]> {
    let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else {
        return None;
    };
    let end = rest
        .iter()
        .position(|&c| matches!(c, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = match authority.iter().rposition(|&c| c == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    (!host.is_empty()).then_some(host)
}

/// Writes a short plain-text answer made by the proxy itself.
async fn respond(
    session: &mut Session,
    status: u16,
    slot: Option<&HeaderValue>,
    body: &'static str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(5))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if let Some(slot) = slot {
        resp.insert_header(X_SLOT, slot.clone())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await
}

fn body_for(status: u16, unavailable: &'static str) -> &'static str {
    match status {
        400 => "slotd: bad request\n",
        408 => "slotd: request timeout: the request body stopped arriving\n",
        413 => "slotd: request body too large\n",
        414 => "slotd: request URI too long\n",
        431 => "slotd: request header fields too large\n",
        404 => "slotd: no app is configured for this host\n",
        502 => "slotd: bad gateway: the upstream instance failed\n",
        503 => unavailable,
        504 => "slotd: gateway timeout: the upstream instance did not answer in time\n",
        _ => "slotd: internal error\n",
    }
}

/// Prepares the request sent upstream: `Host` (when the client sent only an
/// authority), `X-Forwarded-Host`, `X-Forwarded-For` (appended), `X-Forwarded-Proto`,
/// then the slot's sticky and settings headers, after removing settings headers the
/// slot has no value for (so a client cannot supply them). Public for the benches.
pub fn prepare_upstream_request(
    upstream: &mut RequestHeader,
    host: Option<&HeaderValue>,
    client: Option<IpAddr>,
    slot: Option<&SlotRoute>,
) -> Result<()> {
    if let Some(host) = host {
        if upstream.headers.get(http::header::HOST).is_none() {
            upstream.insert_header(http::header::HOST, host.clone())?;
        }
        upstream.insert_header("X-Forwarded-Host", host.clone())?;
    }
    if let Some(ip) = client {
        // Every X-Forwarded-For line the client sent, in order, then the client.
        let prev = upstream.headers.get_all("x-forwarded-for");
        let mut xff = BytesMut::with_capacity(prev.iter().map(|p| p.len() + 2).sum::<usize>() + 39);
        for p in prev
            .iter()
            .map(HeaderValue::as_bytes)
            .filter(|v| !v.is_empty())
        {
            xff.extend_from_slice(p);
            xff.extend_from_slice(b", ");
        }
        let _ = write!(xff, "{ip}");
        if let Ok(v) = HeaderValue::from_maybe_shared(xff.freeze()) {
            upstream.insert_header("X-Forwarded-For", v)?;
        }
    }
    upstream.insert_header("X-Forwarded-Proto", HeaderValue::from_static("http"))?;
    if let Some(slot) = slot {
        for name in &slot.unset_headers {
            upstream.remove_header(name);
        }
        for (name, value) in &slot.headers {
            upstream.insert_header(name.clone(), value.clone())?;
        }
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for SlotProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        let table = self.routing.load_full();
        table.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestCtx {
            table,
            started: Instant::now(),
            slot: None,
            instance: None,
            failed: Vec::new(),
            retries: 0,
            answered: false,
            upgraded: false,
            unavailable: "slotd: service unavailable\n",
            host: None,
            rejection: None,
            body_bytes: 0,
            set_cookie: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        conn::head_received();
        let limits = &ctx.table.client;
        let downstream = session.as_downstream_mut();
        // Answer pipelined HTTP/1.1 requests in order instead of dropping them; but
        // bytes sent after an Upgrade request before its answer are never taken for
        // a request (the connection closes unless it was upgraded).
        let upgrade = downstream.is_upgrade_req();
        downstream.set_pipelining_enabled(!upgrade);
        // The idle keep-alive limit is the connection's head deadline (conn.rs), not
        // a Pingora read timeout, which would cost a timer on every request.
        if conn::draining() {
            downstream.set_keepalive(None);
        }
        downstream.set_read_timeout(Some(limits.body_timeout));
        downstream.set_write_timeout(Some(limits.send_timeout));
        let screened = match downstream.as_http1() {
            Some(h1) => {
                let head = h1.get_headers_raw_bytes();
                screen::screen_head(&head, limits).and_then(|framing| {
                    let end = conn::request_wire_end(head.len(), framing);
                    // Nothing may follow an Upgrade request before its answer: bytes
                    // there are either a smuggled request or data for a protocol the
                    // upstream has not agreed to yet.
                    match end {
                        Some(end)
                            if upgrade
                                && conn::sent_beyond(
                                    h1.stream(),
                                    end,
                                    framing != screen::Framing::Length(0),
                                ) =>
                        {
                            Err(screen::Rejection {
                                status: 400,
                                reason: "bytes sent after an Upgrade request before its answer",
                            })
                        }
                        _ => Ok(()),
                    }
                })
            }
            None => {
                let req = downstream.req_header();
                screen::screen_parsed(req.raw_path().len(), req.headers.len(), limits)
            }
        };
        if let Err(r) = screened {
            ctx.rejection = Some(r.reason);
            return Error::e_explain(ErrorType::HTTPStatus(r.status), r.reason);
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.host = request_host(session.req_header());
        let route = ctx
            .host
            .as_ref()
            .and_then(|h| ctx.table.route(h.as_bytes()));
        match route {
            Some(mut r) => {
                // Testing in production: a production request may go to another slot.
                let choice = ctx.table.slot(r).split.as_ref().map(|split| {
                    let req = session.req_header();
                    let cookies: Vec<&[u8]> = req
                        .headers
                        .get_all(http::header::COOKIE)
                        .iter()
                        .map(HeaderValue::as_bytes)
                        .collect();
                    split.choose(req.uri.query(), &cookies, roll_percent())
                });
                if let Some(choice) = choice {
                    r.slot = choice.slot;
                    ctx.set_cookie = choice.set_cookie;
                }
                let slot = ctx.table.slot(r);
                slot.metrics.active.inc();
                ctx.slot = Some(r);
                if let Some(max) = slot.max_body_size {
                    let declared = session
                        .req_header()
                        .headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    if declared.is_some_and(|n| n > max) {
                        return too_large(ctx);
                    }
                }
                Ok(false)
            }
            None => {
                respond(session, 404, None, body_for(404, "")).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A chunked body has no declared length: count it as it streams. (Not what
        // a client sends into an upgraded connection.)
        if ctx.upgraded {
            return Ok(());
        }
        let Some(r) = ctx.slot else { return Ok(()) };
        let Some(max) = ctx.table.slot(r).max_body_size else {
            return Ok(());
        };
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_bytes > max {
            return too_large(ctx);
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(r) = ctx.slot else {
            return Error::e_explain(
                ErrorType::HTTPStatus(500),
                "no slot was matched before choosing a peer",
            );
        };
        let slot = ctx.table.slot(r);
        match slot.pick(&ctx.failed) {
            Pick::Instance(i) => {
                ctx.instance = Some(i);
                let pool = slot.pool.as_ref().expect("Pick::Instance implies a pool");
                let instance = &pool.instances[i];
                instance.metrics.requests.inc();
                let peer = instance
                    .peer
                    .as_ref()
                    .expect("pick only returns resolved instances");
                let mut peer = Box::new(peer.clone());
                if let Some(read) = slot.upgraded_read_timeout {
                    if session.as_downstream().is_upgrade_req() {
                        peer.options.read_timeout = Some(read);
                    }
                }
                Ok(peer)
            }
            Pick::Empty => {
                ctx.unavailable = "slotd: service unavailable: this slot holds no deployment\n";
                Error::e_explain(ErrorType::HTTPStatus(503), "slot holds no deployment")
            }
            Pick::NoneHealthy if !ctx.failed.is_empty() => {
                Error::e_explain(ErrorType::HTTPStatus(502), "no other instance to retry on")
            }
            Pick::NoneHealthy => {
                ctx.unavailable = "slotd: service unavailable: no healthy instance in this slot\n";
                Error::e_explain(ErrorType::HTTPStatus(503), "no healthy instance")
            }
        }
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(r) = ctx.slot else {
            return e;
        };
        let slot = ctx.table.slot(r);
        slot.metrics.upstream_error(UpstreamError::Connect);
        let (Some(pool), Some(i)) = (slot.pool.as_ref(), ctx.instance) else {
            return e;
        };
        instance_failed(ctx.table.app_name(r), pool, i);
        // Nothing reached the upstream, so any request may go to another instance,
        // as long as the app allows another retry and the pool has an untried one.
        ctx.failed.push(i);
        let untried = pool.instances.len() > ctx.failed.len();
        // A body too large for Pingora's retry buffer cannot be sent again.
        let replayable = !session.as_ref().retry_buffer_truncated();
        if ctx.retries < slot.retries && untried && replayable {
            ctx.retries += 1;
            // The body is sent again from the start (and counted again).
            ctx.body_bytes = 0;
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // Bytes already went upstream: only an idempotent request whose body is still
        // whole may go again, and only after a failure on a reused connection (the
        // upstream closed it while idle), within the app's retries.
        let limit = ctx.slot.map_or(0, |r| ctx.table.slot(r).retries);
        if !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
            || ctx.retries >= limit
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
            if e.retry() {
                ctx.retries += 1;
                ctx.body_bytes = 0;
                // Another instance if one is untried; else the same one again, on a
                // new connection (the usual case: it had closed an idle one).
                if let (Some(r), Some(i)) = (ctx.slot, ctx.instance) {
                    let size = ctx
                        .table
                        .slot(r)
                        .pool
                        .as_ref()
                        .map_or(0, |p| p.instances.len());
                    if size > ctx.failed.len() + 1 && !ctx.failed.contains(&i) {
                        ctx.failed.push(i);
                    }
                }
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client = match session.client_addr() {
            Some(PeerAddr::Inet(addr)) => Some(addr.ip()),
            _ => None,
        };
        let slot = ctx.slot.map(|r| ctx.table.slot(r));
        prepare_upstream_request(upstream, ctx.host.as_ref(), client, slot)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        check_total(ctx)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if ctx.upgraded {
            return Ok(None);
        }
        check_total(ctx).map(|()| None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status;
        if status.is_informational() && status != http::StatusCode::SWITCHING_PROTOCOLS {
            // `100 Continue` and the like: the final answer gets the headers and pin.
            return Ok(());
        }
        ctx.answered = true;
        if status == http::StatusCode::SWITCHING_PROTOCOLS {
            ctx.upgraded = true;
            upgraded(ctx);
        }
        if conn::draining() {
            // Shutting down or handing over to a new process: the client reconnects
            // for its next request instead of finding this connection closed.
            session.set_keepalive(None);
        }
        if let Some(r) = ctx.slot {
            upstream_response.insert_header(X_SLOT, ctx.table.slot(r).x_slot.clone())?;
        }
        if let Some(cookie) = ctx.set_cookie.take() {
            upstream_response.append_header(http::header::SET_COOKIE, cookie)?;
        }
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error) -> bool {
        // A refused request, a client that went away or broke the protocol mid-request
        // is the client's doing: debug level (the access log has the request), not an
        // error line per request that any client could flood the log with.
        if let Some(reason) = ctx.rejection {
            tracing::debug!(reason, "request refused");
            return true;
        }
        if error.esource() == &ErrorSource::Downstream {
            tracing::debug!(error = %error, "request ended by the client");
            return true;
        }
        false
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError
                    | ErrorType::ReadError
                    | ErrorType::ConnectionClosed
                    | ErrorType::WriteTimedout => 0,
                    // The body stopped arriving for `body_timeout`.
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if let Some(r) = &ctx.table.rejections {
            r.count(code);
        }
        if code > 0 && session.response_written().is_none() {
            // The connection is not reused after a failure: say so to the client.
            session.set_keepalive(None);
            let slot = ctx.slot.map(|r| &ctx.table.slot(r).x_slot);
            if let Err(err) = respond(session, code, slot, body_for(code, ctx.unavailable)).await {
                tracing::debug!(error = %err, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        conn::request_done(ctx.table.client.keepalive_timeout);
        let Some(r) = ctx.slot else {
            if ctx.table.access_log {
                access_log(session, e, ctx, None);
            }
            return;
        };
        let slot = ctx.table.slot(r);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let downstream = session.as_downstream();
        slot.metrics.observe(
            status,
            ctx.started.elapsed(),
            downstream.body_bytes_read(),
            downstream.body_bytes_sent(),
        );
        // Connect failures were counted as they happened (fail_to_connect). An
        // upgraded connection that ends (idle past `read`, closed by either side)
        // says nothing about the instance.
        let failure = if ctx.upgraded {
            None
        } else {
            e.and_then(upstream_error_kind)
        };
        match failure {
            Some(UpstreamError::Connect) => {}
            Some(kind) => {
                slot.metrics.upstream_error(kind);
                if let (Some(pool), Some(i)) = (&slot.pool, ctx.instance) {
                    instance_failed(ctx.table.app_name(r), pool, i);
                }
            }
            None if ctx.answered => {
                if let (Some(pool), Some(i)) = (&slot.pool, ctx.instance) {
                    pool.instances[i].health.record_success();
                }
            }
            None => {}
        }
        if ctx.table.access_log {
            access_log(session, e, ctx, Some(r));
        }
    }
}

/// Fails the request as an upstream timeout (504, or a cut connection once the
/// answer has started) when it has run longer than the app's total timeout.
fn check_total(ctx: &RequestCtx) -> Result<()> {
    let total = ctx.slot.and_then(|r| ctx.table.slot(r).total_timeout);
    match total {
        Some(t) if ctx.started.elapsed() > t => {
            let mut e = Error::explain(
                ErrorType::ReadTimedout,
                "the request ran longer than the app's total timeout",
            );
            e.esource = ErrorSource::Upstream;
            Err(e)
        }
        _ => Ok(()),
    }
}

/// Registers an upgraded connection with the pool it went to, for draining.
#[cold]
fn upgraded(ctx: &RequestCtx) {
    let Some(r) = ctx.slot else { return };
    let slot = ctx.table.slot(r);
    if let Some(pool) = &slot.pool {
        let app = &ctx.table.apps()[r.app as usize].name;
        conn::upgraded(app, &slot.name, &pool.deployment_id);
    }
}

/// A uniform number in 0..100 for splitting new visitors (xorshift per thread; not
/// for secrets).
fn roll_percent() -> u32 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(&h as *const _ as usize);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        // Take the high bits, which xorshift mixes best; the modulo bias is 2^-57.
        ((x >> 32) % 100) as u32
    })
}

/// Refuses a request whose body is over the app's `max_body_size` (413).
fn too_large<T>(ctx: &mut RequestCtx) -> Result<T> {
    const WHY: &str = "request body larger than max_body_size";
    ctx.rejection = Some(WHY);
    Error::e_explain(ErrorType::HTTPStatus(413), WHY)
}

/// Counts a failed request against instance `i` and ejects it after the app's
/// `max_failures` in a row.
fn instance_failed(app: &str, pool: &Pool, i: usize) {
    let instance = &pool.instances[i];
    instance.metrics.failures.inc();
    if instance.health.record_failure(&pool.passive) {
        ejected(app, instance, &pool.passive);
    }
}

#[cold]
fn ejected(app: &str, instance: &PoolInstance, passive: &PassiveEjection) {
    tracing::warn!(
        app,
        instance = %instance.address,
        failures = passive.max_failures,
        for_ms = passive.ejection_time.as_millis() as u64,
        "instance ejected: consecutive failed requests"
    );
}

/// One `slotd::access` event for a finished request (only with `[proxy] access_log`).
#[cold]
fn access_log(session: &Session, e: Option<&Error>, ctx: &RequestCtx, r: Option<SlotRef>) {
    let req = session.req_header();
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let client = match session.client_addr() {
        Some(PeerAddr::Inet(a)) => a.ip().to_string(),
        _ => String::new(),
    };
    let host = ctx
        .host
        .as_ref()
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .unwrap_or_default();
    let (app, slot, instance) = match r {
        Some(r) => {
            let slot = ctx.table.slot(r);
            let instance = match (&slot.pool, ctx.instance) {
                (Some(pool), Some(i)) => &*pool.instances[i].address,
                _ => "",
            };
            (ctx.table.app_name(r), &*slot.name, instance)
        }
        None => ("", "", ""),
    };
    let downstream = session.as_downstream();
    tracing::info!(
        target: "slotd::access",
        client = %client,
        method = %req.method,
        host = %host,
        uri = %req.uri,
        version = ?req.version,
        status,
        duration_us = ctx.started.elapsed().as_micros() as u64,
        received_bytes = downstream.body_bytes_read(),
        sent_bytes = downstream.body_bytes_sent(),
        app,
        slot,
        instance,
        error = %e.map(|e| e.etype().as_str()).unwrap_or(""),
    );
}

#[cfg(test)]
mod tests {
    use super::absolute_form_authority;

    #[test]
    fn absolute_form_targets_yield_their_authority() {
        assert_eq!(
            absolute_form_authority(b"http://shop.test/x?y"),
            Some(&b"shop.test"[..])
        );
        assert_eq!(
            absolute_form_authority(b"HTTP://Shop.Test:8080"),
            Some(&b"Shop.Test:8080"[..])
        );
        assert_eq!(
            absolute_form_authority(b"https://u:p@shop.test/"),
            Some(&b"shop.test"[..])
        );
        assert_eq!(absolute_form_authority(b"/path"), None);
        assert_eq!(absolute_form_authority(b"http:///x"), None);
    }
}
