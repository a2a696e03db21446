//! Faults: SCRIPT FLUSH mid-run, redis-server killed and restarted mid-run (each failure
//! policy does what it promises, and the limiter recovers by itself), Redis down at start-up.

use crate::common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::store::failure::{FailSafeStore, FailureOutcome, FailurePolicy};
use tollgate::{Error, Limiter, Policy, Rate};
use tollgate_redis::{RedisStore, TimeSource};

fn policy() -> Policy {
    Policy::gcra(Rate::per_minute(3).unwrap()).unwrap()
}

#[test]
fn script_flush_mid_run_is_reloaded_and_state_kept() {
    let Some(server) = standalone() else { return };
    let ns = unique_ns("flush");
    let store = standalone_store(server, &ns, TimeSource::Server);
    let limiter = Limiter::builder(policy()).build_with(&store).unwrap();
    assert_eq!(limiter.check("k").unwrap().remaining, 2);
    server.command(&["SCRIPT", "FLUSH"]).unwrap();
    // EVALSHA answers NOSCRIPT: the store reloads the script and the call succeeds
    assert_eq!(limiter.check("k").unwrap().remaining, 1);
    server.command(&["SCRIPT", "FLUSH"]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(limiter.check_async("k")).unwrap().remaining, 0);
    assert!(!limiter.check("k").unwrap().allowed);
}

#[test]
fn script_flush_on_every_cluster_node_is_reloaded() {
    let Some(cluster) = cluster() else { return };
    let ns = unique_ns("cflush");
    let store = cluster_store(cluster, &ns, TimeSource::Server);
    let limiter = Limiter::builder(policy()).build_with(&store).unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("user-{i}")).collect();
    for k in &keys {
        assert_eq!(limiter.check(k).unwrap().remaining, 2);
    }
    for node in cluster.nodes() {
        node.command(&["SCRIPT", "FLUSH"]).unwrap();
    }
    for k in &keys {
        assert_eq!(limiter.check(k).unwrap().remaining, 1, "{k}");
    }
}

/// Counts hook calls per outcome.
#[derive(Default)]
struct Seen {
    failures: AtomicUsize,
}

fn build(
    url: &str,
    ns: &str,
    failure: FailurePolicy,
    seen: &Arc<Seen>,
) -> Limiter<tollgate::store::failure::FailSafe<tollgate_redis::RedisBackend>> {
    let store = RedisStore::builder()
        .url(url)
        .namespace(ns)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let seen = Arc::clone(seen);
    let store = FailSafeStore::with_policy(store, failure).on_failure(move |err, outcome| {
        assert!(!err.message.is_empty());
        let expected = match failure {
            FailurePolicy::FailOpen => FailureOutcome::Admitted,
            FailurePolicy::FailClosed => FailureOutcome::Rejected,
            _ => FailureOutcome::FellBack,
        };
        assert_eq!(outcome, expected);
        seen.failures.fetch_add(1, Ordering::SeqCst);
    });
    Limiter::builder(policy()).build_with(&store).unwrap()
}

/// Polls until a check is answered by Redis again (no failure reported), within 15 s.
fn wait_recovered(
    limiter: &Limiter<tollgate::store::failure::FailSafe<tollgate_redis::RedisBackend>>,
    seen: &Seen,
    key: &str,
) -> tollgate::Decision {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = seen.failures.load(Ordering::SeqCst);
        let result = limiter.check(key);
        if seen.failures.load(Ordering::SeqCst) == before {
            return result.expect("Redis answered");
        }
        assert!(
            Instant::now() < deadline,
            "the limiter did not recover within 15 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn restart_mid_run_each_failure_policy_then_recovery() {
    let Some(mut server) = tollgate_testkit::require_redis() else {
        return;
    };
    let url = server.url();
    let seen: Vec<Arc<Seen>> = (0..3).map(|_| Arc::new(Seen::default())).collect();
    let open = build(&url, "open", FailurePolicy::FailOpen, &seen[0]);
    let closed = build(&url, "closed", FailurePolicy::FailClosed, &seen[1]);
    let fallback = build(&url, "fallback", FailurePolicy::Fallback, &seen[2]);
    for l in [&open, &closed, &fallback] {
        for left in [2, 1, 0] {
            assert_eq!(l.check("k").unwrap().remaining, left);
        }
        assert!(!l.check("k").unwrap().allowed, "Redis enforces the limit");
    }
    assert!(seen.iter().all(|s| s.failures.load(Ordering::SeqCst) == 0));

    server.stop();
    // fail open: admitted, reported
    for _ in 0..5 {
        let d = open.check("k").unwrap();
        assert!(d.allowed);
    }
    assert_eq!(seen[0].failures.load(Ordering::SeqCst), 5);
    // fail closed: a store error, never a denial
    for _ in 0..3 {
        match closed.check("k") {
            Err(Error::Store(e)) => assert_eq!(e.store, "redis"),
            other => panic!("expected a store error, got {other:?}"),
        }
    }
    assert_eq!(seen[1].failures.load(Ordering::SeqCst), 3);
    // fallback: the in-memory limiter enforces the same policy meanwhile
    let local: Vec<bool> = (0..4)
        .map(|_| fallback.check("k").unwrap().allowed)
        .collect();
    assert_eq!(local, [true, true, true, false]);
    assert_eq!(seen[2].failures.load(Ordering::SeqCst), 4);
    // async paths too
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(rt.block_on(open.check_async("k")).unwrap().allowed);
    assert!(matches!(
        rt.block_on(closed.check_async("k")),
        Err(Error::Store(_))
    ));

    // Redis comes back empty (no keys, no scripts): each limiter recovers by itself
    server.restart().unwrap();
    for l in [&open, &closed, &fallback] {
        let s = if std::ptr::eq(l, &open) {
            &seen[0]
        } else if std::ptr::eq(l, &closed) {
            &seen[1]
        } else {
            &seen[2]
        };
        let d = wait_recovered(l, s, "after");
        assert!(d.allowed);
        assert_eq!(d.remaining, 2, "a fresh key on the restarted server");
        assert_eq!(l.check("after").unwrap().remaining, 1);
    }
    assert!(assert_every_key_has_ttl(&[server.port()], "open") > 0);
}

#[test]
fn redis_down_at_start_up_applies_the_policy_then_connects() {
    let Some(mut server) = tollgate_testkit::require_redis() else {
        return;
    };
    server.stop();
    let seen = Arc::new(Seen::default());
    let open = build(&server.url(), "startup", FailurePolicy::FailOpen, &seen);
    assert!(open.check("k").unwrap().allowed);
    assert_eq!(seen.failures.load(Ordering::SeqCst), 1);
    server.restart().unwrap();
    let d = wait_recovered(&open, &seen, "k");
    assert_eq!(d.remaining, 2);
}
