//! The store's own runtime thread and its connection (standalone or Cluster).

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use tollgate::{Error, StoreError, StoreErrorKind};

mod blocking;
mod cluster;

pub(crate) use cluster::ClusterConn;

/// Where the store connects.
pub(crate) enum Target {
    Standalone(redis::Client),
    /// Rebuilt when calls keep failing (see `conn/cluster.rs`).
    Cluster(Arc<ClusterConn>),
}

#[derive(Clone)]
pub(crate) enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The runtime, the target and the (lazily opened) connection shared by every backend of one
/// store.
pub(crate) struct Shared {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    target: Target,
    /// The standalone connection (a Cluster's lives in its `ClusterConn`).
    conn: OnceCell<Conn>,
    pub(crate) timeout: Duration,
    /// The server's clock as seen from this process (see [`Shared::deadline_arg`]).
    server_clock: Mutex<Option<Anchor>>,
    /// Idle blocking connections for calls on the caller's thread (see `conn/blocking.rs`).
    blocking: Mutex<Vec<redis::Connection>>,
}

/// A reading of the server's clock: `server_us` (its `TIME`) was current no later than the
/// local instant `at` (the reply came back after `TIME` ran), so `server_us + (t - at)` is a
/// lower bound of the server's time at any local instant `t`.
#[derive(Clone, Copy)]
struct Anchor {
    at: Instant,
    server_us: u64,
}

/// How often the reading of the server clock is renewed (so a stepped or drifting clock, or a
/// failover to another node, is followed).
const CLOCK_REFRESH: Duration = Duration::from_secs(10);

impl Drop for Shared {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside an async context; the store may be
        // dropped anywhere, so let its threads wind down in the background.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

pub(crate) fn store_error(e: impl std::fmt::Display) -> Error {
    Error::Store(StoreError::new("redis", e.to_string()))
}

/// A reply the store's client cannot read (kind `Protocol`).
pub(crate) fn protocol_error(e: impl std::fmt::Display) -> Error {
    Error::Store(StoreError::with_kind(
        "redis",
        StoreErrorKind::Protocol,
        e.to_string(),
    ))
}

/// A failed Redis call as a `StoreError` of the right kind, so a refused connection is
/// reported as refused and a missing script as missing.
pub(crate) fn redis_failure(context: &str, e: &redis::RedisError) -> Error {
    Error::Store(redis_store_error(context, e))
}

pub(crate) fn redis_store_error(context: &str, e: &redis::RedisError) -> StoreError {
    StoreError::with_kind("redis", classify(e), format!("{context}: {e}"))
}

/// The class of a Redis client error.
pub(crate) fn classify(e: &redis::RedisError) -> StoreErrorKind {
    use redis::{ErrorKind, ServerErrorKind};
    if e.is_connection_refusal() {
        return StoreErrorKind::ConnectionRefused;
    }
    if e.is_timeout() {
        return StoreErrorKind::Timeout;
    }
    if matches!(e.code(), Some("NOAUTH" | "WRONGPASS")) {
        return StoreErrorKind::Auth;
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed => StoreErrorKind::Auth,
        ErrorKind::Server(ServerErrorKind::NoScript) => StoreErrorKind::ScriptMissing,
        ErrorKind::Server(ServerErrorKind::NoPerm) => StoreErrorKind::Auth,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType | ErrorKind::RESP3NotSupported => {
            StoreErrorKind::Protocol
        }
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => StoreErrorKind::Connection,
        _ if e.is_connection_dropped() || e.is_unrecoverable_error() => StoreErrorKind::Connection,
        _ => StoreErrorKind::Other,
    }
}

impl Shared {
    pub(crate) fn new(target: Target, timeout: Duration, threads: usize) -> Result<Shared, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("tollgate-redis")
            .enable_all()
            .build()
            .map_err(|e| store_error(format!("cannot start the store's runtime: {e}")))?;
        Ok(Shared {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            target,
            conn: OnceCell::new(),
            timeout,
            server_clock: Mutex::new(None),
            blocking: Mutex::new(Vec::new()),
        })
    }

