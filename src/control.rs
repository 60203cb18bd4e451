//! The control plane: config, state, the store, and the one `ArcSwap<RoutingTable>`.
//!
//! Every change (deploy, swap, preview, history update) goes through
//! [`ControlPlane::commit`]: the app's new state is computed off to the side, a new
//! routing table is built from (config, new state), the state is written durably,
//! and only then is the table published with a single `store()`. If the write fails
//! nothing changed: the old state stays in memory and the old table keeps serving.
//! Operations that change an app take [`ControlPlane::begin`], so one swap or deploy
//! per app runs at a time; others get a conflict (409) rather than waiting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::{AppConfig, Config, ConfigErrors, StateConfig};
use crate::metrics::Metrics;
use crate::model::{
    check_instance_address, check_version, now_rfc3339, AppState, Deployment, State, MAX_INSTANCES,
};
use crate::routing::{InstanceHealth, RoutingTable, SharedCounters};
use crate::state::{self, StateError, StateStore};

/// Why an operation was refused. Each maps to one admin API status.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// 404
    #[error("unknown app `{0}`")]
    UnknownApp(String),
    /// 404
    #[error("app `{app}` has no slot `{slot}`")]
    UnknownSlot { app: String, slot: String },
    /// 409: something else is under way, or there is nothing to act on.
    #[error("{0}")]
    Conflict(String),
    /// 422: the request does not make sense; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// 503: the state store failed; nothing changed.
    #[error("the change was not made because the state store failed: {0}")]
    Store(#[from] StateError),
}

/// Why `serve` cannot start with this config and state.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Store(#[from] StateError),
    #[error("the state in {store} does not fit the config {config}:\n  {}", .errors.join("\n  "))]
    Mismatch {
        store: String,
        config: String,
        errors: Vec<String>,
    },
}

/// Why a reload was refused; the running config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not pass `slotd check`.
    #[error("the config file has errors; nothing was changed:\n{0}")]
    Invalid(ConfigErrors),
    /// The new config does not fit the state (a removed slot holds a deployment).
    #[error("the new config does not fit the state; nothing was changed:\n  {}", .0.join("\n  "))]
    Mismatch(Vec<String>),
    /// A swap or deploy is under way.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Store(#[from] StateError),
}

/// What a reload applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadOutcome {
    pub file: String,
    pub generation: u64,
    pub apps: usize,
    /// Settings that changed in the file but only take effect after a restart.
    pub restart_required: Vec<&'static str>,
}

pub struct ControlPlane {
    config: ArcSwap<Config>,
    store: Box<dyn StateStore>,
    state: tokio::sync::Mutex<State>,
    routing: Arc<ArcSwap<RoutingTable>>,
    shared: SharedCounters,
    metrics: Arc<Metrics>,
    generation: AtomicU64,
    /// Apps with an operation under way, and what it is.
    busy: Mutex<HashMap<String, String>>,
    /// Every table published, while requests still hold it (for the per-generation
    /// gauge).
    published: Mutex<Vec<std::sync::Weak<RoutingTable>>>,
    /// Set by [`Self::seal`]: no more state writes.
    sealed: AtomicBool,
}

/// Longest wait for instance hostname lookups (they run at once).
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Held while an operation changes an app; released on drop.
pub struct AppGuard<'a> {
    cp: &'a ControlPlane,
    app: String,
}

impl Drop for AppGuard<'_> {
    fn drop(&mut self) {
        let mut busy = self.cp.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.remove(&self.app);
    }
}

/// Releases the apps a reload claimed.
struct ReloadClaims<'a> {
    cp: &'a ControlPlane,
    apps: Vec<String>,
}

impl Drop for ReloadClaims<'_> {
    fn drop(&mut self) {
        let mut busy = self.cp.busy.lock().unwrap_or_else(|e| e.into_inner());
        for app in &self.apps {
            busy.remove(app);
        }
    }
}

