//! The swap engine.
//!
//! LIFECYCLE (one app at a time, under [`ControlPlane::begin`]):
//!
//! ```text
//! validate ─► apply-settings ─► warm-up ─┬─► switch ─► settle ─► completed
//!    │ 404/409/422                │ fail │
//!    ▼                            ▼      └─► (preview) ─► complete ─► switch ─► settle
//!  refused, no record          failed                   └─► cancel ─► cancelled
//! ```
//!
//! * `validate`: both slots exist and differ, the source holds a deployment, no swap of
//!   the app is under way or waiting in preview.
//! * `apply-settings`: the source pool is prepared to serve with the target slot's
//!   sticky properties: its warm-up requests carry the target's first hostname and
//!   sticky headers, and the table built at `switch` gives it the target's headers.
//! * `warm-up`: every source instance is sent warm-up requests directly; any failure
//!   stops the swap (`failed`, naming the instance). Routing never changed.
//! * `switch`: the two slots exchange deployments in the state store (durable first),
//!   then the new routing table is published. In-flight requests keep the table they
//!   started with; every new request sees the new one.
//! * `settle`: the old target pool, now in the source slot, is warmed with the source
//!   slot's properties. A failure here is reported in the phase, not reverted.
//!
//! A rollback is a swap of the same source and target as the last completed swap,
//! allowed only while the two slots still hold what that swap left there.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::config::{AppConfig, Config, SlotConfig};
use crate::control::{AppGuard, ControlPlane, OpError};
use crate::model::{
    now_rfc3339, AppState, Deployment, DeploymentRef, PhaseRecord, SwapRecord, SwapState,
    SwapTrigger,
};
use crate::routing::upstream_headers;
use crate::warmup::{fmt_duration, warm_up, WarmupPlan};

mod plan;
pub use plan::{plan, PoolMove, SwapPlan, WarmupView};

/// What a caller asks for.
#[derive(Debug, Clone)]
pub struct SwapRequest {
    pub source: String,
    pub target: String,
    pub preview: bool,
    pub trigger: SwapTrigger,
}

/// What validation found: the two slots and what they hold.
pub(crate) struct Plan {
    pub(crate) source: SlotConfig,
    pub(crate) target: SlotConfig,
    pub(crate) source_deployment: Deployment,
    pub(crate) target_deployment: Option<Deployment>,
}

/// Times one phase and turns it into a record.
struct PhaseTimer<'a> {
    cp: &'a ControlPlane,
    app: &'a str,
    name: &'static str,
    started_at: String,
    start: Instant,
}

impl<'a> PhaseTimer<'a> {
    fn start(cp: &'a ControlPlane, app: &'a str, name: &'static str) -> Self {
        PhaseTimer {
            cp,
            app,
            name,
            started_at: now_rfc3339(),
            start: Instant::now(),
        }
    }

    fn finish(self, ok: bool, detail: impl Into<String>) -> PhaseRecord {
        let detail = detail.into();
        let elapsed = self.start.elapsed();
        self.cp.metrics().swap_phase(self.app, self.name, elapsed);
        let duration_ms = elapsed.as_millis() as u64;
        if ok {
            tracing::info!(phase = self.name, duration_ms, ok, detail = %detail, "swap phase");
        } else {
            tracing::warn!(phase = self.name, duration_ms, ok, detail = %detail, "swap phase");
        }
        PhaseRecord {
            name: self.name.to_string(),
            started_at: self.started_at,
            duration_ms,
            ok,
            detail,
        }
    }
}

/// Runs a swap to its end: `completed`, `failed`, or `preview` when asked.
/// Refusals (unknown app or slot, a swap under way, nothing to swap) are errors and
/// leave no record.
pub async fn swap(cp: &ControlPlane, app: &str, req: SwapRequest) -> Result<SwapRecord, OpError> {
    let guard = cp.begin(
        app,
        format!("swap of `{}` into `{}`", req.source, req.target),
    )?;
    run_swap(cp, &guard, app, req, None).await
}

/// The auto-swap after a deploy to a slot with `auto_swap`, under the deploy's claim
/// on the app so nothing can slip in between. A refusal (say, a preview waiting) is
/// kept in the history as a `failed` swap, since no caller is waiting to hear it.
pub async fn auto_swap(
    cp: &ControlPlane,
    guard: &AppGuard<'_>,
    app: &str,
    source: &str,
    target: &str,
) {
    let req = SwapRequest {
        source: source.to_string(),
        target: target.to_string(),
        preview: false,
        trigger: SwapTrigger::AutoSwap,
    };
    if let Err(e) = run_swap(cp, guard, app, req.clone(), None).await {
        tracing::warn!(app, source, target, error = %e, "auto-swap refused");
        record_refusal(cp, app, &req, e.to_string()).await;
    }
}

