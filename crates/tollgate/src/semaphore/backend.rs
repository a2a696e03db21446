//! The [`SemaphoreBackend`] trait: what a store must do to hold a semaphore's leases.

pub use super::op::{SemaphoreOp, SemaphoreReply};
use crate::error::StoreError;
use crate::time::Micros;
use futures_util::future::BoxFuture;
use std::fmt;
use std::time::Duration;

/// The unique id of one holder (or waiter) of a semaphore: 128 random bits, shown as 32 hex
/// digits. A fresh id is drawn for every acquire, so a late release can never free another
/// holder's permits.
///
/// ```
/// use tollgate::semaphore::HolderId;
/// let a = HolderId::random();
/// let b = HolderId::random();
/// assert_ne!(a, b);
/// assert_eq!(a.to_string().len(), 32);
/// assert_eq!(HolderId::parse(&a.to_string()), Some(a));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HolderId(pub u128);

impl HolderId {
    /// A new random id (from the thread-local CSPRNG, seeded by the OS).
    ///
    /// ```
    /// assert_ne!(tollgate::semaphore::HolderId::random().0, 0);
    /// ```
    pub fn random() -> Self {
        loop {
            let id: u128 = rand::random();
            if id != 0 {
                return Self(id);
            }
        }
    }

    /// Parses the 32-hex-digit form.
    ///
    /// ```
    /// use tollgate::semaphore::HolderId;
    /// assert_eq!(HolderId::parse("000000000000000000000000000000ff"), Some(HolderId(255)));
    /// assert_eq!(HolderId::parse("xyz"), None);
    /// ```
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 32 {
            return None;
        }
        u128::from_str_radix(text, 16).ok().map(Self)
    }
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HolderId({self})")
    }
}

/// One attempt to take permits, as sent to a [`SemaphoreBackend`].
///
/// ```
/// use tollgate::semaphore::{AcquireRequest, HolderId};
/// let req = AcquireRequest {
///     name: "db", holder: HolderId::random(), permits: 1, capacity: 5,
///     lease: 30_000_000, queue_ttl: None, now: 0,
/// };
/// assert_eq!(req.permits, 1);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct AcquireRequest<'a> {
    /// The semaphore's name.
    pub name: &'a str,
    /// Who asks (also its place in the wait queue).
    pub holder: HolderId,
    /// How many permits (1..=capacity).
    pub permits: u64,
    /// The capacity of the semaphore (sent on every call, as every holder agrees on it).
    pub capacity: u64,
    /// The lease in µs: a granted holder expires at `now + lease`.
    pub lease: Micros,
    /// `Some(ttl)`: when not granted, join (or stay in) the FIFO wait queue; the entry is
    /// dropped if not refreshed within `ttl` µs. `None`: a one-shot attempt that never queues.
    pub queue_ttl: Option<Micros>,
    /// The caller's clock in µs (a distributed backend may use its own clock instead).
    pub now: Micros,
}

/// What a store answered to an [`AcquireRequest`].
///
/// ```
/// use tollgate::semaphore::AcquireOutcome;
/// let o = AcquireOutcome::Granted { expires_at: 10 };
/// assert!(o.is_granted());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub enum AcquireOutcome {
    /// The permits are held until `expires_at` (µs, on the store's clock).
    Granted {
        /// End of the lease on the store's clock.
        expires_at: Micros,
    },
    /// Granted by a failure policy while the store failed (see
    /// [`FailSafeSemaphore`](super::FailSafeSemaphore)): the permits are *not* held in the
    /// store, so other processes do not see them. `backing` says what holds them instead.
    GrantedWithoutStore {
        /// End of the lease on the caller's clock.
        expires_at: Micros,
        /// [`PermitBacking::Fallback`] or [`PermitBacking::Unbacked`].
        backing: PermitBacking,
    },
    /// Not granted now.
    Busy {
        /// Permits currently held by live holders.
        in_use: u64,
        /// How long until the earliest live lease ends (µs), if any holder exists: the
        /// latest moment to try again when nobody releases.
        next_expiry_in: Option<Micros>,
        /// A change counter for [`SemaphoreBackend::wait_blocking`]: waiting returns as soon
        /// as it no longer matches (something was released).
        epoch: u64,
    },
}

