//! The state store: where swaps, deploys and swap history live durably.
//!
//! The config gives each slot its *initial* deployment; after that the store is the
//! truth, so a restart never undoes a swap. [`StateStore`] is the seam between the
//! control plane and the backend: `file` (embedded default) today, etcd for fleets
//! later. [`reconcile`] merges what the store holds with the config at start-up: new
//! slots are seeded from the config, a stored slot that the config dropped while it
//! still holds a deployment is refused.

mod file;

use async_trait::async_trait;
use std::path::PathBuf;

pub use file::FileStore;

use crate::config::{Config, StateConfig};
use crate::model::{
    now_rfc3339, AppState, Deployment, PhaseRecord, State, SwapRecord, SwapState, STATE_FORMAT,
};

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {path}: {reason} (check that slotd may read it; it was left untouched)")]
    Read { path: PathBuf, reason: String },
    #[error("the state file {path} is not valid slotd state: {reason} (it was left untouched: fix it, or move it away to start from the config's initial deployments)")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write the state file {path}: {reason} (check free space and that slotd may write to its folder)")]
    Write { path: PathBuf, reason: String },
    #[error("this slotd is shutting down or handing over to a new process: it stores no more state changes (make the change on the process that serves now)")]
    Sealed,
}

/// Durable storage of [`State`].
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Where the state lives, for messages.
    fn describe(&self) -> String;

    /// The stored state, or `None` when nothing has been stored yet.
    async fn load(&self) -> Result<Option<State>, StateError>;

    /// Durably stores `state`, in which the app `changed_app` changed. Returns only
    /// once the change would survive a crash; on error nothing is considered stored.
    async fn save(&self, state: &State, changed_app: &str) -> Result<(), StateError>;
}

/// Largest sequence number (ids, pin generation) a stored state may hold: far more
/// than any real use, and far from overflowing.
const MAX_SEQUENCE: u64 = 1 << 48;

/// Checks what a backend read before it is served: every deployment has instances and
/// a checkable id, and no sequence number is about to overflow. A hand-edited file
/// that fails this is refused like a corrupt one.
pub fn check_stored(state: &State) -> Result<(), String> {
    for (app, a) in &state.apps {
        for (name, value) in [
            ("next_deployment", a.next_deployment),
            ("next_swap", a.next_swap),
            ("pin_generation", a.pin_generation),
        ] {
            if value > MAX_SEQUENCE {
                return Err(format!(
                    "apps.{app}.{name} is {value}, over the largest allowed ({MAX_SEQUENCE})"
                ));
            }
        }
        for rec in a.history.iter().chain(a.pending_swap.as_ref()) {
            let seq = rec.id.strip_prefix('s').and_then(|n| n.parse::<u64>().ok());
            if seq.is_none_or(|n| n > MAX_SEQUENCE) {
                return Err(format!(
                    "apps.{app}: swap id `{}` is not s1..s{MAX_SEQUENCE}",
                    rec.id
                ));
            }
        }
        for (slot, d) in &a.slots {
            let Some(d) = d else { continue };
            if d.instances.is_empty() {
                return Err(format!(
                    "apps.{app}.slots.{slot}: deployment {} has no instances",
                    d.id
                ));
            }
            let seq = d.id.strip_prefix('d').and_then(|n| n.parse::<u64>().ok());
            if seq.is_none_or(|n| n > a.next_deployment) {
                return Err(format!(
                    "apps.{app}.slots.{slot}: deployment id `{}` is not one of d1..d{}",
                    d.id, a.next_deployment
                ));
            }
        }
    }
    Ok(())
}

/// Opens the store the config names.
pub fn open(config: &Config) -> Box<dyn StateStore> {
    match &config.state {
        StateConfig::File { path } => Box::new(FileStore::new(path.clone())),
    }
}

/// Merges stored state with the config. Returns the state to serve and whether it
/// differs from what was stored (so the caller saves it before serving).
/// Closes the swaps a stopped process left unfinished. A `running` swap never reached
/// its switch (the switch writes the swapped slots and the record in one atomic state
/// write), so routing never changed: it is moved to the history as `failed`, saying
/// so. A completed swap without an end time stopped during its settle: it keeps
/// `completed` with a failed `settle` phase. Returns the swaps it marked failed.
pub fn recover_interrupted(state: &mut State) -> Vec<SwapRecord> {
    let mut closed = Vec::new();
    for app_state in state.apps.values_mut() {
        // Switched, but stopped while warming the old pool (`settle`): the swap
        // happened; its record says the settle did not finish.
        for rec in &mut app_state.history {
            if rec.state == SwapState::Completed && rec.finished_at.is_none() {
                let now = now_rfc3339();
                rec.phases.push(PhaseRecord {
                    name: "settle".into(),
                    started_at: now.clone(),
                    duration_ms: 0,
                    ok: false,
                    detail: "interrupted: slotd stopped during the settle; the swap happened, the old pool may not be warm".into(),
                });
                rec.finished_at = Some(now);
            }
        }
        let Some(p) = &app_state.pending_swap else {
            continue;
        };
        if p.state != SwapState::Running {
            continue;
        }
        let mut rec = app_state.pending_swap.take().expect("checked above");
        rec.state = SwapState::Failed;
        rec.finished_at = Some(now_rfc3339());
        rec.error = Some(
            "interrupted: slotd stopped during the warm-up, before the switch; routing never changed (start the swap again)".into(),
        );
        app_state.record(rec.clone());
        closed.push(rec);
    }
    closed
}

pub fn reconcile(config: &Config, stored: Option<State>) -> Result<(State, bool), Vec<String>> {
    let mut changed = stored.is_none();
    let mut state = stored.unwrap_or_else(|| State {
        format: STATE_FORMAT,
        ..State::default()
    });
    let mut errors = Vec::new();
    for app in &config.apps {
        let app_state = state.apps.entry(app.name.clone()).or_insert_with(|| {
            changed = true;
            AppState::default()
        });
        for slot in &app.slots {
            if app_state.slots.contains_key(&slot.name) {
                continue;
            }
            changed = true;
            let deployment = slot.initial.as_ref().map(|init| {
                let mut settings = slot.settings.clone();
                settings.retain(|k, _| !slot.sticky_settings.contains(k));
                Deployment {
                    id: app_state.new_deployment_id(),
                    version: init.version.clone(),
                    instances: init.instances.clone(),
                    settings,
                    created_at: now_rfc3339(),
                }
            });
            app_state.slots.insert(slot.name.clone(), deployment);
        }
        let dropped: Vec<String> = app_state
            .slots
            .keys()
            .filter(|s| app.slot(s).is_none())
            .cloned()
            .collect();
        for slot in dropped {
            match app_state.deployment(&slot) {
                Some(d) => errors.push(format!(
                    "app `{}`: slot `{slot}` is not in the config but holds deployment {} ({}); add the slot back, or swap or move that deployment out first",
                    app.name, d.id, d.version
                )),
                None => {
                    app_state.slots.remove(&slot);
                    changed = true;
                }
            }
        }
    }
    if errors.is_empty() {
        Ok((state, changed))
    } else {
        Err(errors)
    }
}
