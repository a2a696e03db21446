//! The PostgreSQL store: rate-limit state shared by a fleet through one table.
//!
//! # How it works
//!
//! - [`PgStore::migrate`] (explicit, idempotent, safe to run from many processes at once: it
//!   holds a transaction-level advisory lock) creates the table
//!   `key text PRIMARY KEY, state bigint[], expires_at bigint`, an index on `expires_at`, and
//!   one PL/pgSQL function per algorithm (`<table>_gcra`, `<table>_token_bucket`, …). The
//!   functions mirror `tollgate::algorithm` line for line in `bigint` arithmetic (their source
//!   is in `src/postgres/sql/`).
//! - **One round trip per decision**: a prepared `SELECT * FROM <table>_<algorithm>(…)`. The
//!   function locks the key's row (`SELECT … FOR UPDATE`, after `INSERT … ON CONFLICT DO
//!   NOTHING` for a new key), decides every rate, and writes the new state, all in the
//!   statement's own transaction. Concurrent calls on one key queue on the row lock: no
//!   read-then-write race and no retry loop that could reject what the policy admits.
//! - **Time**: the database clock (`clock_timestamp()` in µs) by default, so hosts with skewed
//!   clocks agree; [`PgStoreBuilder::caller_time`] uses the `now` the limiter passes instead
//!   (tests, the golden vectors).
//! - **Bounded table**: each row carries `expires_at`, the time from which its state is
//!   equivalent to fresh. A call whose key is back to fresh deletes the row, and every
//!   [`PgStoreBuilder::sweep_every`] calls one call first deletes up to
//!   [`PgStoreBuilder::sweep_batch`] expired rows (`FOR UPDATE SKIP LOCKED`, never waiting).
//!   [`PgStore::purge_expired`] deletes all of them on demand.
//! - **Sync and async**: the store runs its own small tokio runtime (2 threads by default)
//!   that owns the connections and runs every call, so the sync
//!   [`Backend::execute`](tollgate::store::Backend::execute) works from any thread, with or
//!   without a runtime, and [`Backend::execute_async`](tollgate::store::Backend::execute_async)
//!   works from any executor.
//! - **Failures** are `Error::Store(StoreError { store: "postgres", .. })`, never denials;
//!   every call has a timeout (default 5 s). Wrap the backend in
//!   `tollgate::store::failure` for fail-open / fail-closed / fall-back behaviour.
//! - **A failed call charges nothing**: of the call timeout left when a decision's
//!   statement is sent, half goes to the statement and half to its reply. The statement
//!   carries its deadline on the server's clock, checked by the function just before it
//!   writes (a statement that reaches the server late writes nothing), and the session's
//!   `statement_timeout` stops one that waits too long (for a locked row above all); both
//!   roll the call back. A call abandoned with its statement in flight (the timeout fired,
//!   an async caller dropped it) sends cancel requests and retires the connection.
//!
//! ```no_run
//! use tollgate::{Limiter, Policy, Rate};
//! use tollgate_sql::PgStore;
//!
//! let store = PgStore::builder("postgres://app@db.internal/app")
//!     .table("rate_limits")?
//!     .connect()?;
//! store.migrate()?;
//! let limiter = Limiter::builder(Policy::gcra(Rate::per_second(10)?)?).build_with(&store)?;
//! if !limiter.check("user:42")?.allowed { /* 429 */ }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::table::TableName;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tollgate::time::Micros;
use tollgate::{Error, StoreError, StoreErrorKind};

mod backend;
mod builder;
mod conn;
mod log;
mod multi;
mod schema;

pub use backend::PgBackend;
pub use builder::PgStoreBuilder;
use conn::Shared;

const STORE: &str = "postgres";

fn pg_error(context: &str, message: impl std::fmt::Display) -> Error {
    Error::Store(StoreError::new(STORE, format!("{context}: {message}")))
}

/// A driver error as a `StoreError` of the right kind (refused, connection, timeout, auth,
/// missing function or table), with [`describe`]'s message.
fn pg_driver_error(context: &str, e: &tokio_postgres::Error) -> Error {
    Error::Store(StoreError::with_kind(
        STORE,
        pg_kind(e),
        format!("{context}: {}", describe(e)),
    ))
}

