//! [`RedisStore`]: a Redis / Valkey store (standalone or Cluster), its clock and its
//! binding to a policy. The builder is in `builder.rs`, the bound [`RedisBackend`] in
//! `backend.rs`, the parsing of script replies in `reply.rs`.

mod backend;
mod builder;
mod reply;

pub use backend::RedisBackend;
pub(crate) use backend::{late_error, BackendInner, LATE};
pub use builder::RedisStoreBuilder;
pub(crate) use reply::{decision_from, integers, same_slot};

use crate::cache::DenialCache;
use crate::conn::Shared;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;
use tollgate::algorithm::CompiledPolicy;
use tollgate::keys::KeyBuilder;
use tollgate::store::Store;
use tollgate::time::Micros;
use tollgate::{Error, Policy, StoreError};

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

pub(crate) struct Config {
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

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync + 'static>() {}
    is::<RedisBackend>();
    is::<RedisStore>();
    let _ = StoreError::new("redis", "");
}
