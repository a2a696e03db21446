//! Several keys, one decision: a check over several `(backend, key, cost)` items — per-user
//! *and* per-IP *and* global, each with its own policy and algorithm — that is all-or-nothing
//! on every store. Either every key admits its cost and (for a check) every key is charged, or
//! nothing is charged anywhere.
//!
//! This is the one definition of the capability; every store implements [`MultiBackend`]:
//! the memory store (atomic across keys: the shards of every key are locked in one global
//! order, so it cannot deadlock), Redis (one script call: one round trip; on a Cluster every
//! key in one slot), PostgreSQL (one function call, rows locked in key order) and SQLite
//! (one transaction). The tower layer, the server and the Python package build on it.
//!
//! ```
//! use tollgate::{Policy, Rate};
//! use tollgate::store::{Backend, Op, Store, memory::MemoryStore};
//! use tollgate::store::multi::{KeyCheck, MultiBackend, MultiOp};
//! let store = MemoryStore::new();
//! let per_user = store.scope("user").bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
//! let global = store.scope("global").bind(&Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).unwrap();
//! let now = 1_000_000;
//! let both = |user| [KeyCheck::new(&per_user, user, 1), KeyCheck::new(&global, "all", 1)];
//! assert!(MultiBackend::execute_all(&both("alice"), MultiOp::Check, now).unwrap().allowed);
//! // The global key is spent: bob is denied, and bob's own key is not charged.
//! let d = MultiBackend::execute_all(&both("bob"), MultiOp::Check, now).unwrap();
//! assert!(!d.allowed);
//! assert_eq!(d.binding().unwrap().0, 1); // the second item (global) denied
//! assert_eq!(per_user.execute("bob", Op::Peek(1), now).unwrap().unwrap().remaining, 4);
//! ```

use super::Backend;
use crate::decision::Decision;
use crate::error::{Error, StoreError};
use crate::hooks::StoreFailure;
use crate::time::Micros;
use futures_util::future::BoxFuture;

/// One item of a multi-key call: `cost` units of `key` under `backend`'s policy.
///
/// ```
/// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, multi::KeyCheck}};
/// let b = MemoryStore::new().bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
/// let item = KeyCheck::new(&b, "user:alice", 2);
/// assert_eq!((item.key(), item.cost()), ("user:alice", 2));
/// ```
#[derive(Debug)]
pub struct KeyCheck<'a, B: ?Sized> {
    backend: &'a B,
    key: &'a str,
    cost: u64,
}

impl<B: ?Sized> Clone for KeyCheck<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: ?Sized> Copy for KeyCheck<'_, B> {}

impl<'a, B: ?Sized> KeyCheck<'a, B> {
    /// `cost` units of `key` under `backend`'s policy.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, multi::KeyCheck}};
    /// let global = MemoryStore::new().bind(&Policy::gcra(Rate::per_second(9).unwrap()).unwrap()).unwrap();
    /// let _item = KeyCheck::new(&global, "all", 1);
    /// ```
    pub fn new(backend: &'a B, key: &'a str, cost: u64) -> Self {
        KeyCheck { backend, key, cost }
    }

    /// The backend (policy) the key is limited by.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, multi::KeyCheck}};
    /// let b = MemoryStore::new().bind(&Policy::gcra(Rate::per_second(9).unwrap()).unwrap()).unwrap();
    /// assert!(std::ptr::eq(KeyCheck::new(&b, "k", 1).backend(), &b));
    /// ```
    pub fn backend(&self) -> &'a B {
        self.backend
    }

    /// The user key.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, multi::KeyCheck}};
    /// let b = MemoryStore::new().bind(&Policy::gcra(Rate::per_second(9).unwrap()).unwrap()).unwrap();
    /// assert_eq!(KeyCheck::new(&b, "ip:203.0.113.7", 1).key(), "ip:203.0.113.7");
    /// ```
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// The cost.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, multi::KeyCheck}};
    /// let b = MemoryStore::new().bind(&Policy::gcra(Rate::per_second(9).unwrap()).unwrap()).unwrap();
    /// assert_eq!(KeyCheck::new(&b, "k", 3).cost(), 3);
    /// ```
    pub fn cost(&self) -> u64 {
        self.cost
    }
}

