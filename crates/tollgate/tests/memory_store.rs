//! The in-memory store: bounded memory, idle expiry, eviction, waits and cancellation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tollgate::store::memory::MemoryStore;
use tollgate::time::ManualClock;
use tollgate::{Algorithm, Limiter, Policy, Rate};

fn gcra(limit: u64) -> Policy {
    Policy::gcra(Rate::per_second(limit).unwrap()).unwrap()
}

#[test]
fn a_flood_of_distinct_keys_never_grows_past_the_cap() {
    for algorithm in Algorithm::ALL {
        let policy = Policy::new(algorithm, [Rate::per_hour(10).unwrap()]).unwrap();
        let limiter = Limiter::builder(policy)
            .clock(ManualClock::new(1_000_000))
            .build_with(&MemoryStore::new().max_keys(1_000))
            .unwrap();
        for i in 0..50_000 {
            assert!(limiter.check(&format!("attacker-{i}")).unwrap().allowed);
        }
        let stats = limiter.backend().stats();
        assert!(stats.keys <= 1_000, "{algorithm}: {} keys", stats.keys);
        assert!(stats.evictions >= 49_000, "{algorithm}: {stats:?}");
    }
}

#[test]
fn idle_keys_expire_by_themselves_without_changing_decisions() {
    let clock = ManualClock::new(1_000_000);
    let limiter = Limiter::builder(gcra(10))
        .clock(clock.clone())
        .build_with(&MemoryStore::new().sweep_interval(Duration::from_millis(100)))
        .unwrap();
    for i in 0..5_000 {
        let _ = limiter.check(&format!("k{i}")).unwrap();
    }
    assert_eq!(limiter.backend().stats().keys, 5_000);
    let hot = limiter.check_n("hot", 10).unwrap();
    assert_eq!(hot.remaining, 0);
    // every k* key is back to fresh after 100 ms; "hot" after 1 s
    clock.advance(Duration::from_millis(500));
    let _ = limiter.check("new").unwrap(); // an insert sweeps the shard it lands in
    for i in 0..5_000 {
        let _ = limiter.check(&format!("again{i}")).unwrap();
    }
    let stats = limiter.backend().stats();
    assert!(stats.expired >= 4_900, "{stats:?}");
    assert_eq!(stats.evictions, 0);
    // "hot" was not fresh, so it was kept and still denies correctly
    assert_eq!(
        limiter.peek("hot", 10).unwrap().retry_after,
        Duration::from_millis(500)
    );
}

#[test]
fn denials_and_peeks_of_unknown_keys_store_nothing() {
    let limiter = Limiter::memory(gcra(1));
    for i in 0..1_000 {
        let _ = limiter.peek(&format!("p{i}"), 1).unwrap();
        limiter.refund(&format!("r{i}"), 1).unwrap();
        limiter.reset(&format!("x{i}")).unwrap();
    }
    assert_eq!(limiter.backend().stats().keys, 0);
}

#[test]
fn eviction_drops_the_keys_closest_to_fresh_first() {
    let clock = ManualClock::new(1_000_000);
    let limiter = Limiter::builder(Policy::gcra(Rate::per_hour(100).unwrap()).unwrap())
        .clock(clock.clone())
        .build_with(&MemoryStore::new().max_keys(32))
        .unwrap();
    // "heavy" used its whole burst: its horizon is an hour away
    let _ = limiter.check_n("heavy", 100).unwrap();
    for i in 0..200 {
        let _ = limiter.check(&format!("light{i}")).unwrap();
    }
    assert!(
        !limiter.peek("heavy", 1).unwrap().allowed,
        "the most used key was evicted"
    );
}

#[test]
fn clones_share_state() {
    let a = Limiter::memory(gcra(2));
    let b = a.clone();
    assert!(a.check("k").unwrap().allowed);
    assert!(b.check("k").unwrap().allowed);
    assert!(!a.check("k").unwrap().allowed);
}

