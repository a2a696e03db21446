//! Stores: where key state lives. A store is bound to a policy and gives a [`Backend`] that
//! executes one operation atomically per call.
//!
//! The in-memory store is [`memory`]; distributed stores (Redis, SQL) implement the same trait
//! by running the algorithm of `crate::algorithm` as one script or statement.

pub mod failure;
pub(crate) mod io;
pub mod lease;
pub mod log;
pub mod memory;
pub mod multi;

use crate::decision::Decision;
use crate::error::Error;
use crate::hooks::StoreFailure;
use crate::policy::Policy;
use crate::time::Micros;
use futures_util::future::BoxFuture;

/// One operation on one key.
///
/// ```
/// let op = tollgate::store::Op::Check(3);
/// assert_eq!(op.cost(), Some(3));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Decide `cost` and charge it when admitted.
    Check(u64),
    /// Decide `cost` without charging.
    Peek(u64),
    /// Give back `amount` units (never beyond fresh).
    Refund(u64),
    /// Forget the key.
    Reset,
}

impl Op {
    /// The cost or amount of the operation, if any.
    ///
    /// ```
    /// assert_eq!(tollgate::store::Op::Reset.cost(), None);
    /// ```
    pub fn cost(&self) -> Option<u64> {
        match *self {
            Op::Check(c) | Op::Peek(c) | Op::Refund(c) => Some(c),
            Op::Reset => None,
        }
    }
}

/// A store bound to one policy: executes operations on keys atomically.
///
/// `now` is the caller's clock reading in µs; a distributed backend may use its own clock
/// instead (and documents it). `Check`/`Peek` return `Some(decision)`, `Refund`/`Reset`
/// return `None`.
///
/// ```
/// use tollgate::{Policy, Rate, store::{Backend, Op, Store, memory::MemoryStore}};
/// let policy = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
/// let backend = MemoryStore::default().bind(&policy).unwrap();
/// let d = backend.execute("k", Op::Check(1), 1_000_000).unwrap().unwrap();
/// assert!(d.allowed);
/// ```
pub trait Backend: Send + Sync + 'static {
    /// Executes `op` on `key`, blocking the current thread until done.
    fn execute(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error>;

    /// Executes `op` on `key` without blocking the executor.
    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>>;

    /// [`execute`](Self::execute), and when the store failed and a failure policy answered
    /// (or returned the error), sets `failure` to what happened, so a limiter's
    /// [hook](crate::hooks) sees the store errors its failure policy absorbed. Backends
    /// without a failure policy keep the default (plain `execute`); wrappers forward it.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Backend, Op, Store, memory::MemoryStore}};
    /// let policy = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
    /// let backend = MemoryStore::default().bind(&policy).unwrap();
    /// let mut failure = None;
    /// assert!(backend.execute_observed("k", Op::Check(1), 0, &mut failure).unwrap().unwrap().allowed);
    /// assert!(failure.is_none());
    /// ```
    fn execute_observed(
        &self,
        key: &str,
        op: Op,
        now: Micros,
        failure: &mut Option<StoreFailure>,
    ) -> Result<Option<Decision>, Error> {
        let _ = failure;
        self.execute(key, op, now)
    }

    /// [`execute_async`](Self::execute_async) reporting a store failure the failure policy
    /// answered (see [`execute_observed`](Self::execute_observed)).
    fn execute_observed_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
        failure: &'a mut Option<StoreFailure>,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        let _ = failure;
        self.execute_async(key, op, now)
    }
}

/// A store that can be bound to a policy.
///
/// # Which limiters share state
///
/// The same rule holds on every store (memory, Redis/Valkey, PostgreSQL, SQLite):
///
/// - limiters bound to **the same store with the same policy share state**: a key charged
///   through one is charged for all (for the memory store, "the same store" is one
///   `MemoryStore` value or its clones; for the others, the same database and namespace);
/// - limiters of **different policies never share state**: without a scope, a policy's
///   keys are stored under [`default_scope`] (its algorithm and a hash of its rates), so a
///   key of `5/s` never meets the same key of `10/s`;
/// - a **scope** (`store.scope("login")` on every store) names the state instead: every
///   limiter bound under that scope shares it, and the state survives a change of the
///   policy's rates (a redeploy with new rates keeps counting). One process cannot run two
///   policies on one state: the memory store refuses to bind a second, different policy
///   under a scope that a live limiter uses; distributed stores cannot see other processes'
///   policies, so give each policy its own scope.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate, store::memory::MemoryStore};
/// let store = MemoryStore::default();
/// let per_second = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
/// let a = Limiter::builder(per_second.clone()).build_with(&store).unwrap();
/// let b = Limiter::builder(per_second).build_with(&store).unwrap();
/// let c = Limiter::builder(Policy::gcra(Rate::per_second(2).unwrap()).unwrap())
///     .build_with(&store)
///     .unwrap();
/// assert!(a.check("k").unwrap().allowed);
/// assert!(!b.check("k").unwrap().allowed); // same store and policy: shared
/// assert!(c.check("k").unwrap().allowed); // another policy: its own state
/// ```
pub trait Store {
    /// The bound backend.
    type Backend: Backend;
    /// Binds this store to `policy`.
    fn bind(&self, policy: &Policy) -> Result<Self::Backend, Error>;
}

/// The scope under which a store keeps `policy`'s keys when no scope is named:
/// `<algorithm>-<8 hex digits>`, the hex being the 32-bit FNV-1a hash of the policy's text
/// (`gcra:5/1s`). Stable across processes and versions, so every process of a fleet with
/// the same policy shares its keys; different policies get different scopes.
///
/// ```
/// use tollgate::{Policy, Rate, store::default_scope};
/// let p = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
/// assert_eq!(default_scope(&p), default_scope(&p.clone()));
/// assert!(default_scope(&p).starts_with("gcra-"));
/// assert_ne!(default_scope(&p), default_scope(&Policy::gcra(Rate::per_second(6).unwrap()).unwrap()));
/// ```
pub fn default_scope(policy: &Policy) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in policy.to_string().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{}-{h:08x}", policy.algorithm().name())
}

/// Checks a cost or amount: `0` is invalid.
#[inline(always)]
pub(crate) fn validate_op(op: Op) -> Result<(), Error> {
    match op.cost() {
        Some(0) => Err(Error::InvalidCost),
        _ => Ok(()),
    }
}

/// Forwards every [`Backend`] method through a smart pointer.
macro_rules! forward_backend {
    ($pointer:ident) => {
        impl<B: Backend + ?Sized> Backend for $pointer<B> {
            fn execute(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
                (**self).execute(key, op, now)
            }
            fn execute_async<'a>(
                &'a self,
                key: &'a str,
                op: Op,
                now: Micros,
            ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
                (**self).execute_async(key, op, now)
            }
            fn execute_observed(
                &self,
                key: &str,
                op: Op,
                now: Micros,
                failure: &mut Option<StoreFailure>,
            ) -> Result<Option<Decision>, Error> {
                (**self).execute_observed(key, op, now, failure)
            }
            fn execute_observed_async<'a>(
                &'a self,
                key: &'a str,
                op: Op,
                now: Micros,
                failure: &'a mut Option<StoreFailure>,
            ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
                (**self).execute_observed_async(key, op, now, failure)
            }
        }
    };
}

// `Arc<dyn Backend>` (and `Box<dyn Backend>`) is a backend, so a store can be chosen at run
// time (`Limiter::builder(..).build_on(backend)`; tested in `tests/memory_store.rs`).
use std::sync::Arc;
forward_backend!(Arc);
forward_backend!(Box);
