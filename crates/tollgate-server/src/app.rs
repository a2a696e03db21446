//! The shared state behind both endpoints: policies bound to the store, key mapping, the
//! failure policy, metrics.
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

use crate::config::{Config, FailurePolicy, StoreUrl};
use hmac::{Hmac, Mac};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::RwLock;
use sha2::Sha256;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::store::memory::{MemoryBackend, MemoryStore};
use tollgate::store::{Backend, Store};
use tollgate::{Algorithm, Decision, Error, Limiter, Policy};

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

struct PolicyMetrics {
    allowed: Counter,
    denied: Counter,
    errors: Counter,
    latency: Histogram,
}

impl PolicyMetrics {
    fn new(label: &str) -> Self {
        let label = label.to_string();
        PolicyMetrics {
            allowed: metrics::counter!("tollgate_server_decisions_total", "policy" => label.clone(), "outcome" => "allowed"),
            denied: metrics::counter!("tollgate_server_decisions_total", "policy" => label.clone(), "outcome" => "denied"),
            errors: metrics::counter!("tollgate_server_decisions_total", "policy" => label.clone(), "outcome" => "error"),
            latency: metrics::histogram!("tollgate_server_decision_duration_seconds", "policy" => label),
        }
    }
}

/// A policy bound to the store: what both endpoints decide with.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
/// let entry = app.inline(Some("fixed_window"), "3/min").unwrap();
/// assert_eq!(entry.policy().rates()[0].limit(), 3);
/// # });
/// ```
pub struct PolicyEntry {
    name: String,
    scope: String,
    policy: Policy,
    limiter: Limiter<Arc<dyn Backend>>,
    local: Option<Limiter<MemoryBackend>>,
    metrics: PolicyMetrics,
    rate_limit_policy: String,
}

impl std::fmt::Debug for PolicyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEntry")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl PolicyEntry {
    /// The policy's name (`inline` for inline rates, `cl.throttle` for CL.THROTTLE).
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert_eq!(app.inline(None, "1/s").unwrap().name(), "inline");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy.
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert_eq!(app.inline(None, "1/s").unwrap().policy().rates().len(), 1);
    /// ```
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The IETF `RateLimit-Policy` field value for this policy: one item per rate,
    /// `"name";q=<quota>;w=<window seconds>`.
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert_eq!(app.inline(None, "10/s burst 20").unwrap().rate_limit_policy(), "\"inline\";q=20;w=2");
    /// ```
    pub fn rate_limit_policy(&self) -> &str {
        &self.rate_limit_policy
    }
}

/// The quota (`q`) and window in seconds (`w`) of each rate: `q` is the most a fresh key
/// admits at once (the burst for GCRA / token bucket, the limit otherwise) and `w` is how
/// long a fully used key takes to be back to `q` (rounded up to whole seconds, at least 1).
///
/// ```
/// let p = tollgate::Policy::parse(tollgate::Algorithm::Gcra, "10/s burst 20").unwrap();
/// assert_eq!(tollgate_server::app::quota_windows(&p), vec![(20, 2)]);
/// ```
pub fn quota_windows(policy: &Policy) -> Vec<(u64, u64)> {
    policy
        .rates()
        .iter()
        .map(|r| {
            let (q, w_us) = match policy.algorithm() {
                Algorithm::Gcra => (
                    r.burst(),
                    r.period_us().div_ceil(r.limit()).saturating_mul(r.burst()),
                ),
                Algorithm::TokenBucket => (
                    r.burst(),
                    r.burst().div_ceil(r.limit()).saturating_mul(r.period_us()),
                ),
                _ => (r.limit(), r.period_us()),
            };
            (q, w_us.div_ceil(1_000_000).max(1))
        })
        .collect()
}