/// Copies into `next` the settings a running process cannot change (its sockets,
/// threads, admin API, state store, shutdown grace); returns those that differ.
fn keep_fixed_settings(running: &Config, next: &mut Config) -> Vec<&'static str> {
    let StateConfig::File { path } = &next.state;
    let StateConfig::File { path: running_path } = &running.state;
    let checks = [
        ("proxy.listen", running.proxy.listen == next.proxy.listen),
        ("proxy.threads", running.proxy.threads == next.proxy.threads),
        (
            "proxy.shutdown_grace",
            running.proxy.shutdown_grace == next.proxy.shutdown_grace,
        ),
        (
            "admin",
            running.admin.listen == next.admin.listen && running.admin.auth == next.admin.auth,
        ),
        (
            "state",
            std::path::absolute(path).ok().as_ref() == Some(running_path),
        ),
    ];
    next.proxy.listen = running.proxy.listen.clone();
    next.proxy.threads = running.proxy.threads;
    next.proxy.shutdown_grace = running.proxy.shutdown_grace;
    next.admin = running.admin.clone();
    next.state = running.state.clone();
    checks
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(name, _)| name)
        .collect()
}

/// What a deploy did.
#[derive(Debug, Clone)]
pub struct DeployOutcome {
    pub deployment: Deployment,
    /// Where the new deployment will be swapped automatically, if the slot says so.
    pub auto_swap: Option<String>,
}

impl ControlPlane {
    /// Loads the state (seeding it from the config where it has nothing), stores it if
    /// seeding changed it, and publishes the first routing table.
    ///
    /// `recover`: close swaps a previous process left running (see
    /// [`state::recover_interrupted`]); false while a previous process may still be
    /// running them (the first load of a zero-downtime upgrade).
    pub async fn start(
        config: Config,
        store: Box<dyn StateStore>,
        metrics: Arc<Metrics>,
        recover: bool,
    ) -> Result<Arc<ControlPlane>, StartError> {
        let cp = ControlPlane {
            config: ArcSwap::from_pointee(config),
            store,
            state: tokio::sync::Mutex::new(State::default()),
            routing: Arc::new(ArcSwap::from_pointee(RoutingTable::empty())),
            shared: SharedCounters::default(),
            metrics,
            generation: AtomicU64::new(0),
            busy: Mutex::new(HashMap::new()),
            published: Mutex::new(Vec::new()),
            sealed: AtomicBool::new(false),
        };
        cp.reload_state(recover).await?;
        Ok(Arc::new(cp))
    }

    /// (Re)reads the state from the store, merges it with the config, stores it if
    /// that changed it, and publishes its routing table. Used at start-up, and after
    /// a zero-downtime upgrade once the previous process has let go of the admin API.
    pub async fn reload_state(&self, recover: bool) -> Result<(), StartError> {
        let mut state = self.state.lock().await;
        let config = self.config();
        let stored = self.store.load().await?;
        let (mut loaded, mut changed) =
            state::reconcile(&config, stored).map_err(|errors| StartError::Mismatch {
                store: self.store.describe(),
                config: config.file.display().to_string(),
                errors,
            })?;
        if recover {
            for rec in state::recover_interrupted(&mut loaded) {
                changed = true;
                self.metrics.swap_finished(&rec.app, "failed");
                tracing::warn!(
                    app = %rec.app,
                    swap_id = %rec.id,
                    error = rec.error.as_deref().unwrap_or(""),
                    "a swap was interrupted by a stop of slotd; it is recorded as failed"
                );
            }
        }
        self.resolve_new_hostnames(&loaded).await;
        let table = self.build(&config, &loaded);
        if changed {
            self.save(&loaded, "").await?;
        }
        *state = loaded;
        self.install(table, &config, &state);
        Ok(())
    }

