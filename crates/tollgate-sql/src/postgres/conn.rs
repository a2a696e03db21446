//! The PostgreSQL connection pool (deadpool over tokio-postgres), the store's own runtime —
//! the one bridge every sync and async call crosses — and the guard that keeps a call which
//! failed or was abandoned from running on in the server.

use super::{pg_driver_error, pg_error, STORE};
use crate::table::TableName;
use deadpool::managed::{self, Metrics, Pool, RecycleError, RecycleResult};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::{CancelToken, NoTls, Statement};
use tollgate::time::Micros;
use tollgate::{Error, StoreError, StoreErrorKind};

pub(super) struct PgConn {
    pub(super) client: tokio_postgres::Client,
    statements: HashMap<String, Statement>,
    /// This session's `statement_timeout` in ms, as last set.
    statement_timeout_ms: u64,
    /// Set when a call was dropped with a statement in flight: the connection is never
    /// handed out again (a late cancel request could hit the next call's statement).
    abandoned: Arc<AtomicBool>,
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

    /// Arms the guard of a call's statements on this connection; [`InFlight::done`] once
    /// they answered.
    pub(super) fn in_flight(&self) -> InFlight {
        InFlight {
            token: self.client.cancel_token(),
            abandoned: Arc::clone(&self.abandoned),
            armed: true,
        }
    }
}

/// Armed while a call's statements are in flight. Dropped armed — the call timeout fired,
/// or an async caller gave up — it sends the server a cancel request for the statement (so
/// it stops and rolls back instead of charging later) and retires the connection.
pub(super) struct InFlight {
    token: CancelToken,
    abandoned: Arc<AtomicBool>,
    armed: bool,
}

impl InFlight {
    /// The statements answered (successfully or not): nothing is left running.
    pub(super) fn done(mut self) {
        self.armed = false;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.abandoned.store(true, Ordering::Relaxed);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let token = self.token.clone();
            runtime.spawn(async move {
                // A cancel request that reaches the server before the statement does is
                // lost, so it is sent again a few times. The connection is retired (it runs
                // nothing of ours again), so a late one can only hit this statement, and on
                // an idle connection it is ignored.
                for pause in CANCEL_AGAIN {
                    tokio::time::sleep(pause).await;
                    if let Err(e) = token.cancel_query(NoTls).await {
                        tracing::debug!(error = %e, "tollgate-sql: cannot cancel an abandoned statement");
                    }
                }
            });
        }
    }
}

/// When the cancel requests for an abandoned statement are sent (each pause before one).
const CANCEL_AGAIN: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(20),
    Duration::from_millis(100),
    Duration::from_millis(500),
];

pub(super) struct PgManager {
    pub(super) config: tokio_postgres::Config,
    /// Every session's `statement_timeout` (ms): half the call timeout.
    pub(super) statement_timeout_ms: u64,
    /// Read on every new connection.
    pub(super) clock: Arc<ServerClock>,
}

/// The database server's clock as seen from this process: a reading of `clock_timestamp()`
/// and the local instant its reply arrived. The server read its clock before that instant,
/// so the estimate is a lower bound and a deadline computed from it errs early (toward
/// refusing a late call), like the Redis store's.
#[derive(Default)]
pub(super) struct ServerClock(parking_lot::Mutex<Option<(Instant, u64)>>);

/// How long a reading of the server's clock is trusted before it is read again.
const CLOCK_REFRESH: Duration = Duration::from_secs(10);

/// The server's clock in µs, as the functions compute their own `now`.
const CLOCK_SQL: &str = "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

impl ServerClock {
    /// Reads the server's clock on `client` (one round trip: a simple query). A reply that
    /// is not a number keeps the previous reading.
    async fn read(&self, client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
        let reply = client.simple_query(CLOCK_SQL).await?;
        let at = Instant::now();
        let us = reply.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse::<u64>().ok(),
            _ => None,
        });
        if let Some(us) = us {
            *self.0.lock() = Some((at, us));
        }
        Ok(())
    }

    fn stale(&self) -> bool {
        self.0
            .lock()
            .is_none_or(|(at, _)| at.elapsed() >= CLOCK_REFRESH)
    }

    /// The server's time (µs) at the local instant `t`, if the clock was read.
    fn at(&self, t: Instant) -> Option<u64> {
        let (at, us) = (*self.0.lock())?;
        Some(if t >= at {
            us.saturating_add(t.duration_since(at).as_micros() as u64)
        } else {
            us.saturating_sub(at.duration_since(t).as_micros() as u64)
        })
    }
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
        client
            .batch_execute(&set_timeout(self.statement_timeout_ms))
            .await?;
        self.clock.read(&client).await?;
        Ok(PgConn {
            client,
            statements: HashMap::new(),
            statement_timeout_ms: self.statement_timeout_ms,
            abandoned: Arc::new(AtomicBool::new(false)),
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
        if conn.abandoned.load(Ordering::Relaxed) {
            return Err(RecycleError::message("a call was abandoned on it"));
        }
        Ok(())
    }
}

fn set_timeout(ms: u64) -> String {
    format!("SET statement_timeout = {ms}")
}

