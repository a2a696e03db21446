//! [`RedisStoreBuilder`]: how a [`RedisStore`] is configured and connected.

use super::{Config, RedisStore, TimeSource};
use crate::conn::{ClusterConn, Shared, Target};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::keys::{KeyBuilder, DEFAULT_MAX_STORED_KEY_LEN};
use tollgate::{Error, StoreError};

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
            Target::Cluster(Arc::new(ClusterConn::new(client, self.timeout)))
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