/// What a multi-key call does.
///
/// ```
/// assert_ne!(tollgate::store::multi::MultiOp::Check, tollgate::store::multi::MultiOp::Peek);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MultiOp {
    /// Decide, and charge every key when every key admits.
    Check,
    /// Decide exactly as `Check` would now, charging nothing.
    Peek,
}

/// The outcome of a multi-key call.
///
/// ```
/// use tollgate::{Decision, store::multi::MultiDecision};
/// let d = MultiDecision {
///     allowed: false,
///     decisions: vec![
///         Decision::from_parts(true, 5, 4, 0, 200_000, None),
///         Decision::from_parts(false, 1, 0, 900_000, 900_000, Some(0)),
///     ],
///     store_failures: vec![],
/// };
/// assert_eq!(d.binding().unwrap().0, 1);
/// assert!(d.store_error().is_none());
/// ```
#[must_use = "a MultiDecision says whether the request may proceed"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiDecision {
    /// Every key admitted its cost; for a check, every key was charged. When false, nothing
    /// was charged anywhere.
    pub allowed: bool,
    /// Each key's own decision, in call order: what that key alone decides now (its
    /// `allowed` may be true while the call was denied by another key). When the call was
    /// allowed these are the charged decisions.
    pub decisions: Vec<Decision>,
    /// Empty when the store answered. When the store failed and the items' failure policies
    /// answered instead (fail open, fallback; see
    /// [`FailSafe`](crate::store::failure::FailSafe)): one entry per item, in call order —
    /// the store error and what that item's policy did — as a single-key call reports it
    /// through [`Backend::execute_observed`].
    pub store_failures: Vec<StoreFailure>,
}

impl MultiDecision {
    /// Combines per-key decisions: allowed iff every key allows.
    ///
    /// ```
    /// use tollgate::{Decision, store::multi::MultiDecision};
    /// let d = MultiDecision::from_decisions(vec![Decision::from_parts(true, 5, 4, 0, 1, None)]);
    /// assert!(d.allowed);
    /// ```
    pub fn from_decisions(decisions: Vec<Decision>) -> Self {
        MultiDecision {
            allowed: decisions.iter().all(|d| d.allowed),
            decisions,
            store_failures: Vec::new(),
        }
    }

    /// The store error a failure policy answered for, if any (see
    /// [`store_failures`](Self::store_failures)): what a surface shows as `store_error`.
    ///
    /// ```
    /// use tollgate::{Decision, store::multi::MultiDecision};
    /// let d = MultiDecision::from_decisions(vec![Decision::fail_open(5)]);
    /// assert!(d.store_error().is_none()); // the store answered
    /// ```
    pub fn store_error(&self) -> Option<&StoreError> {
        self.store_failures.first().map(|f| &f.error)
    }

    /// The key to report for a denial: among the keys that denied, the one with the longest
    /// `retry_after` (the first in call order on a tie) — after that wait every key admits
    /// if nothing else happens. Its decision's `denied_by` says which rate of that key's
    /// policy denied. `None` when allowed.
    ///
    /// ```
    /// use tollgate::{Decision, store::multi::MultiDecision};
    /// let d = MultiDecision::from_decisions(vec![Decision::from_parts(true, 5, 4, 0, 1, None)]);
    /// assert!(d.binding().is_none());
    /// ```
    pub fn binding(&self) -> Option<(usize, &Decision)> {
        let mut best: Option<(usize, &Decision)> = None;
        for (i, d) in self.decisions.iter().enumerate() {
            if !d.allowed && best.is_none_or(|(_, b)| d.retry_after > b.retry_after) {
                best = Some((i, d));
            }
        }
        best
    }

