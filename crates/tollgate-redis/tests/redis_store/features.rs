//! The Limiter API on Redis, TTLs, clocks, multi-key calls, keys, the denial cache.

use crate::common::*;
use std::time::Duration;
use tollgate::store::multi::{MultiBackend, MultiDecision, MultiOp};
use tollgate::store::{Backend, Op, Store};
use tollgate::{Algorithm, Error, Limiter, Policy, Rate};
use tollgate_redis::{KeyCheck, RedisBackend, RedisStore, TimeSource};
use tollgate_testkit::RedisServer;

fn gcra(per_second: u64, burst: u64) -> Policy {
    Policy::gcra(
        Rate::per_second(per_second)
            .unwrap()
            .with_burst(burst)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn limiter_api_sync_with_server_clock() {
    let Some(server) = standalone() else { return };
    let ns = unique_ns("api");
    let store = standalone_store(server, &ns, TimeSource::Server);
    let limiter = Limiter::builder(gcra(5, 5)).build_with(&store).unwrap();
    for left in (0..5).rev() {
        let d = limiter.check("k").unwrap();
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (5, left));
    }
    let denied = limiter.check("k").unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.denied_by, Some(0));
    assert!(
        denied.retry_after > Duration::ZERO && denied.retry_after <= Duration::from_millis(200)
    );
    // peek charges nothing, refund gives back, reset forgets
    assert!(!limiter.peek("k", 1).unwrap().allowed);
    limiter.refund("k", 2).unwrap();
    assert!(limiter.peek("k", 2).unwrap().allowed);
    assert!(limiter.peek("k", 2).unwrap().allowed);
    limiter.reset("k").unwrap();
    assert_eq!(limiter.peek("k", 1).unwrap().remaining, 4);
    // costs
    assert_eq!(limiter.check_n("k", 3).unwrap().remaining, 2);
    assert!(matches!(
        limiter.check_n("k", 6),
        Err(Error::CostExceedsCapacity {
            cost: 6,
            capacity: 5
        })
    ));
    assert!(matches!(limiter.check_n("k", 0), Err(Error::InvalidCost)));
    assert!(matches!(limiter.refund("k", 0), Err(Error::InvalidCost)));
    // acquire waits for the next unit (200 ms apart)
    let _ = limiter.check_n("k", 2).unwrap();
    assert!(matches!(
        limiter.acquire("k", 1, Duration::ZERO),
        Err(Error::WaitTimeout { .. })
    ));
    assert!(
        limiter
            .acquire("k", 1, Duration::from_secs(2))
            .unwrap()
            .allowed
    );
    assert!(assert_every_key_has_ttl(&[server.port()], &ns) > 0);
}

#[tokio::test(flavor = "current_thread")]
async fn limiter_api_async_with_server_clock() {
    let Some(server) = standalone() else { return };
    let ns = unique_ns("async");
    let store = standalone_store(server, &ns, TimeSource::Server);
    let policy = Policy::parse(Algorithm::SlidingLog, "3/s; 5/minute").unwrap();
    let limiter = Limiter::builder(policy).build_with(&store).unwrap();
    for _ in 0..3 {
        assert!(limiter.check_async("k").await.unwrap().allowed);
    }
    let d = limiter.check_async("k").await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.denied_by, Some(0));
    // after the 1 s window: 2 more fit the minute rate, then the minute rate denies
    let d = limiter
        .acquire_async("k", 2, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    let d = limiter.peek_async("k", 1).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.denied_by, Some(1), "the minute rate binds now");
    limiter.refund_async("k", 1).await.unwrap();
    assert!(limiter.peek_async("k", 1).await.unwrap().allowed);
    limiter.reset_async("k").await.unwrap();
    assert_eq!(limiter.peek_async("k", 1).await.unwrap().remaining, 2);
}

