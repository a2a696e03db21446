//! The semaphore endpoints: `/v1/semaphore/acquire` (which can wait, and watches the
//! connection for a hang-up while it does), `/release`, `/extend` and `/v1/semaphores`.

use super::{read_request, ApiError, HangUp, HttpState};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// The body of `/v1/semaphore/acquire`, `/release` and `/extend`.
///
/// ```
/// let r: tollgate_server::http::SemaphoreRequest = serde_json::from_str(r#"{"name":"db"}"#).unwrap();
/// assert_eq!(r.permits, None);
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemaphoreRequest {
    /// A configured semaphore.
    pub name: String,
    /// Acquire: permits (default 1).
    pub permits: Option<u64>,
    /// Acquire / extend: the lease in ms (default: the semaphore's).
    pub lease_ms: Option<u64>,
    /// Acquire: how long to wait for permits, in ms (default 0, at most 60000).
    pub wait_ms: Option<u64>,
    /// Release / extend: the lease id from acquire.
    pub lease_id: Option<String>,
}

fn lease_id(req: &SemaphoreRequest) -> Result<&str, ApiError> {
    req.lease_id.as_deref().ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "missing \"lease_id\" (from /v1/semaphore/acquire)".into(),
        )
    })
}

fn ms(us: u64) -> u64 {
    us.div_ceil(1000)
}

/// The path of the semaphore acquire, the one request that can wait (the server gives it a
/// [`HangUp`] watcher).
pub const SEMAPHORE_ACQUIRE_PATH: &str = "/v1/semaphore/acquire";

/// The status of an acquire whose client hung up while it waited (nginx's "client closed
/// request"; nobody reads it, but hyper needs an answer to finish the connection).
const CLIENT_CLOSED_REQUEST: u16 = 499;

pub(super) async fn sem_acquire(
    State(state): State<HttpState>,
    hang_up: Option<axum::Extension<HangUp>>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: SemaphoreRequest = read_request(&state, body).await?;
    let wait = Duration::from_millis(req.wait_ms.unwrap_or(0));
    let acquire = state.app.sem_acquire(
        &req.name,
        req.permits.unwrap_or(1),
        req.lease_ms.map(Duration::from_millis),
        wait,
    );
    let outcome = match hang_up {
        // A wait ends early when the client hangs up: dropping the acquire leaves nothing
        // queued and nothing granted (a permit granted now would sit in a lease nobody
        // releases until it ends).
        Some(axum::Extension(hang_up)) if !wait.is_zero() => tokio::select! {
            outcome = acquire => outcome?,
            () = hang_up.closed() => {
                return Err(ApiError(
                    StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST),
                    "the client closed the connection while waiting: nothing was acquired".into(),
                ));
            }
        },
        _ => acquire.await?,
    };
    Ok(match outcome {
        crate::app::SemAcquire::Granted {
            lease_id,
            expires_in_us,
        } => Json(json!({
            "acquired": true,
            "lease_id": lease_id,
            "expires_in_ms": ms(expires_in_us),
        }))
        .into_response(),
        crate::app::SemAcquire::Busy {
            in_use,
            retry_after_us,
        } => {
            let mut headers = HeaderMap::new();
            if let Some(r) = retry_after_us {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(r.div_ceil(1_000_000)),
                );
            }
            (
                headers,
                Json(json!({
                    "acquired": false,
                    "in_use": in_use,
                    "retry_after_ms": retry_after_us.map(ms),
                })),
            )
                .into_response()
        }
    })
}

pub(super) async fn sem_release(
    State(state): State<HttpState>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: SemaphoreRequest = read_request(&state, body).await?;
    let released = state.app.sem_release(&req.name, lease_id(&req)?).await?;
    Ok(Json(json!({ "released": released })).into_response())
}

pub(super) async fn sem_extend(
    State(state): State<HttpState>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: SemaphoreRequest = read_request(&state, body).await?;
    let r = state
        .app
        .sem_extend(
            &req.name,
            lease_id(&req)?,
            req.lease_ms.map(Duration::from_millis),
        )
        .await?;
    Ok(Json(json!({ "extended": r.is_some(), "expires_in_ms": r.map(ms) })).into_response())
}

pub(super) async fn semaphores(State(state): State<HttpState>) -> Result<Response, ApiError> {
    let mut list = Vec::new();
    let specs: Vec<(String, crate::app::SemaphoreSpec)> = state
        .app
        .semaphores()
        .map(|(n, s)| (n.clone(), *s))
        .collect();
    for (name, spec) in specs {
        let status = state.app.sem_status(&name).await?;
        list.push(json!({
            "name": name,
            "capacity": spec.capacity,
            "lease_ms": spec.lease.as_millis() as u64,
            "in_use": status.in_use,
            "holders": status.holders,
            "waiting": status.waiting,
        }));
    }
    Ok(Json(json!({ "semaphores": list })).into_response())
}
