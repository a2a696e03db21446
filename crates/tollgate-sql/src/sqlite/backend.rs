//! [`SqliteBackend`]: a [`SqliteStore`] bound to one policy, and its single-key calls (one
//! `BEGIN IMMEDIATE` transaction per check or refund; a peek is one read).

use super::{off_thread, read_state, sqlite_error, to_i64, Shared, SqliteStore, Statements};
use crate::engine::{encode_blob, Engine};
use crate::table::key_prefix;
use futures_util::future::BoxFuture;
use rusqlite::{params, TransactionBehavior};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tollgate::store::{Backend, Op, Store};
use tollgate::time::Micros;
use tollgate::{Decision, Error, Policy};

/// A [`SqliteStore`] bound to one policy.
///
/// ```
/// use tollgate::store::{Backend, Op, Store};
/// let store = tollgate_sql::SqliteStore::in_memory().unwrap();
/// store.ensure_schema().unwrap();
/// let policy = tollgate::Policy::gcra(tollgate::Rate::per_second(1).unwrap()).unwrap();
/// let backend = store.bind(&policy).unwrap();
/// assert!(backend.execute("k", Op::Check(1), 5_000_000).unwrap().unwrap().allowed);
/// assert!(!backend.execute("k", Op::Check(1), 5_000_000).unwrap().unwrap().allowed);
/// ```
#[derive(Clone)]
pub struct SqliteBackend {
    pub(super) shared: Arc<Shared>,
    pub(super) engine: Arc<Engine>,
    pub(super) prefix: String,
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("table", &self.shared.table.as_str())
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Store for SqliteStore {
    type Backend = SqliteBackend;

    /// Binds `policy`; errors when the table does not exist (run
    /// [`SqliteStore::ensure_schema`] first).
    fn bind(&self, policy: &Policy) -> Result<SqliteBackend, Error> {
        let exists: bool = self.shared.with_conn(|conn| {
            conn.query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                params![self.shared.table.name()],
                |r| r.get(0),
            )
        })?;
        if !exists {
            return Err(sqlite_error(
                "cannot bind",
                format!(
                    "table {} does not exist; call SqliteStore::ensure_schema() first",
                    self.shared.table
                ),
            ));
        }
        Ok(SqliteBackend {
            shared: self.shared.clone(),
            engine: Arc::new(Engine::new(policy)?),
            prefix: key_prefix(&self.shared.namespace, self.scope.as_deref(), policy),
        })
    }
}

impl SqliteBackend {
    fn run(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        self.engine.validate(op)?;
        let key = format!("{}{key}", self.prefix);
        let sql = &self.shared.sql;
        let engine = &self.engine;
        match op {
            Op::Reset => self.shared.with_conn(|conn| {
                conn.prepare_cached(&sql.delete)?.execute(params![key])?;
                Ok(None)
            }),
            Op::Peek(_) => self.shared.try_with_conn(|conn| {
                let state = read_state(conn, &sql.select, &key)?;
                Ok(engine.apply(state.as_deref(), now, op)?.0)
            }),
            _ => {
                let sweep = self.shared.sweep_due();
                self.shared.try_with_conn(|conn| {
                    let tx = conn
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .map_err(|e| sqlite_error("cannot begin a transaction", e))?;
                    let state = read_state(&tx, &sql.select, &key)?;
                    let (decision, next) = engine.apply(state.as_deref(), now, op)?;
                    let write = |tx: &rusqlite::Transaction<'_>| -> rusqlite::Result<()> {
                        if let Some(next) = &next {
                            write_state(tx, sql, engine, &key, next, now)?;
                        }
                        if sweep {
                            self.shared.sweep(tx, now)?;
                        }
                        Ok(())
                    };
                    write(&tx).map_err(|e| sqlite_error("cannot write state", e))?;
                    tx.commit().map_err(|e| sqlite_error("cannot commit", e))?;
                    Ok(decision)
                })
            }
        }
    }
}

impl Backend for SqliteBackend {
    fn execute(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        self.run(key, op, now)
    }

    /// Runs the call on tokio's blocking pool when inside a tokio runtime (so the executor
    /// never waits on the database lock), else inline.
    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        let this = self.clone();
        let key = key.to_string();
        Box::pin(off_thread(move || this.run(&key, op, now)))
    }
}

/// Writes `next` as `key`'s state in `tx`: the row is deleted when the state is back to
/// fresh at `now`, else upserted with its horizon.
pub(super) fn write_state(
    tx: &rusqlite::Transaction<'_>,
    sql: &Statements,
    engine: &Engine,
    key: &str,
    next: &[u64],
    now: Micros,
) -> rusqlite::Result<()> {
    let horizon = engine.horizon(next);
    if horizon <= now {
        tx.prepare_cached(&sql.delete)?.execute(params![key])?;
    } else {
        tx.prepare_cached(&sql.upsert)?.execute(params![
            key,
            encode_blob(next),
            to_i64(horizon)
        ])?;
    }
    Ok(())
}

impl Shared {
    /// Whether this write also sweeps expired rows (one write in `sweep_every`).
    pub(super) fn sweep_due(&self) -> bool {
        self.writes.fetch_add(1, Ordering::Relaxed) % self.sweep_every == self.sweep_every - 1
    }

    /// Deletes up to `sweep_batch` rows expired at `now`, in `tx`.
    pub(super) fn sweep(
        &self,
        tx: &rusqlite::Transaction<'_>,
        now: Micros,
    ) -> rusqlite::Result<()> {
        tx.prepare_cached(&self.sql.sweep)?
            .execute(params![to_i64(now), to_i64(self.sweep_batch)])?;
        Ok(())
    }
}
