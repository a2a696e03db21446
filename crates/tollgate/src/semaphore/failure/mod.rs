//! [`FailSafeSemaphore`]: what a semaphore does when its store fails — fail closed, fail
//! open, or fall back to an in-memory semaphore of the same capacity. The same choices, metric
//! and hook as the rate limiter's [`store::failure`](crate::store::failure).
//!
//! | operation | fail closed | fail open | fallback |
//! |---|---|---|---|
//! | acquire | the `StoreError` (→ [`SemaphoreError::Store`](super::SemaphoreError::Store)) | granted at once, [`PermitBacking::Unbacked`] | the local semaphore decides (granted: [`PermitBacking::Fallback`]; busy: wait as usual) |
//! | release / extend of a permit granted without the store | — | local, no store call | local, no store call |
//! | release / extend of a store permit | the `StoreError` | the `StoreError` | the `StoreError` |
//! | status | the `StoreError` | the `StoreError` | the local semaphore's status |
//!
//! A store error is never turned into "busy". Release and extend of a permit the store holds
//! cannot be answered by anyone else, so their errors are returned under every policy (a
//! dropped permit logs it; the store frees the permits when the lease ends) and are not
//! counted below.
//!
//! **Fast failure and recovery**: store calls go through the same
//! [`CircuitBreaker`](crate::store::failure::CircuitBreaker) as limiters (default: opens
//! after 5 consecutive failures; share one with [`with_breaker`](FailSafeSemaphore::with_breaker)).
//! While it is open, acquires are answered by the policy at once without touching the store,
//! and release / extend / status of store permits fail at once with a `StoreError` of kind
//! `CircuitOpen`. After the cool-down one call probes the store; its success closes the
//! breaker and the semaphore is back on the store. Permits granted without it stay local
//! until released (for one lease at most they add to what the store counts).
//!
//! **Capacity while the store is down**: fail open admits everyone; fallback admits up to the
//! capacity *per process* (each process has its own fallback), so a fleet of `n` processes
//! may hold up to `n ×` capacity. Share one `FailSafeSemaphore` (in an `Arc`) per process:
//! two wrappers have two fallbacks.
//!
//! **A grant whose reply was lost**: when a store call fails in a way that may have reached
//! the store (a timeout, a dropped connection), the wrapper first gives the holder id back to
//! the store (best effort, result ignored), because the store may have granted before the
//! answer was lost; otherwise that grant would count until its lease ended. A refused
//! connection or an open breaker never reached the store, so nothing is given back.
//!
//! **Observability**: each acquire (and, for fallback, status) the store could not answer
//! increments the `metrics` counter `tollgate_store_failures_total{policy, outcome}` — the
//! same name and labels as for limiters: `policy` = `fail_open` / `fail_closed` /
//! `fallback`, `outcome` = `admitted` / `rejected` / `fell_back` / `fallback_failed` — logs a
//! warning, and calls the optional hook. The hook observes only: it returns nothing, and a
//! panic inside it is caught. Permits granted without the store also count in
//! `tollgate_semaphore_acquired_without_store_total{backing}`.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use tollgate::semaphore::{FailSafeSemaphore, MemorySemaphoreBackend, Semaphore};
//!
//! let store = MemorySemaphoreBackend::new(); // e.g. a tollgate_redis::RedisSemaphoreBackend
//! let failures = Arc::new(AtomicUsize::new(0));
//! let seen = Arc::clone(&failures);
//! let backend = FailSafeSemaphore::fallback_to_memory(store)
//!     .on_failure(move |_err, _outcome| { seen.fetch_add(1, Ordering::Relaxed); });
//! let sem = Semaphore::builder("partner-api", 5).build_on(Arc::new(backend)).unwrap();
//! let permit = sem.acquire().unwrap();
//! assert!(permit.backing().is_store()); // the store answered
//! assert_eq!(failures.load(Ordering::Relaxed), 0);
//! ```

