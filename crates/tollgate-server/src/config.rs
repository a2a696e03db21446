//! Configuration: a TOML file, overridden by command-line flags and `TOLLGATE_*` environment
//! variables, validated into a [`Config`]. Every error names the field it is about.
//!
//! ```
//! use tollgate_server::config::{Config, FileConfig};
//! let file: FileConfig = toml::from_str(r#"
//!     [server]
//!     http_addr = "127.0.0.1:9000"
//!     [policies.api]
//!     rates = "10/s burst 20; 1000/hour"
//! "#).unwrap();
//! let config = Config::from_file(file).unwrap();
//! assert_eq!(config.http_addr.unwrap().port(), 9000);
//! assert_eq!(config.policies["api"].rates().len(), 2);
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tollgate::{Algorithm, Policy};

mod file;
mod parse;

pub use file::{
    FileConfig, KeysSection, LeaseSection, PolicySection, SemaphoreSection, ServerSection,
    StoreSection,
};
pub use parse::{
    parse_duration, parse_lease, parse_listen, parse_policy, valid_policy_name, validate_namespace,
    validate_secret,
};

/// The default HTTP/JSON listen address (loopback only).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// The default RESP (Redis protocol) listen address (loopback only).
pub const DEFAULT_RESP_ADDR: &str = "127.0.0.1:6380";

/// A configuration error: which field, and what is wrong with it.
///
/// ```
/// let e = tollgate_server::config::ConfigError::new("server.http_addr", "not an address");
/// assert_eq!(e.to_string(), "invalid configuration: server.http_addr: not an address");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field}: {message}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The field, as a dotted path (`policies.api.rates`) or a flag (`--http-addr`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error about `field`.
    ///
    /// ```
    /// let e = tollgate_server::config::ConfigError::new("store.url", "bad scheme");
    /// assert_eq!(e.field, "store.url");
    /// ```
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What a decision is when the store fails (Redis down or too slow).
///
/// ```
/// use tollgate_server::config::FailurePolicy;
/// assert_eq!("open".parse::<FailurePolicy>().unwrap(), FailurePolicy::Open);
/// assert!("maybe".parse::<FailurePolicy>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Report the failure to the caller (HTTP 503, RESP error) and let it decide.
    #[default]
    Error,
    /// Admit the request.
    Open,
    /// Deny the request (retry after 1 s).
    Closed,
    /// Decide on a per-instance in-memory limiter with the same policy.
    Local,
}

impl std::str::FromStr for FailurePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Ok(FailurePolicy::Error),
            "open" => Ok(FailurePolicy::Open),
            "closed" => Ok(FailurePolicy::Closed),
            "local" => Ok(FailurePolicy::Local),
            other => Err(format!(
                "unknown failure policy {other:?} (expected error, open, closed or local)"
            )),
        }
    }
}

impl FailurePolicy {
    /// The config name.
    ///
    /// ```
    /// assert_eq!(tollgate_server::config::FailurePolicy::Local.name(), "local");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            FailurePolicy::Error => "error",
            FailurePolicy::Open => "open",
            FailurePolicy::Closed => "closed",
            FailurePolicy::Local => "local",
        }
    }
}

/// Where state lives.
///
/// ```
/// use tollgate_server::config::StoreUrl;
/// assert_eq!(StoreUrl::parse("memory").unwrap(), StoreUrl::Memory);
/// assert!(matches!(StoreUrl::parse("redis://127.0.0.1:6379").unwrap(), StoreUrl::Redis(_)));
/// assert!(StoreUrl::parse("mysql://x").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// The in-memory store (one instance).
    Memory,
    /// A Redis / Valkey server (`redis://` or `rediss://`).
    Redis(String),
    /// A Redis Cluster: `redis+cluster://host:port,host:port` (seed nodes).
    RedisCluster(Vec<String>),
}

