//! [`LogBackend`] for SQLite: reads a sliding-log row (one `SELECT`).

use super::{off_thread, read_state, SqliteBackend};
use crate::engine::Engine;
use futures_util::future::BoxFuture;
use tollgate::store::log::{not_a_log, visible, LogBackend, LogEntry};
use tollgate::time::Micros;
use tollgate::Error;

impl SqliteBackend {
    fn read_log(&self, key: &str, now: Micros) -> Result<Vec<LogEntry>, Error> {
        let Engine::SlidingLog(p) = &*self.engine else {
            return Err(not_a_log());
        };
        let key = format!("{}{key}", self.prefix);
        let state = self
            .shared
            .try_with_conn(|conn| read_state(conn, &self.shared.sql.select, &key))?;
        Ok(match state.filter(|s| s.len() % 2 == 0) {
            Some(s) => visible(s.chunks_exact(2).map(|e| (e[0], e[1])), p.max_window, now),
            None => Vec::new(),
        })
    }
}

impl LogBackend for SqliteBackend {
    fn log_entries(&self, key: &str, now: Micros) -> Result<Vec<LogEntry>, Error> {
        self.read_log(key, now)
    }

    /// Runs on tokio's blocking pool when inside a tokio runtime, else inline.
    fn log_entries_async<'a>(
        &'a self,
        key: &'a str,
        now: Micros,
    ) -> BoxFuture<'a, Result<Vec<LogEntry>, Error>> {
        let this = self.clone();
        let key = key.to_string();
        Box::pin(off_thread(move || this.read_log(&key, now)))
    }
}
