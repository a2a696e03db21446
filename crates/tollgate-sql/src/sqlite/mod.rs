//! The SQLite store: one database file shared by the processes of one host.
//!
//! # How it works
//!
//! - The file is opened in WAL mode with a busy timeout (default 10 s), so readers never block
//!   the writer and a writer waits for another instead of failing.
//! - Every `check`/`refund` runs in one `BEGIN IMMEDIATE` transaction: read the key's row,
//!   run the pure algorithm of `tollgate::algorithm` (the same code as the memory store),
//!   write the new state, commit. `BEGIN IMMEDIATE` takes the database's write lock up front,
//!   so two processes can never both read the old state: read-decide-write is atomic.
//!   A `peek` is one read, with no lock.
//! - State lives in one row per key: `key TEXT PRIMARY KEY, state BLOB, expires_at INTEGER`
//!   (`state` holds the algorithm's integers as little-endian `u64`s; `expires_at` is the
//!   time in µs from which the state is equivalent to fresh). A key back to fresh is deleted,
//!   and every [`SqliteStore::sweep_every`] writes the store deletes up to
//!   [`SqliteStore::sweep_batch`] expired rows in the same transaction, so the table never
//!   grows without bound. [`SqliteStore::purge_expired`] deletes them all on demand.
//! - Time is the caller's (the limiter's clock): all processes of one host share it.
//! - The file survives restarts: a process that opens it again finds every key's state.
//!
//! The schema is created explicitly by [`SqliteStore::ensure_schema`] (idempotent; call it at
//! start-up). Binding a policy to a store whose table is missing is a clear error.
//!
//! ```
//! use tollgate::{Limiter, Policy, Rate};
//! use tollgate_sql::SqliteStore;
//!
//! let store = SqliteStore::in_memory().unwrap();
//! store.ensure_schema().unwrap();
//! let limiter = Limiter::builder(Policy::gcra(Rate::per_second(2).unwrap()).unwrap())
//!     .build_with(&store)
//!     .unwrap();
//! assert!(limiter.check("alice").unwrap().allowed);
//! assert!(limiter.check("alice").unwrap().allowed);
//! assert!(!limiter.check("alice").unwrap().allowed);
//! ```

mod backend;
mod conn;
mod log;
mod multi;

pub use backend::SqliteBackend;
use conn::read_state;

use crate::table::TableName;
use parking_lot::Mutex;
use rusqlite::params;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tollgate::time::Micros;
use tollgate::{Error, StoreError, StoreErrorKind};

fn sqlite_error(context: &str, e: impl std::fmt::Display) -> Error {
    let message = e.to_string();
    // SQLITE_BUSY / SQLITE_LOCKED after the busy timeout is a timeout; a file that cannot be
    // opened is a connection failure.
    let kind = if message.contains("database is locked") || message.contains("table is locked") {
        StoreErrorKind::Timeout
    } else if message.contains("unable to open database") {
        StoreErrorKind::Connection
    } else {
        StoreErrorKind::Other
    };
    Error::Store(StoreError::with_kind(
        "sqlite",
        kind,
        format!("{context}: {message}"),
    ))
}

#[derive(Debug, Clone)]
enum Location {
    File(PathBuf),
    Memory,
}

struct Shared {
    location: Location,
    table: TableName,
    busy_timeout: Duration,
    sweep_every: u64,
    sweep_batch: u64,
    namespace: String,
    idle: Mutex<Vec<rusqlite::Connection>>,
    /// In-memory databases have exactly one connection (a second one would be another
    /// database); it is shared under this lock.
    memory: Option<Arc<Mutex<rusqlite::Connection>>>,
    writes: AtomicU64,
    sql: Statements,
}

struct Statements {
    select: String,
    upsert: String,
    delete: String,
    sweep: String,
}

/// A SQLite database (file or in-memory) that holds rate-limit state.
///
/// Cheap to clone (the connections are shared). See the [module docs](self).
///
/// ```
/// let dir = std::env::temp_dir().join(format!("tollgate-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let store = tollgate_sql::SqliteStore::open(dir.join("limits.db"))
///     .unwrap()
///     .table("api_limits")
///     .unwrap();
/// store.ensure_schema().unwrap();
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
    /// The scope named with [`SqliteStore::scope`], else `None` (keys scoped by policy).
    scope: Option<Arc<str>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.shared.location)
            .field("table", &self.shared.table.as_str())
            .finish()
    }
}

