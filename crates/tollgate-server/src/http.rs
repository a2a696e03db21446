//! The HTTP/JSON API (axum). Exact request and response shapes are in `docs/server.md`.
//!
//! | method | path | body | reply |
//! |---|---|---|---|
//! | POST | `/v1/check` | `{"policy"` or `"rates"[,"algorithm"]`, `"key"`, `"cost"?}` | decision + `RateLimit`, `RateLimit-Policy`, `Retry-After` headers |
//! | POST | `/v1/check` | `{"checks": [item, …]}`, each item as above | all-or-nothing over the items: `{"allowed", "denied_by_item", "decisions"}` |
//! | POST | `/v1/peek` | same | same, nothing charged |
//! | POST | `/v1/reset` | `{"policy"` or `"rates", "key"}` | `{"reset": true}` |
//! | POST | `/v1/refund` | `{"policy"` or `"rates", "key", "amount"}` | `{"refunded": n}` |
//! | GET | `/v1/policies` | | the named policies |
//! | POST | `/v1/semaphore/acquire` | `{"name", "permits"?, "lease_ms"?, "wait_ms"?}` | `{"acquired", "lease_id", "expires_in_ms"}` |
//! | POST | `/v1/semaphore/release` | `{"name", "lease_id"}` | `{"released"}` |
//! | POST | `/v1/semaphore/extend` | `{"name", "lease_id", "lease_ms"?}` | `{"extended", "expires_in_ms"}` |
//! | GET | `/v1/semaphores` | | configured semaphores and their use |
//! | GET | `/health` | | `{"status": "ok", …}` (liveness) |
//! | GET | `/ready` | | `{"status": "ready", …}`; 503 `{"status": "unavailable", "error": {"kind", "message"}, …}` when the store does not answer |
//! | GET | `/metrics` | | Prometheus text |

mod conn_io;
mod hot;
mod multi;
mod scan;
mod semaphores;
mod timer;

pub use conn_io::{ConnIo, HangUp};
pub use hot::{ConnService, Dispatch, DispatchBody, DispatchResponse};
pub use multi::MultiBody;
pub use semaphores::{SemaphoreRequest, SEMAPHORE_ACQUIRE_PATH};
pub use timer::ConnTimer;

use crate::app::{App, AppError, PolicyEntry};
use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// Shared handler state.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// The application.
    pub app: Arc<App>,
    /// Largest request body.
    pub max_body: usize,
    /// Time allowed to receive the body.
    pub request_timeout: Duration,
}

/// The body of `/v1/check`, `/v1/peek`, `/v1/reset`, `/v1/refund`.
///
/// ```
/// let r: tollgate_server::http::DecideRequest = serde_json::from_str(r#"{"policy":"api","key":"u1"}"#).unwrap();
/// assert_eq!(r.cost, None);
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    /// A named policy…
    pub policy: Option<String>,
    /// …or inline rates (`"10/s burst 20; 1000/hour"`).
    pub rates: Option<String>,
    /// With `rates`: the algorithm (default `gcra`).
    pub algorithm: Option<String>,
    /// The key (user id, IP, API token…).
    #[serde(default)]
    pub key: String,
    /// Units to decide (check/peek, default 1).
    pub cost: Option<u64>,
    /// Units to give back (refund).
    pub amount: Option<u64>,
    /// `/v1/check` and `/v1/peek`: several items (each with its policy or rates, key and
    /// cost) decided all-or-nothing in one store call, instead of the fields above.
    #[serde(default)]
    pub checks: Option<Vec<DecideRequest>>,
}

/// A decision as JSON.
///
/// ```
/// let d = tollgate::Decision::from_parts(true, 5, 4, 0, 200_000, None);
/// let body = tollgate_server::http::DecisionBody::new("api", &d, None);
/// assert_eq!(body.reset_after_ms, 200);
/// ```
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DecisionBody {
    /// The cost was admitted (and, for check, charged).
    pub allowed: bool,
    /// The binding rate's capacity.
    pub limit: u64,
    /// Left after this decision.
    pub remaining: u64,
    /// 0 when allowed; else milliseconds until the same cost can be admitted (rounded up).
    pub retry_after_ms: u64,
    /// Milliseconds until the key is completely fresh (rounded up).
    pub reset_after_ms: u64,
    /// Index of the denying rate in the policy, or null.
    pub denied_by: Option<usize>,
    /// The policy name (`inline` for inline rates).
    pub policy: String,
    /// Set when the store failed and the failure policy decided.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub store_error: Option<String>,
}

