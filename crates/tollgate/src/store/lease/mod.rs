//! Local leases for hot keys: reserve a batch of units from the shared store in one call,
//! decide locally from it, and give back what was not used.
//!
//! A global limit (one key shared by a whole fleet) costs one store round trip per decision,
//! so it is capped by what one Redis shard (or one database row) can run. A [`LeaseStore`]
//! wraps any store: for a **hot** key it charges a batch of `B` units in the store with one
//! `Check(B)` and then admits calls from that batch locally, without a round trip; when the
//! batch is empty it reserves the next one. Unused units are given back with a `Refund` when
//! the lease ends (`duration` after the last reserve: by a background sweep, by
//! [`LeaseBackend::sweep`], by [`LeaseBackend::flush`] or when the backend is dropped).
//!
//! - **Never over-admits**: every unit admitted locally was charged in the store first, and a
//!   refund gives back only units that were charged and not used. The fleet as a whole
//!   admits at most what the store admitted.
//! - **Adaptive**: the batch is the key's demand over the last lease duration (units asked
//!   for in that window), clamped by [`LeaseConfig::max_batch`] and by the policy's capacity.
//!   A key whose batch would be below [`LeaseConfig::min_batch`] (a quiet key) is not leased:
//!   every call is passed to the store as `Check(cost)` and gets the store's decision, exactly
//!   as without the wrapper.
//! - **Single flight**: one caller per key reserves; the other callers of that key wait for
//!   the batch (sync callers on a condition variable, async callers on a notification),
//!   while callers of other keys are never blocked by it.
//! - **The last units are still usable**: when a batch is denied the caller falls back to
//!   `Check(cost)` and gets the store's decision; batches are not tried again for that key
//!   until the denied batch's `retry_after` has passed.
//! - **Bounded**: at most [`LeaseConfig::max_keys`] keys are tracked (others pass through);
//!   keys idle for two lease durations are forgotten.
//!
//! Only [`Algorithm::Gcra`] and
//! [`Algorithm::TokenBucket`] can be leased: a unit given back
//! to them returns to the same continuous budget it came from. The window algorithms and the
//! sliding log are refused at bind time with [`Error::Config`]: a unit charged in one window
//! and refunded in a later one would be credited to a window it was never taken from, so the
//! later window could admit more than its limit.
//!
//! **Observability**: the `metrics` counters `tollgate_lease_reserves_total{outcome}`
//! (`granted` / `denied` batch reserves), `tollgate_lease_units_reserved_total` and
//! `tollgate_lease_units_returned_total` (units given back); [`LeaseBackend::held`] and
//! [`LeaseBackend::tracked_keys`] show the batches now.
//!
//! Every surface gets leases by composition: `Limiter::builder(policy).build_with(&lease_store)`
//! (so the tower layer, which takes a limiter), and the server's per-policy `lease` option.
//!
//! The guarantee and the bound on false denials are stated in `docs/semantics.md`
//! ("Local leases for hot keys"). A process that dies holding a batch loses those units only
//! until the store's own refill brings them back (GCRA and the token bucket drip every
//! charged unit back with time), never for good.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::{Limiter, Policy, Rate};
//! use tollgate::store::{memory::MemoryStore, lease::{LeaseConfig, LeaseStore}};
//! let store = LeaseStore::new(
//!     MemoryStore::new(), // e.g. a RedisStore shared by the fleet
//!     LeaseConfig::default().max_batch(100).duration(Duration::from_millis(50)),
//! );
//! let limiter = Limiter::builder(Policy::gcra(Rate::per_second(10_000).unwrap()).unwrap())
//!     .build_with(&store)
//!     .unwrap();
//! for _ in 0..1_000 {
//!     assert!(limiter.check("global").unwrap().allowed);
//! }
//! ```

mod backend;
mod state;
mod table;

pub use backend::LeaseBackend;

use super::Store;
use crate::error::Error;
use crate::policy::{Algorithm, Policy};
use std::time::Duration;

