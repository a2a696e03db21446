//! A call that failed or timed out charges nothing (issue 15, item 2): with redis-server
//! frozen (SIGSTOP) past the store timeout, the scripts of the timed-out calls stay queued on
//! the connection and reach Redis when it resumes; they carry a deadline and refuse to run
//! then. Before the fix they ran and charged the key: a caller told "failed" lost its quota,
//! and a caller told "retry in X" was denied after X.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::store::failure::{FailSafeStore, FailurePolicy};
use tollgate::store::multi::{MultiBackend, MultiOp};
use tollgate::{Error, Limiter, Policy, Rate, StoreErrorKind};
use tollgate_redis::{KeyCheck, RedisBackend, RedisStore, TimeSource};
use tollgate_testkit::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(300);
/// How long Redis stays frozen: well past the store timeout.
const FROZEN: Duration = Duration::from_millis(1200);

fn store(server: &RedisServer, ns: &str, time: TimeSource) -> RedisStore {
    RedisStore::builder()
        .url(server.url())
        .namespace(ns)
        .time_source(time)
        .timeout(TIMEOUT)
        .build()
        .unwrap()
}

/// 3 per minute: nothing refills during the test, so every charge shows.
fn per_minute() -> Policy {
    Policy::gcra(Rate::per_minute(3).unwrap()).unwrap()
}

