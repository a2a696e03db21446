//! What a limiter does when its store fails: fail open, fail closed, or fall back to another
//! backend (typically an in-memory one). Works over any [`Backend`].
//!
//! A store failure is never disguised as a denial:
//!
//! | policy | on `Error::Store(e)` from the primary store |
//! |---|---|
//! | [`FailurePolicy::FailOpen`] | `check`/`peek` admit (`Decision::fail_open(limit)`); `refund`/`reset` are dropped |
//! | [`FailurePolicy::FailClosed`] | the `Error::Store(e)` is returned; the caller must treat it as "not admitted" (e.g. HTTP 503), which is distinct from a denial (429) |
//! | [`FailurePolicy::Fallback`] | the same operation runs on the fallback backend; if that fails too, its error is returned |
//!
//! Only [`Error::Store`] triggers the policy; a usage error (cost above capacity, invalid
//! cost, key too long) is returned as is, since another store would say the same.
//!
//! Timeouts are the store's: each store applies its own call timeout (e.g. the Redis store's
//! `timeout`) and reports an expired one as a `StoreError` of kind `Timeout`, which this
//! wrapper handles like any other failure.
//!
//! **An outage fails fast**: every wrapper has a [`CircuitBreaker`] (default: opens after 5
//! consecutive store failures, probes after 1 s; see [`breaker`]). While it is open, calls
//! are answered by the policy at once without touching the store, with a `StoreError` of
//! kind [`CircuitOpen`](crate::StoreErrorKind::CircuitOpen) naming the last real cause; the
//! first call after the cool-down probes the store and a success closes the breaker. All
//! backends bound by one [`FailSafeStore`] share its breaker, and one breaker can be shared
//! with a [`FailSafeSemaphore`](crate::semaphore::FailSafeSemaphore) over the same store.
//!
//! **Observability**: every failure increments the `metrics` counters
//! `tollgate_store_failures_total{policy, outcome}` (`policy` = `fail_open` / `fail_closed` /
//! `fallback`; `outcome` = [`FailureOutcome::as_str`]) and `tollgate_store_errors_total{store,
//! kind}` (`kind` = [`StoreErrorKind::as_str`](crate::StoreErrorKind::as_str)), logs it, and
//! shows an [`Event::StoreFailure`](crate::hooks::Event::StoreFailure) to the optional
//! [hook](crate::hooks); breaker transitions set the gauge `tollgate_circuit_breaker_state`
//! and are shown as [`Event::Breaker`](crate::hooks::Event::Breaker). A hook observes; it
//! cannot change the verdict: it returns nothing, and a hook that panics is caught and
//! ignored. A limiter's own decision hook also sees the failures its failure policy
//! answered ([`DecisionEvent::store_failure`](crate::hooks::DecisionEvent::store_failure)).
//!
//! ```
//! use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
//! use futures_util::future::BoxFuture;
//! use tollgate::{Decision, Error, Limiter, Policy, Rate, StoreError};
//! use tollgate::store::{Backend, Op, failure::{FailSafe, FailureOutcome}};
//!
//! // A store that is always down.
//! struct Down;
//! impl Backend for Down {
//!     fn execute(&self, _: &str, _: Op, _: u64) -> Result<Option<Decision>, Error> {
//!         Err(StoreError::new("demo", "connection refused").into())
//!     }
//!     fn execute_async<'a>(&'a self, k: &'a str, op: Op, now: u64)
//!         -> BoxFuture<'a, Result<Option<Decision>, Error>> {
//!         Box::pin(async move { self.execute(k, op, now) })
//!     }
//! }
//!
//! let policy = Policy::gcra(Rate::per_second(2).unwrap()).unwrap();
//! let failures = Arc::new(AtomicUsize::new(0));
//! let seen = failures.clone();
//! let backend = FailSafe::fallback_to_memory(Down, &policy)
//!     .on_failure(move |_err, outcome| {
//!         assert_eq!(outcome, FailureOutcome::FellBack);
//!         seen.fetch_add(1, Ordering::Relaxed);
//!     });
//! let limiter = Limiter::builder(policy).build_on(backend);
//! assert!(limiter.check("k").unwrap().allowed);
//! assert!(limiter.check("k").unwrap().allowed);
//! assert!(!limiter.check("k").unwrap().allowed); // the in-memory fallback enforces the rate
//! assert_eq!(failures.load(Ordering::Relaxed), 3);
//! ```

pub mod breaker;
mod guard;
mod multi;
mod store;

pub use breaker::{
    BreakerBuilder, BreakerState, BreakerTransition, CircuitBreaker, DEFAULT_BREAKER_COOL_DOWN,
    DEFAULT_BREAKER_FAILURES,
};
pub(crate) use guard::{guard_methods, Guard};
pub use store::FailSafeStore;

use super::io::{self, Io};
use super::memory::{MemoryBackend, MemoryStore};
use super::{Backend, Op, Store};
use crate::decision::Decision;
use crate::error::{Error, StoreError};
use crate::hooks::{Hook, StoreFailure};
use crate::policy::Policy;
use crate::time::Micros;
use breaker::Admission;
use futures_util::future::BoxFuture;
use std::fmt;
use std::sync::Arc;

