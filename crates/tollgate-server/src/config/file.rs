//! The shape of `tollgate.toml` ([`FileConfig`] and its sections), checked by serde with
//! unknown fields refused.

use super::*;

/// The TOML file, as written (every field optional).
///
/// ```
/// let f: tollgate_server::config::FileConfig = toml::from_str("").unwrap();
/// assert!(f.policies.is_empty());
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[server]`: listeners and limits.
    #[serde(default)]
    pub server: ServerSection,
    /// `[store]`: where state lives and what to do when it fails.
    #[serde(default)]
    pub store: StoreSection,
    /// `[keys]`: key namespace and hashing.
    #[serde(default)]
    pub keys: KeysSection,
    /// `[policies.<name>]`: named policies.
    #[serde(default)]
    pub policies: BTreeMap<String, PolicySection>,
    /// `[semaphores.<name>]`: named semaphores.
    #[serde(default)]
    pub semaphores: BTreeMap<String, SemaphoreSection>,
}

/// `[semaphores.<name>]`.
///
/// ```
/// let s: tollgate_server::config::SemaphoreSection = toml::from_str("capacity = 10").unwrap();
/// assert_eq!(s.capacity, 10);
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemaphoreSection {
    /// Permits held at once.
    pub capacity: u64,
    /// Default lease (`"30s"`).
    pub lease: Option<String>,
}

/// `[server]`.
///
/// ```
/// let s = tollgate_server::config::ServerSection::default();
/// assert!(s.http_addr.is_none());
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// HTTP listen address, or `"off"`.
    pub http_addr: Option<String>,
    /// RESP listen address, or `"off"`.
    pub resp_addr: Option<String>,
    /// Largest HTTP request body / RESP command, in bytes.
    pub max_request_bytes: Option<usize>,
    /// Longest key, in bytes.
    pub max_key_len: Option<usize>,
    /// Close a connection idle for this long (`"60s"`).
    pub idle_timeout: Option<String>,
    /// Close a connection that takes longer than this to send one whole request (`"10s"`).
    pub request_timeout: Option<String>,
    /// Most simultaneous client connections (per listener).
    pub max_connections: Option<usize>,
    /// On SIGTERM/SIGINT, how long in-flight requests get to finish (`"10s"`).
    pub shutdown_grace: Option<String>,
    /// Most distinct inline policies (HTTP `rates`) and CL.THROTTLE parameter sets kept.
    pub max_dynamic_policies: Option<usize>,
}

/// `[store]`.
///
/// ```
/// let s = tollgate_server::config::StoreSection::default();
/// assert!(s.url.is_none());
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `"memory"` (default), `redis://host:port/db`, or `redis+cluster://host:port,host:port`.
    pub url: Option<String>,
    /// Memory store: most keys per policy.
    pub max_keys: Option<usize>,
    /// Timeout of one store call (`"250ms"`).
    pub timeout: Option<String>,
    /// What a decision is when the store fails: `error`, `open`, `closed`, `local`.
    pub failure: Option<String>,
    /// Consecutive store failures that open the circuit breaker (default 5; 0 disables it).
    pub breaker_failures: Option<u32>,
    /// How long an open breaker answers by the failure policy before it probes the store
    /// (`"1s"`).
    pub breaker_cool_down: Option<String>,
}

/// `[keys]`.
///
/// ```
/// let k = tollgate_server::config::KeysSection::default();
/// assert!(k.namespace.is_none());
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// Prefix of every key written to a shared store (default `tollgate`).
    pub namespace: Option<String>,
    /// Name of an environment variable holding the HMAC secret; when set, keys are replaced
    /// by `HMAC-SHA256(secret, key)` before they reach the store.
    pub hmac_secret_env: Option<String>,
}

/// `[policies.<name>]`.
///
/// ```
/// let p: tollgate_server::config::PolicySection = toml::from_str(r#"rates = "5/s""#).unwrap();
/// assert_eq!(p.rates, "5/s");
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// `gcra` (default), `token_bucket`, `sliding_log`, `sliding_window`, `fixed_window`.
    pub algorithm: Option<String>,
    /// One or more rates: `"10/s burst 20; 1000/hour"`.
    pub rates: String,
    /// Token bucket: tokens a new key starts with.
    pub initial_tokens: Option<u64>,
    /// Local leases for hot keys on a shared store (GCRA and token bucket only):
    /// `lease = { max_batch = 1000, duration = "100ms" }`.
    pub lease: Option<LeaseSection>,
}

/// `lease = { ... }` of a policy: reserve batches of a hot key's units in the shared store
/// and decide from them locally (`tollgate::store::lease`). Every field is optional.
///
/// ```
/// let l: tollgate_server::config::LeaseSection =
///     toml::from_str("max_batch = 500\nduration = \"50ms\"").unwrap();
/// assert_eq!(l.max_batch, Some(500));
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseSection {
    /// The most units one reserve takes (default 1000).
    pub max_batch: Option<u64>,
    /// The smallest batch worth reserving (default 16): quieter keys are not leased.
    pub min_batch: Option<u64>,
    /// How long a batch is kept before its unused units are given back (default `"100ms"`).
    pub duration: Option<String>,
    /// The most keys tracked (default 10 000).
    pub max_keys: Option<usize>,
}
