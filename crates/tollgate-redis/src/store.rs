//! [`RedisStore`], its builder, and the bound [`RedisBackend`].

use crate::cache::DenialCache;
use crate::conn::{evalsha_cmd, protocol_error, redis_failure, store_error, Shared, Target};
use crate::scripts;
use futures_util::future::BoxFuture;
use redis::Value;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::algorithm::CompiledPolicy;
use tollgate::keys::{cluster_slot, KeyBuilder, DEFAULT_MAX_STORED_KEY_LEN};
use tollgate::store::{Backend, Op, Store};
use tollgate::time::Micros;
use tollgate::{Algorithm, Decision, Error, Policy, StoreError};

/// Whose clock decides.
///
/// ```
/// assert_eq!(tollgate_redis::TimeSource::default(), tollgate_redis::TimeSource::Server);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeSource {
    /// The Redis server's clock (`TIME` inside the script): every host of a fleet agrees,
    /// however skewed their own clocks are. The `now` handed to the backend is ignored.
    #[default]
    Server,
    /// The caller's clock (the limiter's `Clock`): for deterministic tests, for replicas, and
    /// for serverless Redis offerings that forbid `TIME` in scripts. Every host must then
    /// keep its clock in sync.
    Caller,
}

/// Configures a [`RedisStore`].
///
/// ```
/// use std::time::Duration;
/// use tollgate_redis::RedisStore;
/// let store = RedisStore::builder()
///     .url("redis://127.0.0.1:6379/")
///     .namespace("myapp")
///     .hmac_secret(b"keep-me-out-of-git")
///     .timeout(Duration::from_millis(200))
///     .denial_cache(100_000)
///     .build()
///     .unwrap(); // connects lazily: Redis need not be up yet
/// # drop(store);
/// ```
#[must_use = "call build()"]
pub struct RedisStoreBuilder {
    urls: Vec<String>,
    cluster: bool,
    namespace: String,
    secret: Option<Vec<u8>>,
    max_key_len: usize,
    timeout: Duration,
    time: TimeSource,
    expiry_margin: Option<Duration>,
    denial_cache: Option<usize>,
    threads: usize,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("urls", &self.urls)
            .field("cluster", &self.cluster)
            .field("namespace", &self.namespace)
            .field("hmac", &self.secret.is_some())
            .field("timeout", &self.timeout)
            .field("time", &self.time)
            .finish_non_exhaustive()
    }
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        RedisStoreBuilder {
            urls: Vec::new(),
            cluster: false,
            namespace: "tollgate".into(),
            secret: None,
            max_key_len: DEFAULT_MAX_STORED_KEY_LEN,
            timeout: Duration::from_secs(1),
            time: TimeSource::Server,
            expiry_margin: None,
            denial_cache: None,
            threads: 2,
        }
    }
}

