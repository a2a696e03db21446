//! [`LocalInFlight`]: in-process per-key in-flight counters.

use super::{InFlightLimit, InFlightPermit};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

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
