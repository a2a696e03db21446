//! Reading a sliding log (`tollgate::store::log::LogBackend`) on standalone and Cluster,
//! with the caller's clock and with the server's.

use crate::common::{cluster, cluster_store, standalone, standalone_store, unique_ns};
use tollgate::conformance::log::check_log_rules;
use tollgate::store::log::LogBackend;
use tollgate::store::{Backend, Op, Store};
use tollgate::time::{Clock, SystemClock};
use tollgate::{Algorithm, Policy};
use tollgate_redis::TimeSource;

const T0: u64 = 1_800_000_000_000_000;

#[test]
fn log_rules_standalone_and_cluster() {
    let Some(server) = standalone() else { return };
    let store = standalone_store(server, &unique_ns("log"), TimeSource::Caller);
    check_log_rules(&store, T0, "").unwrap();
    let Some(cluster) = cluster() else { return };
    let store = cluster_store(cluster, &unique_ns("log-cluster"), TimeSource::Caller);
    check_log_rules(&store, T0, "{t}:").unwrap();
}

#[test]
fn log_reads_at_the_server_clock() {
    let Some(server) = standalone() else { return };
    let store = standalone_store(server, &unique_ns("log-server"), TimeSource::Server);
    let b = store
        .bind(&Policy::parse(Algorithm::SlidingLog, "5/minute").unwrap())
        .unwrap();
    let before = SystemClock.now();
    assert!(b.execute("k", Op::Check(2), 0).unwrap().unwrap().allowed);
    // The caller's `now` (0) is ignored: the server's clock decides and reads.
    let log = b.log_entries("k", 0).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].weight, 2);
    assert!(log[0].at + 5_000_000 >= before && log[0].at <= SystemClock.now() + 5_000_000);
}
