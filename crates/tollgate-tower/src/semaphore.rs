//! In-flight limits on a [`tollgate::semaphore::Semaphore`]: the concurrency layer's slots as
//! leased semaphore permits, one semaphore name per key.
//!
//! With the in-memory backend this limits one process; with `tollgate-redis`'s
//! `RedisSemaphoreBackend` the limit is shared by every server of the fleet, and a server that
//! dies loses its slots when their leases end instead of leaking them.
//!
//! ```
//! use tollgate::semaphore::Semaphore;
//! use tollgate_tower::concurrency::{ConcurrencyLimitLayer, InFlightLimit};
//! use tollgate_tower::key::Header;
//! use tollgate_tower::semaphore::SemaphoreInFlight;
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let base = Semaphore::builder("inflight", 2).build().unwrap();
//! let limit = SemaphoreInFlight::new(base);
//! let a = limit.try_acquire("tenant-1").await.unwrap();
//! let b = limit.try_acquire("tenant-1").await.unwrap();
//! assert!(a.is_some() && b.is_some());
//! assert!(limit.try_acquire("tenant-1").await.unwrap().is_none()); // full
//! assert!(limit.try_acquire("tenant-2").await.unwrap().is_some()); // another key
//! drop(a);
//! assert!(limit.try_acquire("tenant-1").await.unwrap().is_some());
//! let _layer = ConcurrencyLimitLayer::new("per-tenant", limit, Header::named("x-tenant").unwrap());
//! # });
//! ```

use crate::concurrency::{InFlightLimit, InFlightPermit};
use futures_util::future::BoxFuture;
use tollgate::semaphore::{Semaphore, SemaphoreBackend, SemaphoreError};

/// Per-key in-flight slots backed by semaphore permits: the key `k` uses the semaphore named
/// `<base name>:k` (same capacity, lease and backend as `base`). Clones share everything.
///
/// ```
/// use tollgate::semaphore::Semaphore;
/// use tollgate_tower::concurrency::InFlightLimit;
/// let limit = tollgate_tower::semaphore::SemaphoreInFlight::new(
///     Semaphore::builder("api-inflight", 8).build().unwrap());
/// assert_eq!(limit.capacity(), 8);
/// ```
pub struct SemaphoreInFlight<B: SemaphoreBackend + ?Sized> {
    base: Semaphore<B>,
}

impl<B: SemaphoreBackend + ?Sized> Clone for SemaphoreInFlight<B> {
    fn clone(&self) -> Self {
        Self {
            base: self.base.clone(),
        }
    }
}

impl<B: SemaphoreBackend + ?Sized> SemaphoreInFlight<B> {
    /// Slots per key from `base`'s capacity, lease and backend; `base`'s name prefixes the
    /// per-key names.
    ///
    /// ```
    /// let limit = tollgate_tower::semaphore::SemaphoreInFlight::new(
    ///     tollgate::semaphore::Semaphore::builder("x", 1).build().unwrap());
    /// # let _ = limit;
    /// ```
    pub fn new(base: Semaphore<B>) -> Self {
        Self { base }
    }
}

fn to_error(e: SemaphoreError) -> tollgate::Error {
    match e {
        SemaphoreError::Store(e) => tollgate::Error::Store(e),
        other => tollgate::Error::InvalidKey {
            reason: other.to_string(),
        },
    }
}

impl<B: SemaphoreBackend + ?Sized> InFlightLimit for SemaphoreInFlight<B> {
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<InFlightPermit>, tollgate::Error>> {
        Box::pin(async move {
            let name = format!("{}:{key}", self.base.name());
            let sem = self.base.with_name(name).map_err(to_error)?;
            match sem.try_acquire_async().await {
                Ok(Some(permit)) => Ok(Some(InFlightPermit::new(permit))),
                Ok(None) => Ok(None),
                Err(e) => Err(to_error(e)),
            }
        })
    }

    fn capacity(&self) -> u64 {
        self.base.capacity()
    }
}
