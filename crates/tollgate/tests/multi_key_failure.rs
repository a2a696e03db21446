//! Multi-key calls through the failure policies (`FailSafe` is a `MultiBackend`): a healthy
//! primary decides every key in one call; a failed one is answered by the items' policies
//! together — closed fails the call, open admits, fallback decides all-or-nothing on the
//! fallback backends — and the breaker stops calling a store that is down.

use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tollgate::store::failure::{BreakerState, CircuitBreaker, FailSafe};
use tollgate::store::memory::{MemoryBackend, MemoryStore};
use tollgate::store::multi::{KeyCheck, MultiBackend, MultiDecision, MultiOp};
use tollgate::store::{Backend, Op, Store};
use tollgate::time::{ManualClock, Micros};
use tollgate::{Decision, Error, Policy, Rate, StoreError};

const NOW: u64 = 1_780_000_000_000_000;

/// A store that is down, counting the calls that reach it.
#[derive(Clone, Default)]
struct Down(Arc<AtomicU64>);

impl Backend for Down {
    fn execute(&self, _key: &str, _op: Op, _now: Micros) -> Result<Option<Decision>, Error> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Err(Error::Store(StoreError::new("redis", "connection refused")))
    }
    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(async move { self.execute(key, op, now) })
    }
}

impl MultiBackend for Down {
    fn execute_all(
        items: &[KeyCheck<'_, Self>],
        _op: MultiOp,
        _now: Micros,
    ) -> Result<MultiDecision, Error> {
        items[0].backend().0.fetch_add(1, Ordering::Relaxed);
        Err(Error::Store(StoreError::new("redis", "connection refused")))
    }
    fn execute_all_async<'a>(
        items: &'a [KeyCheck<'a, Self>],
        op: MultiOp,
        now: Micros,
    ) -> BoxFuture<'a, Result<MultiDecision, Error>> {
        Box::pin(async move { Self::execute_all(items, op, now) })
    }
}

fn policy(per_hour: u64) -> Policy {
    Policy::gcra(Rate::per_hour(per_hour).unwrap()).unwrap()
}

fn memory(store: &MemoryStore, scope: &str, per_hour: u64) -> MemoryBackend {
    store.scope(scope).bind(&policy(per_hour)).unwrap()
}

#[test]
fn a_healthy_primary_decides_every_key_in_one_call() {
    let primary = MemoryStore::new();
    let user = FailSafe::fail_closed(memory(&primary, "user", 5));
    let global = FailSafe::fail_closed(memory(&primary, "global", 1));
    let items = [
        KeyCheck::new(&user, "alice", 1),
        KeyCheck::new(&global, "all", 1),
    ];
    assert!(
        MultiBackend::execute_all(&items, MultiOp::Check, NOW)
            .unwrap()
            .allowed
    );
    let d = MultiBackend::execute_all(&items, MultiOp::Check, NOW).unwrap();
    assert_eq!(d.binding().map(|(i, _)| i), Some(1));
    // alice was not charged by the denied call
    let alice = user.execute("alice", Op::Peek(1), NOW).unwrap().unwrap();
    assert_eq!(alice.remaining, 3);
}

#[test]
fn each_failure_policy_answers_a_multi_key_call_when_the_store_is_down() {
    let down = Down::default();
    // closed: the call fails with the store error
    let a = FailSafe::fail_closed(down.clone());
    let b = FailSafe::fail_closed(down.clone());
    let items = [KeyCheck::new(&a, "k", 1), KeyCheck::new(&b, "k2", 1)];
    assert!(matches!(
        MultiBackend::execute_all(&items, MultiOp::Check, NOW),
        Err(Error::Store(_))
    ));
    // open: every key admitted
    let a = FailSafe::fail_open(down.clone(), &policy(5));
    let b = FailSafe::fail_open(down.clone(), &policy(1));
    let items = [KeyCheck::new(&a, "k", 1), KeyCheck::new(&b, "k2", 1)];
    let d = MultiBackend::execute_all(&items, MultiOp::Check, NOW).unwrap();
    assert!(d.allowed && d.decisions.len() == 2);
    // fallback: decided all-or-nothing on the fallback memory backends
    let local = MemoryStore::new();
    let a = FailSafe::fallback(down.clone(), memory(&local, "user", 5));
    let b = FailSafe::fallback(down.clone(), memory(&local, "global", 1));
    let items = [KeyCheck::new(&a, "alice", 1), KeyCheck::new(&b, "all", 1)];
    assert!(
        MultiBackend::execute_all(&items, MultiOp::Check, NOW)
            .unwrap()
            .allowed
    );
    let d = MultiBackend::execute_all(&items, MultiOp::Check, NOW).unwrap();
    assert_eq!(d.binding().map(|(i, _)| i), Some(1));
    let alice = memory(&local, "user", 5)
        .execute("alice", Op::Peek(1), NOW)
        .unwrap()
        .unwrap();
    assert_eq!(
        alice.remaining, 3,
        "the local fallback was not charged by the denial"
    );
    // mixed: one closed item fails the whole call; open + fallback combine
    let closed = FailSafe::<Down, MemoryBackend>::fail_closed(down.clone());
    let items = [KeyCheck::new(&a, "bob", 1), KeyCheck::new(&closed, "x", 1)];
    assert!(MultiBackend::execute_all(&items, MultiOp::Check, NOW).is_err());
}

#[tokio::test]
async fn the_breaker_stops_calling_a_store_that_is_down() {
    let clock = ManualClock::new(NOW);
    let breaker = CircuitBreaker::builder("multi")
        .failures(3)
        .cool_down(Duration::from_secs(5))
        .clock(clock.clone())
        .build();
    let down = Down::default();
    let a = FailSafe::fail_open(down.clone(), &policy(5)).with_breaker(Arc::clone(&breaker));
    let b = FailSafe::fail_open(down.clone(), &policy(5)).with_breaker(Arc::clone(&breaker));
    let items = [KeyCheck::new(&a, "k", 1), KeyCheck::new(&b, "k", 1)];
    for _ in 0..10 {
        let d = FailSafe::execute_all_async(&items, MultiOp::Check, NOW)
            .await
            .unwrap();
        assert!(d.allowed);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(
        down.0.load(Ordering::Relaxed),
        3,
        "calls after the breaker opened skip the store"
    );
    // after the cool-down one probe goes through
    clock.advance(Duration::from_secs(6));
    let _ = FailSafe::execute_all(&items, MultiOp::Check, NOW).unwrap();
    assert_eq!(down.0.load(Ordering::Relaxed), 4);
}
