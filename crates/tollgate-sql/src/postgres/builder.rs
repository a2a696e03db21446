//! [`PgStoreBuilder`]: the URL, table, namespace, pool, clock and timeouts of a [`PgStore`].

use super::conn::{OwnedRuntime, PgManager, ServerClock, Shared};
use super::{pg_error, PgStore};
use crate::table::TableName;
use deadpool::managed::Pool;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tollgate::Error;

/// Configures and connects a [`PgStore`].
///
/// ```no_run
/// use std::time::Duration;
/// let store = tollgate_sql::PgStore::builder("postgres://postgres@127.0.0.1/postgres")
///     .table("rate_limits").unwrap()
///     .max_connections(32)
///     .call_timeout(Duration::from_millis(250))
///     .connect()
///     .unwrap();
/// store.migrate().unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct PgStoreBuilder {
    pub(super) url: String,
    pub(super) table: TableName,
    pub(super) namespace: String,
    pub(super) max_connections: usize,
    pub(super) caller_time: bool,
    pub(super) call_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) sweep_every: u64,
    pub(super) sweep_batch: u32,
    pub(super) runtime_threads: usize,
}

impl PgStoreBuilder {
    /// Uses table `name` (default `tollgate_state`; `schema.table` accepted), validated as an
    /// SQL identifier.
    ///
    /// ```
    /// let b = tollgate_sql::PgStore::builder("postgres://localhost/db");
    /// assert!(b.clone().table("limits").is_ok());
    /// assert!(b.table("limits; DROP TABLE users").is_err());
    /// ```
    pub fn table(mut self, name: &str) -> Result<Self, Error> {
        self.table = TableName::new(name)?;
        Ok(self)
    }