impl RedisStoreBuilder {
    /// A standalone Redis/Valkey server (`redis://[user:pass@]host:port/db`, `rediss://` for
    /// TLS is not compiled in).
    ///
    /// ```
    /// let b = tollgate_redis::RedisStore::builder().url("redis://127.0.0.1:6379/");
    /// # let _ = b;
    /// ```
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.urls = vec![url.into()];
        self.cluster = false;
        self
    }

    /// A Redis Cluster, from one or more of its nodes (the others are discovered).
    ///
    /// ```
    /// let b = tollgate_redis::RedisStore::builder()
    ///     .cluster(["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"]);
    /// # let _ = b;
    /// ```
    pub fn cluster<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.urls = nodes.into_iter().map(Into::into).collect();
        self.cluster = true;
        self
    }

    /// The prefix of every key (default `tollgate`); must not contain `{` or `}`.
    ///
    /// ```
    /// let b = tollgate_redis::RedisStore::builder().namespace("shop:rl");
    /// # let _ = b;
    /// ```
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Hashes every user key with HMAC-SHA256 under `secret`: Redis never sees the raw
    /// identity (see `tollgate::keys`).
    ///
    /// ```
    /// let b = tollgate_redis::RedisStore::builder().hmac_secret("s3cr3t");
    /// # let _ = b;
    /// ```
    pub fn hmac_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(secret.as_ref().to_vec());
        self
    }

    /// The longest stored key (namespace, scope and user key together) in bytes; longer keys
    /// are rejected with `Error::KeyTooLong` (default 1024).
    ///
    /// ```
    /// let b = tollgate_redis::RedisStore::builder().max_key_len(256);
    /// # let _ = b;
    /// ```
    pub fn max_key_len(mut self, max: usize) -> Self {
        self.max_key_len = max;
        self
    }

    /// The timeout of every store call, connecting included (default 1 s). An expired call
    /// is `Error::Store` with `timeout == true`.
    ///
    /// ```
    /// let b = tollgate_redis::RedisStore::builder().timeout(std::time::Duration::from_millis(100));
    /// # let _ = b;
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whose clock decides (default: the server's).
    ///
    /// ```
    /// let b = tollgate_redis::RedisStore::builder().time_source(tollgate_redis::TimeSource::Caller);
    /// # let _ = b;
    /// ```
    pub fn time_source(mut self, time: TimeSource) -> Self {
        self.time = time;
        self
    }

    /// Extra time added to every key's expiry beyond its horizon. Default: 0 with the
    /// server clock (expiry and decisions use the same clock); 1 s with the caller's clock,
    /// whose time may run behind the server's.
    ///
    /// ```
    /// let b = tollgate_redis::RedisStore::builder().expiry_margin(std::time::Duration::from_secs(5));
    /// # let _ = b;
    /// ```
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.expiry_margin = Some(margin);
        self
    }

    /// Enables the local denial cache with room for `max_entries` keys per bound policy:
    /// once Redis denies a key with a `retry_after`, the same or a larger cost on that key is
    /// denied locally until then. See the crate docs for its accuracy.
    ///
    /// ```
    /// let b = tollgate_redis::RedisStore::builder().denial_cache(50_000);
    /// # let _ = b;
    /// ```
    pub fn denial_cache(mut self, max_entries: usize) -> Self {
        self.denial_cache = Some(max_entries);
        self
    }

    /// Worker threads of the store's own runtime (default 2).
    ///
    /// ```
    /// let b = tollgate_redis::RedisStore::builder().runtime_threads(1);
    /// # let _ = b;
    /// ```
    pub fn runtime_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Builds the store. Nothing is connected yet: the first call connects (and a later
    /// call retries if Redis was down), so an application can start while Redis is down and
    /// its failure policy applies from the first call.
    ///
    /// ```
    /// use tollgate_redis::RedisStore;
    /// assert!(RedisStore::builder().build().is_err()); // no URL
    /// assert!(RedisStore::builder().url("not a url").build().is_err());
    /// ```
    pub fn build(self) -> Result<RedisStore, Error> {
        let invalid = |m: String| Error::Store(StoreError::new("redis", m));
        if self.urls.is_empty() {
            return Err(invalid("no Redis URL configured".into()));
        }
        let mut keys = KeyBuilder::new(self.namespace.clone())
            .map_err(|e| invalid(e.to_string()))?
            .max_len(self.max_key_len);
        if let Some(secret) = &self.secret {
            keys = keys
                .hmac_secret(secret)
                .map_err(|e| invalid(e.to_string()))?;
        }
        let target = if self.cluster {
            let client = redis::cluster::ClusterClient::builder(self.urls.clone())
                .connection_timeout(self.timeout)
                .response_timeout(self.timeout)
                .build()
                .map_err(|e| invalid(format!("bad cluster URLs: {e}")))?;
            Target::Cluster(Box::new(client))
        } else {
            let client = redis::Client::open(self.urls[0].as_str())
                .map_err(|e| invalid(format!("bad URL {:?}: {e}", self.urls[0])))?;
            Target::Standalone(client)
        };
        let margin = self.expiry_margin.unwrap_or(match self.time {
            TimeSource::Server => Duration::ZERO,
            TimeSource::Caller => Duration::from_secs(1),
        });
        let shared = Shared::new(target, self.timeout, self.threads)?;
        Ok(RedisStore {
            shared: Arc::new(shared),
            config: Arc::new(Config {
                keys,
                time: self.time,
                margin_ms: margin.as_millis().to_string(),
                denial_cache: self.denial_cache,
                origin: Instant::now(),
            }),
            scope: None,
        })
    }
}