/// The store's own runtime; shut down in the background on drop, so dropping the last
/// handle inside an async context is fine.
pub(super) struct OwnedRuntime(pub(super) Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle(),
            None => unreachable_runtime(),
        }
    }
}

#[cold]
fn unreachable_runtime() -> ! {
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
    pub(super) clock: Arc<ServerClock>,
}

/// A connection for one decision call, and what its statement is sent with.
pub(super) struct CallConn {
    pub(super) conn: managed::Object<PgManager>,
    /// A `SET statement_timeout` to pipeline before the statement, when the session's
    /// limit must change.
    pub(super) set: Option<String>,
    /// The call's deadline on the server's clock (µs; the functions' `p_deadline`).
    pub(super) deadline: Option<i64>,
}

/// A spawned call that is aborted when its awaiting future is dropped (an async caller
/// that gives up stops the call, whose [`InFlight`] guard then cancels the statement).
struct AbortOnDrop<R>(tokio::task::JoinHandle<R>);

impl<R> Drop for AbortOnDrop<R> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Shared {
    /// Runs `fut` on the store's runtime with the call timeout.
    fn spawn<R: Send + 'static>(
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

    /// Runs `fut` on the store's runtime and blocks the calling thread until it is done
    /// (the sync front of every call; works with or without a runtime of the caller's).
    pub(super) fn block_on<R: Send + 'static>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<R, Error>> + Send + 'static,
    ) -> Result<R, Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let handle = self.spawn(what, fut);
        self.runtime.handle().spawn(async move {
            let _ = tx.send(joined(what, handle.await));
        });
        rx.recv()
            .unwrap_or_else(|_| Err(pg_error(what, "the store's runtime stopped")))
    }

    /// Runs `fut` on the store's runtime (the async front of every call, from any
    /// executor). Dropping the returned future aborts the call.
    pub(super) fn run_async<R: Send + 'static>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<R, Error>> + Send + 'static,
    ) -> impl Future<Output = Result<R, Error>> + Send + 'static {
        let mut task = AbortOnDrop(self.spawn(what, fut));
        async move { joined(what, (&mut task.0).await) }
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

    /// A connection for a decision call that started at `started`. Of the call timeout left
    /// when the statement is sent, half goes to the statement and half is the margin for the
    /// reply, so a call reported timed out never charges afterwards: the statement carries
    /// its deadline on the server's clock (the functions write nothing past it, which
    /// covers a statement that reaches the server late), and the session's
    /// `statement_timeout` is lowered to that half when a call waited for a connection (the
    /// server cancels and rolls back a statement past it, also while it waits for a locked
    /// row). A call with no time left after the wait fails here, having sent nothing.
    pub(super) async fn call_conn(&self, started: Instant) -> Result<CallConn, Error> {
        let mut conn = self.get().await?;
        if self.clock.stale() {
            // one round trip every CLOCK_REFRESH; a failure keeps the previous reading
            if let Err(e) = self.clock.read(&conn.client).await {
                tracing::debug!(error = %e, "tollgate-sql: cannot read the server's clock");
            }
        }
        // half of what is left goes to the statement, half to the reply
        let left = self.call_timeout.saturating_sub(started.elapsed()) / 2;
        let sending = Instant::now();
        if left.as_micros() == 0 {
            return Err(Error::Store(StoreError::with_kind(
                STORE,
                StoreErrorKind::Timeout,
                format!(
                    "timed out waiting for a connection: no time left of the call timeout \
                     ({:?}) for the statement; nothing was sent",
                    self.call_timeout
                ),
            )));
        }
        let deadline = self
            .clock
            .at(sending)
            .map(|t| super::to_i64(t.saturating_add(left.as_micros() as u64)));
        let half = self.call_timeout / 2;
        // in ms, at least 1 (0 would mean no limit)
        let left = (left.as_micros() as u64).div_ceil(1000);
        // Lower the session's limit when it would let the statement end after its deadline
        // (a 5 % tolerance keeps an ordinary call from setting it every time); raise it back
        // once it is far below.
        let tolerance = (half / 20).as_millis() as u64;
        let current = conn.statement_timeout_ms;
        let set = (current > left + tolerance || current < left / 2).then(|| {
            conn.statement_timeout_ms = left;
            set_timeout(left)
        });
        Ok(CallConn {
            conn,
            set,
            deadline,
        })
    }

    pub(super) fn now_param(&self, now: Micros) -> Option<i64> {
        self.caller_time.then(|| super::to_i64(now))
    }
}

fn joined<R>(
    what: &'static str,
    r: Result<Result<R, Error>, tokio::task::JoinError>,
) -> Result<R, Error> {
    r.unwrap_or_else(|e| Err(pg_error(what, format!("the task failed: {e}"))))
}

/// Sends `set` (a `SET statement_timeout`), if any, pipelined with `query` (one round trip).
pub(super) async fn limited<R>(
    client: &tokio_postgres::Client,
    set: Option<&str>,
    query: impl Future<Output = Result<R, tokio_postgres::Error>>,
) -> Result<R, tokio_postgres::Error> {
    match set {
        None => query.await,
        Some(set) => {
            let (_, r) = futures_util::future::try_join(client.batch_execute(set), query).await?;
            Ok(r)
        }
    }
}
