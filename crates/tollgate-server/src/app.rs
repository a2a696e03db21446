//! The shared state behind both endpoints: policies bound to the store, key mapping, the
//! failure policy, metrics.
//!
//! On Redis every store call goes through the library's failure policy
//! (`tollgate::store::failure::FailSafe`, `FailSafeSemaphore`) with one circuit breaker for
//! the store: after `breaker_failures` consecutive failures calls are answered by the failure
//! policy at once, without waiting out the store timeout, until a probe succeeds.
//! [`App::readiness`] tells whether the store answers.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use tollgate_server::{app::App, config::Config};
//! let mut config = Config::default();
//! config.add_policy("api", None, "2/s", None, |f| f.to_string()).unwrap();
//! let app = App::new(&config, None).unwrap();
//! let api = app.named("api").unwrap();
//! let d = app.check(&api, "user-1", 1).await.unwrap();
//! assert!(d.decision.allowed);
//! assert_eq!(d.decision.remaining, 1);
//! # });
//! ```

mod decide;
mod entry;
mod multi;
mod semaphores;
mod store;

pub use entry::{push_rate_limit_field, quota_windows, rate_limit_field, PolicyEntry};
pub use multi::{MultiItem, MultiOutcome};
pub use semaphores::{SemAcquire, MAX_SEMAPHORE_WAIT};
pub use store::Readiness;
use store::{KeyMapper, RedisFactory, StoreFactory};

pub use crate::config::SemaphoreSpec;
use crate::config::{Config, FailurePolicy, StoreUrl};
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::RwLock;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::hooks::Hook;
use tollgate::keys::KeyBuilder;
use tollgate::semaphore::{
    FailSafeSemaphore, MemorySemaphoreBackend, SemaphoreBackend, SemaphoreError,
};
use tollgate::store::failure::{BreakerState, CircuitBreaker, FailSafe};
use tollgate::store::memory::MemoryStore;
use tollgate::store::multi::DynMultiBackend;
use tollgate::store::{Backend, Op, Store};
use tollgate::{Decision, Error, Limiter, Policy, StoreError};
use tollgate_redis::{RedisSemaphoreBackend, RedisStore};

/// A failed request, with the class that decides the HTTP status / RESP error prefix.
///
/// ```
/// let e = tollgate_server::app::AppError::BadRequest("key is empty".into());
/// assert_eq!(e.to_string(), "key is empty");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// Invalid input (HTTP 400, RESP `ERR`).
    #[error("{0}")]
    BadRequest(String),
    /// No such named policy (HTTP 404, RESP `ERR`).
    #[error("unknown policy {0:?}")]
    UnknownPolicy(String),
    /// No such semaphore (HTTP 404, RESP `ERR`).
    ///
    /// ```
    /// let e = tollgate_server::app::AppError::UnknownSemaphore("db".into());
    /// assert_eq!(e.to_string(), "unknown semaphore \"db\"");
    /// ```
    #[error("unknown semaphore {0:?}")]
    UnknownSemaphore(String),
    /// Too many distinct inline policies / CL.THROTTLE parameter sets (HTTP 429-free 400).
    #[error("too many distinct inline policies or CL.THROTTLE parameter sets (the limit is {0}); configure named policies instead")]
    TooManyPolicies(usize),
    /// The store failed and the failure policy is `error` (HTTP 503, RESP `STOREERR`).
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// The feature is not available in this build or configuration (HTTP 501).
    #[error("{0}")]
    NotAvailable(String),
}

/// The result of a check or peek.
///
/// ```
/// let o = tollgate_server::app::Outcome { decision: tollgate::Decision::fail_open(5), store_error: None };
/// assert!(o.decision.allowed);
/// ```
#[derive(Clone, Debug)]
#[must_use = "an Outcome says whether the request may proceed"]
pub struct Outcome {
    /// The decision.
    pub decision: Decision,
    /// Set when the store failed and the failure policy (open, closed, local) decided.
    pub store_error: Option<String>,
}

/// CL.THROTTLE parameters: `(max_burst, count, period)`.
type CellParams = (u64, u64, u64);

