//! The routing table: the one immutable structure the data plane reads.
//!
//! The control plane builds a complete [`RoutingTable`] from (config, state) with
//! [`RoutingTable::build`] and publishes it through the single
//! `ArcSwap<RoutingTable>`; the proxy loads one snapshot per request and never sees a
//! half-applied change. Everything a request needs is precomputed here: the
//! lower-cased host map, per-instance `HttpPeer` templates with the app's timeouts,
//! header names and values, and metric handles. The only mutable state reachable
//! from a table is per-instance health and per-deployment round-robin counters,
//! atomics shared across table generations so a swap does not reset them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::upstreams::peer::HttpPeer;

use crate::config::{AppConfig, ClientLimits, Config, HealthConfig, SlotConfig};
use crate::metrics::{InstanceMetrics, Metrics, Rejections, SlotMetrics};
use crate::model::{AppState, Deployment, State, PRODUCTION};

/// Index of a slot in a table: (app, slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRef {
    pub app: u32,
    pub slot: u32,
}

/// An immutable snapshot of where every host's requests go.
pub struct RoutingTable {
    generation: u64,
    /// Requests (and upgraded connections) being served from this table.
    pub in_flight: std::sync::atomic::AtomicI64,
    /// `[proxy] access_log`: one log event per request.
    pub access_log: bool,
    /// `[proxy]` limits on client connections and requests.
    pub client: ClientLimits,
    /// `slotd_rejected_requests_total`; `None` in the empty start-up table.
    pub rejections: Option<Rejections>,
    hosts: HashMap<Box<str>, SlotRef>,
    apps: Vec<AppRoute>,
}

pub struct AppRoute {
    pub name: Arc<str>,
    pub slots: Vec<SlotRoute>,
}

/// One slot as the proxy serves it.
pub struct SlotRoute {
    pub name: Arc<str>,
    /// `x-slot` response header value.
    pub x_slot: HeaderValue,
    /// Upstream request headers: the slot's sticky headers, then its settings headers.
    /// Names are kept as the operator wrote them (Pingora sends that case on HTTP/1).
    pub headers: Vec<(Bytes, HeaderValue)>,
    /// Settings headers of the app for which this slot has no value: removed from
    /// upstream requests so a client cannot supply them.
    pub unset_headers: Vec<HeaderName>,
    /// The deployment's pool; `None` for an empty slot.
    pub pool: Option<Arc<Pool>>,
    /// Other instances a request may be retried on (`[[app]] retries`).
    pub retries: u32,
    /// `[app.limits] max_body_size`: larger request bodies get 413.
    pub max_body_size: Option<u64>,
    /// `[app.timeouts] total`: longest time from choosing an instance to the end of
    /// its response.
    pub total_timeout: Option<Duration>,
    /// The read timeout of an `Upgrade` request's upstream connection, when the
    /// peers' own is shortened by `total` (which does not apply once upgraded).
    pub upgraded_read_timeout: Option<Duration>,
    /// Testing in production, on the production slot of an app with routing rules.
    pub split: Option<Box<Split>>,
    pub metrics: SlotMetrics,
}

/// The instances of one deployment.
pub struct Pool {
    pub deployment_id: Arc<str>,
    pub version: Arc<str>,
    pub instances: Vec<PoolInstance>,
    next: Arc<AtomicUsize>,
    /// Passive ejection of the app's instances.
    pub passive: PassiveEjection,
    /// With no instance up, pick among all of them rather than none.
    fail_open: bool,
}

/// When consecutive failed requests take an instance out of rotation.
#[derive(Clone)]
pub struct PassiveEjection {
    /// 0: never.
    pub max_failures: u32,
    pub ejection_time: Duration,
    /// `slotd_instance_ejections_total{app, reason="passive"}`.
    pub ejections: prometheus::IntCounter,
}

pub struct PoolInstance {
    pub address: Arc<str>,
    /// `None` when the hostname did not resolve when the table was built.
    pub peer: Option<HttpPeer>,
    pub health: Arc<InstanceHealth>,
    pub metrics: InstanceMetrics,
}

