//! Concurrency limits: at most N requests in flight per key.
//!
//! [`ConcurrencyLimitLayer`] counts requests in flight per key (peer IP, API key, route…) and
//! answers `429` (or `503`, configurable) with a problem+json body when a key is full. A
//! request's slot is held until its response body has been sent completely (or dropped), not
//! only until the handler returns, so streaming responses count as in flight.
//!
//! The counting is behind the [`InFlightLimit`] trait. The implementation shipped here is
//! [`LocalInFlight`], a per-key counter map in this process whose entries exist only while a
//! key has requests in flight (so it cannot grow beyond the number of concurrent requests).
//! A distributed semaphore (e.g. `tollgate::Semaphore` on Redis) can be plugged in by
//! implementing the trait.
//!
//! ```
//! use tollgate_tower::concurrency::{ConcurrencyLimitLayer, LocalInFlight};
//! use tollgate_tower::key::PeerIp;
//! let layer = ConcurrencyLimitLayer::new("in-flight", LocalInFlight::new(4), PeerIp::new())
//!     .when_full(http::StatusCode::SERVICE_UNAVAILABLE);
//! // app = axum::Router::new().route(...).layer(layer);
//! # let _ = layer;
//! ```

use crate::body::ResponseBody;
use crate::headers::Problem;
pub use crate::inflight::InFlightPermit;
use crate::key::KeyExtractor;
use crate::layer::{MissingKey, ResponseFuture, Verdict};
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// Counts requests in flight per key.
///
/// ```
/// use tollgate_tower::concurrency::{InFlightLimit, LocalInFlight};
/// let limit = LocalInFlight::new(3);
/// assert_eq!(limit.capacity(), 3);
/// ```
pub trait InFlightLimit: Send + Sync + 'static {
    /// Takes a slot for `key`: `Ok(Some(permit))` when one was free, `Ok(None)` when the key
    /// is full, `Err` when the backing store failed.
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<InFlightPermit>, tollgate::Error>>;

    /// The number of slots per key.
    fn capacity(&self) -> u64;
}

/// In-process per-key in-flight counters (a `HashMap<key, count>` behind a lock; a key's
/// entry is removed when its last request finishes). Clones share the counters.
///
/// ```
/// use tollgate_tower::concurrency::{InFlightLimit, LocalInFlight};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let limit = LocalInFlight::new(2);
/// let a = limit.try_acquire("k").await.unwrap();
/// let b = limit.try_acquire("k").await.unwrap();
/// assert!(a.is_some() && b.is_some());
/// assert_eq!(limit.in_flight("k"), 2);
/// drop((a, b));
/// assert_eq!(limit.in_flight("k"), 0);
/// assert_eq!(limit.tracked_keys(), 0);
/// # });
/// ```
#[derive(Clone)]
pub struct LocalInFlight {
    max: u64,
    counts: Arc<Mutex<HashMap<String, u64>>>,
}

impl fmt::Debug for LocalInFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalInFlight")
            .field("max", &self.max)
            .field("tracked_keys", &self.tracked_keys())
            .finish()
    }
}

