//! Dry runs: what a swap would do, computed without doing anything.

use std::collections::BTreeMap;

use super::{validate_swap, SwapRequest};
use crate::config::SlotConfig;
use crate::control::{ControlPlane, OpError};
use crate::model::{Deployment, DeploymentRef};
use crate::routing::upstream_headers;

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
    let moves = vec![
        PoolMove {
            deployment: Some(DeploymentRef::from(&plan.source_deployment)),
            from: plan.source.name.clone(),
            to: plan.target.name.clone(),
            hosts: plan.target.hosts.clone(),
            headers_before: headers(&plan.source, Some(&plan.source_deployment)),
            headers_after: headers(&plan.target, Some(&plan.source_deployment)),
        },
        PoolMove {
            deployment: plan.target_deployment.as_ref().map(DeploymentRef::from),
            from: plan.target.name.clone(),
            to: plan.source.name.clone(),
            hosts: plan.source.hosts.clone(),
            headers_before: headers(&plan.target, plan.target_deployment.as_ref()),
            headers_after: headers(&plan.source, plan.target_deployment.as_ref()),
        },
    ];
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
    })
}
