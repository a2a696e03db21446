//! Regression tests for issue 10's ergonomics items: a weight on `wrap`/`wrap_async`, a
//! named wait-forever, and the reset instant on decisions.

use std::time::{Duration, UNIX_EPOCH};
use tollgate::time::ManualClock;
use tollgate::{DirectLimiter, Error, Limiter, Policy, Rate, WAIT_FOREVER};

const T0: u64 = 1_700_000_000_000_000;

fn limiter(policy: Policy, clock: &ManualClock) -> Limiter {
    Limiter::builder(policy).clock(clock.clone()).build()
}

/// `wrap` charged 1 unit per call whatever the call cost; `wrap_n` charges `cost`.
#[test]
fn wrap_n_charges_its_weight() {
    let clock = ManualClock::new(T0);
    let l = limiter(Policy::gcra(Rate::per_minute(10).unwrap()).unwrap(), &clock);
    let heavy = l.wrap_n("k", 3, Duration::ZERO, |x: u64| x + 1);
    assert_eq!(heavy(1).unwrap(), 2);
    assert_eq!(l.peek("k", 1).unwrap().remaining, 6);
    assert_eq!(heavy(2).unwrap(), 3);
    assert_eq!(heavy(3).unwrap(), 4);
    // 9 of 10 used: a fourth call of 3 would wait 12 s, more than max_wait
    match heavy(4) {
        Err(Error::WaitTimeout { retry_after }) => assert_eq!(retry_after, Duration::from_secs(12)),
        other => panic!("expected WaitTimeout, got {other:?}"),
    }
    // wrap keeps charging 1
    let light = l.wrap("k", Duration::ZERO, |()| ());
    light(()).unwrap();
    assert!(!l.peek("k", 1).unwrap().allowed);
    // a weight above the capacity is an error, even with no limit on the wait
    let never = l.wrap_n("other", 11, WAIT_FOREVER, |()| ());
    assert!(matches!(
        never(()),
        Err(Error::CostExceedsCapacity {
            cost: 11,
            capacity: 10
        })
    ));
    assert!(matches!(
        l.wrap_n("other", 0, WAIT_FOREVER, |()| ())(()),
        Err(Error::InvalidCost)
    ));
}

#[tokio::test]
async fn wrap_async_n_charges_its_weight_and_waits() {
    let clock = ManualClock::auto_advance(T0);
    let l = limiter(Policy::gcra(Rate::per_second(4).unwrap()).unwrap(), &clock);
    let call = l.wrap_async_n("k", 2, WAIT_FOREVER, |n: u32| async move { n * 10 });
    assert_eq!(call(1).await.unwrap(), 10);
    assert_eq!(call(2).await.unwrap(), 20);
    assert_eq!(clock.now(), T0);
    // the bucket is empty: the third call waits 500 ms (two units at 4/s) of the test clock
    assert_eq!(call(3).await.unwrap(), 30);
    assert_eq!(clock.now(), T0 + 500_000);
}

#[test]
fn wait_forever_waits_as_long_as_the_policy_needs() {
    let clock = ManualClock::auto_advance(T0);
    let day = Policy::parse(tollgate::Algorithm::SlidingLog, "2/day").unwrap();
    let l = limiter(day, &clock);
    assert!(l.acquire("k", 2, WAIT_FOREVER).unwrap().allowed);
    let d = l.acquire("k", 1, WAIT_FOREVER).unwrap();
    assert!(d.allowed);
    assert_eq!(clock.now(), T0 + 86_400_000_000);
    assert!(matches!(
        l.acquire("k", 3, WAIT_FOREVER),
        Err(Error::CostExceedsCapacity {
            cost: 3,
            capacity: 2
        })
    ));
    let direct = DirectLimiter::new(Policy::gcra(Rate::per_hour(1).unwrap()).unwrap());
    assert!(matches!(
        direct.acquire(2, WAIT_FOREVER),
        Err(Error::CostExceedsCapacity { .. })
    ));
}

#[tokio::test]
async fn wait_forever_async() {
    let clock = ManualClock::auto_advance(T0);
    let l = limiter(Policy::gcra(Rate::per_hour(1).unwrap()).unwrap(), &clock);
    assert!(l.acquire_async("k", 1, WAIT_FOREVER).await.unwrap().allowed);
    assert!(l.acquire_async("k", 1, WAIT_FOREVER).await.unwrap().allowed);
    assert_eq!(clock.now(), T0 + 3_600_000_000);
}

/// Decisions carried `reset_after` only; users who want a timestamp (`X-RateLimit-Reset`,
/// "resets at ...") get it from the decision's time.
#[test]
fn reset_at_and_retry_at_come_from_the_decision_time() {
    let clock = ManualClock::new(T0);
    let l = limiter(Policy::gcra(Rate::per_minute(6).unwrap()).unwrap(), &clock);
    let at = |us: u64| UNIX_EPOCH + Duration::from_micros(us);
    let d = l.check_n("k", 5).unwrap();
    assert_eq!(d.decided_at(), Some(at(T0)));
    assert_eq!(d.reset_at(), at(T0 + 50_000_000));
    assert_eq!(d.retry_at(), at(T0));
    clock.advance(Duration::from_secs(3));
    let d = l.check_n("k", 3).unwrap();
    assert!(!d.allowed);
    // GCRA 6/min: TAT = T0 + 50 s; 3 more would make it T0 + 80 s, 77 s ahead of now where
    // 60 s is the most allowed: retry in 17 s; the key is fresh at the TAT.
    assert_eq!(d.retry_after, Duration::from_secs(17));
    assert_eq!(d.decided_at(), Some(at(T0 + 3_000_000)));
    assert_eq!(d.retry_at(), at(T0 + 3_000_000) + d.retry_after);
    assert_eq!(d.reset_at(), at(T0 + 50_000_000));
    // time passing does not change a decision already made
    clock.advance(Duration::from_secs(100));
    assert_eq!(d.reset_at(), at(T0 + 50_000_000));
    // peeks and direct limiters carry their time too
    assert_eq!(
        l.peek("k", 1).unwrap().decided_at(),
        Some(at(T0 + 103_000_000))
    );
    let direct = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap())
        .clock(clock.clone())
        .build_direct();
    let d = direct.check().unwrap();
    assert_eq!(d.reset_at(), at(T0 + 104_000_000));
    // the time is not part of what a decision decides
    let a = l.peek("k", 1).unwrap();
    clock.advance(Duration::from_micros(1));
    let b = l.peek("k", 1).unwrap();
    assert_ne!(a.decided_at(), b.decided_at());
    assert_eq!(a, b);
}