/// The server's state, shared by every connection.
pub struct App {
    store_url: StoreUrl,
    store: StoreFactory,
    semaphores: Arc<dyn SemaphoreBackend>,
    semaphore_specs: BTreeMap<String, SemaphoreSpec>,
    is_memory: bool,
    keys: KeyMapper,
    failure: FailurePolicy,
    max_key_len: usize,
    max_dynamic: usize,
    /// Inline policies and CL.THROTTLE parameter sets kept, together (`max_dynamic` at most).
    dynamic: std::sync::atomic::AtomicUsize,
    named: BTreeMap<String, Arc<PolicyEntry>>,
    inline: RwLock<HashMap<String, Arc<PolicyEntry>>>,
    cell: RwLock<HashMap<CellParams, Arc<PolicyEntry>>>,
    store_errors: crate::errlog::StoreErrors,
    store_up: Gauge,
    metrics: Option<PrometheusHandle>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("store", &self.store_url)
            .field("policies", &self.named.keys())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds the state: binds every named policy to the store. `metrics` renders `/metrics`
    /// (install the recorder *before* calling this so the counters are registered in it).
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert!(app.policy_names().is_empty());
    /// ```
    pub fn new(config: &Config, metrics: Option<PrometheusHandle>) -> Result<App, Error> {
        let invalid = |m: String| Error::Store(tollgate::StoreError::new("config", m));
        let redis = |builder: tollgate_redis::RedisStoreBuilder| {
            let mut builder = builder
                .namespace(config.namespace.clone())
                .timeout(config.store_timeout)
                .max_key_len(config.max_key_len + 256);
            if let Some(secret) = &config.key_secret {
                builder = builder.hmac_secret(secret);
            }
            builder.build()
        };
        let store_up = metrics::gauge!("tollgate_store_up");
        store_up.set(1.0);
        let redis_store = match &config.store {
            StoreUrl::Memory => None,
            StoreUrl::Redis(url) => Some(redis(RedisStore::builder().url(url.clone()))?),
            StoreUrl::RedisCluster(nodes) => {
                Some(redis(RedisStore::builder().cluster(nodes.clone()))?)
            }
        };
        let (store, semaphores): (StoreFactory, Arc<dyn SemaphoreBackend>) = match redis_store {
            None => (
                StoreFactory::Memory(MemoryStore::new().max_keys(config.max_keys)),
                Arc::new(MemorySemaphoreBackend::new()),
            ),
            Some(store) => {
                let breaker = CircuitBreaker::builder("redis")
                    .failures(config.breaker_failures)
                    .cool_down(config.breaker_cool_down)
                    .build();
                let up = store_up.clone();
                let hook = Hook::on_breaker(move |t| {
                    up.set(if t.to == BreakerState::Closed {
                        1.0
                    } else {
                        0.0
                    })
                });
                let sem = FailSafeSemaphore::fail_closed(RedisSemaphoreBackend::new(&store)?)
                    .with_breaker(Arc::clone(&breaker))
                    .hook(hook.clone());
                let factory = RedisFactory {
                    store,
                    breaker,
                    failure: config.failure,
                    hook,
                    fallback: MemoryStore::new().max_keys(config.max_keys),
                    leases: config.leases.clone(),
                };
                (StoreFactory::Redis(Box::new(factory)), Arc::new(sem))
            }
        };
        let is_memory = matches!(config.store, StoreUrl::Memory);
        let hasher = match (&config.key_secret, is_memory) {
            (Some(secret), true) => Some(
                KeyBuilder::new(config.namespace.clone())
                    .and_then(|k| k.hmac_secret(secret))
                    .map_err(|e| invalid(e.to_string()))?,
            ),
            _ => None,
        };
        let keys = KeyMapper { hasher };
        let mut app = App {
            store_url: config.store.clone(),
            store,
            semaphores,
            semaphore_specs: config.semaphores.clone(),
            is_memory,
            keys,
            failure: config.failure,
            max_key_len: config.max_key_len,
            max_dynamic: config.max_dynamic_policies,
            dynamic: std::sync::atomic::AtomicUsize::new(0),
            named: BTreeMap::new(),
            inline: RwLock::new(HashMap::new()),
            cell: RwLock::new(HashMap::new()),
            store_errors: crate::errlog::StoreErrors::new(metrics::counter!(
                "tollgate_server_store_errors_total"
            )),
            store_up,
            metrics,
        };
        for (name, policy) in &config.policies {
            let entry = app.entry(name, Some(name), policy.clone())?;
            app.named.insert(name.clone(), Arc::new(entry));
        }
        Ok(app)
    }

