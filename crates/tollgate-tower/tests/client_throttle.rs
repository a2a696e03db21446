//! The reqwest client throttle against real local servers.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use common::serve;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::{Limiter, Policy, Rate};
use tollgate_tower::client::ClientThrottle;

fn counting_app(hits: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/",
            get(|State(hits): State<Arc<AtomicUsize>>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                "ok"
            }),
        )
        .with_state(hits)
}

/// Answers 429 with `Retry-After: <secs>` to the first `refusals` requests, then 200.
fn refusing_app(hits: Arc<AtomicUsize>, refusals: usize, retry_after: &'static str) -> Router {
    let handler = move |State(hits): State<Arc<AtomicUsize>>| async move {
        let n = hits.fetch_add(1, Ordering::SeqCst);
        if n < refusals {
            let mut h = HeaderMap::new();
            h.insert("retry-after", retry_after.parse().unwrap());
            (StatusCode::TOO_MANY_REQUESTS, h, "slow down").into_response()
        } else {
            (StatusCode::OK, "ok").into_response()
        }
    };
    Router::new()
        .route("/", get(handler).post(handler))
        .with_state(hits)
}

fn throttled(throttle: ClientThrottle) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(common::client())
        .with(throttle)
        .build()
}

#[tokio::test]
async fn requests_complete_no_faster_than_the_quota() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(counting_app(Arc::clone(&hits))).await;
    // 5 per second, no burst: one request every 200 ms.
    let limiter =
        Limiter::memory(Policy::gcra(Rate::per_second(5).unwrap().with_burst(1).unwrap()).unwrap());
    let client = throttled(ClientThrottle::new(limiter).max_wait(Duration::from_secs(5)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let client = client.clone();
        let url = format!("{base}/");
        tasks.push(tokio::spawn(async move {
            client.get(url).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let elapsed = started.elapsed();
    assert_eq!(hits.load(Ordering::SeqCst), 6);
    // 6 requests at one per 200 ms: the last cannot start before 5 × 200 ms.
    assert!(
        elapsed >= Duration::from_millis(990),
        "6 requests at 5/s finished in {elapsed:?}"
    );
}

#[tokio::test]
async fn keys_are_independent_per_host() {
    let hits_a = Arc::new(AtomicUsize::new(0));
    let hits_b = Arc::new(AtomicUsize::new(0));
    let a = serve(counting_app(Arc::clone(&hits_a))).await;
    let b = serve(counting_app(Arc::clone(&hits_b))).await;
    let limiter = Limiter::memory(Policy::gcra(Rate::per_minute(1).unwrap()).unwrap());
    let client = throttled(ClientThrottle::new(limiter).max_wait(Duration::ZERO));
    assert_eq!(
        client.get(format!("{a}/")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client.get(format!("{b}/")).send().await.unwrap().status(),
        200
    );
    // The quota of host a is spent; the request is not sent and the error says why.
    let err = client.get(format!("{a}/")).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = err else {
        panic!("expected a middleware error, got {err:?}");
    };
    assert!(matches!(
        inner.downcast_ref::<tollgate::Error>(),
        Some(tollgate::Error::WaitTimeout { .. })
    ));
    assert_eq!(hits_a.load(Ordering::SeqCst), 1);
    assert_eq!(hits_b.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_servers_retry_after_is_honoured() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(refusing_app(Arc::clone(&hits), 1, "1")).await;
    let limiter = Limiter::memory(Policy::gcra(Rate::per_second(100).unwrap()).unwrap());
    let client = throttled(ClientThrottle::new(limiter).max_retries(2));
    let started = Instant::now();
    let r = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried after {:?}, before the server's Retry-After of 1 s",
        started.elapsed()
    );
}

#[tokio::test]
async fn retries_are_bounded() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(refusing_app(Arc::clone(&hits), usize::MAX, "0")).await;
    let limiter = Limiter::memory(Policy::gcra(Rate::per_second(100).unwrap()).unwrap());
    let client = throttled(ClientThrottle::new(limiter).max_retries(3));
    let r = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(hits.load(Ordering::SeqCst), 4); // the first try and 3 retries
}

#[tokio::test]
async fn a_retry_after_beyond_the_maximum_is_returned_as_is() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(refusing_app(Arc::clone(&hits), 1, "3600")).await;
    let limiter = Limiter::memory(Policy::gcra(Rate::per_second(100).unwrap()).unwrap());
    let client = throttled(ClientThrottle::new(limiter).max_retry_after(Duration::from_secs(5)));
    let r = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3600");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_that_cannot_be_cloned_is_never_resent() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(refusing_app(Arc::clone(&hits), 1, "0")).await;
    let limiter = Limiter::memory(Policy::gcra(Rate::per_second(100).unwrap()).unwrap());
    let client = throttled(ClientThrottle::new(limiter));
    // A cloneable body is retried...
    let r = client
        .post(format!("{base}/"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // ... a streaming one is not.
    hits.store(0, Ordering::SeqCst);
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>("chunk")]);
    let r = client
        .post(format!("{base}/"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_rate_limit_layer_and_the_client_throttle_agree() {
    // A tollgate server (1 per 300 ms, no burst) and a throttled client with the same quota:
    // the client waits instead of being refused.
    use tollgate_tower::{key::Global, HttpPolicy, RateLimitLayer};
    let server_limiter =
        Limiter::memory(Policy::gcra(Rate::new(1, Duration::from_millis(300)).unwrap()).unwrap());
    let layer = RateLimitLayer::new(HttpPolicy::new("api", server_limiter, Global)).unwrap();
    let app = Router::new()
        .route("/", post(|| async { "ok" }).get(|| async { "ok" }))
        .layer(layer);
    let base = serve(app).await;
    let client_limiter =
        Limiter::memory(Policy::gcra(Rate::new(1, Duration::from_millis(320)).unwrap()).unwrap());
    let client = throttled(ClientThrottle::new(client_limiter).max_retries(2));
    for _ in 0..3 {
        let r = client.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}