impl LocalInFlight {
    /// At most `max` requests in flight per key (`max` of 0 admits nothing).
    ///
    /// ```
    /// let _ = tollgate_tower::concurrency::LocalInFlight::new(8);
    /// ```
    pub fn new(max: u64) -> Self {
        Self {
            max,
            counts: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Requests in flight for `key` now.
    ///
    /// ```
    /// assert_eq!(tollgate_tower::concurrency::LocalInFlight::new(1).in_flight("k"), 0);
    /// ```
    pub fn in_flight(&self, key: &str) -> u64 {
        self.counts.lock().get(key).copied().unwrap_or(0)
    }

    /// Keys with at least one request in flight.
    ///
    /// ```
    /// assert_eq!(tollgate_tower::concurrency::LocalInFlight::new(1).tracked_keys(), 0);
    /// ```
    pub fn tracked_keys(&self) -> usize {
        self.counts.lock().len()
    }

    fn acquire_now(&self, key: &str) -> Option<InFlightPermit> {
        let mut counts = self.counts.lock();
        let current = counts.get(key).copied().unwrap_or(0);
        if current >= self.max {
            return None;
        }
        counts.insert(key.to_string(), current + 1);
        Some(InFlightPermit::new(LocalSlot {
            counts: Arc::clone(&self.counts),
            key: key.to_string(),
        }))
    }
}

struct LocalSlot {
    counts: Arc<Mutex<HashMap<String, u64>>>,
    key: String,
}

impl Drop for LocalSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl InFlightLimit for LocalInFlight {
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<InFlightPermit>, tollgate::Error>> {
        let permit = self.acquire_now(key);
        Box::pin(std::future::ready(Ok(permit)))
    }

    fn capacity(&self) -> u64 {
        self.max
    }
}

struct ConcurrencyState {
    name: Arc<str>,
    limit: Arc<dyn InFlightLimit>,
    extractor: Arc<dyn KeyExtractor>,
    full_status: StatusCode,
    missing_key: MissingKey,
    retry_after_secs: Option<u64>,
}

/// A `tower::Layer` that limits requests in flight per key. Clones share the counters.
///
/// ```
/// use tollgate_tower::concurrency::{ConcurrencyLimitLayer, LocalInFlight};
/// use tollgate_tower::key::Global;
/// use tower::{Service, ServiceExt};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let limit = LocalInFlight::new(1);
/// let layer = ConcurrencyLimitLayer::new("one-at-a-time", limit.clone(), Global);
/// let handler = tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
/// });
/// let mut svc = tower_layer::Layer::layer(&layer, handler);
/// let response = svc.ready().await.unwrap().call(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(limit.in_flight("global"), 1); // held until the body is done
/// drop(response);
/// assert_eq!(limit.in_flight("global"), 0);
/// # });
/// ```
#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    state: Arc<ConcurrencyState>,
}

impl fmt::Debug for ConcurrencyLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("name", &self.state.name)
            .field("capacity", &self.state.limit.capacity())
            .field("full_status", &self.state.full_status)
            .finish_non_exhaustive()
    }
}

