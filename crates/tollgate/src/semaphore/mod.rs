//! Concurrency limits: a [`Semaphore`] with leases, in one process or shared by a fleet.
//!
//! A semaphore has a **name** (an API token, a tenant, a downstream service), a **capacity**
//! (at most that many permits held at once), a **lease** (how long a holder keeps its permits
//! without news from it) and a **maximum wait**. A caller acquires one or `n` permits and gets
//! a [`Permit`]: dropping it releases them (the `with` / `async with` of the Python
//! libraries); [`Permit::release`] does it explicitly and tells whether the lease had ended.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::semaphore::Semaphore;
//!
//! let sem = Semaphore::builder("payments-api", 2)
//!     .lease(Duration::from_secs(30))
//!     .max_wait(Duration::from_secs(5))
//!     .build()
//!     .unwrap();
//! let first = sem.acquire().unwrap();
//! let second = sem.acquire().unwrap();
//! assert!(sem.try_acquire().unwrap().is_none()); // full
//! drop(first);                                   // RAII release
//! let third = sem.try_acquire().unwrap().expect("a permit came back");
//! second.release().unwrap();                      // explicit release
//! # drop(third);
//! ```
//!
//! # Guarantees
//!
//! - **Never more than capacity**: a grant needs `in_use + n <= capacity` in one atomic step
//!   of the store. Every path that may have taken permits gives them back: a timeout, a
//!   store error after the call was sent, and a future dropped while the store was granting
//!   (for remote stores each attempt runs in a spawned task that returns a grant nobody
//!   received).
//! - **Leases**: every holder has a random [`HolderId`] and an expiry. A holder that dies
//!   loses its permits when the lease ends, not before. [`Permit::extend`] renews it, and
//!   [`SemaphoreBuilder::auto_renew`] renews it in the background (every third of the lease)
//!   while the permit lives. A holder whose lease ended is told ([`SemaphoreError::LeaseExpired`])
//!   on release or extend, and its late release frees nothing of anyone else's.
//! - **Waiting**: waiters queue in FIFO order in the store (a newcomer never overtakes a
//!   waiter; a request for several permits is not starved). The in-memory backend wakes
//!   waiters when a permit frees; remote backends poll with exponential backoff (1 → 50 ms)
//!   and never later than the earliest lease end. The maximum wait covers the whole wait.
//! - **Time**: leases are µs on the semaphore's [`Clock`] for the memory
//!   backend (a [`ManualClock`](crate::time::ManualClock) expires them deterministically);
//!   the Redis backend uses the server's `TIME`.

mod async_api;
mod backend;
mod builder;
mod failure;
mod memory;
mod op;
mod permit;
mod wait;

pub use backend::{
    poll_backoff, AcquireOutcome, AcquireRequest, ExtendOutcome, HolderId, PermitBacking,
    ReleaseOutcome, SemaphoreBackend, SemaphoreOp, SemaphoreReply, SemaphoreStatus,
};
pub use builder::SemaphoreBuilder;
pub use failure::FailSafeSemaphore;
pub use memory::MemorySemaphoreBackend;
pub use permit::Permit;

use crate::error::StoreError;
use crate::time::{micros, Clock, ClockHandle, Micros};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Default lease: 60 s (the `expiry` default of redis-limiters).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// Default maximum wait: 30 s (the `max_sleep` default of redis-limiters).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);
/// Default maximum name length in bytes.
pub const DEFAULT_MAX_NAME_LEN: usize = 1024;
/// How long a waiter's place in the queue survives without a new attempt (µs).
pub const QUEUE_TTL: Duration = Duration::from_secs(2);
/// The longest a waiter sleeps between two attempts, whatever wakes it (real time).
const WAIT_SLICE: Duration = Duration::from_millis(250);
/// With a custom clock (e.g. a manual one), waiters re-check at least this often (real time).
const CUSTOM_CLOCK_SLICE: Duration = Duration::from_millis(5);