/// Health of one instance of one app, shared by every pool and table that lists it.
///
/// Two verdicts make it: active checks (`checked_down`, set by the health checker)
/// and passive ejection (`ejected_until`, set by the proxy after consecutive failed
/// requests). The proxy reads it on every pick; reading the clock only happens
/// while an ejection is on record.
#[derive(Debug, Default)]
pub struct InstanceHealth {
    checked_down: AtomicBool,
    /// Active check streak: passes in a row (> 0) or failures in a row (< 0).
    check_streak: AtomicI32,
    /// Consecutive failed requests.
    failures: AtomicU32,
    /// Milliseconds since [`clock_ms`]'s origin until which the instance is out of
    /// rotation; 0: not ejected.
    ejected_until: AtomicU64,
}

/// Milliseconds since the first call, on the monotonic clock; never 0.
pub fn clock_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    origin.elapsed().as_millis() as u64 + 1
}

impl InstanceHealth {
    /// Takes traffic: not down by active checks, not ejected (or its ejection is over).
    pub fn is_healthy(&self) -> bool {
        !self.checked_down.load(Ordering::Relaxed) && !self.is_ejected()
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && clock_ms() < until
    }

    pub fn is_checked_down(&self) -> bool {
        self.checked_down.load(Ordering::Relaxed)
    }

    /// Active checks are off for the instance's app: their last verdict no longer
    /// holds (an instance they took down would otherwise never come back).
    pub fn forget_checks(&self) {
        self.check_streak.store(0, Ordering::Relaxed);
        self.checked_down.store(false, Ordering::Relaxed);
    }

    /// The active checks' verdict; returns whether it changed.
    pub fn set_checked(&self, healthy: bool) -> bool {
        self.checked_down.swap(!healthy, Ordering::Relaxed) == healthy
    }

    /// The result of one active check. Returns `Some(up)` when it changed the
    /// verdict: `unhealthy` failures in a row take the instance down, `healthy`
    /// passes in a row bring it back. Only the health checker calls this.
    pub fn record_check(&self, pass: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        let prev = self.check_streak.load(Ordering::Relaxed);
        let streak = match (pass, prev) {
            (true, p) if p > 0 => p.saturating_add(1),
            (true, _) => 1,
            (false, p) if p < 0 => p.saturating_sub(1),
            (false, _) => -1,
        };
        self.check_streak.store(streak, Ordering::Relaxed);
        let down = self.is_checked_down();
        if down && pass && streak as i64 >= healthy as i64 {
            self.set_checked(true);
            return Some(true);
        }
        if !down && !pass && -(streak as i64) >= unhealthy as i64 {
            self.set_checked(false);
            return Some(false);
        }
        None
    }

    /// A request the instance answered: the failure streak ends.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    /// A request the instance failed. Returns true when this failure ejected it. An
    /// instance back from an ejection is on probation: its streak is not reset until
    /// it answers, so one more failure ejects it again.
    pub fn record_failure(&self, policy: &PassiveEjection) -> bool {
        let streak = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if policy.max_failures == 0 || streak < policy.max_failures || self.is_ejected() {
            return false;
        }
        let until = clock_ms() + policy.ejection_time.as_millis() as u64;
        self.ejected_until.store(until, Ordering::Relaxed);
        policy.ejections.inc();
        true
    }

    /// Clears every verdict (tests and a fresh deployment of the same address).
    #[cfg(test)]
    pub fn set_healthy(&self, healthy: bool) {
        self.set_checked(healthy);
        self.failures.store(0, Ordering::Relaxed);
        self.ejected_until.store(0, Ordering::Relaxed);
    }
}

/// The cookie (and query parameter) that pins a visitor to a slot.
pub const PIN_COOKIE: &str = "x-slot-routing-name";

/// Testing in production for one app: how new production visitors are split and
/// which slots a visitor may be pinned to. Built with the table; the proxy only reads.
pub struct Split {
    /// Slot index of production.
    production: u32,
    /// (cumulative percent, slot index), in rule order; a roll under the bound goes
    /// there, a roll past the last bound stays in production.
    shares: Vec<(u32, u32)>,
    /// Slots with a rule (0 % included), by name: the ones a pin may name.
    pinnable: Vec<(Box<str>, u32)>,
    /// Pins made before the last `--reset-pins` are ignored.
    generation: u64,
    /// `Set-Cookie` values, by slot index (production's is `self`).
    cookies: Vec<(u32, HeaderValue)>,
}

