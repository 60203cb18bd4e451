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
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::AppConfig;
use crate::control::{ControlPlane, DeployOutcome, OpError, ReloadError};
use crate::model::{AppState, Deployment, RoutingRule, SwapTrigger, PRODUCTION};
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
        .route("/v1/apps/{app}/slots/{slot}/settings", get(get_settings))
        .route("/v1/apps/{app}/routing", put(put_routing))
        .route("/v1/reload", post(post_reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .merge(v1)
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(read_body_in_time))
        .with_state(state)
}

/// How long a client may take to send a request body.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the whole request body (at most [`BODY_LIMIT`] bytes) within
/// [`BODY_TIMEOUT`] before any handler runs: a client that stops sending gets 408, one
/// that sends too much 413, and no handler ever waits on a slow client.
async fn read_body_in_time(req: Request, next: middleware::Next) -> Response {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, BODY_LIMIT);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {BODY_LIMIT} bytes"),
            )
            .into_response()
        }
        Ok(Err(e)) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the request body could not be read: {e}"),
            )
            .into_response()
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {}s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
            .into_response()
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
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
    let unauthorized =
        |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m).into_response();
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return unauthorized("missing `Authorization: Bearer TOKEN` header");
    };
    let value = value.to_str().unwrap_or("");
    let (scheme, given) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return unauthorized(
            "the Authorization header must use the Bearer scheme: `Authorization: Bearer TOKEN`",
        );
    }
    if !constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
        return unauthorized("wrong token");
    }
    next.run(req).await
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
        state.cp.render_metrics(),
    )
        .into_response()
}

// === bodies ===

/// Reads a JSON object body; every failure is a 422 (413 when too large) that says
/// what was wrong. Fields are then read one by one with [`Fields`], so a wrong type
/// names its field.
fn object_body(body: Result<Bytes, BytesRejection>) -> Result<Fields, ApiError> {
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
        return Err(ApiError::invalid("the body is empty; send a JSON object"));
    }
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
    match value {
        Value::Object(_) => {
            // JSON parsers keep the last of duplicate keys; refuse them instead.
            let UniqueKeys(map) = serde_json::from_slice(&body)
                .map_err(|e| ApiError::invalid(format!("the body is not valid: {e}")))?;
            Ok(Fields {
                map,
                seen: Vec::new(),
            })
        }
        other => Err(ApiError::invalid(format!(
            "the body must be a JSON object, not {}",
            json_type(&other)
        ))),
    }
}

/// A JSON object whose keys are unique.
struct UniqueKeys(serde_json::Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut map = serde_json::Map::new();
                while let Some((k, v)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate field `{k}`")));
                    }
                    map.insert(k, v);
                }
                Ok(UniqueKeys(map))
            }
        }
        d.deserialize_map(Visitor)
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The fields of a JSON object body, read by name with their types checked.
struct Fields {
    map: serde_json::Map<String, Value>,
    seen: Vec<&'static str>,
}

impl Fields {
    fn get(&mut self, name: &'static str) -> Option<&Value> {
        self.seen.push(name);
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn string(&mut self, name: &'static str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(ApiError::invalid(format!(
                "{name}: expected a string, found {}",
                json_type(other)
            ))),
        }
    }

    fn required_string(&mut self, name: &'static str) -> Result<String, ApiError> {
        self.string(name)?
            .ok_or_else(|| ApiError::invalid(format!("{name}: missing; it is required")))
    }

    fn boolean(&mut self, name: &'static str) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(ApiError::invalid(format!(
                "{name}: expected true or false, found {}",
                json_type(other)
            ))),
        }
    }

    fn strings(&mut self, name: &'static str) -> Result<Vec<String>, ApiError> {
        let Some(v) = self.get(name) else {
            return Err(ApiError::invalid(format!(
                "{name}: missing; it is required"
            )));
        };
        let Value::Array(items) = v else {
            return Err(ApiError::invalid(format!(
                "{name}: expected an array of strings, found {}",
                json_type(v)
            )));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(ApiError::invalid(format!(
                    "{name}[{i}]: expected a string, found {}",
                    json_type(other)
                ))),
            })
            .collect()
    }

    /// Refuses fields nobody asked for (typos must not pass silently).
    fn finish(self) -> Result<(), ApiError> {
        match self.map.keys().find(|k| !self.seen.contains(&k.as_str())) {
            Some(unknown) => Err(ApiError::invalid(format!(
                "unknown field `{unknown}`; the fields are: {}",
                self.seen.join(", ")
            ))),
            None => Ok(()),
        }
    }
}