    /// Prefixes every key with `namespace:` so several limiters can share one table.
    ///
    /// ```
    /// let b = tollgate_sql::PgStore::builder("postgres://localhost/db").namespace("api");
    /// # let _ = b;
    /// ```
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = format!("{namespace}:");
        self
    }

    /// The most connections the pool opens (default 16, at least 1).
    ///
    /// ```
    /// let b = tollgate_sql::PgStore::builder("postgres://localhost/db").max_connections(4);
    /// # let _ = b;
    /// ```
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Decide with the `now` the limiter passes (its clock) instead of the database clock.
    /// Use it for tests and replay; in production the database clock keeps hosts with skewed
    /// clocks consistent.
    ///
    /// ```
    /// let b = tollgate_sql::PgStore::builder("postgres://localhost/db").caller_time(true);
    /// # let _ = b;
    /// ```
    pub fn caller_time(mut self, yes: bool) -> Self {
        self.caller_time = yes;
        self
    }

    /// The time limit of one call, connection included (default 5 s). An expired call is a
    /// `StoreError` with `timeout == true`, and it charged nothing: of the time left when a
    /// decision's statement is sent, half goes to the statement — which carries that
    /// deadline on the server's clock and writes nothing past it, and which PostgreSQL
    /// cancels past it (`statement_timeout`) also while it waits for a locked row — and half
    /// is the margin for the reply. So a database that takes longer than half the call
    /// timeout to decide is reported as timing out.
    ///
    /// ```
    /// let b = tollgate_sql::PgStore::builder("postgres://localhost/db")
    ///     .call_timeout(std::time::Duration::from_millis(200));
    /// # let _ = b;
    /// ```
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The time limit of opening one connection (default 5 s).
    ///
    /// ```
    /// let b = tollgate_sql::PgStore::builder("postgres://localhost/db")
    ///     .connect_timeout(std::time::Duration::from_secs(2));
    /// # let _ = b;
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Every `n` calls (default 1000, at least 1) one call also deletes expired rows.
    ///
    /// ```
    /// let b = tollgate_sql::PgStore::builder("postgres://localhost/db").sweep_every(100);
    /// # let _ = b;
    /// ```
    pub fn sweep_every(mut self, n: u64) -> Self {
        self.sweep_every = n.max(1);
        self
    }

    /// How many expired rows one sweep deletes at most (default 100, at least 1).
    ///
    /// ```
    /// let b = tollgate_sql::PgStore::builder("postgres://localhost/db").sweep_batch(1000);
    /// # let _ = b;
    /// ```
    pub fn sweep_batch(mut self, n: u32) -> Self {
        self.sweep_batch = n.clamp(1, i32::MAX as u32);
        self
    }

    /// Worker threads of the store's own runtime (default 2, at least 1).
    ///
    /// ```
    /// let b = tollgate_sql::PgStore::builder("postgres://localhost/db").runtime_threads(1);
    /// # let _ = b;
    /// ```
    pub fn runtime_threads(mut self, n: usize) -> Self {
        self.runtime_threads = n.max(1);
        self
    }

    fn build(self) -> Result<PgStore, Error> {
        let mut config: tokio_postgres::Config = self.url.parse().map_err(|e| {
            pg_error(
                "invalid PostgreSQL URL",
                format!("{e} (expected postgres://user[:password]@host[:port]/database or key=value pairs)"),
            )
        })?;
        config.connect_timeout(self.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("tollgate");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.runtime_threads)
            .thread_name("tollgate-sql-pg")
            .enable_all()
            .build()
            .map_err(|e| pg_error("cannot start the store's runtime", e))?;
        let clock = Arc::new(ServerClock::default());
        let manager = PgManager {
            config,
            clock: Arc::clone(&clock),
            // at least 1 ms: 0 would mean no limit
            statement_timeout_ms: ((self.call_timeout / 2).as_micros() as u64)
                .div_ceil(1000)
                .max(1),
        };
        let pool = Pool::builder(manager)
            .max_size(self.max_connections)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(self.call_timeout))
            .create_timeout(Some(self.connect_timeout))
            .recycle_timeout(Some(self.call_timeout))
            .build()
            .map_err(|e| pg_error("cannot build the connection pool", e))?;
        Ok(PgStore {
            shared: Arc::new(Shared {
                runtime: OwnedRuntime(Some(runtime)),
                pool,
                table: self.table,
                namespace: self.namespace,
                caller_time: self.caller_time,
                call_timeout: self.call_timeout,
                sweep_every: self.sweep_every,
                sweep_batch: self.sweep_batch as i32,
                calls: AtomicU64::new(0),
                clock,
            }),
            scope: None,
        })
    }

    /// Connects (opening one connection now, so a bad URL, host, password or database fails
    /// here with a clear error). Blocks the calling thread; works with or without a runtime.
    ///
    /// ```
    /// let err = tollgate_sql::PgStore::builder("mysql://nope").connect().unwrap_err();
    /// assert!(err.to_string().contains("invalid PostgreSQL URL"));
    /// ```
    pub fn connect(self) -> Result<PgStore, Error> {
        let store = self.build()?;
        let shared = store.shared.clone();
        store
            .shared
            .block_on("", async move { shared.get().await.map(drop) })?;
        Ok(store)
    }

    /// Builds the store without opening a connection: nothing can fail here but a bad URL.
    /// Connections open on the first call, and a database that is down shows as
    /// `Error::Store` on each call, which a failure policy handles (see
    /// `tollgate::store::failure`): use this when a limiter must start while the database
    /// is unreachable.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// use tollgate::store::failure::FailSafeStore;
    /// // Nothing listens on port 1: the store is down from the start.
    /// let store = tollgate_sql::PgStore::builder("postgres://u@127.0.0.1:1/db")
    ///     .connect_lazy()
    ///     .unwrap();
    /// let limiter = Limiter::builder(Policy::gcra(Rate::per_second(5).unwrap()).unwrap())
    ///     .build_with(&FailSafeStore::fail_open(store))
    ///     .unwrap();
    /// assert!(limiter.check("k").unwrap().allowed); // failed open
    /// ```
    pub fn connect_lazy(self) -> Result<PgStore, Error> {
        self.build()
    }

    /// [`connect`](Self::connect) without blocking the executor.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let err = tollgate_sql::PgStore::builder("not a url").connect_async().await.unwrap_err();
    /// assert!(err.to_string().contains("invalid PostgreSQL URL"));
    /// # });
    /// ```
    pub async fn connect_async(self) -> Result<PgStore, Error> {
        let store = self.build()?;
        let shared = store.shared.clone();
        store
            .shared
            .run_async("", async move { shared.get().await.map(drop) })
            .await?;
        Ok(store)
    }
}