use super::backend::{
    AcquireOutcome, AcquireRequest, ExtendOutcome, PermitBacking, ReleaseOutcome, SemaphoreBackend,
};
use super::memory::MemorySemaphoreBackend;
use crate::error::{StoreError, StoreErrorKind};
use crate::hooks::Hook;
use crate::store::failure::breaker::Admission;
use crate::store::failure::{guard_methods, CircuitBreaker, FailureOutcome, FailurePolicy, Guard};
use futures_util::future::BoxFuture;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod backend;

enum Mode<F> {
    /// Unbacked holders are kept (with their leases) in a private memory backend asked with
    /// an unlimited capacity, so release / extend / expiry work as for any permit.
    Open(MemorySemaphoreBackend),
    Closed,
    Fallback(F),
}

/// A [`SemaphoreBackend`] that applies a [`FailurePolicy`] to the failures of another
/// (`docs/semaphore.md` says exactly what each policy does).
///
/// ```
/// use std::sync::Arc;
/// use tollgate::semaphore::{FailSafeSemaphore, MemorySemaphoreBackend, Semaphore};
/// use tollgate::store::failure::FailurePolicy;
/// let primary = MemorySemaphoreBackend::new(); // e.g. a Redis backend
/// let backend = FailSafeSemaphore::with_policy(primary, FailurePolicy::FailOpen);
/// assert_eq!(backend.policy(), FailurePolicy::FailOpen);
/// let sem = Semaphore::builder("reports", 2).build_on(Arc::new(backend)).unwrap();
/// assert!(sem.try_acquire().unwrap().is_some());
/// ```
pub struct FailSafeSemaphore<B, F = MemorySemaphoreBackend> {
    primary: B,
    mode: Mode<F>,
    guard: Guard,
    /// Set once anything was granted or queued locally: from then on release / extend look
    /// there first (one in-memory lookup), and store answers clear local queue places.
    local_used: AtomicBool,
}

impl<B, F> fmt::Debug for FailSafeSemaphore<B, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailSafeSemaphore")
            .field("policy", &self.policy())
            .field("breaker", &self.guard.breaker)
            .field("hook", &self.guard.hook.is_some())
            .finish_non_exhaustive()
    }
}

impl<B, F> FailSafeSemaphore<B, F> {
    /// The failure policy applied.
    ///
    /// ```
    /// use tollgate::semaphore::{FailSafeSemaphore, MemorySemaphoreBackend};
    /// use tollgate::store::failure::FailurePolicy;
    /// let b = FailSafeSemaphore::fail_closed(MemorySemaphoreBackend::new());
    /// assert_eq!(b.policy(), FailurePolicy::FailClosed);
    /// ```
    pub fn policy(&self) -> FailurePolicy {
        match self.mode {
            Mode::Open(_) => FailurePolicy::FailOpen,
            Mode::Closed => FailurePolicy::FailClosed,
            Mode::Fallback(_) => FailurePolicy::Fallback,
        }
    }

    /// The primary backend (the store).
    ///
    /// ```
    /// use tollgate::semaphore::{FailSafeSemaphore, MemorySemaphoreBackend};
    /// let b = FailSafeSemaphore::fail_closed(MemorySemaphoreBackend::new());
    /// assert_eq!(b.primary().names(), 0);
    /// ```
    pub fn primary(&self) -> &B {
        &self.primary
    }

    guard_methods!(
        "use tollgate::semaphore::{FailSafeSemaphore, MemorySemaphoreBackend};\n\
         let w = FailSafeSemaphore::fail_open(MemorySemaphoreBackend::new());",
        "Scope: the semaphore's acquires (and, for fallback, status calls) the store could not \
         answer; while the breaker is open, release / extend / status of store permits fail \
         at once."
    );

    /// Wraps it in an `Arc`, as
    /// [`SemaphoreBuilder::build_on`](super::SemaphoreBuilder::build_on) takes.
    ///
    /// ```
    /// use tollgate::semaphore::{FailSafeSemaphore, MemorySemaphoreBackend, Semaphore};
    /// let b = FailSafeSemaphore::fail_closed(MemorySemaphoreBackend::new()).into_arc();
    /// let sem = Semaphore::builder("arc", 1).build_on(b).unwrap();
    /// # drop(sem);
    /// ```
    pub fn into_arc(self) -> Arc<Self> {
        Arc::new(self)
    }

