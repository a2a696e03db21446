//! Which limiters share state (the rule of `tollgate::store::Store`, also run on memory,
//! PostgreSQL and SQLite): standalone and Cluster.

use crate::common::{cluster, cluster_store, standalone, standalone_store, unique_ns};
use tollgate::conformance::sharing::check_sharing;
use tollgate_redis::TimeSource;

#[test]
fn the_rule_holds_on_standalone_redis() {
    let Some(server) = standalone() else { return };
    for time in [TimeSource::Server, TimeSource::Caller] {
        let store = standalone_store(server, &unique_ns("sharing"), time);
        check_sharing(&store, |name| store.scope(name), 1_700_000_000_000_000, "").unwrap();
    }
}

#[test]
fn the_rule_holds_on_redis_cluster() {
    let Some(cluster) = cluster() else { return };
    let store = cluster_store(cluster, &unique_ns("sharing"), TimeSource::Server);
    check_sharing(&store, |name| store.scope(name), 0, "{tag}:").unwrap();
}