/// Keeps a swap that was refused before it began as a `failed` record.
async fn record_refusal(cp: &ControlPlane, app: &str, req: &SwapRequest, why: String) {
    let now = now_rfc3339();
    let stored = cp
        .commit_without_routing(app, |_, st| {
            let rec = SwapRecord {
                id: st.upcoming_swap_id(),
                app: app.to_string(),
                source: req.source.clone(),
                target: req.target.clone(),
                state: SwapState::Failed,
                trigger: req.trigger,
                rollback_of: None,
                started_at: now.clone(),
                finished_at: Some(now.clone()),
                phases: vec![PhaseRecord {
                    name: "validate".into(),
                    started_at: now.clone(),
                    duration_ms: 0,
                    ok: false,
                    detail: why.clone(),
                }],
                error: Some(why.clone()),
                source_deployment: st.deployment(&req.source).map(DeploymentRef::from),
                target_deployment: st.deployment(&req.target).map(DeploymentRef::from),
            };
            st.record(rec);
            Ok(())
        })
        .await;
    if let Err(e) = stored {
        tracing::error!(app, error = %e, "the refused swap could not be recorded");
    }
    cp.metrics().swap_finished(app, "failed");
}

/// Swaps back the last completed swap of `app`.
pub async fn rollback(cp: &ControlPlane, app: &str) -> Result<SwapRecord, OpError> {
    let guard = cp.begin(app, "rollback")?;
    let (_, st) = cp.app(app).await?;
    let last = st
        .history
        .iter()
        .find(|r| r.state == SwapState::Completed)
        .ok_or_else(|| {
            OpError::Conflict(format!(
                "nothing to roll back: app `{app}` has no completed swap"
            ))
        })?
        .clone();
    // The slots must still hold what that swap left: the old target deployment in
    // the source slot and the old source deployment in the target slot.
    for (slot, expected) in [
        (&last.source, &last.target_deployment),
        (&last.target, &last.source_deployment),
    ] {
        let now = st.deployment(slot).map(DeploymentRef::from);
        if now.as_ref().map(|d| &d.id) != expected.as_ref().map(|d| &d.id) {
            return Err(OpError::Conflict(format!(
                "cannot roll back swap {}: slot `{slot}` now holds {}, not {} which that swap left there",
                last.id,
                describe(now.as_ref()),
                describe(expected.as_ref()),
            )));
        }
    }
    // Swapping the same two slots again exchanges their deployments back. If that
    // swap moved a pool into an empty slot, its source is empty now: go the other way.
    let (source, target) = if last.target_deployment.is_some() {
        (last.source.clone(), last.target.clone())
    } else {
        (last.target.clone(), last.source.clone())
    };
    let req = SwapRequest {
        source,
        target,
        preview: false,
        trigger: SwapTrigger::Rollback,
    };
    run_swap(cp, &guard, app, req, Some(last.id)).await
}

fn describe(d: Option<&DeploymentRef>) -> String {
    match d {
        Some(d) => format!("{} ({})", d.id, d.version),
        None => "nothing".into(),
    }
}