fn pg_kind(e: &tokio_postgres::Error) -> StoreErrorKind {
    if let Some(db) = e.as_db_error() {
        return match db.code().code() {
            "28P01" | "28000" => StoreErrorKind::Auth,
            // statement_timeout or the call's deadline: its time ran out in the database
            // (rolled back)
            "57014" => StoreErrorKind::Timeout,
            "42883" | "42P01" => StoreErrorKind::ScriptMissing,
            _ => StoreErrorKind::Other,
        };
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => StoreErrorKind::ConnectionRefused,
                std::io::ErrorKind::TimedOut => StoreErrorKind::Timeout,
                _ => StoreErrorKind::Connection,
            };
        }
        source = s.source();
    }
    if e.is_closed() {
        StoreErrorKind::Connection
    } else {
        StoreErrorKind::Other
    }
}

/// A readable message for a driver error: the server's message and SQLSTATE when there is
/// one, with a hint for the mistakes users make most.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let hint = match code {
            "42883" | "42P01" => " (the schema is missing: call PgStore::migrate() first)",
            "42501" => " (the database user lacks a privilege on this table or schema)",
            "3F000" => " (the schema does not exist: create it first)",
            "57014" => {
                " (the call's time ran out in the database: rolled back, nothing was charged)"
            }
            _ => "",
        };
        return format!("{} [SQLSTATE {code}]{hint}", db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A PostgreSQL database that holds rate-limit state for a fleet. Cheap to clone.
///
/// See the [module docs](self) for how it works.
///
/// ```no_run
/// let store = tollgate_sql::PgStore::connect("postgres://postgres@127.0.0.1/postgres").unwrap();
/// store.migrate().unwrap();
/// ```
#[derive(Clone)]
pub struct PgStore {
    shared: Arc<Shared>,
    /// The scope named with [`PgStore::scope`], else `None` (keys scoped by policy).
    scope: Option<Arc<str>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("table", &self.shared.table.as_str())
            .field("caller_time", &self.shared.caller_time)
            .finish()
    }
}

impl PgStore {
    /// The same store, binding limiters under the name `scope`: their keys are stored as
    /// `<namespace:><scope>:<key>`, shared by every limiter bound under that scope (and
    /// kept across a change of the policy's rates). Without a scope a policy's keys are
    /// `<namespace:><algorithm>-<8 hex>:<key>` ([`tollgate::store::default_scope`]): limiters
    /// of the same policy share state, different policies never do.
    ///
    /// ```no_run
    /// use tollgate::{Limiter, Policy, Rate};
    /// let store = tollgate_sql::PgStore::connect("postgres://localhost/db").unwrap();
    /// let p = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
    /// let login = Limiter::builder(p).build_with(&store.scope("login")).unwrap();
    /// # let _ = login;
    /// ```
    pub fn scope(&self, scope: &str) -> PgStore {
        PgStore {
            shared: self.shared.clone(),
            scope: Some(scope.into()),
        }
    }

    /// A builder for the database at `url` (`postgres://user:pass@host:port/db`).
    ///
    /// ```
    /// let builder = tollgate_sql::PgStore::builder("postgres://postgres@127.0.0.1/postgres");
    /// # let _ = builder;
    /// ```
    pub fn builder(url: &str) -> PgStoreBuilder {
        PgStoreBuilder {
            url: url.to_string(),
            table: TableName::default(),
            namespace: String::new(),
            max_connections: 16,
            caller_time: false,
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            sweep_every: 1000,
            sweep_batch: 100,
            runtime_threads: 2,
        }
    }

    /// Connects to `url` with the defaults (table `tollgate_state`, database clock).
    ///
    /// ```
    /// let err = tollgate_sql::PgStore::connect("postgres://u@127.0.0.1:1/db").unwrap_err();
    /// assert!(err.to_string().contains("postgres: connection refused: cannot connect"));
    /// ```
    pub fn connect(url: &str) -> Result<PgStore, Error> {
        Self::builder(url).connect()
    }

    /// The table name in use.
    ///
    /// ```no_run
    /// let store = tollgate_sql::PgStore::connect("postgres://localhost/db").unwrap();
    /// assert_eq!(store.table_name().as_str(), "tollgate_state");
    /// ```
    pub fn table_name(&self) -> &TableName {
        &self.shared.table
    }

