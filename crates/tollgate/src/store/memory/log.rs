//! [`LogBackend`] for the memory store: reads a sliding-log key's entries under its lock.

use super::{Engine, MemoryBackend};
use crate::error::Error;
use crate::store::log::{not_a_log, visible, LogBackend, LogEntry};
use crate::time::Micros;
use futures_util::future::BoxFuture;

impl LogBackend for MemoryBackend {
    fn log_entries(&self, key: &str, now: Micros) -> Result<Vec<LogEntry>, Error> {
        let Engine::SlidingLog(k) = &*self.engine else {
            return Err(not_a_log());
        };
        let hash = k.map.hash(key);
        Ok(k.map
            .with_existing(hash, key, |slot| {
                let log = slot.lock();
                visible(log.entries.iter().copied(), k.params.max_window, now)
            })
            .unwrap_or_default())
    }

    fn log_entries_async<'a>(
        &'a self,
        key: &'a str,
        now: Micros,
    ) -> BoxFuture<'a, Result<Vec<LogEntry>, Error>> {
        Box::pin(std::future::ready(self.log_entries(key, now)))
    }
}
