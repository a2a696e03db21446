//! A small axum app with per-route limits.
//!
//! ```text
//! cargo run -p tollgate-tower --example axum_app            # listens on 127.0.0.1:3000
//! curl -i http://127.0.0.1:3000/                            # 10/s per client IP
//! curl -i -X POST http://127.0.0.1:3000/login               # + 5/min per client IP
//! curl -i -H 'x-api-key: k1' http://127.0.0.1:3000/api/items  # + 100/min per API key
//! ```
//!
//! `PORT` picks another port; `EXAMPLE_REQUESTS=N` makes the example call itself N times
//! and exit (a smoke test).

use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::time::Duration;
use tollgate::{Limiter, Policy, Rate};
use tollgate_tower::concurrency::{ConcurrencyLimitLayer, LocalInFlight};
use tollgate_tower::headers::HeaderOptions;
use tollgate_tower::key::{Header, PeerIp};
use tollgate_tower::layer::MissingKey;
use tollgate_tower::{HttpPolicy, RateLimitLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Every request: 10 per second per client IP (IPv6 clients grouped by /64).
    let per_ip = Limiter::memory(Policy::gcra(Rate::per_second(10)?)?);
    // Logins: 5 per minute per client IP, on top of the above.
    let login = Limiter::memory(Policy::gcra(Rate::per_minute(5)?)?);
    // The API: 100 per minute per API key; requests without a key are refused with 401.
    let api = Limiter::memory(Policy::gcra(Rate::per_minute(100)?)?);

    let rate_limits = RateLimitLayer::builder()
        .policy(HttpPolicy::new(
            "per-ip",
            per_ip,
            PeerIp::new().ipv6_prefix(64),
        ))
        .policy(
            HttpPolicy::new("login", login, PeerIp::new().ipv6_prefix(64))
                .path("/login")
                .method(http::Method::POST),
        )
        .policy(
            HttpPolicy::new("api", api, Header::named("x-api-key")?)
                .path_prefix("/api/")
                .on_missing_key(MissingKey::Reject(http::StatusCode::UNAUTHORIZED)),
        )
        .headers(HeaderOptions::default().legacy(true))
        .build()?;
    // At most 4 requests in flight per client.
    let in_flight = ConcurrencyLimitLayer::new("in-flight", LocalInFlight::new(4), PeerIp::new());

    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/login", post(|| async { "welcome\n" }))
        .route("/api/items", get(|| async { "[1, 2, 3]\n" }))
        .layer(rate_limits)
        .layer(in_flight);

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    );

    match std::env::var("EXAMPLE_REQUESTS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        None => server.await?,
        Some(n) => {
            tokio::spawn(async move { server.await });
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?;
            for i in 0..n {
                let r = client.post(format!("http://{addr}/login")).send().await?;
                println!(
                    "POST /login #{}: {} RateLimit: {:?} Retry-After: {:?}",
                    i + 1,
                    r.status(),
                    r.headers().get("ratelimit"),
                    r.headers().get("retry-after")
                );
            }
        }
    }
    Ok(())
}
