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
//! # Sharing
//!
//! Limiters bound to the same store (or its clones) with the same policy share state: a
//! key charged through one is charged for all of them, as on Redis and SQL. Different
//! policies never share state. [`MemoryStore::scope`] names the state instead: every limiter
//! bound under that scope shares it; binding a *different* policy under a scope that is in
//! use by a live limiter is an error ([`Error::InvalidKey`]), since one process cannot run
//! two policies on one state. See [`Store`] for the rule on every store.
//!
//! ```
//! use tollgate::{Limiter, Policy, Rate, store::memory::MemoryStore};
//! let store = MemoryStore::new();
//! let policy = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
//! let a = Limiter::builder(policy.clone()).build_with(&store).unwrap();
//! let b = Limiter::builder(policy).build_with(&store).unwrap();
//! assert!(a.check("alice").unwrap().allowed);
//! assert!(!b.check("alice").unwrap().allowed); // same store, same policy: one budget
//! ```
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
//! - **Hard cap**: [`MemoryStore::max_keys`] (default 1,000,000) bounds the number of keys of
//!   the whole store — one budget for the store, its clones and its scopes, across every
//!   policy and scope bound to it ([`MemoryStore::keys`] counts them), so a flood spread over
//!   many policies is bounded like one on a single policy. When an insert finds the budget
//!   full, the store takes the table holding the most keys and, in one of its shards, drops
//!   the expired keys or, if none are expired, *evicts* the 1/16 of the shard's keys whose
//!   horizon comes soonest — the longest idle, whose state is closest to fresh — counted in
//!   [`MemoryStats::evictions`] and the `tollgate_memory_evictions_total` metric. Each table
//!   also caps each of its shards the same way (a table alone never exceeds `max_keys`).
//!
//! **What eviction means for accuracy**: an evicted key that was not yet back to fresh starts
//! fresh again on its next call, so that client may be admitted up to one extra full burst
//! (the capacity minus what was left) earlier than the policy allows. Eviction happens only
//! when more than `max_keys` keys are active at once; size `max_keys` above your number of
//! concurrently active clients and it never happens. Expiry alone never changes a decision.
//!
//! The budget is checked before each insert without blocking other calls, so the total may
//! pass `max_keys` by the keys being inserted at that very moment (one per concurrent caller,
//! or per key of a multi-key call); the single-key path on an existing key is unchanged (no
//! shared counter is touched). The keys of a table leave the budget when its last limiter is
//! dropped.
//!
//! ```
//! use tollgate::{Limiter, Policy, Rate, store::memory::MemoryStore};
//! let store = MemoryStore::new().max_keys(10_000);
//! let limiter = Limiter::builder(Policy::gcra(Rate::per_second(10).unwrap()).unwrap())
//!     .build_with(&store)
//!     .unwrap();
//! assert!(limiter.check("203.0.113.7").unwrap().allowed);
//! ```

mod direct;
mod log;
mod multi;
mod shard;
mod slots;

pub(crate) use direct::DirectSlot;

use super::multi::{KeyCheck, MultiBackend, MultiDecision, MultiOp};
use super::{validate_op, Backend, Op, Store};
use crate::algorithm::{fixed_window, gcra, sliding_window, token_bucket, CompiledPolicy};
use crate::decision::Decision;
use crate::error::Error;
use crate::policy::Policy;
use crate::time::{micros, Micros};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use shard::ShardedMap;
use slots::{GcraOne, LogKind, Rates, SlotKind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Most shards a keyed memory store uses.
const MAX_SHARDS: usize = 64;

/// The in-memory store: [`Store::bind`] gives one keyed table per policy (or per
/// [`scope`](MemoryStore::scope)), shared by every limiter bound to this store or its clones
/// with the same policy.
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
    scope: Option<Arc<str>>,
    tables: Arc<Tables>,
}

/// The live tables of a store (and its clones), by scope or policy, and their one key budget.
struct Tables {
    map: Mutex<HashMap<TableId, (Policy, Weak<Engine>)>>,
    budget: Arc<Budget>,
}

impl Tables {
    fn new(max_keys: usize) -> Arc<Tables> {
        Arc::new(Tables {
            map: Mutex::default(),
            budget: Arc::new(Budget {
                max: max_keys,
                keys: AtomicUsize::new(0),
                tables: Mutex::default(),
            }),
        })
    }
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables")
            .field(
                "live",
                &self
                    .map
                    .lock()
                    .values()
                    .filter(|(_, w)| w.strong_count() > 0)
                    .count(),
            )
            .field("keys", &self.budget.keys.load(Ordering::Relaxed))
            .finish()
    }
}

