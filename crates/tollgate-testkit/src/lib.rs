//! Test infrastructure for the tollgate workspace (dev-only, never published).
//!
//! The stores' tests need real servers. This crate gives them:
//!
//! - [`RedisServer`]: a private `redis-server` on a free loopback port, in its
//!   own temporary directory, killed when the guard is dropped (also when the
//!   test panics). It can be [stopped](RedisServer::stop) and
//!   [restarted](RedisServer::restart) on the same port to test faults: after
//!   a restart the data and the script cache are gone, exactly as after a
//!   real crash.
//! - [`RedisCluster`]: three masters (no replicas) joined into a Redis Cluster
//!   with `redis-cli --cluster create`, ready (`cluster_state:ok` on every
//!   node) when [`RedisCluster::start`] returns.
//! - [`postgres_url`]: the PostgreSQL to test against, from `DATABASE_URL`
//!   (`scripts/test` provides one; see below).
//! - [`must_have`]: the one rule for missing infrastructure. Outside CI a test
//!   that lacks Redis or PostgreSQL prints `SKIP: <what>: <reason>` to stderr
//!   and returns early; in CI (env `CI` set) it panics, so a CI run can never
//!   pass by silently skipping the store tests.
//! - [`FaultProxy`]: a loopback TCP proxy to a server that injects network faults on
//!   demand ([`Fault`]: latency, black-holed packets, connection resets).
//! - [`free_port`], [`redis_server_path`], [`redis_cli_path`], and a tiny
//!   RESP client ([`RespClient`], [`redis_command`]) for raw protocol checks.
//!
//! # Typical use
//!
//! ```
//! use tollgate_testkit::{must_have, RedisServer};
//!
//! // Skips (outside CI) or fails (in CI) when redis-server is not installed.
//! let Some(mut redis) = must_have("redis-server", RedisServer::start()) else {
//!     return;
//! };
//! let url = redis.url(); // "redis://127.0.0.1:<port>/": hand it to the store
//! assert!(url.starts_with("redis://127.0.0.1:"));
//!
//! redis.command(&["SET", "k", "v"]).unwrap();
//! redis.restart().unwrap(); // same port, empty data set, empty script cache
//! assert_eq!(redis.command(&["EXISTS", "k"]).unwrap().as_int(), Some(0));
//! // Dropping `redis` kills the server and removes its directory.
//! ```
//!
//! ```
//! // PostgreSQL: scripts/test exports DATABASE_URL (an existing server, or a
//! // private throwaway cluster it starts and stops itself).
//! let Some(url) = tollgate_testkit::require_postgres() else { return };
//! assert!(url.starts_with("postgres"));
//! ```
//!
//! # Environment
//!
//! | variable | meaning |
//! |---|---|
//! | `CI` | set (and not `0`/`false`): missing infrastructure is a test failure, not a skip |
//! | `DATABASE_URL` | the PostgreSQL to test against |
//! | `TOLLGATE_REDIS_SERVER` | path of the `redis-server` (or `valkey-server`) binary to use |
//! | `TOLLGATE_REDIS_CLI` | path of the `redis-cli` (or `valkey-cli`) binary to use |
//!
//! # Robustness
//!
//! - Every server gets its own port: ports come from binding port 0, are never
//!   handed out twice by one process, and a start that loses a port race
//!   (another process took the port in between) retries with a new port.
//! - A server is confirmed to be *ours* before it is returned: the readiness
//!   probe compares `INFO server`'s `process_id` with the spawned child.
//! - Servers die with their guard ([`Drop`]), which runs when a test panics.
//!   On Linux they are also bound to the test process with
//!   `PR_SET_PDEATHSIG`, so a test binary that is killed or aborts, or a
//!   server parked in a `static` (statics are never dropped), leaves no
//!   server running.

#![warn(missing_docs)]

mod benchmark;
mod cluster;
mod env;
mod ports;
mod process;
mod proxy;
mod redis;
mod resp;
mod tempdir;

pub use benchmark::{redis_benchmark, redis_benchmark_path, RedisBenchmark};
pub use cluster::RedisCluster;
pub use env::{
    in_ci, must_have, postgres_url, redis_cli_path, redis_server_path, require_postgres,
    require_redis, require_redis_cluster,
};
pub use ports::free_port;
pub use proxy::{Fault, FaultProxy};
pub use redis::RedisServer;
pub use resp::{redis_command, Resp, RespClient};
pub use tempdir::TempDir;
