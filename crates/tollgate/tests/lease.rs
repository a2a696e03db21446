//! Local leases for hot keys (`tollgate::store::lease`) over the memory store, with explicit
//! clock readings: pass-through for quiet keys, never over-admitting, giving back, crashes,
//! single flight, the last units of a quota, decision fields.

use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;
use tollgate::store::lease::{LeaseBackend, LeaseConfig, LeaseStore};
use tollgate::store::memory::{MemoryBackend, MemoryStore};
use tollgate::store::multi::{KeyCheck, MultiBackend, MultiOp};
use tollgate::store::{Backend, Op, Store};
use tollgate::{Algorithm, Decision, Error, Limiter, Policy, Rate};

const S: u64 = 1_000_000;

/// A memory backend that counts the calls it gets, by kind.
#[derive(Clone)]
struct Counting {
    inner: MemoryBackend,
    checks: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
    refunds: Arc<AtomicU64>,
}

impl Counting {
    fn new(inner: MemoryBackend) -> Self {
        Counting {
            inner,
            checks: Arc::default(),
            batches: Arc::default(),
            refunds: Arc::default(),
        }
    }
    fn count(&self, op: Op) {
        match op {
            Op::Check(1) => self.checks.fetch_add(1, Ordering::SeqCst),
            Op::Check(_) => self.batches.fetch_add(1, Ordering::SeqCst),
            Op::Refund(_) => self.refunds.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
    }
}

impl Backend for Counting {
    fn execute(&self, key: &str, op: Op, now: u64) -> Result<Option<Decision>, Error> {
        self.count(op);
        self.inner.execute(key, op, now)
    }
    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: u64,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        self.count(op);
        Box::pin(async move {
            tokio::task::yield_now().await;
            self.inner.execute(key, op, now)
        })
    }
}

fn config() -> LeaseConfig {
    LeaseConfig::default()
        .min_batch(4)
        .max_batch(50)
        .duration(Duration::from_millis(100))
        .background_sweep(false)
}

fn peek(b: &impl Backend, key: &str, now: u64) -> Decision {
    b.execute(key, Op::Peek(1), now).unwrap().unwrap()
}

/// The units free in the store (a peek of 1 reports what would remain after it).
fn free(b: &impl Backend, key: &str, now: u64) -> u64 {
    let d = peek(b, key, now);
    if d.allowed {
        d.remaining + 1
    } else {
        0
    }
}

#[test]
fn a_quiet_key_gets_exactly_the_stores_decisions() {
    let policy = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    let plain = MemoryStore::new().bind(&policy).unwrap();
    let inner = Counting::new(MemoryStore::new().bind(&policy).unwrap());
    let leased = LeaseBackend::new(inner.clone(), &policy, config()).unwrap();
    // One call every 150 ms (demand of at most 1 per 100 ms lease): never leased.
    for i in 0..40u64 {
        let now = S + i * 150_000;
        let a = plain.execute("k", Op::Check(1), now).unwrap().unwrap();
        let b = leased.execute("k", Op::Check(1), now).unwrap().unwrap();
        assert_eq!(a, b, "call {i}");
    }
    assert_eq!(inner.batches.load(Ordering::SeqCst), 0);
    assert_eq!(inner.checks.load(Ordering::SeqCst), 40);
    assert_eq!(leased.held(), 0);
}

