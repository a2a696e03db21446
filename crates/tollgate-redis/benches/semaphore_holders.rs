//! Does a Redis semaphore stay fast as it fills up? Acquire + release pairs per second with
//! 10, 1,000 and 20,000 live holders already holding permits (long leases), against a
//! redis-server this binary starts. The scripts keep a running count of permits in use and
//! walk the wait queue only as far as the free room, so the cost per pair must be flat; an
//! O(holders) script (summing every holder's permits on each acquire) shows up here as pairs/s
//! falling with the holder count.
//!
//! Run: `cargo bench -p tollgate-redis --bench semaphore_holders`
//! (env BENCH_SECONDS, default 3: how long each measurement runs; BENCH_TASKS, default 16).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::semaphore::{AcquireRequest, HolderId, ReleaseOutcome, SemaphoreBackend};
use tollgate_redis::{RedisSemaphoreBackend, RedisStore};
use tollgate_testkit::RedisServer;

const HOLDERS: [u64; 3] = [10, 1_000, 20_000];
const LEASE_US: u64 = 600_000_000;

fn request(name: &str, holder: HolderId, capacity: u64) -> AcquireRequest<'_> {
    AcquireRequest {
        name,
        holder,
        permits: 1,
        capacity,
        lease: LEASE_US,
        queue_ttl: Some(2_000_000),
        now: 0,
    }
}

/// Fills `name` with `holders` live holders (64 calls in flight at a time).
async fn fill(backend: &Arc<RedisSemaphoreBackend>, name: &str, holders: u64, capacity: u64) {
    let mut left = holders;
    while left > 0 {
        let batch = left.min(64);
        let mut calls = Vec::new();
        for _ in 0..batch {
            let backend = Arc::clone(backend);
            let name = name.to_string();
            calls.push(tokio::spawn(async move {
                let granted = backend
                    .try_acquire_async(&request(&name, HolderId::random(), capacity))
                    .await
                    .expect("acquire")
                    .is_granted();
                assert!(granted, "fill: not granted");
            }));
        }
        for c in calls {
            c.await.unwrap();
        }
        left -= batch;
    }
}

/// Pairs per second of `tasks` tasks acquiring and releasing on `name` for `seconds`.
async fn pairs_per_second(
    backend: &Arc<RedisSemaphoreBackend>,
    name: &str,
    capacity: u64,
    tasks: usize,
    seconds: u64,
) -> f64 {
    let done = Arc::new(AtomicBool::new(false));
    let pairs = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (backend, done, pairs) = (Arc::clone(backend), Arc::clone(&done), Arc::clone(&pairs));
        let name = name.to_string();
        handles.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let holder = HolderId::random();
                let outcome = backend
                    .try_acquire_async(&request(&name, holder, capacity))
                    .await
                    .expect("acquire");
                assert!(outcome.is_granted(), "never full: not granted");
                let released = backend
                    .release_async(&name, holder, 0)
                    .await
                    .expect("release");
                assert_eq!(released, ReleaseOutcome::Released);
                pairs.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    done.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    pairs.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let server = RedisServer::start().unwrap_or_else(|e| {
        eprintln!("cannot start redis-server: {e}");
        std::process::exit(1);
    });
    let seconds = env("BENCH_SECONDS", 3);
    let tasks = env("BENCH_TASKS", 16) as usize;
    let store = RedisStore::builder()
        .url(server.url())
        .namespace("bench")
        .build()
        .unwrap();
    let backend = RedisSemaphoreBackend::new(&store).unwrap().into_arc();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "tollgate-redis semaphore: acquire+release pairs/s by live holders (redis-server {}, {tasks} tasks, {seconds} s each)",
        server.version()
    );
    println!(
        "{:>8} {:>12} {:>12} {:>10}",
        "holders", "pairs/s", "µs/pair", "vs 10"
    );
    let mut first = None;
    for holders in HOLDERS {
        let name = format!("holders-{holders}");
        let capacity = holders + tasks as u64 + 1;
        let rate = rt.block_on(async {
            fill(&backend, &name, holders, capacity).await;
            pairs_per_second(&backend, &name, capacity, tasks, seconds).await
        });
        let base = *first.get_or_insert(rate);
        println!(
            "{holders:>8} {rate:>12.0} {:>12.1} {:>9.2}x",
            1e6 / rate * tasks as f64,
            rate / base
        );
    }
}
