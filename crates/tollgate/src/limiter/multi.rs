//! Several limiters, one decision: [`Limiter::check_all`] decides `(limiter, key, cost)` items
//! — per-user *and* per-IP *and* global — all-or-nothing, in one store call (one round trip on
//! Redis and PostgreSQL), with the limiters' key checks, clock, decision time and hooks. Built
//! on the store capability [`crate::store::multi`].

use super::Limiter;
use crate::error::Error;
use crate::store::multi::{KeyCheck, MultiBackend, MultiDecision, MultiOp};
use crate::store::Op;
use crate::time::Micros;

/// One item of [`Limiter::check_all`]: `cost` units of `key` under `limiter`.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate};
/// let per_user = Limiter::memory(Policy::gcra(Rate::per_second(5).unwrap()).unwrap());
/// let item = per_user.item("alice", 2);
/// assert_eq!((item.key(), item.cost()), ("alice", 2));
/// ```
#[derive(Debug)]
pub struct LimitCheck<'a, B> {
    limiter: &'a Limiter<B>,
    key: &'a str,
    cost: u64,
}

impl<B> Clone for LimitCheck<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for LimitCheck<'_, B> {}

impl<'a, B> LimitCheck<'a, B> {
    /// The key.
    ///
    /// ```
    /// let l = tollgate::Limiter::memory(tollgate::Policy::gcra(tollgate::Rate::per_second(5).unwrap()).unwrap());
    /// assert_eq!(l.item("k", 1).key(), "k");
    /// ```
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// The cost.
    ///
    /// ```
    /// let l = tollgate::Limiter::memory(tollgate::Policy::gcra(tollgate::Rate::per_second(5).unwrap()).unwrap());
    /// assert_eq!(l.item("k", 3).cost(), 3);
    /// ```
    pub fn cost(&self) -> u64 {
        self.cost
    }
}

impl<B: MultiBackend> Limiter<B> {
    /// `cost` units of `key` under this limiter, for [`Limiter::check_all`].
    ///
    /// ```
    /// let l = tollgate::Limiter::memory(tollgate::Policy::gcra(tollgate::Rate::per_second(5).unwrap()).unwrap());
    /// let _ = l.item("alice", 1);
    /// ```
    pub fn item<'a>(&'a self, key: &'a str, cost: u64) -> LimitCheck<'a, B> {
        LimitCheck {
            limiter: self,
            key,
            cost,
        }
    }

