//! The sharded table of one policy's keys.

use super::{Budget, MemoryStore, MAX_SHARDS};
use crate::time::Micros;
use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use parking_lot::{RwLock, RwLockWriteGuard};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

pub(super) struct Shard<V> {
    table: HashTable<(Box<str>, V)>,
    next_sweep: Micros,
}

pub(super) struct ShardedMap<V> {
    shards: Box<[CachePadded<RwLock<Shard<V>>>]>,
    shard_mask: u64,
    hasher: foldhash::fast::RandomState,
    per_shard_cap: usize,
    sweep_interval: Micros,
    pub(super) expired: AtomicU64,
    pub(super) evictions: AtomicU64,
    /// Keys in this table (kept with every insert and removal).
    keys: AtomicUsize,
    /// The store's key budget, shared with every other table of the store.
    pub(super) budget: Arc<Budget>,
    /// The next shard a store-wide eviction looks at.
    cursor: AtomicUsize,
}

impl<V> Drop for ShardedMap<V> {
    fn drop(&mut self) {
        // The last limiter of this table is gone: its keys leave the store's budget.
        self.budget.removed(*self.keys.get_mut());
    }
}

impl<V> ShardedMap<V> {
    pub(super) fn new(store: &MemoryStore) -> Self {
        let shards = (store.max_keys / 1024)
            .clamp(1, MAX_SHARDS)
            .next_power_of_two();
        let shards = shards.min(MAX_SHARDS);
        Self {
            shards: (0..shards)
                .map(|_| {
                    CachePadded::new(RwLock::new(Shard {
                        table: HashTable::new(),
                        next_sweep: 0,
                    }))
                })
                .collect(),
            shard_mask: shards as u64 - 1,
            hasher: foldhash::fast::RandomState::default(),
            per_shard_cap: store.max_keys.div_ceil(shards),
            sweep_interval: store.sweep_interval,
            expired: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            keys: AtomicUsize::new(0),
            budget: Arc::clone(&store.tables.budget),
            cursor: AtomicUsize::new(0),
        }
    }

    /// Keys in this table now.
    #[inline]
    pub(super) fn keys(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    fn added(&self) {
        self.keys.fetch_add(1, Ordering::Relaxed);
        self.budget.added();
    }

    fn removed(&self, n: usize) {
        if n > 0 {
            self.keys.fetch_sub(n, Ordering::Relaxed);
            self.budget.removed(n);
        }
    }

    /// Drops the keys of a locked shard that are back to fresh at `now`; how many went.
    fn sweep_locked(
        &self,
        shard: &mut Shard<V>,
        now: Micros,
        horizon: &impl Fn(&V) -> Micros,
    ) -> usize {
        let before = shard.table.len();
        shard.table.retain(|e| horizon(&e.1) > now);
        let gone = before - shard.table.len();
        self.expired.fetch_add(gone as u64, Ordering::Relaxed);
        self.removed(gone);
        gone
    }

    /// Makes room in the store's budget from this table (see [`Budget::make_room`]): in the
    /// next non-empty shard, drops the keys back to fresh, or if there are none evicts the
    /// 1/16 of the shard whose horizon comes soonest. Returns how many keys went. The caller
    /// holds no shard lock.
    pub(super) fn evict_some(&self, now: Micros, horizon: &impl Fn(&V) -> Micros) -> usize {
        let n = self.shards.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let mut shard = self.shards[(start + i) % n].write();
            if shard.table.is_empty() {
                continue;
            }
            let mut gone = self.sweep_locked(&mut shard, now, horizon);
            if gone == 0 {
                let batch = (shard.table.len() / 16).max(1);
                gone = self.evict(&mut shard, horizon, batch);
            }
            // A table drained by the store's budget gives its room back (hash tables do not
            // shrink by themselves), so many tables cannot each keep a peak's capacity.
            let len = shard.table.len();
            if shard.table.capacity() > 4 * len.max(16) {
                let hasher = &self.hasher;
                shard.table.shrink_to(len, |e| hasher.hash_one(&*e.0));
            }
            return gone;
        }
        0
    }

