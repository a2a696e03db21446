//! Network faults between the store and Redis, through tollgate-testkit's `FaultProxy`:
//! latency below and above the store timeout, black-holed packets, dropped connections. Each
//! failure policy answers while the network is bad, the circuit breaker opens and closes by
//! itself, and calls that failed charged nothing in Redis.

use crate::common::standalone;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::store::failure::{CircuitBreaker, FailSafe, FailSafeStore, FailurePolicy};
use tollgate::{Limiter, Policy, Rate, StoreErrorKind};
use tollgate_redis::{RedisBackend, RedisStore};
use tollgate_testkit::{Fault, FaultProxy};

const TIMEOUT: Duration = Duration::from_millis(200);

struct Guarded {
    limiter: Limiter<FailSafe<RedisBackend>>,
    failures: Arc<AtomicUsize>,
}

fn guarded(proxy: &FaultProxy, ns: &str, policy: FailurePolicy) -> Guarded {
    guarded_with_timeout(proxy, ns, policy, TIMEOUT)
}

fn guarded_with_timeout(
    proxy: &FaultProxy,
    ns: &str,
    policy: FailurePolicy,
    timeout: Duration,
) -> Guarded {
    let store = RedisStore::builder()
        .url(format!("redis://{}/", proxy.addr()))
        .namespace(ns)
        .timeout(timeout)
        .build()
        .unwrap();
    let failures = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&failures);
    let breaker = CircuitBreaker::builder("redis")
        .failures(3)
        .cool_down(Duration::from_millis(300))
        .build();
    let store = FailSafeStore::with_policy(store, policy)
        .with_breaker(breaker)
        .on_failure(move |_, _| {
            seen.fetch_add(1, Ordering::SeqCst);
        });
    // 1000 per year: nothing refills during the test
    let rate = Rate::new(1000, Duration::from_secs(365 * 86_400)).unwrap();
    Guarded {
        limiter: Limiter::builder(Policy::gcra(rate).unwrap())
            .build_with(&store)
            .unwrap(),
        failures,
    }
}

impl Guarded {
    /// Checks `key`; `Some(allowed)` when Redis decided, `None` when the policy answered.
    fn check(&self, key: &str) -> Option<bool> {
        let before = self.failures.load(Ordering::SeqCst);
        let r = self.limiter.check(key);
        (self.failures.load(Ordering::SeqCst) == before).then(|| r.unwrap().allowed)
    }

    /// Waits until Redis decides again; returns the units charged on `key` in Redis.
    fn charged(&self, key: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let before = self.failures.load(Ordering::SeqCst);
            let d = self.limiter.peek(key, 1);
            if self.failures.load(Ordering::SeqCst) == before {
                return 1000 - 1 - d.unwrap().remaining;
            }
            assert!(Instant::now() < deadline, "no recovery");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn latency_below_the_timeout_is_only_slower() {
    let Some(server) = standalone() else { return };
    let proxy = FaultProxy::start(server.addr()).unwrap();
    // 60 ms of round trip against a 2 s timeout: far below it even on a loaded CI machine
    // (with the 200 ms of the other tests, one call in a CI run took longer and failed).
    let g = guarded_with_timeout(
        &proxy,
        "net-slow",
        FailurePolicy::FailClosed,
        Duration::from_secs(2),
    );
    assert_eq!(g.check("k"), Some(true));
    proxy.set(Fault::Latency(Duration::from_millis(30)));
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(g.check("k"), Some(true));
        assert!(
            t.elapsed() >= Duration::from_millis(60),
            "{:?}",
            t.elapsed()
        );
    }
    proxy.set(Fault::None);
    assert_eq!(g.charged("k"), 6);
}

#[test]
fn each_policy_under_latency_black_hole_and_dropped_connections() {
    let Some(server) = standalone() else { return };
    for policy in [
        FailurePolicy::FailOpen,
        FailurePolicy::FailClosed,
        FailurePolicy::Fallback,
    ] {
        for fault in [
            Fault::Latency(Duration::from_millis(400)),
            Fault::BlackHole,
            Fault::Reset,
        ] {
            let proxy = FaultProxy::start(server.addr()).unwrap();
            let ns = format!("net-{}-{fault:?}", policy.as_str()).replace([' ', '(', ')'], "");
            let g = guarded(&proxy, &ns, policy);
            let mut redis_admitted = 0;
            for _ in 0..3 {
                assert_eq!(g.check("k"), Some(true));
                redis_admitted += 1;
            }
            proxy.set(fault);
            let started = Instant::now();
            let mut slowest = Duration::ZERO;
            for _ in 0..20 {
                let t = Instant::now();
                match g.check("k") {
                    Some(true) => redis_admitted += 1, // a call that slipped through first
                    Some(false) => panic!("{policy:?}/{fault:?}: denied"),
                    None => {}
                }
                slowest = slowest.max(t.elapsed());
            }
            // A sync call on a fresh blocking connection waits for the connect and then for
            // the reply, each bounded by the timeout (src/conn/blocking.rs): up to twice it.
            assert!(
                slowest <= 2 * TIMEOUT + Duration::from_millis(150),
                "{policy:?}/{fault:?}: a call took {slowest:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{policy:?}/{fault:?}: the breaker did not open ({:?} for 20 calls)",
                started.elapsed()
            );
            let b = g.limiter.backend().breaker();
            let cause = b.last_error().expect("a failure was seen").kind;
            assert!(
                matches!(
                    cause,
                    StoreErrorKind::Timeout
                        | StoreErrorKind::Connection
                        | StoreErrorKind::ConnectionRefused
                ),
                "{policy:?}/{fault:?}: {cause:?}"
            );
            proxy.set(Fault::None);
            // the calls that failed (timed out in flight, or never delivered) charged nothing
            assert_eq!(
                g.charged("k"),
                redis_admitted,
                "{policy:?}/{fault:?}: failed calls charged Redis"
            );
        }
    }
}