/// How a [`LeaseStore`] leases hot keys.
///
/// ```
/// use std::time::Duration;
/// use tollgate::store::lease::LeaseConfig;
/// let c = LeaseConfig::default();
/// assert_eq!((c.get_max_batch(), c.get_min_batch()), (1_000, 16));
/// assert_eq!(c.get_duration(), Duration::from_millis(100));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    max_batch: u64,
    min_batch: u64,
    duration: Duration,
    max_keys: usize,
    background_sweep: bool,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            max_batch: 1_000,
            min_batch: 16,
            duration: Duration::from_millis(100),
            max_keys: 10_000,
            background_sweep: true,
        }
    }
}

impl LeaseConfig {
    /// The most units one reserve takes (default 1000); also capped by the policy's capacity.
    /// With `N` instances, at most `N × max_batch` units sit unused in batches at any instant.
    ///
    /// ```
    /// let c = tollgate::store::lease::LeaseConfig::default().max_batch(500);
    /// assert_eq!(c.get_max_batch(), 500);
    /// ```
    pub fn max_batch(mut self, units: u64) -> Self {
        self.max_batch = units;
        self
    }

    /// The smallest batch worth reserving (default 16): a key whose demand over one lease
    /// duration is below it is not leased (its calls go to the store as they are).
    ///
    /// ```
    /// let c = tollgate::store::lease::LeaseConfig::default().min_batch(4);
    /// assert_eq!(c.get_min_batch(), 4);
    /// ```
    pub fn min_batch(mut self, units: u64) -> Self {
        self.min_batch = units;
        self
    }

    /// How long a batch is kept after its reserve before its unused units are given back
    /// (default 100 ms); also the window over which a key's demand is measured.
    ///
    /// ```
    /// use std::time::Duration;
    /// let c = tollgate::store::lease::LeaseConfig::default().duration(Duration::from_millis(20));
    /// assert_eq!(c.get_duration(), Duration::from_millis(20));
    /// ```
    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// The most keys tracked per bound policy (default 10 000); further keys pass through
    /// to the store until idle keys are forgotten.
    ///
    /// ```
    /// let c = tollgate::store::lease::LeaseConfig::default().max_keys(100);
    /// assert_eq!(c.get_max_keys(), 100);
    /// ```
    pub fn max_keys(mut self, keys: usize) -> Self {
        self.max_keys = keys;
        self
    }

    /// Whether a background thread gives back expired batches every lease duration (default
    /// true). Without it, expired batches are given back only by [`LeaseBackend::sweep`],
    /// [`LeaseBackend::flush`] or drop — what tests with a manual clock want.
    ///
    /// ```
    /// let c = tollgate::store::lease::LeaseConfig::default().background_sweep(false);
    /// assert!(!c.get_background_sweep());
    /// ```
    pub fn background_sweep(mut self, on: bool) -> Self {
        self.background_sweep = on;
        self
    }

    /// The maximum batch.
    ///
    /// ```
    /// assert_eq!(tollgate::store::lease::LeaseConfig::default().get_max_batch(), 1_000);
    /// ```
    pub fn get_max_batch(&self) -> u64 {
        self.max_batch
    }

    /// The minimum batch.
    ///
    /// ```
    /// assert_eq!(tollgate::store::lease::LeaseConfig::default().get_min_batch(), 16);
    /// ```
    pub fn get_min_batch(&self) -> u64 {
        self.min_batch
    }

    /// The lease duration.
    ///
    /// ```
    /// let d = tollgate::store::lease::LeaseConfig::default().get_duration();
    /// assert_eq!(d.as_millis(), 100);
    /// ```
    pub fn get_duration(&self) -> Duration {
        self.duration
    }

    /// The most keys tracked.
    ///
    /// ```
    /// assert_eq!(tollgate::store::lease::LeaseConfig::default().get_max_keys(), 10_000);
    /// ```
    pub fn get_max_keys(&self) -> usize {
        self.max_keys
    }

    /// Whether the background sweep runs.
    ///
    /// ```
    /// assert!(tollgate::store::lease::LeaseConfig::default().get_background_sweep());
    /// ```
    pub fn get_background_sweep(&self) -> bool {
        self.background_sweep
    }

