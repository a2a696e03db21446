//! `FailSafeSemaphore` over a store that can be switched off: what each failure policy gives
//! the caller while the store fails, that nothing of the store is touched by permits granted
//! without it, and that the semaphore is back on the store with the first call after the
//! store answers again — once the circuit breaker's cool-down has passed (the breaker runs on
//! its own manual clock, advanced by `SwitchableStore::up`). The metric and the hook are
//! checked too.

use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate::semaphore::{
    FailSafeSemaphore, MemorySemaphoreBackend, PermitBacking, Semaphore, SemaphoreBackend,
    SemaphoreError, SemaphoreOp, SemaphoreReply, SemaphoreStatus,
};
use tollgate::store::failure::{
    CircuitBreaker, FailureOutcome, FailurePolicy, DEFAULT_BREAKER_COOL_DOWN,
};
use tollgate::time::{Clock, ManualClock, Micros, SystemClock};
use tollgate::StoreError;

/// The memory backend behind a switch: `down` makes every call fail before touching it;
/// `lose_replies` makes calls run and then fail (a reply lost after the store acted).
/// `is_local` is false, so the semaphore treats it like a remote store.
struct SwitchableStore {
    inner: MemorySemaphoreBackend,
    down: AtomicBool,
    lose_replies: AtomicBool,
    calls: AtomicU64,
    /// The clock of the wrapper's circuit breaker.
    breaker_clock: ManualClock,
}

impl Default for SwitchableStore {
    fn default() -> Self {
        Self {
            inner: MemorySemaphoreBackend::default(),
            down: AtomicBool::new(false),
            lose_replies: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            breaker_clock: ManualClock::new(0),
        }
    }
}

impl SwitchableStore {
    fn gate(&self) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::new("test", "connection refused"));
        }
        Ok(())
    }

    fn reply<T>(&self, value: T) -> Result<T, StoreError> {
        if self.lose_replies.load(Ordering::SeqCst) {
            return Err(StoreError::new("test", "connection reset after the call"));
        }
        Ok(value)
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The store answers again, and the breaker's cool-down has passed (if it opened, the
    /// next call probes the store).
    fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
        self.breaker_clock.advance(DEFAULT_BREAKER_COOL_DOWN);
    }
}

impl SemaphoreBackend for SwitchableStore {
    fn call(&self, op: SemaphoreOp<'_>) -> Result<SemaphoreReply, StoreError> {
        self.gate()?;
        let reply = self.inner.call(op)?;
        match op {
            // Status answers are not subject to a lost reply.
            SemaphoreOp::Status { .. } => Ok(reply),
            _ => self.reply(reply),
        }
    }
    fn call_async<'a>(
        &'a self,
        op: SemaphoreOp<'a>,
    ) -> BoxFuture<'a, Result<SemaphoreReply, StoreError>> {
        Box::pin(async move {
            if let SemaphoreOp::Acquire(_) | SemaphoreOp::Release { .. } = op {
                tokio::task::yield_now().await;
            }
            self.call(op)
        })
    }
}

/// Hook calls, by outcome.
#[derive(Default)]
struct Seen {
    outcomes: Mutex<Vec<FailureOutcome>>,
}

impl Seen {
    fn take(&self) -> Vec<FailureOutcome> {
        std::mem::take(&mut *self.outcomes.lock().unwrap())
    }
}

type Guarded = FailSafeSemaphore<Arc<SwitchableStore>>;

fn setup(
    policy: FailurePolicy,
    capacity: u64,
) -> (
    Arc<SwitchableStore>,
    Arc<Seen>,
    Semaphore<Guarded>,
    ManualClock,
) {
    let clock = ManualClock::new(1_000_000);
    let (store, seen, sem) = setup_on(policy, capacity, Some(clock.clone()));
    (store, seen, sem, clock)
}

