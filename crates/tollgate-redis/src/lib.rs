//! # tollgate-redis
//!
//! A Redis / Valkey store for [`tollgate`] limiters, standalone or Cluster. Every algorithm
//! of the core runs as **one Lua script call per decision** that mirrors the pure Rust
//! function in integer arithmetic, so a limiter on Redis decides exactly like one in memory
//! (the golden vectors prove it), and is shared by a whole fleet.
//!
//! ```no_run
//! use std::time::Duration;
//! use tollgate::{Limiter, Policy, Rate, Algorithm};
//! use tollgate::store::failure::FailSafeStore;
//! use tollgate_redis::RedisStore;
//!
//! let store = RedisStore::builder()
//!     .url("redis://127.0.0.1:6379/")
//!     .namespace("myapp")
//!     .timeout(Duration::from_millis(100))
//!     .build()
//!     .unwrap();
//!
//! // 5/s and 1000/hour per user, all-or-nothing, falling back to an in-memory limiter when
//! // Redis is unreachable.
//! let policy = Policy::parse(Algorithm::SlidingLog, "5/s; 1000/hour").unwrap();
//! let limiter = Limiter::builder(policy)
//!     .build_with(&FailSafeStore::fallback_to_memory(store.scope("api")))
//!     .unwrap();
//! let d = limiter.check("user:42").unwrap();
//! if !d.allowed {
//!     println!("retry in {:?}", d.retry_after);
//! }
//! ```
//!
//! - **Atomic**: one `EVALSHA` per decision (check, peek, refund, reset; multi-rate policies
//!   all-or-nothing), reloaded automatically after `SCRIPT FLUSH` or a restart (`NOSCRIPT`).
//! - **Several keys at once**: [`tollgate::Limiter::check_all`] (the library's multi-key
//!   capability, [`tollgate::store::multi`]) decides keys of different policies together
//!   (per-user + per-IP + global) in one script call and charges all or none.
//! - **Time**: the Redis server clock (`TIME`) by default, or the caller's ([`TimeSource`]).
//! - **Expiry**: every key written gets its TTL in the same script: the algorithm's horizon
//!   (when the state is back to fresh), rounded up to the ms.
//! - **Connections**: one multiplexed, pipelining connection per store (concurrent callers
//!   share round trips), reconnected automatically; Cluster through the cluster client
//!   (`MOVED`/`ASK` handled); a timeout on every call. Sync calls need no runtime: the store
//!   owns a small one.
//! - **Keys**: `<namespace>:<scope>:<user key>`, optionally HMAC-SHA256-hashed, bounded in
//!   length (see `tollgate::keys`).
//! - **Failure policy**: wrap the store in `tollgate::store::failure::FailSafeStore` (fail
//!   open, fail closed, or fall back to memory); a store error is `Error::Store`, never a
//!   denial.
//! - **Local denial cache** ([`RedisStoreBuilder::denial_cache`]): once a key is denied with
//!   a `retry_after`, the same or a larger cost is denied locally until then, sparing Redis
//!   under abuse. Accuracy: a cached denial is never wrong when nothing else touches the key,
//!   since a denied key only admits again after `retry_after`; it can deny for longer than
//!   necessary (at most that `retry_after`) when another process refunds or resets the key
//!   meanwhile. Admissions are never cached. `remaining`/`reset_after` of a cached denial are
//!   those of the denial it repeats (the latter counted down).
//!
//! The scripts live in `lua/` (one file per algorithm, `KEYS`/`ARGV` documented in
//! `lua/single.lua` and `lua/multi.lua`); setup, Cluster hash tags, key format, TTLs and
//! benchmark figures are in `docs/redis.md`.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod cache;
mod conn;
mod log;
mod multi;
mod scripts;
mod semaphore;
mod store;
mod url;

pub use multi::{KeyCheck, MultiDecision};
pub use semaphore::{semaphore_script_source, RedisSemaphoreBackend};
pub use store::{RedisBackend, RedisStore, RedisStoreBuilder, TimeSource};
pub use url::RedisUrl;

/// The Lua sources, for inspection or for loading them into Redis by other means.
///
/// ```
/// let src = tollgate_redis::script_source(tollgate::Algorithm::Gcra);
/// assert!(src.contains("KEYS[1]"));
/// ```
pub fn script_source(algorithm: tollgate::Algorithm) -> &'static str {
    scripts::single_source(algorithm)
}
