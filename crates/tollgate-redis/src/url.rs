//! Store URLs for Redis: `redis://…`, `rediss://…` and `redis+cluster://host:port,host:port`,
//! parsed in one place for every surface that takes a store URL (the Python package, the
//! server).

use crate::RedisStoreBuilder;

/// A Redis deployment named by a URL.
///
/// ```
/// use tollgate_redis::RedisUrl;
/// assert_eq!(
///     RedisUrl::parse("redis+cluster://10.0.0.1:7000, 10.0.0.2:7000").unwrap(),
///     RedisUrl::Cluster(vec!["redis://10.0.0.1:7000".into(), "redis://10.0.0.2:7000".into()]),
/// );
/// assert_eq!(
///     RedisUrl::parse("redis://127.0.0.1:6379/2").unwrap(),
///     RedisUrl::Standalone("redis://127.0.0.1:6379/2".into()),
/// );
/// assert!(RedisUrl::parse("memcached://x").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisUrl {
    /// One server (`redis://[user:pass@]host:port[/db]` or `rediss://…`).
    Standalone(String),
    /// A Redis Cluster, from seed nodes (each as a `redis://host:port` URL).
    Cluster(Vec<String>),
}

impl RedisUrl {
    /// Whether `url` has one of the schemes this type parses.
    ///
    /// ```
    /// assert!(tollgate_redis::RedisUrl::is_redis_url("redis+cluster://a:1"));
    /// assert!(!tollgate_redis::RedisUrl::is_redis_url("sqlite:///tmp/x.db"));
    /// ```
    pub fn is_redis_url(url: &str) -> bool {
        let url = url.trim();
        ["redis://", "rediss://", "redis+cluster://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
    }

    /// Parses `redis://…`, `rediss://…` or `redis+cluster://host:port,host:port` (the
    /// cluster's seed nodes; the others are discovered).
    ///
    /// ```
    /// let e = tollgate_redis::RedisUrl::parse("redis+cluster://").unwrap_err();
    /// assert!(e.contains("at least one host:port"));
    /// ```
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = rest
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| format!("redis://{n}"))
                .collect();
            if nodes.is_empty() {
                return Err("redis+cluster:// needs at least one host:port".into());
            }
            return Ok(RedisUrl::Cluster(nodes));
        }
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return Ok(RedisUrl::Standalone(url.to_string()));
        }
        Err(format!(
            "expected redis://host:port[/db], rediss://… or redis+cluster://host:port,host:port (got {url:?})"
        ))
    }

    /// Points `builder` at this deployment.
    ///
    /// ```
    /// use tollgate_redis::{RedisStore, RedisUrl};
    /// let url = RedisUrl::parse("redis://127.0.0.1:6379").unwrap();
    /// let store = url.apply(RedisStore::builder().namespace("app")).build().unwrap(); // connects lazily
    /// assert!(!store.is_cluster());
    /// ```
    pub fn apply(self, builder: RedisStoreBuilder) -> RedisStoreBuilder {
        match self {
            RedisUrl::Standalone(url) => builder.url(url),
            RedisUrl::Cluster(nodes) => builder.cluster(nodes),
        }
    }
}
