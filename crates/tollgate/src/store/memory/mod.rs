//! The in-memory store: keyed, concurrent, fast and bounded.
//!
//! # Layout
//!
//! Keys are spread over up to 64 shards (by a `foldhash` hash computed once per call), each a
//! `hashbrown` table behind a `parking_lot` reader-writer lock. A call on an existing key takes
//! the shard's *read* lock only: single-rate GCRA state is one `AtomicU64` updated by
//! compare-and-swap, other algorithms lock only their own key's state. The write lock is taken
//! to insert a key, remove one, or clean up.
//!
//! # Bounded memory
//!
//! - A key is only stored when a `check` changes its state: peeks, refunds and resets of unknown
//!   keys store nothing, nor do denials (except a token bucket whose `initial_tokens` is below
//!   its capacity: its first check creates it and starts its refill clock).
//! - **Idle expiry**: every algorithm knows when a key's state is back to fresh (its
//!   *horizon*). From then on the state is equivalent to no state, and the store drops it.
//!   Each shard sweeps its expired keys when a new key is inserted, at most once per
//!   [`MemoryStore::sweep_interval`] (default 1 s); no user-scheduled cleanup is needed.
//!   Dropping an expired key changes no decision.
//! - **Hard cap**: [`MemoryStore::max_keys`] (default 1,000,000) bounds the number of keys.
//!   When a shard is full, it first drops expired keys; if none are expired, it *evicts* the
//!   1/16 of its keys whose horizon comes soonest — the longest idle, whose state is closest
//!   to fresh — and counts them in [`MemoryStats::evictions`] and the
//!   `tollgate_memory_evictions_total` metric.
//!
//! **What eviction means for accuracy**: an evicted key that was not yet back to fresh starts
//! fresh again on its next call, so that client may be admitted up to one extra full burst
//! (the capacity minus what was left) earlier than the policy allows. Eviction happens only
//! when more than `max_keys` keys are active at once; size `max_keys` above your number of
//! concurrently active clients and it never happens. Expiry alone never changes a decision.
//!
//! The cap is enforced per shard (`ceil(max_keys / shards)` each; small caps use fewer shards),
//! so the total never exceeds `max_keys` rounded up to a multiple of the shard count.
//!
//! ```
//! use tollgate::{Limiter, Policy, Rate, store::memory::MemoryStore};
//! let store = MemoryStore::new().max_keys(10_000);
//! let limiter = Limiter::builder(Policy::gcra(Rate::per_second(10).unwrap()).unwrap())
//!     .build_with(&store)
//!     .unwrap();
//! assert!(limiter.check("203.0.113.7").unwrap().allowed);
//! ```

use super::{validate_op, Backend, Op, Store};
use crate::algorithm::{
    self, fixed_window, gcra, sliding_log, sliding_window, token_bucket, CompiledPolicy,
    RateAlgorithm,
};
use crate::decision::Decision;
use crate::error::Error;
use crate::policy::Policy;
use crate::time::{micros, Micros};
use crossbeam_utils::CachePadded;
use futures_util::future::BoxFuture;
use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Most shards a keyed memory store uses.
const MAX_SHARDS: usize = 64;

/// Configuration of the in-memory store; [`Store::bind`] makes one keyed table per policy.
///
/// ```
/// use std::time::Duration;
/// let store = tollgate::store::memory::MemoryStore::new()
///     .max_keys(50_000)
///     .sweep_interval(Duration::from_millis(500));
/// assert_eq!(store.max_keys_value(), 50_000);
/// ```
#[derive(Clone, Debug)]
pub struct MemoryStore {
    max_keys: usize,
    sweep_interval: Micros,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            max_keys: 1_000_000,
            sweep_interval: 1_000_000,
        }
    }
}

impl MemoryStore {
    /// The default configuration: at most 1,000,000 keys, sweep at most once a second.
    ///
    /// ```
    /// assert_eq!(tollgate::store::memory::MemoryStore::new().max_keys_value(), 1_000_000);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The hard cap on stored keys (at least 1).
    ///
    /// ```
    /// assert_eq!(tollgate::store::memory::MemoryStore::new().max_keys(0).max_keys_value(), 1);
    /// ```
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// The configured cap.
    ///
    /// ```
    /// assert_eq!(tollgate::store::memory::MemoryStore::new().max_keys(7).max_keys_value(), 7);
    /// ```
    pub fn max_keys_value(&self) -> usize {
        self.max_keys
    }