impl AcquireOutcome {
    /// True for [`AcquireOutcome::Granted`] and [`AcquireOutcome::GrantedWithoutStore`].
    ///
    /// ```
    /// use tollgate::semaphore::{AcquireOutcome, PermitBacking};
    /// assert!(!AcquireOutcome::Busy { in_use: 1, next_expiry_in: None, epoch: 0 }.is_granted());
    /// let unbacked = AcquireOutcome::GrantedWithoutStore { expires_at: 5, backing: PermitBacking::Unbacked };
    /// assert!(unbacked.is_granted());
    /// ```
    pub fn is_granted(&self) -> bool {
        self.granted().is_some()
    }

    /// For a grant: the lease end and what backs the permits; `None` when busy.
    ///
    /// ```
    /// use tollgate::semaphore::{AcquireOutcome, PermitBacking};
    /// let o = AcquireOutcome::Granted { expires_at: 10 };
    /// assert_eq!(o.granted(), Some((10, PermitBacking::Store)));
    /// ```
    pub fn granted(&self) -> Option<(Micros, PermitBacking)> {
        match *self {
            AcquireOutcome::Granted { expires_at } => Some((expires_at, PermitBacking::Store)),
            AcquireOutcome::GrantedWithoutStore {
                expires_at,
                backing,
            } => Some((expires_at, backing)),
            AcquireOutcome::Busy { .. } => None,
        }
    }
}

/// What holds a granted permit: the semaphore's store (the normal case), or — while the
/// store fails, under a [`FailSafeSemaphore`](super::FailSafeSemaphore) policy — a
/// process-local fallback semaphore, or nothing at all (fail open).
///
/// ```
/// use tollgate::semaphore::PermitBacking;
/// assert_eq!(PermitBacking::Unbacked.as_str(), "unbacked");
/// assert!(PermitBacking::Store.is_store());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PermitBacking {
    /// Held in the semaphore's store: counted against the capacity everywhere that store is
    /// shared.
    Store,
    /// Held in the process-local fallback semaphore (same capacity, this process only):
    /// the store failed when it was acquired.
    Fallback,
    /// Held nowhere that limits anyone: granted by fail-open while the store failed.
    Unbacked,
}

impl PermitBacking {
    /// A short label (`store`, `fallback`, `unbacked`).
    ///
    /// ```
    /// assert_eq!(tollgate::semaphore::PermitBacking::Fallback.as_str(), "fallback");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            PermitBacking::Store => "store",
            PermitBacking::Fallback => "fallback",
            PermitBacking::Unbacked => "unbacked",
        }
    }

    /// True for [`PermitBacking::Store`].
    ///
    /// ```
    /// assert!(!tollgate::semaphore::PermitBacking::Unbacked.is_store());
    /// ```
    pub fn is_store(self) -> bool {
        self == PermitBacking::Store
    }
}

/// What a release did.
///
/// ```
/// use tollgate::semaphore::ReleaseOutcome;
/// assert_ne!(ReleaseOutcome::Released, ReleaseOutcome::NotHeld);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum ReleaseOutcome {
    /// The holder held live permits; they are free now.
    Released,
    /// The holder held nothing (its lease had ended, or it was never granted). Nothing else
    /// was touched.
    NotHeld,
}

/// What an extension did.
///
/// ```
/// use tollgate::semaphore::ExtendOutcome;
/// assert_eq!(ExtendOutcome::Extended { expires_at: 5 }, ExtendOutcome::Extended { expires_at: 5 });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum ExtendOutcome {
    /// The lease now ends at `expires_at` (µs, store clock).
    Extended {
        /// New end of the lease.
        expires_at: Micros,
    },
    /// The holder's lease had already ended: it holds nothing, and extending does not bring
    /// it back.
    NotHeld,
}

/// A snapshot of one semaphore.
///
/// ```
/// let s = tollgate::semaphore::SemaphoreStatus::default();
/// assert_eq!(s.in_use, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SemaphoreStatus {
    /// Permits held by live holders.
    pub in_use: u64,
    /// Live holders.
    pub holders: u64,
    /// Live entries in the wait queue.
    pub waiting: u64,
}

