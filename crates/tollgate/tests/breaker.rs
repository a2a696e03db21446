//! The circuit breaker of the failure policies (driven by a `ManualClock`), over a store that
//! can be switched off: after N consecutive failures calls are answered by the policy without
//! touching the store; after the cool-down one probe goes through and a success closes it.
//! Also: decision hooks see every verdict and store failure and can never change a verdict.

use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate::hooks::{Event, Hook};
use tollgate::semaphore::{FailSafeSemaphore, MemorySemaphoreBackend, Semaphore, SemaphoreError};
use tollgate::store::failure::{
    BreakerState, CircuitBreaker, FailSafe, FailSafeStore, FailureOutcome, FailurePolicy,
};
use tollgate::store::memory::{MemoryBackend, MemoryStore};
use tollgate::store::{Backend, Op, Store};
use tollgate::time::{ManualClock, Micros};
use tollgate::{Decision, Error, Limiter, Policy, Rate, StoreError, StoreErrorKind};

const COOL_DOWN: Duration = Duration::from_secs(2);

/// A memory backend behind a switch; counts the calls that reach it.
struct Switchable {
    inner: MemoryBackend,
    down: AtomicBool,
    calls: AtomicU64,
}

impl Switchable {
    fn new(policy: &Policy) -> Arc<Self> {
        Arc::new(Switchable {
            inner: MemoryStore::new().bind(policy).unwrap(),
            down: AtomicBool::new(false),
            calls: AtomicU64::new(0),
        })
    }
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

impl Backend for Switchable {
    fn execute(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::with_kind(
                "test",
                StoreErrorKind::ConnectionRefused,
                "127.0.0.1:1",
            )
            .into());
        }
        self.inner.execute(key, op, now)
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

fn policy() -> Policy {
    Policy::gcra(Rate::per_second(3).unwrap()).unwrap()
}

fn breaker(clock: &ManualClock, failures: u32) -> Arc<CircuitBreaker> {
    CircuitBreaker::builder("test")
        .failures(failures)
        .cool_down(COOL_DOWN)
        .clock(clock.clone())
        .build()
}

/// Every event a hook was shown, as text.
#[derive(Default, Clone)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn hook(&self) -> Hook {
        let log = self.clone();
        Hook::new(move |e| {
            let line = match e {
                Event::Breaker(t) => format!("breaker {:?}->{:?}", t.from, t.to),
                Event::StoreFailure(f) => format!("failure {:?} {:?}", f.outcome, f.error.kind),
                Event::Decision(d) => format!(
                    "decision {} allowed={} failure={:?}",
                    d.key,
                    d.is_allowed(),
                    d.store_failure.map(|f| (f.outcome, f.error.kind))
                ),
                _ => "other".into(),
            };
            log.0.lock().unwrap().push(line);
        })
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[test]
fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
    let clock = ManualClock::new(0);
    let b = breaker(&clock, 3);
    let err = StoreError::with_kind("test", StoreErrorKind::Timeout, "slow");
    assert!(b.record_failure(false, &err).is_none());
    assert!(b.record_failure(false, &err).is_none());
    b.record_success(false);
    assert_eq!(b.consecutive_failures(), 0);
    assert!(b.record_failure(false, &err).is_none());
    assert!(b.record_failure(false, &err).is_none());
    assert_eq!(b.state(), BreakerState::Closed);
    let t = b
        .record_failure(false, &err)
        .expect("the third in a row opens it");
    assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
    assert_eq!(t.cause.unwrap().kind, StoreErrorKind::Timeout);
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn open_breaker_answers_by_policy_without_the_store_then_probes_and_closes() {
    let clock = ManualClock::new(0);
    let p = policy();
    let store = Switchable::new(&p);
    let log = Log::default();
    let backend = FailSafe::fail_open(Arc::clone(&store), &p)
        .with_breaker(breaker(&clock, 3))
        .hook(log.hook());
    let limiter = Limiter::builder(p).build_on(backend);

    store.set_down(true);
    for _ in 0..3 {
        assert!(limiter.check("k").unwrap().allowed);
    }
    assert_eq!(store.calls(), 3);
    assert_eq!(limiter.backend().breaker().state(), BreakerState::Open);
    assert_eq!(
        log.take(),
        [
            "failure Admitted ConnectionRefused",
            "failure Admitted ConnectionRefused",
            "breaker Closed->Open",
            "failure Admitted ConnectionRefused",
        ]
    );
    // open: 100 calls answered by the policy (fail open), none reaches the store
    for _ in 0..100 {
        let d = limiter.check("k").unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 3, "Decision::fail_open");
    }
    assert_eq!(store.calls(), 3);
    let events = log.take();
    assert_eq!(events.len(), 100);
    assert!(events.iter().all(|e| e == "failure Admitted CircuitOpen"));

