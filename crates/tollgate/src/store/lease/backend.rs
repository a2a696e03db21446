//! [`LeaseBackend`]: a bound backend that leases hot keys of another.

use super::state::{KeyLease, Limits, Plan, Reserving};
use super::table::Table;
use super::LeaseConfig;
use crate::decision::Decision;
use crate::error::Error;
use crate::hooks::StoreFailure;
use crate::policy::Policy;
use crate::store::multi::{KeyCheck, MultiBackend, MultiDecision, MultiOp};
use crate::store::{Backend, Op};
use crate::time::{micros, Micros};
use futures_util::future::BoxFuture;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// A backend that leases hot keys of `B` (see the [module](super) docs). Clones share the
/// batches. Dropping the last clone gives every batch back (a blocking store call per
/// leased key).
///
/// Multi-key calls ([`MultiBackend`]) pass straight through to `B`: they are decided and
/// charged by the store in one call, as without leases (a key's batch is not used by them).
/// `Refund` passes through too (the store takes the units back); `Reset` forgets the key's
/// batch and resets the key in the store.
///
/// ```
/// use tollgate::{Policy, Rate, store::{Backend, Op, Store, memory::MemoryStore}};
/// use tollgate::store::lease::{LeaseBackend, LeaseConfig};
/// let policy = Policy::gcra(Rate::per_second(1_000).unwrap()).unwrap();
/// let shared = MemoryStore::new().bind(&policy).unwrap();
/// let config = LeaseConfig::default().min_batch(4).background_sweep(false);
/// let leased = LeaseBackend::new(shared.clone(), &policy, config).unwrap();
/// let now = 1_000_000;
/// for _ in 0..10 {
///     assert!(leased.execute("k", Op::Check(1), now).unwrap().unwrap().allowed);
/// }
/// // The first calls went to the store; from a demand of 4 on, batches were reserved.
/// let held = leased.held();
/// assert!(held > 0);
/// // Give the batches back: the store is charged for exactly the 10 admitted calls.
/// assert_eq!(leased.flush().unwrap(), held);
/// let peek = shared.execute("k", Op::Peek(1), now).unwrap().unwrap();
/// assert_eq!(peek.remaining, 1_000 - 10 - 1); // what would remain after one more
/// ```
pub struct LeaseBackend<B: Backend> {
    shared: Arc<Shared<B>>,
}