    /// The deadline argument of a script call that started at the local instant `start`: the
    /// server-clock µs after which the script refuses to run (returns the late marker, see
    /// `lua/prelude.lua`), or '' while the server's clock is unknown.
    ///
    /// The deadline is `start + timeout / 2` on the server's clock, estimated from a lower
    /// bound of that clock (so it errs early): a script that reaches Redis when the caller has
    /// given up, or is about to, charges nothing. The other half of the timeout is the margin
    /// for the reply's trip back and for clock reading errors.
    pub(crate) fn deadline_arg(&self, start: Instant) -> String {
        let anchor = *self.server_clock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(anchor) = anchor else {
            return String::new();
        };
        let half = (self.timeout / 2).as_micros() as u64;
        let at_start = if start >= anchor.at {
            anchor
                .server_us
                .saturating_add(start.duration_since(anchor.at).as_micros() as u64)
        } else {
            anchor
                .server_us
                .saturating_sub(anchor.at.duration_since(start).as_micros() as u64)
        };
        at_start.saturating_add(half).to_string()
    }

    /// True when the server's clock has not been read yet or the reading is older than
    /// [`CLOCK_REFRESH`].
    fn clock_stale(&self) -> bool {
        let anchor = *self.server_clock.lock().unwrap_or_else(|p| p.into_inner());
        anchor.is_none_or(|a| a.at.elapsed() >= CLOCK_REFRESH)
    }

    /// Reads the server's clock (`TIME`) on `conn` and keeps the reading. A failure (a
    /// server that forbids `TIME`, an outage) keeps the previous reading.
    async fn read_clock(&self, conn: &mut Conn) {
        let reply = conn.query(&redis::cmd("TIME")).await;
        let at = Instant::now();
        if let Ok(redis::Value::Array(parts)) = reply {
            let field = |i: usize| match parts.get(i) {
                Some(redis::Value::BulkString(b)) => {
                    std::str::from_utf8(b).ok()?.parse::<u64>().ok()
                }
                Some(redis::Value::Int(n)) => u64::try_from(*n).ok(),
                _ => None,
            };
            if let (Some(secs), Some(us)) = (field(0), field(1)) {
                let server_us = secs.saturating_mul(1_000_000).saturating_add(us);
                *self.server_clock.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Anchor { at, server_us });
            }
        }
    }

    /// The connection for a script call: reads the server's clock first when the reading is
    /// missing (so the call carries a deadline) and renews a stale one in the background.
    pub(crate) async fn conn_for_call(self: &std::sync::Arc<Self>) -> Result<Conn, Error> {
        let mut conn = self.conn().await?;
        if self.clock_stale() {
            let first = self
                .server_clock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none();
            if first {
                self.read_clock(&mut conn).await;
            } else {
                // renew at most once per period: mark the reading fresh-ish by taking it now
                let this = std::sync::Arc::clone(self);
                let mut c = conn.clone();
                {
                    let mut guard = self.server_clock.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(a) = guard.as_mut() {
                        // keep the estimate, postpone the next renewal by one period
                        let elapsed = a.at.elapsed();
                        a.server_us = a.server_us.saturating_add(elapsed.as_micros() as u64);
                        a.at += elapsed;
                    }
                }
                self.handle
                    .spawn(async move { this.read_clock(&mut c).await });
            }
        }
        Ok(conn)
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The connection, opened on first use (so a store can be built while Redis is down). On a
    /// Cluster, the current one: it is replaced when calls keep failing (`conn/cluster.rs`).
    pub(crate) async fn conn(&self) -> Result<Conn, Error> {
        let client = match &self.target {
            Target::Cluster(cluster) => {
                return match cluster.get().await {
                    Ok(conn) => Ok(Conn::Cluster(conn)),
                    Err(e) => Err(redis_failure("cannot connect", &e)),
                };
            }
            Target::Standalone(client) => client,
        };
        let conn = self
            .conn
            .get_or_try_init(|| async {
                // One connection attempt per (re)connect, no backoff of its own: a refused
                // connection is reported as refused at once instead of as a timeout after
                // retries, and the failure policy's circuit breaker paces the next attempts.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(0);
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(Conn::Standalone)
            })
            .await
            .map_err(|e| redis_failure("cannot connect", &e))?;
        Ok(conn.clone())
    }

    /// What watches the calls' outcomes: on a Cluster, its connection (rebuilt on the store's
    /// runtime when calls keep failing).
    fn watch(&self) -> Option<(Arc<ClusterConn>, tokio::runtime::Handle)> {
        match &self.target {
            Target::Cluster(cluster) => Some((Arc::clone(cluster), self.handle.clone())),
            Target::Standalone(_) => None,
        }
    }

    /// Runs `fut` on the store's runtime with the call timeout, and waits for it without
    /// needing the caller to have a runtime.
    pub(crate) fn block_on<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let call = with_timeout(self.timeout, fut, self.watch());
        self.handle.spawn(async move {
            let _ = tx.send(call.await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(store_error("the store's runtime has shut down")))
    }

    /// Runs `fut` with the call timeout on the caller's executor, polled *inside the store's
    /// runtime context*: timers and any task the connection spawns (e.g. a reconnect) belong to
    /// the store's runtime, so the returned future can be awaited on any executor, and no
    /// thread hop is added to the round trip.
    pub(crate) fn spawn<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> impl Future<Output = Result<T, Error>> + Send + 'static {
        InStoreRuntime {
            handle: self.handle.clone(),
            fut: Box::pin(with_timeout(self.timeout, fut, self.watch())),
        }
    }
}