    // the store is back; nothing reaches it before the cool-down
    store.set_down(false);
    clock.advance(COOL_DOWN - Duration::from_millis(1));
    assert!(limiter.check("k").unwrap().allowed);
    assert_eq!(store.calls(), 3);
    log.take();
    clock.advance(Duration::from_millis(1));
    // the probe: the store answers (a real decision: 2 left) and the breaker closes
    assert_eq!(limiter.check("k").unwrap().remaining, 2);
    assert_eq!(store.calls(), 4);
    assert_eq!(limiter.backend().breaker().state(), BreakerState::Closed);
    assert_eq!(log.take(), ["breaker HalfOpen->Closed"]);
    assert_eq!(limiter.check("k").unwrap().remaining, 1);
    assert_eq!(store.calls(), 5);
}

#[test]
fn a_failed_probe_opens_for_another_cool_down() {
    let clock = ManualClock::new(0);
    let p = policy();
    let store = Switchable::new(&p);
    let limiter = Limiter::builder(p.clone())
        .build_on(FailSafe::fail_closed(Arc::clone(&store)).with_breaker(breaker(&clock, 2)));
    store.set_down(true);
    for _ in 0..2 {
        let Err(Error::Store(e)) = limiter.check("k") else {
            panic!("fail closed returns the error")
        };
        assert_eq!(e.kind, StoreErrorKind::ConnectionRefused);
    }
    // open: fail closed answers at once with CircuitOpen naming the last cause
    let Err(Error::Store(e)) = limiter.check("k") else {
        panic!()
    };
    assert_eq!(e.kind, StoreErrorKind::CircuitOpen);
    assert!(e.to_string().contains("connection refused"), "{e}");
    assert_eq!(store.calls(), 2);

    clock.advance(COOL_DOWN);
    assert!(limiter.check("k").is_err(), "the probe fails");
    assert_eq!(store.calls(), 3);
    assert_eq!(limiter.backend().breaker().state(), BreakerState::Open);
    clock.advance(COOL_DOWN - Duration::from_micros(1));
    assert!(limiter.check("k").is_err());
    assert_eq!(
        store.calls(),
        3,
        "a new cool-down started at the failed probe"
    );
    clock.advance(Duration::from_micros(1));
    store.set_down(false);
    assert!(limiter.check("k").unwrap().allowed);
    assert_eq!(limiter.backend().breaker().state(), BreakerState::Closed);
}

#[test]
fn half_open_lets_exactly_one_probe_through_and_replaces_a_lost_one() {
    let clock = ManualClock::new(0);
    let b = breaker(&clock, 1);
    let p = policy();
    let store = Switchable::new(&p);
    let backend = FailSafe::fallback_to_memory(Arc::clone(&store), &p).with_breaker(b.clone());
    store.set_down(true);
    assert!(backend.execute("k", Op::Check(1), 0).unwrap().is_some());
    assert_eq!(b.state(), BreakerState::Open);
    clock.advance(COOL_DOWN);
    // the probe (async) reaches the still failing store and reopens the breaker
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let calls = store.calls();
    rt.block_on(backend.execute_async("k", Op::Check(1), 0))
        .unwrap();
    assert_eq!(store.calls(), calls + 1);
    assert_eq!(b.state(), BreakerState::Open);

    // a probe admitted but never settled: while it is in flight, others are answered locally
    clock.advance(COOL_DOWN);
    store.set_down(false);
    let stuck = HalfOpenHolder::start(&b);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    let before = store.calls();
    assert!(backend.execute("k", Op::Check(1), 0).unwrap().is_some());
    assert_eq!(store.calls(), before, "one probe at a time");
    // after another cool-down the lost probe is replaced by a new one
    clock.advance(COOL_DOWN);
    assert!(backend.execute("k", Op::Check(1), 0).unwrap().is_some());
    assert_eq!(store.calls(), before + 1);
    assert_eq!(b.state(), BreakerState::Closed);
    drop(stuck);
}