impl<B: Backend> Clone for LeaseBackend<B> {
    fn clone(&self) -> Self {
        LeaseBackend {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<B: Backend> fmt::Debug for LeaseBackend<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseBackend")
            .field("config", &self.shared.config)
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

struct Shared<B: Backend> {
    inner: B,
    config: LeaseConfig,
    limits: Limits,
    capacity: u64,
    table: Table,
    /// The latest `now` a caller passed (the sweep thread's and `flush`'s clock).
    last_now: AtomicU64,
}

impl<B: Backend> LeaseBackend<B> {
    /// Leases hot keys of `inner`, bound to `policy`, as `config` says ([`Error::Config`] when
    /// [`LeaseConfig::validate`] refuses them). Starts the background sweep thread when the
    /// config asks for it.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, lease::{LeaseBackend, LeaseConfig}}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let b = LeaseBackend::new(MemoryStore::new().bind(&policy).unwrap(), &policy, LeaseConfig::default());
    /// assert!(b.is_ok());
    /// ```
    pub fn new(inner: B, policy: &Policy, config: LeaseConfig) -> Result<Self, Error> {
        config.validate(policy)?;
        let capacity = policy.max_cost();
        let limits = Limits {
            max_batch: config.get_max_batch().min(capacity),
            min_batch: config.get_min_batch(),
            duration: micros(config.get_duration()).max(1),
        };
        let shared = Arc::new(Shared {
            inner,
            table: Table::new(config.get_max_keys()),
            config,
            limits,
            capacity,
            last_now: AtomicU64::new(0),
        });
        if shared.config.get_background_sweep() {
            spawn_sweeper(Arc::downgrade(&shared), shared.config.get_duration());
        }
        Ok(LeaseBackend { shared })
    }

    /// The backend behind it.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::{MemoryBackend, MemoryStore}, lease::{LeaseBackend, LeaseConfig}}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let b = LeaseBackend::new(MemoryStore::new().bind(&policy).unwrap(), &policy, LeaseConfig::default()).unwrap();
    /// let _inner: &MemoryBackend = b.inner();
    /// ```
    pub fn inner(&self) -> &B {
        &self.shared.inner
    }

    /// Units charged in the store and held unused in this backend's batches now.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, lease::{LeaseBackend, LeaseConfig}}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let b = LeaseBackend::new(MemoryStore::new().bind(&policy).unwrap(), &policy, LeaseConfig::default()).unwrap();
    /// assert_eq!(b.held(), 0);
    /// ```
    pub fn held(&self) -> u64 {
        self.shared.table.held().0
    }

    /// Keys tracked now (leased or being measured).
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Backend, Op, Store, memory::MemoryStore, lease::{LeaseBackend, LeaseConfig}}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let b = LeaseBackend::new(MemoryStore::new().bind(&policy).unwrap(), &policy, LeaseConfig::default()).unwrap();
    /// let _ = b.execute("k", Op::Check(1), 0).unwrap();
    /// assert_eq!(b.tracked_keys(), 1);
    /// ```
    pub fn tracked_keys(&self) -> usize {
        self.shared.table.held().1
    }

    /// Gives back the unused units of every lease that has ended at `now`, forgets idle keys,
    /// and returns the units given back. Each key is one `Refund` call; a failed refund is
    /// reported (the first error) after the others ran, and its units come back by the
    /// store's refill.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, lease::{LeaseBackend, LeaseConfig}}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let b = LeaseBackend::new(MemoryStore::new().bind(&policy).unwrap(), &policy, LeaseConfig::default()).unwrap();
    /// assert_eq!(b.sweep(1_000_000).unwrap(), 0);
    /// ```
    pub fn sweep(&self, now: Micros) -> Result<u64, Error> {
        self.shared.give_back(now, false)
    }

    /// [`sweep`](Self::sweep) without blocking the executor.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, lease::{LeaseBackend, LeaseConfig}}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let b = LeaseBackend::new(MemoryStore::new().bind(&policy).unwrap(), &policy, LeaseConfig::default()).unwrap();
    /// let given = futures_util::FutureExt::now_or_never(b.sweep_async(0)).unwrap();
    /// assert_eq!(given.unwrap(), 0);
    /// ```
    pub async fn sweep_async(&self, now: Micros) -> Result<u64, Error> {
        self.shared.give_back_async(now, false).await
    }

    /// Gives back every batch now, ended or not (e.g. at shutdown), and returns the units
    /// given back.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, lease::{LeaseBackend, LeaseConfig}}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let b = LeaseBackend::new(MemoryStore::new().bind(&policy).unwrap(), &policy, LeaseConfig::default()).unwrap();
    /// assert_eq!(b.flush().unwrap(), 0);
    /// ```
    pub fn flush(&self) -> Result<u64, Error> {
        let now = self.shared.last_now.load(Ordering::Relaxed);
        self.shared.give_back(now, true)
    }

    /// [`flush`](Self::flush) without blocking the executor.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, lease::{LeaseBackend, LeaseConfig}}};
    /// let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// let b = LeaseBackend::new(MemoryStore::new().bind(&policy).unwrap(), &policy, LeaseConfig::default()).unwrap();
    /// assert_eq!(futures_util::FutureExt::now_or_never(b.flush_async()).unwrap().unwrap(), 0);
    /// ```
    pub async fn flush_async(&self) -> Result<u64, Error> {
        let now = self.shared.last_now.load(Ordering::Relaxed);
        self.shared.give_back_async(now, true).await
    }
}

impl<B: Backend> Shared<B> {
    fn observe(&self, now: Micros) {
        if now > self.last_now.load(Ordering::Relaxed) {
            self.last_now.store(now, Ordering::Relaxed);
        }
    }

    fn idle(&self) -> Micros {
        self.limits.duration.saturating_mul(2)
    }

    fn give_back(&self, now: Micros, force: bool) -> Result<u64, Error> {
        let mut first_err = None;
        let mut given = 0;
        for (key, units) in self.table.sweep(now, self.idle(), force) {
            match self.inner.execute(&key, Op::Refund(units), now) {
                Ok(_) => given += units,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        metrics::counter!("tollgate_lease_units_returned_total").increment(given);
        first_err.map_or(Ok(given), Err)
    }

    async fn give_back_async(&self, now: Micros, force: bool) -> Result<u64, Error> {
        let mut first_err = None;
        let mut given = 0;
        for (key, units) in self.table.sweep(now, self.idle(), force) {
            match self.inner.execute_async(&key, Op::Refund(units), now).await {
                Ok(_) => given += units,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        metrics::counter!("tollgate_lease_units_returned_total").increment(given);
        first_err.map_or(Ok(given), Err)
    }

    /// What to do with a reserve's answer: `Ok(decision)` for the reserver, or `Err(())` to
    /// fall back to `Check(cost)`.
    fn settle(
        &self,
        duty: Reserving<'_>,
        result: Result<Option<Decision>, Error>,
        seen: Option<StoreFailure>,
        failure: &mut Option<StoreFailure>,
        (batch, cost, now): (u64, u64, Micros),
    ) -> Result<Result<Option<Decision>, Error>, ()> {
        let duration = self.limits.duration;
        let failed = seen.is_some();
        if failed {
            *failure = seen;
        }
        match result {
            // The store charged the batch: bank it.
            Ok(Some(d)) if d.allowed && !failed => {
                metrics::counter!("tollgate_lease_reserves_total", "outcome" => "granted")
                    .increment(1);
                metrics::counter!("tollgate_lease_units_reserved_total").increment(batch);
                Ok(Ok(Some(
                    duty.finish(|st| st.banked(&d, batch, cost, now, duration)),
                )))
            }
            // A failure policy answered for the store: that answer is this call's, and
            // nothing is banked (the store may not have charged anything).
            Ok(d) if failed => {
                duty.finish(|_| ());
                Ok(Ok(d))
            }
            Ok(Some(d)) => {
                metrics::counter!("tollgate_lease_reserves_total", "outcome" => "denied")
                    .increment(1);
                duty.finish(|st| st.denied(&d, now));
                Err(())
            }
            other => {
                duty.finish(|_| ());
                Ok(other)
            }
        }
    }
}

fn spawn_sweeper<B: Backend>(shared: Weak<Shared<B>>, period: std::time::Duration) {
    let step = micros(period);
    let spawned = std::thread::Builder::new()
        .name("tollgate-lease-sweep".into())
        .spawn(move || {
            // The callers' clock, advanced by the wall clock while no call comes.
            let (mut seen, mut now) = (0, 0);
            loop {
                std::thread::sleep(period);
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                let last = shared.last_now.load(Ordering::Relaxed);
                if last != seen {
                    (seen, now) = (last, last);
                } else {
                    now = now.saturating_add(step);
                }
                if now != 0 {
                    if let Err(e) = shared.give_back(now, false) {
                        tracing::warn!(error = %e, "tollgate lease: giving back expired batches failed");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "tollgate lease: cannot start the sweep thread");
    }
}

impl<B: Backend> Drop for Shared<B> {
    fn drop(&mut self) {
        let now = self.last_now.load(Ordering::Relaxed);
        // Inside an async runtime, a store's blocking call may refuse to run on this thread:
        // give back from a plain thread and wait for it (shutdown is rare; the wait is one
        // store call per leased key).
        let result = if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| self.give_back(now, true))
                    .join()
                    .unwrap_or(Ok(0))
            })
        } else {
            self.give_back(now, true)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "tollgate lease: giving back batches at drop failed");
        }
    }
}

impl<B: Backend> LeaseBackend<B> {
    fn lease_for(&self, key: &str, cost: u64, now: Micros) -> Option<Arc<KeyLease>> {
        self.shared.observe(now);
        if cost == 0 {
            return None; // the store reports the invalid cost
        }
        self.shared.table.get_or_insert(key)
    }

    fn decide(
        &self,
        key: &str,
        cost: u64,
        charge: bool,
        now: Micros,
        failure: &mut Option<StoreFailure>,
    ) -> Result<Option<Decision>, Error> {
        let s = &*self.shared;
        let op = if charge {
            Op::Check(cost)
        } else {
            Op::Peek(cost)
        };
        let Some(lease) = self.lease_for(key, cost, now) else {
            return s.inner.execute_observed(key, op, now, failure);
        };
        let batch = {
            let mut st = lease.state.lock();
            if charge && cost <= s.capacity {
                st.record(cost, now, s.limits.duration);
            }
            loop {
                match st.plan(cost, now, charge, s.limits, s.capacity) {
                    Plan::Local(d) => return Ok(Some(d)),
                    Plan::Wait => lease.wait_blocking(&mut st),
                    Plan::Pass => {
                        drop(st);
                        return s.inner.execute_observed(key, op, now, failure);
                    }
                    Plan::Reserve(batch) => break batch,
                }
            }
        };
        let duty = Reserving::new(&lease);
        let mut seen = None;
        let result = s
            .inner
            .execute_observed(key, Op::Check(batch), now, &mut seen);
        match s.settle(duty, result, seen, failure, (batch, cost, now)) {
            Ok(done) => done,
            Err(()) => s.inner.execute_observed(key, op, now, failure),
        }
    }

    async fn decide_async(
        &self,
        key: &str,
        cost: u64,
        charge: bool,
        now: Micros,
        failure: &mut Option<StoreFailure>,
    ) -> Result<Option<Decision>, Error> {
        let s = &*self.shared;
        let op = if charge {
            Op::Check(cost)
        } else {
            Op::Peek(cost)
        };
        let Some(lease) = self.lease_for(key, cost, now) else {
            return s.inner.execute_observed_async(key, op, now, failure).await;
        };
        let mut first = charge;
        let batch = loop {
            let plan = {
                let mut st = lease.state.lock();
                if first && cost <= s.capacity {
                    st.record(cost, now, s.limits.duration);
                    first = false;
                }
                st.plan(cost, now, charge, s.limits, s.capacity)
            };
            match plan {
                Plan::Local(d) => return Ok(Some(d)),
                Plan::Wait => lease.wait_async().await,
                Plan::Pass => return s.inner.execute_observed_async(key, op, now, failure).await,
                Plan::Reserve(batch) => break batch,
            }
        };
        let duty = Reserving::new(&lease);
        let mut seen = None;
        let result = s
            .inner
            .execute_observed_async(key, Op::Check(batch), now, &mut seen)
            .await;
        match s.settle(duty, result, seen, failure, (batch, cost, now)) {
            Ok(done) => done,
            Err(()) => s.inner.execute_observed_async(key, op, now, failure).await,
        }
    }

    fn reset_local(&self, key: &str) {
        if let Some(lease) = self.shared.table.get(key) {
            lease.state.lock().units = 0;
        }
    }
}

impl<B: Backend> Backend for LeaseBackend<B> {
    fn execute(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        self.execute_observed(key, op, now, &mut None)
    }

    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(async move {
            let mut failure = None;
            self.execute_observed_async(key, op, now, &mut failure)
                .await
        })
    }

    fn execute_observed(
        &self,
        key: &str,
        op: Op,
        now: Micros,
        failure: &mut Option<StoreFailure>,
    ) -> Result<Option<Decision>, Error> {
        match op {
            Op::Check(cost) => self.decide(key, cost, true, now, failure),
            Op::Peek(cost) => self.decide(key, cost, false, now, failure),
            Op::Reset => {
                self.reset_local(key);
                self.shared.inner.execute_observed(key, op, now, failure)
            }
            _ => self.shared.inner.execute_observed(key, op, now, failure),
        }
    }

    fn execute_observed_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
        failure: &'a mut Option<StoreFailure>,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(async move {
            match op {
                Op::Check(cost) => self.decide_async(key, cost, true, now, failure).await,
                Op::Peek(cost) => self.decide_async(key, cost, false, now, failure).await,
                Op::Reset => {
                    self.reset_local(key);
                    let inner = &self.shared.inner;
                    inner.execute_observed_async(key, op, now, failure).await
                }
                _ => {
                    let inner = &self.shared.inner;
                    inner.execute_observed_async(key, op, now, failure).await
                }
            }
        })
    }
}