fn signal(server: &RedisServer, sig: &str) {
    let pid = server.pid().expect("redis-server runs").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Freezes `server`, runs `during` (the calls that time out), waits until the freeze has
/// lasted [`FROZEN`], and resumes it; then gives Redis a moment to drain the queued calls.
fn frozen<T>(server: &RedisServer, during: impl FnOnce() -> T) -> T {
    signal(server, "STOP");
    let started = Instant::now();
    let out = during();
    if let Some(rest) = FROZEN.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    signal(server, "CONT");
    std::thread::sleep(Duration::from_millis(200));
    out
}

fn assert_timeout<T: std::fmt::Debug>(r: Result<T, Error>) {
    match r {
        Err(Error::Store(e)) => assert_eq!(e.kind, StoreErrorKind::Timeout, "{e}"),
        other => panic!("expected a store timeout, got {other:?}"),
    }
}

fn private_server() -> Option<RedisServer> {
    tollgate_testkit::require_redis()
}

#[test]
fn timed_out_single_key_calls_charge_nothing_on_either_clock() {
    let Some(server) = private_server() else {
        return;
    };
    for time in [TimeSource::Server, TimeSource::Caller] {
        let ns = format!("late-single-{time:?}");
        let limiter = Limiter::builder(per_minute())
            .build_with(&store(&server, &ns, time))
            .unwrap();
        assert_eq!(limiter.check("k").unwrap().remaining, 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        frozen(&server, || {
            for _ in 0..3 {
                assert_timeout(limiter.check("k"));
            }
            assert_timeout(rt.block_on(limiter.check_async("k")));
            // a refund and a reset that failed change nothing either
            assert_timeout(limiter.refund("k", 1));
            assert_timeout(limiter.reset("k"));
        });
        // only the call before the freeze was charged
        assert_eq!(limiter.check("k").unwrap().remaining, 1, "{time:?}");
        assert_eq!(limiter.check("k").unwrap().remaining, 0, "{time:?}");
        assert!(!limiter.check("k").unwrap().allowed, "{time:?}");
    }
}

#[test]
fn timed_out_multi_key_calls_charge_nothing() {
    let Some(server) = private_server() else {
        return;
    };
    let store = store(&server, "late-multi", TimeSource::Server);
    let user = Limiter::builder(per_minute())
        .build_with(&store.scope("user"))
        .unwrap();
    let ip = Limiter::builder(per_minute())
        .build_with(&store.scope("ip"))
        .unwrap();
    let both = || Limiter::check_all(&[user.item("alice", 1), ip.item("198.51.100.7", 1)]);
    assert!(both().unwrap().allowed);
    let (ub, ib) = (user.backend().clone(), ip.backend().clone());
    frozen(&server, || {
        for _ in 0..2 {
            assert_timeout(both());
            let items = [
                KeyCheck::new(&ub, "alice", 1),
                KeyCheck::new(&ib, "198.51.100.7", 1),
            ];
            assert_timeout(RedisBackend::execute_all(&items, MultiOp::Check, 0));
        }
    });
    let d = both().unwrap();
    assert!(d.allowed);
    assert_eq!(
        d.decisions.iter().map(|d| d.remaining).collect::<Vec<_>>(),
        [1, 1],
        "only the call before the freeze was charged"
    );
}

/// Each failure policy answers while Redis is frozen; the calls it answered for are not
/// charged in Redis afterwards.
#[test]
fn each_failure_policy_leaves_redis_uncharged() {
    let Some(server) = private_server() else {
        return;
    };
    for policy in [
        FailurePolicy::FailOpen,
        FailurePolicy::FailClosed,
        FailurePolicy::Fallback,
    ] {
        let failures = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&failures);
        let ns = format!("late-{}", policy.as_str());
        let guarded = FailSafeStore::with_policy(store(&server, &ns, TimeSource::Server), policy)
            .on_failure(move |_, _| {
                seen.fetch_add(1, Ordering::SeqCst);
            });
        let limiter = Limiter::builder(per_minute()).build_with(&guarded).unwrap();
        assert_eq!(limiter.check("k").unwrap().remaining, 2);
        frozen(&server, || {
            for _ in 0..2 {
                let r = limiter.check("k");
                match policy {
                    FailurePolicy::FailClosed => assert!(r.is_err(), "{r:?}"),
                    _ => assert!(r.unwrap().allowed, "{policy:?}"),
                }
            }
        });
        assert!(failures.load(Ordering::SeqCst) >= 2, "{policy:?}");
        // Redis decides again (the breaker, if it opened, closes after its cool-down)
        let deadline = Instant::now() + Duration::from_secs(15);
        let d = loop {
            let before = failures.load(Ordering::SeqCst);
            let d = limiter.peek("k", 1);
            if failures.load(Ordering::SeqCst) == before {
                break d.unwrap();
            }
            assert!(Instant::now() < deadline, "{policy:?}: no recovery");
            std::thread::sleep(Duration::from_millis(100));
        };
        // one charged before the freeze; a peek of cost 1 leaves 1
        assert_eq!(d.remaining, 1, "{policy:?}: the failed calls charged Redis");
    }
}

/// A caller told "retry in X" is admitted after X, although calls that timed out while
/// Redis was frozen were queued behind it.
#[test]
fn retry_after_holds_across_a_freeze() {
    let Some(server) = private_server() else {
        return;
    };
    // 2 per second, burst 2: a denial says "retry in 500 ms"
    let limiter = Limiter::builder(Policy::gcra(Rate::per_second(2).unwrap()).unwrap())
        .build_with(&store(&server, "late-retry", TimeSource::Server))
        .unwrap();
    assert!(limiter.check("k").unwrap().allowed);
    assert!(limiter.check("k").unwrap().allowed);
    let denied = limiter.check("k").unwrap();
    assert!(!denied.allowed);
    let retry = denied.retry_after;
    let told = Instant::now();
    assert!(retry > Duration::ZERO && retry <= Duration::from_millis(500));
    // the freeze outlasts the retry time; the calls made meanwhile time out
    frozen(&server, || {
        for _ in 0..4 {
            assert_timeout(limiter.check("k"));
        }
    });
    assert!(told.elapsed() >= retry);
    let d = limiter.check("k").unwrap();
    assert!(
        d.allowed,
        "told to retry in {retry:?}, denied after it: {d:?}"
    );
    assert!(limiter.check("k").unwrap().allowed, "two refilled");
}