    fn new(primary: B, mode: Mode<F>) -> Self {
        Self {
            primary,
            mode,
            guard: Guard::default(),
            local_used: AtomicBool::new(false),
        }
    }

    fn observe(&self, err: &StoreError, outcome: FailureOutcome) {
        self.guard
            .observe("semaphore store", err, self.policy(), outcome, None);
    }

    /// Runs a store call through the breaker: an open breaker answers with its error at
    /// once, without touching the store.
    async fn guarded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let admission = self.guard.breaker.admit();
        if let Admission::Reject(err) = admission {
            return Err(err);
        }
        self.settle(admission.is_probe(), call.await)
    }

    fn settle<T>(&self, probe: bool, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Ok(_) => self.guard.answered(probe, true),
            Err(err) => self.guard.failed(probe, err),
        }
        result
    }
}

impl<B: SemaphoreBackend> FailSafeSemaphore<B, MemorySemaphoreBackend> {
    /// Returns the store's error (counted and reported to the hook): today's behaviour of a
    /// bare backend, plus the metric and hook.
    ///
    /// ```
    /// use tollgate::semaphore::{FailSafeSemaphore, MemorySemaphoreBackend};
    /// let b = FailSafeSemaphore::fail_closed(MemorySemaphoreBackend::new());
    /// # let _ = b;
    /// ```
    pub fn fail_closed(primary: B) -> Self {
        Self::new(primary, Mode::Closed)
    }

    /// Grants every acquire the store cannot answer, at once, with a permit marked
    /// [`Permit::is_unbacked`](super::Permit::is_unbacked): nothing limits concurrency while
    /// the store is down.
    ///
    /// ```
    /// use tollgate::semaphore::{FailSafeSemaphore, MemorySemaphoreBackend};
    /// use tollgate::store::failure::FailurePolicy;
    /// let b = FailSafeSemaphore::fail_open(MemorySemaphoreBackend::new());
    /// assert_eq!(b.policy(), FailurePolicy::FailOpen);
    /// ```
    pub fn fail_open(primary: B) -> Self {
        Self::new(primary, Mode::Open(MemorySemaphoreBackend::new()))
    }

    /// Falls back to a fresh in-memory semaphore backend (same names, same capacity, this
    /// process only) for every acquire the store cannot answer.
    ///
    /// ```
    /// use tollgate::semaphore::{FailSafeSemaphore, MemorySemaphoreBackend};
    /// use tollgate::store::failure::FailurePolicy;
    /// let b = FailSafeSemaphore::fallback_to_memory(MemorySemaphoreBackend::new());
    /// assert_eq!(b.policy(), FailurePolicy::Fallback);
    /// ```
    pub fn fallback_to_memory(primary: B) -> Self {
        Self::new(primary, Mode::Fallback(MemorySemaphoreBackend::new()))
    }

    /// Any policy ([`FailurePolicy::Fallback`] means a fresh in-memory fallback).
    ///
    /// ```
    /// use tollgate::semaphore::{FailSafeSemaphore, MemorySemaphoreBackend};
    /// use tollgate::store::failure::FailurePolicy;
    /// let b = FailSafeSemaphore::with_policy(MemorySemaphoreBackend::new(), FailurePolicy::Fallback);
    /// assert_eq!(b.policy(), FailurePolicy::Fallback);
    /// ```
    pub fn with_policy(primary: B, policy: FailurePolicy) -> Self {
        match policy {
            FailurePolicy::FailOpen => Self::fail_open(primary),
            FailurePolicy::Fallback => Self::fallback_to_memory(primary),
            _ => Self::fail_closed(primary),
        }
    }
}

