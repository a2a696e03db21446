//! The tower layer over local leases: two instances, each a `LeaseStore` over one Redis,
//! share a frozen quota of 100 a day — never more than 100 requests pass, and every unit
//! is either admitted or still in an instance's batch.

mod common;

use axum::routing::get;
use axum::Router;
use common::{client, serve};
use std::time::Duration;
use tollgate::store::lease::{LeaseBackend, LeaseConfig, LeaseStore};
use tollgate::{Limiter, Policy, Rate};
use tollgate_redis::{RedisBackend, RedisStore};
use tollgate_testkit::{must_have, RedisServer};
use tollgate_tower::key::PeerIp;
use tollgate_tower::{HttpPolicy, RateLimitLayer};

/// One instance: its own store and leases; returns its address and its backend.
async fn instance(url: &str) -> (String, LeaseBackend<RedisBackend>) {
    let store = RedisStore::builder()
        .url(url)
        .namespace("tower-lease-test")
        .build()
        .expect("redis store");
    let leased = LeaseStore::new(
        store.scope("api"),
        LeaseConfig::default()
            .min_batch(4)
            .max_batch(20)
            .duration(Duration::from_secs(60)),
    );
    let limiter = Limiter::builder(Policy::gcra(Rate::per_day(100).unwrap()).unwrap())
        .build_with(&leased)
        .expect("bind");
    let backend = limiter.backend().clone();
    let layer = RateLimitLayer::new(HttpPolicy::new("api", limiter, PeerIp::new())).unwrap();
    let addr = serve(
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer),
    )
    .await;
    (addr, backend)
}

#[tokio::test]
async fn two_instances_with_leases_never_pass_more_than_the_quota() {
    let Some(redis) = must_have("redis-server", RedisServer::start()) else {
        return;
    };
    let (a, lease_a) = instance(&redis.url()).await;
    let (b, lease_b) = instance(&redis.url()).await;
    let c = client();
    let mut passed = 0u64;
    for i in 0..300 {
        let base = if i % 2 == 0 { &a } else { &b };
        let r = c.get(format!("{base}/")).send().await.unwrap();
        match r.status().as_u16() {
            200 => passed += 1,
            429 => {}
            other => panic!("status {other}"),
        }
    }
    let held = lease_a.held() + lease_b.held();
    assert!(passed <= 100, "{passed} passed");
    assert_eq!(passed + held, 100, "{passed} passed, {held} held");
}