fn statements(table: &TableName) -> Statements {
    let t = table.quoted("");
    Statements {
        select: format!("SELECT state FROM {t} WHERE key = ?1"),
        upsert: format!(
            "INSERT INTO {t} (key, state, expires_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (key) DO UPDATE SET state = excluded.state, expires_at = excluded.expires_at"
        ),
        delete: format!("DELETE FROM {t} WHERE key = ?1"),
        sweep: format!(
            "DELETE FROM {t} WHERE key IN (SELECT key FROM {t} WHERE expires_at <= ?1 LIMIT ?2)"
        ),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, in WAL mode.
    ///
    /// Errors clearly when the file cannot be opened or written (missing directory,
    /// permissions, not a database).
    ///
    /// ```
    /// let err = tollgate_sql::SqliteStore::open("/nonexistent-dir/x/limits.db").unwrap_err();
    /// assert!(err.to_string().contains("/nonexistent-dir/x/limits.db"));
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, Error> {
        let store = Self::with_location(Location::File(path.as_ref().to_path_buf()), None);
        // Open one connection now, so a bad path fails here and not on the first check.
        let conn = store.shared.connect()?;
        store.shared.idle.lock().push(conn);
        Ok(store)
    }

    /// A private in-memory database (for tests; gone when the last clone is dropped).
    ///
    /// ```
    /// let store = tollgate_sql::SqliteStore::in_memory().unwrap();
    /// store.ensure_schema().unwrap();
    /// ```
    pub fn in_memory() -> Result<SqliteStore, Error> {
        let conn = rusqlite::Connection::open_in_memory()
            .map_err(|e| sqlite_error("cannot open an in-memory database", e))?;
        Ok(Self::with_location(Location::Memory, Some(conn)))
    }

    fn with_location(location: Location, memory: Option<rusqlite::Connection>) -> SqliteStore {
        let table = TableName::default();
        SqliteStore {
            shared: Arc::new(Shared {
                location,
                sql: statements(&table),
                table,
                busy_timeout: Duration::from_secs(10),
                sweep_every: 1000,
                sweep_batch: 100,
                namespace: String::new(),
                idle: Mutex::new(Vec::new()),
                memory: memory.map(|c| Arc::new(Mutex::new(c))),
                writes: AtomicU64::new(0),
            }),
            scope: None,
        }
    }

    fn configure(self, f: impl FnOnce(&mut Shared)) -> SqliteStore {
        let mut shared = match Arc::try_unwrap(self.shared) {
            Ok(s) => s,
            Err(arc) => Shared {
                location: arc.location.clone(),
                table: arc.table.clone(),
                busy_timeout: arc.busy_timeout,
                sweep_every: arc.sweep_every,
                sweep_batch: arc.sweep_batch,
                namespace: arc.namespace.clone(),
                idle: Mutex::new(Vec::new()),
                memory: arc.memory.clone(),
                writes: AtomicU64::new(0),
                sql: statements(&arc.table),
            },
        };
        f(&mut shared);
        shared.sql = statements(&shared.table);
        SqliteStore {
            shared: Arc::new(shared),
            scope: self.scope,
        }
    }

    /// Uses table `name` (default `tollgate_state`); validated as an SQL identifier.
    ///
    /// ```
    /// let store = tollgate_sql::SqliteStore::in_memory().unwrap();
    /// assert!(store.clone().table("limits").is_ok());
    /// assert!(store.table("x; DROP TABLE y").is_err());
    /// ```
    pub fn table(self, name: &str) -> Result<SqliteStore, Error> {
        let table = TableName::new(name)?;
        if table.schema().is_some() {
            return Err(sqlite_error(
                "invalid table name",
                format!("{name:?}: SQLite tables take no schema qualifier"),
            ));
        }
        Ok(self.configure(|s| s.table = table))
    }

    /// Prefixes every key with `namespace:` so several limiters can share one table.
    ///
    /// ```
    /// let store = tollgate_sql::SqliteStore::in_memory().unwrap().namespace("api");
    /// # let _ = store;
    /// ```
    pub fn namespace(self, namespace: &str) -> SqliteStore {
        let ns = format!("{namespace}:");
        self.configure(|s| s.namespace = ns)
    }

    /// The same store, binding limiters under the name `scope`: their keys are stored as
    /// `<namespace:><scope>:<key>`, shared by every limiter bound under that scope (and
    /// kept across a change of the policy's rates). Without a scope a policy's keys are
    /// `<namespace:><algorithm>-<8 hex>:<key>` ([`tollgate::store::default_scope`]): limiters
    /// of the same policy share state, different policies never do.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let store = tollgate_sql::SqliteStore::in_memory().unwrap();
    /// store.ensure_schema().unwrap();
    /// let p = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
    /// let login = Limiter::builder(p.clone()).build_with(&store.scope("login")).unwrap();
    /// let api = Limiter::builder(p).build_with(&store.scope("api")).unwrap();
    /// assert!(login.check("alice").unwrap().allowed);
    /// assert!(api.check("alice").unwrap().allowed); // another scope, another state
    /// ```
    pub fn scope(&self, scope: &str) -> SqliteStore {
        SqliteStore {
            shared: self.shared.clone(),
            scope: Some(scope.into()),
        }
    }

    /// How long a writer waits for another process's transaction (default 10 s).
    ///
    /// ```
    /// let store = tollgate_sql::SqliteStore::in_memory().unwrap()
    ///     .busy_timeout(std::time::Duration::from_secs(30));
    /// # let _ = store;
    /// ```
    pub fn busy_timeout(self, timeout: Duration) -> SqliteStore {
        let store = self.configure(|s| s.busy_timeout = timeout);
        // Connections already open take the new timeout too.
        for conn in store.shared.idle.lock().iter() {
            let _ = conn.busy_timeout(timeout);
        }
        if let Some(memory) = &store.shared.memory {
            let _ = memory.lock().busy_timeout(timeout);
        }
        store
    }

    /// Every `n` writes (default 1000) a write also deletes expired rows (at least 1).
    ///
    /// ```
    /// let store = tollgate_sql::SqliteStore::in_memory().unwrap().sweep_every(1);
    /// # let _ = store;
    /// ```
    pub fn sweep_every(self, n: u64) -> SqliteStore {
        self.configure(|s| s.sweep_every = n.max(1))
    }

    /// How many expired rows one sweep deletes at most (default 100, at least 1).
    ///
    /// ```
    /// let store = tollgate_sql::SqliteStore::in_memory().unwrap().sweep_batch(500);
    /// # let _ = store;
    /// ```
    pub fn sweep_batch(self, n: u64) -> SqliteStore {
        self.configure(|s| s.sweep_batch = n.max(1))
    }

    /// The table name in use.
    ///
    /// ```
    /// let store = tollgate_sql::SqliteStore::in_memory().unwrap();
    /// assert_eq!(store.table_name().as_str(), "tollgate_state");
    /// ```
    pub fn table_name(&self) -> &TableName {
        &self.shared.table
    }

    /// Creates the table and its index if they do not exist (idempotent, safe to run from
    /// several processes at once).
    ///
    /// ```
    /// let store = tollgate_sql::SqliteStore::in_memory().unwrap();
    /// store.ensure_schema().unwrap();
    /// store.ensure_schema().unwrap();
    /// ```
    pub fn ensure_schema(&self) -> Result<(), Error> {
        let t = self.shared.table.quoted("");
        let index = self.shared.table.quoted_local("_expires_at");
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                 key TEXT PRIMARY KEY NOT NULL,
                 state BLOB NOT NULL,
                 expires_at INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at);"
        );
        self.shared
            .with_conn(|conn| conn.execute_batch(&sql))
            .map_err(|e| sqlite_error("cannot create the schema", e))
    }

    /// Deletes every expired row (at `now`, µs); returns how many.
    ///
    /// ```
    /// let store = tollgate_sql::SqliteStore::in_memory().unwrap();
    /// store.ensure_schema().unwrap();
    /// assert_eq!(store.purge_expired(1_000_000).unwrap(), 0);
    /// ```
    pub fn purge_expired(&self, now: Micros) -> Result<u64, Error> {
        let sql = format!(
            "DELETE FROM {} WHERE expires_at <= ?1",
            self.shared.table.quoted("")
        );
        self.shared
            .with_conn(|conn| conn.execute(&sql, params![to_i64(now)]))
            .map(|n| n as u64)
            .map_err(|e| sqlite_error("cannot delete expired rows", e))
    }

    /// The number of rows in the table (keys with state).
    ///
    /// ```
    /// let store = tollgate_sql::SqliteStore::in_memory().unwrap();
    /// store.ensure_schema().unwrap();
    /// assert_eq!(store.row_count().unwrap(), 0);
    /// ```
    pub fn row_count(&self) -> Result<u64, Error> {
        let sql = format!("SELECT count(*) FROM {}", self.shared.table.quoted(""));
        self.shared
            .with_conn(|conn| conn.query_row(&sql, [], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .map_err(|e| sqlite_error("cannot count rows", e))
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Runs `f` on tokio's blocking pool when inside a tokio runtime (so an executor never
/// waits on the database lock), else inline: the async front of every SQLite call.
async fn off_thread<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, Error> + Send + 'static,
) -> Result<R, Error> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle
            .spawn_blocking(f)
            .await
            .map_err(|e| sqlite_error("the blocking task failed", e))?,
        Err(_) => f(),
    }
}
