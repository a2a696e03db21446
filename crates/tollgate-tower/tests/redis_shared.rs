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