/// Starts a probe through a fail-open wrapper whose store never answers in time: the
/// admission happens, the result never comes back (the future is leaked in a pending state).
struct HalfOpenHolder(Option<std::thread::JoinHandle<()>>, Arc<AtomicBool>);

impl HalfOpenHolder {
    fn start(breaker: &Arc<CircuitBreaker>) -> Self {
        struct Hang(Arc<AtomicBool>);
        impl Backend for Hang {
            fn execute(&self, _: &str, _: Op, _: Micros) -> Result<Option<Decision>, Error> {
                while !self.0.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(StoreError::new("test", "gave up").into())
            }
            fn execute_async<'a>(
                &'a self,
                k: &'a str,
                op: Op,
                now: Micros,
            ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
                Box::pin(async move { self.execute(k, op, now) })
            }
        }
        let release = Arc::new(AtomicBool::new(false));
        let hang = FailSafe::fail_open(Hang(Arc::clone(&release)), &policy())
            .with_breaker(Arc::clone(breaker));
        let started = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&started);
        let thread = std::thread::spawn(move || {
            flag.store(true, Ordering::SeqCst);
            let _ = hang.execute("k", Op::Check(1), 0);
        });
        while !started.load(Ordering::SeqCst) || breaker.state() != BreakerState::HalfOpen {
            std::thread::sleep(Duration::from_millis(1));
        }
        HalfOpenHolder(Some(thread), release)
    }
}