/// A store that holds semaphore leases: the in-memory [`MemorySemaphoreBackend`] or a
/// distributed one (Redis in `tollgate-redis`).
///
/// A backend implements two methods, [`call`](Self::call) (blocking) and
/// [`call_async`](Self::call_async), each running one [`SemaphoreOp`] atomically; the
/// per-operation methods (`try_acquire`, `release`, `extend`, `status` and their `_async`
/// forms) are provided on top of them. The rules every implementation keeps:
///
/// - A holder counts while `now < expires_at`; expired holders are dropped in the same
///   atomic step that looks at them, so a dead holder's permits come back when its lease ends
///   and never before.
/// - `in_use + permits <= capacity` for a grant, where the permits of live waiters queued
///   ahead of the caller count as used (FIFO: a newcomer never overtakes a waiter, and a
///   request for many permits is not starved by requests for one).
/// - `release` and `extend` act only on the holder's own live entry: a holder whose lease
///   ended gets [`ReleaseOutcome::NotHeld`]/[`ExtendOutcome::NotHeld`] and changes nothing.
/// - `release` also removes the id from the wait queue (used to leave it on timeout or
///   cancellation) and is idempotent.
/// - The reply is of the operation's variant ([`SemaphoreReply`]).
///
/// [`MemorySemaphoreBackend`]: super::MemorySemaphoreBackend
///
/// ```
/// use tollgate::semaphore::{AcquireRequest, HolderId, MemorySemaphoreBackend, SemaphoreBackend, ReleaseOutcome};
/// let backend = MemorySemaphoreBackend::new();
/// let holder = HolderId::random();
/// let req = AcquireRequest { name: "db", holder, permits: 1, capacity: 1, lease: 1_000, queue_ttl: None, now: 0 };
/// assert!(backend.try_acquire(&req).unwrap().is_granted());
/// assert_eq!(backend.release("db", holder, 10).unwrap(), ReleaseOutcome::Released);
/// ```
pub trait SemaphoreBackend: Send + Sync + 'static {
    /// True when every call completes without I/O (the in-memory backend): the async
    /// methods then run the sync ones inline, which makes acquisition cancel-safe by
    /// construction. Remote backends return false; the [`Semaphore`](super::Semaphore) then
    /// runs each async attempt in a spawned task that gives back a grant nobody received.
    fn is_local(&self) -> bool {
        false
    }

    /// Runs `op` atomically, blocking the thread for the store call.
    fn call(&self, op: SemaphoreOp<'_>) -> Result<SemaphoreReply, StoreError>;

    /// Async [`call`](Self::call).
    fn call_async<'a>(
        &'a self,
        op: SemaphoreOp<'a>,
    ) -> BoxFuture<'a, Result<SemaphoreReply, StoreError>>;

    /// Tries to take `req.permits` permits, blocking the thread for the store call.
    fn try_acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        self.call(SemaphoreOp::Acquire(*req))?.into_acquire()
    }

    /// Async [`try_acquire`](Self::try_acquire).
    fn try_acquire_async<'a>(
        &'a self,
        req: &'a AcquireRequest<'a>,
    ) -> BoxFuture<'a, Result<AcquireOutcome, StoreError>> {
        let call = self.call_async(SemaphoreOp::Acquire(*req));
        Box::pin(async move { call.await?.into_acquire() })
    }

    /// Frees the holder's permits (if its lease is live) and removes it from the wait queue.
    fn release(
        &self,
        name: &str,
        holder: HolderId,
        now: Micros,
    ) -> Result<ReleaseOutcome, StoreError> {
        self.call(SemaphoreOp::Release { name, holder, now })?
            .into_release()
    }

    /// Async [`release`](Self::release).
    fn release_async<'a>(
        &'a self,
        name: &'a str,
        holder: HolderId,
        now: Micros,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, StoreError>> {
        let call = self.call_async(SemaphoreOp::Release { name, holder, now });
        Box::pin(async move { call.await?.into_release() })
    }

    /// Moves a live holder's expiry to `now + lease`.
    fn extend(
        &self,
        name: &str,
        holder: HolderId,
        lease: Micros,
        now: Micros,
    ) -> Result<ExtendOutcome, StoreError> {
        self.call(extend_op(name, holder, lease, now))?
            .into_extend()
    }

    /// Async [`extend`](Self::extend).
    fn extend_async<'a>(
        &'a self,
        name: &'a str,
        holder: HolderId,
        lease: Micros,
        now: Micros,
    ) -> BoxFuture<'a, Result<ExtendOutcome, StoreError>> {
        let call = self.call_async(extend_op(name, holder, lease, now));
        Box::pin(async move { call.await?.into_extend() })
    }

    /// Counts live holders, permits and waiters.
    fn status(&self, name: &str, now: Micros) -> Result<SemaphoreStatus, StoreError> {
        self.call(SemaphoreOp::Status { name, now })?.into_status()
    }

    /// Async [`status`](Self::status).
    fn status_async<'a>(
        &'a self,
        name: &'a str,
        now: Micros,
    ) -> BoxFuture<'a, Result<SemaphoreStatus, StoreError>> {
        let call = self.call_async(SemaphoreOp::Status { name, now });
        Box::pin(async move { call.await?.into_status() })
    }

    /// Waits (blocking the thread) until something may have been released on `name` since
    /// the `epoch` of a busy answer, or at most `max`. `attempt` counts the busy answers of
    /// this wait so far. The default polls: it sleeps `min(max, backoff(attempt))`, with an
    /// exponential backoff from 1 ms to 50 ms.
    fn wait_blocking(&self, name: &str, epoch: u64, attempt: u32, max: Duration) {
        let _ = (name, epoch);
        std::thread::sleep(max.min(poll_backoff(attempt)));
    }

    /// Async [`wait_blocking`](Self::wait_blocking); the default sleeps on the tokio timer.
    fn wait<'a>(
        &'a self,
        name: &'a str,
        epoch: u64,
        attempt: u32,
        max: Duration,
    ) -> BoxFuture<'a, ()> {
        let _ = (name, epoch);
        Box::pin(tokio::time::sleep(max.min(poll_backoff(attempt))))
    }
}