async fn run_swap(
    cp: &ControlPlane,
    _guard: &AppGuard<'_>,
    app: &str,
    req: SwapRequest,
    rollback_of: Option<String>,
) -> Result<SwapRecord, OpError> {
    let validate = PhaseTimer::start(cp, app, "validate");
    let (config, st) = cp.app(app).await?;
    let app_config = config.app(app).expect("checked by cp.app");
    let plan = validate_swap(app_config, &st, &req)?;
    let id = st.upcoming_swap_id();
    let span =
        tracing::info_span!("swap", app, swap_id = %id, source = %req.source, target = %req.target);
    async move {
        let mut rec = SwapRecord {
            id,
            app: app.to_string(),
            source: req.source.clone(),
            target: req.target.clone(),
            state: SwapState::Running,
            trigger: req.trigger,
            rollback_of,
            started_at: validate.started_at.clone(),
            finished_at: None,
            phases: Vec::new(),
            error: None,
            source_deployment: Some(DeploymentRef::from(&plan.source_deployment)),
            target_deployment: plan.target_deployment.as_ref().map(DeploymentRef::from),
        };
        rec.phases.push(validate.finish(
            true,
            format!(
                "{} ({}) in `{}` will go to `{}`, which holds {}",
                plan.source_deployment.id,
                plan.source_deployment.version,
                req.source,
                req.target,
                describe(rec.target_deployment.as_ref())
            ),
        ));

        // apply-settings
        let phase = PhaseTimer::start(cp, app, "apply-settings");
        let warm = warmup_plan(app_config, &plan.target, Some(&plan.source_deployment));
        let header_names: Vec<&str> = warm.headers.iter().map(|(k, _)| k.as_str()).collect();
        rec.phases.push(phase.finish(
            true,
            format!(
                "the source pool will serve `{}` as Host {} with sticky headers [{}]",
                req.target,
                warm.host,
                header_names.join(", ")
            ),
        ));

        // The swap is on record as running before the warm-up, the one long phase:
        // if slotd stops now, the next start finds it and closes it as failed.
        let running = rec.clone();
        cp.commit_without_routing(app, |_, st| {
            st.count_swap(&running.id);
            st.pending_swap = Some(running);
            Ok(())
        })
        .await?;

        // warm-up
        let phase = PhaseTimer::start(cp, app, "warm-up");
        if let Err(why) = run_warmup(cp, app, &plan.source_deployment, &warm).await {
            rec.phases.push(phase.finish(false, why.clone()));
            return Ok(fail(cp, rec, why).await);
        }
        rec.phases.push(phase.finish(
            true,
            format!(
                "{} instance(s) of {} answered {} on {}",
                plan.source_deployment.instances.len(),
                plan.source_deployment.id,
                accepted_text(app_config),
                warm.path
            ),
        ));

        if req.preview {
            rec.state = SwapState::Preview;
            let pending = rec.clone();
            let waiting = cp
                .commit_without_routing(app, |_, st| {
                    st.count_swap(&pending.id);
                    st.pending_swap = Some(pending);
                    Ok(())
                })
                .await;
            if let Err(e) = waiting {
                // It cannot wait in preview: it ends here, failed, routing unchanged.
                fail(cp, rec, format!("the preview could not be recorded: {e}")).await;
                return Err(e);
            }
            tracing::info!("swap waits in preview: complete or cancel it");
            return Ok(rec);
        }
        switch_and_settle(cp, app, rec).await
    }
    .instrument(span)
    .await
}

/// `POST .../swap/complete`: runs switch and settle for the swap in preview.
pub async fn complete(cp: &ControlPlane, app: &str) -> Result<SwapRecord, OpError> {
    let _guard = cp.begin(app, "completion of a swap preview")?;
    let (config, st, rec) = pending(cp, app, "complete").await?;
    let span = tracing::info_span!("swap", app, swap_id = %rec.id, source = %rec.source, target = %rec.target);
    async move {
        // The slots must still hold what the preview warmed.
        let app_config = config.app(app).expect("checked by cp.app");
        let unchanged = st.deployment(&rec.source).map(|d| &d.id)
            == rec.source_deployment.as_ref().map(|d| &d.id)
            && st.deployment(&rec.target).map(|d| &d.id)
                == rec.target_deployment.as_ref().map(|d| &d.id)
            && app_config.slot(&rec.source).is_some()
            && app_config.slot(&rec.target).is_some();
        if !unchanged {
            let mut rec = rec;
            let why = format!(
                "the slots changed since the preview: `{}` holds {} and `{}` holds {} now; start a new swap",
                rec.source,
                describe(st.deployment(&rec.source).map(DeploymentRef::from).as_ref()),
                rec.target,
                describe(st.deployment(&rec.target).map(DeploymentRef::from).as_ref()),
            );
            rec.phases
                .push(PhaseTimer::start(cp, app, "switch").finish(false, why.clone()));
            return Ok(fail(cp, rec, why).await);
        }
        switch_and_settle(cp, app, rec).await
    }
    .instrument(span)
    .await
}

/// The swap waiting in preview, or a conflict saying there is nothing to `verb`.
async fn pending(
    cp: &ControlPlane,
    app: &str,
    verb: &str,
) -> Result<(Arc<Config>, AppState, SwapRecord), OpError> {
    let (config, st) = cp.app(app).await?;
    let rec = st.pending_swap.clone().ok_or_else(|| {
        OpError::Conflict(format!(
            "nothing to {verb}: no swap of app `{app}` is waiting in preview"
        ))
    })?;
    if rec.state != SwapState::Preview {
        return Err(OpError::Conflict(format!(
            "nothing to {verb}: swap {} of app `{app}` is {}, not waiting in preview; wait for it to finish",
            rec.id,
            rec.state.as_str()
        )));
    }
    Ok((config, st, rec))
}