/// Where a production request goes under a [`Split`].
#[derive(Debug, PartialEq, Eq)]
pub struct SplitChoice {
    pub slot: u32,
    /// Set this pin on the response (a new or changed pin).
    pub set_cookie: Option<HeaderValue>,
}

impl Split {
    fn build(app: &AppConfig, st: &AppState) -> Option<Split> {
        if st.routing_rules.is_empty() {
            return None;
        }
        let index = |name: &str| {
            app.slots
                .iter()
                .position(|s| s.name == name)
                .map(|i| i as u32)
        };
        let production = index(PRODUCTION)?;
        let mut shares = Vec::new();
        let mut pinnable = Vec::new();
        let mut total = 0u32;
        for rule in &st.routing_rules {
            let Some(i) = index(&rule.slot) else { continue };
            if i == production || pinnable.iter().any(|(_, j)| *j == i) {
                continue;
            }
            // An empty slot (a swap with an empty target emptied it) takes nobody:
            // its share stays with production and its pins fall back there.
            if st.deployment(&rule.slot).is_none() {
                continue;
            }
            total = (total + u32::from(rule.percent)).min(100);
            if rule.percent > 0 {
                shares.push((total, i));
            }
            pinnable.push((Box::from(rule.slot.as_str()), i));
        }
        let generation = st.pin_generation;
        let cookie = |name: &str| {
            HeaderValue::from_str(&format!(
                "{PIN_COOKIE}={name}:{generation}; Path=/; HttpOnly; SameSite=Lax"
            ))
            .ok()
        };
        let mut cookies: Vec<(u32, HeaderValue)> = cookie("self")
            .map(|c| (production, c))
            .into_iter()
            .collect();
        for (name, i) in &pinnable {
            if let Some(c) = cookie(name) {
                cookies.push((*i, c));
            }
        }
        Some(Split {
            production,
            shares,
            pinnable,
            generation,
            cookies,
        })
    }

    fn cookie_for(&self, slot: u32) -> Option<HeaderValue> {
        self.cookies
            .iter()
            .find(|(i, _)| *i == slot)
            .map(|(_, c)| c.clone())
    }

    /// The slot a pin names: `self` is production; a slot without a rule (or no
    /// longer in the app) is not allowed and falls back to production.
    fn pinned(&self, name: &[u8]) -> (u32, bool) {
        if name == b"self" {
            return (self.production, true);
        }
        match self.pinnable.iter().find(|(n, _)| n.as_bytes() == name) {
            Some((_, i)) => (*i, true),
            None => (self.production, false),
        }
    }

    /// Chooses the slot of a production request: an explicit
    /// `?x-slot-routing-name=<slot>` (which also sets the pin), else a current pin
    /// cookie, else a roll of `roll` (0..100) against the shares, pinned.
    pub fn choose(&self, query: Option<&str>, cookies: &[&[u8]], roll: u32) -> SplitChoice {
        if let Some(name) = query.and_then(query_pin) {
            let (slot, _) = self.pinned(name.as_bytes());
            return SplitChoice {
                slot,
                set_cookie: self.cookie_for(slot),
            };
        }
        for header in cookies {
            if let Some(value) = cookie_pin(header) {
                let (name, generation) = match value.iter().rposition(|&c| c == b':') {
                    Some(at) => (
                        &value[..at],
                        std::str::from_utf8(&value[at + 1..])
                            .ok()
                            .and_then(|g| g.parse::<u64>().ok()),
                    ),
                    // A bare `<slot>` is the visitor's own choice (the contract's
                    // form), not a pin this split made: no generation drops it.
                    None => (value, Some(self.generation)),
                };
                if generation != Some(self.generation) {
                    break; // an old pin: a new visitor
                }
                let (slot, allowed) = self.pinned(name);
                return SplitChoice {
                    slot,
                    set_cookie: if allowed { None } else { self.cookie_for(slot) },
                };
            }
        }
        let slot = self
            .shares
            .iter()
            .find(|(bound, _)| roll < *bound)
            .map_or(self.production, |(_, i)| *i);
        SplitChoice {
            slot,
            set_cookie: self.cookie_for(slot),
        }
    }
}

/// The value of `x-slot-routing-name` in a query string.
fn query_pin(query: &str) -> Option<&str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == PIN_COOKIE && !v.is_empty()).then_some(v)
    })
}

