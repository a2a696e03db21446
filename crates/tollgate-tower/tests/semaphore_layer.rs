//! The concurrency-limit layer on `tollgate::Semaphore` over real HTTP: in memory, and on Redis
//! shared by two servers (one in-flight limit for the fleet).

mod common;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use common::{client, serve};
use std::sync::Arc;
use std::time::Duration;
use tollgate::semaphore::{Semaphore, SemaphoreBackend};
use tollgate_tower::concurrency::ConcurrencyLimitLayer;
use tollgate_tower::key::Header;
use tollgate_tower::semaphore::SemaphoreInFlight;

/// Every request waits for a unit of `gate` before answering.
fn gated_app(gate: Arc<tokio::sync::Semaphore>, layer: ConcurrencyLimitLayer) -> Router {
    Router::new()
        .route(
            "/",
            get(
                |State(gate): State<Arc<tokio::sync::Semaphore>>| async move {
                    gate.acquire().await.expect("open").forget();
                    "done"
                },
            ),
        )
        .with_state(gate)
        .layer(layer)
}

async fn wait_in_use<B: SemaphoreBackend + ?Sized>(sem: &Semaphore<B>, n: u64) {
    for _ in 0..500 {
        if sem.in_use_async().await.unwrap() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never reached {n} in use");
}

/// Two servers behind one semaphore: at most `capacity` requests of a tenant in flight across
/// both; a refused request gets 429; slots come back when responses finish.
async fn fleet_wide_in_flight<B: SemaphoreBackend + ?Sized>(base: Semaphore<B>) {
    let tenant = base.with_name(format!("{}:acme", base.name())).unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut urls = Vec::new();
    for _ in 0..2 {
        let layer = ConcurrencyLimitLayer::new(
            "per-tenant",
            SemaphoreInFlight::new(base.clone()),
            Header::named("x-tenant").unwrap(),
        );
        urls.push(format!(
            "{}/",
            serve(gated_app(Arc::clone(&gate), layer)).await
        ));
    }
    let c = client();
    let send = |url: &String, t: &str| c.get(url).header("x-tenant", t).send();
    let first = tokio::spawn(send(&urls[0], "acme"));
    let second = tokio::spawn(send(&urls[1], "acme"));
    wait_in_use(&tenant, 2).await;
    // full on both servers
    for url in &urls {
        let r = send(url, "acme").await.unwrap();
        assert_eq!(r.status(), 429, "{url}");
    }
    // another tenant is another semaphore
    let other = tokio::spawn(send(&urls[0], "globex"));
    gate.add_permits(3);
    for r in [first, second, other] {
        assert_eq!(r.await.unwrap().unwrap().status(), 200);
    }
    wait_in_use(&tenant, 0).await;
    gate.add_permits(1);
    assert_eq!(send(&urls[1], "acme").await.unwrap().status(), 200);
}

#[tokio::test]
async fn in_memory_semaphore_limits_requests_in_flight() {
    let base = Semaphore::builder("tower-sem-test", 2).build().unwrap();
    fleet_wide_in_flight(base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_semaphore_limits_requests_in_flight_across_servers() {
    let Some(server) =
        tollgate_testkit::must_have("redis-server", tollgate_testkit::RedisServer::start())
    else {
        return;
    };
    let store = tollgate_redis::RedisStore::open(&server.url()).unwrap();
    let backend = tollgate_redis::RedisSemaphoreBackend::new(&store)
        .unwrap()
        .into_arc();
    let base = Semaphore::builder("tower-sem-test", 2)
        .build_on(backend)
        .unwrap();
    fleet_wide_in_flight(base).await;
}