struct Config {
    keys: KeyBuilder,
    time: TimeSource,
    margin_ms: String,
    denial_cache: Option<usize>,
    origin: Instant,
}

/// A Redis / Valkey store (standalone or Cluster) for `tollgate` limiters. Cloning is cheap;
/// clones share the connection and the runtime.
///
/// ```no_run
/// use tollgate::{Limiter, Policy, Rate};
/// use tollgate_redis::RedisStore;
/// let store = RedisStore::open("redis://127.0.0.1:6379/").unwrap();
/// let limiter = Limiter::builder(Policy::gcra(Rate::per_second(5).unwrap()).unwrap())
///     .build_with(&store.scope("api"))
///     .unwrap();
/// let decision = limiter.check("user:42").unwrap();
/// println!("allowed={} remaining={}", decision.allowed, decision.remaining);
/// ```
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
    config: Arc<Config>,
    scope: Option<String>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.shared.is_cluster())
            .field("namespace", &self.config.keys.namespace())
            .field("time", &self.config.time)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A builder.
    ///
    /// ```
    /// let b = tollgate_redis::RedisStore::builder();
    /// # let _ = b;
    /// ```
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }

    /// A standalone store with the defaults (server clock, namespace `tollgate`, 1 s timeout).
    ///
    /// ```
    /// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// # drop(store);
    /// ```
    pub fn open(url: &str) -> Result<RedisStore, Error> {
        Self::builder().url(url).build()
    }

    /// A Cluster store with the defaults, from one or more nodes.
    ///
    /// ```
    /// let store = tollgate_redis::RedisStore::open_cluster(["redis://127.0.0.1:7000/"]).unwrap();
    /// # drop(store);
    /// ```
    pub fn open_cluster<I, S>(nodes: I) -> Result<RedisStore, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder().cluster(nodes).build()
    }

    /// The same store, binding limiters under the name `scope`: their keys are
    /// `<namespace>:<scope>:<user key>`. Without a scope a limiter's keys are scoped by its
    /// algorithm and a hash of its policy (`<namespace>:gcra-1a2b3c4d:<key>`), so two
    /// different policies never share state, but changing a policy starts every key fresh;
    /// name the scope to keep state across policy changes of the same algorithm.
    ///
    /// ```
    /// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// let login = store.scope("login");
    /// # drop(login);
    /// ```
    pub fn scope(&self, scope: impl Into<String>) -> RedisStore {
        RedisStore {
            scope: Some(scope.into()),
            ..self.clone()
        }
    }

    /// True for a Cluster store.
    ///
    /// ```
    /// assert!(!tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap().is_cluster());
    /// ```
    pub fn is_cluster(&self) -> bool {
        self.shared.is_cluster()
    }

    /// The clock in use.
    ///
    /// ```
    /// let s = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// assert_eq!(s.time_source(), tollgate_redis::TimeSource::Server);
    /// ```
    pub fn time_source(&self) -> TimeSource {
        self.config.time
    }

    /// Sends `PING` (on Cluster: to a node the client picks) with the store's timeout: the
    /// readiness check of a service. A failure is a `StoreError` of the right kind
    /// (refused, timeout, auth…).
    ///
    /// ```no_run
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// match store.ping().await {
    ///     Ok(()) => println!("ready"),
    ///     Err(e) => println!("not ready: {e} ({})", e.kind),
    /// }
    /// # });
    /// ```
    pub async fn ping(&self) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        let call = async move {
            let mut conn = shared.conn().await?;
            conn.ping()
                .await
                .map_err(|e| crate::conn::redis_failure("PING failed", &e))
        };
        match self.shared.spawn(call).await {
            Ok(()) => Ok(()),
            Err(Error::Store(e)) => Err(e),
            Err(other) => Err(StoreError::new("redis", other.to_string())),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The `now` argument of a script: the caller's µs, or '' for the server clock.
    pub(crate) fn now_arg(&self, now: Micros) -> String {
        match self.config.time {
            TimeSource::Server => String::new(),
            TimeSource::Caller => now.to_string(),
        }
    }

    pub(crate) fn margin_arg(&self) -> &str {
        &self.config.margin_ms
    }

    /// The local time of the denial cache: the caller's clock when it decides, else a
    /// monotonic clock of this process.
    fn local_now(&self, now: Micros) -> Micros {
        match self.config.time {
            TimeSource::Caller => now,
            TimeSource::Server => self.config.origin.elapsed().as_micros() as Micros,
        }
    }
}