/// Which failure policy a [`FailSafe`] applies.
///
/// ```
/// use tollgate::store::failure::FailurePolicy;
/// assert_eq!(FailurePolicy::FailOpen.as_str(), "fail_open");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Admit when the store fails.
    FailOpen,
    /// Return the store error (the caller does not admit).
    FailClosed,
    /// Ask the fallback backend.
    Fallback,
}

impl FailurePolicy {
    /// The metric label.
    ///
    /// ```
    /// assert_eq!(tollgate::store::failure::FailurePolicy::Fallback.as_str(), "fallback");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::FailOpen => "fail_open",
            FailurePolicy::FailClosed => "fail_closed",
            FailurePolicy::Fallback => "fallback",
        }
    }
}

/// What happened to a call whose store failed.
///
/// ```
/// use tollgate::store::failure::FailureOutcome;
/// assert_eq!(FailureOutcome::Admitted.as_str(), "admitted");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureOutcome {
    /// Fail open: the call was admitted (or, for refund/reset, dropped) without the store.
    Admitted,
    /// Fail closed: the store error was returned to the caller.
    Rejected,
    /// The fallback backend answered.
    FellBack,
    /// The fallback backend failed too; its error was returned.
    FallbackFailed,
}

impl FailureOutcome {
    /// The metric label.
    ///
    /// ```
    /// assert_eq!(tollgate::store::failure::FailureOutcome::FellBack.as_str(), "fell_back");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            FailureOutcome::Admitted => "admitted",
            FailureOutcome::Rejected => "rejected",
            FailureOutcome::FellBack => "fell_back",
            FailureOutcome::FallbackFailed => "fallback_failed",
        }
    }
}

enum Mode<F> {
    Open { limit: u64 },
    Closed,
    Fallback(F),
}

/// A backend that applies a [`FailurePolicy`] to the failures of another, with a
/// [`CircuitBreaker`] so an outage fails fast.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate, store::{Store, memory::MemoryStore, failure::FailSafe}};
/// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
/// let primary = MemoryStore::new().bind(&policy).unwrap(); // e.g. a Redis backend
/// let limiter = Limiter::builder(policy.clone()).build_on(FailSafe::fail_open(primary, &policy));
/// assert!(limiter.check("k").unwrap().allowed);
/// ```
pub struct FailSafe<B, F = MemoryBackend> {
    primary: B,
    mode: Mode<F>,
    pub(super) guard: Guard,
}

impl<B, F> fmt::Debug for FailSafe<B, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailSafe")
            .field("policy", &self.policy())
            .field("breaker", &self.guard.breaker)
            .field("hook", &self.guard.hook.is_some())
            .finish_non_exhaustive()
    }
}

impl<B, F> FailSafe<B, F> {
    /// The failure policy applied.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, failure::{FailSafe, FailurePolicy}}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let b = FailSafe::fail_open(MemoryStore::new().bind(&policy).unwrap(), &policy);
    /// assert_eq!(b.policy(), FailurePolicy::FailOpen);
    /// ```
    pub fn policy(&self) -> FailurePolicy {
        match self.mode {
            Mode::Open { .. } => FailurePolicy::FailOpen,
            Mode::Closed => FailurePolicy::FailClosed,
            Mode::Fallback(_) => FailurePolicy::Fallback,
        }
    }

    guard_methods!(
        "use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, failure::FailSafe}};\n\
         let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();\n\
         let w = FailSafe::fail_closed(MemoryStore::new().bind(&policy).unwrap());",
        "Scope: the calls of this backend (a [`FailSafeStore`] shares one breaker and its hooks \
         between every backend it binds)."
    );

    /// The primary backend.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, failure::FailSafe}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let b = FailSafe::fail_closed(MemoryStore::new().bind(&policy).unwrap());
    /// assert_eq!(b.primary().stats().keys, 0);
    /// ```
    pub fn primary(&self) -> &B {
        &self.primary
    }

    fn build(primary: B, mode: Mode<F>) -> Self {
        FailSafe {
            primary,
            mode,
            guard: Guard::default(),
        }
    }
}

impl<B: Backend> FailSafe<B, MemoryBackend> {
    /// Admits every call the store cannot answer, reporting the policy's capacity as
    /// `limit` and `remaining`.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, failure::{FailSafe, FailurePolicy}}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let b = FailSafe::fail_open(MemoryStore::new().bind(&policy).unwrap(), &policy);
    /// assert_eq!(b.policy(), FailurePolicy::FailOpen);
    /// ```
    pub fn fail_open(primary: B, policy: &Policy) -> Self {
        FailSafe::build(
            primary,
            Mode::Open {
                limit: policy.max_cost(),
            },
        )
    }

    /// Returns the store's error (counted and reported to the hook); the caller must not
    /// admit on `Err`.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, failure::{FailSafe, FailurePolicy}}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let b = FailSafe::fail_closed(MemoryStore::new().bind(&policy).unwrap());
    /// assert_eq!(b.policy(), FailurePolicy::FailClosed);
    /// ```
    pub fn fail_closed(primary: B) -> Self {
        FailSafe::build(primary, Mode::Closed)
    }