impl Drop for HalfOpenHolder {
    fn drop(&mut self) {
        self.1.store(true, Ordering::SeqCst);
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_disabled_breaker_sends_every_call() {
    let clock = ManualClock::new(0);
    let p = policy();
    let store = Switchable::new(&p);
    let backend = FailSafe::fail_open(Arc::clone(&store), &p).with_breaker(breaker(&clock, 0));
    store.set_down(true);
    for _ in 0..50 {
        assert!(
            backend
                .execute("k", Op::Check(1), 0)
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    assert_eq!(store.calls(), 50);
    assert_eq!(backend.breaker().state(), BreakerState::Closed);
}

#[test]
fn one_breaker_shared_by_a_store_and_a_semaphore() {
    let clock = ManualClock::new(0);
    let shared = breaker(&clock, 2);
    let p = policy();
    let store = Switchable::new(&p);
    let limiter = Limiter::builder(p.clone())
        .build_on(FailSafe::fail_closed(Arc::clone(&store)).with_breaker(Arc::clone(&shared)));
    let sem_backend =
        FailSafeSemaphore::fail_closed(MemorySemaphoreBackend::new()).with_breaker(shared.clone());
    let sem = Semaphore::builder("s", 1)
        .build_on(sem_backend.into_arc())
        .unwrap();
    store.set_down(true);
    let _ = limiter.check("a");
    let _ = limiter.check("b");
    assert_eq!(shared.state(), BreakerState::Open);
    // the semaphore's (healthy) store is not asked while the shared breaker is open
    match sem.try_acquire() {
        Err(SemaphoreError::Store(e)) => assert_eq!(e.kind, StoreErrorKind::CircuitOpen),
        other => panic!("expected a fast store error, got {other:?}"),
    }
    // its success as the probe closes the breaker for the limiter too
    clock.advance(COOL_DOWN);
    assert!(sem.try_acquire().unwrap().is_some());
    assert_eq!(shared.state(), BreakerState::Closed);
    store.set_down(false);
    assert!(limiter.check("c").unwrap().allowed);
}

#[test]
fn a_store_shares_one_breaker_across_policies() {
    let store = FailSafeStore::fail_open(MemoryStore::new());
    let a = store.bind(&policy()).unwrap();
    let b = store
        .bind(&Policy::gcra(Rate::per_minute(5).unwrap()).unwrap())
        .unwrap();
    assert!(Arc::ptr_eq(a.breaker(), b.breaker()));
    assert!(Arc::ptr_eq(a.breaker(), store.breaker()));
}

// ------------------------------------------------------------------ decision hooks

#[test]
fn decision_hooks_see_every_verdict_and_the_store_failures_the_policy_absorbed() {
    let clock = ManualClock::new(0);
    let p = policy();
    let store = Switchable::new(&p);
    let log = Log::default();
    let limiter = Limiter::builder(p.clone())
        .hook(log.hook())
        .build_on(FailSafe::fail_open(Arc::clone(&store), &p).with_breaker(breaker(&clock, 1)));
    for _ in 0..4 {
        let _ = limiter.check("k").unwrap();
    }
    assert!(limiter.check(&"x".repeat(2000)).is_err());
    store.set_down(true);
    assert!(limiter.check("k").unwrap().allowed);
    assert!(limiter.check("k").unwrap().allowed);
    assert_eq!(
        log.take(),
        [
            "decision k allowed=true failure=None",
            "decision k allowed=true failure=None",
            "decision k allowed=true failure=None",
            "decision k allowed=false failure=None",
            &format!("decision {} allowed=false failure=None", "x".repeat(2000)),
            "decision k allowed=true failure=Some((Admitted, ConnectionRefused))",
            "decision k allowed=true failure=Some((Admitted, CircuitOpen))",
        ]
    );
}

#[test]
fn on_allow_on_block_on_error() {
    let counts = Arc::new(Mutex::new((0, 0, Vec::<StoreErrorKind>::new())));
    let (a, b, c) = (counts.clone(), counts.clone(), counts.clone());
    let p = policy();
    let store = Switchable::new(&p);
    let limiter = Limiter::builder(p.clone())
        .hook(Hook::on_allow(move |_, _| a.lock().unwrap().0 += 1))
        .hook(Hook::on_block(move |_, _| b.lock().unwrap().1 += 1))
        .hook(Hook::on_error(move |_, e| c.lock().unwrap().2.push(e.kind)))
        .build_on(FailSafe::fail_closed(Arc::clone(&store)));
    for _ in 0..5 {
        let _ = limiter.check("k").unwrap();
    }
    store.set_down(true);
    assert!(limiter.check("k").is_err());
    let counts = counts.lock().unwrap();
    assert_eq!(counts.0, 3);
    assert_eq!(counts.1, 2);
    assert_eq!(counts.2, [StoreErrorKind::ConnectionRefused]);
}

/// Regression (docs/DESIGN §7): a hook that panics must neither admit nor deny anything.
#[test]
fn a_panicking_hook_never_changes_the_verdict() {
    let p = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
    let store = Switchable::new(&p);
    let limiter = Limiter::builder(p.clone())
        .hook(Hook::on_block(|_, _| panic!("hook bug on block")))
        .hook(Hook::on_allow(|_, _| panic!("hook bug on allow")))
        .hook(Hook::on_error(|_, _| panic!("hook bug on error")))
        .build_on(FailSafe::fail_closed(Arc::clone(&store)).on_failure(|_, _| panic!("bug")));
    assert!(limiter.check("k").unwrap().allowed, "allowed stays allowed");
    let denied = limiter.check("k").unwrap();
    assert!(!denied.allowed, "denied stays denied");
    assert!(denied.retry_after > Duration::ZERO);
    store.set_down(true);
    assert!(
        matches!(limiter.check("k"), Err(Error::Store(_))),
        "an error stays an error"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(matches!(
        rt.block_on(limiter.check_async("k")),
        Err(Error::Store(_))
    ));
    store.set_down(false);
    assert!(!rt.block_on(limiter.check_async("k")).unwrap().allowed);
    // fail open with a panicking failure hook still admits
    let open = Limiter::builder(p.clone())
        .build_on(FailSafe::fail_open(Arc::clone(&store), &p).on_failure(|_, _| panic!("bug")));
    store.set_down(true);
    assert!(open.check("z").unwrap().allowed);
}

#[tokio::test]
async fn async_calls_report_to_hooks_too() {
    let clock = ManualClock::new(0);
    let p = policy();
    let store = Switchable::new(&p);
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&outcomes);
    let limiter = Limiter::builder(p.clone())
        .on_decision(move |e| {
            seen.lock()
                .unwrap()
                .push(e.store_failure.map(|f| f.outcome))
        })
        .build_on(
            FailSafe::fallback_to_memory(Arc::clone(&store), &p).with_breaker(breaker(&clock, 5)),
        );
    assert!(limiter.check_async("k").await.unwrap().allowed);
    store.set_down(true);
    assert!(limiter.check_async("k").await.unwrap().allowed);
    assert_eq!(
        *outcomes.lock().unwrap(),
        [None, Some(FailureOutcome::FellBack)]
    );
    let _ = FailurePolicy::Fallback;
}
