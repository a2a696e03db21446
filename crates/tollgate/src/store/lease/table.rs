//! The leased keys of one bound backend: sharded, bounded, swept.

use super::state::KeyLease;
use crate::time::Micros;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const SHARDS: usize = 16;

type Shard = HashMap<Box<str>, Arc<KeyLease>, foldhash::fast::RandomState>;

/// Keys to their leases, in shards so callers of different keys rarely share a lock. No
/// shard lock is ever held during a store call.
#[derive(Debug)]
pub(super) struct Table {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
    len: AtomicUsize,
    max_keys: usize,
}

impl Table {
    pub(super) fn new(max_keys: usize) -> Self {
        Table {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: foldhash::fast::RandomState::default(),
            len: AtomicUsize::new(0),
            max_keys,
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % SHARDS]
    }

    /// The lease of `key`, created if there is room; `None` when the table is full (the call
    /// then passes through to the store).
    pub(super) fn get_or_insert(&self, key: &str) -> Option<Arc<KeyLease>> {
        let mut shard = self.shard(key).lock();
        if let Some(lease) = shard.get(key) {
            return Some(Arc::clone(lease));
        }
        if self.len.load(Ordering::Relaxed) >= self.max_keys {
            return None;
        }
        self.len.fetch_add(1, Ordering::Relaxed);
        let lease = Arc::new(KeyLease::default());
        shard.insert(key.into(), Arc::clone(&lease));
        Some(lease)
    }

    /// The lease of `key`, if tracked.
    pub(super) fn get(&self, key: &str) -> Option<Arc<KeyLease>> {
        self.shard(key).lock().get(key).cloned()
    }

    /// Takes the units of every ended lease (every lease when `force`) and forgets keys idle
    /// for `idle` µs; returns the units to give back, per key.
    pub(super) fn sweep(&self, now: Micros, idle: Micros, force: bool) -> Vec<(Box<str>, u64)> {
        let mut back = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.retain(|key, lease| {
                let mut st = lease.state.lock();
                let units = st.take_expired(now, force);
                if units > 0 {
                    back.push((key.clone(), units));
                }
                let forget = !st.reserving
                    && st.units == 0
                    && now.saturating_sub(st.last_used) > idle
                    && Arc::strong_count(lease) == 1;
                drop(st);
                if forget {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
                !forget
            });
        }
        back
    }

    /// Units held in batches now, and the number of keys tracked.
    pub(super) fn held(&self) -> (u64, usize) {
        let mut units = 0u64;
        for shard in self.shards.iter() {
            for lease in shard.lock().values() {
                units = units.saturating_add(lease.state.lock().units);
            }
        }
        (units, self.len.load(Ordering::Relaxed))
    }
}