    /// How often (at most) each shard sweeps expired keys on insert.
    ///
    /// ```
    /// let s = tollgate::store::memory::MemoryStore::new().sweep_interval(std::time::Duration::ZERO);
    /// # let _ = s;
    /// ```
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = micros(every);
        self
    }
}

impl Store for MemoryStore {
    type Backend = MemoryBackend;
    fn bind(&self, policy: &Policy) -> Result<MemoryBackend, Error> {
        Ok(MemoryBackend::new(policy, self))
    }
}

/// Counters of a memory backend.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate};
/// let limiter = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
/// let _ = limiter.check("a").unwrap();
/// assert_eq!(limiter.backend().stats().keys, 1);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Keys stored now.
    pub keys: usize,
    /// Keys dropped because they were back to fresh (no effect on decisions).
    pub expired: u64,
    /// Keys dropped by the hard cap before they were back to fresh.
    pub evictions: u64,
}

// ---------------------------------------------------------------------------------------
// Slot kinds: how one key's state is held and operated on.

/// How one key's state is stored and how an operation applies to it.
pub(crate) trait SlotKind: Send + Sync + 'static {
    type Params: Send + Sync;
    type Slot: Send + Sync;
    fn fresh(p: &Self::Params) -> Self::Slot;
    fn apply(
        p: &Self::Params,
        slot: &Self::Slot,
        now: Micros,
        op: Op,
    ) -> Result<Option<Decision>, Error>;
    fn horizon(p: &Self::Params, slot: &Self::Slot) -> Micros;
    /// True when the slot holds the fresh state (nothing worth storing).
    fn is_fresh(p: &Self::Params, slot: &Self::Slot) -> bool;
}

/// Single-rate GCRA: one atomic TAT, updated by compare-and-swap.
pub(crate) struct GcraOne;

impl SlotKind for GcraOne {
    type Params = gcra::Params;
    type Slot = AtomicU64;

    fn fresh(_p: &gcra::Params) -> AtomicU64 {
        AtomicU64::new(0)
    }

    #[inline(always)]
    fn apply(
        p: &gcra::Params,
        slot: &AtomicU64,
        now: Micros,
        op: Op,
    ) -> Result<Option<Decision>, Error> {
        match op {
            Op::Check(cost) | Op::Peek(cost) => {
                let mut tat = slot.load(Ordering::Acquire);
                loop {
                    let (v, next) = gcra::Gcra::evaluate(p, &tat, now, cost)?;
                    let decision = Decision::from_parts(
                        v.allowed,
                        v.limit,
                        v.remaining,
                        v.retry_after,
                        v.reset_after,
                        (!v.allowed).then_some(0),
                    );
                    if !v.allowed || matches!(op, Op::Peek(_)) {
                        return Ok(Some(decision));
                    }
                    match slot.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => return Ok(Some(decision)),
                        Err(actual) => tat = actual,
                    }
                }
            }
            Op::Refund(amount) => {
                let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                    Some(gcra::Gcra::refund(p, &tat, now, amount))
                });
                Ok(None)
            }
            Op::Reset => {
                slot.store(0, Ordering::Release);
                Ok(None)
            }
        }
    }

    fn horizon(_p: &gcra::Params, slot: &AtomicU64) -> Micros {
        slot.load(Ordering::Acquire)
    }

    fn is_fresh(_p: &gcra::Params, slot: &AtomicU64) -> bool {
        slot.load(Ordering::Acquire) == 0
    }
}

/// Any per-rate algorithm over several rates, under a per-key mutex.
pub(crate) struct Rates<A>(std::marker::PhantomData<A>);