    /// The key with the least `remaining` when allowed (the first on a tie), else the
    /// [`binding`](Self::binding) key: the one to report in `RateLimit` fields.
    ///
    /// ```
    /// use tollgate::{Decision, store::multi::MultiDecision};
    /// let d = MultiDecision::from_decisions(vec![
    ///     Decision::from_parts(true, 5, 4, 0, 1, None),
    ///     Decision::from_parts(true, 9, 2, 0, 1, None),
    /// ]);
    /// assert_eq!(d.tightest().unwrap().0, 1);
    /// ```
    pub fn tightest(&self) -> Option<(usize, &Decision)> {
        if !self.allowed {
            return self.binding();
        }
        self.decisions
            .iter()
            .enumerate()
            .min_by_key(|(i, d)| (d.remaining, *i))
    }
}

/// A backend that decides several keys — of this backend type, possibly of different
/// policies and algorithms — all-or-nothing.
///
/// Rules every implementation keeps (the shared tests in `tests/multi_key.rs` of each store
/// check them): no item → [`Error::InvalidKey`]; the same key of the same backend twice →
/// [`Error::InvalidKey`]; a cost of 0 or above a policy's capacity → the same error as a
/// single-key call, before anything is decided; every backend from one store (else
/// [`Error::InvalidKey`]); a denial charges nothing anywhere (a denied token bucket still keeps
/// its refill progress, as a single-key denial does); per-key decisions equal what each key
/// alone would decide.
///
/// ```
/// use tollgate::{Policy, Rate};
/// use tollgate::store::{Store, memory::MemoryStore, multi::{KeyCheck, MultiBackend, MultiOp}};
/// let store = MemoryStore::new();
/// let b = store.bind(&Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).unwrap();
/// let d = MultiBackend::execute_all(&[KeyCheck::new(&b, "a", 1), KeyCheck::new(&b, "b", 1)], MultiOp::Check, 0).unwrap();
/// assert!(d.allowed && d.decisions.len() == 2);
/// ```
pub trait MultiBackend: Backend + Sized {
    /// Decides every item together at `now` (the caller's clock; a distributed store may use
    /// its own, as for single keys), blocking the thread for the store call.
    fn execute_all(
        items: &[KeyCheck<'_, Self>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error>;

    /// [`execute_all`](Self::execute_all) without blocking the executor.
    fn execute_all_async<'a>(
        items: &'a [KeyCheck<'a, Self>],
        op: MultiOp,
        now: Micros,
    ) -> BoxFuture<'a, Result<MultiDecision, Error>>;
}

/// The backend of the first item: the one that runs a multi-key call (every store's
/// `execute_all` starts here); an empty call is [`Error::InvalidKey`].
///
/// ```
/// use tollgate::store::multi::{first_backend, KeyCheck};
/// let b = 7u8;
/// assert_eq!(*first_backend(&[KeyCheck::new(&b, "k", 1)]).unwrap(), 7);
/// assert!(first_backend::<u8>(&[]).is_err());
/// ```
pub fn first_backend<'a, B: ?Sized>(items: &[KeyCheck<'a, B>]) -> Result<&'a B, Error> {
    items
        .first()
        .map(|i| i.backend)
        .ok_or_else(|| Error::InvalidKey {
            reason: "a multi-key call needs at least one key".into(),
        })
}