/// Why a semaphore call failed.
///
/// ```
/// use tollgate::semaphore::{Semaphore, SemaphoreError};
/// let sem = Semaphore::builder("doc-errors", 2).build().unwrap();
/// assert!(matches!(sem.acquire_n(3), Err(SemaphoreError::PermitsExceedCapacity { permits: 3, capacity: 2 })));
/// assert!(matches!(sem.acquire_n(0), Err(SemaphoreError::ZeroPermits)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SemaphoreError {
    /// A capacity of zero.
    #[error("the capacity must be at least 1")]
    ZeroCapacity,
    /// A lease shorter than 1 ms.
    #[error("the lease must be at least 1 ms (got {0:?})")]
    LeaseTooShort(Duration),
    /// An empty name.
    #[error("the semaphore name must not be empty")]
    EmptyName,
    /// A name longer than the maximum.
    #[error("the semaphore name is {len} bytes long; the maximum is {max}")]
    NameTooLong {
        /// The name's length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Zero permits asked for.
    #[error("at least 1 permit must be asked for")]
    ZeroPermits,
    /// More permits than the capacity: waiting would never help.
    #[error("{permits} permits can never be granted: the capacity is {capacity}")]
    PermitsExceedCapacity {
        /// Permits asked for.
        permits: u64,
        /// The capacity.
        capacity: u64,
    },
    /// No permit within the maximum wait. Nothing is held and no queue place is kept.
    #[error("no permit within the maximum wait of {max_wait:?} ({in_use} of {capacity} in use)")]
    WaitTimeout {
        /// The maximum wait that ran out.
        max_wait: Duration,
        /// Permits in use at the last attempt.
        in_use: u64,
        /// The capacity.
        capacity: u64,
        /// When the earliest live lease ends (the latest moment to try again if nobody
        /// releases), if any holder is known.
        retry_after: Option<Duration>,
    },
    /// The holder's lease had ended before this release or extension: it held nothing any
    /// more (its permits may already belong to someone else), and nothing was changed.
    #[error("the lease of holder {holder} had ended: it held no permit any more")]
    LeaseExpired {
        /// The holder.
        holder: HolderId,
    },
    /// The store failed (unreachable, timed out, bad reply). Never a "no permit".
    #[error("store error: {0}")]
    Store(#[from] StoreError),
}

/// A named counting semaphore with leases. Clones share everything.
///
/// The sync methods block the thread while waiting; the `_async` ones never block the
/// executor. Use [`with_name`](Self::with_name) to get the same configuration for another
/// name (e.g. one semaphore per tenant on one backend).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use tollgate::semaphore::Semaphore;
/// let sem = Semaphore::builder("doc-async", 1).build().unwrap();
/// let permit = sem.acquire_async().await.unwrap();
/// assert_eq!(sem.in_use_async().await.unwrap(), 1);
/// drop(permit);
/// assert_eq!(sem.in_use_async().await.unwrap(), 0);
/// # });
/// ```
pub struct Semaphore<B: SemaphoreBackend + ?Sized = MemorySemaphoreBackend> {
    inner: Arc<Inner<B>>,
}

struct Inner<B: ?Sized> {
    name: Arc<str>,
    config: Config,
    backend: Arc<B>,
}

#[derive(Clone, Debug)]
struct Config {
    capacity: u64,
    lease: Duration,
    max_wait: Option<Duration>,
    auto_renew: bool,
    clock: ClockHandle,
    custom_clock: bool,
    max_name_len: usize,
}

impl<B: SemaphoreBackend + ?Sized> Clone for Semaphore<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B: SemaphoreBackend + ?Sized> std::fmt::Debug for Semaphore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &self.inner.name)
            .field("capacity", &self.inner.config.capacity)
            .field("lease", &self.inner.config.lease)
            .field("max_wait", &self.inner.config.max_wait)
            .finish_non_exhaustive()
    }
}

fn check_name(name: &str, max: usize) -> Result<(), SemaphoreError> {
    if name.is_empty() {
        return Err(SemaphoreError::EmptyName);
    }
    if name.len() > max {
        return Err(SemaphoreError::NameTooLong {
            len: name.len(),
            max,
        });
    }
    Ok(())
}