fn path_params<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t)
        .map_err(|e| ApiError::invalid(format!("path: {e}")))
}

// === views ===

#[derive(Serialize)]
struct InstanceView {
    address: String,
    healthy: bool,
    /// Why it takes no traffic, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<&'static str>,
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

fn deployment_view(cp: &ControlPlane, app: &str, d: &Deployment) -> DeploymentView {
    DeploymentView {
        id: d.id.clone(),
        version: d.version.clone(),
        created_at: d.created_at.clone(),
        instances: d
            .instances
            .iter()
            .map(|a| {
                let health = cp.health(app, a);
                InstanceView {
                    address: a.clone(),
                    healthy: health.is_healthy(),
                    health: if health.is_checked_down() {
                        Some("down: failing active health checks")
                    } else if health.is_ejected() {
                        Some("ejected: consecutive failed requests")
                    } else {
                        None
                    },
                }
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
            deployment: st
                .deployment(&s.name)
                .map(|d| deployment_view(cp, &app.name, d)),
        })
        .collect()
}

fn app_view(cp: &ControlPlane, app: &AppConfig, st: &AppState) -> Value {
    json!({
        "name": app.name,
        "slots": slot_views(cp, app, st),
        "routing": {"rules": st.routing_rules, "pin_generation": st.pin_generation},
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
    p: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let app = path_params(p)?;
    let (config, st) = state.cp.app(&app).await?;
    let app_config = config.app(&app).expect("checked by cp.app");
    Ok(Json(app_view(&state.cp, app_config, &st)).into_response())
}

async fn put_deployment(
    State(state): State<AdminState>,
    p: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (app, slot) = path_params(p)?;
    // Unknown app or slot is a 404 even when the body is also wrong.
    let (config, _) = state.cp.app(&app).await?;
    if config.app(&app).and_then(|a| a.slot(&slot)).is_none() {
        return Err(OpError::UnknownSlot { app, slot }.into());
    }
    let mut fields = object_body(body)?;
    let version = fields.required_string("version")?;
    let instances = fields.strings("instances")?;
    fields.finish()?;
    let outcome = deploy_then_auto_swap(
        state.cp.clone(),
        app.clone(),
        slot.clone(),
        version,
        instances,
    )
    .await?;
    let (config, st) = state.cp.app(&app).await?;
    let app_config = config.app(&app).expect("checked by cp.app");
    let view = slot_views(&state.cp, app_config, &st)
        .into_iter()
        .find(|s| s.name == slot);
    let mut answer = serde_json::to_value(view).unwrap_or(Value::Null);
    // Show the deployment just made, even if the auto-swap has already moved it.
    answer["deployment"] =
        serde_json::to_value(deployment_view(&state.cp, &app, &outcome.deployment))
            .unwrap_or(Value::Null);
    if let Some(target) = outcome.auto_swap {
        answer["auto_swap_started"] = json!({"target": target});
    }
    Ok(Json(answer).into_response())
}

/// Runs an operation on its own task and waits for it. A client that goes away
/// drops this handler's future, but never an operation halfway through writing state.
async fn detached<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T, OpError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(op).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => {
            tracing::error!(error = %e, "admin operation task failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the operation failed unexpectedly; see the slotd log",
            ))
        }
    }
}

/// Deploys, answers, then runs the slot's auto-swap (if any) under the same claim on
/// the app, so no other operation can slip in between. The work runs on its own task:
/// a client that goes away does not stop it halfway.
async fn deploy_then_auto_swap(
    cp: Arc<ControlPlane>,
    app: String,
    slot: String,
    version: String,
    instances: Vec<String>,
) -> Result<DeployOutcome, OpError> {
    let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let guard = match cp.begin(&app, format!("deploy to `{slot}`")) {
            Ok(g) => g,
            Err(e) => {
                let _ = answer_tx.send(Err(e));
                return;
            }
        };
        let outcome = cp.deploy(&guard, &app, &slot, &version, &instances).await;
        let auto_swap = outcome.as_ref().ok().and_then(|o| o.auto_swap.clone());
        let _ = answer_tx.send(outcome);
        if let Some(target) = auto_swap {
            swap::auto_swap(&cp, &guard, &app, &slot, &target).await;
        }
    });
    answer_rx.await.unwrap_or_else(|_| {
        Err(OpError::Conflict(
            "the deploy task ended without an answer; see the slotd log".into(),
        ))
    })
}

