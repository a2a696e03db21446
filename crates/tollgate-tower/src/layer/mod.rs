//! The rate-limit layer: [`RateLimitLayer`] (a `tower::Layer`), its service [`RateLimit`] and
//! its future [`RateLimitFuture`] (around [`ResponseFuture`], which the concurrency layer
//! shares).
//!
//! A layer holds one or more [`HttpPolicy`]s. Each policy names a [`tollgate::Limiter`], a key
//! extractor and, optionally, the routes and methods it applies to. For every request the
//! layer finds the policies that apply, extracts their keys and decides:
//!
//! - **one policy**: one atomic `check` on its limiter;
//! - **several policies** (e.g. per-user *and* global): *all-or-nothing per request*, in **one
//!   multi-key call** ([`tollgate::Limiter::check_all`], the store capability
//!   [`tollgate::store::multi`]) when the policies' limiters share a backend type (every
//!   tollgate store: memory, Redis — one script call, one round trip —, PostgreSQL, SQLite;
//!   `Arc<dyn DynMultiBackend>` for stores chosen at run time, which must then be one store):
//!   every key admits and is charged, or nothing is charged anywhere, atomically. Limiters of
//!   *different* backend types in one layer cannot share a call: the layer then peeks every
//!   limiter, checks them in order and refunds the earlier charges if a later check denies
//!   (a concurrent request may briefly see the units about to be refunded as taken: denied a
//!   little early, never admitted beyond a limit). A denial reports the `RateLimit` fields of
//!   the policies that denied (the others were not charged).
//!
//! Denials answer `429 Too Many Requests` with `Retry-After`, the IETF `RateLimit` /
//! `RateLimit-Policy` fields (see [`crate::headers`]) and an RFC 9457 problem+json body. A
//! store failure that reaches the layer (`Err(tollgate::Error::Store)`: the limiter's failure
//! policy chose to fail closed) answers `503 Service Unavailable` with a problem+json body,
//! never a 500. In shadow mode nothing is ever blocked: decisions, fields and metrics happen
//! as usual, and the request goes through.
//!
//! Metrics: `tollgate_http_requests_total{policy, outcome, mode}` with `outcome` one of
//! `allowed`, `denied`, `error`, `no_key` and `mode` `enforce` or `shadow`. When several
//! policies apply and one denies, the denying policy counts `denied` and the others count
//! nothing for that request.
//!
//! ```
//! use tollgate::{Limiter, Policy, Rate};
//! use tollgate_tower::{HttpPolicy, RateLimitLayer, key::PeerIp};
//!
//! let per_ip = Limiter::memory(Policy::gcra(Rate::per_second(10).unwrap()).unwrap());
//! let login = Limiter::memory(Policy::gcra(Rate::per_minute(5).unwrap()).unwrap());
//! let layer = RateLimitLayer::builder()
//!     .policy(HttpPolicy::new("per-ip", per_ip, PeerIp::new()))
//!     .policy(HttpPolicy::new("login", login, PeerIp::new()).path("/login").method(http::Method::POST))
//!     .build()
//!     .unwrap();
//! // app = axum::Router::new().route(...).layer(layer);
//! # let _ = layer;
//! ```

mod erased;
mod future;
mod gate;
#[allow(clippy::module_inception)]
mod layer;
mod policy;
mod service;

pub use future::{RateLimitFuture, ResponseFuture};
pub use layer::{LayerError, RateLimitLayer, RateLimitLayerBuilder};
pub use policy::{HttpPolicy, MissingKey};
pub use service::RateLimit;

pub(crate) use gate::{metric_keys, AllowedFields, Gate, Plan, Verdict};