#[test]
fn every_key_expires_at_its_horizon() {
    let Some(server) = standalone() else { return };
    let ns = unique_ns("ttl");
    let store = standalone_store(server, &ns, TimeSource::Server);
    let second = 1_000i64;
    // (policy, cost, the horizon after one such check, in ms)
    let cases = [
        (gcra(1, 5), 5, 5 * second),
        (
            Policy::token_bucket(6, 2, Duration::from_secs(10)).unwrap(),
            1,
            10 * second,
        ),
        (
            Policy::parse(Algorithm::SlidingLog, "3/s; 10/minute").unwrap(),
            1,
            60 * second,
        ),
        (
            Policy::parse(Algorithm::FixedWindow, "10/minute").unwrap(),
            1,
            60 * second,
        ),
        (
            Policy::parse(Algorithm::SlidingWindow, "10/minute").unwrap(),
            1,
            120 * second,
        ),
    ];
    for (i, (policy, cost, horizon_ms)) in cases.iter().enumerate() {
        let limiter = Limiter::builder(policy.clone())
            .build_with(&store.scope(format!("case{i}")))
            .unwrap();
        assert!(limiter.check_n("k", *cost).unwrap().allowed);
        let redis_key = limiter.backend().redis_key("k").unwrap();
        let pttl = server
            .command(&["PTTL", &redis_key])
            .unwrap()
            .as_int()
            .unwrap();
        assert!(
            pttl > 0 && pttl <= *horizon_ms,
            "{policy}: PTTL {pttl} ms, horizon {horizon_ms} ms"
        );
        // windows are clock-aligned: the key may expire earlier than a full window, but a
        // GCRA / token bucket / log horizon is measured from now
        if matches!(
            policy.algorithm(),
            Algorithm::Gcra | Algorithm::TokenBucket | Algorithm::SlidingLog
        ) {
            assert!(
                pttl > horizon_ms - 1_000,
                "{policy}: PTTL {pttl} ms is early"
            );
        }
    }
    assert_eq!(assert_every_key_has_ttl(&[server.port()], &ns), cases.len());
}

#[test]
fn server_clock_makes_skewed_callers_agree() {
    let Some(server) = standalone() else { return };
    let ns = unique_ns("skew");
    let store = standalone_store(server, &ns, TimeSource::Server);
    let backend = store
        .bind(&Policy::gcra(Rate::per_hour(1).unwrap()).unwrap())
        .unwrap();
    // one host's clock says 1970, another's says the year 2300: the server decides
    let first = backend.execute("k", Op::Check(1), 0).unwrap().unwrap();
    assert!(first.allowed);
    let skewed = backend
        .execute("k", Op::Check(1), 10_000_000_000_000_000)
        .unwrap()
        .unwrap();
    assert!(!skewed.allowed, "a clock far ahead must not let more in");
    assert!(skewed.retry_after > Duration::from_secs(3_500));
    // the same host with the caller's clock really does use it
    let caller = standalone_store(server, &ns, TimeSource::Caller);
    let b = caller
        .scope("caller")
        .bind(&Policy::gcra(Rate::per_hour(1).unwrap()).unwrap())
        .unwrap();
    assert!(
        b.execute("k", Op::Check(1), 1_000_000)
            .unwrap()
            .unwrap()
            .allowed
    );
    assert!(
        !b.execute("k", Op::Check(1), 2_000_000)
            .unwrap()
            .unwrap()
            .allowed
    );
    assert!(
        b.execute("k", Op::Check(1), 1_000_000 + 3_600_000_000)
            .unwrap()
            .unwrap()
            .allowed
    );
}