async fn post_swap(
    State(state): State<AdminState>,
    p: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let app = path_params(p)?;
    state.cp.app(&app).await?;
    let mut fields = object_body(body)?;
    let source = fields.required_string("source")?;
    let target = fields
        .string("target")?
        .unwrap_or_else(|| PRODUCTION.to_string());
    let preview = fields.boolean("preview")?;
    let dry_run = fields.boolean("dry_run")?;
    fields.finish()?;
    if preview && dry_run {
        return Err(ApiError::invalid("preview and dry_run cannot both be true"));
    }
    let req = SwapRequest {
        source,
        target,
        preview,
        trigger: SwapTrigger::Api,
    };
    if dry_run {
        let plan = swap::plan(&state.cp, &app, &req).await?;
        return Ok(Json(plan).into_response());
    }
    let cp = state.cp.clone();
    let rec = detached(async move { swap::swap(&cp, &app, req).await }).await?;
    Ok(Json(rec).into_response())
}

async fn post_complete(
    State(state): State<AdminState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let app = path_params(p)?;
    let cp = state.cp.clone();
    let rec = detached(async move { swap::complete(&cp, &app).await }).await?;
    Ok(Json(rec).into_response())
}

async fn post_cancel(
    State(state): State<AdminState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let app = path_params(p)?;
    let cp = state.cp.clone();
    let rec = detached(async move { swap::cancel(&cp, &app).await }).await?;
    Ok(Json(rec).into_response())
}

async fn post_rollback(
    State(state): State<AdminState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let app = path_params(p)?;
    let cp = state.cp.clone();
    let rec = detached(async move { swap::rollback(&cp, &app).await }).await?;
    Ok(Json(rec).into_response())
}

/// `PUT /v1/apps/{app}/routing`: replaces the app's testing-in-production rules
/// (`{"rules": [{"slot", "percent"}], "reset_pins": false}`); stored durably.
async fn put_routing(
    State(state): State<AdminState>,
    p: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let app = path_params(p)?;
    let (config, _) = state.cp.app(&app).await?;
    let app_config = config.app(&app).expect("checked by cp.app");
    let mut fields = object_body(body)?;
    let rules = routing_rules(fields.get("rules"), app_config)?;
    let reset_pins = fields.boolean("reset_pins")?;
    let expected = match fields.get("expected_rules") {
        None => None,
        Some(v) => Some(
            serde_json::from_value::<Vec<RoutingRule>>(v.clone()).map_err(|e| {
                ApiError::invalid(format!(
                    "expected_rules: expected the rules as GET /v1/apps/{app} shows them: {e}"
                ))
            })?,
        ),
    };
    fields.finish()?;
    let stored = rules.clone();
    let (cp, name) = (state.cp.clone(), app.clone());
    let generation = detached(async move {
        cp.commit(&name, move |_, st| {
            if let Some(expected) = expected {
                if st.routing_rules != expected {
                    return Err(OpError::Conflict(format!(
                        "the routing rules changed since they were read (now {}); read them again and retry",
                        serde_json::to_string(&st.routing_rules).unwrap_or_default()
                    )));
                }
            }
            st.routing_rules = stored;
            if reset_pins {
                st.pin_generation = st.pin_generation.checked_add(1).ok_or_else(|| {
                    OpError::Invalid("reset_pins: the pin generation is at its maximum".into())
                })?;
            }
            Ok(st.pin_generation)
        })
        .await
    })
    .await?;
    tracing::info!(app, rules = ?rules, reset_pins, pin_generation = generation, "routing rules changed");
    Ok(Json(json!({"rules": rules, "pin_generation": generation})).into_response())
}