    /// Re-reads the config file and applies it: hosts, headers, slots, warm-up,
    /// timeouts, health checks, limits and the access log change at once with a new
    /// routing table; requests in flight finish on the table they started with.
    /// Refused, with nothing changed, when the file has errors, when a slot it drops
    /// still holds a deployment, or while a swap or deploy is under way. Listeners,
    /// threads, the admin section, the state store and `shutdown_grace` keep their
    /// running values until a restart (listed in `restart_required`).
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        let outcome = self.reload_inner().await;
        self.metrics.config_reload(outcome.is_ok());
        match &outcome {
            Ok(o) => tracing::info!(
                file = %o.file,
                generation = o.generation,
                apps = o.apps,
                restart_required = ?o.restart_required,
                "config reloaded"
            ),
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; the running config keeps serving")
            }
        }
        outcome
    }

    async fn reload_inner(&self) -> Result<ReloadOutcome, ReloadError> {
        let running = self.config();
        let mut next = crate::config::load(&running.file).map_err(ReloadError::Invalid)?;
        // Claim every app, so no swap or deploy starts or runs during the reload.
        let _claims = {
            let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((app, what)) = busy.iter().next() {
                return Err(ReloadError::Busy(format!(
                    "app `{app}` is busy: a {what} is under way; reload when it has finished"
                )));
            }
            for app in &running.apps {
                busy.insert(app.name.clone(), "configuration reload".into());
            }
            ReloadClaims {
                cp: self,
                apps: running.apps.iter().map(|a| a.name.clone()).collect(),
            }
        };
        let restart_required = keep_fixed_settings(&running, &mut next);
        let mut state = self.state.lock().await;
        // A swap waiting in preview was warmed with the running config's hosts and
        // headers; `complete` must not switch it under others.
        // (Only apps the running config has: others cannot be completed anyway.)
        if let Some((app, rec)) = state
            .apps
            .iter()
            .filter(|(name, _)| running.app(name).is_some())
            .find_map(|(name, a)| a.pending_swap.as_ref().map(|p| (name, p)))
        {
            return Err(ReloadError::Busy(format!(
                "app `{app}` has swap {} waiting in preview (warmed with the running config): complete or cancel it, then reload",
                rec.id
            )));
        }
        let (loaded, changed) =
            state::reconcile(&next, Some(state.clone())).map_err(ReloadError::Mismatch)?;
        self.resolve_new_hostnames(&loaded).await;
        let table = self.build(&next, &loaded);
        let generation = table.generation();
        if changed {
            self.save(&loaded, "").await?;
        }
        self.config.store(Arc::new(next.clone()));
        *state = loaded;
        self.install(table, &next, &state);
        Ok(ReloadOutcome {
            file: next.file.display().to_string(),
            generation,
            apps: next.apps.len(),
            restart_required,
        })
    }

    /// Writes the state durably, timing the write.
    async fn save(&self, state: &State, changed_app: &str) -> Result<(), StateError> {
        if self.sealed.load(Ordering::SeqCst) {
            return Err(StateError::Sealed);
        }
        let started = Instant::now();
        let saved = self.store.save(state, changed_app).await;
        self.metrics.state_write(started.elapsed(), saved.is_ok());
        saved
    }

    /// Stores no more state changes from now on, once a change being written has
    /// been: called when this process stops serving the admin API (shutdown, or a
    /// hand-over to a new process, which reads the state then and must be its only
    /// writer). Operations still running here end failed, in memory only; what they
    /// left on disk is closed by the next owner ([`state::recover_interrupted`]).
    pub async fn seal(&self) {
        self.sealed.store(true, Ordering::SeqCst);
        drop(self.state.lock().await);
        tracing::info!("state store sealed: this process makes no more state changes");
    }

    /// The table the data plane reads.
    pub fn routing(&self) -> Arc<ArcSwap<RoutingTable>> {
        self.routing.clone()
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The Prometheus text of every metric, with instance health read now.
    pub fn render_metrics(&self) -> String {
        let table = self.routing.load();
        self.metrics.set_instances(table.instances());
        let live: Vec<(u64, i64)> = {
            let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
            published.retain(|t| t.strong_count() > 0);
            published
                .iter()
                .filter_map(|t| t.upgrade())
                .map(|t| (t.generation(), t.in_flight.load(Ordering::Relaxed)))
                .collect()
        };
        self.metrics
            .set_generation_requests(&live, table.generation());
        let config = self.config();
        let draining = crate::conn::draining_by_app();
        self.metrics.set_draining(config.apps.iter().map(|a| {
            let n = draining
                .iter()
                .find(|(app, _)| **app == *a.name)
                .map_or(0, |(_, n)| *n);
            (a.name.as_str(), n)
        }));
        self.metrics.render()
    }

    pub fn describe_store(&self) -> String {
        self.store.describe()
    }

    /// Health of an instance of an app (shared with the data plane).
    pub fn health(&self, app: &str, address: &str) -> Arc<InstanceHealth> {
        self.shared.health(app, address)
    }

    /// A copy of the committed state.
    pub async fn state(&self) -> State {
        self.state.lock().await.clone()
    }

    /// The committed state of one app with its config, or 404.
    pub async fn app(&self, app: &str) -> Result<(Arc<Config>, AppState), OpError> {
        let config = self.config();
        if config.app(app).is_none() {
            return Err(OpError::UnknownApp(app.to_string()));
        }
        let state = self.state.lock().await;
        Ok((config, state.apps.get(app).cloned().unwrap_or_default()))
    }

    /// Claims `app` for one operation described by `what` (e.g. "swap of `staging`
    /// into `production`"), or says what is under way (409).
    pub fn begin(&self, app: &str, what: impl Into<String>) -> Result<AppGuard<'_>, OpError> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(under_way) = busy.get(app) {
            return Err(OpError::Conflict(format!(
                "app `{app}` is busy: a {under_way} is under way; retry when it has finished"
            )));
        }
        busy.insert(app.to_string(), what.into());
        Ok(AppGuard {
            cp: self,
            app: app.to_string(),
        })
    }

    /// Applies `change` to the app's state, builds the routing table of the result,
    /// stores the state durably, then publishes the table. On any error nothing
    /// changes: the old state stays in memory and the old table keeps serving.
    pub async fn commit<T>(
        &self,
        app: &str,
        change: impl FnOnce(&AppConfig, &mut AppState) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        self.commit_inner(app, true, false, change).await
    }

    /// Like [`Self::commit`] for changes that do not affect routing (history, preview).
    pub async fn commit_without_routing<T>(
        &self,
        app: &str,
        change: impl FnOnce(&AppConfig, &mut AppState) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        self.commit_inner(app, false, false, change).await
    }

    /// Records the end of an operation (a swap that failed or finished) that must not
    /// stay open in memory when the store cannot be written: the change is kept in
    /// memory even then, and returns the store's error. A later write stores it. If
    /// slotd stops first, what the store still holds comes back: a `running` swap is
    /// closed by the next start ([`state::recover_interrupted`]); a swap in `preview`
    /// (whose `complete` could not be stored) waits in preview again, routing
    /// unchanged. Never changes routing.
    pub async fn commit_outcome<T>(
        &self,
        app: &str,
        change: impl FnOnce(&AppConfig, &mut AppState) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        self.commit_inner(app, false, true, change).await
    }

    async fn commit_inner<T>(
        &self,
        app: &str,
        routing_changes: bool,
        keep_unsaved: bool,
        change: impl FnOnce(&AppConfig, &mut AppState) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        // The config is read under the state lock: a reload swaps config and state
        // together while it holds the lock, and a change that waited for it must build
        // its table from the config that is current then, not from the one before.
        let mut state = self.state.lock().await;
        let config = self.config();
        let app_config = config
            .app(app)
            .ok_or_else(|| OpError::UnknownApp(app.to_string()))?;
        let mut next = state.clone();
        let out = change(app_config, next.apps.entry(app.to_string()).or_default())?;
        let table = if routing_changes {
            self.resolve_new_hostnames(&next).await;
            Some(self.build(&config, &next))
        } else {
            None
        };
        if let Err(e) = self.save(&next, app).await {
            if keep_unsaved {
                tracing::error!(app, error = %e, "state store write failed; the change is kept in memory only");
                *state = next;
            } else {
                tracing::error!(app, error = %e, "state store write failed; nothing changed");
            }
            return Err(OpError::Store(e));
        }
        *state = next;
        if let Some(table) = table {
            self.install(table, &config, &state);
        }
        Ok(out)
    }

    /// Resolves, without blocking, the instance hostnames no table has needed yet, so
    /// that building a table never waits on DNS. Names that do not resolve are tried
    /// again at the next change.
    async fn resolve_new_hostnames(&self, state: &State) {
        let names: Vec<String> = state
            .apps
            .values()
            .flat_map(|a| a.slots.values().flatten())
            .flat_map(|d| d.instances.iter())
            .filter(|a| a.parse::<SocketAddr>().is_err() && self.shared.address(a).is_none())
            .cloned()
            .collect();
        // Changes wait for these lookups (the state lock is held): they run all at
        // once, each for at most RESOLVE_TIMEOUT, so dead names cost that once.
        let mut lookups = tokio::task::JoinSet::new();
        for name in names {
            lookups.spawn(async move {
                let found =
                    tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(name.clone()))
                        .await;
                (name, found)
            });
        }
        while let Some(done) = lookups.join_next().await {
            let Ok((name, found)) = done else { continue };
            let why = match found {
                Ok(Ok(mut addrs)) => match addrs.next() {
                    Some(addr) => {
                        self.shared.remember_address(&name, addr);
                        continue;
                    }
                    None => "it has no address".to_string(),
                },
                Ok(Err(e)) => format!("it does not resolve: {e}"),
                Err(_) => format!("no answer within {}s", RESOLVE_TIMEOUT.as_secs()),
            };
            tracing::warn!(instance = %name, reason = %why, "instance hostname unusable; it takes no traffic until a later change finds it");
        }
    }

    /// Builds the table for (config, state) with the next generation number. A table
    /// that is never installed (its state write failed) leaves a gap in the numbers.
    fn build(&self, config: &Config, state: &State) -> RoutingTable {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        RoutingTable::build(config, state, &self.shared, &self.metrics, generation)
    }

    /// Publishes a built table. Caller holds the state lock.
    fn install(&self, table: RoutingTable, config: &Config, state: &State) {
        let generation = table.generation();
        let table = Arc::new(table);
        self.routing.store(table.clone());
        {
            let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
            published.retain(|t| t.strong_count() > 0);
            published.push(Arc::downgrade(&table));
        }
        let draining =
            crate::conn::drain_moved(&table, |app| config.app(app).map(|a| a.drain_timeout));
        if draining > 0 {
            tracing::info!(
                generation,
                connections = draining,
                "upgraded connections on pools swapped out start draining"
            );
        }
        self.metrics.set_generation(generation);
        self.metrics
            .set_deployments(config.apps.iter().flat_map(|app| {
                let app_state = state.apps.get(&app.name);
                app.slots.iter().filter_map(move |slot| {
                    let d = app_state?.deployment(&slot.name)?;
                    Some((app.name.as_str(), slot.name.as_str(), d.version.as_str()))
                })
            }));
        tracing::debug!(generation, "routing table published");
    }

    /// Puts a new deployment into a slot (`PUT .../deployment`, `slotd deploy`).
    /// The caller holds the app (see [`Self::begin`]). The deployment keeps the
    /// slot's current non-sticky settings (an empty slot's come from its config).
    pub async fn deploy(
        &self,
        _guard: &AppGuard<'_>,
        app: &str,
        slot: &str,
        version: &str,
        instances: &[String],
    ) -> Result<DeployOutcome, OpError> {
        let (config, app_state) = self.app(app).await?;
        let app_config = config.app(app).expect("checked by self.app");
        let slot_config = app_config.slot(slot).ok_or_else(|| OpError::UnknownSlot {
            app: app.to_string(),
            slot: slot.to_string(),
        })?;
        check_version(version).map_err(|e| OpError::Invalid(format!("version: {e}")))?;
        validate_instances(instances)?;
        if let Some(p) = &app_state.pending_swap {
            if p.source == slot || p.target == slot {
                return Err(OpError::Conflict(format!(
                    "swap {} of `{}` into `{}` is waiting in preview; complete or cancel it before deploying to `{slot}`",
                    p.id, p.source, p.target
                )));
            }
        }
        let deployment = self
            .commit(app, |app_config, st| {
                // The slot's current non-sticky settings; for an empty slot (never
                // deployed, or emptied by a swap), those its config gives
                // (`[app.slot.settings]`), as for an initial deployment.
                let settings = match st.deployment(slot) {
                    Some(d) => d.settings.clone(),
                    None => app_config
                        .slot(slot)
                        .map(|s| {
                            let mut settings = s.settings.clone();
                            settings.retain(|k, _| !s.sticky_settings.contains(k));
                            settings
                        })
                        .unwrap_or_default(),
                };
                let d = Deployment {
                    id: st.new_deployment_id(),
                    version: version.to_string(),
                    instances: instances.to_vec(),
                    settings,
                    created_at: now_rfc3339(),
                };
                st.slots.insert(slot.to_string(), Some(d.clone()));
                Ok(d)
            })
            .await?;
        tracing::info!(app, slot, deployment = %deployment.id, version, "deployed");
        Ok(DeployOutcome {
            deployment,
            auto_swap: slot_config.auto_swap.clone(),
        })
    }
}