#[test]
fn multi_key_is_all_or_nothing() {
    let Some(server) = standalone() else { return };
    let ns = unique_ns("multi");
    let store = standalone_store(server, &ns, TimeSource::Caller);
    let user = store
        .scope("user")
        .bind(&Policy::gcra(Rate::per_minute(2).unwrap()).unwrap())
        .unwrap();
    let ip = store
        .scope("ip")
        .bind(&Policy::parse(Algorithm::FixedWindow, "5/minute").unwrap())
        .unwrap();
    let global = store
        .scope("global")
        .bind(&Policy::parse(Algorithm::SlidingLog, "100/minute; 1000/hour").unwrap())
        .unwrap();
    let bucket = store
        .scope("bucket")
        .bind(&Policy::token_bucket(10, 10, Duration::from_secs(60)).unwrap())
        .unwrap();
    let window = store
        .scope("window")
        .bind(&Policy::parse(Algorithm::SlidingWindow, "10/minute").unwrap())
        .unwrap();
    let now = 1_700_000_000_000_000;
    let checks = [
        KeyCheck::new(&user, "alice", 1),
        KeyCheck::new(&ip, "203.0.113.7", 1),
        KeyCheck::new(&global, "all", 1),
        KeyCheck::new(&bucket, "b", 1),
        KeyCheck::new(&window, "w", 1),
    ];
    for _ in 0..2 {
        let d = check_all(&checks, now).unwrap();
        assert!(d.allowed);
        assert!(d.decisions.iter().all(|d| d.allowed));
    }
    let d = check_all(&checks, now).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.binding().unwrap().0, 0, "the user rate denies");
    assert!(d.decisions[1..].iter().all(|d| d.allowed));
    // nothing was charged on the other keys by the denied call
    let peek = |b: &tollgate_redis::RedisBackend, k| {
        b.execute(k, Op::Peek(1), now).unwrap().unwrap().remaining
    };
    assert_eq!(peek(&ip, "203.0.113.7"), 2);
    assert_eq!(peek(&global, "all"), 97);
    assert_eq!(peek(&bucket, "b"), 7);
    assert_eq!(peek(&window, "w"), 7);
    // a peek over all keys changes nothing either
    let p = peek_all(&checks[1..], now).unwrap();
    assert!(p.allowed);
    assert_eq!(peek(&ip, "203.0.113.7"), 2);
    // a key twice, or a backend of another store: clear errors
    let dup = [KeyCheck::new(&ip, "x", 1), KeyCheck::new(&ip, "x", 1)];
    assert!(matches!(
        check_all(&dup, now),
        Err(Error::InvalidKey { .. })
    ));
    let other = standalone_store(server, &ns, TimeSource::Caller)
        .bind(&gcra(1, 1))
        .unwrap();
    let mixed = [KeyCheck::new(&ip, "x", 1), KeyCheck::new(&other, "y", 1)];
    assert!(matches!(
        check_all(&mixed, now),
        Err(Error::InvalidKey { .. })
    ));
    let too_big = [KeyCheck::new(&user, "alice", 3)];
    assert!(matches!(
        check_all(&too_big, now),
        Err(Error::CostExceedsCapacity { .. })
    ));
    assert!(assert_every_key_has_ttl(&[server.port()], &ns) >= 5);
}

#[test]
fn multi_key_on_cluster_needs_a_common_hash_tag() {
    let Some(cluster) = cluster() else { return };
    let ns = unique_ns("cmulti");
    let store = cluster_store(cluster, &ns, TimeSource::Server);
    let user = store.scope("user").bind(&gcra(1, 2)).unwrap();
    let ip = store
        .scope("ip")
        .bind(&Policy::parse(Algorithm::FixedWindow, "5/minute").unwrap())
        .unwrap();
    // find two untagged keys in different slots
    let (a, b) = ("alice", "203.0.113.7");
    assert_ne!(
        tollgate::keys::cluster_slot(&user.redis_key(a).unwrap()),
        tollgate::keys::cluster_slot(&ip.redis_key(b).unwrap())
    );
    let err = check_all_now(&[KeyCheck::new(&user, a, 1), KeyCheck::new(&ip, b, 1)]).unwrap_err();
    match err {
        Error::InvalidKey { reason } => assert!(reason.contains("hash tag"), "{reason}"),
        other => panic!("expected InvalidKey, got {other}"),
    }
    let tagged = [
        KeyCheck::new(&user, "{tenant-7}:alice", 1),
        KeyCheck::new(&ip, "{tenant-7}:203.0.113.7", 1),
    ];
    assert!(check_all_now(&tagged).unwrap().allowed);
    assert!(check_all_now(&tagged).unwrap().allowed);
    let d = check_all_now(&tagged).unwrap();
    assert!(!d.allowed, "burst of 2 on the user key");
    let left = ip
        .execute("{tenant-7}:203.0.113.7", Op::Peek(1), 0)
        .unwrap()
        .unwrap();
    assert_eq!(left.remaining, 2, "the denied call charged nothing");
    assert!(assert_every_key_has_ttl(&cluster.ports(), &ns) >= 2);
}