impl StoreUrl {
    /// Parses `memory`, `redis://…`, `rediss://…` or `redis+cluster://a,b,c`.
    ///
    /// ```
    /// use tollgate_server::config::StoreUrl;
    /// let s = StoreUrl::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap();
    /// assert_eq!(s, StoreUrl::RedisCluster(vec!["redis://127.0.0.1:7000".into(), "redis://127.0.0.1:7001".into()]));
    /// ```
    pub fn parse(s: &str) -> Result<StoreUrl, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("memory") {
            return Ok(StoreUrl::Memory);
        }
        if tollgate_redis::RedisUrl::is_redis_url(s) {
            // One parser for every surface that takes a Redis URL.
            return Ok(match tollgate_redis::RedisUrl::parse(s)? {
                tollgate_redis::RedisUrl::Standalone(url) => StoreUrl::Redis(url),
                tollgate_redis::RedisUrl::Cluster(nodes) => StoreUrl::RedisCluster(nodes),
            });
        }
        Err(format!(
            "expected \"memory\", redis://host:port[/db] or redis+cluster://host:port,host:port (got {s:?})"
        ))
    }

    /// A description without credentials, for logs.
    ///
    /// ```
    /// use tollgate_server::config::StoreUrl;
    /// assert_eq!(StoreUrl::parse("redis://:secret@10.0.0.1:6379").unwrap().describe(), "redis (10.0.0.1:6379)");
    /// ```
    pub fn describe(&self) -> String {
        fn host(url: &str) -> &str {
            let rest = url.split_once("://").map_or(url, |(_, r)| r);
            let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
            rest.split('/').next().unwrap_or(rest)
        }
        match self {
            StoreUrl::Memory => "memory".into(),
            StoreUrl::Redis(u) => format!("redis ({})", host(u)),
            StoreUrl::RedisCluster(nodes) => format!(
                "redis cluster ({})",
                nodes.iter().map(|n| host(n)).collect::<Vec<_>>().join(",")
            ),
        }
    }
}