    /// The SQL that [`migrate`](Self::migrate) runs (table, index and functions), for review
    /// or for a migration tool of your own.
    ///
    /// ```
    /// let sql = tollgate_sql::PgStore::schema_sql(&tollgate_sql::TableName::new("limits").unwrap());
    /// assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"limits\""));
    /// assert!(sql.contains("FUNCTION \"limits_gcra\""));
    /// ```
    pub fn schema_sql(table: &TableName) -> String {
        schema::schema_sql(table)
    }

    /// Creates the table, its index and the functions if needed, and replaces the functions
    /// with this version's (idempotent; concurrent runs are serialised by an advisory lock).
    /// Needs the privilege to create tables and functions in the schema.
    ///
    /// ```no_run
    /// let store = tollgate_sql::PgStore::connect("postgres://localhost/db").unwrap();
    /// store.migrate().unwrap();
    /// store.migrate().unwrap(); // no-op
    /// ```
    pub fn migrate(&self) -> Result<(), Error> {
        self.shared
            .block_on("cannot migrate", self.batch(schema::migrate_sql))
    }

    /// [`migrate`](Self::migrate) without blocking the executor.
    ///
    /// ```no_run
    /// # async fn f() {
    /// let store = tollgate_sql::PgStore::builder("postgres://localhost/db").connect_async().await.unwrap();
    /// store.migrate_async().await.unwrap();
    /// # }
    /// ```
    pub async fn migrate_async(&self) -> Result<(), Error> {
        self.shared
            .run_async("cannot migrate", self.batch(schema::migrate_sql))
            .await
    }

    /// Drops the table and the functions [`migrate`](Self::migrate) created (every key's
    /// state is lost). For tests and uninstalling.
    ///
    /// ```no_run
    /// let store = tollgate_sql::PgStore::connect("postgres://localhost/db").unwrap();
    /// store.drop_schema().unwrap();
    /// ```
    pub fn drop_schema(&self) -> Result<(), Error> {
        self.shared
            .block_on("cannot drop the schema", self.batch(schema::drop_sql))
    }

    /// Runs the SQL `sql(table, call_timeout)` (one transaction, whose statements may take
    /// the whole call timeout) on a connection of the pool, rolling back on failure.
    fn batch(
        &self,
        sql: fn(&TableName, Duration) -> String,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        async move {
            let conn = shared.get().await?;
            let sql = sql(&shared.table, shared.call_timeout);
            if let Err(e) = conn.client.batch_execute(&sql).await {
                let _ = conn.client.batch_execute("ROLLBACK").await;
                return Err(pg_error(&format!("table {}", shared.table), describe(&e)));
            }
            Ok(())
        }
    }

    /// Deletes every expired row now (at the database clock, or at `now` µs with caller
    /// time); returns how many. The store also does this by itself, a batch at a time.
    ///
    /// ```no_run
    /// let store = tollgate_sql::PgStore::connect("postgres://localhost/db").unwrap();
    /// let deleted = store.purge_expired(0).unwrap();
    /// # let _ = deleted;
    /// ```
    pub fn purge_expired(&self, now: Micros) -> Result<u64, Error> {
        let shared = self.shared.clone();
        self.shared.block_on("cannot purge", async move {
            let conn = shared.get().await?;
            let sql = format!(
                "DELETE FROM {} WHERE expires_at <= coalesce($1::bigint, floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint)",
                shared.table.quoted("")
            );
            conn.client
                .execute(&sql, &[&shared.now_param(now)])
                .await
                .map_err(|e| pg_error("delete", describe(&e)))
        })
    }

    /// The number of rows in the table (keys with state).
    ///
    /// ```no_run
    /// let store = tollgate_sql::PgStore::connect("postgres://localhost/db").unwrap();
    /// println!("{} keys", store.row_count().unwrap());
    /// ```
    pub fn row_count(&self) -> Result<u64, Error> {
        let shared = self.shared.clone();
        self.shared.block_on("cannot count rows", async move {
            let conn = shared.get().await?;
            let sql = format!("SELECT count(*) FROM {}", shared.table.quoted(""));
            let row = conn
                .client
                .query_one(&sql, &[])
                .await
                .map_err(|e| pg_error("count", describe(&e)))?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    /// Closes every idle connection of the pool; the next call opens new ones.
    ///
    /// ```no_run
    /// let store = tollgate_sql::PgStore::connect("postgres://localhost/db").unwrap();
    /// store.reconnect();
    /// ```
    pub fn reconnect(&self) {
        self.shared.pool.retain(|_, _| false);
    }
}
