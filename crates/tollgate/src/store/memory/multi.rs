//! Multi-key all-or-nothing on the memory store.
//!
//! Every access to a key's slot holds its shard's lock (single-key calls the read lock, or the
//! write lock to insert). A multi-key call write-locks every shard its keys live in — each
//! shard once, in ascending address order, which is one global order across every table of
//! every store, so two multi-key calls can never wait on each other in a cycle — then decides
//! every key, then charges all of them or none, then unlocks. No single-key call can see or
//! change any of those keys in between: the call is atomic across keys. Keys in other shards
//! are never blocked.

use super::shard::{Shard, ShardedMap};
use super::slots::SlotKind;
use super::{dispatch, Engine, Keyed, MemoryBackend};
use crate::decision::Decision;
use crate::error::Error;
use crate::store::multi::{validate_items, KeyCheck, MultiDecision, MultiOp};
use crate::store::Op;
use crate::time::Micros;
use parking_lot::RwLockWriteGuard;
use std::sync::Arc;

/// One write-locked shard of one table, with the table's parameters.
trait LockedShard {
    /// The decision `cost` gets on `key` now, changing nothing.
    fn peek(&self, key: &str, hash: u64, cost: u64, now: Micros) -> Result<Decision, Error>;
    /// Charges `cost` on `key` (which admits it: checked by `peek` under the same lock).
    fn charge(&mut self, key: &str, hash: u64, cost: u64, now: Micros) -> Result<Decision, Error>;
    /// Persists what an uncharged check persists (the token bucket's refill).
    fn settle(&mut self, key: &str, hash: u64, now: Micros);
}

struct Locked<'a, K: SlotKind> {
    keyed: &'a Keyed<K>,
    guard: RwLockWriteGuard<'a, Shard<K::Slot>>,
}

fn expect(d: Option<Decision>) -> Decision {
    // Check and Peek always return a decision (SlotKind::apply's contract).
    d.unwrap_or_else(|| Decision::from_parts(false, 0, 0, 0, 0, None))
}

impl<K: SlotKind> LockedShard for Locked<'_, K> {
    fn peek(&self, key: &str, hash: u64, cost: u64, now: Micros) -> Result<Decision, Error> {
        let p = &self.keyed.params;
        let op = Op::Peek(cost);
        match ShardedMap::find_locked(&self.guard, hash, key) {
            Some(slot) => K::apply(p, slot, now, op).map(expect),
            None => K::apply(p, &K::fresh(p), now, op).map(expect),
        }
    }

    fn charge(&mut self, key: &str, hash: u64, cost: u64, now: Micros) -> Result<Decision, Error> {
        let p = &self.keyed.params;
        let op = Op::Check(cost);
        if let Some(slot) = ShardedMap::find_locked(&self.guard, hash, key) {
            return K::apply(p, slot, now, op).map(expect);
        }
        let fresh = K::fresh(p);
        let decision = K::apply(p, &fresh, now, op).map(expect)?;
        let horizon = |slot: &K::Slot| K::horizon(p, slot);
        self.keyed
            .map
            .insert_locked(&mut self.guard, hash, key, now, &horizon, fresh);
        Ok(decision)
    }

    fn settle(&mut self, key: &str, hash: u64, now: Micros) {
        let p = &self.keyed.params;
        if let Some(slot) = ShardedMap::find_locked(&self.guard, hash, key) {
            K::settle(p, slot, now);
            return;
        }
        let fresh = K::fresh(p);
        K::settle(p, &fresh, now);
        if !K::is_fresh(p, &fresh) {
            let horizon = |slot: &K::Slot| K::horizon(p, slot);
            self.keyed
                .map
                .insert_locked(&mut self.guard, hash, key, now, &horizon, fresh);
        }
    }
}

fn lock<K: SlotKind>(keyed: &Keyed<K>, hash: u64) -> Box<dyn LockedShard + '_> {
    Box::new(Locked {
        keyed,
        guard: keyed.map.lock_shard(hash),
    })
}

/// Where an item's slot lives: its hash and its shard's address (the lock order).
fn locate(engine: &Engine, key: &str) -> (u64, usize) {
    dispatch!(engine, k => {
        let hash = k.map.hash(key);
        (hash, k.map.shard_addr(hash))
    })
}

fn lock_engine(engine: &Engine, hash: u64) -> Box<dyn LockedShard + '_> {
    dispatch!(engine, k => lock(k, hash))
}

/// Decides every item together; see the module docs.
pub(super) fn execute_all(
    items: &[KeyCheck<'_, MemoryBackend>],
    op: MultiOp,
    now: Micros,
) -> Result<MultiDecision, Error> {
    validate_items(items, |a, b| Arc::ptr_eq(&a.engine, &b.engine))?;
    // Room in each store's key budget for the keys this call may insert, made before any
    // shard is locked (eviction locks other shards).
    for item in items {
        let budget = item.backend().engine.budget();
        if budget.is_full() {
            budget.make_room(now);
        }
    }
    let located: Vec<(u64, usize)> = items
        .iter()
        .map(|i| locate(&i.backend().engine, i.key()))
        .collect();
    // Each distinct shard once, in ascending address order.
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| located[i].1);
    order.dedup_by_key(|i| located[*i].1);
    let mut shards: Vec<(usize, Box<dyn LockedShard + '_>)> = order
        .iter()
        .map(|&i| {
            let (hash, addr) = located[i];
            (addr, lock_engine(&items[i].backend().engine, hash))
        })
        .collect();
    let mut decisions = Vec::with_capacity(items.len());
    for (item, &(hash, addr)) in items.iter().zip(&located) {
        let shard = &shards[position(&shards, addr)].1;
        decisions.push(shard.peek(item.key(), hash, item.cost(), now)?);
    }
    let mut outcome = MultiDecision::from_decisions(decisions);
    if op == MultiOp::Check {
        for (n, (item, &(hash, addr))) in items.iter().zip(&located).enumerate() {
            let at = position(&shards, addr);
            let shard = &mut shards[at].1;
            if outcome.allowed {
                outcome.decisions[n] = shard.charge(item.key(), hash, item.cost(), now)?;
            } else {
                shard.settle(item.key(), hash, now);
            }
        }
    }
    Ok(outcome)
}

/// The index of the locked shard at `addr` (every item's shard is locked, sorted by address).
fn position(shards: &[(usize, Box<dyn LockedShard + '_>)], addr: usize) -> usize {
    shards
        .binary_search_by_key(&addr, |(a, _)| *a)
        .unwrap_or_else(|i| i.min(shards.len() - 1))
}