/// The value of the pin cookie in one `Cookie` header.
fn cookie_pin(header: &[u8]) -> Option<&[u8]> {
    header.split(|&c| c == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let rest = pair.strip_prefix(PIN_COOKIE.as_bytes())?;
        rest.strip_prefix(b"=").filter(|v| !v.is_empty())
    })
}

/// The outcome of choosing an instance.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    Instance(usize),
    /// The slot holds no deployment.
    Empty,
    /// Every instance is unhealthy, unresolvable or already failed for this request.
    NoneHealthy,
}

impl Pool {
    /// Round-robin among healthy instances, never returning one in `skip` (instances
    /// that already failed for this request).
    pub fn pick(&self, skip: &[usize]) -> Pick {
        let n = self.instances.len();
        if n == 0 {
            return Pick::NoneHealthy;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let idx = (start.wrapping_add(i)) % n;
            if skip.contains(&idx) {
                continue;
            }
            let inst = &self.instances[idx];
            if inst.peer.is_some() && inst.health.is_healthy() {
                return Pick::Instance(idx);
            }
        }
        if self.fail_open {
            // Every instance is down: try them all in turn rather than none.
            for i in 0..n {
                let idx = (start.wrapping_add(i)) % n;
                if !skip.contains(&idx) && self.instances[idx].peer.is_some() {
                    return Pick::Instance(idx);
                }
            }
        }
        Pick::NoneHealthy
    }
}

impl SlotRoute {
    pub fn pick(&self, skip: &[usize]) -> Pick {
        match &self.pool {
            None => Pick::Empty,
            Some(pool) => pool.pick(skip),
        }
    }
}

/// Atomics that outlive table generations: instance health by address and
/// round-robin position by deployment.
#[derive(Default)]
pub struct SharedCounters {
    health: Mutex<HashMap<String, Arc<InstanceHealth>>>,
    round_robin: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// Instance hostnames resolved by the control plane, so building a table never
    /// waits on DNS.
    addresses: Mutex<HashMap<String, SocketAddr>>,
}

impl SharedCounters {
    /// The health of `address` as an instance of `app` (apps check and eject their
    /// instances independently, even when they share one).
    pub fn health(&self, app: &str, address: &str) -> Arc<InstanceHealth> {
        let mut map = self.health.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(format!("{app}/{address}")).or_default().clone()
    }

    fn round_robin(&self, key: String) -> Arc<AtomicUsize> {
        let mut map = self.round_robin.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_default().clone()
    }

    /// The address an instance hostname resolved to, if it has been resolved.
    pub fn address(&self, name: &str) -> Option<SocketAddr> {
        let map = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name).copied()
    }

    pub fn remember_address(&self, name: &str, addr: SocketAddr) {
        let mut map = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(name.to_string(), addr);
    }

    /// Forgets counters no table refers to any more.
    fn prune(&self) {
        let mut map = self.health.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, v| Arc::strong_count(v) > 1);
        drop(map);
        let mut map = self.round_robin.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, v| Arc::strong_count(v) > 1);
    }
}

/// The socket address of an instance: an IP literal, or a hostname the control
/// plane resolved beforehand. Never resolves anything itself.
fn resolve(address: &str, shared: &SharedCounters) -> Option<SocketAddr> {
    address
        .parse::<SocketAddr>()
        .ok()
        .or_else(|| shared.address(address))
}

impl RoutingTable {
    /// A table that routes nothing (before the first build).
    pub fn empty() -> Self {
        RoutingTable {
            generation: 0,
            in_flight: Default::default(),
            access_log: false,
            client: ClientLimits::default(),
            rejections: None,
            hosts: HashMap::new(),
            apps: Vec::new(),
        }
    }

