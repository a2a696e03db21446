//! The concurrency-limit layer over real HTTP.

mod common;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use common::{client, client_from, serve};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tollgate_tower::concurrency::{ConcurrencyLimitLayer, LocalInFlight};
use tollgate_tower::key::PeerIp;

/// Every request waits for a unit of `gate` before answering.
fn gated_app(gate: Arc<Semaphore>, layer: ConcurrencyLimitLayer) -> Router {
    Router::new()
        .route(
            "/",
            get(|State(gate): State<Arc<Semaphore>>| async move {
                gate.acquire().await.expect("open").forget();
                "done"
            }),
        )
        .with_state(gate)
        .layer(layer)
}

async fn wait_for_in_flight(limit: &LocalInFlight, key: &str, n: u64) {
    for _ in 0..500 {
        if limit.in_flight(key) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "{key} never reached {n} in flight (now {})",
        limit.in_flight(key)
    );
}

#[tokio::test]
async fn at_most_n_in_flight_per_key() {
    let gate = Arc::new(Semaphore::new(0));
    let limit = LocalInFlight::new(2);
    let layer = ConcurrencyLimitLayer::new("in-flight", limit.clone(), PeerIp::new());
    let base = serve(gated_app(Arc::clone(&gate), layer)).await;
    let url = format!("{base}/");
    let c = client();
    let first = tokio::spawn(c.get(&url).send());
    let second = tokio::spawn(c.get(&url).send());
    wait_for_in_flight(&limit, "127.0.0.1", 2).await;
    // The key is full: refused at once, with a problem+json body.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // Another peer address is a different key.
    let other = tokio::spawn(client_from([127, 0, 0, 3]).get(&url).send());
    wait_for_in_flight(&limit, "127.0.0.3", 1).await;
    gate.add_permits(3);
    for t in [first, second, other] {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "done");
    }
    wait_for_in_flight(&limit, "127.0.0.1", 0).await;
    assert_eq!(limit.tracked_keys(), 0);
    gate.add_permits(1);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn full_keys_can_answer_503_with_retry_after() {
    let gate = Arc::new(Semaphore::new(0));
    let limit = LocalInFlight::new(1);
    let layer = ConcurrencyLimitLayer::new("in-flight", limit.clone(), PeerIp::new())
        .when_full(http::StatusCode::SERVICE_UNAVAILABLE)
        .retry_after(2);
    let base = serve(gated_app(Arc::clone(&gate), layer)).await;
    let url = format!("{base}/");
    let c = client();
    let first = tokio::spawn(c.get(&url).send());
    wait_for_in_flight(&limit, "127.0.0.1", 1).await;
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "2");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["policy"], "in-flight");
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn a_request_without_a_key_is_refused_clearly() {
    let limit = LocalInFlight::new(1);
    let layer = ConcurrencyLimitLayer::new(
        "per-key",
        limit,
        tollgate_tower::key::Header::named("x-api-key").unwrap(),
    );
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    let base = serve(app).await;
    let r = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = client()
        .get(format!("{base}/"))
        .header("x-api-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