fn extend_op(name: &str, holder: HolderId, lease: Micros, now: Micros) -> SemaphoreOp<'_> {
    SemaphoreOp::Extend {
        name,
        holder,
        lease,
        now,
    }
}

/// The default poll backoff of [`SemaphoreBackend::wait`]: 1 ms doubling up to 50 ms, with
/// ±25 % jitter so a crowd of waiters does not poll in lockstep.
///
/// ```
/// use std::time::Duration;
/// let first = tollgate::semaphore::poll_backoff(0);
/// assert!(first >= Duration::from_micros(750) && first <= Duration::from_micros(1250));
/// assert!(tollgate::semaphore::poll_backoff(30) <= Duration::from_micros(62_500));
/// ```
pub fn poll_backoff(attempt: u32) -> Duration {
    let base: u64 = 1_000u64.saturating_mul(1u64 << attempt.min(16)).min(50_000);
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_micros(base - base / 4 + jitter)
}

macro_rules! forward_backend {
    ($t:ty) => {
        impl<B: SemaphoreBackend + ?Sized> SemaphoreBackend for $t {
            fn is_local(&self) -> bool {
                (**self).is_local()
            }
            fn call(&self, op: SemaphoreOp<'_>) -> Result<SemaphoreReply, StoreError> {
                (**self).call(op)
            }
            fn call_async<'a>(
                &'a self,
                op: SemaphoreOp<'a>,
            ) -> BoxFuture<'a, Result<SemaphoreReply, StoreError>> {
                (**self).call_async(op)
            }
            fn wait_blocking(&self, name: &str, epoch: u64, attempt: u32, max: Duration) {
                (**self).wait_blocking(name, epoch, attempt, max)
            }
            fn wait<'a>(
                &'a self,
                name: &'a str,
                epoch: u64,
                attempt: u32,
                max: Duration,
            ) -> BoxFuture<'a, ()> {
                (**self).wait(name, epoch, attempt, max)
            }
        }
    };
}

forward_backend!(std::sync::Arc<B>);
forward_backend!(Box<B>);
