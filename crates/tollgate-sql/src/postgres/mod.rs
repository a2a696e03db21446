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
//!   that owns the connections, so the sync [`Backend::execute`] works from any thread, with
//!   or without a runtime, and [`Backend::execute_async`] works from any executor.
//! - **Failures** are `Error::Store(StoreError { store: "postgres", .. })`, never denials;
//!   every call has a timeout (default 5 s). Wrap the backend in
//!   `tollgate::store::failure` for fail-open / fail-closed / fall-back behaviour.
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

use crate::engine::Engine;
use crate::table::TableName;
use deadpool::managed::{self, Metrics, Pool, RecycleError, RecycleResult};
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{NoTls, Statement};
use tollgate::store::{Backend, Op, Store};
use tollgate::time::Micros;
use tollgate::{Decision, Error, Policy, StoreError, StoreErrorKind};

mod builder;
mod conn;
mod log;
mod multi;

pub use builder::PgStoreBuilder;
use conn::{join, OwnedRuntime, PgManager, Shared};

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

// ---------------------------------------------------------------------------------------
// The connection pool.

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

/// The function names and bodies, one per algorithm.
const ALGORITHMS: [(&str, &str); 5] = [
    ("gcra", include_str!("sql/gcra.sql")),
    ("token_bucket", include_str!("sql/token_bucket.sql")),
    ("fixed_window", include_str!("sql/fixed_window.sql")),
    ("sliding_window", include_str!("sql/sliding_window.sql")),
    ("sliding_log", include_str!("sql/sliding_log.sql")),
];

/// The `CREATE OR REPLACE FUNCTION` statement of one algorithm for `table`: lock the key's
/// row, the algorithm's section (every rate's verdict, charged and settled states), the
/// all-or-nothing combination across rates, then the write.
fn function_sql(table: &TableName, algorithm: &str, body: &str) -> String {
    let (eval, horizon) = body.split_once("-- @horizon\n").unwrap_or((body, ""));
    let head = include_str!("sql/head.sql");
    let combine = include_str!("sql/combine.sql");
    let tail = include_str!("sql/tail.sql");
    format!("{head}{eval}{combine}{tail}")
        .replace("{{DECLARE}}", include_str!("sql/declare.sql"))
        .replace("{{SWEEP}}", include_str!("sql/sweep.sql"))
        .replace("{{HORIZON}}", horizon)
        .replace("{{ALGORITHM}}", algorithm)
        .replace("{{FUNCTION}}", &table.quoted(&format!("_{algorithm}")))
        .replace("{{TABLE}}", &table.quoted(""))
}

/// The name suffix of the multi-key function (`<table>_check_all`).
const CHECK_ALL: &str = "_check_all";

/// The argument types of the multi-key function (for `DROP FUNCTION`).
const CHECK_ALL_ARGS: &str =
    "bigint, integer, text[], text[], bigint[], integer[], bigint[], bigint[], bigint[], bigint[], integer";

/// The `CREATE OR REPLACE FUNCTION` statement of the multi-key function: every algorithm's
/// section, chosen per key, between the same declarations and combination as the
/// single-key functions.
fn check_all_sql(table: &TableName) -> String {
    let mut evaluate = String::new();
    for (n, (algorithm, body)) in ALGORITHMS.iter().enumerate() {
        let (eval, horizon) = body.split_once("-- @horizon\n").unwrap_or((body, ""));
        let keyword = if n == 0 { "IF" } else { "ELSIF" };
        evaluate.push_str(&format!(
            "        {keyword} m_algorithms[k] = '{algorithm}' THEN\n{eval}\
             \x20       IF p_op = 0 THEN\n\
             \x20           v_next := v_cand; v_horizon := 0;\n{horizon}\
             \x20           r_h_cand[k] := v_horizon;\n\
             \x20           v_next := v_settle; v_horizon := 0;\n{horizon}\
             \x20           r_h_settle[k] := v_horizon;\n\
             \x20       END IF;\n"
        ));
    }
    evaluate.push_str(
        "        ELSE\n            RAISE EXCEPTION 'tollgate: unknown algorithm %', m_algorithms[k];\n        END IF;",
    );
    include_str!("sql/check_all.sql")
        .replace("{{DECLARE}}", include_str!("sql/declare.sql"))
        .replace("{{EVALUATE}}", &evaluate)
        .replace("{{COMBINE}}", include_str!("sql/combine.sql"))
        .replace("{{SWEEP}}", include_str!("sql/sweep.sql"))
        .replace("{{FUNCTION}}", &table.quoted(CHECK_ALL))
        .replace("{{TABLE}}", &table.quoted(""))
}