    #[inline]
    pub(super) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline]
    fn shard(&self, hash: u64) -> &RwLock<Shard<V>> {
        // Bits 40.. pick the shard: hashbrown uses the low bits (bucket) and the top 7 (tag).
        &self.shards[((hash >> 40) & self.shard_mask) as usize]
    }

    #[inline]
    pub(super) fn with_existing<R>(
        &self,
        hash: u64,
        key: &str,
        f: impl FnOnce(&V) -> R,
    ) -> Option<R> {
        let shard = self.shard(hash).read();
        shard.table.find(hash, |e| &*e.0 == key).map(|e| f(&e.1))
    }

    /// Runs `on_existing` on the key's slot if it exists by now; otherwise inserts the slot
    /// made by `make` (which also returns the result), cleaning up first when due or full.
    pub(super) fn with_inserted<R>(
        &self,
        hash: u64,
        key: &str,
        now: Micros,
        horizon: impl Fn(&V) -> Micros,
        make: impl FnOnce() -> (V, R),
        on_existing: impl FnOnce(&V) -> R,
    ) -> R {
        let mut guard = self.shard(hash).write();
        if let Some(e) = guard.table.find(hash, |e| &*e.0 == key) {
            return on_existing(&e.1);
        }
        let (slot, result) = make();
        self.insert_locked(&mut guard, hash, key, now, &horizon, slot);
        result
    }

    /// The address of the shard holding `hash`: the global lock order of multi-key calls.
    #[inline]
    pub(super) fn shard_addr(&self, hash: u64) -> usize {
        self.shard(hash) as *const RwLock<Shard<V>> as usize
    }

    /// Write-locks the shard holding `hash` (multi-key calls: see `multi.rs`).
    pub(super) fn lock_shard(&self, hash: u64) -> RwLockWriteGuard<'_, Shard<V>> {
        self.shard(hash).write()
    }

    /// The slot of `key` in a locked shard, if stored.
    pub(super) fn find_locked<'g>(shard: &'g Shard<V>, hash: u64, key: &str) -> Option<&'g V> {
        shard.table.find(hash, |e| &*e.0 == key).map(|e| &e.1)
    }

    /// Removes `key` from a locked shard.
    pub(super) fn remove_locked(&self, shard: &mut Shard<V>, hash: u64, key: &str) {
        if let Ok(entry) = shard.table.find_entry(hash, |e| &*e.0 == key) {
            entry.remove();
            self.removed(1);
        }
    }

    /// Inserts `slot` for `key` (absent) into a locked shard, sweeping keys back to fresh
    /// first when due or full and evicting when still full; returns the stored slot.
    pub(super) fn insert_locked<'g>(
        &self,
        shard: &'g mut Shard<V>,
        hash: u64,
        key: &str,
        now: Micros,
        horizon: &impl Fn(&V) -> Micros,
        slot: V,
    ) -> &'g V {
        if now >= shard.next_sweep || shard.table.len() >= self.per_shard_cap {
            shard.next_sweep = now.saturating_add(self.sweep_interval);
            self.sweep_locked(shard, now, horizon);
        }
        if shard.table.len() >= self.per_shard_cap {
            self.evict(shard, horizon, (self.per_shard_cap / 16).max(1));
        }
        let hasher = &self.hasher;
        let entry = shard
            .table
            .insert_unique(hash, (Box::from(key), slot), |e| hasher.hash_one(&*e.0));
        self.added();
        &entry.into_mut().1
    }

    /// Evicts the `batch` keys of the shard whose horizon comes soonest (at least one key);
    /// returns how many went.
    fn evict(&self, shard: &mut Shard<V>, horizon: &impl Fn(&V) -> Micros, batch: usize) -> usize {
        let batch = batch.max(1);
        let mut horizons: Vec<Micros> = shard.table.iter().map(|e| horizon(&e.1)).collect();
        if horizons.is_empty() {
            return 0;
        }
        let nth = (batch - 1).min(horizons.len() - 1);
        let (_, &mut threshold, _) = horizons.select_nth_unstable(nth);
        let mut removed = 0;
        shard.table.retain(|e| {
            if removed < batch && horizon(&e.1) <= threshold {
                removed += 1;
                false
            } else {
                true
            }
        });
        self.evictions.fetch_add(removed as u64, Ordering::Relaxed);
        metrics::counter!("tollgate_memory_evictions_total").increment(removed as u64);
        self.removed(removed);
        removed
    }

    pub(super) fn remove(&self, hash: u64, key: &str) {
        self.remove_locked(&mut self.shard(hash).write(), hash, key);
    }

    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().table.len()).sum()
    }
}
