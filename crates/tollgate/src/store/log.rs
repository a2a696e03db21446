//! Reading a sliding log: the entries `(timestamp, weight)` a key's sliding log holds, for
//! tools that show or export them (PyrateLimiter's bucket contract — `peek(index)`,
//! `count()` — is an item log). Read-only: it never changes a decision.
//!
//! Every store implements [`LogBackend`] for backends of [`Algorithm::SlidingLog`](crate::Algorithm)
//! policies: the memory store, Redis (one `LRANGE` in a script), SQLite and PostgreSQL (one
//! `SELECT`). A backend of another algorithm answers [`Error::InvalidKey`] (there is no log).
//!
//! ```
//! use tollgate::{Algorithm, Policy, store::{Backend, Op, Store, memory::MemoryStore}};
//! use tollgate::store::log::{LogBackend, LogEntry};
//! let b = MemoryStore::new().bind(&Policy::parse(Algorithm::SlidingLog, "5/s").unwrap()).unwrap();
//! let _ = b.execute("k", Op::Check(2), 1_000_000).unwrap();
//! let _ = b.execute("k", Op::Check(1), 1_200_000).unwrap();
//! let log = b.log_entries("k", 1_500_000).unwrap();
//! assert_eq!(log, vec![LogEntry { at: 1_000_000, weight: 2 }, LogEntry { at: 1_200_000, weight: 1 }]);
//! assert!(b.log_entries("k", 2_200_000).unwrap().is_empty()); // out of every window
//! ```

use super::Backend;
use crate::error::Error;
use crate::time::Micros;
use futures_util::future::BoxFuture;

/// One entry of a sliding log: `weight` units admitted at `at` (µs of the store's clock).
/// Entries admitted at one instant are merged into one.
///
/// ```
/// let e = tollgate::store::log::LogEntry { at: 5, weight: 2 };
/// assert_eq!((e.at, e.weight), (5, 2));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogEntry {
    /// When the entry was admitted (µs).
    pub at: Micros,
    /// Its weight (the admitted cost).
    pub weight: u64,
}

/// A backend whose sliding log can be read.
///
/// ```
/// use tollgate::{Algorithm, Policy, store::{Store, memory::MemoryStore, log::LogBackend}};
/// let b = MemoryStore::new().bind(&Policy::parse(Algorithm::SlidingLog, "5/s").unwrap()).unwrap();
/// assert!(b.log_entries("unknown", 0).unwrap().is_empty());
/// let gcra = MemoryStore::new().bind(&Policy::parse(Algorithm::Gcra, "5/s").unwrap()).unwrap();
/// assert!(gcra.log_entries("k", 0).is_err()); // no log to read
/// ```
pub trait LogBackend: Backend {
    /// The entries of `key`'s log that a window of the policy still sees at `now` (the
    /// caller's clock; a store that decides on its own clock reads at that clock), oldest
    /// first. Empty for a key with no state.
    fn log_entries(&self, key: &str, now: Micros) -> Result<Vec<LogEntry>, Error>;

    /// [`log_entries`](Self::log_entries) without blocking the executor.
    fn log_entries_async<'a>(
        &'a self,
        key: &'a str,
        now: Micros,
    ) -> BoxFuture<'a, Result<Vec<LogEntry>, Error>>;
}

impl<B: LogBackend + ?Sized> LogBackend for std::sync::Arc<B> {
    fn log_entries(&self, key: &str, now: Micros) -> Result<Vec<LogEntry>, Error> {
        (**self).log_entries(key, now)
    }
    fn log_entries_async<'a>(
        &'a self,
        key: &'a str,
        now: Micros,
    ) -> BoxFuture<'a, Result<Vec<LogEntry>, Error>> {
        (**self).log_entries_async(key, now)
    }
}

/// The entries of a stored log (`(ts, weight)` pairs, oldest first) that a window of
/// `max_window` µs still sees at `now` — as the sliding log decides: time never runs
/// backwards inside a log, and an entry leaves `max_window` after it was admitted.
///
/// ```
/// use tollgate::store::log::{visible, LogEntry};
/// let log = [(100, 1), (900, 2)];
/// assert_eq!(visible(log, 1_000, 1_100), vec![LogEntry { at: 900, weight: 2 }]);
/// ```
pub fn visible(
    entries: impl IntoIterator<Item = (Micros, u64)>,
    max_window: Micros,
    now: Micros,
) -> Vec<LogEntry> {
    let entries: Vec<(Micros, u64)> = entries.into_iter().collect();
    let newest = entries.last().map_or(now, |e| e.0);
    let now = now.max(newest);
    entries
        .into_iter()
        .filter(|&(at, _)| now - at < max_window)
        .map(|(at, weight)| LogEntry { at, weight })
        .collect()
}

/// The error of a log read on a backend whose policy is not a sliding log.
///
/// ```
/// assert!(tollgate::store::log::not_a_log().to_string().contains("sliding_log"));
/// ```
pub fn not_a_log() -> Error {
    Error::InvalidKey {
        reason: "only a sliding_log policy keeps a log of entries to read".into(),
    }
}

/// A log read through a failure policy reads the primary store: it is not a decision, so the
/// policy does not answer for it (a store error is returned as it is).
///
/// ```
/// use tollgate::{Algorithm, Policy, store::{Store, memory::MemoryStore, failure::FailSafe, log::LogBackend}};
/// let policy = Policy::parse(Algorithm::SlidingLog, "5/s").unwrap();
/// let safe = FailSafe::fail_open(MemoryStore::new().bind(&policy).unwrap(), &policy);
/// assert!(safe.log_entries("k", 0).unwrap().is_empty());
/// ```
impl<B: LogBackend, F: Backend> LogBackend for super::failure::FailSafe<B, F> {
    fn log_entries(&self, key: &str, now: Micros) -> Result<Vec<LogEntry>, Error> {
        self.primary().log_entries(key, now)
    }
    fn log_entries_async<'a>(
        &'a self,
        key: &'a str,
        now: Micros,
    ) -> BoxFuture<'a, Result<Vec<LogEntry>, Error>> {
        self.primary().log_entries_async(key, now)
    }
}
