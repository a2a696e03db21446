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
//! `timeout`) and reports an expired one as a `StoreError` with `timeout == true`, which this
//! wrapper handles like any other failure.
//!
//! **Observability**: every failure increments the `metrics` counter
//! `tollgate_store_failures_total{policy, outcome}` (`policy` = `fail_open` / `fail_closed` /
//! `fallback`; `outcome` = [`FailureOutcome::as_str`]) and calls the optional hook. A hook
//! observes; it cannot change the verdict: it returns nothing, and a hook that panics is
//! caught and ignored.
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

use super::memory::{MemoryBackend, MemoryStore};
use super::{Backend, Op, Store};
use crate::decision::Decision;
use crate::error::{Error, StoreError};
use crate::policy::Policy;
use crate::time::Micros;
use futures_util::future::BoxFuture;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
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

type Hook = Arc<dyn Fn(&StoreError, FailureOutcome) + Send + Sync>;

enum Mode<F> {
    Open { limit: u64 },
    Closed,
    Fallback(F),
}

/// A backend that applies a [`FailurePolicy`] to the failures of another.
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
    hook: Option<Hook>,
}

impl<B, F> fmt::Debug for FailSafe<B, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailSafe")
            .field("policy", &self.policy())
            .field("hook", &self.hook.is_some())
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
        FailSafe {
            primary,
            mode: Mode::Open {
                limit: policy.max_cost(),
            },
            hook: None,
        }
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
        FailSafe {
            primary,
            mode: Mode::Closed,
            hook: None,
        }
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
        FailSafe {
            primary,
            mode: Mode::Fallback(fallback),
            hook: None,
        }
    }

    /// Calls `hook` on every store failure, with the outcome. The hook cannot change the
    /// verdict: it returns nothing and a panic inside it is caught.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, failure::FailSafe}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let b = FailSafe::fail_closed(MemoryStore::new().bind(&policy).unwrap())
    ///     .on_failure(|err, outcome| eprintln!("rate-limit store failed ({outcome:?}): {err}"));
    /// # let _ = b;
    /// ```
    pub fn on_failure(
        mut self,
        hook: impl Fn(&StoreError, FailureOutcome) + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

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

    fn observe(&self, err: &StoreError, outcome: FailureOutcome) {
        metrics::counter!(
            "tollgate_store_failures_total",
            "policy" => self.policy().as_str(),
            "outcome" => outcome.as_str()
        )
        .increment(1);
        tracing::warn!(
            store = err.store,
            timeout = err.timeout,
            policy = self.policy().as_str(),
            outcome = outcome.as_str(),
            "rate-limit store failed: {}",
            err.message
        );
        if let Some(hook) = &self.hook {
            // A panicking hook must not turn into a verdict (or abort the caller).
            let _ = catch_unwind(AssertUnwindSafe(|| hook(err, outcome)));
        }
    }

    /// The answer without the store, for the open and closed policies.
    fn without_store(&self, err: StoreError, op: Op) -> Result<Option<Decision>, Error> {
        match self.mode {
            Mode::Open { limit } => {
                self.observe(&err, FailureOutcome::Admitted);
                Ok(match op {
                    Op::Check(_) | Op::Peek(_) => Some(Decision::fail_open(limit)),
                    Op::Refund(_) | Op::Reset => None,
                })
            }
            _ => {
                self.observe(&err, FailureOutcome::Rejected);
                Err(Error::Store(err))
            }
        }
    }

    fn after_fallback(
        &self,
        err: &StoreError,
        result: Result<Option<Decision>, Error>,
    ) -> Result<Option<Decision>, Error> {
        let outcome = match &result {
            Err(Error::Store(_)) => FailureOutcome::FallbackFailed,
            _ => FailureOutcome::FellBack,
        };
        self.observe(err, outcome);
        result
    }
}

