//! # tollgate-tower
//!
//! HTTP integration for [`tollgate`]:
//!
//! - [`RateLimitLayer`]: a `tower::Layer` for axum, hyper and any tower stack. Key extractors
//!   ([`key`]: peer IP, client IP behind trusted proxies, header, route, closures, composites),
//!   per-route / per-method policies, several policies per request decided all-or-nothing,
//!   `429` with `Retry-After`, the IETF `RateLimit` / `RateLimit-Policy` fields
//!   ([`headers`]) and RFC 9457 problem+json bodies, shadow (dry-run) mode, `503` on store
//!   failures, `tracing` spans and `metrics` counters.
//! - [`concurrency::ConcurrencyLimitLayer`]: at most N requests in flight per key.
//! - [`client::ClientThrottle`] (feature `client`, on by default): a `reqwest-middleware`
//!   middleware that keeps a client under a remote API's quota and honours `Retry-After`.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use axum::{routing::{get, post}, Router};
//! use tollgate::{Limiter, Policy, Rate};
//! use tollgate_tower::{HttpPolicy, RateLimitLayer, key::PeerIp};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let per_ip = Limiter::memory(Policy::gcra(Rate::per_second(10)?)?);
//! let login = Limiter::memory(Policy::gcra(Rate::per_minute(5)?)?);
//! let layer = RateLimitLayer::builder()
//!     .policy(HttpPolicy::new("per-ip", per_ip, PeerIp::new()))
//!     .policy(HttpPolicy::new("login", login, PeerIp::new()).path("/login").method(http::Method::POST))
//!     .build()?;
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .route("/login", post(|| async { "welcome" }))
//!     .layer(layer);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod body;
#[cfg(feature = "client")]
pub mod client;
pub mod concurrency;
pub mod headers;
mod inflight;
pub mod key;
pub mod layer;
pub mod semaphore;

pub use body::ResponseBody;
pub use layer::{
    HttpPolicy, LayerError, RateLimit, RateLimitFuture, RateLimitLayer, RateLimitLayerBuilder,
    ResponseFuture,
};