#[test]
fn a_hot_key_is_decided_locally_and_the_store_is_charged_exactly() {
    let policy = Policy::gcra(Rate::per_second(100_000).unwrap()).unwrap();
    let inner = Counting::new(MemoryStore::new().bind(&policy).unwrap());
    let leased = LeaseBackend::new(inner.clone(), &policy, config()).unwrap();
    for _ in 0..1_000 {
        assert!(
            leased
                .execute("k", Op::Check(1), S)
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    let calls = inner.checks.load(Ordering::SeqCst) + inner.batches.load(Ordering::SeqCst);
    assert!(calls <= 40, "{calls} store calls for 1000 decisions");
    let held = leased.held();
    assert!(held < 50);
    // Charged in the store: every admitted call plus what the batch still holds.
    assert_eq!(free(&inner, "k", S), 100_000 - 1_000 - held);
    assert_eq!(leased.flush().unwrap(), held);
    assert_eq!(free(&inner, "k", S), 100_000 - 1_000);
}

#[test]
fn a_local_decision_reports_the_stores_remaining_plus_the_batch() {
    let policy = Policy::gcra(Rate::per_second(1_000).unwrap()).unwrap();
    let inner = MemoryStore::new().bind(&policy).unwrap();
    let leased = LeaseBackend::new(inner.clone(), &policy, config()).unwrap();
    for _ in 0..4 {
        let _ = leased.execute("k", Op::Check(1), S).unwrap();
    }
    // Demand 4: this call reserved a batch of 4 (1 for it, 3 banked).
    assert_eq!(leased.held(), 3);
    let d = leased.execute("k", Op::Check(1), S).unwrap().unwrap();
    assert!(d.allowed);
    assert_eq!(d.limit, 1_000);
    assert_eq!(d.retry_after, Duration::ZERO);
    assert_eq!(d.denied_by, None);
    // The store has 1000 - 3 (passed through) - 4 (batch) free; 2 units are left locally.
    assert_eq!(d.remaining, 1_000 - 7 + 2);
    // reset_after: the store's at the reserve (7 units charged at 1 ms each).
    assert_eq!(d.reset_after, Duration::from_millis(7));
    assert!(d.decided_at().is_some());
    // A peek is answered from the batch without charging it.
    let p = leased.execute("k", Op::Peek(2), S).unwrap().unwrap();
    assert!(p.allowed);
    assert_eq!(leased.held(), 2);
}

#[test]
fn expired_leases_are_given_back_by_the_sweep() {
    let policy = Policy::token_bucket(1_000, 1, Duration::from_secs(3_600)).unwrap();
    let inner = MemoryStore::new().bind(&policy).unwrap();
    let leased = LeaseBackend::new(inner.clone(), &policy, config()).unwrap();
    for _ in 0..30 {
        assert!(
            leased
                .execute("k", Op::Check(1), S)
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    let held = leased.held();
    assert!(held > 0);
    assert_eq!(free(&inner, "k", S), 1_000 - 30 - held);
    // Not ended yet: nothing given back.
    assert_eq!(leased.sweep(S + 99_000).unwrap(), 0);
    assert_eq!(leased.sweep(S + 100_000).unwrap(), held);
    assert_eq!(leased.held(), 0);
    assert_eq!(free(&inner, "k", S + 100_000), 1_000 - 30);
    // Idle for two durations more: the key is forgotten.
    assert_eq!(leased.tracked_keys(), 1);
    leased.sweep(S + 400_000).unwrap();
    assert_eq!(leased.tracked_keys(), 0);
}

#[test]
fn dropping_the_backend_gives_every_batch_back() {
    let policy = Policy::gcra(Rate::per_day(10_000).unwrap()).unwrap();
    let inner = MemoryStore::new().bind(&policy).unwrap();
    let store_view = inner.clone();
    let limiter = Limiter::builder(policy.clone())
        .build_on(LeaseBackend::new(inner, &policy, config()).unwrap());
    for _ in 0..100 {
        assert!(limiter.check("k").unwrap().allowed);
    }
    assert!(limiter.backend().held() > 0);
    drop(limiter);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let now = tollgate::time::micros(now);
    assert_eq!(free(&store_view, "k", now), 10_000 - 100);
}

#[test]
fn a_crashed_instance_loses_at_most_its_batch_until_the_store_refills() {
    let policy = Policy::gcra(Rate::per_second(1_000).unwrap()).unwrap();
    let inner = MemoryStore::new().bind(&policy).unwrap();
    let leased = LeaseBackend::new(inner.clone(), &policy, config()).unwrap();
    for _ in 0..200 {
        assert!(
            leased
                .execute("k", Op::Check(1), S)
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    let held = leased.held();
    assert!(held > 0 && held <= 50);
    std::mem::forget(leased); // a crash: no flush, no drop
    assert_eq!(free(&inner, "k", S), 1_000 - 200 - held);
    // The store's refill brings every charged unit back: fresh after the full period.
    assert_eq!(free(&inner, "k", S + 1_000_000), 1_000);
}

#[test]
fn window_algorithms_and_the_sliding_log_are_refused() {
    let store = LeaseStore::new(MemoryStore::new(), config());
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::SlidingLog,
    ] {
        let policy = Policy::parse(algorithm, "5/s").unwrap();
        let err = store.bind(&policy).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{algorithm:?}: {err}");
        assert!(err.to_string().contains(algorithm.name()), "{err}");
    }
    let gcra = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
    assert!(LeaseStore::new(MemoryStore::new(), config().min_batch(1))
        .bind(&gcra)
        .is_err());
    assert!(
        LeaseStore::new(MemoryStore::new(), config().duration(Duration::ZERO))
            .bind(&gcra)
            .is_err()
    );
}

#[test]
fn the_last_units_of_a_quota_are_still_admitted() {
    // Capacity 10 a day: batches are clamped to 10, and once fewer than a batch is left a
    // denied batch falls back to the call's own cost.
    let policy = Policy::gcra(Rate::per_day(10).unwrap()).unwrap();
    let inner = MemoryStore::new().bind(&policy).unwrap();
    let cfg = config().min_batch(2);
    let a = LeaseBackend::new(inner.clone(), &policy, cfg.clone()).unwrap();
    let b = LeaseBackend::new(inner.clone(), &policy, cfg).unwrap();
    let mut admitted = 0;
    for i in 0..40 {
        let which = if i % 2 == 0 { &a } else { &b };
        if which
            .execute("k", Op::Check(1), S)
            .unwrap()
            .unwrap()
            .allowed
        {
            admitted += 1;
        }
    }
    assert!(admitted <= 10);
    // Whatever the batches still hold comes back, and is then admitted.
    a.flush().unwrap();
    b.flush().unwrap();
    while a.execute("k", Op::Check(1), S).unwrap().unwrap().allowed {
        admitted += 1;
    }
    a.flush().unwrap();
    assert_eq!(admitted + a.held() + b.held(), 10);
    assert!(!peek(&inner, "k", S).allowed);
}

#[test]
fn many_instances_and_threads_never_admit_more_than_the_quota() {
    const QUOTA: u64 = 5_000;
    const INSTANCES: usize = 4;
    const THREADS: usize = 4;
    const CALLS: u64 = 2_000;
    for policy in [
        Policy::gcra(Rate::per_day(QUOTA).unwrap()).unwrap(),
        Policy::token_bucket(QUOTA, QUOTA, Duration::from_secs(86_400)).unwrap(),
    ] {
        let inner = MemoryStore::new().bind(&policy).unwrap();
        let admitted = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(INSTANCES * THREADS));
        let mut instances = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..INSTANCES {
            let leased = LeaseBackend::new(inner.clone(), &policy, config()).unwrap();
            for _ in 0..THREADS {
                let (leased, admitted, start) = (leased.clone(), admitted.clone(), start.clone());
                handles.push(std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..CALLS {
                        if leased
                            .execute("k", Op::Check(1), S)
                            .unwrap()
                            .unwrap()
                            .allowed
                        {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            instances.push(leased);
        }
        for h in handles {
            h.join().unwrap();
        }
        let admitted = admitted.load(Ordering::Relaxed);
        let held: u64 = instances.iter().map(|l| l.held()).sum();
        // 32000 calls for 5000 units: every unit is either admitted or still in a batch.
        assert!(admitted <= QUOTA, "{admitted} admitted of {QUOTA}");
        assert_eq!(admitted + held, QUOTA, "{policy}");
        assert!(held <= INSTANCES as u64 * 50);
        for l in &instances {
            l.flush().unwrap();
        }
        assert_eq!(free(&inner, "k", S), QUOTA - admitted, "{policy}");
    }
}

/// A backend whose batch reserves on key "hot" block until released.
struct Gated {
    inner: MemoryBackend,
    gate: Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>,
    batches: Arc<AtomicU64>,
}

impl Backend for Gated {
    fn execute(&self, key: &str, op: Op, now: u64) -> Result<Option<Decision>, Error> {
        if key == "hot" && matches!(op, Op::Check(c) if c > 1) {
            self.batches.fetch_add(1, Ordering::SeqCst);
            let (open, cond) = &*self.gate;
            let mut open = open.lock();
            while !*open {
                cond.wait(&mut open);
            }
        }
        self.inner.execute(key, op, now)
    }
    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: u64,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(async move { self.execute(key, op, now) })
    }
}

#[test]
fn one_caller_reserves_the_others_wait_and_other_keys_are_not_blocked() {
    let policy = Policy::gcra(Rate::per_second(10_000).unwrap()).unwrap();
    let gate = Arc::new((parking_lot::Mutex::new(true), parking_lot::Condvar::new()));
    let batches = Arc::new(AtomicU64::new(0));
    let gated = Gated {
        inner: MemoryStore::new().bind(&policy).unwrap(),
        gate: gate.clone(),
        batches: batches.clone(),
    };
    let leased = LeaseBackend::new(gated, &policy, config().max_batch(100)).unwrap();
    // Build up demand on "hot" and "cold" (passed through, then leased), and drain.
    for key in ["hot", "cold"] {
        for _ in 0..10 {
            let _ = leased.execute(key, Op::Check(1), S).unwrap();
        }
    }
    leased.flush().unwrap();
    let before = batches.load(Ordering::SeqCst);
    *gate.0.lock() = false;
    let mut hot = Vec::new();
    for _ in 0..8 {
        let leased = leased.clone();
        hot.push(std::thread::spawn(move || {
            leased
                .execute("hot", Op::Check(1), S)
                .unwrap()
                .unwrap()
                .allowed
        }));
    }
    std::thread::sleep(Duration::from_millis(200));
    // One reserve is in flight, the other seven callers wait for it...
    assert_eq!(batches.load(Ordering::SeqCst), before + 1);
    assert!(hot.iter().all(|h| !h.is_finished()));
    // ...and a caller of another key is decided meanwhile.
    for _ in 0..20 {
        assert!(
            leased
                .execute("cold", Op::Check(1), S)
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    *gate.0.lock() = true;
    gate.1.notify_all();
    for h in hot {
        assert!(h.join().unwrap());
    }
    assert_eq!(batches.load(Ordering::SeqCst), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_callers_share_one_reserve_per_batch() {
    let policy = Policy::gcra(Rate::per_second(1_000_000).unwrap()).unwrap();
    let inner = Counting::new(MemoryStore::new().bind(&policy).unwrap());
    let leased = LeaseBackend::new(inner.clone(), &policy, config().max_batch(1_000)).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let leased = leased.clone();
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0u64;
            for _ in 0..500 {
                if leased
                    .execute_async("k", Op::Check(1), S)
                    .await
                    .unwrap()
                    .unwrap()
                    .allowed
                {
                    admitted += 1;
                }
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    assert_eq!(admitted, 64 * 500);
    let batches = inner.batches.load(Ordering::SeqCst);
    let checks = inner.checks.load(Ordering::SeqCst);
    assert!(
        batches + checks < 200,
        "{batches} batches + {checks} checks for 32000 decisions"
    );
    let held = leased.held();
    assert_eq!(leased.flush_async().await.unwrap(), held);
    assert_eq!(free(&inner, "k", S), 1_000_000 - 32_000);
}

#[tokio::test]
async fn a_cancelled_reserve_does_not_leave_the_key_stuck() {
    struct Never(MemoryBackend);
    impl Backend for Never {
        fn execute(&self, key: &str, op: Op, now: u64) -> Result<Option<Decision>, Error> {
            self.0.execute(key, op, now)
        }
        fn execute_async<'a>(
            &'a self,
            key: &'a str,
            op: Op,
            now: u64,
        ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
            match op {
                Op::Check(c) if c > 1 => Box::pin(futures_util::future::pending()),
                _ => Box::pin(async move { self.0.execute(key, op, now) }),
            }
        }
    }
    let policy = Policy::gcra(Rate::per_second(1_000).unwrap()).unwrap();
    let leased = LeaseBackend::new(
        Never(MemoryStore::new().bind(&policy).unwrap()),
        &policy,
        config(),
    )
    .unwrap();
    for _ in 0..3 {
        let _ = leased.execute_async("k", Op::Check(1), S).await.unwrap();
    }
    // The fourth call reserves and never hears back: time it out.
    let r = tokio::time::timeout(
        Duration::from_millis(50),
        leased.execute_async("k", Op::Check(1), S),
    )
    .await;
    assert!(r.is_err());
    // The key is not stuck: a later call in a new window passes through (demand 1).
    let d = tokio::time::timeout(
        Duration::from_secs(5),
        leased.execute_async("k", Op::Check(1), S + 1_000_000),
    )
    .await
    .expect("a key whose reserve was cancelled must not block later callers");
    assert!(d.unwrap().unwrap().allowed);
}

#[test]
fn multi_key_calls_refunds_and_resets_pass_through() {
    let policy = Policy::gcra(Rate::per_second(1_000).unwrap()).unwrap();
    let store = LeaseStore::new(MemoryStore::new(), config());
    let b = store.bind(&policy).unwrap();
    let inner = b.inner().clone();
    let items = [KeyCheck::new(&b, "a", 5), KeyCheck::new(&b, "b", 7)];
    assert!(
        MultiBackend::execute_all(&items, MultiOp::Check, S)
            .unwrap()
            .allowed
    );
    assert_eq!(free(&inner, "a", S), 995);
    assert_eq!(free(&inner, "b", S), 993);
    b.execute("a", Op::Refund(5), S).unwrap();
    assert_eq!(free(&inner, "a", S), 1_000);
    for _ in 0..20 {
        let _ = b.execute("b", Op::Check(1), S).unwrap();
    }
    assert!(b.held() > 0);
    b.execute("b", Op::Reset, S).unwrap();
    assert_eq!(b.held(), 0);
    assert_eq!(free(&inner, "b", S), 1_000);
    // Invalid costs and costs above capacity are the store's errors, as without leases.
    assert!(matches!(
        b.execute("a", Op::Check(0), S),
        Err(Error::InvalidCost)
    ));
    assert!(matches!(
        b.execute("a", Op::Check(1_001), S),
        Err(Error::CostExceedsCapacity { .. })
    ));
}

#[test]
fn a_full_table_passes_new_keys_through() {
    let policy = Policy::gcra(Rate::per_second(1_000).unwrap()).unwrap();
    let inner = Counting::new(MemoryStore::new().bind(&policy).unwrap());
    let leased = LeaseBackend::new(inner.clone(), &policy, config().max_keys(2)).unwrap();
    for key in ["a", "b", "c"] {
        for _ in 0..50 {
            assert!(
                leased
                    .execute(key, Op::Check(1), S)
                    .unwrap()
                    .unwrap()
                    .allowed
            );
        }
    }
    assert_eq!(leased.tracked_keys(), 2);
    // "c" was never tracked: 50 single checks; "a" and "b" were leased.
    assert!(inner.checks.load(Ordering::SeqCst) >= 50);
    assert!(inner.batches.load(Ordering::SeqCst) >= 2);
}