impl<B: Backend, F: Backend> Backend for FailSafe<B, F> {
    fn execute(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        match self.primary.execute(key, op, now) {
            Err(Error::Store(err)) => match &self.mode {
                Mode::Fallback(fallback) => {
                    let result = fallback.execute(key, op, now);
                    self.after_fallback(&err, result)
                }
                _ => self.without_store(err, op),
            },
            other => other,
        }
    }

    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(async move {
            match self.primary.execute_async(key, op, now).await {
                Err(Error::Store(err)) => match &self.mode {
                    Mode::Fallback(fallback) => {
                        let result = fallback.execute_async(key, op, now).await;
                        self.after_fallback(&err, result)
                    }
                    _ => self.without_store(err, op),
                },
                other => other,
            }
        })
    }
}

/// A store whose backends apply a failure policy (open, closed, or fall back to a fresh
/// in-memory store), so `Limiter::builder(policy).build_with(&store)` gets it directly.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate, store::{memory::MemoryStore, failure::FailSafeStore}};
/// let store = FailSafeStore::fallback_to_memory(MemoryStore::new()); // e.g. a RedisStore
/// let limiter = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap())
///     .build_with(&store)
///     .unwrap();
/// assert!(limiter.check("k").unwrap().allowed);
/// ```
#[derive(Clone)]
pub struct FailSafeStore<S> {
    inner: S,
    policy: FailurePolicy,
    hook: Option<Hook>,
}

impl<S> fmt::Debug for FailSafeStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailSafeStore")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S: Store> FailSafeStore<S> {
    /// Admit when `inner` fails.
    ///
    /// ```
    /// let s = tollgate::store::failure::FailSafeStore::fail_open(tollgate::store::memory::MemoryStore::new());
    /// # let _ = s;
    /// ```
    pub fn fail_open(inner: S) -> Self {
        Self::with_policy(inner, FailurePolicy::FailOpen)
    }

    /// Return the store error when `inner` fails.
    ///
    /// ```
    /// let s = tollgate::store::failure::FailSafeStore::fail_closed(tollgate::store::memory::MemoryStore::new());
    /// # let _ = s;
    /// ```
    pub fn fail_closed(inner: S) -> Self {
        Self::with_policy(inner, FailurePolicy::FailClosed)
    }

    /// Fall back to an in-memory limiter of the same policy when `inner` fails.
    ///
    /// ```
    /// let s = tollgate::store::failure::FailSafeStore::fallback_to_memory(tollgate::store::memory::MemoryStore::new());
    /// # let _ = s;
    /// ```
    pub fn fallback_to_memory(inner: S) -> Self {
        Self::with_policy(inner, FailurePolicy::Fallback)
    }

    /// Any policy ([`FailurePolicy::Fallback`] means a fresh in-memory fallback).
    ///
    /// ```
    /// use tollgate::store::failure::{FailSafeStore, FailurePolicy};
    /// let s = FailSafeStore::with_policy(tollgate::store::memory::MemoryStore::new(), FailurePolicy::FailOpen);
    /// # let _ = s;
    /// ```
    pub fn with_policy(inner: S, policy: FailurePolicy) -> Self {
        FailSafeStore {
            inner,
            policy,
            hook: None,
        }
    }

    /// Calls `hook` on every store failure of every bound backend (see [`FailSafe::on_failure`]).
    ///
    /// ```
    /// let s = tollgate::store::failure::FailSafeStore::fail_open(tollgate::store::memory::MemoryStore::new())
    ///     .on_failure(|err, outcome| eprintln!("{outcome:?}: {err}"));
    /// # let _ = s;
    /// ```
    pub fn on_failure(
        mut self,
        hook: impl Fn(&StoreError, FailureOutcome) + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }
}

impl<S: Store> Store for FailSafeStore<S> {
    type Backend = FailSafe<S::Backend, MemoryBackend>;
    fn bind(&self, policy: &Policy) -> Result<Self::Backend, Error> {
        let primary = self.inner.bind(policy)?;
        let mut backend = match self.policy {
            FailurePolicy::FailOpen => FailSafe::fail_open(primary, policy),
            FailurePolicy::FailClosed => FailSafe::fail_closed(primary),
            FailurePolicy::Fallback => FailSafe::fallback_to_memory(primary, policy),
        };
        backend.hook = self.hook.clone();
        Ok(backend)
    }
}