impl<A> SlotKind for Rates<A>
where
    A: RateAlgorithm + Send + Sync + 'static,
    A::Params: Send + Sync,
    A::State: Send + Sync,
{
    type Params = Box<[A::Params]>;
    type Slot = Mutex<Box<[A::State]>>;

    fn fresh(p: &Self::Params) -> Self::Slot {
        Mutex::new(vec![A::State::default(); p.len()].into_boxed_slice())
    }

    fn apply(
        p: &Self::Params,
        slot: &Self::Slot,
        now: Micros,
        op: Op,
    ) -> Result<Option<Decision>, Error> {
        let mut states = slot.lock();
        match op {
            Op::Check(cost) => {
                algorithm::decide_rates::<A>(p, &mut states, now, cost, true).map(Some)
            }
            Op::Peek(cost) => {
                algorithm::decide_rates::<A>(p, &mut states, now, cost, false).map(Some)
            }
            Op::Refund(amount) => {
                algorithm::refund_rates::<A>(p, &mut states, now, amount);
                Ok(None)
            }
            Op::Reset => {
                states.fill(A::State::default());
                Ok(None)
            }
        }
    }

    fn horizon(p: &Self::Params, slot: &Self::Slot) -> Micros {
        algorithm::horizon_rates::<A>(p, &slot.lock())
    }

    fn is_fresh(_p: &Self::Params, slot: &Self::Slot) -> bool {
        slot.lock().iter().all(|s| *s == A::State::default())
    }
}

/// The sliding log, under a per-key mutex.
pub(crate) struct LogKind;

impl SlotKind for LogKind {
    type Params = sliding_log::Params;
    type Slot = Mutex<sliding_log::Log>;

    fn fresh(_p: &Self::Params) -> Self::Slot {
        Mutex::new(sliding_log::Log::default())
    }

    fn apply(
        p: &Self::Params,
        slot: &Self::Slot,
        now: Micros,
        op: Op,
    ) -> Result<Option<Decision>, Error> {
        let mut log = slot.lock();
        match op {
            Op::Check(cost) => sliding_log::decide(p, &mut log, now, cost, true).map(Some),
            Op::Peek(cost) => sliding_log::decide(p, &mut log, now, cost, false).map(Some),
            Op::Refund(amount) => {
                sliding_log::refund(p, &mut log, now, amount);
                Ok(None)
            }
            Op::Reset => {
                log.entries.clear();
                Ok(None)
            }
        }
    }

    fn horizon(p: &Self::Params, slot: &Self::Slot) -> Micros {
        sliding_log::horizon(p, &slot.lock())
    }

    fn is_fresh(_p: &Self::Params, slot: &Self::Slot) -> bool {
        slot.lock().entries.is_empty()
    }
}

// ---------------------------------------------------------------------------------------
// The sharded table.

struct Shard<V> {
    table: HashTable<(Box<str>, V)>,
    next_sweep: Micros,
}

struct ShardedMap<V> {
    shards: Box<[CachePadded<RwLock<Shard<V>>>]>,
    shard_mask: u64,
    hasher: foldhash::fast::RandomState,
    per_shard_cap: usize,
    sweep_interval: Micros,
    expired: AtomicU64,
    evictions: AtomicU64,
}

impl<V> ShardedMap<V> {
    fn new(store: &MemoryStore) -> Self {
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
        }
    }

    #[inline]
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline]
    fn shard(&self, hash: u64) -> &RwLock<Shard<V>> {
        // Bits 40.. pick the shard: hashbrown uses the low bits (bucket) and the top 7 (tag).
        &self.shards[((hash >> 40) & self.shard_mask) as usize]
    }

    #[inline]
    fn with_existing<R>(&self, hash: u64, key: &str, f: impl FnOnce(&V) -> R) -> Option<R> {
        let shard = self.shard(hash).read();
        shard.table.find(hash, |e| &*e.0 == key).map(|e| f(&e.1))
    }

    /// Runs `on_existing` on the key's slot if it exists by now; otherwise inserts the slot
    /// made by `make` (which also returns the result), cleaning up first when due or full.
    fn with_inserted<R>(
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
        let shard = &mut *guard;
        if now >= shard.next_sweep || shard.table.len() >= self.per_shard_cap {
            shard.next_sweep = now.saturating_add(self.sweep_interval);
            let before = shard.table.len();
            shard.table.retain(|e| horizon(&e.1) > now);
            self.expired
                .fetch_add((before - shard.table.len()) as u64, Ordering::Relaxed);
        }
        if shard.table.len() >= self.per_shard_cap {
            self.evict(shard, &horizon);
        }
        let (slot, result) = make();
        let hasher = &self.hasher;
        shard
            .table
            .insert_unique(hash, (Box::from(key), slot), |e| hasher.hash_one(&*e.0));
        result
    }

    /// Evicts the 1/16 of the shard whose horizon comes soonest (at least one key).
    fn evict(&self, shard: &mut Shard<V>, horizon: &impl Fn(&V) -> Micros) {
        let batch = (self.per_shard_cap / 16).max(1);
        let mut horizons: Vec<Micros> = shard.table.iter().map(|e| horizon(&e.1)).collect();
        if horizons.is_empty() {
            return;
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
    }

    fn remove(&self, hash: u64, key: &str) {
        let mut shard = self.shard(hash).write();
        if let Ok(entry) = shard.table.find_entry(hash, |e| &*e.0 == key) {
            entry.remove();
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().table.len()).sum()
    }
}

