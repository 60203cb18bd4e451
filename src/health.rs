//! Active health checks: a background service that sends `GET check_path` to every
//! instance of every deployment in a slot, for each app with `[app.health]
//! check_path`, and flips the shared [`InstanceHealth`] the proxy reads on every pick.
//!
//! Each app is checked every `check_interval`; one round probes its instances
//! concurrently (at most [`MAX_CONCURRENT_PROBES`] at once over all apps), each with
//! `check_timeout`. The instance list comes from the routing table being served, so
//! checks follow swaps and deploys without being told. Passive ejection lives in the
//! proxy ([`InstanceHealth::record_failure`]); this module only does the active part.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::Semaphore;

use crate::config::{ActiveCheck, Config};
use crate::control::ControlPlane;
use crate::routing::{InstanceHealth, RoutingTable};
use crate::warmup::get_status;

/// Probes in flight at once, over all apps.
pub const MAX_CONCURRENT_PROBES: usize = 64;

/// Longest pause between two looks at the config when no app has checks.
const IDLE_PAUSE: Duration = Duration::from_secs(1);

/// The active health checker (a Pingora background service).
pub struct HealthChecker {
    cp: Arc<ControlPlane>,
}

impl HealthChecker {
    pub fn new(cp: Arc<ControlPlane>) -> Self {
        HealthChecker { cp }
    }
}

/// One instance to check: where, with which `Host`, and whose health to update.
struct Target {
    app: Arc<str>,
    address: Arc<str>,
    host: String,
    health: Arc<InstanceHealth>,
}

/// The instances of `app` in the served table, each once, with the first hostname of
/// the first slot that holds it.
fn targets(table: &RoutingTable, config: &Config, app: &str) -> Vec<Target> {
    let Some(app_config) = config.app(app) else {
        return Vec::new();
    };
    let Some(route) = table.apps().iter().find(|a| &*a.name == app) else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for slot in &route.slots {
        let Some(pool) = &slot.pool else { continue };
        let host = app_config
            .slot(&slot.name)
            .and_then(|s| s.hosts.first().cloned())
            .unwrap_or_default();
        for inst in &pool.instances {
            if seen.insert(inst.address.clone()) {
                out.push(Target {
                    app: route.name.clone(),
                    address: inst.address.clone(),
                    host: host.clone(),
                    health: inst.health.clone(),
                });
            }
        }
    }
    out
}

/// Checks one instance and records the result; logs a change of verdict.
async fn check(cp: &ControlPlane, t: &Target, check: &ActiveCheck) {
    let agent = concat!("slotd-health/", env!("CARGO_PKG_VERSION"));
    let probe = get_status(&t.address, &check.path, &t.host, &[], agent);
    let (pass, detail) = match tokio::time::timeout(check.timeout, probe).await {
        Ok(Ok(status)) if check.passes(status) => (true, String::new()),
        Ok(Ok(status)) => (false, format!("answered {status}")),
        Ok(Err(e)) => (false, e),
        Err(_) => (
            false,
            format!("no answer within {}ms", check.timeout.as_millis()),
        ),
    };
    cp.metrics().health_check(&t.app, pass);
    let changed = t
        .health
        .record_check(pass, check.healthy_threshold, check.unhealthy_threshold);
    match changed {
        Some(false) => {
            cp.metrics().ejections(&t.app, "check").inc();
            tracing::warn!(
                app = %t.app,
                instance = %t.address,
                path = %check.path,
                reason = %detail,
                failures = check.unhealthy_threshold,
                "instance down: it failed its active health checks"
            );
        }
        Some(true) => tracing::info!(
            app = %t.app,
            instance = %t.address,
            passes = check.healthy_threshold,
            "instance up: it passed its active health checks again"
        ),
        None => {}
    }
}

/// Checks every instance of one app once, concurrently.
async fn round(cp: Arc<ControlPlane>, app: String, ac: ActiveCheck, limit: Arc<Semaphore>) {
    let table = cp.routing().load_full();
    let config = cp.config();
    let mut set = tokio::task::JoinSet::new();
    for t in targets(&table, &config, &app) {
        let cp = cp.clone();
        let ac = ac.clone();
        let limit = limit.clone();
        set.spawn(async move {
            let Ok(_permit) = limit.acquire_owned().await else {
                return;
            };
            check(&cp, &t, &ac).await;
        });
    }
    while set.join_next().await.is_some() {}
}

/// The task id of a finished round, reporting a round that panicked.
fn finished(r: Result<(tokio::task::Id, ()), tokio::task::JoinError>) -> tokio::task::Id {
    match r {
        Ok((id, ())) => id,
        Err(e) => {
            tracing::error!(error = %e, "a health check round failed");
            e.id()
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
        // App → when its next round is due.
        let mut due: HashMap<String, Instant> = HashMap::new();
        // Apps whose round is still running (a round never overlaps the next one).
        let mut running = tokio::task::JoinSet::new();
        let mut busy: HashMap<tokio::task::Id, String> = HashMap::new();
        loop {
            let config = self.cp.config();
            let now = Instant::now();
            let mut next = now + IDLE_PAUSE;
            due.retain(|app, _| config.app(app).is_some_and(|a| a.health.check.is_some()));
            for app in &config.apps {
                let Some(ac) = &app.health.check else {
                    continue;
                };
                let at = *due.entry(app.name.clone()).or_insert(now);
                if at > now {
                    next = next.min(at);
                } else if !busy.values().any(|a| *a == app.name) {
                    due.insert(app.name.clone(), now + ac.interval);
                    next = next.min(now + ac.interval);
                    let (cp, name, ac, limit) =
                        (self.cp.clone(), app.name.clone(), ac.clone(), limit.clone());
                    let task = running.spawn(round(cp, name, ac, limit));
                    busy.insert(task.id(), app.name.clone());
                }
                // Else its last round is still running past the interval: the loop
                // wakes when that round ends, and starts the next one then.
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep_until(next.into()) => {}
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    busy.remove(&finished(done));
                }
            }
            // Collect every other round that finished meanwhile.
            while let Some(done) = running.try_join_next_with_id() {
                busy.remove(&finished(done));
            }
        }
        running.abort_all();
    }
}