impl Store for RedisStore {
    type Backend = RedisBackend;

    /// Binds a policy: compiles its parameters once; connects nothing.
    fn bind(&self, policy: &Policy) -> Result<RedisBackend, Error> {
        let algorithm = policy.algorithm();
        let scope = match &self.scope {
            Some(s) => s.clone(),
            None => tollgate::store::default_scope(policy),
        };
        let keys = self
            .config
            .keys
            .scoped(&scope)
            .map_err(|e| Error::InvalidKey {
                reason: e.to_string(),
            })?;
        // Every rate's parameters in the layout the scripts read (defined once, by
        // `RateAlgorithm::script_params`), after the rate count.
        let compiled = CompiledPolicy::new(policy);
        let rows = compiled.script_params();
        let mut params = vec![rows.len().to_string()];
        for row in &rows {
            params.extend(row.iter().map(u64::to_string));
        }
        let capacities = compiled.capacities();
        Ok(RedisBackend {
            inner: Arc::new(BackendInner {
                store: self.clone(),
                algorithm,
                keys,
                params,
                capacities,
                cache: self.config.denial_cache.map(DenialCache::new),
            }),
        })
    }
}

/// A [`RedisStore`] bound to one policy: the `Backend` of a `tollgate::Limiter`. Cloning is
/// cheap.
///
/// ```no_run
/// use tollgate::{Policy, Rate, store::{Backend, Op, Store}};
/// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
/// let backend = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
/// let d = backend.execute("k", Op::Check(1), 0).unwrap().unwrap();
/// assert!(d.allowed);
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<BackendInner>,
}

pub(crate) struct BackendInner {
    pub(crate) store: RedisStore,
    pub(crate) algorithm: Algorithm,
    keys: KeyBuilder,
    /// `n` then every rate's parameters, as script arguments.
    pub(crate) params: Vec<String>,
    capacities: Vec<u64>,
    cache: Option<DenialCache>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("algorithm", &self.inner.algorithm)
            .field("namespace", &self.inner.keys.namespace())
            .finish_non_exhaustive()
    }
}

/// A prepared call, owned, so it can run on the store's runtime: the script's arguments
/// before (`head`) and after (`params`) the deadline, which is set when the call is sent.
struct Call {
    key: String,
    head: [String; 4],
    started: Instant,
    backend: Arc<BackendInner>,
    wants_decision: bool,
}