/// Checks what every store checks before deciding: at least one item, and no key twice
/// under one backend (`same` says whether two backends are the same table/scope).
///
/// ```
/// use tollgate::store::multi::{validate_items, KeyCheck};
/// let b = 7u8;
/// assert!(validate_items(&[KeyCheck::new(&b, "a", 1), KeyCheck::new(&b, "a", 1)], |x, y| x == y).is_err());
/// assert!(validate_items::<u8>(&[], |x, y| x == y).is_err());
/// ```
pub fn validate_items<B: ?Sized>(
    items: &[KeyCheck<'_, B>],
    same: impl Fn(&B, &B) -> bool,
) -> Result<(), Error> {
    first_backend(items)?;
    for item in items {
        if item.cost == 0 {
            return Err(Error::InvalidCost);
        }
    }
    for (i, a) in items.iter().enumerate() {
        for b in &items[..i] {
            if a.key == b.key && same(a.backend, b.backend) {
                return Err(Error::InvalidKey {
                    reason: format!("key {:?} appears twice in one multi-key call", a.key),
                });
            }
        }
    }
    Ok(())
}

/// The items with each backend behind its `Arc`: what an `Arc` backend's call runs on.
fn pointees<'a, B: ?Sized>(items: &[KeyCheck<'a, std::sync::Arc<B>>]) -> Vec<KeyCheck<'a, B>> {
    items
        .iter()
        .map(|i| KeyCheck::new(&**i.backend, i.key, i.cost))
        .collect()
}

impl<B: MultiBackend> MultiBackend for std::sync::Arc<B> {
    fn execute_all(
        items: &[KeyCheck<'_, Self>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        B::execute_all(&pointees(items), op, now)
    }

    fn execute_all_async<'a>(
        items: &'a [KeyCheck<'a, Self>],
        op: MultiOp,
        now: Micros,
    ) -> BoxFuture<'a, Result<MultiDecision, Error>> {
        Box::pin(async move { B::execute_all_async(&pointees(items), op, now).await })
    }
}

/// The object-safe form of [`MultiBackend`], for backends chosen at run time
/// (`Arc<dyn DynMultiBackend>`: the server, the tower layer, the Python package). Every
/// `MultiBackend` is one; a multi-key call over `dyn` items needs every item's backend to be
/// of one concrete type (one store), else it fails with [`Error::InvalidKey`].
///
/// ```
/// use std::sync::Arc;
/// use tollgate::{Policy, Rate};
/// use tollgate::store::{Store, memory::MemoryStore, multi::{DynMultiBackend, KeyCheck, MultiOp}};
/// let store = MemoryStore::new();
/// let a: Arc<dyn DynMultiBackend> = Arc::new(store.scope("a").bind(&Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).unwrap());
/// let b: Arc<dyn DynMultiBackend> = Arc::new(store.scope("b").bind(&Policy::gcra(Rate::per_second(2).unwrap()).unwrap()).unwrap());
/// let items = [KeyCheck::new(&*a, "k", 1), KeyCheck::new(&*b, "k", 1)];
/// assert!(tollgate::store::multi::execute_all_dyn(&items, MultiOp::Check, 0).unwrap().allowed);
/// assert!(!tollgate::store::multi::execute_all_dyn(&items, MultiOp::Check, 0).unwrap().allowed);
/// ```
pub trait DynMultiBackend: Backend {
    /// The concrete backend, to check that every item of a call is of one type.
    fn as_any(&self) -> &dyn std::any::Any;

    /// [`MultiBackend::execute_all`] over items whose backends are `dyn`.
    fn execute_all_dyn(
        &self,
        items: &[KeyCheck<'_, dyn DynMultiBackend>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error>;

    /// [`MultiBackend::execute_all_async`] over items whose backends are `dyn`.
    fn execute_all_dyn_async<'a>(
        &'a self,
        items: &'a [KeyCheck<'a, dyn DynMultiBackend>],
        op: MultiOp,
        now: Micros,
    ) -> BoxFuture<'a, Result<MultiDecision, Error>>;
}

fn typed<'a, B: MultiBackend>(
    items: &[KeyCheck<'a, dyn DynMultiBackend>],
) -> Result<Vec<KeyCheck<'a, B>>, Error> {
    items
        .iter()
        .map(|i| {
            let backend: &'a dyn DynMultiBackend = i.backend;
            backend
                .as_any()
                .downcast_ref::<B>()
                .map(|b| KeyCheck::new(b, i.key, i.cost))
                .ok_or_else(|| Error::InvalidKey {
                    reason: "every backend of a multi-key call must come from one store".into(),
                })
        })
        .collect()
}