impl DecisionBody {
    /// Builds the JSON body of a decision.
    ///
    /// ```
    /// let d = tollgate::Decision::from_parts(false, 5, 0, 1_500, 1_000_000, Some(0));
    /// assert_eq!(tollgate_server::http::DecisionBody::new("p", &d, None).retry_after_ms, 2);
    /// ```
    pub fn new(policy: &str, d: &tollgate::Decision, store_error: Option<String>) -> Self {
        DecisionBody {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            retry_after_ms: d.retry_after.as_micros().div_ceil(1000) as u64,
            reset_after_ms: d.reset_after.as_micros().div_ceil(1000) as u64,
            denied_by: d.denied_by,
            policy: policy.to_string(),
            store_error,
        }
    }
}

struct ApiError(StatusCode, String);

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        let status = match &e {
            AppError::BadRequest(_) | AppError::TooManyPolicies(_) => StatusCode::BAD_REQUEST,
            AppError::UnknownPolicy(_) | AppError::UnknownSemaphore(_) => StatusCode::NOT_FOUND,
            AppError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::NOT_IMPLEMENTED,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if matches!(
            self.0,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            // The rest of the body was not read: the connection cannot carry another request,
            // and a client that does not hear so reuses it and loses that request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The router.
///
/// ```
/// let app = std::sync::Arc::new(tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap());
/// let router = tollgate_server::http::router(tollgate_server::http::HttpState {
///     app, max_body: 65536, request_timeout: std::time::Duration::from_secs(10) });
/// # let _ = router;
/// ```
pub fn router(state: HttpState) -> Router {
    let routes = Router::new()
        .route("/v1/check", post(check))
        .route("/v1/peek", post(peek))
        .route("/v1/reset", post(reset))
        .route("/v1/refund", post(refund))
        .route("/v1/policies", get(policies))
        .route(SEMAPHORE_ACQUIRE_PATH, post(semaphores::sem_acquire))
        .route("/v1/semaphore/release", post(semaphores::sem_release))
        .route("/v1/semaphore/extend", post(semaphores::sem_extend))
        .route("/v1/semaphores", get(semaphores::semaphores))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state);
    // Outside the routes, so the 405 responses already carry their `Allow` header.
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn(json_errors))
}

/// Makes every error response carry the documented JSON body `{"error": "…"}`: the
/// server's own errors already do; this rewrites the responses axum and its extractors
/// produce by themselves (405 Method Not Allowed with an empty body, 415, 422 and other
/// plain-text rejections), keeping their status and headers (such as `Allow`).
///
/// ```
/// use axum::{routing::post, Json, Router};
/// // A route with axum's JSON extractor: its 415 / 422 rejections now have a JSON body.
/// let app: Router = Router::new()
///     .route("/x", post(|Json(v): Json<u32>| async move { v.to_string() }))
///     .layer(axum::middleware::from_fn(tollgate_server::http::json_errors));
/// # let _ = app;
/// ```
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        format!("method {method} is not allowed on {path} (allowed: {allowed})")
    } else if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let body = json!({ "error": message }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such endpoint (see docs/server.md: POST /v1/check, /v1/peek, /v1/reset, /v1/refund; GET /v1/policies, /health, /metrics)".into(),
    )
}

async fn read_request<T, B>(state: &HttpState, body: B) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    parse_json(&read_body(state, body).await?)
}

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

async fn read_body<B>(state: &HttpState, body: B) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than {} bytes (or was cut off)",
                state.max_body
            ),
        )
    };
    let mut body = std::pin::pin!(Limited::new(body, state.max_body));
    // Usually the whole body came with the head, in one frame: then it is used as is (no
    // buffer list, no timer).
    let first = std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
    let first = match first {
        Poll::Ready(None) => return Ok(Bytes::new()),
        Poll::Ready(Some(Err(_))) => return Err(too_large()),
        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) if body.is_end_stream() => return Ok(data),
            Ok(data) => data,
            // Trailers carry no body bytes.
            Err(_) => Bytes::new(),
        },
        Poll::Pending => Bytes::new(),
    };
    // The rest is late: within the request timeout.
    match tokio::time::timeout(state.request_timeout, body.collect()).await {
        Err(_) => Err(ApiError(
            StatusCode::REQUEST_TIMEOUT,
            "the request body was not received in time".into(),
        )),
        Ok(Err(_)) => Err(too_large()),
        Ok(Ok(rest)) if first.is_empty() => Ok(rest.to_bytes()),
        Ok(Ok(rest)) => {
            let rest = rest.to_bytes();
            let mut all = Vec::with_capacity(first.len() + rest.len());
            all.extend_from_slice(&first);
            all.extend_from_slice(&rest);
            Ok(Bytes::from(all))
        }
    }
}

fn resolve(state: &HttpState, req: &DecideRequest) -> Result<Arc<PolicyEntry>, ApiError> {
    resolve_names(
        state,
        req.policy.as_deref(),
        req.rates.as_deref(),
        req.algorithm.as_deref(),
    )
}