    fn entry(&self, name: &str, scope: Option<&str>, policy: Policy) -> Result<PolicyEntry, Error> {
        let backend = self.store.bind(scope, &policy)?;
        Ok(PolicyEntry::new(name, policy, backend))
    }

    /// A description of the store, without credentials.
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert_eq!(app.store_description(), "memory");
    /// ```
    pub fn store_description(&self) -> String {
        self.store_url.describe()
    }

    /// Whether the store answers now (`/ready`): the memory store always does; Redis is
    /// sent a `PING` through the store's circuit breaker (while the breaker is open it is
    /// not sent, and the cause is the last failure). Sets the `tollgate_store_up` gauge.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert!(app.readiness().await.ready);
    /// # });
    /// ```
    pub async fn readiness(&self) -> Readiness {
        let store = self.store_description();
        let StoreFactory::Redis(f) = &self.store else {
            return Readiness {
                ready: true,
                store,
                breaker: None,
                cause: None,
            };
        };
        let result = f.breaker.call_async(|| f.store.ping()).await;
        self.store_up.set(if result.is_ok() { 1.0 } else { 0.0 });
        Readiness {
            ready: result.is_ok(),
            store,
            breaker: Some(f.breaker.state()),
            cause: result.err(),
        }
    }

    /// The Prometheus text exposition, when a recorder was installed.
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert!(app.render_metrics().is_none());
    /// ```
    pub fn render_metrics(&self) -> Option<String> {
        self.metrics.as_ref().map(PrometheusHandle::render)
    }

    /// The names of the configured policies.
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert_eq!(app.policy_names().len(), 0);
    /// ```
    pub fn policy_names(&self) -> Vec<&str> {
        self.named.keys().map(String::as_str).collect()
    }

    /// Every named policy.
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert_eq!(app.policies().count(), 0);
    /// ```
    pub fn policies(&self) -> impl Iterator<Item = &Arc<PolicyEntry>> {
        self.named.values()
    }

    /// A named policy.
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert!(app.named("nope").is_err());
    /// ```
    pub fn named(&self, name: &str) -> Result<Arc<PolicyEntry>, AppError> {
        self.named
            .get(name)
            .cloned()
            .ok_or_else(|| AppError::UnknownPolicy(name.to_string()))
    }

    /// An inline policy (`algorithm` + `rates` given by the caller), bound on first use and
    /// kept (at most `max_dynamic_policies` of them).
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert!(app.inline(None, "5/s").is_ok());
    /// assert!(app.inline(None, "five per second").is_err());
    /// ```
    pub fn inline(
        &self,
        algorithm: Option<&str>,
        rates: &str,
    ) -> Result<Arc<PolicyEntry>, AppError> {
        let cache_key = format!("{}|{rates}", algorithm.unwrap_or("gcra"));
        if let Some(e) = self.inline.read().get(&cache_key) {
            return Ok(Arc::clone(e));
        }
        let policy = crate::config::parse_policy(algorithm, rates, None)
            .map_err(|m| AppError::BadRequest(format!("rates: {m}")))?;
        let mut map = self.inline.write();
        if let Some(e) = map.get(&cache_key) {
            return Ok(Arc::clone(e));
        }
        self.reserve_dynamic()?;
        let entry = Arc::new(self.entry("inline", None, policy).map_err(|e| {
            self.unreserve_dynamic();
            AppError::StoreUnavailable(e.to_string())
        })?);
        map.insert(cache_key, Arc::clone(&entry));
        Ok(entry)
    }

    /// The GCRA policy of one CL.THROTTLE parameter set: burst `max_burst + 1`, `count` per
    /// `period` seconds.
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// let e = app.cell_policy(15, 30, 60).unwrap();
    /// assert_eq!(e.policy().rates()[0].burst(), 16);
    /// ```
    pub fn cell_policy(
        &self,
        max_burst: u64,
        count: u64,
        period: u64,
    ) -> Result<Arc<PolicyEntry>, AppError> {
        let params = (max_burst, count, period);
        if let Some(e) = self.cell.read().get(&params) {
            return Ok(Arc::clone(e));
        }
        let rate = tollgate::Rate::new(count, Duration::from_secs(period))
            .and_then(|r| r.with_burst(max_burst.saturating_add(1)))
            .map_err(|e| AppError::BadRequest(format!("invalid rate: {e}")))?;
        let policy = Policy::gcra(rate).map_err(|e| AppError::BadRequest(e.to_string()))?;
        let mut map = self.cell.write();
        if let Some(e) = map.get(&params) {
            return Ok(Arc::clone(e));
        }
        self.reserve_dynamic()?;
        let scope = format!("cell-{max_burst}-{count}-{period}");
        let entry = Arc::new(
            self.entry("cl.throttle", Some(&scope), policy)
                .map_err(|e| {
                    self.unreserve_dynamic();
                    AppError::StoreUnavailable(e.to_string())
                })?,
        );
        map.insert(params, Arc::clone(&entry));
        Ok(entry)
    }