    /// Checks this configuration against `policy`: a GCRA or token-bucket policy, a
    /// `max_batch` of at least 2, `min_batch` between 2 and `max_batch`, a duration of at
    /// least 1 ms and at least one key.
    ///
    /// ```
    /// use tollgate::{Algorithm, Policy, Rate, Error};
    /// use tollgate::store::lease::LeaseConfig;
    /// let gcra = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// assert!(LeaseConfig::default().validate(&gcra).is_ok());
    /// let window = Policy::parse(Algorithm::FixedWindow, "5/s").unwrap();
    /// assert!(matches!(LeaseConfig::default().validate(&window), Err(Error::Config { .. })));
    /// assert!(LeaseConfig::default().max_batch(1).validate(&gcra).is_err());
    /// ```
    pub fn validate(&self, policy: &Policy) -> Result<(), Error> {
        let bad = |reason: String| Err(Error::Config { reason });
        match policy.algorithm() {
            Algorithm::Gcra | Algorithm::TokenBucket => {}
            other => {
                return bad(format!(
                    "local leases support gcra and token_bucket, not {}: a unit refunded into a \
                     later window would be admitted twice",
                    other.name()
                ))
            }
        }
        if self.max_batch < 2 {
            return bad(format!(
                "lease max_batch must be at least 2 (got {})",
                self.max_batch
            ));
        }
        if self.min_batch < 2 || self.min_batch > self.max_batch {
            return bad(format!(
                "lease min_batch must be between 2 and max_batch ({}) (got {})",
                self.max_batch, self.min_batch
            ));
        }
        if self.duration < Duration::from_millis(1) {
            return bad(format!(
                "lease duration must be at least 1ms (got {:?})",
                self.duration
            ));
        }
        if self.max_keys == 0 {
            return bad("lease max_keys must be at least 1".into());
        }
        Ok(())
    }
}

/// A store whose bound backends lease hot keys (see the [module](self) docs): wrap the shared
/// store, bind as usual.
///
/// ```
/// use tollgate::{Algorithm, Error, Limiter, Policy, Rate};
/// use tollgate::store::{Store, memory::MemoryStore, lease::{LeaseConfig, LeaseStore}};
/// let store = LeaseStore::new(MemoryStore::new(), LeaseConfig::default());
/// let limiter = Limiter::builder(Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).build_with(&store);
/// assert!(limiter.is_ok());
/// // Window algorithms cannot be leased soundly: refused with a clear error.
/// let window = Policy::parse(Algorithm::SlidingWindow, "5/s").unwrap();
/// assert!(matches!(store.bind(&window), Err(Error::Config { .. })));
/// ```
#[derive(Clone, Debug)]
pub struct LeaseStore<S> {
    inner: S,
    config: LeaseConfig,
}

impl<S> LeaseStore<S> {
    /// Leases hot keys of `inner` as `config` says.
    ///
    /// ```
    /// use tollgate::store::{memory::MemoryStore, lease::{LeaseConfig, LeaseStore}};
    /// let s = LeaseStore::new(MemoryStore::new(), LeaseConfig::default().max_batch(200));
    /// assert_eq!(s.config().get_max_batch(), 200);
    /// ```
    pub fn new(inner: S, config: LeaseConfig) -> Self {
        LeaseStore { inner, config }
    }

    /// The store behind it.
    ///
    /// ```
    /// use tollgate::store::{memory::MemoryStore, lease::{LeaseConfig, LeaseStore}};
    /// let s = LeaseStore::new(MemoryStore::new(), LeaseConfig::default());
    /// let _memory: &MemoryStore = s.inner();
    /// ```
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The lease configuration.
    ///
    /// ```
    /// use tollgate::store::{memory::MemoryStore, lease::{LeaseConfig, LeaseStore}};
    /// let s = LeaseStore::new(MemoryStore::new(), LeaseConfig::default());
    /// assert_eq!(s.config(), &LeaseConfig::default());
    /// ```
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }
}

impl<S: Store> Store for LeaseStore<S> {
    type Backend = LeaseBackend<S::Backend>;
    fn bind(&self, policy: &Policy) -> Result<Self::Backend, Error> {
        self.config.validate(policy)?;
        LeaseBackend::new(self.inner.bind(policy)?, policy, self.config.clone())
    }
}
