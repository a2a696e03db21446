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

mod backend;
mod failure;
mod memory;
mod permit;

pub use backend::{
    poll_backoff, AcquireOutcome, AcquireRequest, ExtendOutcome, HolderId, PermitBacking,
    ReleaseOutcome, SemaphoreBackend, SemaphoreStatus,
};
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

/// Builds a [`Semaphore`]: lease, maximum wait, auto-renewal, clock, backend.
///
/// ```
/// use std::time::Duration;
/// use tollgate::semaphore::Semaphore;
/// let sem = Semaphore::builder("reports", 4)
///     .lease(Duration::from_secs(10))
///     .auto_renew(true)
///     .wait_forever()
///     .build()
///     .unwrap();
/// assert_eq!(sem.capacity(), 4);
/// assert_eq!(sem.max_wait(), None);
/// ```
#[derive(Debug)]
#[must_use = "call build() or build_on(backend)"]
pub struct SemaphoreBuilder {
    name: String,
    config: Config,
}

impl SemaphoreBuilder {
    /// How long a holder keeps its permits without releasing or extending (default 60 s; at
    /// least 1 ms).
    ///
    /// ```
    /// use std::time::Duration;
    /// let s = tollgate::semaphore::Semaphore::builder("b-lease", 1).lease(Duration::from_secs(5)).build().unwrap();
    /// assert_eq!(s.lease(), Duration::from_secs(5));
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// The longest an `acquire` waits in total (default 30 s). `Duration::ZERO` makes
    /// `acquire` fail at once when no permit is free.
    ///
    /// ```
    /// use std::time::Duration;
    /// let s = tollgate::semaphore::Semaphore::builder("b-wait", 1).max_wait(Duration::ZERO).build().unwrap();
    /// let _p = s.acquire().unwrap();
    /// assert!(s.acquire().is_err());
    /// ```
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = Some(max_wait);
        self
    }

    /// Waits without limit (like `max_sleep=0` in redis-limiters).
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::builder("b-forever", 1).wait_forever().build().unwrap();
    /// assert_eq!(s.max_wait(), None);
    /// ```
    pub fn wait_forever(mut self) -> Self {
        self.config.max_wait = None;
        self
    }

    /// Renews every permit's lease in the background (every third of the lease) while the
    /// permit is alive (a tokio task when acquired inside a runtime, else a thread). A holder
    /// that hangs forever then keeps its permits forever, and a holder that dies loses them
    /// after one lease. Default: off.
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::builder("b-renew", 1).auto_renew(true).build().unwrap();
    /// assert!(s.auto_renews());
    /// ```
    pub fn auto_renew(mut self, on: bool) -> Self {
        self.config.auto_renew = on;
        self
    }

    /// Uses `clock` for leases (memory backend) and for the maximum wait.
    ///
    /// ```
    /// use tollgate::{semaphore::Semaphore, time::ManualClock};
    /// let s = Semaphore::builder("b-clock", 1).clock(ManualClock::new(0)).build().unwrap();
    /// # let _ = s;
    /// ```
    pub fn clock(self, clock: impl Clock) -> Self {
        self.shared_clock(Arc::new(clock))
    }

    /// Uses a shared clock.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tollgate::{semaphore::Semaphore, time::{Clock, SystemClock}};
    /// let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    /// let s = Semaphore::builder("b-shared-clock", 1).shared_clock(clock).build().unwrap();
    /// # let _ = s;
    /// ```
    pub fn shared_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.config.clock = ClockHandle::custom(clock);
        self.config.custom_clock = true;
        self
    }

    /// Rejects names longer than `max` bytes (default 1024).
    ///
    /// ```
    /// let r = tollgate::semaphore::Semaphore::builder("abcd", 1).max_name_len(3).build();
    /// assert!(r.is_err());
    /// ```
    pub fn max_name_len(mut self, max: usize) -> Self {
        self.config.max_name_len = max;
        self
    }

    /// A semaphore on the process-wide in-memory backend
    /// ([`MemorySemaphoreBackend::global`]).
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::builder("b-build", 1).build().unwrap();
    /// assert_eq!(s.name(), "b-build");
    /// ```
    pub fn build(self) -> Result<Semaphore<MemorySemaphoreBackend>, SemaphoreError> {
        self.build_on(MemorySemaphoreBackend::global())
    }

    /// A semaphore on `backend` (a private memory backend, Redis, …).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tollgate::semaphore::{MemorySemaphoreBackend, Semaphore, SemaphoreBackend};
    /// let backend: Arc<dyn SemaphoreBackend> = Arc::new(MemorySemaphoreBackend::new());
    /// let s: Semaphore<dyn SemaphoreBackend> = Semaphore::builder("b-dyn", 1).build_on(backend).unwrap();
    /// assert!(s.try_acquire().unwrap().is_some());
    /// ```
    pub fn build_on<B: SemaphoreBackend + ?Sized>(
        self,
        backend: Arc<B>,
    ) -> Result<Semaphore<B>, SemaphoreError> {
        if self.config.capacity == 0 {
            return Err(SemaphoreError::ZeroCapacity);
        }
        if self.config.lease < Duration::from_millis(1) {
            return Err(SemaphoreError::LeaseTooShort(self.config.lease));
        }
        check_name(&self.name, self.config.max_name_len)?;
        Ok(Semaphore {
            inner: Arc::new(Inner {
                name: self.name.into(),
                config: self.config,
                backend,
            }),
        })
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

/// Outcome of the shared wait loop.
enum Attempted {
    Granted(Micros, PermitBacking),
    /// Permits in use, and µs until the earliest live lease ends (if any holder).
    TimedOut(u64, Option<Micros>),
}

/// A wait that ran out: permits in use, and µs until the earliest live lease ends.
type TimedOut = (u64, Option<Micros>);

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

    fn request(
        &self,
        holder: HolderId,
        permits: u64,
        queue: bool,
        now: Micros,
    ) -> AcquireRequest<'_> {
        AcquireRequest {
            name: &self.inner.name,
            holder,
            permits,
            capacity: self.inner.config.capacity,
            lease: self.lease_us(),
            queue_ttl: queue.then(|| micros(QUEUE_TTL)),
            now,
        }
    }

    /// How long to wait after a busy answer, or `None` when the deadline has passed.
    fn next_wait(
        &self,
        deadline: Option<Micros>,
        next_expiry_in: Option<Micros>,
    ) -> Option<Duration> {
        let now = self.now();
        let left = match deadline {
            Some(d) if now >= d => return None,
            Some(d) => d - now,
            None => u64::MAX,
        };
        let until_expiry = next_expiry_in.map_or(u64::MAX, |e| e.max(1));
        let slice = if self.inner.config.custom_clock {
            CUSTOM_CLOCK_SLICE
        } else {
            WAIT_SLICE
        };
        Some(Duration::from_micros(left.min(until_expiry)).min(slice))
    }

    fn deadline(&self, max_wait: Option<Duration>) -> Option<Micros> {
        max_wait.map(|w| self.now().saturating_add(micros(w)))
    }

    fn timeout_error(
        &self,
        max_wait: Option<Duration>,
        in_use: u64,
        next_expiry_in: Option<Micros>,
    ) -> SemaphoreError {
        metrics::counter!("tollgate_semaphore_timeouts_total").increment(1);
        SemaphoreError::WaitTimeout {
            max_wait: max_wait.unwrap_or(Duration::MAX),
            in_use,
            capacity: self.inner.config.capacity,
            retry_after: next_expiry_in.map(Duration::from_micros),
        }
    }

    /// Gives back whatever `holder` may hold or queue for, ignoring failures (the lease or
    /// the queue TTL then cleans up).
    fn forget_holder(&self, holder: HolderId) {
        let _ = self
            .inner
            .backend
            .release(&self.inner.name, holder, self.now());
    }

    fn wait_loop(
        &self,
        holder: HolderId,
        permits: u64,
        max_wait: Option<Duration>,
    ) -> Result<Attempted, SemaphoreError> {
        self.check_permits(permits)?;
        let deadline = self.deadline(max_wait);
        let queue = max_wait != Some(Duration::ZERO);
        let mut attempt = 0u32;
        loop {
            let req = self.request(holder, permits, queue, self.now());
            let outcome = match self.inner.backend.try_acquire(&req) {
                Ok(o) => o,
                Err(e) => {
                    // The store may have granted before failing to answer: give it back.
                    self.forget_holder(holder);
                    return Err(e.into());
                }
            };
            match outcome {
                AcquireOutcome::Granted { expires_at } => {
                    return Ok(Attempted::Granted(expires_at, PermitBacking::Store))
                }
                AcquireOutcome::GrantedWithoutStore {
                    expires_at,
                    backing,
                } => return Ok(Attempted::Granted(expires_at, backing)),
                AcquireOutcome::Busy {
                    in_use,
                    next_expiry_in,
                    epoch,
                } => {
                    let Some(wait) = self.next_wait(deadline, next_expiry_in) else {
                        if queue {
                            self.forget_holder(holder);
                        }
                        return Ok(Attempted::TimedOut(in_use, next_expiry_in));
                    };
                    self.inner
                        .backend
                        .wait_blocking(&self.inner.name, epoch, attempt, wait);
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// `Ok(Err(in_use))` when nothing was granted within `max_wait`.
    fn acquire_sync(
        &self,
        permits: u64,
        max_wait: Option<Duration>,
    ) -> Result<Result<Permit<B>, TimedOut>, SemaphoreError> {
        let holder = HolderId::random();
        Ok(match self.wait_loop(holder, permits, max_wait)? {
            Attempted::Granted(expires_at, backing) => Ok(Permit::new(
                self.clone(),
                holder,
                permits,
                expires_at,
                backing,
            )),
            Attempted::TimedOut(in_use, next) => Err((in_use, next)),
        })
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
        self.acquire_sync(n, max_wait)?
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
        Ok(self.acquire_sync(n, Some(Duration::ZERO))?.ok())
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

    // ---------------------------------------------------------------- async

    /// One attempt, cancel-safe: local backends answer inline (nothing can interrupt between
    /// the grant and the handover); remote ones run in a spawned task that gives back a
    /// grant (or queue place) nobody received.
    async fn attempt_async(
        &self,
        holder: HolderId,
        permits: u64,
        queue: bool,
    ) -> Result<AcquireOutcome, StoreError> {
        let now = self.now();
        if self.inner.backend.is_local() {
            return self
                .inner
                .backend
                .try_acquire(&self.request(holder, permits, queue, now));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No tokio runtime: the caller's drop guard releases on cancellation.
            let req = self.request(holder, permits, queue, now);
            return self.inner.backend.try_acquire_async(&req).await;
        };
        let sem = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let req = sem.request(holder, permits, queue, now);
            let result = sem.inner.backend.try_acquire_async(&req).await;
            if tx.send(result).is_err() {
                // The acquiring future is gone: whatever the store granted goes back.
                let _ = sem
                    .inner
                    .backend
                    .release_async(&sem.inner.name, holder, sem.now())
                    .await;
            }
        });
        rx.await
            .unwrap_or_else(|_| Err(StoreError::new("semaphore", "the acquire task was lost")))
    }

    async fn wait_loop_async(
        &self,
        holder: HolderId,
        permits: u64,
        max_wait: Option<Duration>,
    ) -> Result<Attempted, SemaphoreError> {
        self.check_permits(permits)?;
        let deadline = self.deadline(max_wait);
        let queue = max_wait != Some(Duration::ZERO);
        let mut attempt = 0u32;
        loop {
            let outcome = self.attempt_async(holder, permits, queue).await?;
            match outcome {
                AcquireOutcome::Granted { expires_at } => {
                    return Ok(Attempted::Granted(expires_at, PermitBacking::Store))
                }
                AcquireOutcome::GrantedWithoutStore {
                    expires_at,
                    backing,
                } => return Ok(Attempted::Granted(expires_at, backing)),
                AcquireOutcome::Busy {
                    in_use,
                    next_expiry_in,
                    epoch,
                } => {
                    let Some(wait) = self.next_wait(deadline, next_expiry_in) else {
                        return Ok(Attempted::TimedOut(in_use, next_expiry_in));
                    };
                    self.inner
                        .backend
                        .wait(&self.inner.name, epoch, attempt, wait)
                        .await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// `Ok(Err(in_use))` when nothing was granted within `max_wait`.
    async fn acquire_async_inner(
        &self,
        permits: u64,
        max_wait: Option<Duration>,
    ) -> Result<Result<Permit<B>, TimedOut>, SemaphoreError> {
        let holder = HolderId::random();
        // Armed until a Permit owns the holder: a timeout, an error or a drop of this future
        // gives back any grant and the queue place.
        let mut guard = permit::ReleaseGuard::new(self.clone(), holder);
        Ok(
            match self.wait_loop_async(holder, permits, max_wait).await? {
                Attempted::Granted(expires_at, backing) => {
                    guard.disarm();
                    Ok(Permit::new(
                        self.clone(),
                        holder,
                        permits,
                        expires_at,
                        backing,
                    ))
                }
                Attempted::TimedOut(in_use, next) => Err((in_use, next)),
            },
        )
    }

    /// Async [`acquire`](Self::acquire). Cancel-safe: dropping the future at any point
    /// leaves nothing held and no queue place behind.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-acq-async", 1).unwrap();
    /// let p = s.acquire_async().await.unwrap();
    /// p.release_async().await.unwrap();
    /// # });
    /// ```
    pub async fn acquire_async(&self) -> Result<Permit<B>, SemaphoreError> {
        self.acquire_n_async(1).await
    }

    /// Async [`acquire_n`](Self::acquire_n).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-acq-n-async", 4).unwrap();
    /// let p = s.acquire_n_async(4).await.unwrap();
    /// assert_eq!(p.permits(), 4);
    /// # });
    /// ```
    pub async fn acquire_n_async(&self, n: u64) -> Result<Permit<B>, SemaphoreError> {
        self.acquire_n_within_async(n, self.inner.config.max_wait)
            .await
    }

    /// Async [`acquire_n_within`](Self::acquire_n_within).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use std::time::Duration;
    /// let s = tollgate::semaphore::Semaphore::memory("s-within-async", 1).unwrap();
    /// let _held = s.acquire_async().await.unwrap();
    /// assert!(s.acquire_n_within_async(1, Some(Duration::from_millis(10))).await.is_err());
    /// # });
    /// ```
    pub async fn acquire_n_within_async(
        &self,
        n: u64,
        max_wait: Option<Duration>,
    ) -> Result<Permit<B>, SemaphoreError> {
        self.acquire_async_inner(n, max_wait)
            .await?
            .map_err(|(in_use, next)| self.timeout_error(max_wait, in_use, next))
    }

    /// Async [`try_acquire`](Self::try_acquire).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-try-async", 1).unwrap();
    /// let _p = s.try_acquire_async().await.unwrap().unwrap();
    /// assert!(s.try_acquire_async().await.unwrap().is_none());
    /// # });
    /// ```
    pub async fn try_acquire_async(&self) -> Result<Option<Permit<B>>, SemaphoreError> {
        self.try_acquire_n_async(1).await
    }

    /// Async [`try_acquire_n`](Self::try_acquire_n).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-try-n-async", 2).unwrap();
    /// assert!(s.try_acquire_n_async(3).await.is_err()); // can never fit
    /// # });
    /// ```
    pub async fn try_acquire_n_async(&self, n: u64) -> Result<Option<Permit<B>>, SemaphoreError> {
        Ok(self
            .acquire_async_inner(n, Some(Duration::ZERO))
            .await?
            .ok())
    }

    /// Async [`in_use`](Self::in_use).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-in-use-async", 2).unwrap();
    /// assert_eq!(s.in_use_async().await.unwrap(), 0);
    /// # });
    /// ```
    pub async fn in_use_async(&self) -> Result<u64, SemaphoreError> {
        Ok(self.status_async().await?.in_use)
    }

    /// Async [`status`](Self::status).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-status-async", 2).unwrap();
    /// assert_eq!(s.status_async().await.unwrap().holders, 0);
    /// # });
    /// ```
    pub async fn status_async(&self) -> Result<SemaphoreStatus, SemaphoreError> {
        Ok(self
            .inner
            .backend
            .status_async(&self.inner.name, self.now())
            .await?)
    }

    /// Awaits `fut` while holding one permit.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-call-async", 1).unwrap();
    /// assert_eq!(s.call_async(async { 7 }).await.unwrap(), 7);
    /// # });
    /// ```
    pub async fn call_async<F: Future>(&self, fut: F) -> Result<F::Output, SemaphoreError> {
        let _permit = self.acquire_async().await?;
        Ok(fut.await)
    }

    /// Wraps an async function so every call runs while holding one permit.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-wrap-async", 1).unwrap();
    /// let fetch = s.wrap_async(|id: u32| async move { id + 1 });
    /// assert_eq!(fetch(1).await.unwrap(), 2);
    /// # });
    /// ```
    pub fn wrap_async<A, F, Fut>(
        &self,
        f: F,
    ) -> impl Fn(A) -> futures_util::future::BoxFuture<'static, Result<Fut::Output, SemaphoreError>>
    where
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        A: Send + 'static,
    {
        let sem = self.clone();
        let f = Arc::new(f);
        move |arg| {
            let sem = sem.clone();
            let f = Arc::clone(&f);
            Box::pin(async move {
                let _permit = sem.acquire_async().await?;
                Ok(f(arg).await)
            })
        }
    }
}