#[test]
fn hmac_keys_never_show_the_identity() {
    let Some(server) = standalone() else { return };
    let ns = unique_ns("hmac");
    let store = RedisStore::builder()
        .url(server.url())
        .namespace(&ns)
        .hmac_secret("test-secret")
        .build()
        .unwrap();
    let limiter = Limiter::builder(gcra(5, 5)).build_with(&store).unwrap();
    assert!(limiter.check("203.0.113.7").unwrap().allowed);
    assert!(limiter.check("{org}:alice@example.com").unwrap().allowed);
    assert_eq!(limiter.check("203.0.113.7").unwrap().remaining, 3);
    let keys = keys_with_pttl(server.port(), &ns);
    assert_eq!(keys.len(), 2);
    for (key, pttl) in keys {
        assert!(!key.contains("203.0.113") && !key.contains("alice") && !key.contains("org"));
        assert!(key.contains(":h:"), "{key}");
        assert!(pttl > 0);
    }
}

#[test]
fn oversize_keys_are_rejected_before_redis() {
    let Some(server) = standalone() else { return };
    let ns = unique_ns("long");
    let store = RedisStore::builder()
        .url(server.url())
        .namespace(&ns)
        .max_key_len(64)
        .build()
        .unwrap();
    let limiter = Limiter::builder(gcra(5, 5)).build_with(&store).unwrap();
    assert!(matches!(
        limiter.check(&"x".repeat(100)),
        Err(Error::KeyTooLong { max: 64, .. })
    ));
    assert!(limiter.check("short").unwrap().allowed);
    assert_eq!(keys_with_pttl(server.port(), &ns).len(), 1);
}

#[test]
fn denial_cache_answers_locally_until_retry_after() {
    let Some(mut server) = tollgate_testkit::require_redis() else {
        return;
    };
    let store = RedisStore::builder()
        .url(server.url())
        .namespace("cache")
        .denial_cache(1_000)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let limiter = Limiter::builder(Policy::gcra(Rate::per_minute(1).unwrap()).unwrap())
        .build_with(&store)
        .unwrap();
    assert!(limiter.check("k").unwrap().allowed);
    let denied = limiter.check("k").unwrap();
    assert!(!denied.allowed);
    assert_eq!(limiter.backend().cached_denials(), 1);
    // With Redis gone, the cached denial still answers (no round trip), a cost below the
    // cached one and other keys need Redis.
    server.stop();
    let again = limiter.check("k").unwrap();
    assert!(!again.allowed);
    assert!(again.retry_after <= denied.retry_after);
    assert!(matches!(limiter.check("other"), Err(Error::Store(_))));
    server.restart().unwrap();
    let _ = RedisServer::url(&server);
}

/// A multi-key check through the store's `MultiBackend` (one script call).
fn check_all(items: &[KeyCheck<'_, RedisBackend>], now: u64) -> Result<MultiDecision, Error> {
    RedisBackend::execute_all(items, MultiOp::Check, now)
}

/// A multi-key peek (charges nothing).
fn peek_all(items: &[KeyCheck<'_, RedisBackend>], now: u64) -> Result<MultiDecision, Error> {
    RedisBackend::execute_all(items, MultiOp::Peek, now)
}

/// A multi-key check on the server's clock (the `now` is not used).
fn check_all_now(items: &[KeyCheck<'_, RedisBackend>]) -> Result<MultiDecision, Error> {
    check_all(items, 0)
}