/// The key budget of a store, its clones and scopes: one count of the keys of every table
/// they made, and the tables to evict from when it is full.
pub(super) struct Budget {
    max: usize,
    keys: AtomicUsize,
    /// Every table made so far (dead ones are dropped on the next registration).
    tables: Mutex<Vec<Weak<Engine>>>,
}

impl Budget {
    #[inline]
    pub(super) fn added(&self) {
        self.keys.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(super) fn removed(&self, n: usize) {
        self.keys.fetch_sub(n, Ordering::Relaxed);
    }

    #[inline]
    pub(super) fn is_full(&self) -> bool {
        self.keys.load(Ordering::Relaxed) >= self.max
    }

    fn register(&self, engine: &Arc<Engine>) {
        let mut tables = self.tables.lock();
        tables.retain(|t| t.strong_count() > 0);
        tables.push(Arc::downgrade(engine));
    }

    /// Makes room for one key when the budget is full: repeatedly takes the table holding
    /// the most keys and, in one of its shards, drops the keys back to fresh or else evicts
    /// the 1/16 whose horizon comes soonest. One eviction at a time per store; the caller
    /// holds no shard lock (so no lock is ever waited on in two orders).
    #[cold]
    pub(super) fn make_room(&self, now: Micros) {
        let tables = self.tables.lock();
        for _ in 0..8 {
            if !self.is_full() {
                return;
            }
            let victim = tables
                .iter()
                .filter_map(Weak::upgrade)
                .max_by_key(|e| e.keys());
            match victim {
                Some(victim) if victim.evict_some(now) > 0 => {}
                _ => return,
            }
        }
    }
}

/// What names a table: the scope, or (without one) the policy itself.
#[derive(Clone, PartialEq, Eq, Hash)]
enum TableId {
    Scope(Arc<str>),
    Policy(Policy),
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            max_keys: 1_000_000,
            sweep_interval: 1_000_000,
            scope: None,
            tables: Tables::new(1_000_000),
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

    /// The hard cap on stored keys (at least 1): one budget for this store, its clones and
    /// its scopes, across every table (policy, scope) they make. Configuring makes a new
    /// store: it shares no state with the store it was called on.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate, store::memory::MemoryStore};
    /// assert_eq!(MemoryStore::new().max_keys(0).max_keys_value(), 1);
    /// let store = MemoryStore::new().max_keys(100);
    /// let limiters: Vec<_> = (1..=10)
    ///     .map(|n| Limiter::builder(Policy::gcra(Rate::per_minute(n).unwrap()).unwrap()).build_with(&store).unwrap())
    ///     .collect();
    /// for l in &limiters {
    ///     for k in 0..100 {
    ///         let _ = l.check(&format!("client-{k}")).unwrap();
    ///     }
    /// }
    /// assert!(store.keys() <= 100); // ten policies, one budget
    /// ```
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self.tables = Tables::new(self.max_keys);
        self
    }

    /// The keys stored now by every table of this store (its clones and scopes included):
    /// what [`max_keys`](Self::max_keys) bounds.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate, store::memory::MemoryStore};
    /// let store = MemoryStore::new();
    /// let a = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).build_with(&store.scope("a")).unwrap();
    /// let b = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).build_with(&store.scope("b")).unwrap();
    /// let _ = a.check("k").unwrap();
    /// let _ = b.check("k").unwrap();
    /// assert_eq!(store.keys(), 2);
    /// drop(a); // a table's keys leave the budget with its last limiter
    /// assert_eq!(store.keys(), 1);
    /// ```
    pub fn keys(&self) -> usize {
        self.tables.budget.keys.load(Ordering::Relaxed)
    }

    /// The configured cap.
    ///
    /// ```
    /// assert_eq!(tollgate::store::memory::MemoryStore::new().max_keys(7).max_keys_value(), 7);
    /// ```
    pub fn max_keys_value(&self) -> usize {
        self.max_keys
    }