fn validate_instances(instances: &[String]) -> Result<(), OpError> {
    if instances.is_empty() {
        return Err(OpError::Invalid(
            "instances: list at least one host:port".into(),
        ));
    }
    if instances.len() > MAX_INSTANCES {
        return Err(OpError::Invalid(format!(
            "instances: {} listed, at most {MAX_INSTANCES} are allowed",
            instances.len()
        )));
    }
    for (i, addr) in instances.iter().enumerate() {
        check_instance_address(addr)
            .map_err(|e| OpError::Invalid(format!("instances[{i}]: {e}")))?;
        if instances[..i].contains(addr) {
            return Err(OpError::Invalid(format!(
                "instances[{i}]: `{addr}` is listed twice"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use async_trait::async_trait;

    use super::*;
    use crate::model::State;

    /// A store in memory whose writes wait while the test holds `gate`.
    struct GatedStore {
        stored: Mutex<Option<State>>,
        gate: Arc<tokio::sync::RwLock<()>>,
        waiting: Arc<AtomicBool>,
    }

    #[async_trait]
    impl StateStore for GatedStore {
        fn describe(&self) -> String {
            "memory".into()
        }

        async fn load(&self) -> Result<Option<State>, StateError> {
            Ok(self.stored.lock().unwrap().clone())
        }

        async fn save(&self, state: &State, _changed_app: &str) -> Result<(), StateError> {
            self.waiting.store(true, Ordering::SeqCst);
            let _open = self.gate.read().await;
            self.waiting.store(false, Ordering::SeqCst);
            *self.stored.lock().unwrap() = Some(state.clone());
            Ok(())
        }
    }

    const ONE_SLOT: &str = r#"
[admin]
insecure_no_auth = true
[[app]]
name = "shop"
[[app.slot]]
name = "production"
hosts = ["shop.test"]
instances = ["127.0.0.1:9"]
version = "v1"
"#;

    /// Yields to the other tasks of this current-thread runtime until `done`.
    async fn until(done: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the other task never got there");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_change_that_waited_for_a_reload_builds_on_the_reloaded_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("slotd.toml");
        std::fs::write(&file, ONE_SLOT).unwrap();
        let config = crate::config::load(&file).unwrap();
        let gate = Arc::new(tokio::sync::RwLock::new(()));
        let waiting = Arc::new(AtomicBool::new(false));
        let store = GatedStore {
            stored: Mutex::new(None),
            gate: gate.clone(),
            waiting: waiting.clone(),
        };
        let cp = ControlPlane::start(config, Box::new(store), Arc::new(Metrics::new()), true)
            .await
            .unwrap();

        // The reload adds a slot, so it writes the state: hold it there, with the
        // state lock taken.
        let with_staging = format!(
            "{ONE_SLOT}[[app.slot]]\nname = \"staging\"\nhosts = [\"staging.test\"]\ninstances = [\"127.0.0.1:10\"]\nversion = \"v2\"\n"
        );
        std::fs::write(&file, with_staging).unwrap();
        let closed = gate.write().await;
        let reload = tokio::spawn({
            let cp = cp.clone();
            async move { cp.reload().await }
        });
        until(|| waiting.load(Ordering::SeqCst)).await;
        // A routing change arrives meanwhile and waits for the state lock.
        let change = tokio::spawn({
            let cp = cp.clone();
            async move {
                cp.commit("shop", |_, st| {
                    st.pin_generation += 1;
                    Ok(())
                })
                .await
            }
        });
        // On this single-threaded runtime a yield runs the change's task until it
        // waits for the state lock (it reads nothing before); a few spare ones.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!change.is_finished());
        drop(closed);
        reload.await.unwrap().unwrap();
        change.await.unwrap().unwrap();

        let table = cp.routing().load_full();
        assert!(
            table.route(b"staging.test").is_some(),
            "the table published last lost the reloaded slot"
        );
        assert_eq!(cp.state().await.apps["shop"].pin_generation, 1);
    }
}