/// The validated configuration.
///
/// ```
/// let c = tollgate_server::config::Config::default();
/// assert_eq!(c.http_addr.unwrap().to_string(), "127.0.0.1:8080");
/// assert_eq!(c.resp_addr.unwrap().to_string(), "127.0.0.1:6380");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// HTTP listen address (`None`: disabled).
    pub http_addr: Option<SocketAddr>,
    /// RESP listen address (`None`: disabled).
    pub resp_addr: Option<SocketAddr>,
    /// Largest HTTP body / RESP command, bytes (default 64 KiB).
    pub max_request_bytes: usize,
    /// Longest key, bytes (default 512).
    pub max_key_len: usize,
    /// Idle connection timeout (default 300 s).
    pub idle_timeout: Duration,
    /// Time allowed to send one whole request once it started (default 10 s).
    pub request_timeout: Duration,
    /// Connections per listener (default 10,000).
    pub max_connections: usize,
    /// Grace period for in-flight requests at shutdown (default 10 s).
    pub shutdown_grace: Duration,
    /// Most inline policies / CL.THROTTLE parameter sets (default 1,024).
    pub max_dynamic_policies: usize,
    /// The store.
    pub store: StoreUrl,
    /// Memory store: most keys per policy (default 1,000,000).
    pub max_keys: usize,
    /// Store call timeout (default 250 ms).
    pub store_timeout: Duration,
    /// What to do when the store fails.
    pub failure: FailurePolicy,
    /// Consecutive store failures that open the circuit breaker (default 5; 0: never open).
    pub breaker_failures: u32,
    /// How long an open breaker answers without the store before it probes (default 1 s).
    pub breaker_cool_down: Duration,
    /// Key prefix for shared stores (default `tollgate`).
    pub namespace: String,
    /// HMAC secret for key hashing (`None`: keys are used as given).
    pub key_secret: Option<Vec<u8>>,
    /// Named policies.
    pub policies: BTreeMap<String, Policy>,
    /// Local leases of named policies (by policy name), for a shared (Redis) store.
    pub leases: BTreeMap<String, tollgate::store::lease::LeaseConfig>,
    /// Named semaphores (concurrency limits with leases).
    pub semaphores: BTreeMap<String, SemaphoreSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: Some(DEFAULT_HTTP_ADDR.parse().expect("valid default")),
            resp_addr: Some(DEFAULT_RESP_ADDR.parse().expect("valid default")),
            max_request_bytes: 64 * 1024,
            max_key_len: 512,
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(10),
            max_dynamic_policies: 1024,
            store: StoreUrl::Memory,
            max_keys: 1_000_000,
            store_timeout: Duration::from_millis(250),
            failure: FailurePolicy::Error,
            breaker_failures: tollgate::store::failure::DEFAULT_BREAKER_FAILURES,
            breaker_cool_down: tollgate::store::failure::DEFAULT_BREAKER_COOL_DOWN,
            namespace: "tollgate".into(),
            key_secret: None,
            policies: BTreeMap::new(),
            leases: BTreeMap::new(),
            semaphores: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Validates a parsed file on top of the defaults.
    ///
    /// ```
    /// use tollgate_server::config::{Config, FileConfig};
    /// let f: FileConfig = toml::from_str("[policies.api]\nrates = \"0/s\"").unwrap();
    /// let e = Config::from_file(f).unwrap_err();
    /// assert_eq!(e.field, "policies.api.rates");
    /// ```
    pub fn from_file(file: FileConfig) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let s = &file.server;
        if let Some(a) = &s.http_addr {
            c.http_addr = parse_listen(a).map_err(|m| ConfigError::new("server.http_addr", m))?;
        }
        if let Some(a) = &s.resp_addr {
            c.resp_addr = parse_listen(a).map_err(|m| ConfigError::new("server.resp_addr", m))?;
        }
        if let Some(n) = s.max_request_bytes {
            if !(64..=64 * 1024 * 1024).contains(&n) {
                return Err(ConfigError::new(
                    "server.max_request_bytes",
                    format!("must be between 64 and 67108864 (got {n})"),
                ));
            }
            c.max_request_bytes = n;
        }
        if let Some(n) = s.max_key_len {
            if !(1..=65_536).contains(&n) {
                return Err(ConfigError::new(
                    "server.max_key_len",
                    format!("must be between 1 and 65536 (got {n})"),
                ));
            }
            c.max_key_len = n;
        }
        let duration = |field: &str, v: &Option<String>, into: &mut Duration| {
            if let Some(v) = v {
                let d = parse_duration(v).map_err(|m| ConfigError::new(field, m))?;
                if d.is_zero() {
                    return Err(ConfigError::new(field, "must be greater than zero"));
                }
                *into = d;
            }
            Ok(())
        };
        duration("server.idle_timeout", &s.idle_timeout, &mut c.idle_timeout)?;
        duration(
            "server.request_timeout",
            &s.request_timeout,
            &mut c.request_timeout,
        )?;
        duration(
            "server.shutdown_grace",
            &s.shutdown_grace,
            &mut c.shutdown_grace,
        )?;
        if let Some(n) = s.max_connections {
            if n == 0 {
                return Err(ConfigError::new(
                    "server.max_connections",
                    "must be at least 1",
                ));
            }
            c.max_connections = n;
        }
        if let Some(n) = s.max_dynamic_policies {
            c.max_dynamic_policies = n;
        }
        let st = &file.store;
        if let Some(u) = &st.url {
            c.store = StoreUrl::parse(u).map_err(|m| ConfigError::new("store.url", m))?;
        }
        if let Some(n) = st.max_keys {
            if n == 0 {
                return Err(ConfigError::new("store.max_keys", "must be at least 1"));
            }
            c.max_keys = n;
        }
        duration("store.timeout", &st.timeout, &mut c.store_timeout)?;
        if let Some(f) = &st.failure {
            c.failure = f
                .parse()
                .map_err(|m: String| ConfigError::new("store.failure", m))?;
        }
        if let Some(n) = st.breaker_failures {
            c.breaker_failures = n;
        }
        duration(
            "store.breaker_cool_down",
            &st.breaker_cool_down,
            &mut c.breaker_cool_down,
        )?;
        if let Some(ns) = &file.keys.namespace {
            c.namespace =
                validate_namespace(ns).map_err(|m| ConfigError::new("keys.namespace", m))?;
        }
        if let Some(var) = &file.keys.hmac_secret_env {
            let secret = std::env::var(var).map_err(|_| {
                ConfigError::new(
                    "keys.hmac_secret_env",
                    format!("environment variable {var} is not set (or not UTF-8)"),
                )
            })?;
            c.key_secret =
                Some(validate_secret(&secret).map_err(|m| {
                    ConfigError::new("keys.hmac_secret_env", format!("{var}: {m}"))
                })?);
        }
        for (name, s) in &file.semaphores {
            let lease = match &s.lease {
                Some(l) => Some(
                    parse_duration(l)
                        .map_err(|m| ConfigError::new(format!("semaphores.{name}.lease"), m))?,
                ),
                None => None,
            };
            c.add_semaphore(name, s.capacity, lease, |f| {
                format!("semaphores.{name}.{f}")
            })?;
        }
        for (name, p) in &file.policies {
            c.add_policy(
                name,
                p.algorithm.as_deref(),
                &p.rates,
                p.initial_tokens,
                |f| format!("policies.{name}.{f}"),
            )?;
            if let Some(l) = &p.lease {
                let lease = parse_lease(l, &c.policies[name])
                    .map_err(|m| ConfigError::new(format!("policies.{name}.lease"), m))?;
                c.leases.insert(name.clone(), lease);
            }
        }
        Ok(c)
    }

    /// Adds (or replaces) a named semaphore (default lease 30 s).
    ///
    /// ```
    /// let mut c = tollgate_server::config::Config::default();
    /// c.add_semaphore("db", 10, None, |f| f.to_string()).unwrap();
    /// assert_eq!(c.semaphores["db"].capacity, 10);
    /// assert!(c.add_semaphore("db", 0, None, |f| f.to_string()).is_err());
    /// ```
    pub fn add_semaphore(
        &mut self,
        name: &str,
        capacity: u64,
        lease: Option<Duration>,
        field: impl Fn(&str) -> String,
    ) -> Result<(), ConfigError> {
        if !valid_policy_name(name) {
            return Err(ConfigError::new(
                field("name"),
                format!("{name:?}: a semaphore name is 1-64 characters of A-Z a-z 0-9 _ . -"),
            ));
        }
        if capacity == 0 {
            return Err(ConfigError::new(field("capacity"), "must be at least 1"));
        }
        let lease = lease.unwrap_or(Duration::from_secs(30));
        if lease.is_zero() || lease > Duration::from_secs(86_400) {
            return Err(ConfigError::new(
                field("lease"),
                "must be between 1 ms and 24 h",
            ));
        }
        self.semaphores
            .insert(name.to_string(), SemaphoreSpec { capacity, lease });
        Ok(())
    }

    /// Adds (or replaces) a named policy; `field` names the config field for errors.
    ///
    /// ```
    /// let mut c = tollgate_server::config::Config::default();
    /// c.add_policy("login", Some("fixed_window"), "5/min", None, |f| format!("--policy login {f}")).unwrap();
    /// assert!(c.policies.contains_key("login"));
    /// ```
    pub fn add_policy(
        &mut self,
        name: &str,
        algorithm: Option<&str>,
        rates: &str,
        initial_tokens: Option<u64>,
        field: impl Fn(&str) -> String,
    ) -> Result<(), ConfigError> {
        if !valid_policy_name(name) {
            return Err(ConfigError::new(
                field("name"),
                format!("{name:?}: a policy name is 1-64 characters of A-Z a-z 0-9 _ . -"),
            ));
        }
        if let Some(a) = algorithm {
            a.parse::<Algorithm>()
                .map_err(|e| ConfigError::new(field("algorithm"), e.to_string()))?;
        }
        let policy = parse_policy(algorithm, rates, initial_tokens).map_err(|m| {
            let f = if initial_tokens.is_some() && m.contains("initial_tokens") {
                "initial_tokens"
            } else {
                "rates"
            };
            ConfigError::new(field(f), m)
        })?;
        self.policies.insert(name.to_string(), policy);
        Ok(())
    }
}

/// Loads and validates a TOML file.
///
/// ```
/// let e = tollgate_server::config::load_file(std::path::Path::new("/nonexistent/tollgate.toml")).unwrap_err();
/// assert_eq!(e.field, "--config");
/// ```
pub fn load_file(path: &std::path::Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
    })?;
    let file: FileConfig = toml::from_str(&text).map_err(|e| {
        // toml's message names the key (e.g. "unknown field `htp_addr`") and the line.
        ConfigError::new(
            path.display().to_string(),
            e.to_string().trim_end().replace('\n', "\n  "),
        )
    })?;
    Config::from_file(file)
}

/// A configured semaphore: how many permits, and the default lease.
///
/// ```
/// let s = tollgate_server::app::SemaphoreSpec { capacity: 10, lease: std::time::Duration::from_secs(30) };
/// assert_eq!(s.capacity, 10);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SemaphoreSpec {
    /// Permits held at once, across every holder (and every server instance on a shared store).
    pub capacity: u64,
    /// Lease when the request names none: a holder that dies loses its permits after this.
    pub lease: Duration,
}
