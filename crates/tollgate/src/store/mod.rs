//! Stores: where key state lives. A store is bound to a policy and gives a [`Backend`] that
//! executes one operation atomically per call.
//!
//! The in-memory store is [`memory`]; distributed stores (Redis, SQL) implement the same trait
//! by running the algorithm of `crate::algorithm` as one script or statement.

pub mod failure;
pub mod memory;

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
/// ```
/// use tollgate::{Limiter, Policy, Rate, store::memory::MemoryStore};
/// let policy = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
/// let limiter = Limiter::builder(policy).build_with(&MemoryStore::default()).unwrap();
/// assert!(limiter.check("k").unwrap().allowed);
/// ```
pub trait Store {
    /// The bound backend.
    type Backend: Backend;
    /// Binds this store to `policy`.
    fn bind(&self, policy: &Policy) -> Result<Self::Backend, Error>;
}

/// Checks a cost or amount: `0` is invalid.
#[inline(always)]
pub(crate) fn validate_op(op: Op) -> Result<(), Error> {
    match op.cost() {
        Some(0) => Err(Error::InvalidCost),
        _ => Ok(()),
    }
}

/// `Arc<dyn Backend>` (and `Box<dyn Backend>`) is a backend, so a store can be chosen at run
/// time.
///
/// ```
/// use std::sync::Arc;
/// use tollgate::{Limiter, Policy, Rate, store::{Backend, Store, memory::MemoryStore}};
/// let policy = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
/// let backend: Arc<dyn Backend> = Arc::new(MemoryStore::new().bind(&policy).unwrap());
/// let limiter = Limiter::builder(policy).build_on(backend);
/// assert!(limiter.check("k").unwrap().allowed);
/// ```
impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
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

impl<B: Backend + ?Sized> Backend for Box<B> {
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