/// A stable 64-bit id of the table, for the migration's advisory lock.
fn lock_id(table: &TableName) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("tollgate-sql migrate {table}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
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
        let t = table.quoted("");
        let index = table.quoted_local("_expires_at");
        let mut sql = format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n    key text PRIMARY KEY,\n    state bigint[] NOT NULL,\n    expires_at bigint NOT NULL\n);\nCREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at);\n"
        );
        for (name, body) in ALGORITHMS {
            sql.push_str(&function_sql(table, name, body));
            sql.push('\n');
        }
        sql.push_str(&check_all_sql(table));
        sql.push('\n');
        sql
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
        let shared = self.shared.clone();
        self.shared
            .block_on("cannot migrate", Self::migrate_on(shared))
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
        let shared = self.shared.clone();
        join(
            "cannot migrate",
            self.shared
                .spawn("cannot migrate", Self::migrate_on(shared)),
        )
        .await
    }

    async fn migrate_on(shared: Arc<Shared>) -> Result<(), Error> {
        let conn = shared.get().await?;
        let sql = format!(
            "BEGIN;\nSELECT pg_advisory_xact_lock({});\n{}COMMIT;",
            lock_id(&shared.table),
            Self::schema_sql(&shared.table)
        );
        if let Err(e) = conn.client.batch_execute(&sql).await {
            let _ = conn.client.batch_execute("ROLLBACK").await;
            return Err(pg_error(&format!("table {}", shared.table), describe(&e)));
        }
        Ok(())
    }

    /// Drops the table and the functions [`migrate`](Self::migrate) created (every key's
    /// state is lost). For tests and uninstalling.
    ///
    /// ```no_run
    /// let store = tollgate_sql::PgStore::connect("postgres://localhost/db").unwrap();
    /// store.drop_schema().unwrap();
    /// ```
    pub fn drop_schema(&self) -> Result<(), Error> {
        let shared = self.shared.clone();
        self.shared.block_on("cannot drop the schema", async move {
            let conn = shared.get().await?;
            let mut sql = format!(
                "BEGIN;\nSELECT pg_advisory_xact_lock({});\nDROP TABLE IF EXISTS {};\n",
                lock_id(&shared.table),
                shared.table.quoted("")
            );
            for (name, _) in ALGORITHMS {
                sql.push_str(&format!(
                    "DROP FUNCTION IF EXISTS {}(text, bigint, integer, bigint, bigint[], bigint[], bigint[], bigint[], integer);\n",
                    shared.table.quoted(&format!("_{name}"))
                ));
            }
            sql.push_str(&format!(
                "DROP FUNCTION IF EXISTS {}({CHECK_ALL_ARGS});\n",
                shared.table.quoted(CHECK_ALL)
            ));
            sql.push_str("COMMIT;");
            if let Err(e) = conn.client.batch_execute(&sql).await {
                let _ = conn.client.batch_execute("ROLLBACK").await;
                return Err(pg_error(&format!("table {}", shared.table), describe(&e)));
            }
            Ok(())
        })
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

// ---------------------------------------------------------------------------------------
// The backend.

struct Call {
    engine: Engine,
    /// The algorithm's function suffix (`gcra`, `token_bucket`, …).
    algorithm: &'static str,
    decide_sql: String,
    reset_sql: String,
    prefix: String,
    a: Vec<i64>,
    b: Vec<i64>,
    c: Vec<i64>,
    d: Vec<i64>,
}

/// A [`PgStore`] bound to one policy.
///
/// ```no_run
/// use tollgate::store::{Backend, Op, Store};
/// let store = tollgate_sql::PgStore::connect("postgres://localhost/db").unwrap();
/// let policy = tollgate::Policy::gcra(tollgate::Rate::per_second(1).unwrap()).unwrap();
/// let backend = store.bind(&policy).unwrap();
/// let d = backend.execute("k", Op::Check(1), 0).unwrap().unwrap();
/// # let _ = d;
/// ```
#[derive(Clone)]
pub struct PgBackend {
    shared: Arc<Shared>,
    call: Arc<Call>,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("table", &self.shared.table.as_str())
            .field("function", &self.call.decide_sql)
            .finish()
    }
}

impl Store for PgStore {
    type Backend = PgBackend;