impl RedisBackend {
    /// The Redis key that holds `user_key`'s state (namespace, scope, optional HMAC).
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::Store};
    /// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// let backend = store.scope("api").bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// assert_eq!(backend.redis_key("alice").unwrap(), "tollgate:api:alice");
    /// assert_eq!(backend.redis_key("{t1}:alice").unwrap(), "tollgate:api:{t1}:alice");
    /// ```
    pub fn redis_key(&self, user_key: &str) -> Result<String, Error> {
        self.inner.keys.build(user_key)
    }

    /// The store this backend belongs to.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::Store};
    /// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// let backend = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// assert!(!backend.store().is_cluster());
    /// ```
    pub fn store(&self) -> &RedisStore {
        &self.inner.store
    }

    /// The number of keys currently held by the local denial cache (0 when disabled).
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::Store};
    /// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// let backend = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// assert_eq!(backend.cached_denials(), 0);
    /// ```
    pub fn cached_denials(&self) -> usize {
        self.inner.cache.as_ref().map_or(0, DenialCache::len)
    }

    pub(crate) fn inner(&self) -> &BackendInner {
        &self.inner
    }

    /// Checks a cost against every rate's capacity, in policy order, like the algorithms.
    pub(crate) fn check_cost(&self, cost: u64) -> Result<(), Error> {
        if cost == 0 {
            return Err(Error::InvalidCost);
        }
        if let Some(&capacity) = self.inner.capacities.iter().find(|&&c| cost > c) {
            return Err(Error::CostExceedsCapacity { cost, capacity });
        }
        Ok(())
    }

    /// Validates and prepares `op`, or answers it from the denial cache.
    fn prepare(&self, key: &str, op: Op, now: Micros) -> Result<Result<Call, Decision>, Error> {
        let inner = &self.inner;
        let (code, amount) = match op {
            Op::Check(cost) => {
                self.check_cost(cost)?;
                ("c", cost)
            }
            Op::Peek(cost) => {
                self.check_cost(cost)?;
                ("p", cost)
            }
            Op::Refund(0) => return Err(Error::InvalidCost),
            Op::Refund(amount) => ("r", amount),
            Op::Reset => ("x", 0),
            _ => return Err(store_error(format!("unsupported operation {op:?}"))),
        };
        let redis_key = inner.keys.build(key)?;
        if let Some(cache) = &inner.cache {
            match op {
                Op::Check(cost) | Op::Peek(cost) => {
                    if let Some(d) = cache.get(&redis_key, cost, inner.store.local_now(now)) {
                        return Ok(Err(d));
                    }
                }
                _ => cache.remove(&redis_key),
            }
        }
        let head = [
            code.to_string(),
            inner.store.now_arg(now),
            amount.to_string(),
            inner.store.margin_arg().to_string(),
        ];
        Ok(Ok(Call {
            key: redis_key,
            head,
            started: Instant::now(),
            backend: Arc::clone(inner),
            wants_decision: matches!(op, Op::Check(_) | Op::Peek(_)),
        }))
    }

    /// Records a decision in the denial cache.
    fn remember(&self, key: &str, op: Op, now: Micros, decision: &Decision) {
        if let (Some(cache), Some(cost)) = (&self.inner.cache, op.cost()) {
            if decision.allowed {
                cache.remove(key);
            } else {
                cache.insert(key, cost, decision, self.inner.store.local_now(now));
            }
        }
    }

    fn finish(
        &self,
        op: Op,
        now: Micros,
        key: &str,
        reply: Value,
        wants_decision: bool,
    ) -> Result<Option<Decision>, Error> {
        if reply == Value::Int(LATE) {
            return Err(late_error(self.inner.store.shared().timeout));
        }
        if !wants_decision {
            return Ok(None);
        }
        let fields = integers(&reply)?;
        let decision = decision_from(&fields)?;
        self.remember(key, op, now, &decision);
        Ok(Some(decision))
    }
}

/// The reply of a script that reached Redis after its call's deadline and changed nothing
/// (`LATE` in `lua/prelude.lua`).
pub(crate) const LATE: i64 = -1;

/// The error of a call whose script came too late to run: a timeout, like the client's own.
pub(crate) fn late_error(timeout: Duration) -> Error {
    Error::Store(StoreError::with_kind(
        "redis",
        tollgate::StoreErrorKind::Timeout,
        format!(
            "timed out: the call reached Redis more than {:?} (half the store timeout) after \
             it started, so it was not run and charged nothing",
            timeout / 2
        ),
    ))
}

