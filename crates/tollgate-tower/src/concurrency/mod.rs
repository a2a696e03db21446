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

mod layer;
mod local;
mod service;

pub use crate::inflight::InFlightPermit;
pub use layer::ConcurrencyLimitLayer;
pub use local::LocalInFlight;
pub use service::ConcurrencyLimit;

use futures_util::future::BoxFuture;

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