fn resolve_names(
    state: &HttpState,
    policy: Option<&str>,
    rates: Option<&str>,
    algorithm: Option<&str>,
) -> Result<Arc<PolicyEntry>, ApiError> {
    match (policy, rates) {
        (Some(name), None) => {
            if algorithm.is_some() {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "\"algorithm\" goes with \"rates\", not with a named \"policy\"".into(),
                ));
            }
            Ok(state.app.named(name)?)
        }
        (None, Some(rates)) => Ok(state.app.inline(algorithm, rates)?),
        (Some(_), Some(_)) => Err(ApiError(
            StatusCode::BAD_REQUEST,
            "give either \"policy\" (a configured name) or \"rates\" (inline), not both".into(),
        )),
        (None, None) => Err(ApiError(
            StatusCode::BAD_REQUEST,
            "missing \"policy\" (a configured name) or \"rates\" (e.g. \"10/s burst 20\")".into(),
        )),
    }
}

async fn decide<B>(
    state: &HttpState,
    body: B,
    charge: bool,
) -> Result<hot::DispatchResponse, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let bytes = read_body(state, body).await?;
    // The common shape is scanned directly; serde parses everything else, once (and words the
    // errors).
    let owned: DecideRequest;
    let req = match scan::simple_request(&bytes) {
        Some(item) => item,
        None => {
            owned = parse_json(&bytes)?;
            if let Some(checks) = &owned.checks {
                let response = multi::decide_all(state, &owned, checks, charge).await?;
                return Ok(response.map(hot::DispatchBody::Right));
            }
            if owned.amount.is_some() {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "\"amount\" is for /v1/refund; use \"cost\"".into(),
                ));
            }
            scan::CheckItem::of(&owned)
        }
    };
    let entry = resolve_names(state, req.policy, req.rates, req.algorithm)?;
    let cost = req.cost.unwrap_or(1);
    let key = req.key;
    let outcome = if charge {
        state.app.check(&entry, key, cost).await?
    } else {
        state.app.peek(&entry, key, cost).await?
    };
    Ok(hot::decision_response(&entry, outcome))
}

async fn check(State(state): State<HttpState>, body: Body) -> Result<Response, ApiError> {
    Ok(decide(&state, body, true).await?.into_response())
}

async fn peek(State(state): State<HttpState>, body: Body) -> Result<Response, ApiError> {
    Ok(decide(&state, body, false).await?.into_response())
}

async fn reset(State(state): State<HttpState>, body: Body) -> Result<Response, ApiError> {
    let req: DecideRequest = read_request(&state, body).await?;
    let entry = resolve(&state, &req)?;
    state.app.reset(&entry, &req.key).await?;
    Ok(Json(json!({ "reset": true })).into_response())
}

async fn refund(State(state): State<HttpState>, body: Body) -> Result<Response, ApiError> {
    let req: DecideRequest = read_request(&state, body).await?;
    let entry = resolve(&state, &req)?;
    let amount = req.amount.ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "missing \"amount\" (units to give back)".into(),
        )
    })?;
    let refunded = state.app.refund(&entry, &req.key, amount).await?;
    Ok(Json(json!({ "refunded": refunded })).into_response())
}

async fn policies(State(state): State<HttpState>) -> Response {
    let list: Vec<_> = state
        .app
        .policies()
        .map(|p| {
            let policy = p.policy();
            json!({
                "name": p.name(),
                "algorithm": policy.algorithm().name(),
                "rates": policy.rates().iter().map(|r| json!({
                    "limit": r.limit(),
                    "period_ms": r.period_us().div_ceil(1000),
                    "burst": r.burst(),
                })).collect::<Vec<_>>(),
                "spec": policy.to_string(),
                "ratelimit_policy": p.rate_limit_policy(),
            })
        })
        .collect();
    Json(json!({ "policies": list })).into_response()
}

async fn health(State(state): State<HttpState>) -> Response {
    Json(json!({
        "status": "ok",
        "store": state.app.store_description(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

/// Readiness: 200 when the store answers, 503 with the cause when it does not (or the
/// store's circuit breaker is open). `/health` stays liveness.
async fn ready(State(state): State<HttpState>) -> Response {
    let r = state.app.readiness().await;
    let breaker = r.breaker.map(|b| b.as_str());
    match &r.cause {
        None => {
            Json(json!({ "status": "ready", "store": r.store, "breaker": breaker })).into_response()
        }
        Some(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "store": r.store,
                "breaker": breaker,
                "error": { "kind": e.kind.as_str(), "message": e.to_string() },
            })),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    match state.app.render_metrics() {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => ApiError(
            StatusCode::NOT_IMPLEMENTED,
            "metrics are not enabled in this process".into(),
        )
        .into_response(),
    }
}
