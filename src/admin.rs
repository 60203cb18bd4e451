//! The admin API: JSON over HTTP on the admin listener.
//!
//! | method and path                              | answer                                   |
//! |----------------------------------------------|------------------------------------------|
//! | `GET /healthz`                               | 200 `ok` (no token)                      |
//! | `GET /metrics`                               | 200 Prometheus text (no token)           |
//! | `GET /v1/apps`                               | 200 `{apps: [app]}`                      |
//! | `GET /v1/apps/{app}`                         | 200 app; 404                             |
//! | `PUT /v1/apps/{app}/slots/{slot}/deployment` | 200 slot; 404, 409, 422, 503             |
//! | `POST /v1/apps/{app}/swap`                   | 200 swap record or plan; 404, 409, 422   |
//! | `POST /v1/apps/{app}/swap/complete`          | 200 swap record; 404, 409                |
//! | `POST /v1/apps/{app}/swap/cancel`            | 200 swap record; 404, 409                |
//! | `POST /v1/apps/{app}/rollback`               | 200 swap record; 404, 409                |
//! | `GET /v1/apps/{app}/swaps`                   | 200 `{swaps: [record]}` newest first     |
//!
//! Every `/v1` route needs `Authorization: Bearer TOKEN` (401 otherwise). Errors are
//! `{"error": {"code", "message"}}`. Bodies are parsed by hand from bytes so that every
//! malformed body gets a 422 that names the field, and are limited to 64 KiB (413).
//! Handlers never panic on input; internal details are logged, not returned.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::AppConfig;
use crate::control::{ControlPlane, OpError};
use crate::model::{AppState, Deployment, SwapTrigger, PRODUCTION};
use crate::swap::{self, SwapRequest};

/// Largest request body the admin API reads.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AdminState {
    pub cp: Arc<ControlPlane>,
    /// `None` only with `insecure_no_auth` on a loopback listener.
    pub token: Option<Arc<str>>,
}

/// An error answer: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        let (status, code) = match &e {
            OpError::UnknownApp(_) | OpError::UnknownSlot { .. } => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            OpError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            OpError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            OpError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "state_store_unavailable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// The admin router. Served by a background service of the Pingora server; tests
/// drive it directly with `oneshot`.
pub fn router(state: AdminState) -> Router {
    let v1 = Router::new()
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{app}", get(get_app))
        .route(
            "/v1/apps/{app}/slots/{slot}/deployment",
            put(put_deployment),
        )
        .route("/v1/apps/{app}/swap", post(post_swap))
        .route("/v1/apps/{app}/swap/complete", post(post_complete))
        .route("/v1/apps/{app}/swap/cancel", post(post_cancel))
        .route("/v1/apps/{app}/rollback", post(post_rollback))
        .route("/v1/apps/{app}/swaps", get(get_swaps))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .merge(v1)
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no admin route {method} {}; the routes are listed in the README",
            uri.path()
        ),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not accept {method}", uri.path()),
    )
}

