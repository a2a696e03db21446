//! # tollgate-server
//!
//! The standalone rate-limit service: an HTTP/JSON API, a Redis-protocol endpoint compatible
//! with redis-cell's `CL.THROTTLE`, and Prometheus metrics, on the in-memory store (one
//! instance) or a shared store (several instances acting as one).
//!
//! Run it with `cargo run --release -p tollgate-server`; the API is documented in
//! `docs/server.md`. This library exposes the pieces for tests and embedding:
//!
//! - [`config`]: the TOML file, flags and environment, validated with field-named errors;
//! - [`app`]: policies bound to the store, key mapping, failure policy, metrics;
//! - [`cell`]: redis-cell's `CL.THROTTLE` semantics and rounding;
//! - [`resp`]: the RESP parser and encoder; [`resp_server`]: the RESP endpoint;
//! - [`http`]: the axum router; [`server`]: listeners and graceful shutdown;
//! - [`rls`]: Envoy's rate-limit service (RLS v3 gRPC) with envoyproxy/ratelimit's YAML.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use tollgate_server::{app::App, cell, config::Config};
//! let app = App::new(&Config::default(), None).unwrap();
//! // redis-cell: max_burst 15 (limit 16), 30 per 60 s
//! let reply = cell::throttle(&app, "user123", 15, 30, 60, 1).await.unwrap();
//! assert_eq!(reply.to_array(), [0, 16, 15, -1, 2]);
//! # });
//! ```

#![warn(missing_docs)]
// One exception, with its reason where it is: `http::conn_io` registers each accepted HTTP
// socket with tokio's reactor as an `AsyncFd` (tokio marks that registration `unsafe`).
#![deny(unsafe_code)]

pub mod app;
pub mod cell;
pub mod config;
mod errlog;
pub mod http;
pub mod resp;
pub mod resp_server;
pub mod rls;
pub mod server;