/// One policy's keyed table of slots of kind `K`.
struct Keyed<K: SlotKind> {
    params: K::Params,
    map: ShardedMap<K::Slot>,
}

impl<K: SlotKind> Keyed<K> {
    #[inline]
    fn execute(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        let hash = self.map.hash(key);
        if op == Op::Reset {
            self.map.remove(hash, key);
            return Ok(None);
        }
        if let Some(result) = self
            .map
            .with_existing(hash, key, |slot| K::apply(&self.params, slot, now, op))
        {
            return result;
        }
        match op {
            Op::Check(_) => {
                let fresh = K::fresh(&self.params);
                let decision = K::apply(&self.params, &fresh, now, op)?;
                if !decision.is_some_and(|d| d.allowed) && K::is_fresh(&self.params, &fresh) {
                    return Ok(decision);
                }
                self.map.with_inserted(
                    hash,
                    key,
                    now,
                    |slot| K::horizon(&self.params, slot),
                    || (fresh, Ok(decision)),
                    |slot| K::apply(&self.params, slot, now, op),
                )
            }
            Op::Peek(_) => K::apply(&self.params, &K::fresh(&self.params), now, op),
            Op::Refund(_) | Op::Reset => Ok(None),
        }
    }
}

enum Engine {
    GcraOne(Keyed<GcraOne>),
    Gcra(Keyed<Rates<gcra::Gcra>>),
    TokenBucket(Keyed<Rates<token_bucket::TokenBucket>>),
    FixedWindow(Keyed<Rates<fixed_window::FixedWindow>>),
    SlidingWindow(Keyed<Rates<sliding_window::SlidingWindow>>),
    SlidingLog(Keyed<LogKind>),
}

macro_rules! dispatch {
    ($engine:expr, $k:ident => $body:expr) => {
        match $engine {
            Engine::GcraOne($k) => $body,
            Engine::Gcra($k) => $body,
            Engine::TokenBucket($k) => $body,
            Engine::FixedWindow($k) => $body,
            Engine::SlidingWindow($k) => $body,
            Engine::SlidingLog($k) => $body,
        }
    };
}

/// The in-memory backend of one policy (made by [`MemoryStore`]'s [`Store::bind`]).
///
/// ```
/// use tollgate::{Policy, Rate, store::{Backend, Op, Store, memory::MemoryStore}};
/// let b = MemoryStore::new().bind(&Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).unwrap();
/// assert!(b.execute("k", Op::Check(1), 0).unwrap().unwrap().allowed);
/// assert!(!b.execute("k", Op::Check(1), 0).unwrap().unwrap().allowed);
/// ```
pub struct MemoryBackend {
    engine: Engine,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("stats", &self.stats())
            .finish()
    }
}

impl MemoryBackend {
    fn new(policy: &Policy, store: &MemoryStore) -> Self {
        fn keyed<K: SlotKind>(params: K::Params, store: &MemoryStore) -> Keyed<K> {
            Keyed {
                params,
                map: ShardedMap::new(store),
            }
        }
        let engine = match CompiledPolicy::new(policy) {
            CompiledPolicy::Gcra(p) if p.len() == 1 => Engine::GcraOne(keyed(p[0], store)),
            CompiledPolicy::Gcra(p) => Engine::Gcra(keyed(p, store)),
            CompiledPolicy::TokenBucket(p) => Engine::TokenBucket(keyed(p, store)),
            CompiledPolicy::FixedWindow(p) => Engine::FixedWindow(keyed(p, store)),
            CompiledPolicy::SlidingWindow(p) => Engine::SlidingWindow(keyed(p, store)),
            CompiledPolicy::SlidingLog(p) => Engine::SlidingLog(keyed(p, store)),
        };
        Self { engine }
    }

