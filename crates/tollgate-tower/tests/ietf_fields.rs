//! Exact IETF `RateLimit` / `RateLimit-Policy` values over real HTTP (axum on a loopback
//! socket, reqwest): `w` is the policy's period for `n` per period, the token bucket's refill
//! time, and on multi-rate policies the `RateLimit` item names the `RateLimit-Policy` item of
//! the rate that binds (draft-ietf-httpapi-ratelimit-headers-10 §4/§5).

mod common;

use axum::routing::get;
use axum::Router;
use common::{client, header, serve};
use std::time::Duration;
use tollgate::time::{ManualClock, Micros};
use tollgate::{Algorithm, Limiter, Policy};
use tollgate_tower::key::Global;
use tollgate_tower::{HttpPolicy, RateLimitLayer};

const T0: Micros = 1_700_000_000_000_000;

fn limiter(policy: Policy, clock: &ManualClock) -> Limiter {
    Limiter::builder(policy).clock(clock.clone()).build()
}

async fn serve_policy(name: &str, limiter: Limiter) -> String {
    let layer = RateLimitLayer::builder()
        .policy(HttpPolicy::new(name, limiter, Global))
        .build()
        .unwrap();
    serve(
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer),
    )
    .await
}

/// (status, RateLimit-Policy, RateLimit) of one GET.
async fn fields(base: &str) -> (u16, String, String) {
    let r = client().get(format!("{base}/")).send().await.unwrap();
    (
        r.status().as_u16(),
        header(&r, "ratelimit-policy"),
        header(&r, "ratelimit"),
    )
}

/// Regression: `3/s` used to be advertised with `w=2` (the emission interval rounded up in
/// µs, times the burst, rounded up again) by the server; `w` is the period.
#[tokio::test]
async fn n_per_period_advertises_the_period() {
    let clock = ManualClock::new(T0);
    let cases = [
        (Algorithm::Gcra, "3/s", "\"p\";q=3;w=1"),
        (Algorithm::Gcra, "7/s", "\"p\";q=7;w=1"),
        (Algorithm::Gcra, "100/minute", "\"p\";q=100;w=60"),
        (Algorithm::Gcra, "10/s burst 20", "\"p\";q=20;w=2"),
        (Algorithm::FixedWindow, "3/s", "\"p\";q=3;w=1"),
        (Algorithm::SlidingWindow, "9/7s", "\"p\";q=9;w=7"),
        (Algorithm::SlidingLog, "100/500ms", "\"p\";q=100;w=1"),
        (Algorithm::FixedWindow, "7/1500ms", "\"p\";q=7;w=2"),
    ];
    for (algorithm, rates, want) in cases {
        let base = serve_policy(
            "p",
            limiter(Policy::parse(algorithm, rates).unwrap(), &clock),
        )
        .await;
        let (status, policy_field, _) = fields(&base).await;
        assert_eq!(status, 200, "{algorithm} {rates}");
        assert_eq!(policy_field, want, "{algorithm} {rates}");
    }
}

/// Regression: a token bucket of 10 refilled by 4 every 1.5 s takes 3 refills (4.5 s) to
/// go from empty to full; `w` was 4 (`10 × 1.5 / 4` rounded up), as if refill were continuous.
#[tokio::test]
async fn token_bucket_advertises_its_refill_time() {
    let clock = ManualClock::new(T0);
    let bucket = Policy::token_bucket(10, 4, Duration::from_millis(1_500)).unwrap();
    let base = serve_policy("bucket", limiter(bucket, &clock)).await;
    let (status, policy_field, ratelimit) = fields(&base).await;
    assert_eq!(status, 200);
    assert_eq!(policy_field, "\"bucket\";q=10;w=5");
    assert_eq!(ratelimit, "\"bucket\";r=9;t=2");
}

/// A multi-rate policy reports the rate that binds, and both fields name the same item.
#[tokio::test]
async fn multi_rate_fields_name_the_binding_rate() {
    let clock = ManualClock::new(T0);
    let policy = Policy::parse(Algorithm::SlidingLog, "2/s; 5/minute").unwrap();
    let base = serve_policy("multi", limiter(policy, &clock)).await;

    // 1/s rate binds first (1 of 2 left vs 4 of 5).
    assert_eq!(
        fields(&base).await,
        (200, "\"multi\";q=2;w=1".into(), "\"multi\";r=1;t=60".into())
    );
    assert_eq!(fields(&base).await.0, 200);
    clock.advance(Duration::from_secs(1));
    assert_eq!(fields(&base).await.0, 200);
    // 4 used in the minute, 2 in this second: the per-second rate still binds (0 left vs 1).
    assert_eq!(
        fields(&base).await,
        (200, "\"multi\";q=2;w=1".into(), "\"multi\";r=0;t=60".into())
    );
    clock.advance(Duration::from_secs(1));
    // The per-minute rate binds now: 0 of 5 left, 1 of 2 left in this second.
    assert_eq!(
        fields(&base).await,
        (
            200,
            "\"multi\";q=5;w=60".into(),
            "\"multi\";r=0;t=60".into()
        )
    );
    // Denied by the per-minute rate: its item again.
    let (status, policy_field, ratelimit) = fields(&base).await;
    assert_eq!(status, 429);
    assert_eq!(policy_field, "\"multi\";q=5;w=60");
    assert_eq!(ratelimit, "\"multi\";r=0;t=60");
}