/// Checks `rules`: an array of `{slot, percent}` naming distinct slots of the app
/// other than production, percents 0-100 adding up to at most 100.
fn routing_rules(v: Option<&Value>, app: &AppConfig) -> Result<Vec<RoutingRule>, ApiError> {
    let Some(v) = v else {
        return Err(ApiError::invalid(
            "rules: missing; send [] to remove every rule",
        ));
    };
    let Value::Array(items) = v else {
        return Err(ApiError::invalid(format!(
            "rules: expected an array of {{\"slot\", \"percent\"}} objects, found {}",
            json_type(v)
        )));
    };
    let mut rules: Vec<RoutingRule> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let rule: RoutingRule = serde_json::from_value(item.clone()).map_err(|e| {
            ApiError::invalid(format!(
                "rules[{i}]: expected {{\"slot\": name, \"percent\": 0-100}}: {e}"
            ))
        })?;
        if app.slot(&rule.slot).is_none() {
            return Err(ApiError::invalid(format!(
                "rules[{i}].slot: app `{}` has no slot `{}`",
                app.name, rule.slot
            )));
        }
        if rule.slot == PRODUCTION {
            return Err(ApiError::invalid(format!(
                "rules[{i}].slot: production takes whatever the rules leave; name another slot"
            )));
        }
        if rule.percent > 100 {
            return Err(ApiError::invalid(format!(
                "rules[{i}].percent: {} is over 100",
                rule.percent
            )));
        }
        if rules.iter().any(|r| r.slot == rule.slot) {
            return Err(ApiError::invalid(format!(
                "rules[{i}].slot: `{}` has a rule already",
                rule.slot
            )));
        }
        rules.push(rule);
    }
    let total: u32 = rules.iter().map(|r| u32::from(r.percent)).sum();
    if total > 100 {
        return Err(ApiError::invalid(format!(
            "rules: the percents add up to {total}; at most 100"
        )));
    }
    Ok(rules)
}

/// `GET .../slots/{slot}/settings`: the settings the slot serves with now, each with
/// whether it is sticky (stays with the slot) and the request header that carries it
/// to upstreams (if any).
async fn get_settings(
    State(state): State<AdminState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    let (app, slot) = path_params(p)?;
    let (config, st) = state.cp.app(&app).await?;
    let app_config = config.app(&app).expect("checked by cp.app");
    let Some(slot_config) = app_config.slot(&slot) else {
        return Err(OpError::UnknownSlot { app, slot }.into());
    };
    let deployment = st.deployment(&slot);
    let settings: Vec<Value> = crate::routing::effective_settings(slot_config, deployment)
        .into_iter()
        .map(|(name, value)| {
            let header = app_config
                .settings_headers
                .iter()
                .find(|(s, _)| *s == name)
                .map(|(_, h)| h.clone());
            json!({
                "name": name,
                "value": value,
                "sticky": slot_config.sticky_settings.contains(&name),
                "header": header,
            })
        })
        .collect();
    Ok(Json(json!({
        "app": app,
        "slot": slot,
        "deployment": deployment.map(|d| &d.id),
        "settings": settings,
    }))
    .into_response())
}

/// `POST /v1/reload`: re-reads the config file (as SIGHUP does).
async fn post_reload(State(state): State<AdminState>) -> Response {
    let cp = state.cp.clone();
    match tokio::spawn(async move { cp.reload().await }).await {
        Ok(Ok(outcome)) => Json(json!({"reloaded": true, "outcome": outcome})).into_response(),
        Ok(Err(e)) => reload_error(e),
        Err(e) => {
            tracing::error!(error = %e, "reload task failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the reload failed unexpectedly; see the slotd log",
            )
            .into_response()
        }
    }
}

/// A refused reload: 422 with the `slotd check` errors one per line, 409 busy, 503
/// store down.
fn reload_error(e: ReloadError) -> Response {
    let (status, code, errors) = match &e {
        ReloadError::Invalid(errs) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            errs.0.iter().map(|e| e.to_string()).collect(),
        ),
        ReloadError::Mismatch(errs) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "config_does_not_fit_state",
            errs.clone(),
        ),
        ReloadError::Busy(_) => (StatusCode::CONFLICT, "conflict", Vec::new()),
        ReloadError::Store(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "state_store_unavailable",
            Vec::new(),
        ),
    };
    let body = json!({"error": {"code": code, "message": e.to_string(), "errors": errors}});
    (status, Json(body)).into_response()
}

async fn get_swaps(
    State(state): State<AdminState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let app = path_params(p)?;
    let (_, st) = state.cp.app(&app).await?;
    let mut swaps: Vec<&crate::model::SwapRecord> = Vec::with_capacity(st.history.len() + 1);
    swaps.extend(st.pending_swap.as_ref());
    swaps.extend(st.history.iter());
    Ok(Json(json!({ "swaps": swaps })).into_response())
}
