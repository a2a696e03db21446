//! Shared servers and helpers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tollgate_redis::{RedisStore, TimeSource};
use tollgate_testkit::{RedisCluster, RedisServer, Resp, RespClient};

static STANDALONE: OnceLock<Option<RedisServer>> = OnceLock::new();
static CLUSTER: OnceLock<Option<RedisCluster>> = OnceLock::new();

/// The standalone server shared by this binary (None: skipped outside CI).
pub fn standalone() -> Option<&'static RedisServer> {
    STANDALONE
        .get_or_init(tollgate_testkit::require_redis)
        .as_ref()
}

/// The Cluster shared by this binary (None: skipped outside CI).
pub fn cluster() -> Option<&'static RedisCluster> {
    CLUSTER
        .get_or_init(tollgate_testkit::require_redis_cluster)
        .as_ref()
}

/// A namespace no other test uses.
pub fn unique_ns(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        what
    )
}

pub fn standalone_store(server: &RedisServer, ns: &str, time: TimeSource) -> RedisStore {
    RedisStore::builder()
        .url(server.url())
        .namespace(ns)
        .time_source(time)
        .build()
        .unwrap()
}

pub fn cluster_store(cluster: &RedisCluster, ns: &str, time: TimeSource) -> RedisStore {
    RedisStore::builder()
        .cluster(cluster.urls())
        .namespace(ns)
        .time_source(time)
        .build()
        .unwrap()
}

/// Every key under `ns` on `port`, with its PTTL in ms.
pub fn keys_with_pttl(port: u16, ns: &str) -> Vec<(String, i64)> {
    let mut client = RespClient::connect(port).unwrap();
    let mut cursor = "0".to_string();
    let mut out = Vec::new();
    let pattern = format!("{ns}:*");
    loop {
        let reply = client
            .call(&["SCAN", &cursor, "MATCH", &pattern, "COUNT", "1000"])
            .unwrap();
        let Resp::Array(Some(parts)) = reply else {
            panic!("bad SCAN reply {reply:?}")
        };
        cursor = parts[0].as_text().unwrap();
        if let Resp::Array(Some(keys)) = &parts[1] {
            for k in keys {
                let key = k.as_text().unwrap();
                let pttl = client.call(&["PTTL", &key]).unwrap().as_int().unwrap();
                out.push((key, pttl));
            }
        }
        if cursor == "0" {
            return out;
        }
    }
}

/// Asserts that every key under `ns` on the given ports carries a TTL; returns how many
/// keys were seen.
pub fn assert_every_key_has_ttl(ports: &[u16], ns: &str) -> usize {
    let mut seen = 0;
    for &port in ports {
        for (key, pttl) in keys_with_pttl(port, ns) {
            assert!(
                pttl > 0,
                "key {key} on port {port} has no TTL (PTTL {pttl})"
            );
            seen += 1;
        }
    }
    seen
}
