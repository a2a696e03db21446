//! SQL stores for [tollgate]: PostgreSQL (a fleet) and SQLite (the processes of one
//! host).
//!
//! Both implement [`tollgate::store::Store`], so a [`tollgate::Limiter`] runs on them exactly
//! as on the memory store, with the same decisions (the golden vectors prove it):
//!
//! - [`PgStore`] (feature `postgres`): one round trip per decision — a PL/pgSQL function per
//!   algorithm, installed by [`PgStore::migrate`], locks the key's row and mirrors the Rust
//!   algorithm in `bigint` arithmetic. The database clock by default.
//! - [`SqliteStore`] (feature `sqlite`): a WAL database file shared by several processes;
//!   each decision is one `BEGIN IMMEDIATE` transaction running the pure Rust algorithm.
//!
//! Schema creation is explicit and idempotent ([`PgStore::migrate`],
//! [`SqliteStore::ensure_schema`]); the table name is configurable and validated
//! ([`TableName`]). Expired rows are removed by the stores themselves.
//!
//! ```
//! use tollgate::{Limiter, Policy, Rate};
//! let store = tollgate_sql::SqliteStore::in_memory().unwrap();
//! store.ensure_schema().unwrap();
//! let limiter = Limiter::builder(Policy::gcra(Rate::per_minute(60).unwrap()).unwrap())
//!     .build_with(&store)
//!     .unwrap();
//! assert!(limiter.check("alice").unwrap().allowed);
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod engine;
pub mod multi;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod table;

pub use multi::{KeyCheck, MultiDecision};
#[cfg(feature = "postgres")]
pub use postgres::{PgBackend, PgStore, PgStoreBuilder};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteBackend, SqliteStore};
pub use table::{TableName, DEFAULT_TABLE_NAME, MAX_TABLE_NAME_LEN};

/// The examples of `docs/sql.md`, compiled and run as doctests so the document stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/sql.md")]
pub struct SqlMdExamples;