    /// Decides every item together and charges all of them or none: a denial charges
    /// nothing anywhere, and [`MultiDecision::binding`] says which item denied (and its
    /// decision's `denied_by`, which rate of that item's policy). The limiters must share one
    /// store (for the memory store: any memory backends; for Redis, one `RedisStore`, and on
    /// a Cluster one hash tag). Time is the first item's limiter's clock. Each limiter's hook
    /// sees its item: its own decision when the call was allowed, else the binding item's
    /// decision (why it was blocked), and — when the store failed and a failure policy
    /// ([`FailSafe`](crate::store::failure::FailSafe)) answered — that item's store failure,
    /// which the answer also carries ([`MultiDecision::store_failures`]).
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate, store::memory::MemoryStore};
    /// let store = MemoryStore::new();
    /// let per_user = Limiter::builder(Policy::gcra(Rate::per_second(5).unwrap()).unwrap())
    ///     .build_with(&store.scope("user")).unwrap();
    /// let global = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap())
    ///     .build_with(&store.scope("global")).unwrap();
    /// let d = Limiter::check_all(&[per_user.item("alice", 1), global.item("all", 1)]).unwrap();
    /// assert!(d.allowed);
    /// let d = Limiter::check_all(&[per_user.item("bob", 1), global.item("all", 1)]).unwrap();
    /// assert_eq!(d.binding().map(|(item, _)| item), Some(1)); // the global limit denied
    /// assert_eq!(per_user.peek("bob", 1).unwrap().remaining, 4); // bob was not charged
    /// ```
    pub fn check_all(items: &[LimitCheck<'_, B>]) -> Result<MultiDecision, Error> {
        Self::run_all(items, MultiOp::Check)
    }

    /// The decision [`check_all`](Self::check_all) would return now, charging nothing.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// assert!(Limiter::peek_all(&[l.item("a", 1), l.item("b", 1)]).unwrap().allowed);
    /// assert!(Limiter::peek_all(&[l.item("a", 1)]).unwrap().allowed); // nothing was charged
    /// ```
    pub fn peek_all(items: &[LimitCheck<'_, B>]) -> Result<MultiDecision, Error> {
        Self::run_all(items, MultiOp::Peek)
    }

    /// Async [`check_all`](Self::check_all): never blocks the executor.
    ///
    /// ```
    /// # async fn demo(a: tollgate::Limiter, b: tollgate::Limiter) -> Result<(), tollgate::Error> {
    /// let d = tollgate::Limiter::check_all_async(&[a.item("alice", 1), b.item("all", 1)]).await?;
    /// # let _ = d; Ok(()) }
    /// ```
    pub async fn check_all_async(items: &[LimitCheck<'_, B>]) -> Result<MultiDecision, Error> {
        Self::run_all_async(items, MultiOp::Check).await
    }

    /// Async [`peek_all`](Self::peek_all).
    ///
    /// ```
    /// # async fn demo(a: tollgate::Limiter) -> Result<(), tollgate::Error> {
    /// let d = tollgate::Limiter::peek_all_async(&[a.item("alice", 1)]).await?;
    /// # let _ = d; Ok(()) }
    /// ```
    pub async fn peek_all_async(items: &[LimitCheck<'_, B>]) -> Result<MultiDecision, Error> {
        Self::run_all_async(items, MultiOp::Peek).await
    }

    fn prepare<'a>(items: &[LimitCheck<'a, B>]) -> Result<(Vec<KeyCheck<'a, B>>, Micros), Error> {
        let first = items.first().ok_or_else(|| Error::InvalidKey {
            reason: "a multi-key call needs at least one key".into(),
        })?;
        let mut checks = Vec::with_capacity(items.len());
        for item in items {
            item.limiter.key_ok(item.key)?;
            checks.push(KeyCheck::new(
                &item.limiter.inner.backend,
                item.key,
                item.cost,
            ));
        }
        Ok((checks, first.limiter.inner.clock.now()))
    }

    fn finish(
        items: &[LimitCheck<'_, B>],
        op: MultiOp,
        now: Micros,
        result: Result<MultiDecision, Error>,
    ) -> Result<MultiDecision, Error> {
        let result = result.map(|mut d| {
            for (decision, item) in d.decisions.iter_mut().zip(items) {
                if let Some(stamped) = item.limiter.stamp(Some(*decision), now) {
                    *decision = stamped;
                }
            }
            d
        });
        for (n, item) in items.iter().enumerate() {
            let Some(hook) = &item.limiter.inner.hook else {
                continue;
            };
            let single_op = match op {
                MultiOp::Check => Op::Check(item.cost),
                MultiOp::Peek => Op::Peek(item.cost),
            };
            let seen = match &result {
                Ok(d) if d.allowed => Ok(d.decisions.get(n).copied()),
                Ok(d) => Ok(d.binding().map(|(_, b)| *b)),
                Err(e) => Err(e.clone()),
            };
            // The store failure this item's failure policy answered, as for a single key.
            let failure = result.as_ref().ok().and_then(|d| d.store_failures.get(n));
            crate::hooks::decided(hook, item.key, single_op, &seen, failure);
        }
        result
    }

    fn run_all(items: &[LimitCheck<'_, B>], op: MultiOp) -> Result<MultiDecision, Error> {
        let (checks, now) = Self::prepare(items)?;
        let result = B::execute_all(&checks, op, now);
        Self::finish(items, op, now, result)
    }

    async fn run_all_async(
        items: &[LimitCheck<'_, B>],
        op: MultiOp,
    ) -> Result<MultiDecision, Error> {
        let (checks, now) = Self::prepare(items)?;
        let result = B::execute_all_async(&checks, op, now).await;
        Self::finish(items, op, now, result)
    }
}