    /// Takes one of the `max_dynamic_policies` places, which inline policies and CL.THROTTLE
    /// parameter sets share (one limit for both, not one each).
    fn reserve_dynamic(&self) -> Result<(), AppError> {
        use std::sync::atomic::Ordering;
        self.dynamic
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_dynamic).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| AppError::TooManyPolicies(self.max_dynamic))
    }

    fn unreserve_dynamic(&self) {
        self.dynamic
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn validate_key(&self, key: &str) -> Result<(), AppError> {
        if key.is_empty() {
            return Err(AppError::BadRequest("the key must not be empty".into()));
        }
        if key.len() > self.max_key_len {
            return Err(AppError::BadRequest(format!(
                "the key is {} bytes long; the maximum is {}",
                key.len(),
                self.max_key_len
            )));
        }
        Ok(())
    }
}

fn now_us() -> u64 {
    use tollgate::time::Clock;
    tollgate::time::SystemClock.now()
}

/// What the RLS service (`crate::rls`) needs from the server's state: policies bound for
/// multi-key calls on the configured store, the key mapping and the failure policy.
impl App {
    /// Binds `policy` for multi-key calls (`tollgate::store::multi`) on the configured store,
    /// under the store's default scope for the policy (`tollgate::store::default_scope`).
    ///
    /// ```
    /// use tollgate::store::multi::{execute_all_dyn, KeyCheck, MultiOp};
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// let b = app.bind_multi(&tollgate::Policy::parse(tollgate::Algorithm::FixedWindow, "1/min").unwrap()).unwrap();
    /// assert!(execute_all_dyn(&[KeyCheck::new(&*b, "k", 1)], MultiOp::Check, 0).unwrap().allowed);
    /// assert!(!execute_all_dyn(&[KeyCheck::new(&*b, "k", 1)], MultiOp::Check, 0).unwrap().allowed);
    /// ```
    pub fn bind_multi(&self, policy: &Policy) -> Result<Arc<dyn DynMultiBackend>, Error> {
        self.store.bind_multi(None, policy)
    }

    /// Validates a user key (not empty, at most `max_key_len` bytes) and maps it to the key
    /// given to the store (HMAC-hashed on the memory store when a secret is configured; the
    /// Redis store hashes and namespaces by itself).
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert_eq!(app.store_key("user-1").unwrap(), "user-1");
    /// assert!(app.store_key("").is_err());
    /// ```
    pub fn store_key<'a>(&self, key: &'a str) -> Result<Cow<'a, str>, AppError> {
        self.validate_key(key)?;
        self.keys.map(key)
    }

    /// The configured failure policy (what a store failure becomes).
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert_eq!(app.failure_policy(), tollgate_server::config::FailurePolicy::Error);
    /// ```
    pub fn failure_policy(&self) -> FailurePolicy {
        self.failure
    }

    /// Counts a store error in `tollgate_server_store_errors_total`.
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// app.record_store_error();
    /// ```
    pub fn record_store_error(&self) {
        self.store_errors.increment(1);
    }
}

/// A client-supplied value for an error message: quoted, and cut to its first 64 characters
/// (with the full length said) so an error never reflects a large input back.
///
/// ```
/// assert_eq!(tollgate_server::app::shown("abc"), "\"abc\"");
/// let long = "x".repeat(60_000);
/// let s = tollgate_server::app::shown(&long);
/// assert!(s.len() < 120 && s.ends_with("(60000 bytes)"));
/// ```
pub fn shown(input: &str) -> String {
    const MAX: usize = 64;
    if input.len() <= MAX {
        return format!("{input:?}");
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &input[..end], input.len())
}
