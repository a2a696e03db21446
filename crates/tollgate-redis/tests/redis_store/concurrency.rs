//! Several OS processes x many tasks on one key: with a frozen caller time, exactly the
//! capacity is admitted, for every algorithm, standalone and Cluster. The test binary
//! re-executes itself as the child processes (env `TOLLGATE_REDIS_CHILD`).

use crate::common::*;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tollgate::{Algorithm, Limiter, Policy};
use tollgate_redis::{RedisStore, TimeSource};

const CHILD_ENV: &str = "TOLLGATE_REDIS_CHILD";
const PROCESSES: usize = 4;
const TASKS: usize = 16;
const ATTEMPTS_PER_TASK: usize = 8;
const CAPACITY: u64 = 50;
/// A frozen caller time (µs), so no unit comes back during the run.
const FROZEN_NOW: u64 = 1_700_000_000_123_456;

fn policies() -> Vec<Policy> {
    vec![
        Policy::parse(Algorithm::Gcra, "50/s").unwrap(),
        Policy::parse(Algorithm::TokenBucket, "50/s").unwrap(),
        Policy::parse(Algorithm::SlidingLog, "50/s; 80/minute").unwrap(),
        Policy::parse(Algorithm::SlidingWindow, "50/s").unwrap(),
        Policy::parse(Algorithm::FixedWindow, "50/s").unwrap(),
    ]
}

/// One process's share: TASKS tasks x ATTEMPTS_PER_TASK checks of every policy's key.
/// Returns the admitted count per policy.
fn hammer(store: &RedisStore) -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    policies()
        .into_iter()
        .map(|policy| {
            let limiter = Limiter::builder(policy.clone())
                .clock(tollgate::time::ManualClock::new(FROZEN_NOW))
                .build_with(&store.scope(format!("conc-{}", policy.algorithm())))
                .unwrap();
            let admitted = Arc::new(AtomicU64::new(0));
            rt.block_on(async {
                let mut tasks = Vec::new();
                for _ in 0..TASKS {
                    let limiter = limiter.clone();
                    let admitted = Arc::clone(&admitted);
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..ATTEMPTS_PER_TASK {
                            if limiter.check_async("one-key").await.unwrap().allowed {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            });
            admitted.load(Ordering::Relaxed)
        })
        .collect()
}

fn store_from_env(spec: &str) -> RedisStore {
    // "<namespace> standalone <url>" or "<namespace> cluster <url> <url> ..."
    let mut parts = spec.split(' ');
    let ns = parts.next().unwrap();
    let kind = parts.next().unwrap();
    let urls: Vec<String> = parts.map(String::from).collect();
    let builder = RedisStore::builder()
        .namespace(ns)
        .time_source(TimeSource::Caller);
    let builder = if kind == "cluster" {
        builder.cluster(urls)
    } else {
        builder.url(urls[0].clone())
    };
    builder.build().unwrap()
}

fn run_processes(spec: &str, ports: &[u16], ns: &str) {
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "concurrency::child_process_entry",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, spec)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn a child test process")
        })
        .collect();
    // every child was started before any is waited for: they run at the same time
    let children: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut totals = vec![0u64; policies().len()];
    for out in children {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.split("ADMITTED=").nth(1))
            .unwrap_or_else(|| panic!("no ADMITTED= line in child output: {stdout}"));
        for (i, n) in line.split(',').enumerate() {
            totals[i] += n.parse::<u64>().unwrap();
        }
    }
    let attempts = (PROCESSES * TASKS * ATTEMPTS_PER_TASK) as u64;
    assert!(attempts > 2 * CAPACITY);
    for (policy, admitted) in policies().iter().zip(&totals) {
        assert_eq!(
            *admitted, CAPACITY,
            "{policy}: {PROCESSES} processes x {TASKS} tasks admitted {admitted}"
        );
    }
    assert_eq!(assert_every_key_has_ttl(ports, ns), policies().len());
}

/// Child mode only (spawned by the tests below); in a normal run it checks nothing else
/// than that the child environment is absent or valid.
#[test]
fn child_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = store_from_env(&spec);
    let admitted = hammer(&store);
    let line: Vec<String> = admitted.iter().map(u64::to_string).collect();
    println!("\nADMITTED={}", line.join(","));
}

#[test]
fn processes_and_tasks_on_one_key_standalone() {
    let Some(server) = standalone() else { return };
    let ns = unique_ns("conc");
    run_processes(
        &format!("{ns} standalone {}", server.url()),
        &[server.port()],
        &ns,
    );
}

#[test]
fn processes_and_tasks_on_one_key_cluster() {
    let Some(cluster) = cluster() else { return };
    let ns = unique_ns("conc");
    let spec = format!("{ns} cluster {}", cluster.urls().join(" "));
    run_processes(&spec, &cluster.ports(), &ns);
}
