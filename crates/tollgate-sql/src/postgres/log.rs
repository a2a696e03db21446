//! [`LogBackend`] for PostgreSQL: reads a sliding-log row and the clock the store decides
//! with (the database's, or the caller's) in one `SELECT`.

use super::conn::Shared;
use super::{pg_driver_error, PgBackend};
use crate::engine::Engine;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use tollgate::store::log::{not_a_log, visible, LogBackend, LogEntry};
use tollgate::time::Micros;
use tollgate::Error;

impl PgBackend {
    fn log_read(&self, key: &str, now: Micros) -> Result<LogRead, Error> {
        let Engine::SlidingLog(p) = &self.call.engine else {
            return Err(not_a_log());
        };
        let sql = format!(
            "SELECT (SELECT state FROM {} WHERE key = $1), \
             coalesce($2::bigint, floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint)",
            self.shared.table.quoted("")
        );
        Ok(LogRead {
            shared: Arc::clone(&self.shared),
            sql,
            key: format!("{}{key}", self.call.prefix),
            now: self.shared.now_param(now),
            max_window: p.max_window,
        })
    }
}

struct LogRead {
    shared: Arc<Shared>,
    sql: String,
    key: String,
    now: Option<i64>,
    max_window: Micros,
}

async fn read(r: LogRead) -> Result<Vec<LogEntry>, Error> {
    let conn = r.shared.get().await?;
    let row = conn
        .client
        .query_one(&r.sql, &[&r.key, &r.now])
        .await
        .map_err(|e| pg_driver_error("cannot read the log", &e))?;
    let state: Option<Vec<i64>> = row.get(0);
    let now = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
    Ok(match state.filter(|s| s.len() % 2 == 0) {
        Some(s) => {
            let pairs = s.chunks_exact(2).map(|e| {
                (
                    u64::try_from(e[0]).unwrap_or(0),
                    u64::try_from(e[1]).unwrap_or(0),
                )
            });
            visible(pairs, r.max_window, now)
        }
        None => Vec::new(),
    })
}

impl LogBackend for PgBackend {
    fn log_entries(&self, key: &str, now: Micros) -> Result<Vec<LogEntry>, Error> {
        let r = self.log_read(key, now)?;
        self.shared.block_on("log read", read(r))
    }

    fn log_entries_async<'a>(
        &'a self,
        key: &'a str,
        now: Micros,
    ) -> BoxFuture<'a, Result<Vec<LogEntry>, Error>> {
        let r = self.log_read(key, now);
        Box::pin(async move { self.shared.run_async("log read", read(r?)).await })
    }
}