/// The `EVALSHA` of `call` with its deadline argument.
fn call_cmd(call: &Call, script: &redis::Script, deadline: &str) -> redis::Cmd {
    evalsha_cmd(
        script,
        std::slice::from_ref(&call.key),
        call.head
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(deadline))
            .chain(call.backend.params.iter().map(String::as_str)),
    )
}

async fn run(shared: Arc<Shared>, call: Call) -> Result<(String, Value), Error> {
    let mut conn = shared.conn_for_call().await?;
    let deadline = shared.deadline_arg(call.started);
    let script = scripts::single_script(call.backend.algorithm);
    let cmd = call_cmd(&call, script, &deadline);
    let reply = conn
        .evalsha(script, &cmd)
        .await
        .map_err(|e| redis_failure("script call failed", &e))?;
    Ok((call.key, reply))
}

impl Backend for RedisBackend {
    fn execute(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        let call = match self.prepare(key, op, now)? {
            Ok(call) => call,
            Err(cached) => return Ok(Some(cached)),
        };
        let wants = call.wants_decision;
        let shared = self.inner.store.shared();
        // On the calling thread when it can (standalone): no hand-off to the runtime thread.
        let script = scripts::single_script(call.backend.algorithm);
        if let Some(reply) =
            shared.evalsha_blocking(script, call.started, |d| call_cmd(&call, script, d))
        {
            return self.finish(op, now, &call.key, reply?, wants);
        }
        let (redis_key, reply) = shared.block_on(run(Arc::clone(shared), call))?;
        self.finish(op, now, &redis_key, reply, wants)
    }

    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(async move {
            let call = match self.prepare(key, op, now)? {
                Ok(call) => call,
                Err(cached) => return Ok(Some(cached)),
            };
            let wants = call.wants_decision;
            let shared = Arc::clone(self.inner.store.shared());
            let (redis_key, reply) = self.inner.store.shared().spawn(run(shared, call)).await?;
            self.finish(op, now, &redis_key, reply, wants)
        })
    }
}

/// The integers of a script's array reply.
pub(crate) fn integers(reply: &Value) -> Result<Vec<i64>, Error> {
    match reply {
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::Int(i) => Ok(*i),
                other => Err(protocol_error(format!(
                    "unexpected script reply item {other:?}"
                ))),
            })
            .collect(),
        other => Err(protocol_error(format!("unexpected script reply {other:?}"))),
    }
}

/// A decision from the 6 fields a script returns.
pub(crate) fn decision_from(f: &[i64]) -> Result<Decision, Error> {
    if f.len() < 6 || f[1..5].iter().any(|&v| v < 0) {
        return Err(protocol_error(format!("malformed decision {f:?}")));
    }
    Ok(Decision::from_parts(
        f[0] == 1,
        f[1] as u64,
        f[2] as u64,
        f[3] as u64,
        f[4] as u64,
        (f[5] >= 0).then_some(f[5] as usize),
    ))
}

/// The Cluster slot check of a multi-key call: `Ok` when every key is in one slot.
pub(crate) fn same_slot(keys: &[String]) -> Result<(), Error> {
    let Some(first) = keys.first() else {
        return Ok(());
    };
    let slot = cluster_slot(first);
    if let Some(other) = keys.iter().find(|k| cluster_slot(k) != slot) {
        return Err(Error::InvalidKey {
            reason: format!(
                "keys {first:?} (slot {slot}) and {other:?} (slot {}) are in different Redis \
                 Cluster slots and cannot be checked atomically; start every user key of the \
                 call with the same hash tag, e.g. \"{{tenant-7}}:user:42\" and \
                 \"{{tenant-7}}:ip:203.0.113.7\"",
                cluster_slot(other)
            ),
        });
    }
    Ok(())
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync + 'static>() {}
    is::<RedisBackend>();
    is::<RedisStore>();
    let _ = StoreError::new("redis", "");
}