    /// Falls back to a default in-memory limiter of the same policy: while the store is
    /// down, each process enforces the policy on its own (so a fleet of `n` processes admits
    /// up to `n` times the limit), and the in-memory state is forgotten when the store comes
    /// back.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, failure::{FailSafe, FailurePolicy}}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let b = FailSafe::fallback_to_memory(MemoryStore::new().bind(&policy).unwrap(), &policy);
    /// assert_eq!(b.policy(), FailurePolicy::Fallback);
    /// ```
    pub fn fallback_to_memory(primary: B, policy: &Policy) -> Self {
        let fallback = MemoryStore::default()
            .bind(policy)
            .expect("the memory store accepts every valid policy");
        FailSafe::fallback(primary, fallback)
    }
}

impl<B: Backend, F: Backend> FailSafe<B, F> {
    /// Falls back to `fallback` (bound to the same policy) when the primary store fails.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, failure::FailSafe}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let primary = MemoryStore::new().bind(&policy).unwrap();
    /// let fallback = MemoryStore::new().max_keys(10_000).bind(&policy).unwrap();
    /// let b = FailSafe::fallback(primary, fallback);
    /// # let _ = b;
    /// ```
    pub fn fallback(primary: B, fallback: F) -> Self {
        FailSafe::build(primary, Mode::Fallback(fallback))
    }
}

type Report<'r> = Option<&'r mut Option<StoreFailure>>;

impl<B: Backend, F: Backend> FailSafe<B, F> {
    fn observe(&self, err: &StoreError, outcome: FailureOutcome, report: Report<'_>) {
        self.guard
            .observe("rate-limit store", err, self.policy(), outcome, report);
    }

    /// The answer without the store, for the open and closed policies.
    fn without_store(
        &self,
        err: StoreError,
        op: Op,
        report: Report<'_>,
    ) -> Result<Option<Decision>, Error> {
        match self.mode {
            Mode::Open { limit } => {
                self.observe(&err, FailureOutcome::Admitted, report);
                Ok(match op {
                    Op::Check(_) | Op::Peek(_) => Some(Decision::fail_open(limit)),
                    Op::Refund(_) | Op::Reset => None,
                })
            }
            _ => {
                self.observe(&err, FailureOutcome::Rejected, report);
                Err(Error::Store(err))
            }
        }
    }

    fn after_fallback(
        &self,
        err: &StoreError,
        result: Result<Option<Decision>, Error>,
        report: Report<'_>,
    ) -> Result<Option<Decision>, Error> {
        let outcome = match &result {
            Err(Error::Store(_)) => FailureOutcome::FallbackFailed,
            _ => FailureOutcome::FellBack,
        };
        self.observe(err, outcome, report);
        result
    }

    /// The one flow of every call: the primary store (unless the breaker is open), then the
    /// policy when it failed. `io` says how the store calls are made.
    async fn run(
        &self,
        io: Io,
        key: &str,
        op: Op,
        now: Micros,
        report: Report<'_>,
    ) -> Result<Option<Decision>, Error> {
        let err = match self.guard.breaker.admit() {
            Admission::Reject(err) => err,
            admission => {
                let result = match io {
                    Io::Blocking => self.primary.execute(key, op, now),
                    Io::Async => self.primary.execute_async(key, op, now).await,
                };
                match self.guard.settle(admission.is_probe(), result) {
                    Ok(answered) => return answered,
                    Err(err) => err,
                }
            }
        };
        match &self.mode {
            Mode::Fallback(fallback) => {
                let result = match io {
                    Io::Blocking => fallback.execute(key, op, now),
                    Io::Async => fallback.execute_async(key, op, now).await,
                };
                self.after_fallback(&err, result, report)
            }
            _ => self.without_store(err, op, report),
        }
    }

    fn run_blocking(
        &self,
        key: &str,
        op: Op,
        now: Micros,
        report: Report<'_>,
    ) -> Result<Option<Decision>, Error> {
        io::blocking(self.run(Io::Blocking, key, op, now, report), lost)
    }
}

/// The answer of a blocking flow that did not complete (never expected; see [`io::blocking`]).
fn lost<T>() -> Result<T, Error> {
    Err(StoreError::new("failure policy", "a blocking call did not complete").into())
}

impl<B: Backend, F: Backend> Backend for FailSafe<B, F> {
    fn execute(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        self.run_blocking(key, op, now, None)
    }

    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(self.run(Io::Async, key, op, now, None))
    }

    fn execute_observed(
        &self,
        key: &str,
        op: Op,
        now: Micros,
        failure: &mut Option<StoreFailure>,
    ) -> Result<Option<Decision>, Error> {
        self.run_blocking(key, op, now, Some(failure))
    }

    fn execute_observed_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
        failure: &'a mut Option<StoreFailure>,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(self.run(Io::Async, key, op, now, Some(failure)))
    }
}