fn rate_limit_policy_field(name: &str, policy: &Policy) -> String {
    let windows = quota_windows(policy);
    let many = windows.len() > 1;
    windows
        .iter()
        .enumerate()
        .map(|(i, (q, w))| {
            if many {
                format!("\"{name}-{i}\";q={q};w={w}")
            } else {
                format!("\"{name}\";q={q};w={w}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The IETF `RateLimit` field for a decision: `"name";r=<remaining>;t=<seconds>` where `t`
/// is `retry_after` when denied and `reset_after` when allowed (rounded up).
///
/// ```
/// let d = tollgate::Decision::from_parts(false, 5, 0, 1_500_000, 3_000_000, Some(0));
/// assert_eq!(tollgate_server::app::rate_limit_field("api", 1, &d), "\"api\";r=0;t=2");
/// ```
pub fn rate_limit_field(name: &str, rates: usize, decision: &Decision) -> String {
    let item = match (rates > 1, decision.denied_by) {
        (true, Some(i)) => format!("{name}-{i}"),
        _ => name.to_string(),
    };
    let t = if decision.allowed {
        decision.reset_after_secs()
    } else {
        decision.retry_after_secs()
    };
    format!("\"{item}\";r={};t={t}", decision.remaining)
}

/// Where keys go in the store: a namespace and policy scope for shared stores, and optional
/// HMAC-SHA256 hashing so raw identities (IPs, e-mails) never reach the store.
#[derive(Clone)]
struct KeyMapper {
    shared: bool,
    namespace: String,
    secret: Option<Hmac<Sha256>>,
}

impl KeyMapper {
    #[inline]
    fn map<'a>(&self, scope: &str, key: &'a str) -> Cow<'a, str> {
        let key: Cow<'a, str> = match &self.secret {
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(key.as_bytes());
                let digest = mac.finalize().into_bytes();
                let mut hex = String::with_capacity(64);
                for b in digest {
                    hex.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
                    hex.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
                }
                Cow::Owned(hex)
            }
            None => Cow::Borrowed(key),
        };
        if self.shared {
            Cow::Owned(format!("{}:{scope}:{key}", self.namespace))
        } else {
            key
        }
    }
}

/// Binds policies to the configured store.
enum StoreFactory {
    Memory(MemoryStore),
}

impl StoreFactory {
    fn bind(&self, policy: &Policy) -> Result<Arc<dyn Backend>, Error> {
        match self {
            StoreFactory::Memory(store) => Ok(Arc::new(store.bind(policy)?)),
        }
    }
}

/// CL.THROTTLE parameters: `(max_burst, count, period)`.
type CellParams = (u64, u64, u64);

/// The server's state, shared by every connection.
pub struct App {
    store_url: StoreUrl,
    store: StoreFactory,
    is_memory: bool,
    keys: KeyMapper,
    failure: FailurePolicy,
    store_timeout: Duration,
    max_key_len: usize,
    max_dynamic: usize,
    max_keys: usize,
    named: BTreeMap<String, Arc<PolicyEntry>>,
    inline: RwLock<HashMap<String, Arc<PolicyEntry>>>,
    cell: RwLock<HashMap<CellParams, Arc<PolicyEntry>>>,
    store_errors: Counter,
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
        let store = match &config.store {
            StoreUrl::Memory => StoreFactory::Memory(MemoryStore::new().max_keys(config.max_keys)),
            other => {
                return Err(tollgate::StoreError::new(
                    "redis",
                    format!(
                        "{} is not supported by this build yet (the Redis store is not available)",
                        other.describe()
                    ),
                )
                .into())
            }
        };
        let is_memory = matches!(config.store, StoreUrl::Memory);
        let keys = KeyMapper {
            shared: !is_memory,
            namespace: config.namespace.clone(),
            secret: config.key_secret.as_ref().map(|s| {
                Hmac::<Sha256>::new_from_slice(s).expect("HMAC accepts keys of any length")
            }),
        };
        let mut app = App {
            store_url: config.store.clone(),
            store,
            is_memory,
            keys,
            failure: config.failure,
            store_timeout: config.store_timeout,
            max_key_len: config.max_key_len,
            max_dynamic: config.max_dynamic_policies,
            max_keys: config.max_keys,
            named: BTreeMap::new(),
            inline: RwLock::new(HashMap::new()),
            cell: RwLock::new(HashMap::new()),
            store_errors: metrics::counter!("tollgate_server_store_errors_total"),
            metrics,
        };
        for (name, policy) in &config.policies {
            let entry = app.entry(name, &format!("p:{name}"), policy.clone())?;
            app.named.insert(name.clone(), Arc::new(entry));
        }
        Ok(app)
    }

    fn entry(&self, name: &str, scope: &str, policy: Policy) -> Result<PolicyEntry, Error> {
        let backend = self.store.bind(&policy)?;
        let local = (self.failure == FailurePolicy::Local && !self.is_memory).then(|| {
            Limiter::builder(policy.clone())
                .max_key_len(usize::MAX)
                .build_with(&MemoryStore::new().max_keys(self.max_keys))
                .expect("the memory store accepts every valid policy")
        });
        Ok(PolicyEntry {
            name: name.to_string(),
            scope: scope.to_string(),
            rate_limit_policy: rate_limit_policy_field(name, &policy),
            limiter: Limiter::builder(policy.clone())
                .max_key_len(usize::MAX)
                .build_on(backend),
            local,
            metrics: PolicyMetrics::new(name),
            policy,
        })
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
        if map.len() >= self.max_dynamic {
            return Err(AppError::TooManyPolicies(self.max_dynamic));
        }
        let scope = format!("i:{policy}");
        let entry = Arc::new(
            self.entry("inline", &scope, policy)
                .map_err(|e| AppError::StoreUnavailable(e.to_string()))?,
        );
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
        if map.len() >= self.max_dynamic {
            return Err(AppError::TooManyPolicies(self.max_dynamic));
        }
        let scope = format!("cell:{max_burst}:{count}:{period}");
        let entry = Arc::new(
            self.entry("cl.throttle", &scope, policy)
                .map_err(|e| AppError::StoreUnavailable(e.to_string()))?,
        );
        map.insert(params, Arc::clone(&entry));
        Ok(entry)
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

    /// Decides `cost` on `key` and charges it when admitted.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// let p = app.inline(None, "1/s").unwrap();
    /// assert!(app.check(&p, "k", 1).await.unwrap().decision.allowed);
    /// assert!(!app.check(&p, "k", 1).await.unwrap().decision.allowed);
    /// # });
    /// ```
    pub async fn check(
        &self,
        entry: &PolicyEntry,
        key: &str,
        cost: u64,
    ) -> Result<Outcome, AppError> {
        self.decide(entry, key, cost, true).await
    }

    /// The decision `check` would return, charging nothing.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// let p = app.inline(None, "1/s").unwrap();
    /// assert!(app.peek(&p, "k", 1).await.unwrap().decision.allowed);
    /// assert!(app.peek(&p, "k", 1).await.unwrap().decision.allowed);
    /// # });
    /// ```
    pub async fn peek(
        &self,
        entry: &PolicyEntry,
        key: &str,
        cost: u64,
    ) -> Result<Outcome, AppError> {
        self.decide(entry, key, cost, false).await
    }

    async fn decide(
        &self,
        entry: &PolicyEntry,
        key: &str,
        cost: u64,
        charge: bool,
    ) -> Result<Outcome, AppError> {
        self.validate_key(key)?;
        if cost == 0 {
            return Err(AppError::BadRequest("the cost must be at least 1".into()));
        }
        let started = Instant::now();
        let store_key = self.keys.map(&entry.scope, key);
        let result = if self.is_memory {
            // The memory store never blocks: no timeout needed.
            if charge {
                entry.limiter.check_n(&store_key, cost)
            } else {
                entry.limiter.peek(&store_key, cost)
            }
        } else {
            let call = async {
                if charge {
                    entry.limiter.check_n_async(&store_key, cost).await
                } else {
                    entry.limiter.peek_async(&store_key, cost).await
                }
            };
            match tokio::time::timeout(self.store_timeout, call).await {
                Ok(r) => r,
                Err(_) => Err(tollgate::StoreError::timeout("store", self.store_timeout).into()),
            }
        };
        let outcome = match result {
            Ok(decision) => Ok(Outcome {
                decision,
                store_error: None,
            }),
            Err(Error::Store(e)) => {
                self.store_errors.increment(1);
                self.on_store_failure(entry, key, cost, charge, e.to_string())
            }
            Err(e @ (Error::CostExceedsCapacity { .. } | Error::InvalidCost)) => {
                Err(AppError::BadRequest(e.to_string()))
            }
            Err(e) => Err(AppError::BadRequest(e.to_string())),
        };
        entry
            .metrics
            .latency
            .record(started.elapsed().as_secs_f64());
        match &outcome {
            Ok(o) if o.decision.allowed => entry.metrics.allowed.increment(1),
            Ok(_) => entry.metrics.denied.increment(1),
            Err(_) => entry.metrics.errors.increment(1),
        }
        outcome
    }

    fn on_store_failure(
        &self,
        entry: &PolicyEntry,
        key: &str,
        cost: u64,
        charge: bool,
        message: String,
    ) -> Result<Outcome, AppError> {
        let limit = entry.policy.max_cost();
        let decision = match self.failure {
            FailurePolicy::Error => return Err(AppError::StoreUnavailable(message)),
            FailurePolicy::Open => Decision::fail_open(limit),
            FailurePolicy::Closed => {
                Decision::from_parts(false, limit, 0, 1_000_000, 1_000_000, Some(0))
            }
            FailurePolicy::Local => {
                let local = entry
                    .local
                    .as_ref()
                    .ok_or_else(|| AppError::StoreUnavailable(message.clone()))?;
                let r = if charge {
                    local.check_n(key, cost)
                } else {
                    local.peek(key, cost)
                };
                r.map_err(|e| AppError::BadRequest(e.to_string()))?
            }
        };
        Ok(Outcome {
            decision,
            store_error: Some(message),
        })
    }

    /// Forgets `key` under a policy.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// let p = app.inline(None, "1/s").unwrap();
    /// let _ = app.check(&p, "k", 1).await.unwrap();
    /// app.reset(&p, "k").await.unwrap();
    /// assert!(app.check(&p, "k", 1).await.unwrap().decision.allowed);
    /// # });
    /// ```
    pub async fn reset(&self, entry: &PolicyEntry, key: &str) -> Result<(), AppError> {
        self.validate_key(key)?;
        let store_key = self.keys.map(&entry.scope, key);
        let r = tokio::time::timeout(self.store_timeout, entry.limiter.reset_async(&store_key))
            .await
            .unwrap_or_else(|_| {
                Err(tollgate::StoreError::timeout("store", self.store_timeout).into())
            });
        if let Some(local) = &entry.local {
            let _ = local.reset(key);
        }
        self.unit_result(r)
    }

    /// Gives back `amount` units to `key` under a policy.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// let p = app.inline(None, "1/s").unwrap();
    /// let _ = app.check(&p, "k", 1).await.unwrap();
    /// app.refund(&p, "k", 1).await.unwrap();
    /// assert!(app.check(&p, "k", 1).await.unwrap().decision.allowed);
    /// # });
    /// ```
    pub async fn refund(
        &self,
        entry: &PolicyEntry,
        key: &str,
        amount: u64,
    ) -> Result<(), AppError> {
        self.validate_key(key)?;
        if amount == 0 {
            return Err(AppError::BadRequest("the amount must be at least 1".into()));
        }
        let store_key = self.keys.map(&entry.scope, key);
        let r = tokio::time::timeout(
            self.store_timeout,
            entry.limiter.refund_async(&store_key, amount),
        )
        .await
        .unwrap_or_else(|_| Err(tollgate::StoreError::timeout("store", self.store_timeout).into()));
        self.unit_result(r)
    }

    fn unit_result(&self, r: Result<(), Error>) -> Result<(), AppError> {
        match r {
            Ok(()) => Ok(()),
            Err(Error::Store(e)) => {
                self.store_errors.increment(1);
                Err(AppError::StoreUnavailable(e.to_string()))
            }
            Err(e) => Err(AppError::BadRequest(e.to_string())),
        }
    }
}