    /// Builds a complete table from the config and the state. Apps in the state but not
    /// in the config are not served; slots in the config but not in the state are empty.
    pub fn build(
        config: &Config,
        state: &State,
        shared: &SharedCounters,
        metrics: &Metrics,
        generation: u64,
    ) -> RoutingTable {
        let mut hosts = HashMap::new();
        let mut apps = Vec::with_capacity(config.apps.len());
        let empty = AppState::default();
        for (ai, app) in config.apps.iter().enumerate() {
            let app_state = state.apps.get(&app.name).unwrap_or(&empty);
            let mut slots = Vec::with_capacity(app.slots.len());
            for (si, slot) in app.slots.iter().enumerate() {
                for h in &slot.hosts {
                    hosts.insert(
                        h.clone().into_boxed_str(),
                        SlotRef {
                            app: ai as u32,
                            slot: si as u32,
                        },
                    );
                }
                let deployment = app_state.deployment(&slot.name);
                slots.push(build_slot(app, slot, deployment, shared, metrics));
            }
            if let Some(split) = Split::build(app, app_state) {
                if let Some(p) = app.slots.iter().position(|s| s.name == PRODUCTION) {
                    slots[p].split = Some(Box::new(split));
                }
            }
            apps.push(AppRoute {
                name: Arc::from(app.name.as_str()),
                slots,
            });
        }
        let table = RoutingTable {
            generation,
            in_flight: Default::default(),
            access_log: config.proxy.access_log,
            client: config.proxy.client,
            rejections: Some(metrics.rejections()),
            hosts,
            apps,
        };
        shared.prune();
        table
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The slot serving `host` (a Host header or :authority: port ignored,
    /// case-insensitive). Does not allocate.
    pub fn route(&self, host: &[u8]) -> Option<SlotRef> {
        let host = strip_port(host);
        let host = host.strip_suffix(b".").unwrap_or(host);
        if host.is_empty() || host.len() > 253 {
            return None;
        }
        let mut buf = [0u8; 253];
        let lower: &[u8] = if host.iter().any(u8::is_ascii_uppercase) {
            let out = &mut buf[..host.len()];
            for (o, c) in out.iter_mut().zip(host) {
                *o = c.to_ascii_lowercase();
            }
            out
        } else {
            host
        };
        let key = std::str::from_utf8(lower).ok()?;
        self.hosts.get(key).copied()
    }

    pub fn apps(&self) -> &[AppRoute] {
        &self.apps
    }

    pub fn app_name(&self, r: SlotRef) -> &str {
        &self.apps[r.app as usize].name
    }

    pub fn slot(&self, r: SlotRef) -> &SlotRoute {
        &self.apps[r.app as usize].slots[r.slot as usize]
    }

    /// Every instance the table serves: (app, slot, address, healthy).
    pub fn instances(&self) -> impl Iterator<Item = (&str, &str, &str, bool)> {
        self.apps.iter().flat_map(|app| {
            app.slots.iter().flat_map(move |slot| {
                slot.pool.iter().flat_map(move |pool| {
                    pool.instances
                        .iter()
                        .map(move |i| (&*app.name, &*slot.name, &*i.address, i.health.is_healthy()))
                })
            })
        })
    }
}

fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        // [v6]:port
        return match host.iter().position(|&c| c == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&c| c == b':') {
        Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) => &host[..i],
        _ => host,
    }
}

fn build_slot(
    app: &AppConfig,
    slot: &SlotConfig,
    deployment: Option<&Deployment>,
    shared: &SharedCounters,
    metrics: &Metrics,
) -> SlotRoute {
    // Names and values were checked when the config was read; the case the operator
    // wrote is kept on the wire.
    let headers = upstream_headers(app, slot, deployment)
        .into_iter()
        .filter_map(|(name, value)| {
            let v = HeaderValue::from_str(&value).ok()?;
            Some((Bytes::from(name.into_bytes()), v))
        })
        .collect();
    let settings = effective_settings(slot, deployment);
    let unset_headers = app
        .settings_headers
        .iter()
        .filter(|(setting, _)| !settings.contains_key(setting))
        .filter_map(|(_, header)| HeaderName::from_bytes(header.as_bytes()).ok())
        .collect();
    let pool = deployment.map(|d| {
        let instances = d
            .instances
            .iter()
            .map(|address| {
                let peer = resolve(address, shared).map(|addr| {
                    let mut peer = HttpPeer::new(addr, false, String::new());
                    peer.options.connection_timeout = Some(app.timeouts.connect);
                    // A total deadline shorter than `read` also bounds each wait.
                    let read = app
                        .timeouts
                        .total
                        .map_or(app.timeouts.read, |t| t.min(app.timeouts.read));
                    peer.options.read_timeout = Some(read);
                    peer.options.write_timeout = Some(app.timeouts.write);
                    peer.options.idle_timeout = Some(app.timeouts.idle);
                    peer
                });
                let health = shared.health(&app.name, address);
                if app.health.check.is_none() {
                    health.forget_checks();
                }
                PoolInstance {
                    address: Arc::from(address.as_str()),
                    peer,
                    health,
                    metrics: metrics.instance(&app.name, &slot.name, address),
                }
            })
            .collect();
        Arc::new(Pool {
            deployment_id: Arc::from(d.id.as_str()),
            version: Arc::from(d.version.as_str()),
            instances,
            next: shared.round_robin(format!("{}/{}", app.name, d.id)),
            passive: passive_ejection(&app.name, &app.health, metrics),
            fail_open: app.health.fail_open,
        })
    });
    SlotRoute {
        name: Arc::from(slot.name.as_str()),
        x_slot: HeaderValue::from_str(&slot.name).unwrap_or(HeaderValue::from_static("invalid")),
        headers,
        unset_headers,
        pool,
        retries: app.retries,
        max_body_size: app.limits.max_body_size,
        total_timeout: app.timeouts.total,
        upgraded_read_timeout: app
            .timeouts
            .total
            .filter(|t| *t < app.timeouts.read)
            .map(|_| app.timeouts.read),
        split: None,
        metrics: metrics.slot(&app.name, &slot.name),
    }
}

