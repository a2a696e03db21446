//! Two server instances enforcing one limit through one Redis.

mod common;

use axum::routing::get;
use axum::Router;
use common::{client, header, serve};
use tollgate::{Limiter, Policy, Rate};
use tollgate_redis::RedisStore;
use tollgate_testkit::{must_have, RedisServer};
use tollgate_tower::key::PeerIp;
use tollgate_tower::{HttpPolicy, RateLimitLayer};

/// One "instance": its own Redis connection and limiter, the same namespace and policy.
async fn instance(url: &str) -> String {
    let store = RedisStore::builder()
        .url(url)
        .namespace("tower-shared-test")
        .build()
        .expect("redis store");
    let limiter = Limiter::builder(Policy::gcra(Rate::per_minute(5).unwrap()).unwrap())
        .build_with(&store.scope("api"))
        .expect("bind");
    let layer = RateLimitLayer::new(HttpPolicy::new("api", limiter, PeerIp::new())).unwrap();
    serve(
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer),
    )
    .await
}

#[tokio::test]
async fn two_servers_share_one_limit_through_redis() {
    let Some(redis) = must_have("redis-server", RedisServer::start()) else {
        return;
    };
    let a = instance(&redis.url()).await;
    let b = instance(&redis.url()).await;
    let c = client();
    let mut statuses = Vec::new();
    let mut last_remaining = Vec::new();
    for i in 0..10 {
        let base = if i % 2 == 0 { &a } else { &b };
        let r = c.get(format!("{base}/")).send().await.unwrap();
        statuses.push(r.status().as_u16());
        last_remaining.push(header(&r, "ratelimit"));
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(statuses[..5], [200; 5]);
    assert_eq!(statuses[5..], [429; 5]);
    // The instances see each other's charges: remaining counts down across both.
    for (i, r) in last_remaining[..5].iter().enumerate() {
        assert!(
            r.starts_with(&format!("\"api\";r={};", 4 - i)),
            "response {i}: {r}"
        );
    }
}

#[tokio::test]
async fn redis_down_answers_503() {
    let Some(mut redis) = must_have("redis-server", RedisServer::start()) else {
        return;
    };
    let base = instance(&redis.url()).await;
    let c = client();
    assert_eq!(
        c.get(format!("{base}/")).send().await.unwrap().status(),
        200
    );
    redis.stop();
    let r = c.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "content-type"), "application/problem+json");
}

/// EVALSHA calls the server has run so far (`INFO commandstats`).
fn evalsha_calls(redis: &RedisServer) -> u64 {
    let mut c = tollgate_testkit::RespClient::connect(redis.port()).unwrap();
    let info = c
        .call(&["INFO", "commandstats"])
        .unwrap()
        .as_text()
        .unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn several_policies_on_redis_are_one_atomic_round_trip() {
    let Some(redis) = must_have("redis-server", RedisServer::start()) else {
        return;
    };
    let store = RedisStore::builder()
        .url(redis.url())
        .namespace("tower-multi")
        .build()
        .unwrap();
    let per_user = Limiter::builder(Policy::gcra(Rate::per_hour(3).unwrap()).unwrap())
        .build_with(&store.scope("user"))
        .unwrap();
    let global = Limiter::builder(Policy::fixed_window(Rate::per_hour(10).unwrap()).unwrap())
        .build_with(&store.scope("global"))
        .unwrap();
    let layer = RateLimitLayer::builder()
        .policy(HttpPolicy::new(
            "per-user",
            per_user.clone(),
            tollgate_tower::key::Header::named("x-user").unwrap(),
        ))
        .policy(HttpPolicy::new(
            "global",
            global.clone(),
            tollgate_tower::key::Global,
        ))
        .build()
        .unwrap();
    let base = serve(
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer),
    )
    .await;
    let c = client();
    // Warm up (loads the script), then count: one EVALSHA per request, two policies each.
    let r = c
        .get(format!("{base}/"))
        .header("x-user", "u0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = evalsha_calls(&redis);
    // 40 concurrent requests from 8 users: the global 10/hour admits exactly 9 more, each
    // user at most 3, and a denied request charges nothing anywhere.
    let mut requests = Vec::new();
    for i in 0..40 {
        let req = c
            .get(format!("{base}/"))
            .header("x-user", format!("u{}", i % 8));
        requests.push(tokio::spawn(async move {
            req.send().await.unwrap().status().as_u16()
        }));
    }
    let mut admitted = 0;
    for r in requests {
        if r.await.unwrap() == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 9);
    assert_eq!(
        evalsha_calls(&redis) - before,
        40,
        "one script call per request"
    );
    let charged: u64 = (0..8)
        .map(|u| {
            3 - per_user
                .peek(&format!("u{u}"), 1)
                .map(|d| if d.allowed { d.remaining + 1 } else { 0 })
                .unwrap()
        })
        .sum();
    assert_eq!(
        charged, 10,
        "the users were charged exactly the admitted requests"
    );
    assert!(!global.peek("global", 1).unwrap().allowed);
}