impl<B: SemaphoreBackend, F: SemaphoreBackend> FailSafeSemaphore<B, F> {
    /// Falls back to `fallback` (any backend; it should be local, as release and extend ask it
    /// first once it was used) when the primary fails.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tollgate::semaphore::{FailSafeSemaphore, MemorySemaphoreBackend};
    /// let shared_fallback = Arc::new(MemorySemaphoreBackend::new());
    /// let b = FailSafeSemaphore::fallback(MemorySemaphoreBackend::new(), shared_fallback);
    /// # let _ = b;
    /// ```
    pub fn fallback(primary: B, fallback: F) -> Self {
        Self::new(primary, Mode::Fallback(fallback))
    }

    /// The local backend (fail open or fallback), once anything went there.
    fn used_local(&self) -> Option<&dyn SemaphoreBackend> {
        if !self.local_used.load(Ordering::Acquire) {
            return None;
        }
        self.local()
    }

    /// The fallback, when it was used and this request may have queued there before (fail
    /// open never queues locally).
    fn used_fallback_queue(&self, req: &AcquireRequest<'_>) -> Option<&dyn SemaphoreBackend> {
        match &self.mode {
            Mode::Fallback(fallback)
                if req.queue_ttl.is_some() && self.local_used.load(Ordering::Acquire) =>
            {
                Some(fallback)
            }
            _ => None,
        }
    }

    fn local(&self) -> Option<&dyn SemaphoreBackend> {
        match &self.mode {
            Mode::Open(memory) => Some(memory),
            Mode::Closed => None,
            Mode::Fallback(fallback) => Some(fallback),
        }
    }

    /// The request as the local backend gets it: unlimited and never queued for fail open.
    fn local_request<'r>(&self, req: &AcquireRequest<'r>) -> AcquireRequest<'r> {
        match self.mode {
            Mode::Open(_) => AcquireRequest {
                capacity: u64::MAX,
                queue_ttl: None,
                ..*req
            },
            _ => *req,
        }
    }

    /// Maps the local answer to what the caller gets, and reports the failure.
    fn local_answer(
        &self,
        err: StoreError,
        local: Result<AcquireOutcome, StoreError>,
    ) -> Result<AcquireOutcome, StoreError> {
        let backing = match self.mode {
            Mode::Open(_) => PermitBacking::Unbacked,
            _ => PermitBacking::Fallback,
        };
        match local {
            Ok(outcome) => {
                self.observe(
                    &err,
                    match self.mode {
                        Mode::Open(_) => FailureOutcome::Admitted,
                        _ => FailureOutcome::FellBack,
                    },
                );
                Ok(match outcome {
                    AcquireOutcome::Granted { expires_at } => AcquireOutcome::GrantedWithoutStore {
                        expires_at,
                        backing,
                    },
                    other => other,
                })
            }
            Err(local_err) => {
                if let Mode::Open(_) = self.mode {
                    // The private memory backend does not fail; if it ever did, the caller
                    // gets the store's error.
                    self.observe(&err, FailureOutcome::Rejected);
                    Err(err)
                } else {
                    self.observe(&err, FailureOutcome::FallbackFailed);
                    Err(local_err)
                }
            }
        }
    }

    fn rejected(&self, err: StoreError) -> Result<AcquireOutcome, StoreError> {
        self.observe(&err, FailureOutcome::Rejected);
        Err(err)
    }
}

impl<B: SemaphoreBackend, F: SemaphoreBackend> FailSafeSemaphore<B, F> {
    fn status_answer<T>(&self, err: &StoreError, result: &Result<T, StoreError>) {
        self.observe(
            err,
            if result.is_ok() {
                FailureOutcome::FellBack
            } else {
                FailureOutcome::FallbackFailed
            },
        );
    }
}

/// Whether the store may have run an acquire whose answer was lost: not when it refused the
/// connection or the credentials, nor when the breaker did not send it.
fn may_have_granted(err: &StoreError) -> bool {
    !matches!(
        err.kind,
        StoreErrorKind::ConnectionRefused | StoreErrorKind::Auth | StoreErrorKind::CircuitOpen
    )
}
