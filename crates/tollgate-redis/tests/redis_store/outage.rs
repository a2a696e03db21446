//! A Redis outage fails fast and is reported truthfully: a refused connection is "refused"
//! (not "timed out"), a frozen server is a timeout, and the failure policy's circuit breaker
//! answers at once while Redis is down, then closes by itself when it is back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::hooks::Hook;
use tollgate::store::failure::{BreakerState, CircuitBreaker, FailSafe, FailSafeStore};
use tollgate::{Error, Limiter, Policy, Rate, StoreErrorKind};
use tollgate_redis::{RedisBackend, RedisStore};

const TIMEOUT: Duration = Duration::from_millis(400);

fn policy() -> Policy {
    Policy::gcra(Rate::per_minute(3).unwrap()).unwrap()
}

fn store(url: &str, ns: &str) -> RedisStore {
    RedisStore::builder()
        .url(url)
        .namespace(ns)
        .timeout(TIMEOUT)
        .build()
        .unwrap()
}

fn store_error(r: Result<tollgate::Decision, Error>) -> tollgate::StoreError {
    match r {
        Err(Error::Store(e)) => e,
        other => panic!("expected a store error, got {other:?}"),
    }
}

#[test]
fn a_refused_connection_is_reported_as_refused_not_as_a_timeout() {
    let Some(mut server) = tollgate_testkit::require_redis() else {
        return;
    };
    let url = server.url();
    // connected first, then Redis dies
    let connected = Limiter::builder(policy())
        .build_with(&store(&url, "refused-a"))
        .unwrap();
    assert!(connected.check("k").unwrap().allowed);
    server.stop();
    // down at start-up: never connected
    let never = Limiter::builder(policy())
        .build_with(&store(&url, "refused-b"))
        .unwrap();
    for (what, limiter) in [("after a connection", &connected), ("at start-up", &never)] {
        for i in 0..6 {
            let started = Instant::now();
            let e = store_error(limiter.check("k"));
            eprintln!("{what} {i}: {e} ({:?})", started.elapsed());
            if i == 0 && e.kind == StoreErrorKind::Connection {
                continue; // the open connection broke ("broken pipe"): true, and not a timeout
            }
            assert_eq!(e.kind, StoreErrorKind::ConnectionRefused, "{what}: {e}");
            assert!(!e.timeout, "{what}: {e}");
            assert!(e.to_string().contains("refused"), "{what}: {e}");
            assert!(
                started.elapsed() < TIMEOUT,
                "{what}: a refused connection is known at once, took {:?}",
                started.elapsed()
            );
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = store_error(rt.block_on(never.check_async("k")));
    assert_eq!(e.kind, StoreErrorKind::ConnectionRefused, "{e}");
}

/// Sends a signal to the redis-server process (`STOP` freezes it: connections stay open and
/// every call waits out its timeout, like a hung server or a black-holed network).
fn signal(server: &tollgate_testkit::RedisServer, sig: &str) {
    let pid = server.pid().expect("redis-server runs").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{sig} {pid}");
}

type Guarded = Limiter<FailSafe<RedisBackend>>;

fn guarded(url: &str, ns: &str, transitions: &Arc<AtomicUsize>) -> Guarded {
    let seen = Arc::clone(transitions);
    let breaker = CircuitBreaker::builder("redis")
        .failures(3)
        .cool_down(Duration::from_millis(300))
        .build();
    let store = FailSafeStore::fail_open(store(url, ns))
        .with_breaker(breaker)
        .hook(Hook::on_breaker(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        }));
    Limiter::builder(policy()).build_with(&store).unwrap()
}

/// Polls until the breaker is closed again and Redis decides, within 10 s.
fn wait_closed(limiter: &Guarded) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while limiter.backend().breaker().state() != BreakerState::Closed {
        assert!(
            Instant::now() < deadline,
            "the breaker did not close by itself"
        );
        let _ = limiter.check("probe");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_frozen_redis_costs_the_timeout_only_until_the_breaker_opens() {
    let Some(server) = tollgate_testkit::require_redis() else {
        return;
    };
    let transitions = Arc::new(AtomicUsize::new(0));
    let limiter = guarded(&server.url(), "frozen", &transitions);
    assert_eq!(limiter.check("k").unwrap().remaining, 2);

    signal(&server, "STOP");
    for _ in 0..3 {
        let started = Instant::now();
        assert!(limiter.check("k").unwrap().allowed, "fail open");
        assert!(started.elapsed() >= TIMEOUT, "{:?}", started.elapsed());
    }
    assert_eq!(limiter.backend().breaker().state(), BreakerState::Open);
    assert_eq!(
        limiter.backend().breaker().last_error().unwrap().kind,
        StoreErrorKind::Timeout
    );
    // open: answered by the policy at once
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let t = Instant::now();
        let d = limiter.check("k").unwrap();
        slowest = slowest.max(t.elapsed());
        assert!(d.allowed && d.remaining == 3, "Decision::fail_open");
    }
    assert!(
        slowest < TIMEOUT / 10,
        "while open no call waits for Redis (slowest {slowest:?}, total {:?})",
        started.elapsed()
    );

    signal(&server, "CONT");
    wait_closed(&limiter);
    assert_eq!(
        transitions.load(Ordering::SeqCst) % 2,
        0,
        "opened, then closed"
    );
    assert!(transitions.load(Ordering::SeqCst) >= 2);
    // Redis decides again. (The calls that timed out while Redis was frozen were still
    // queued on the connection; past their deadline they charged nothing: see late.rs.)
    assert_eq!(limiter.check("fresh").unwrap().remaining, 2);
    assert_eq!(limiter.check("fresh").unwrap().remaining, 1);
}

#[test]
fn a_killed_redis_trips_the_breaker_and_a_restart_closes_it() {
    let Some(mut server) = tollgate_testkit::require_redis() else {
        return;
    };
    let transitions = Arc::new(AtomicUsize::new(0));
    let limiter = guarded(&server.url(), "killed", &transitions);
    assert!(limiter.check("k").unwrap().allowed);
    server.stop();
    for _ in 0..3 {
        assert!(limiter.check("k").unwrap().allowed, "fail open");
    }
    let breaker = limiter.backend().breaker();
    assert_eq!(breaker.state(), BreakerState::Open);
    let cause = breaker.last_error().unwrap();
    assert_eq!(cause.kind, StoreErrorKind::ConnectionRefused, "{cause}");

    let closed = Limiter::builder(policy())
        .build_with(&FailSafeStore::fail_closed(store(
            &server.url(),
            "killed-closed",
        )))
        .unwrap();
    for _ in 0..5 {
        let _ = closed.check("k");
    }
    let e = store_error(closed.check("k"));
    assert_eq!(e.kind, StoreErrorKind::CircuitOpen);
    assert!(e.to_string().contains("connection refused"), "{e}");

    server.restart().unwrap();
    wait_closed(&limiter);
    // opened; a probe may fail once more while the connection is re-made; closed
    assert!(transitions.load(Ordering::SeqCst) >= 2);
    assert_eq!(
        limiter.check("fresh").unwrap().remaining,
        2,
        "Redis decides"
    );
}