impl<B: MultiBackend> DynMultiBackend for B {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn execute_all_dyn(
        &self,
        items: &[KeyCheck<'_, dyn DynMultiBackend>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        B::execute_all(&typed::<B>(items)?, op, now)
    }

    fn execute_all_dyn_async<'a>(
        &'a self,
        items: &'a [KeyCheck<'a, dyn DynMultiBackend>],
        op: MultiOp,
        now: Micros,
    ) -> BoxFuture<'a, Result<MultiDecision, Error>> {
        Box::pin(async move {
            let items = typed::<B>(items)?;
            B::execute_all_async(&items, op, now).await
        })
    }
}

/// Decides `dyn` items together (see [`DynMultiBackend`]): the first item's backend runs the
/// call.
///
/// ```
/// use tollgate::store::multi::{execute_all_dyn, KeyCheck, MultiOp, DynMultiBackend};
/// let none: [KeyCheck<'_, dyn DynMultiBackend>; 0] = [];
/// assert!(execute_all_dyn(&none, MultiOp::Check, 0).is_err());
/// ```
pub fn execute_all_dyn(
    items: &[KeyCheck<'_, dyn DynMultiBackend>],
    op: MultiOp,
    now: Micros,
) -> Result<MultiDecision, Error> {
    match items.first() {
        Some(first) => first.backend.execute_all_dyn(items, op, now),
        None => validate_items(items, |_, _| false).map(|()| MultiDecision::from_decisions(vec![])),
    }
}

/// Async [`execute_all_dyn`].
///
/// ```
/// use tollgate::store::multi::{execute_all_dyn_async, KeyCheck, MultiOp, DynMultiBackend};
/// let none: [KeyCheck<'_, dyn DynMultiBackend>; 0] = [];
/// assert!(futures_util::FutureExt::now_or_never(execute_all_dyn_async(&none, MultiOp::Check, 0)).unwrap().is_err());
/// ```
pub async fn execute_all_dyn_async<'a>(
    items: &'a [KeyCheck<'a, dyn DynMultiBackend>],
    op: MultiOp,
    now: Micros,
) -> Result<MultiDecision, Error> {
    match items.first() {
        Some(first) => first.backend.execute_all_dyn_async(items, op, now).await,
        None => validate_items(items, |_, _| false).map(|()| MultiDecision::from_decisions(vec![])),
    }
}

/// A backend chosen at run time is a [`MultiBackend`] too, so `Limiter<Arc<dyn
/// DynMultiBackend>>` has [`Limiter::check_all`](crate::Limiter::check_all); every item's
/// backend must be of one concrete type (one store) at run time.
///
/// ```
/// use std::sync::Arc;
/// use tollgate::{Limiter, Policy, Rate};
/// use tollgate::store::{Store, memory::MemoryStore, multi::DynMultiBackend};
/// let store = MemoryStore::new();
/// let policy = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
/// let backend: Arc<dyn DynMultiBackend> = Arc::new(store.bind(&policy).unwrap());
/// let limiter = Limiter::builder(policy).build_on(backend);
/// assert!(Limiter::check_all(&[limiter.item("a", 1), limiter.item("b", 1)]).unwrap().allowed);
/// ```
impl MultiBackend for std::sync::Arc<dyn DynMultiBackend> {
    fn execute_all(
        items: &[KeyCheck<'_, Self>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        execute_all_dyn(&pointees(items), op, now)
    }

    fn execute_all_async<'a>(
        items: &'a [KeyCheck<'a, Self>],
        op: MultiOp,
        now: Micros,
    ) -> BoxFuture<'a, Result<MultiDecision, Error>> {
        Box::pin(async move { execute_all_dyn_async(&pointees(items), op, now).await })
    }
}