    /// How often (at most) each shard sweeps expired keys on insert. Configuring makes a new
    /// store: it shares no state with the store it was called on.
    ///
    /// ```
    /// let s = tollgate::store::memory::MemoryStore::new().sweep_interval(std::time::Duration::ZERO);
    /// # let _ = s;
    /// ```
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = micros(every);
        self.tables = Tables::new(self.max_keys);
        self
    }

    /// The same store, binding limiters under the name `scope`: every limiter bound under
    /// one scope of this store shares one state (like `RedisStore::scope`, whose keys are
    /// `<namespace>:<scope>:<key>`). Without a scope, state is shared by limiters of the same
    /// policy. Binding a different policy under a scope in use by a live limiter fails with
    /// [`Error::InvalidKey`].
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate, store::memory::MemoryStore};
    /// let store = MemoryStore::new();
    /// let p = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
    /// let login = Limiter::builder(p.clone()).build_with(&store.scope("login")).unwrap();
    /// let api = Limiter::builder(p.clone()).build_with(&store.scope("api")).unwrap();
    /// assert!(login.check("alice").unwrap().allowed);
    /// assert!(api.check("alice").unwrap().allowed); // another scope, another state
    /// let other = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    /// assert!(Limiter::builder(other).build_with(&store.scope("login")).is_err());
    /// ```
    pub fn scope(&self, scope: impl Into<String>) -> MemoryStore {
        MemoryStore {
            scope: Some(scope.into().into()),
            ..self.clone()
        }
    }
}

impl Store for MemoryStore {
    type Backend = MemoryBackend;

    /// Returns the live table of this scope (or, without a scope, of this policy) if a
    /// limiter still holds one, else a new one.
    fn bind(&self, policy: &Policy) -> Result<MemoryBackend, Error> {
        let id = match &self.scope {
            Some(scope) => TableId::Scope(scope.clone()),
            None => TableId::Policy(policy.clone()),
        };
        let mut tables = self.tables.map.lock();
        if let Some((bound, engine)) = tables.get(&id) {
            if let Some(engine) = engine.upgrade() {
                if bound != policy {
                    return Err(Error::InvalidKey {
                        reason: format!(
                            "scope {:?} of this memory store is in use by policy {bound}; \
                             it cannot also hold policy {policy} (use another scope)",
                            self.scope.as_deref().unwrap_or_default()
                        ),
                    });
                }
                return Ok(MemoryBackend { engine });
            }
        }
        tables.retain(|_, (_, engine)| engine.strong_count() > 0);
        let backend = MemoryBackend::new(policy, self);
        self.tables.budget.register(&backend.engine);
        tables.insert(id, (policy.clone(), Arc::downgrade(&backend.engine)));
        Ok(backend)
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

/// One policy's keyed table of slots of kind `K`.
struct Keyed<K: SlotKind> {
    params: K::Params,
    map: ShardedMap<K::Slot>,
}

impl<K: SlotKind> Keyed<K> {
    fn evict_some(&self, now: Micros) -> usize {
        self.map
            .evict_some(now, &|slot: &K::Slot| K::horizon(&self.params, slot))
    }

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
                if self.map.budget.is_full() {
                    self.map.budget.make_room(now);
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
use dispatch;

impl Engine {
    /// The key budget of the store that made this table.
    fn budget(&self) -> &Budget {
        dispatch!(self, k => &k.map.budget)
    }

    /// Keys in this table.
    fn keys(&self) -> usize {
        dispatch!(self, k => k.map.keys())
    }

    /// Frees some keys of this table for the store's budget (see `ShardedMap::evict_some`).
    fn evict_some(&self, now: Micros) -> usize {
        dispatch!(self, k => k.evict_some(now))
    }
}

/// The in-memory backend of one policy (made by [`MemoryStore`]'s [`Store::bind`]). Clones,
/// and backends bound to the same store with the same policy or scope, share one table.
///
/// ```
/// use tollgate::{Policy, Rate, store::{Backend, Op, Store, memory::MemoryStore}};
/// let b = MemoryStore::new().bind(&Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).unwrap();
/// assert!(b.execute("k", Op::Check(1), 0).unwrap().unwrap().allowed);
/// assert!(!b.execute("k", Op::Check(1), 0).unwrap().unwrap().allowed);
/// ```
#[derive(Clone)]
pub struct MemoryBackend {
    engine: Arc<Engine>,
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
        Self {
            engine: Arc::new(engine),
        }
    }

    /// Keys stored, expired and evicted so far.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let limiter = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// assert_eq!(limiter.backend().stats().evictions, 0);
    /// ```
    pub fn stats(&self) -> MemoryStats {
        dispatch!(&*self.engine, k => MemoryStats {
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
        dispatch!(&*self.engine, k => k.execute(key, op, now))
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

/// Atomic across keys: the shards of every key are write-locked in one global order (see
/// [`crate::store::multi`]).
impl MultiBackend for MemoryBackend {
    fn execute_all(
        items: &[KeyCheck<'_, Self>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        multi::execute_all(items, op, now)
    }

    fn execute_all_async<'a>(
        items: &'a [KeyCheck<'a, Self>],
        op: MultiOp,
        now: Micros,
    ) -> BoxFuture<'a, Result<MultiDecision, Error>> {
        Box::pin(std::future::ready(multi::execute_all(items, op, now)))
    }
}