/// `POST .../swap/cancel`: ends the swap in preview; routing never changed.
pub async fn cancel(cp: &ControlPlane, app: &str) -> Result<SwapRecord, OpError> {
    let _guard = cp.begin(app, "cancellation of a swap preview")?;
    let (_, _, mut rec) = pending(cp, app, "cancel").await?;
    let span = tracing::info_span!("swap", app, swap_id = %rec.id, source = %rec.source, target = %rec.target);
    async move {
        rec.phases.push(
            PhaseTimer::start(cp, app, "cancel")
                .finish(true, "cancelled in preview; routing never changed"),
        );
        rec.state = SwapState::Cancelled;
        rec.finished_at = Some(now_rfc3339());
        let done = rec.clone();
        cp.commit_without_routing(app, |_, st| {
            st.pending_swap = None;
            st.record(done);
            Ok(())
        })
        .await?;
        cp.metrics().swap_finished(app, "cancelled");
        Ok(rec)
    }
    .instrument(span)
    .await
}

async fn switch_and_settle(
    cp: &ControlPlane,
    app: &str,
    mut rec: SwapRecord,
) -> Result<SwapRecord, OpError> {
    let phase = PhaseTimer::start(cp, app, "switch");
    let source_id = rec.source_deployment.as_ref().map(|d| d.id.clone());
    let target_id = rec.target_deployment.as_ref().map(|d| d.id.clone());
    let switched = {
        let mut rec_for_state = rec.clone();
        rec_for_state.state = SwapState::Completed;
        rec_for_state.phases.push(PhaseRecord {
            name: "switch".into(),
            started_at: phase.started_at.clone(),
            duration_ms: 0,
            ok: true,
            detail: "state written; routing published".into(),
        });
        let (source, target) = (rec.source.clone(), rec.target.clone());
        cp.commit(app, move |_, st| {
            let s = st.slots.get(&source).cloned().flatten();
            let t = st.slots.get(&target).cloned().flatten();
            if s.as_ref().map(|d| &d.id) != source_id.as_ref()
                || t.as_ref().map(|d| &d.id) != target_id.as_ref()
            {
                return Err(OpError::Conflict(
                    "the slots changed while the swap was warming up; nothing was switched: start the swap again".into(),
                ));
            }
            st.slots.insert(source, t);
            st.slots.insert(target, s);
            st.pending_swap = None;
            st.record(rec_for_state);
            Ok(())
        })
        .await
    };
    if let Err(e) = switched {
        let why = e.to_string();
        rec.phases.push(phase.finish(false, why.clone()));
        if matches!(e, OpError::Store(_)) {
            // Nothing was written and routing is unchanged: the swap ends, failed
            // (kept in memory at least), and the caller hears of the store.
            fail(cp, rec, why).await;
            return Err(e);
        }
        return Ok(fail(cp, rec, why).await);
    }
    rec.phases
        .push(phase.finish(true, "state written; routing published"));

    // settle: the old target pool now serves the source slot.
    let phase = PhaseTimer::start(cp, app, "settle");
    let (config, st) = cp.app(app).await?;
    let app_config = config.app(app).expect("checked by cp.app");
    let settle = match (st.deployment(&rec.source), app_config.slot(&rec.source)) {
        (Some(old_target), Some(source_slot)) => {
            let warm = warmup_plan(app_config, source_slot, Some(old_target));
            match run_warmup(cp, app, old_target, &warm).await {
                Ok(()) => phase.finish(
                    true,
                    format!("{} now serves `{}` and is warm", old_target.id, rec.source),
                ),
                Err(why) => phase.finish(
                    false,
                    format!(
                        "{} now serves `{}` but did not warm up: {why}",
                        old_target.id, rec.source
                    ),
                ),
            }
        }
        _ => phase.finish(
            true,
            format!("`{}` is now empty; nothing to warm", rec.source),
        ),
    };
    rec.phases.push(settle);
    rec.state = SwapState::Completed;
    rec.finished_at = Some(now_rfc3339());
    let done = rec.clone();
    if let Err(e) = cp
        .commit_outcome(app, |_, st| {
            replace_record(st, done);
            Ok(())
        })
        .await
    {
        tracing::error!(error = %e, "swap completed but its final record could not be stored");
    }
    cp.metrics().swap_finished(app, "completed");
    tracing::info!("swap completed");
    Ok(rec)
}

