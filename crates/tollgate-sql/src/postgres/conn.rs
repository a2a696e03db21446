//! The PostgreSQL connection pool (deadpool over tokio-postgres) and the runtime a sync
//! caller's calls run on.

use super::*;

pub(super) struct PgConn {
    pub(super) client: tokio_postgres::Client,
    pub(super) statements: HashMap<String, Statement>,
}

impl PgConn {
    pub(super) async fn statement(
        &mut self,
        sql: &str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

pub(super) struct PgManager {
    pub(super) config: tokio_postgres::Config,
}

impl managed::Manager for PgManager {
    type Type = PgConn;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<PgConn, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        // Runs on the store's own runtime (every pool call does).
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "tollgate-sql: PostgreSQL connection closed");
            }
        });
        Ok(PgConn {
            client,
            statements: HashMap::new(),
        })
    }

    async fn recycle(
        &self,
        conn: &mut PgConn,
        _: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        if conn.client.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        Ok(())
    }
}

/// The store's own runtime; shut down in the background on drop, so dropping the last
/// handle inside an async context is fine.
pub(super) struct OwnedRuntime(pub(super) Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    pub(super) fn handle(&self) -> &tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle(),
            None => unreachable_runtime(),
        }
    }
}

#[cold]
pub(super) fn unreachable_runtime() -> ! {
    // `OwnedRuntime.0` is only taken in `drop`.
    panic!("tollgate-sql: the PostgreSQL store's runtime is gone")
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub(super) struct Shared {
    pub(super) runtime: OwnedRuntime,
    pub(super) pool: Pool<PgManager>,
    pub(super) table: TableName,
    pub(super) namespace: String,
    pub(super) caller_time: bool,
    pub(super) call_timeout: Duration,
    pub(super) sweep_every: u64,
    pub(super) sweep_batch: i32,
    pub(super) calls: AtomicU64,
}

impl Shared {
    /// Runs `fut` on the store's runtime with the call timeout.
    pub(super) fn spawn<R: Send + 'static>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<R, Error>> + Send + 'static,
    ) -> tokio::task::JoinHandle<Result<R, Error>> {
        let timeout = self.call_timeout;
        self.runtime.handle().spawn(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(Error::Store(StoreError::timeout(STORE, timeout))),
            }
            .map_err(|e| match e {
                Error::Store(mut s) if !s.timeout && !what.is_empty() => {
                    s.message = format!("{what}: {}", s.message);
                    Error::Store(s)
                }
                other => other,
            })
        })
    }

    /// Runs `fut` on the store's runtime and blocks the calling thread until it is done.
    pub(super) fn block_on<R: Send + 'static>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<R, Error>> + Send + 'static,
    ) -> Result<R, Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let handle = self.spawn(what, fut);
        self.runtime.handle().spawn(async move {
            let result = match handle.await {
                Ok(r) => r,
                Err(e) => Err(pg_error(what, format!("the task failed: {e}"))),
            };
            let _ = tx.send(result);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(pg_error(what, "the store's runtime stopped")))
    }

    pub(super) async fn get(&self) -> Result<managed::Object<PgManager>, Error> {
        self.pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(e) => pg_driver_error("cannot connect", &e),
            managed::PoolError::Timeout(_) => Error::Store(StoreError::with_kind(
                STORE,
                StoreErrorKind::Timeout,
                "timed out waiting for a connection",
            )),
            other => pg_error("connection pool", other),
        })
    }

    pub(super) fn now_param(&self, now: Micros) -> Option<i64> {
        self.caller_time.then(|| to_i64(now))
    }
}

// ---------------------------------------------------------------------------------------
// The store and its builder.

pub(super) async fn join<R>(
    what: &'static str,
    handle: tokio::task::JoinHandle<Result<R, Error>>,
) -> Result<R, Error> {
    match handle.await {
        Ok(r) => r,
        Err(e) => Err(pg_error(what, format!("the task failed: {e}"))),
    }
}