impl Semaphore<MemorySemaphoreBackend> {
    /// A builder for the semaphore `name` with `capacity` permits.
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::builder("s-builder", 3).build().unwrap();
    /// assert_eq!(s.capacity(), 3);
    /// ```
    pub fn builder(name: impl Into<String>, capacity: u64) -> SemaphoreBuilder {
        SemaphoreBuilder {
            name: name.into(),
            config: Config {
                capacity,
                lease: DEFAULT_LEASE,
                max_wait: Some(DEFAULT_MAX_WAIT),
                auto_renew: false,
                clock: ClockHandle::default(),
                custom_clock: false,
                max_name_len: DEFAULT_MAX_NAME_LEN,
            },
        }
    }

    /// An in-memory semaphore with the default lease (60 s) and maximum wait (30 s).
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::memory("s-memory", 5).unwrap();
    /// assert_eq!(s.try_acquire_n(5).unwrap().unwrap().permits(), 5);
    /// ```
    pub fn memory(name: impl Into<String>, capacity: u64) -> Result<Self, SemaphoreError> {
        Self::builder(name, capacity).build()
    }
}

impl<B: SemaphoreBackend + ?Sized> Semaphore<B> {
    /// The name.
    ///
    /// ```
    /// assert_eq!(tollgate::semaphore::Semaphore::memory("s-name", 1).unwrap().name(), "s-name");
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The capacity.
    ///
    /// ```
    /// assert_eq!(tollgate::semaphore::Semaphore::memory("s-cap", 7).unwrap().capacity(), 7);
    /// ```
    pub fn capacity(&self) -> u64 {
        self.inner.config.capacity
    }

    /// The lease.
    ///
    /// ```
    /// assert_eq!(tollgate::semaphore::Semaphore::memory("s-lease", 1).unwrap().lease(), tollgate::semaphore::DEFAULT_LEASE);
    /// ```
    pub fn lease(&self) -> Duration {
        self.inner.config.lease
    }

    /// The maximum wait (`None`: no limit).
    ///
    /// ```
    /// assert_eq!(tollgate::semaphore::Semaphore::memory("s-mw", 1).unwrap().max_wait(), Some(tollgate::semaphore::DEFAULT_MAX_WAIT));
    /// ```
    pub fn max_wait(&self) -> Option<Duration> {
        self.inner.config.max_wait
    }

    /// True when permits renew their lease in the background.
    ///
    /// ```
    /// assert!(!tollgate::semaphore::Semaphore::memory("s-ar", 1).unwrap().auto_renews());
    /// ```
    pub fn auto_renews(&self) -> bool {
        self.inner.config.auto_renew
    }

    /// The backend.
    ///
    /// ```
    /// use tollgate::semaphore::SemaphoreBackend;
    /// assert!(tollgate::semaphore::Semaphore::memory("s-be", 1).unwrap().backend().is_local());
    /// ```
    pub fn backend(&self) -> &Arc<B> {
        &self.inner.backend
    }