/// Multi-key calls pass straight through to the inner store (one call, charged there).
///
/// ```
/// use tollgate::{Policy, Rate, store::{Store, memory::MemoryStore, lease::{LeaseConfig, LeaseStore}}};
/// use tollgate::store::multi::{KeyCheck, MultiBackend, MultiOp};
/// let store = LeaseStore::new(MemoryStore::new(), LeaseConfig::default());
/// let b = store.bind(&Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).unwrap();
/// let items = [KeyCheck::new(&b, "a", 1), KeyCheck::new(&b, "b", 1)];
/// assert!(MultiBackend::execute_all(&items, MultiOp::Check, 0).unwrap().allowed);
/// assert!(!MultiBackend::execute_all(&items, MultiOp::Check, 0).unwrap().allowed);
/// ```
impl<B: MultiBackend> MultiBackend for LeaseBackend<B> {
    fn execute_all(
        items: &[KeyCheck<'_, Self>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let inner: Vec<KeyCheck<'_, B>> = items
            .iter()
            .map(|i| KeyCheck::new(i.backend().inner(), i.key(), i.cost()))
            .collect();
        B::execute_all(&inner, op, now)
    }

    fn execute_all_async<'a>(
        items: &'a [KeyCheck<'a, Self>],
        op: MultiOp,
        now: Micros,
    ) -> BoxFuture<'a, Result<MultiDecision, Error>> {
        Box::pin(async move {
            let inner: Vec<KeyCheck<'_, B>> = items
                .iter()
                .map(|i| KeyCheck::new(i.backend().inner(), i.key(), i.cost()))
                .collect();
            B::execute_all_async(&inner, op, now).await
        })
    }
}
