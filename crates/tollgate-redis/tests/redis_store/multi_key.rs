//! The core multi-key capability (`tollgate::store::multi::MultiBackend`) on Redis: the shared
//! rules on standalone and Cluster (both with the server's clock and the caller's), and
//! atomicity under tasks from two OS-thread runtimes — an observer taking atomic snapshots
//! never sees a call half done, and the global key admits exactly its capacity.

use crate::common::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tollgate::conformance::multi::check_multi_rules;
use tollgate::store::multi::{KeyCheck, MultiBackend, MultiOp};
use tollgate::store::Store;
use tollgate::{Algorithm, Decision, Policy, Rate};
use tollgate_redis::{RedisBackend, TimeSource};

const NOW: u64 = 1_780_000_000_000_000;

#[test]
fn the_shared_multi_key_rules_hold_on_standalone() {
    let Some(server) = standalone() else { return };
    for time in [TimeSource::Server, TimeSource::Caller] {
        let store = standalone_store(server, &unique_ns("multi-rules"), time);
        check_multi_rules(|name| store.scope(name), NOW, "r:").unwrap();
    }
}

#[test]
fn the_shared_multi_key_rules_hold_on_a_cluster_with_a_hash_tag() {
    let Some(cluster) = cluster() else { return };
    let store = cluster_store(cluster, &unique_ns("multi-rules"), TimeSource::Server);
    check_multi_rules(|name| store.scope(name), NOW, "{tenant-9}:").unwrap();
}

/// Units charged so far (hour-long periods: nothing refills during the test).
fn used(d: &Decision, cap: u64) -> u64 {
    if d.allowed {
        cap - d.remaining - 1
    } else {
        cap
    }
}

#[test]
fn concurrent_multi_key_calls_are_atomic_and_never_over_admit() {
    const USERS: usize = 4;
    const USER_CAP: u64 = 20;
    const GLOBAL_CAP: u64 = 50;
    let Some(server) = standalone() else { return };
    let store = standalone_store(server, &unique_ns("multi-atomic"), TimeSource::Server);
    let users: Arc<RedisBackend> = Arc::new(
        store
            .scope("users")
            .bind(&Policy::gcra(Rate::per_hour(USER_CAP).unwrap()).unwrap())
            .unwrap(),
    );
    let global: Arc<RedisBackend> = Arc::new(
        store
            .scope("global")
            .bind(&Policy::parse(Algorithm::SlidingLog, &format!("{GLOBAL_CAP}/h")).unwrap())
            .unwrap(),
    );
    let admitted: Arc<Vec<AtomicU64>> = Arc::new((0..USERS).map(|_| AtomicU64::new(0)).collect());
    let names: Vec<String> = (0..USERS).map(|u| format!("user-{u}")).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let observer = {
            let (users, global, done, names) =
                (users.clone(), global.clone(), done.clone(), names.clone());
            tokio::spawn(async move {
                let mut snapshots = 0;
                while !done.load(Ordering::Relaxed) || snapshots == 0 {
                    let mut items: Vec<_> =
                        names.iter().map(|n| KeyCheck::new(&*users, n, 1)).collect();
                    items.push(KeyCheck::new(&*global, "all", 1));
                    let d = RedisBackend::execute_all_async(&items, MultiOp::Peek, 0)
                        .await
                        .unwrap();
                    let user_units: u64 =
                        d.decisions[..USERS].iter().map(|d| used(d, USER_CAP)).sum();
                    assert_eq!(user_units, used(&d.decisions[USERS], GLOBAL_CAP));
                    snapshots += 1;
                }
                snapshots
            })
        };
        let mut tasks = Vec::new();
        for t in 0..32usize {
            let (users, global, admitted) = (users.clone(), global.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..8 {
                    let u = (t + i) % USERS;
                    let user = format!("user-{u}");
                    let a = KeyCheck::new(&*users, &user, 1);
                    let g = KeyCheck::new(&*global, "all", 1);
                    let items = if (t + i) % 2 == 0 { [a, g] } else { [g, a] };
                    let d = RedisBackend::execute_all_async(&items, MultiOp::Check, 0)
                        .await
                        .unwrap();
                    if d.allowed {
                        admitted[u].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        done.store(true, Ordering::Relaxed);
        assert!(observer.await.unwrap() > 0);
    });
    let per_user: Vec<u64> = admitted.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    assert_eq!(per_user.iter().sum::<u64>(), GLOBAL_CAP, "{per_user:?}");
    assert!(per_user.iter().all(|&n| n <= USER_CAP), "{per_user:?}");
}