/// `clock: None` uses the system clock (needed where a wait must time out by itself).
fn setup_on(
    policy: FailurePolicy,
    capacity: u64,
    clock: Option<ManualClock>,
) -> (Arc<SwitchableStore>, Arc<Seen>, Semaphore<Guarded>) {
    let store = Arc::new(SwitchableStore::default());
    let seen = Arc::new(Seen::default());
    let hook_seen = Arc::clone(&seen);
    let breaker = CircuitBreaker::builder("test")
        .clock(store.breaker_clock.clone())
        .build();
    let backend = FailSafeSemaphore::with_policy(Arc::clone(&store), policy)
        .with_breaker(breaker)
        .on_failure(move |err, outcome| {
            assert_eq!(err.store, "test");
            hook_seen.outcomes.lock().unwrap().push(outcome);
        });
    let mut builder = Semaphore::builder("partner-api", capacity)
        .lease(Duration::from_secs(10))
        .max_wait(Duration::from_millis(200));
    if let Some(clock) = clock {
        builder = builder.clock(clock);
    }
    let sem = builder.build_on(backend.into_arc()).unwrap();
    (store, seen, sem)
}

/// What the store itself holds, at the manual clock's start (1 s).
fn store_status(store: &SwitchableStore, sem: &Semaphore<Guarded>) -> SemaphoreStatus {
    store_status_at(store, sem, 1_000_000)
}

fn store_status_at(
    store: &SwitchableStore,
    sem: &Semaphore<Guarded>,
    now: Micros,
) -> SemaphoreStatus {
    store.inner.status(sem.name(), now).unwrap()
}

#[test]
fn fail_closed_returns_the_store_error_and_recovers() {
    let (store, seen, sem, _clock) = setup(FailurePolicy::FailClosed, 2);
    let held = sem.acquire().unwrap();
    assert_eq!(held.backing(), PermitBacking::Store);
    assert!(seen.take().is_empty());

    store.down.store(true, Ordering::SeqCst);
    match sem.acquire() {
        Err(SemaphoreError::Store(e)) => assert_eq!(e.message, "connection refused"),
        other => panic!("expected a store error, got {other:?}"),
    }
    assert!(matches!(sem.try_acquire(), Err(SemaphoreError::Store(_))));
    assert!(matches!(sem.status(), Err(SemaphoreError::Store(_))));
    assert_eq!(
        seen.take(),
        [FailureOutcome::Rejected; 3],
        "two acquires and one status, each reported once"
    );
    // a store permit cannot be released while the store is down: an error, never LeaseExpired
    assert!(matches!(held.release(), Err(SemaphoreError::Store(_))));

    store.up();
    let back = sem.acquire().unwrap();
    assert_eq!(back.backing(), PermitBacking::Store);
    assert!(seen.take().is_empty());
    assert_eq!(
        store_status(&store, &sem).in_use,
        2,
        "the unreleased one + the new one"
    );
}

#[test]
fn fail_open_grants_unbacked_permits_that_never_touch_the_store() {
    let (store, seen, sem, clock) = setup(FailurePolicy::FailOpen, 1);
    let stored = sem.acquire().unwrap();
    assert!(!stored.is_unbacked());
    assert!(
        sem.try_acquire().unwrap().is_none(),
        "the store enforces capacity 1"
    );
    assert!(seen.take().is_empty(), "busy is not a failure");

    store.down.store(true, Ordering::SeqCst);
    let unbacked: Vec<_> = (0..3).map(|_| sem.acquire().unwrap()).collect();
    assert!(unbacked.iter().all(|p| p.is_unbacked()));
    assert!(sem.try_acquire().unwrap().unwrap().is_unbacked());
    assert_eq!(seen.take(), [FailureOutcome::Admitted; 4]);
    assert!(matches!(sem.status(), Err(SemaphoreError::Store(_))));
    assert_eq!(seen.take(), [FailureOutcome::Rejected]);

    // extending and releasing an unbacked permit never asks the store
    let calls = store.calls();
    clock.advance(Duration::from_secs(5));
    unbacked[0].extend().unwrap();
    assert_eq!(unbacked[0].expires_at(), 16_000_000);
    let mut unbacked = unbacked.into_iter();
    unbacked.next().unwrap().release().unwrap();
    assert_eq!(store.calls(), calls);

    store.up();
    assert!(
        sem.try_acquire().unwrap().is_none(),
        "recovered: the store enforces capacity again"
    );
    stored.release().unwrap();
    let again = sem.acquire().unwrap();
    assert!(!again.is_unbacked());
    // unbacked permits still release cleanly after recovery, without touching the store
    let calls = store.calls();
    for p in unbacked {
        p.release().unwrap();
    }
    assert_eq!(store.calls(), calls);
    assert_eq!(store_status(&store, &sem).in_use, 1);
    assert!(seen.take().is_empty());
}