/// A future polled with the store's runtime entered (see [`Shared::spawn`]).
struct InStoreRuntime<T> {
    handle: tokio::runtime::Handle,
    fut: std::pin::Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>,
}

impl<T> Future for InStoreRuntime<T> {
    type Output = Result<T, Error>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let _runtime = this.handle.enter();
        this.fut.as_mut().poll(cx)
    }
}

/// `fut` bounded by the call timeout; its outcome shown to `watch` (a Cluster connection, which
/// may start a rebuild on `handle`).
async fn with_timeout<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, Error>>,
    watch: Option<(Arc<ClusterConn>, tokio::runtime::Handle)>,
) -> Result<T, Error> {
    let result = match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(Error::Store(StoreError::timeout("redis", timeout))),
    };
    if let Some((cluster, handle)) = watch {
        if cluster.observe(&result) {
            handle.spawn(cluster.rebuild());
        }
    }
    result
}

impl Conn {
    /// Sends an `EVALSHA` of `script`; on `NOSCRIPT` (after `SCRIPT FLUSH`, a restart or a
    /// failover) loads the script and sends it again.
    pub(crate) async fn evalsha(
        &mut self,
        script: &redis::Script,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<redis::Value> {
        match self.query(cmd).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                tracing::debug!(
                    "NOSCRIPT: loading the tollgate script {}",
                    script.get_hash()
                );
                match self {
                    Conn::Standalone(c) => script.load_async(c).await?,
                    Conn::Cluster(c) => script.load_async(c).await?,
                };
                self.query(cmd).await
            }
            other => other,
        }
    }

    /// Runs a script invocation (`EVALSHA`, reloading on `NOSCRIPT`); used by the semaphore.
    pub(crate) async fn invoke(
        &mut self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<redis::Value> {
        match self {
            Conn::Standalone(c) => invocation.invoke_async(c).await,
            Conn::Cluster(c) => invocation.invoke_async(c).await,
        }
    }

    /// `PING`.
    pub(crate) async fn ping(&mut self) -> redis::RedisResult<()> {
        self.query(&redis::cmd("PING")).await.map(|_| ())
    }

    async fn query(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            Conn::Standalone(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// An `EVALSHA` command of `script` with `keys` and `args`.
pub(crate) fn evalsha_cmd<'a>(
    script: &redis::Script,
    keys: &[String],
    args: impl IntoIterator<Item = &'a str>,
) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    for a in args {
        cmd.arg(a);
    }
    cmd
}
