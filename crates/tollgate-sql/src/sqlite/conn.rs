//! The connections of a [`SqliteStore`](super::SqliteStore): opened in WAL mode with the
//! busy timeout, kept in a small idle pool (one shared connection for an in-memory
//! database), and the read of one key's state.

use super::{sqlite_error, Location, Shared};
use crate::engine::decode_blob;
use rusqlite::{params, OptionalExtension};
use tollgate::Error;

impl Shared {
    pub(super) fn connect(&self) -> Result<rusqlite::Connection, Error> {
        let Location::File(path) = &self.location else {
            return Err(sqlite_error("in-memory database", "no second connection"));
        };
        let context = || format!("cannot open {}", path.display());
        let conn = rusqlite::Connection::open(path).map_err(|e| sqlite_error(&context(), e))?;
        conn.busy_timeout(self.busy_timeout)
            .map_err(|e| sqlite_error(&context(), e))?;
        // Switching to WAL needs a lock; the busy timeout above makes it wait for one.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| sqlite_error(&context(), e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(sqlite_error(
                &context(),
                format!("the database refused WAL mode (journal_mode is {mode})"),
            ));
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(|e| sqlite_error(&context(), e))?;
        // Reading the schema fails now on a file that is not a database.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(|e| sqlite_error(&context(), e))?;
        Ok(conn)
    }

    /// Runs `f` on a connection of the pool (opening one if none is idle).
    pub(super) fn with_conn<R>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<R>,
    ) -> Result<R, Error> {
        self.try_with_conn(|c| f(c).map_err(|e| sqlite_error("statement failed", e)))
    }

    pub(super) fn try_with_conn<R>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<R, Error>,
    ) -> Result<R, Error> {
        if let Some(memory) = &self.memory {
            return f(&mut memory.lock());
        }
        let pooled = self.idle.lock().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let result = f(&mut conn);
        if !conn.is_autocommit() {
            // A failed statement left a transaction open: drop the connection.
            return result;
        }
        let mut idle = self.idle.lock();
        if idle.len() < 64 {
            idle.push(conn);
        }
        result
    }
}

/// The decoded state of `key` (`None`: no row, or a row this version cannot read).
pub(super) fn read_state(
    conn: &rusqlite::Connection,
    sql: &str,
    key: &str,
) -> Result<Option<Vec<u64>>, Error> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached(sql)
        .and_then(|mut st| st.query_row(params![key], |r| r.get(0)).optional())
        .map_err(|e| sqlite_error("cannot read state", e))?;
    Ok(blob.and_then(|b| decode_blob(&b)))
}
