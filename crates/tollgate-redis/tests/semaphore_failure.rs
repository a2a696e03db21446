//! `FailSafeSemaphore` over a real redis-server that is stopped and restarted mid-run: for
//! each failure policy, what a caller gets while Redis is down (sync and async), and that the
//! semaphore is back on Redis by itself once Redis answers again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate::semaphore::{FailSafeSemaphore, Permit, PermitBacking, Semaphore, SemaphoreError};
use tollgate::store::failure::{FailureOutcome, FailurePolicy};
use tollgate_redis::{RedisSemaphoreBackend, RedisStore};

type Guarded = FailSafeSemaphore<RedisSemaphoreBackend>;

/// Hook calls, by outcome.
#[derive(Default)]
struct Seen {
    outcomes: Mutex<Vec<FailureOutcome>>,
    count: AtomicUsize,
}

impl Seen {
    fn take(&self) -> Vec<FailureOutcome> {
        std::mem::take(&mut *self.outcomes.lock().unwrap())
    }
}

fn semaphore(url: &str, policy: FailurePolicy, seen: &Arc<Seen>) -> Semaphore<Guarded> {
    let store = RedisStore::builder()
        .url(url)
        .namespace(format!("semfail-{}", policy.as_str()))
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let seen = Arc::clone(seen);
    let backend =
        FailSafeSemaphore::with_policy(RedisSemaphoreBackend::new(&store).unwrap(), policy)
            .on_failure(move |err, outcome| {
                assert_eq!(err.store, "redis");
                seen.outcomes.lock().unwrap().push(outcome);
                seen.count.fetch_add(1, Ordering::SeqCst);
            });
    Semaphore::builder("partner-api", 2)
        .lease(Duration::from_secs(30))
        .max_wait(Duration::from_millis(300))
        .build_on(backend.into_arc())
        .unwrap()
}

/// Tries until Redis answers an acquire again (no failure reported), within 15 s.
fn wait_recovered(sem: &Semaphore<Guarded>, seen: &Seen) -> Permit<Guarded> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = seen.count.load(Ordering::SeqCst);
        let result = sem.try_acquire();
        if seen.count.load(Ordering::SeqCst) == before {
            let permit = result.expect("Redis answered").expect("a permit is free");
            assert_eq!(permit.backing(), PermitBacking::Store);
            return permit;
        }
        drop(result);
        assert!(Instant::now() < deadline, "no recovery within 15 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_policy(policy: FailurePolicy) {
    let Some(mut server) = tollgate_testkit::require_redis() else {
        return;
    };
    let seen = Arc::new(Seen::default());
    let sem = semaphore(&server.url(), policy, &seen);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Redis up: Redis enforces the capacity, nothing is reported.
    let held = sem.acquire().unwrap();
    assert_eq!(held.backing(), PermitBacking::Store);
    let second = sem.acquire().unwrap();
    assert!(
        sem.try_acquire().unwrap().is_none(),
        "{policy:?}: full on Redis"
    );
    second.release().unwrap();
    assert!(seen.take().is_empty());

    server.stop();
    let mut granted_while_down = Vec::new();
    match policy {
        FailurePolicy::FailClosed => {
            for _ in 0..2 {
                match sem.acquire() {
                    Err(SemaphoreError::Store(e)) => assert_eq!(e.store, "redis"),
                    other => panic!("expected a store error, got {other:?}"),
                }
            }
            assert!(matches!(sem.try_acquire(), Err(SemaphoreError::Store(_))));
            assert!(matches!(
                rt.block_on(sem.acquire_async()),
                Err(SemaphoreError::Store(_))
            ));
            assert_eq!(seen.take(), [FailureOutcome::Rejected; 4]);
        }
        FailurePolicy::FailOpen => {
            // capacity 2, one store permit held, and still everyone gets in
            for _ in 0..3 {
                let p = sem.acquire().unwrap();
                assert!(p.is_unbacked());
                granted_while_down.push(p);
            }
            let p = rt.block_on(sem.acquire_async()).unwrap();
            assert!(p.is_unbacked());
            // releasing an unbacked permit needs no Redis: Ok, not a store error
            p.release().unwrap();
            assert_eq!(seen.take(), [FailureOutcome::Admitted; 4]);
        }
        _ => {
            // the in-memory fallback enforces capacity 2 in this process
            let a = sem.acquire().unwrap();
            let b = rt.block_on(sem.acquire_async()).unwrap();
            assert_eq!(a.backing(), PermitBacking::Fallback);
            assert_eq!(b.backing(), PermitBacking::Fallback);
            assert!(sem.try_acquire().unwrap().is_none(), "the fallback is full");
            assert!(matches!(
                sem.acquire(),
                Err(SemaphoreError::WaitTimeout {
                    in_use: 2,
                    capacity: 2,
                    ..
                })
            ));
            assert_eq!(sem.status().unwrap().in_use, 2, "status from the fallback");
            b.release().unwrap();
            let c = sem.acquire().unwrap();
            assert_eq!(c.backing(), PermitBacking::Fallback);
            granted_while_down.extend([a, c]);
            let outcomes = seen.take();
            assert!(outcomes.len() >= 5, "{outcomes:?}");
            assert!(outcomes.iter().all(|o| *o == FailureOutcome::FellBack));
        }
    }
    // a Redis permit cannot be extended while Redis is down: an error, not a lost lease
    assert!(matches!(held.extend(), Err(SemaphoreError::Store(_))));

    // Redis comes back (empty: the permit held before the outage is gone with its data)
    server.restart().unwrap();
    let first = wait_recovered(&sem, &seen);
    seen.take();
    let second = rt.block_on(sem.acquire_async()).unwrap();
    assert_eq!(second.backing(), PermitBacking::Store);
    assert!(
        sem.try_acquire().unwrap().is_none(),
        "{policy:?}: Redis enforces the capacity again"
    );
    assert_eq!(sem.status().unwrap().in_use, 2);
    // permits granted while Redis was down release locally and leave Redis alone
    for p in granted_while_down {
        p.release().unwrap();
    }
    assert_eq!(sem.status().unwrap().in_use, 2);
    assert!(
        matches!(held.release(), Err(SemaphoreError::LeaseExpired { .. })),
        "the restarted Redis no longer knows the old holder"
    );
    first.release().unwrap();
    rt.block_on(second.release_async()).unwrap();
    assert_eq!(sem.status().unwrap().in_use, 0);
    assert!(seen.take().is_empty(), "nothing failed after the recovery");
}

#[test]
fn fail_closed_over_a_stopped_redis_then_recovery() {
    run_policy(FailurePolicy::FailClosed);
}

#[test]
fn fail_open_over_a_stopped_redis_then_recovery() {
    run_policy(FailurePolicy::FailOpen);
}

#[test]
fn fallback_over_a_stopped_redis_then_recovery() {
    run_policy(FailurePolicy::Fallback);
}