async fn require_token(
    State(state): State<AdminState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(req).await;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer TOKEN` header",
        )
        .into_response(),
        Some(t) if !constant_time_eq(t.trim().as_bytes(), token.as_bytes()) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong token").into_response()
        }
        Some(_) => next.run(req).await,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.cp.metrics().render(),
    )
        .into_response()
}

// === bodies ===

/// Parses a JSON body; every failure is a 422 naming what was wrong.
fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    allow_empty: bool,
) -> Result<Option<T>, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {BODY_LIMIT} bytes"),
            )
        } else {
            ApiError::invalid(format!("cannot read the body: {e}"))
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        if allow_empty {
            return Ok(None);
        }
        return Err(ApiError::invalid("the body is empty; send a JSON object"));
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| ApiError::invalid(format!("body: {e}")))
}

fn path_params<T>(
    p: Result<Path<T>, axum::extract::rejection::PathRejection>,
) -> Result<T, ApiError> {
    p.map(|Path(t)| t)
        .map_err(|e| ApiError::invalid(format!("path: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentBody {
    version: String,
    instances: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwapBody {
    source: String,
    #[serde(default = "production")]
    target: String,
    #[serde(default)]
    preview: bool,
    #[serde(default)]
    dry_run: bool,
}

fn production() -> String {
    PRODUCTION.to_string()
}

// === views ===

#[derive(Serialize)]
struct InstanceView {
    address: String,
    healthy: bool,
}

#[derive(Serialize)]
struct DeploymentView {
    id: String,
    version: String,
    created_at: String,
    instances: Vec<InstanceView>,
}

#[derive(Serialize)]
struct SlotView {
    name: String,
    hosts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_swap: Option<String>,
    deployment: Option<DeploymentView>,
}

fn deployment_view(cp: &ControlPlane, d: &Deployment) -> DeploymentView {
    DeploymentView {
        id: d.id.clone(),
        version: d.version.clone(),
        created_at: d.created_at.clone(),
        instances: d
            .instances
            .iter()
            .map(|a| InstanceView {
                address: a.clone(),
                healthy: cp.health(a).is_healthy(),
            })
            .collect(),
    }
}

fn slot_views(cp: &ControlPlane, app: &AppConfig, st: &AppState) -> Vec<SlotView> {
    app.slots
        .iter()
        .map(|s| SlotView {
            name: s.name.clone(),
            hosts: s.hosts.clone(),
            auto_swap: s.auto_swap.clone(),
            deployment: st.deployment(&s.name).map(|d| deployment_view(cp, d)),
        })
        .collect()
}

fn app_view(cp: &ControlPlane, app: &AppConfig, st: &AppState) -> Value {
    json!({
        "name": app.name,
        "slots": slot_views(cp, app, st),
        "routing": {"rules": []},
        "current_swap": st.pending_swap,
    })
}

// === handlers ===

async fn list_apps(State(state): State<AdminState>) -> ApiResult {
    let config = state.cp.config();
    let all = state.cp.state().await;
    let empty = AppState::default();
    let apps: Vec<Value> = config
        .apps
        .iter()
        .map(|a| app_view(&state.cp, a, all.apps.get(&a.name).unwrap_or(&empty)))
        .collect();
    Ok(Json(json!({ "apps": apps })).into_response())
}

async fn get_app(
    State(state): State<AdminState>,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult {
    let app = path_params(p)?;
    let (config, st) = state.cp.app(&app).await?;
    let app_config = config.app(&app).expect("checked by cp.app");
    Ok(Json(app_view(&state.cp, app_config, &st)).into_response())
}

async fn put_deployment(
    State(state): State<AdminState>,
    p: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (app, slot) = path_params(p)?;
    // Unknown app or slot is a 404 even when the body is also wrong.
    let (config, _) = state.cp.app(&app).await?;
    if config.app(&app).and_then(|a| a.slot(&slot)).is_none() {
        return Err(OpError::UnknownSlot { app, slot }.into());
    }
    let body: DeploymentBody = parse_body(body, false)?.expect("empty bodies are refused");
    let outcome = state
        .cp
        .deploy(&app, &slot, &body.version, &body.instances)
        .await?;
    let (config, st) = state.cp.app(&app).await?;
    let app_config = config.app(&app).expect("checked by cp.app");
    let view = slot_views(&state.cp, app_config, &st)
        .into_iter()
        .find(|s| s.name == slot);
    let mut answer = serde_json::to_value(view).unwrap_or(Value::Null);
    if let Some(target) = outcome.auto_swap {
        let cp = state.cp.clone();
        let req = SwapRequest {
            source: slot.clone(),
            target: target.clone(),
            preview: false,
            trigger: SwapTrigger::AutoSwap,
        };
        let app_name = app.clone();
        tokio::spawn(async move {
            if let Err(e) = swap::swap(&cp, &app_name, req).await {
                tracing::warn!(app = %app_name, error = %e, "auto-swap was not started");
            }
        });
        answer["auto_swap_started"] = json!({"target": target});
    }
    Ok(Json(answer).into_response())
}

async fn post_swap(
    State(state): State<AdminState>,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let app = path_params(p)?;
    state.cp.app(&app).await?;
    let body: SwapBody = parse_body(body, false)?.expect("empty bodies are refused");
    if body.preview && body.dry_run {
        return Err(ApiError::invalid("preview and dry_run cannot both be true"));
    }
    let req = SwapRequest {
        source: body.source,
        target: body.target,
        preview: body.preview,
        trigger: SwapTrigger::Api,
    };
    if body.dry_run {
        let plan = swap::plan(&state.cp, &app, &req).await?;
        return Ok(Json(plan).into_response());
    }
    let rec = swap::swap(&state.cp, &app, req).await?;
    Ok(Json(rec).into_response())
}

async fn post_complete(
    State(state): State<AdminState>,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult {
    let app = path_params(p)?;
    Ok(Json(swap::complete(&state.cp, &app).await?).into_response())
}

async fn post_cancel(
    State(state): State<AdminState>,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult {
    let app = path_params(p)?;
    Ok(Json(swap::cancel(&state.cp, &app).await?).into_response())
}

async fn post_rollback(
    State(state): State<AdminState>,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult {
    let app = path_params(p)?;
    Ok(Json(swap::rollback(&state.cp, &app).await?).into_response())
}

async fn get_swaps(
    State(state): State<AdminState>,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult {
    let app = path_params(p)?;
    let (_, st) = state.cp.app(&app).await?;
    let mut swaps: Vec<&crate::model::SwapRecord> = Vec::with_capacity(st.history.len() + 1);
    swaps.extend(st.pending_swap.as_ref());
    swaps.extend(st.history.iter());
    Ok(Json(json!({ "swaps": swaps })).into_response())
}
