//! [`FailSafeStore`]: a store whose bound backends apply a failure policy.

use super::guard::{guard_methods, Guard};
use super::{CircuitBreaker, FailSafe, FailureOutcome, FailurePolicy};
use crate::error::{Error, StoreError};
use crate::hooks::Hook;
use crate::policy::Policy;
use crate::store::memory::MemoryBackend;
use crate::store::Store;
use std::fmt;
use std::sync::Arc;

/// A store whose backends apply a failure policy (open, closed, or fall back to a fresh
/// in-memory store), so `Limiter::builder(policy).build_with(&store)` gets it directly. Every
/// backend it binds shares one [`CircuitBreaker`]: one outage of the store opens it for all
/// policies at once.
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
    guard: Guard,
}

impl<S> fmt::Debug for FailSafeStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailSafeStore")
            .field("policy", &self.policy)
            .field("breaker", &self.guard.breaker)
            .finish_non_exhaustive()
    }
}

impl<S> FailSafeStore<S> {
    /// The failure policy.
    ///
    /// ```
    /// use tollgate::store::failure::{FailSafeStore, FailurePolicy};
    /// let s = FailSafeStore::fail_open(tollgate::store::memory::MemoryStore::new());
    /// assert_eq!(s.policy(), FailurePolicy::FailOpen);
    /// ```
    pub fn policy(&self) -> FailurePolicy {
        self.policy
    }

    /// The store behind it.
    ///
    /// ```
    /// let s = tollgate::store::failure::FailSafeStore::fail_open(tollgate::store::memory::MemoryStore::new());
    /// let _memory: &tollgate::store::memory::MemoryStore = s.inner();
    /// ```
    pub fn inner(&self) -> &S {
        &self.inner
    }

    guard_methods!(
        "let w = tollgate::store::failure::FailSafeStore::fail_open(\
         tollgate::store::memory::MemoryStore::new());",
        "Scope: the calls of every backend this store binds from now on: they share one \
         breaker, so one outage of the store opens it for all policies at once."
    );
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
            guard: Guard::default(),
        }
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
        backend.guard = self.guard.clone();
        Ok(backend)
    }
}
