//! The golden vectors, replayed against Redis with the caller's time: same decisions as the
//! memory store, for every algorithm, standalone and Cluster, sync and async.

use crate::common::*;
use tollgate::conformance::{load_vectors, run_case, run_case_async, vectors_dir};
use tollgate::store::Store;
use tollgate_redis::{RedisStore, TimeSource};

fn play_all(store: &RedisStore, tag: &str) -> usize {
    let files = load_vectors(&vectors_dir()).unwrap();
    assert!(files.len() >= 5, "expected a vector file per algorithm");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut failures = Vec::new();
    let mut cases = 0;
    for file in &files {
        for case in &file.cases {
            let backend = store.bind(&case.policy().unwrap()).unwrap();
            let prefix = format!("{}/{}/sync/", file.algorithm, case.name);
            if let Err(e) = run_case(&backend, case, &prefix) {
                failures.push(format!("[{tag} sync] {e}"));
            }
            let prefix = format!("{}/{}/async/", file.algorithm, case.name);
            if let Err(e) = runtime.block_on(run_case_async(&backend, case, &prefix)) {
                failures.push(format!("[{tag} async] {e}"));
            }
            cases += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    cases
}

#[test]
fn golden_vectors_standalone() {
    let Some(server) = standalone() else { return };
    let ns = unique_ns("vectors");
    let store = standalone_store(server, &ns, TimeSource::Caller);
    let cases = play_all(&store, "standalone");
    assert!(cases > 20);
    assert!(assert_every_key_has_ttl(&[server.port()], &ns) > 0);
}

#[test]
fn golden_vectors_cluster() {
    let Some(cluster) = cluster() else { return };
    let ns = unique_ns("vectors");
    let store = cluster_store(cluster, &ns, TimeSource::Caller);
    let cases = play_all(&store, "cluster");
    assert!(cases > 20);
    assert!(assert_every_key_has_ttl(&cluster.ports(), &ns) > 0);
}