impl ConcurrencyLimitLayer {
    /// Limits requests in flight per key (from `extractor`) with `limit`. `name` labels the
    /// metrics and problem bodies. Full keys get 429 by default.
    ///
    /// ```
    /// use tollgate_tower::concurrency::{ConcurrencyLimitLayer, LocalInFlight};
    /// let _ = ConcurrencyLimitLayer::new("uploads", LocalInFlight::new(2), tollgate_tower::key::PeerIp::new());
    /// ```
    pub fn new(
        name: impl Into<String>,
        limit: impl InFlightLimit,
        extractor: impl KeyExtractor,
    ) -> Self {
        Self {
            state: Arc::new(ConcurrencyState {
                name: name.into().into(),
                limit: Arc::new(limit),
                extractor: Arc::new(extractor),
                full_status: StatusCode::TOO_MANY_REQUESTS,
                missing_key: MissingKey::default(),
                retry_after_secs: None,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut ConcurrencyState)) -> Self {
        match Arc::get_mut(&mut self.state) {
            Some(state) => f(state),
            None => {
                let s = &self.state;
                let mut copy = ConcurrencyState {
                    name: Arc::clone(&s.name),
                    limit: Arc::clone(&s.limit),
                    extractor: Arc::clone(&s.extractor),
                    full_status: s.full_status,
                    missing_key: s.missing_key.clone(),
                    retry_after_secs: s.retry_after_secs,
                };
                f(&mut copy);
                self.state = Arc::new(copy);
            }
        }
        self
    }

    /// The status when a key is full: 429 (default) or 503. Any other 4xx/5xx is accepted
    /// too; a status that is not an error is ignored (the default stays).
    ///
    /// ```
    /// use tollgate_tower::concurrency::{ConcurrencyLimitLayer, LocalInFlight};
    /// let _ = ConcurrencyLimitLayer::new("c", LocalInFlight::new(2), tollgate_tower::key::Global)
    ///     .when_full(http::StatusCode::SERVICE_UNAVAILABLE);
    /// ```
    pub fn when_full(self, status: StatusCode) -> Self {
        if !(status.is_client_error() || status.is_server_error()) {
            return self;
        }
        self.edit(|s| s.full_status = status)
    }

    /// Adds `Retry-After: secs` to the answers for full keys (default: none).
    ///
    /// ```
    /// use tollgate_tower::concurrency::{ConcurrencyLimitLayer, LocalInFlight};
    /// let _ = ConcurrencyLimitLayer::new("c", LocalInFlight::new(2), tollgate_tower::key::Global).retry_after(1);
    /// ```
    pub fn retry_after(self, secs: u64) -> Self {
        self.edit(|s| s.retry_after_secs = Some(secs))
    }

    /// What to do when the key cannot be extracted (default: 400 with problem+json).
    ///
    /// ```
    /// use tollgate_tower::{concurrency::{ConcurrencyLimitLayer, LocalInFlight}, layer::MissingKey};
    /// let _ = ConcurrencyLimitLayer::new("c", LocalInFlight::new(2), tollgate_tower::key::PeerIp::new())
    ///     .on_missing_key(MissingKey::Skip);
    /// ```
    pub fn on_missing_key(self, missing_key: MissingKey) -> Self {
        self.edit(|s| s.missing_key = missing_key)
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

/// The service made by [`ConcurrencyLimitLayer`].
///
/// ```
/// use tollgate_tower::concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer, LocalInFlight};
/// let layer = ConcurrencyLimitLayer::new("c", LocalInFlight::new(2), tollgate_tower::key::Global);
/// let svc: ConcurrencyLimit<()> = tower_layer::Layer::layer(&layer, ());
/// # let _ = svc;
/// ```
#[derive(Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    state: Arc<ConcurrencyState>,
}

impl<S> fmt::Debug for ConcurrencyLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("name", &self.state.name)
            .finish_non_exhaustive()
    }
}

fn count(name: &Arc<str>, outcome: &'static str) {
    metrics::counter!(
        "tollgate_http_requests_total",
        "policy" => metrics::SharedString::from(Arc::clone(name)),
        "outcome" => outcome,
        "mode" => "enforce",
    )
    .increment(1);
}

impl ConcurrencyState {
    fn problem(&self, status: StatusCode, detail: String) -> Response<bytes::Bytes> {
        Problem::new(status, detail)
            .with_extension("policy", self.name.to_string().into())
            .into_response()
    }

    async fn decide(self: Arc<Self>, key: String) -> Verdict {
        match self.limit.try_acquire(&key).await {
            Ok(Some(permit)) => {
                count(&self.name, "allowed");
                Verdict::Allow {
                    headers: None,
                    permit: Some(permit),
                }
            }
            Ok(None) => {
                count(&self.name, "denied");
                tracing::debug!(policy = %self.name, "concurrency limit full");
                let mut response = self.problem(
                    self.full_status,
                    format!(
                        "too many requests in flight for concurrency limit {:?} (at most {})",
                        &*self.name,
                        self.limit.capacity()
                    ),
                );
                if let Some(secs) = self.retry_after_secs {
                    response
                        .headers_mut()
                        .insert(http::header::RETRY_AFTER, secs.into());
                }
                Verdict::Reject(response)
            }
            Err(e) => {
                count(&self.name, "error");
                tracing::warn!(policy = %self.name, error = %e, "concurrency limit store error");
                Verdict::Reject(self.problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "concurrency limiting is unavailable ({:?}); try again later",
                        &*self.name
                    ),
                ))
            }
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ConcurrencyLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    ReqB: Send + 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let key = match self.state.extractor.extract(&parts) {
            Ok(key) => key,
            Err(err) => match &self.state.missing_key {
                MissingKey::Fallback(key) => key.clone(),
                MissingKey::Skip => {
                    return ResponseFuture::calling(
                        self.inner.call(Request::from_parts(parts, body)),
                    )
                }
                MissingKey::Reject(status) => {
                    count(&self.state.name, "no_key");
                    return ResponseFuture::answered(self.state.problem(
                        *status,
                        format!(
                            "the request cannot be concurrency limited by {:?}: {err}",
                            &*self.state.name
                        ),
                    ));
                }
            },
        };
        let verdict = Box::pin(Arc::clone(&self.state).decide(key));
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::deciding(verdict, ready, Request::from_parts(parts, body))
    }
}
