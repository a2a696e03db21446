//! [`ConcurrencyLimitLayer`]: the layer and the state its services share.

use super::service::ConcurrencyLimit;
use super::InFlightLimit;
use crate::key::KeyExtractor;
use crate::layer::MissingKey;
use http::StatusCode;
use std::fmt;
use std::sync::Arc;
use tower_layer::Layer;

pub(super) struct ConcurrencyState {
    pub(super) name: Arc<str>,
    pub(super) limit: Arc<dyn InFlightLimit>,
    pub(super) extractor: Arc<dyn KeyExtractor>,
    pub(super) full_status: StatusCode,
    pub(super) missing_key: MissingKey,
    pub(super) retry_after_secs: Option<u64>,
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
