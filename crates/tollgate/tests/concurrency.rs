//! Many threads and many tokio tasks on one key: never more admitted than the policy allows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::time::ManualClock;
use tollgate::{Algorithm, DirectLimiter, Limiter, Policy, Rate};

const THREADS: usize = 8;
const ATTEMPTS: usize = 2_000;

fn policies() -> Vec<Policy> {
    let mut v: Vec<Policy> = Algorithm::ALL
        .into_iter()
        .map(|a| Policy::new(a, [Rate::per_second(100).unwrap()]).unwrap())
        .collect();
    v.push(Policy::parse(Algorithm::Gcra, "100/s; 150/min").unwrap());
    v.push(Policy::parse(Algorithm::SlidingLog, "100/s; 150/min").unwrap());
    v
}

/// With time frozen, exactly the capacity is admitted, whatever the interleaving.
#[test]
fn threads_on_one_key_with_frozen_time_admit_exactly_the_capacity() {
    for policy in policies() {
        let clock = ManualClock::new(1_000_000_000);
        let limiter = Limiter::builder(policy.clone()).clock(clock).build();
        let admitted = Arc::new(AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                let limiter = limiter.clone();
                let admitted = Arc::clone(&admitted);
                s.spawn(move || {
                    for _ in 0..ATTEMPTS {
                        if limiter.check("hot").unwrap().allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 100, "{policy}");
    }
}

#[test]
fn direct_limiter_threads_with_frozen_time_admit_exactly_the_capacity() {
    for policy in policies() {
        let limiter = Limiter::builder(policy.clone())
            .clock(ManualClock::new(5_000_000))
            .build_direct();
        let admitted = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    for _ in 0..ATTEMPTS {
                        if limiter.check_n(1).unwrap().allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 100, "{policy}");
    }
}

#[test]
fn tokio_tasks_on_one_key_with_frozen_time_admit_exactly_the_capacity() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    for policy in policies() {
        let limiter = Limiter::builder(policy.clone())
            .clock(ManualClock::new(7_000_000))
            .build();
        let admitted = Arc::new(AtomicU64::new(0));
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..64 {
                let limiter = limiter.clone();
                let admitted = Arc::clone(&admitted);
                tasks.push(tokio::spawn(async move {
                    for _ in 0..200 {
                        if limiter.check_n_async("hot", 1).await.unwrap().allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::task::yield_now().await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 100, "{policy}");
    }
}

/// With the real clock, admitted units never exceed `burst + elapsed / T` (GCRA) nor the
/// per-window limits, across threads.
#[test]
fn threads_on_one_key_with_the_real_clock_stay_within_the_rate() {
    let limiter = DirectLimiter::new(
        Policy::gcra(Rate::per_second(1000).unwrap().with_burst(10).unwrap()).unwrap(),
    );
    let keyed = Limiter::memory(
        Policy::gcra(Rate::per_second(1000).unwrap().with_burst(10).unwrap()).unwrap(),
    );
    let admitted_direct = AtomicU64::new(0);
    let admitted_keyed = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while start.elapsed() < Duration::from_millis(300) {
                    if limiter.check().unwrap().allowed {
                        admitted_direct.fetch_add(1, Ordering::Relaxed);
                    }
                    if keyed.check("k").unwrap().allowed {
                        admitted_keyed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    // measured after every thread stopped: an upper bound of the time the limiter saw
    let elapsed_us = start.elapsed().as_micros() as u64;
    let bound = 10 + elapsed_us / 1000 + 1;
    for (name, a) in [("direct", &admitted_direct), ("keyed", &admitted_keyed)] {
        let a = a.load(Ordering::Relaxed);
        assert!(a <= bound, "{name}: admitted {a} > bound {bound}");
        assert!(a > 0, "{name}: admitted nothing");
    }
}

/// Many tasks waiting with `acquire_async` on one key are admitted one emission interval apart;
/// no more than the policy allows by the end.
#[test]
fn waiting_tasks_are_admitted_at_the_policy_rate() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let limiter = Limiter::memory(
        Policy::gcra(Rate::per_second(200).unwrap().with_burst(1).unwrap()).unwrap(),
    );
    let started = Instant::now();
    let admitted = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                limiter
                    .acquire_async("k", 1, Duration::from_secs(5))
                    .await
                    .is_ok()
            }));
        }
        let mut n = 0;
        for t in tasks {
            n += u64::from(t.await.unwrap());
        }
        n
    });
    let elapsed = started.elapsed();
    assert_eq!(admitted, 20);
    // 20 units at 5 ms each with a burst of 1 take at least 19 intervals
    assert!(elapsed >= Duration::from_millis(95), "{elapsed:?}");
}