fn passive_ejection(app: &str, health: &HealthConfig, metrics: &Metrics) -> PassiveEjection {
    PassiveEjection {
        max_failures: health.max_failures,
        ejection_time: health.ejection_time,
        ejections: metrics.ejections(app, "passive"),
    }
}

/// The headers a slot adds to upstream requests with `deployment` in it: its sticky
/// headers, then one header per setting named in `[app.settings_headers]`.
pub fn upstream_headers(
    app: &AppConfig,
    slot: &SlotConfig,
    deployment: Option<&Deployment>,
) -> Vec<(String, String)> {
    let mut out = slot.headers.clone();
    let settings = effective_settings(slot, deployment);
    for (setting, header) in &app.settings_headers {
        if let Some(value) = settings.get(setting) {
            out.push((header.clone(), value.clone()));
        }
    }
    out
}

/// The settings a slot serves with: the deployment's own, overlaid with the slot's
/// sticky ones.
pub fn effective_settings(
    slot: &SlotConfig,
    deployment: Option<&Deployment>,
) -> std::collections::BTreeMap<String, String> {
    let mut out = deployment.map(|d| d.settings.clone()).unwrap_or_default();
    out.retain(|k, _| !slot.sticky_settings.contains(k));
    out.extend(slot.sticky_setting_values());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        crate::config::parse(
            Path::new("t.toml"),
            r#"
[admin]
insecure_no_auth = true
[[app]]
name = "shop"
[[app.slot]]
name = "production"
hosts = ["shop.example.com"]
instances = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
version = "v1"
[app.slot.headers]
X-Slot = "production"
[[app.slot]]
name = "staging"
hosts = ["staging.shop.example.com"]
"#,
        )
        .expect("valid")
    }

    fn table() -> (RoutingTable, SharedCounters) {
        let config = config();
        let state = crate::state::reconcile(&config, None).expect("seeds").0;
        let shared = SharedCounters::default();
        let t = RoutingTable::build(&config, &state, &shared, &Metrics::new(), 1);
        (t, shared)
    }

    #[test]
    fn hosts_match_case_insensitively_without_port() {
        let (t, _) = table();
        let prod = t.route(b"shop.example.com").expect("routes");
        assert_eq!(&*t.slot(prod).name, "production");
        assert_eq!(t.route(b"SHOP.Example.com:8080"), Some(prod));
        assert_eq!(t.route(b"shop.example.com."), Some(prod));
        let staging = t.route(b"staging.shop.example.com").expect("routes");
        assert_eq!(&*t.slot(staging).name, "staging");
        assert_eq!(t.route(b"other.example.com"), None);
        assert_eq!(t.route(b""), None);
        assert_eq!(t.route(b"[::1]:80"), None);
    }

    #[test]
    fn round_robin_skips_unhealthy_and_failed_instances() {
        let (t, shared) = table();
        let slot = t.slot(t.route(b"shop.example.com").unwrap());
        let picks: Vec<Pick> = (0..3).map(|_| slot.pick(&[])).collect();
        assert_eq!(
            picks,
            vec![Pick::Instance(0), Pick::Instance(1), Pick::Instance(2)]
        );
        shared.health("shop", "127.0.0.1:9002").set_healthy(false);
        for _ in 0..6 {
            assert_ne!(slot.pick(&[]), Pick::Instance(1));
            assert!(matches!(slot.pick(&[0]), Pick::Instance(2)));
        }
        shared.health("shop", "127.0.0.1:9001").set_healthy(false);
        shared.health("shop", "127.0.0.1:9003").set_healthy(false);
        assert_eq!(slot.pick(&[]), Pick::NoneHealthy);
        let empty = t.slot(t.route(b"staging.shop.example.com").unwrap());
        assert_eq!(empty.pick(&[]), Pick::Empty);
    }

    #[test]
    fn a_split_honours_queries_current_pins_and_rolls() {
        let config = config();
        let mut st = crate::state::reconcile(&config, None).expect("seeds").0;
        let shop = st.apps.get_mut("shop").unwrap();
        shop.routing_rules = vec![crate::model::RoutingRule {
            slot: "staging".into(),
            percent: 30,
        }];
        shop.pin_generation = 2;
        let production = shop.deployment("production").cloned();
        shop.slots.insert("staging".into(), production);
        let split = Split::build(&config.apps[0], shop).expect("rules give a split");
        let (prod, staging) = (0, 1);
        let pick = |q: Option<&str>, c: &[&[u8]], roll| split.choose(q, c, roll);
        // Rolls: under 30 to staging, else production; both get a pin.
        assert_eq!(pick(None, &[], 0).slot, staging);
        assert_eq!(pick(None, &[], 29).slot, staging);
        let p = pick(None, &[], 30);
        assert_eq!(p.slot, prod);
        assert_eq!(
            p.set_cookie.unwrap(),
            "x-slot-routing-name=self:2; Path=/; HttpOnly; SameSite=Lax"
        );
        // A current pin wins over the roll and is not set again.
        let pinned = pick(None, &[b"a=1; x-slot-routing-name=staging:2"], 99);
        assert_eq!((pinned.slot, pinned.set_cookie), (staging, None));
        // An old generation is a new visitor; a bare slot name is the visitor's own
        // choice, whatever the generation.
        assert_eq!(
            pick(None, &[b"x-slot-routing-name=staging:1"], 99).slot,
            prod
        );
        let chosen = pick(None, &[b"x-slot-routing-name=staging"], 99);
        assert_eq!((chosen.slot, chosen.set_cookie), (staging, None));
        assert_eq!(pick(None, &[b"x-slot-routing-name=self"], 0).slot, prod);
        // The query wins over everything and sets the pin; unknown names mean production.
        let q = pick(
            Some("x=1&x-slot-routing-name=staging"),
            &[b"x-slot-routing-name=self:2"],
            99,
        );
        assert_eq!(q.slot, staging);
        assert!(q.set_cookie.is_some());
        assert_eq!(pick(Some("x-slot-routing-name=nope"), &[], 0).slot, prod);
        // A pin naming a slot without a rule falls back to production, re-pinned.
        let gone = pick(None, &[b"x-slot-routing-name=canary:2"], 0);
        assert_eq!(gone.slot, prod);
        assert!(gone.set_cookie.is_some());
        // Look-alike cookie names do not count.
        assert_eq!(
            pick(None, &[b"xx-slot-routing-name=staging:2"], 99).slot,
            prod
        );

        // Once staging is empty (swapped with an empty slot), it takes nobody.
        shop.slots.insert("staging".into(), None);
        let split = Split::build(&config.apps[0], shop).expect("rules give a split");
        for roll in [0, 29, 99] {
            assert_eq!(split.choose(None, &[], roll).slot, prod);
        }
        let pinned = split.choose(None, &[b"x-slot-routing-name=staging:2"], 0);
        assert_eq!(pinned.slot, prod);
        assert!(pinned.set_cookie.is_some());
        assert_eq!(
            split
                .choose(Some("x-slot-routing-name=staging"), &[], 0)
                .slot,
            prod
        );
    }

    #[test]
    fn sticky_headers_are_precomputed() {
        let (t, _) = table();
        let slot = t.slot(t.route(b"shop.example.com").unwrap());
        assert_eq!(slot.headers.len(), 1);
        assert_eq!(&slot.headers[0].0[..], b"X-Slot");
        assert_eq!(slot.headers[0].1, "production");
        assert_eq!(slot.x_slot, "production");
    }
}