    /// Keys stored, expired and evicted so far.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let limiter = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// assert_eq!(limiter.backend().stats().evictions, 0);
    /// ```
    pub fn stats(&self) -> MemoryStats {
        dispatch!(&self.engine, k => MemoryStats {
            keys: k.map.len(),
            expired: k.map.expired.load(Ordering::Relaxed),
            evictions: k.map.evictions.load(Ordering::Relaxed),
        })
    }
}

impl Backend for MemoryBackend {
    #[inline]
    fn execute(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        validate_op(op)?;
        dispatch!(&self.engine, k => k.execute(key, op, now))
    }

    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(std::future::ready(self.execute(key, op, now)))
    }
}

// ---------------------------------------------------------------------------------------
// A single unkeyed slot, for `DirectLimiter`.

enum DirectEngine {
    GcraOne(gcra::Params, AtomicU64),
    Gcra(Box<[gcra::Params]>, Mutex<Box<[u64]>>),
    TokenBucket(
        Box<[token_bucket::Params]>,
        Mutex<Box<[token_bucket::State]>>,
    ),
    FixedWindow(
        Box<[fixed_window::Params]>,
        Mutex<Box<[fixed_window::State]>>,
    ),
    SlidingWindow(
        Box<[sliding_window::Params]>,
        Mutex<Box<[sliding_window::State]>>,
    ),
    SlidingLog(sliding_log::Params, Mutex<sliding_log::Log>),
}

/// One unkeyed state: what [`crate::DirectLimiter`] runs on.
pub(crate) struct DirectSlot(DirectEngine);

impl DirectSlot {
    pub(crate) fn new(policy: &Policy) -> Self {
        fn pair<K: SlotKind>(p: K::Params) -> (K::Params, K::Slot) {
            let slot = K::fresh(&p);
            (p, slot)
        }
        Self(match CompiledPolicy::new(policy) {
            CompiledPolicy::Gcra(p) if p.len() == 1 => {
                let p = p[0];
                let (p, s) = pair::<GcraOne>(p);
                DirectEngine::GcraOne(p, s)
            }
            CompiledPolicy::Gcra(p) => {
                let (p, s) = pair::<Rates<gcra::Gcra>>(p);
                DirectEngine::Gcra(p, s)
            }
            CompiledPolicy::TokenBucket(p) => {
                let (p, s) = pair::<Rates<token_bucket::TokenBucket>>(p);
                DirectEngine::TokenBucket(p, s)
            }
            CompiledPolicy::FixedWindow(p) => {
                let (p, s) = pair::<Rates<fixed_window::FixedWindow>>(p);
                DirectEngine::FixedWindow(p, s)
            }
            CompiledPolicy::SlidingWindow(p) => {
                let (p, s) = pair::<Rates<sliding_window::SlidingWindow>>(p);
                DirectEngine::SlidingWindow(p, s)
            }
            CompiledPolicy::SlidingLog(p) => {
                let (p, s) = pair::<LogKind>(p);
                DirectEngine::SlidingLog(p, s)
            }
        })
    }

    #[inline(always)]
    pub(crate) fn execute(&self, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        validate_op(op)?;
        match &self.0 {
            DirectEngine::GcraOne(p, s) => GcraOne::apply(p, s, now, op),
            DirectEngine::Gcra(p, s) => Rates::<gcra::Gcra>::apply(p, s, now, op),
            DirectEngine::TokenBucket(p, s) => {
                Rates::<token_bucket::TokenBucket>::apply(p, s, now, op)
            }
            DirectEngine::FixedWindow(p, s) => {
                Rates::<fixed_window::FixedWindow>::apply(p, s, now, op)
            }
            DirectEngine::SlidingWindow(p, s) => {
                Rates::<sliding_window::SlidingWindow>::apply(p, s, now, op)
            }
            DirectEngine::SlidingLog(p, s) => LogKind::apply(p, s, now, op),
        }
    }
}