#[test]
fn fail_open_unbacked_lease_still_ends() {
    let (store, _seen, sem, clock) = setup(FailurePolicy::FailOpen, 1);
    store.down.store(true, Ordering::SeqCst);
    let p = sem.acquire().unwrap();
    clock.advance(Duration::from_secs(11));
    store.up();
    assert!(matches!(
        p.release(),
        Err(SemaphoreError::LeaseExpired { .. })
    ));
}

#[test]
fn fallback_enforces_the_capacity_locally_and_recovers() {
    let (store, seen, sem) = setup_on(FailurePolicy::Fallback, 2, None);
    let stored = sem.acquire().unwrap();

    store.down.store(true, Ordering::SeqCst);
    let a = sem.acquire().unwrap();
    let b = sem.acquire().unwrap();
    assert_eq!(a.backing(), PermitBacking::Fallback);
    assert!(!a.is_unbacked());
    assert!(
        sem.try_acquire().unwrap().is_none(),
        "the local semaphore is full"
    );
    match sem.acquire() {
        Err(SemaphoreError::WaitTimeout {
            in_use: 2,
            capacity: 2,
            ..
        }) => {}
        other => panic!("expected a wait timeout on the local semaphore, got {other:?}"),
    }
    assert_eq!(sem.status().unwrap().in_use, 2, "status from the fallback");
    let outcomes = seen.take();
    assert!(outcomes.len() >= 5, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| *o == FailureOutcome::FellBack));

    // a waiter on the local semaphore gets the permit a local holder gives back
    let waiter = {
        let sem = sem.clone();
        std::thread::spawn(move || sem.acquire_n_within(1, Some(Duration::from_secs(5))))
    };
    std::thread::sleep(Duration::from_millis(30));
    a.release().unwrap();
    let c = waiter.join().unwrap().unwrap();
    assert_eq!(c.backing(), PermitBacking::Fallback);

    store.up();
    seen.take();
    let d = sem.acquire().unwrap();
    assert_eq!(d.backing(), PermitBacking::Store, "back on the store");
    assert!(
        sem.try_acquire().unwrap().is_none(),
        "the store has stored + d"
    );
    assert_eq!(sem.status().unwrap().in_use, 2);
    // fallback permits release locally after recovery; the store keeps its own
    b.release().unwrap();
    c.release().unwrap();
    assert_eq!(store_status_at(&store, &sem, SystemClock.now()).in_use, 2);
    stored.release().unwrap();
    d.release().unwrap();
    assert_eq!(store_status_at(&store, &sem, SystemClock.now()).in_use, 0);
    assert!(seen.take().is_empty());
}

#[test]
fn a_grant_whose_reply_was_lost_is_given_back_to_the_store() {
    let (store, seen, sem, _clock) = setup(FailurePolicy::Fallback, 1);
    store.lose_replies.store(true, Ordering::SeqCst);
    let local = sem.acquire().unwrap();
    assert_eq!(local.backing(), PermitBacking::Fallback);
    assert_eq!(seen.take(), [FailureOutcome::FellBack]);
    store.lose_replies.store(false, Ordering::SeqCst);
    assert_eq!(
        store_status(&store, &sem).in_use,
        0,
        "the store's grant (whose reply was lost) was released"
    );
    assert!(sem.try_acquire().unwrap().is_some());
}

#[test]
fn errors_of_release_and_extend_on_store_permits_are_returned_under_every_policy() {
    for policy in [
        FailurePolicy::FailOpen,
        FailurePolicy::FailClosed,
        FailurePolicy::Fallback,
    ] {
        let (store, seen, sem, _clock) = setup(policy, 2);
        let p = sem.acquire().unwrap();
        let q = sem.acquire().unwrap();
        store.down.store(true, Ordering::SeqCst);
        assert!(
            matches!(p.extend(), Err(SemaphoreError::Store(_))),
            "{policy:?}"
        );
        assert!(
            matches!(p.release(), Err(SemaphoreError::Store(_))),
            "{policy:?}"
        );
        assert!(seen.take().is_empty(), "{policy:?}: not a policy decision");
        store.up();
        q.extend().unwrap();
        q.release().unwrap();
        assert_eq!(
            store_status(&store, &sem).in_use,
            1,
            "p's lease is still running"
        );
    }
}