/// Records a failed swap in the history and returns its record.
async fn fail(cp: &ControlPlane, mut rec: SwapRecord, why: String) -> SwapRecord {
    rec.state = SwapState::Failed;
    rec.error = Some(why);
    rec.finished_at = Some(now_rfc3339());
    let done = rec.clone();
    let id = rec.id.clone();
    if let Err(e) = cp
        .commit_outcome(&rec.app, |_, st| {
            if st.pending_swap.as_ref().is_some_and(|p| p.id == id) {
                st.pending_swap = None;
            }
            st.record(done);
            Ok(())
        })
        .await
    {
        tracing::error!(error = %e, "swap failed and its record could not be stored");
    }
    cp.metrics().swap_finished(&rec.app, "failed");
    tracing::warn!(
        error = rec.error.as_deref().unwrap_or(""),
        "swap failed; routing unchanged"
    );
    rec
}

fn replace_record(st: &mut AppState, rec: SwapRecord) {
    match st.history.iter_mut().find(|r| r.id == rec.id) {
        Some(r) => *r = rec,
        None => st.record(rec),
    }
}

pub(crate) fn validate_swap(
    app: &AppConfig,
    st: &AppState,
    req: &SwapRequest,
) -> Result<Plan, OpError> {
    let slot = |name: &str, field: &str| {
        if name.is_empty() {
            return Err(OpError::Invalid(format!("{field}: name a slot")));
        }
        app.slot(name).cloned().ok_or_else(|| OpError::UnknownSlot {
            app: app.name.clone(),
            slot: name.to_string(),
        })
    };
    let source = slot(&req.source, "source")?;
    let target = slot(&req.target, "target")?;
    if source.name == target.name {
        return Err(OpError::Invalid(format!(
            "source and target are both `{}`; name two different slots",
            source.name
        )));
    }
    if let Some(p) = &st.pending_swap {
        return Err(OpError::Conflict(format!(
            "swap {} of `{}` into `{}` {}",
            p.id,
            p.source,
            p.target,
            match p.state {
                SwapState::Running => "is still running; wait for it to finish",
                _ => "is waiting in preview; complete or cancel it first",
            }
        )));
    }
    let source_deployment = st.deployment(&source.name).cloned().ok_or_else(|| {
        OpError::Conflict(format!(
            "source: slot `{}` holds no deployment; deploy to it first",
            source.name
        ))
    })?;
    let target_deployment = st.deployment(&target.name).cloned();
    Ok(Plan {
        source,
        target,
        source_deployment,
        target_deployment,
    })
}

/// Warm-up requests as `slot` would send them with `deployment` in it: its first
/// hostname, its sticky headers and its settings headers.
fn warmup_plan(app: &AppConfig, slot: &SlotConfig, deployment: Option<&Deployment>) -> WarmupPlan {
    let headers = upstream_headers(app, slot, deployment)
        .into_iter()
        .filter_map(|(k, v)| {
            Some((
                http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                http::HeaderValue::from_str(&v).ok()?,
            ))
        })
        .collect();
    WarmupPlan {
        path: app.warmup.path.clone(),
        host: slot.hosts.first().cloned().unwrap_or_default(),
        headers,
        config: app.warmup.clone(),
    }
}

fn accepted_text(app: &AppConfig) -> String {
    if app.warmup.statuses.is_empty() {
        "with a response".into()
    } else {
        format!("with one of {:?}", app.warmup.statuses)
    }
}

/// Warms a deployment; the error names every instance that failed and why.
async fn run_warmup(
    cp: &ControlPlane,
    app: &str,
    d: &Deployment,
    plan: &WarmupPlan,
) -> Result<(), String> {
    let results = warm_up(&d.instances, plan).await;
    let requests: u32 = results.iter().map(|r| r.attempts).sum();
    let successes: u32 = results.iter().map(|r| r.successes).sum();
    cp.metrics().warmup(
        app,
        requests.into(),
        requests.saturating_sub(successes).into(),
    );
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| {
            format!(
                "instance {} did not warm up: {}",
                r.address,
                r.error.as_deref().unwrap_or("unknown reason")
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} (warm-up: GET {} with Host {}, within {})",
            failed.join("; "),
            plan.path,
            plan.host,
            fmt_duration(plan.config.timeout)
        ))
    }
}