    /// Binds `policy` (no round trip; a missing schema shows on the first call, with a hint
    /// to run [`PgStore::migrate`]).
    fn bind(&self, policy: &Policy) -> Result<PgBackend, Error> {
        let engine = Engine::new(policy)?;
        let name = policy.algorithm().name();
        // One parameter array per position of the algorithm's script parameters
        // (`RateAlgorithm::script_params`: the layout shared with the Lua scripts); unused
        // positions are empty arrays.
        let rows = engine.script_params();
        let column = |k: usize| -> Vec<i64> {
            rows.iter()
                .filter_map(|r| r.get(k).copied().map(to_i64))
                .collect()
        };
        let (a, b, c, d) = (column(0), column(1), column(2), column(3));
        let t = &self.shared.table;
        Ok(PgBackend {
            shared: self.shared.clone(),
            call: Arc::new(Call {
                decide_sql: format!(
                    "SELECT * FROM {}($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    t.quoted(&format!("_{name}"))
                ),
                reset_sql: format!("DELETE FROM {} WHERE key = $1", t.quoted("")),
                prefix: format!(
                    "{}{}:",
                    self.shared.namespace,
                    self.scope
                        .as_deref()
                        .map_or_else(|| tollgate::store::default_scope(policy), str::to_owned)
                ),
                algorithm: name,
                engine,
                a,
                b,
                c,
                d,
            }),
        })
    }
}

impl PgBackend {
    /// The store this backend belongs to (for multi-key calls).
    pub(crate) fn store(&self) -> PgStore {
        PgStore {
            shared: Arc::clone(&self.shared),
            scope: None,
        }
    }

    async fn run(
        shared: Arc<Shared>,
        call: Arc<Call>,
        key: String,
        op: Op,
        now: Micros,
    ) -> Result<Option<Decision>, Error> {
        let mut conn = shared.get().await?;
        let key = format!("{}{key}", call.prefix);
        let (op_code, cost) = match op {
            Op::Check(c) => (0i32, c),
            Op::Peek(c) => (1, c),
            Op::Refund(c) => (2, c),
            _ => {
                let stmt = conn
                    .statement(&call.reset_sql)
                    .await
                    .map_err(|e| pg_driver_error("reset", &e))?;
                conn.client
                    .execute(&stmt, &[&key])
                    .await
                    .map_err(|e| pg_driver_error("reset", &e))?;
                return Ok(None);
            }
        };
        let sweep: i32 = if shared.calls.fetch_add(1, Ordering::Relaxed) % shared.sweep_every
            == shared.sweep_every - 1
        {
            shared.sweep_batch
        } else {
            0
        };
        let stmt = conn
            .statement(&call.decide_sql)
            .await
            .map_err(|e| pg_driver_error("prepare", &e))?;
        let row = conn
            .client
            .query_opt(
                &stmt,
                &[
                    &key,
                    &shared.now_param(now),
                    &op_code,
                    &to_i64(cost),
                    &call.a,
                    &call.b,
                    &call.c,
                    &call.d,
                    &sweep,
                ],
            )
            .await
            .map_err(|e| pg_driver_error("decide", &e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let get = |i: usize| -> Result<u64, Error> {
            let v: i64 = row
                .try_get(i)
                .map_err(|e| pg_error("bad reply", describe(&e)))?;
            u64::try_from(v).map_err(|_| pg_error("bad reply", format!("negative value {v}")))
        };
        let allowed: bool = row
            .try_get(0)
            .map_err(|e| pg_error("bad reply", describe(&e)))?;
        let denied_by: Option<i32> = row
            .try_get(5)
            .map_err(|e| pg_error("bad reply", describe(&e)))?;
        Ok(Some(Decision::from_parts(
            allowed,
            get(1)?,
            get(2)?,
            get(3)?,
            get(4)?,
            denied_by.map(|d| d as usize),
        )))
    }
}

impl Backend for PgBackend {
    fn execute(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        self.call.engine.validate(op)?;
        let fut = Self::run(
            self.shared.clone(),
            self.call.clone(),
            key.to_string(),
            op,
            now,
        );
        self.shared.block_on("postgres call", fut)
    }

    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(async move {
            self.call.engine.validate(op)?;
            let fut = Self::run(
                self.shared.clone(),
                self.call.clone(),
                key.to_string(),
                op,
                now,
            );
            join("postgres call", self.shared.spawn("postgres call", fut)).await
        })
    }
}