#[test]
fn a_panicking_hook_does_not_change_the_outcome() {
    let store = Arc::new(SwitchableStore::default());
    store.down.store(true, Ordering::SeqCst);
    let calls = Arc::new(AtomicUsize::new(0));
    let hook_calls = Arc::clone(&calls);
    let backend = FailSafeSemaphore::fail_open(Arc::clone(&store)).on_failure(move |_, _| {
        hook_calls.fetch_add(1, Ordering::SeqCst);
        panic!("hook bug");
    });
    let sem = Semaphore::builder("hooked", 1)
        .build_on(backend.into_arc())
        .unwrap();
    assert!(sem.acquire().unwrap().is_unbacked());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn async_paths_apply_the_policy_and_recover() {
    for policy in [
        FailurePolicy::FailOpen,
        FailurePolicy::FailClosed,
        FailurePolicy::Fallback,
    ] {
        let (store, seen, sem, _clock) = setup(policy, 1);
        store.down.store(true, Ordering::SeqCst);
        let result = sem.acquire_async().await;
        match policy {
            FailurePolicy::FailOpen => assert!(result.unwrap().is_unbacked()),
            FailurePolicy::FailClosed => {
                assert!(matches!(result, Err(SemaphoreError::Store(_))))
            }
            _ => {
                let p = result.unwrap();
                assert_eq!(p.backing(), PermitBacking::Fallback);
                assert!(sem.try_acquire_async().await.unwrap().is_none());
                p.release_async().await.unwrap();
            }
        }
        assert!(!seen.take().is_empty());
        store.up();
        let p = sem.acquire_async().await.unwrap();
        assert_eq!(p.backing(), PermitBacking::Store, "{policy:?}");
        assert_eq!(sem.in_use_async().await.unwrap(), 1);
        p.release_async().await.unwrap();
        assert!(seen.take().is_empty());
    }
}

// ------------------------------------------------------------------ the metric

/// A recorder that sums counters by name and labels (installed thread-locally).
#[derive(Default, Clone)]
struct Counters(Arc<Mutex<HashMap<String, u64>>>);

struct Handle(Arc<Mutex<HashMap<String, u64>>>, String);

impl metrics::CounterFn for Handle {
    fn increment(&self, value: u64) {
        *self.0.lock().unwrap().entry(self.1.clone()).or_default() += value;
    }
    fn absolute(&self, value: u64) {
        self.0.lock().unwrap().insert(self.1.clone(), value);
    }
}

impl metrics::Recorder for Counters {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let id = format!("{}{{{}}}", key.name(), labels.join(","));
        metrics::Counter::from_arc(Arc::new(Handle(Arc::clone(&self.0), id)))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn failures_are_counted_under_the_limiter_metric_name() {
    let counters = Counters::default();
    metrics::with_local_recorder(&counters, || {
        for policy in [
            FailurePolicy::FailOpen,
            FailurePolicy::FailClosed,
            FailurePolicy::Fallback,
        ] {
            let (store, _seen, sem, _clock) = setup(policy, 1);
            store.down.store(true, Ordering::SeqCst);
            for _ in 0..2 {
                let _ = sem.try_acquire();
            }
        }
    });
    let counts = counters.0.lock().unwrap().clone();
    let get = |k: &str| counts.get(k).copied().unwrap_or(0);
    assert_eq!(
        get("tollgate_store_failures_total{outcome=admitted,policy=fail_open}"),
        2
    );
    assert_eq!(
        get("tollgate_store_failures_total{outcome=rejected,policy=fail_closed}"),
        2
    );
    // each permit is dropped at once, so both fallback tries are granted locally
    assert_eq!(
        get("tollgate_store_failures_total{outcome=fell_back,policy=fallback}"),
        2
    );
    assert_eq!(
        get("tollgate_semaphore_acquired_without_store_total{backing=unbacked}"),
        2
    );
    assert_eq!(
        get("tollgate_semaphore_acquired_without_store_total{backing=fallback}"),
        2
    );
}
