//! Dry runs: what a swap would do, computed without doing anything.

use std::collections::BTreeMap;

use super::{validate_swap, SwapRequest};
use crate::config::SlotConfig;
use crate::control::{ControlPlane, OpError};
use crate::model::{Deployment, DeploymentRef};
use crate::routing::{effective_settings, upstream_headers};

/// What a swap would do, computed without doing anything (`dry_run`).
#[derive(Debug, serde::Serialize)]
pub struct SwapPlan {
    pub dry_run: bool,
    pub app: String,
    pub source: String,
    pub target: String,
    /// Each pool and where it goes.
    pub moves: Vec<PoolMove>,
    /// The warm-up the source pool would get.
    pub warmup: WarmupView,
    /// Things worth a look before swapping, e.g. a sticky setting only one of the two
    /// slots has (the pool moving into the other would serve without it).
    pub warnings: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct PoolMove {
    pub deployment: Option<DeploymentRef>,
    pub from: String,
    pub to: String,
    /// Hostnames it would answer after the swap.
    pub hosts: Vec<String>,
    /// Upstream request headers it serves with now, and would serve with after.
    pub headers_before: BTreeMap<String, String>,
    pub headers_after: BTreeMap<String, String>,
    /// Effective settings it serves with now, and would serve with after.
    pub settings_before: BTreeMap<String, String>,
    pub settings_after: BTreeMap<String, String>,
}

#[derive(Debug, serde::Serialize)]
pub struct WarmupView {
    pub path: String,
    pub host: String,
    pub statuses: Vec<u16>,
    pub instances: Vec<String>,
}

/// Validates a swap and describes it; changes nothing.
pub async fn plan(cp: &ControlPlane, app: &str, req: &SwapRequest) -> Result<SwapPlan, OpError> {
    let (config, st) = cp.app(app).await?;
    let app_config = config.app(app).expect("checked by cp.app");
    let plan = validate_swap(app_config, &st, req)?;
    let headers = |slot: &SlotConfig, d: Option<&Deployment>| -> BTreeMap<String, String> {
        upstream_headers(app_config, slot, d).into_iter().collect()
    };
    let (source_d, target_d) = (
        Some(&plan.source_deployment),
        plan.target_deployment.as_ref(),
    );
    let moves = vec![
        PoolMove {
            deployment: Some(DeploymentRef::from(&plan.source_deployment)),
            from: plan.source.name.clone(),
            to: plan.target.name.clone(),
            hosts: plan.target.hosts.clone(),
            headers_before: headers(&plan.source, source_d),
            headers_after: headers(&plan.target, source_d),
            settings_before: effective_settings(&plan.source, source_d),
            settings_after: effective_settings(&plan.target, source_d),
        },
        PoolMove {
            deployment: target_d.map(DeploymentRef::from),
            from: plan.target.name.clone(),
            to: plan.source.name.clone(),
            hosts: plan.source.hosts.clone(),
            headers_before: headers(&plan.target, target_d),
            headers_after: headers(&plan.source, target_d),
            settings_before: effective_settings(&plan.target, target_d),
            settings_after: effective_settings(&plan.source, target_d),
        },
    ];
    let warnings = sticky_warnings(&plan.source, &plan.target);
    Ok(SwapPlan {
        dry_run: true,
        app: app.to_string(),
        source: plan.source.name.clone(),
        target: plan.target.name.clone(),
        moves,
        warmup: WarmupView {
            path: app_config.warmup.path.clone(),
            host: plan.target.hosts.first().cloned().unwrap_or_default(),
            statuses: app_config.warmup.statuses.clone(),
            instances: plan.source_deployment.instances.clone(),
        },
        warnings,
    })
}

/// A sticky setting one slot of the pair has and the other lacks: after the swap,
/// the pool moving into the slot without it serves without that setting.
fn sticky_warnings(a: &SlotConfig, b: &SlotConfig) -> Vec<String> {
    let mut out = Vec::new();
    for (has, lacks) in [(a, b), (b, a)] {
        for key in &has.sticky_settings {
            if !lacks.sticky_settings.contains(key) {
                out.push(format!(
                    "sticky setting `{key}` is set on slot `{}` but not on `{}`: the pool moving into `{}` will serve without it",
                    has.name, lacks.name, lacks.name
                ));
            }
        }
    }
    out
}