#[test]
fn manual_clock_drives_blocking_waits() {
    let clock = ManualClock::new(0);
    let limiter = Limiter::builder(gcra(1)).clock(clock.clone()).build();
    assert!(limiter.check("k").unwrap().allowed);
    let done = Arc::new(AtomicBool::new(false));
    let waiter = {
        let limiter = limiter.clone();
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let d = limiter.acquire("k", 1, Duration::from_secs(10)).unwrap();
            done.store(true, Ordering::SeqCst);
            d
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !done.load(Ordering::SeqCst),
        "returned before the clock moved"
    );
    clock.advance(Duration::from_secs(1));
    assert!(waiter.join().unwrap().allowed);
    assert_eq!(clock.now(), 1_000_000);
}

#[test]
fn auto_advancing_clock_makes_waits_instant_and_exact() {
    let clock = ManualClock::auto_advance(0);
    let limiter = Limiter::builder(gcra(4)).clock(clock.clone()).build();
    for _ in 0..12 {
        assert!(
            limiter
                .acquire("k", 1, Duration::from_secs(10))
                .unwrap()
                .allowed
        );
    }
    // 4 at once, then 8 more at 250 ms each
    assert_eq!(clock.now(), 2_000_000);
}

#[tokio::test(flavor = "current_thread")]
async fn a_wait_on_one_key_never_delays_another_key() {
    let clock = ManualClock::new(0);
    let limiter = Limiter::builder(gcra(1)).clock(clock.clone()).build();
    assert!(limiter.check("slow").unwrap().allowed);
    let slow = {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            limiter
                .acquire_async("slow", 1, Duration::from_secs(60))
                .await
        })
    };
    tokio::task::yield_now().await;
    // while "slow" waits (the clock does not move), another key is served at once
    for i in 0..100 {
        let d = limiter
            .acquire_async(&format!("fast{i}"), 1, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(d.allowed);
    }
    assert!(!slow.is_finished());
    clock.advance(Duration::from_secs(1));
    assert!(slow.await.unwrap().unwrap().allowed);
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_a_waiting_acquire_charges_nothing() {
    let clock = ManualClock::new(0);
    let limiter = Limiter::builder(gcra(1)).clock(clock.clone()).build();
    assert!(limiter.check("k").unwrap().allowed);
    let before = limiter.peek("k", 1).unwrap();
    {
        let fut = limiter.acquire_async("k", 1, Duration::from_secs(60));
        let r = tokio::time::timeout(Duration::from_millis(20), fut).await;
        assert!(r.is_err(), "it should still be waiting");
    }
    assert_eq!(limiter.peek("k", 1).unwrap(), before);
    clock.advance(Duration::from_secs(1));
    assert!(
        limiter.check("k").unwrap().allowed,
        "the dropped waiter took the unit"
    );
}

#[test]
fn wrappers_limit_each_call() {
    let clock = ManualClock::auto_advance(0);
    let limiter = Limiter::builder(gcra(2)).clock(clock.clone()).build();
    let square = limiter.wrap("square", Duration::from_secs(5), |x: u64| x * x);
    let results: Vec<u64> = (1..=6).map(|x| square(x).unwrap()).collect();
    assert_eq!(results, vec![1, 4, 9, 16, 25, 36]);
    // 2 at once, then 4 more at 500 ms each
    assert_eq!(clock.now(), 2_000_000);
}

/// `Arc<dyn Backend>` and `Box<dyn Backend>` are backends: a store chosen at run time.
#[test]
fn a_store_chosen_at_run_time_is_a_backend() {
    use std::sync::Arc;
    use tollgate::store::{Backend, Store};
    let policy = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
    let store = tollgate::store::memory::MemoryStore::new();
    let arc: Arc<dyn Backend> = Arc::new(store.bind(&policy).unwrap());
    let limiter = tollgate::Limiter::builder(policy.clone()).build_on(arc);
    assert!(limiter.check("k").unwrap().allowed);
    let boxed: Box<dyn Backend> = Box::new(store.bind(&policy).unwrap());
    let shared = tollgate::Limiter::builder(policy).build_on(boxed);
    assert!(
        !shared.check("k").unwrap().allowed,
        "same store and policy: shared state"
    );
}
