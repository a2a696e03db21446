//! Store errors: counted in `tollgate_server_store_errors_total` and logged at `warn` (shown
//! at the default log level), at most once per [`LOG_EVERY`] with the number of errors since
//! the last line, so an outage is visible in the log without flooding it.

use metrics::Counter;
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one log line per this period.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct StoreErrors {
    counter: Counter,
    origin: Instant,
    /// When the next line may be written, in ms since `origin`.
    next_log_ms: AtomicU64,
    /// Errors since the last line.
    unlogged: AtomicU64,
}

impl StoreErrors {
    pub(crate) fn new(counter: Counter) -> Self {
        StoreErrors {
            counter,
            origin: Instant::now(),
            next_log_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Counts an error without its text (the caller logs it).
    pub(crate) fn increment(&self, n: u64) {
        self.counter.increment(n);
    }

    /// Counts `error` and logs it unless a line was written less than [`LOG_EVERY`] ago.
    pub(crate) fn record(&self, error: &dyn Display) {
        self.counter.increment(1);
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let now = self.origin.elapsed().as_millis() as u64;
        let next = self.next_log_ms.load(Ordering::Relaxed);
        if now < next {
            return;
        }
        let until = now + LOG_EVERY.as_millis() as u64;
        if self
            .next_log_ms
            .compare_exchange(next, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let count = self.unlogged.swap(0, Ordering::Relaxed).max(1);
            tracing::warn!(
                "store error: {error} ({count} store error(s) since the last such line; at \
                 most one line per {}s)",
                LOG_EVERY.as_secs()
            );
        }
    }
}