    /// The same semaphore configuration (capacity, lease, waits, clock, backend) for another
    /// name: e.g. one semaphore per tenant.
    ///
    /// ```
    /// let base = tollgate::semaphore::Semaphore::memory("tenant:a", 1).unwrap();
    /// let b = base.with_name("tenant:b").unwrap();
    /// let _a = base.try_acquire().unwrap().unwrap();
    /// assert!(b.try_acquire().unwrap().is_some()); // independent names
    /// ```
    pub fn with_name(&self, name: impl Into<String>) -> Result<Self, SemaphoreError> {
        let name = name.into();
        check_name(&name, self.inner.config.max_name_len)?;
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.into(),
                config: self.inner.config.clone(),
                backend: Arc::clone(&self.inner.backend),
            }),
        })
    }

    pub(crate) fn now(&self) -> Micros {
        self.inner.config.clock.now()
    }

    fn lease_us(&self) -> Micros {
        micros(self.inner.config.lease)
    }

    fn check_permits(&self, permits: u64) -> Result<(), SemaphoreError> {
        if permits == 0 {
            return Err(SemaphoreError::ZeroPermits);
        }
        if permits > self.inner.config.capacity {
            return Err(SemaphoreError::PermitsExceedCapacity {
                permits,
                capacity: self.inner.config.capacity,
            });
        }
        Ok(())
    }

    /// Takes one permit, waiting up to the maximum wait (blocking the thread).
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::memory("s-acquire", 1).unwrap();
    /// let p = s.acquire().unwrap();
    /// assert_eq!(p.permits(), 1);
    /// ```
    pub fn acquire(&self) -> Result<Permit<B>, SemaphoreError> {
        self.acquire_n(1)
    }

    /// Takes `n` permits at once (all or nothing), waiting up to the maximum wait.
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::memory("s-acquire-n", 5).unwrap();
    /// let p = s.acquire_n(3).unwrap();
    /// assert_eq!(s.in_use().unwrap(), 3);
    /// # drop(p);
    /// ```
    pub fn acquire_n(&self, n: u64) -> Result<Permit<B>, SemaphoreError> {
        self.acquire_n_within(n, self.inner.config.max_wait)
    }

    /// Takes `n` permits, waiting at most `max_wait` (`None`: no limit) instead of the
    /// configured maximum.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::semaphore::{Semaphore, SemaphoreError};
    /// let s = Semaphore::memory("s-within", 1).unwrap();
    /// let _held = s.acquire().unwrap();
    /// let r = s.acquire_n_within(1, Some(Duration::from_millis(20)));
    /// assert!(matches!(r, Err(SemaphoreError::WaitTimeout { .. })));
    /// ```
    pub fn acquire_n_within(
        &self,
        n: u64,
        max_wait: Option<Duration>,
    ) -> Result<Permit<B>, SemaphoreError> {
        self.acquire_blocking(n, max_wait)?
            .map_err(|(in_use, next)| self.timeout_error(max_wait, in_use, next))
    }

    /// Takes one permit if one is free now, without waiting (and without overtaking
    /// waiters): `Ok(None)` when busy.
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::memory("s-try", 1).unwrap();
    /// let p = s.try_acquire().unwrap();
    /// assert!(p.is_some());
    /// assert!(s.try_acquire().unwrap().is_none());
    /// ```
    pub fn try_acquire(&self) -> Result<Option<Permit<B>>, SemaphoreError> {
        self.try_acquire_n(1)
    }

    /// Takes `n` permits if they are free now: `Ok(None)` when busy.
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::memory("s-try-n", 3).unwrap();
    /// let two = s.try_acquire_n(2).unwrap();
    /// assert!(two.is_some());
    /// assert!(s.try_acquire_n(2).unwrap().is_none()); // only 1 left while `two` lives
    /// ```
    pub fn try_acquire_n(&self, n: u64) -> Result<Option<Permit<B>>, SemaphoreError> {
        Ok(self.acquire_blocking(n, Some(Duration::ZERO))?.ok())
    }

    /// Permits held by live holders now.
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::memory("s-in-use", 2).unwrap();
    /// let _p = s.acquire().unwrap();
    /// assert_eq!(s.in_use().unwrap(), 1);
    /// ```
    pub fn in_use(&self) -> Result<u64, SemaphoreError> {
        Ok(self.status()?.in_use)
    }

    /// Live holders, permits in use and waiters.
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::memory("s-status", 4).unwrap();
    /// let _p = s.acquire_n(3).unwrap();
    /// let st = s.status().unwrap();
    /// assert_eq!((st.in_use, st.holders, st.waiting), (3, 1, 0));
    /// ```
    pub fn status(&self) -> Result<SemaphoreStatus, SemaphoreError> {
        Ok(self.inner.backend.status(&self.inner.name, self.now())?)
    }

    /// Runs `f` while holding one permit (released afterwards, also if `f` panics).
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::memory("s-call", 1).unwrap();
    /// assert_eq!(s.call(|| 6 * 7).unwrap(), 42);
    /// assert_eq!(s.in_use().unwrap(), 0);
    /// ```
    pub fn call<T>(&self, f: impl FnOnce() -> T) -> Result<T, SemaphoreError> {
        let _permit = self.acquire()?;
        Ok(f())
    }

    /// Wraps a function so every call runs while holding one permit.
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::memory("s-wrap", 2).unwrap();
    /// let double = s.wrap(|x: u32| x * 2);
    /// assert_eq!(double(21).unwrap(), 42);
    /// ```
    pub fn wrap<A, T>(&self, f: impl Fn(A) -> T) -> impl Fn(A) -> Result<T, SemaphoreError> {
        let sem = self.clone();
        move |arg| sem.call(|| f(arg))
    }
}
