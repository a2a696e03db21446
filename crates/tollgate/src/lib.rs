//! # tollgate
//!
//! Rate limits (how often) and concurrency limits (how many at once), inside one process or
//! shared by a fleet. Algorithms are pure integer functions ([`algorithm`]) mirrored exactly by
//! every store; the in-memory store ([`store::memory`]) is keyed, concurrent and bounded.
//!
//! ```
//! use tollgate::{Limiter, Policy, Rate, Algorithm};
//! use std::time::Duration;
//!
//! // 5 per second and 1000 per hour on every key, all-or-nothing.
//! let policy = Policy::parse(Algorithm::SlidingLog, "5/s; 1000/hour").unwrap();
//! let limiter = Limiter::memory(policy);
//! let d = limiter.check("user:42").unwrap();
//! assert!(d.allowed);
//! assert_eq!(d.remaining, 4);
//!
//! // Wait up to 2 s for a unit instead of failing fast.
//! let d = limiter.acquire("user:42", 1, Duration::from_secs(2)).unwrap();
//! assert!(d.allowed);
//! ```
//!
//! The exact semantics of every algorithm are in `docs/semantics.md`.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod algorithm;
pub mod conformance;
mod decision;
mod error;
pub mod hooks;
pub mod keys;
mod limiter;
mod policy;
mod quota;
pub mod semaphore;
pub mod store;
pub mod time;

pub use decision::Decision;
pub use error::{Error, QuotaError, StoreError, StoreErrorKind};
pub use limiter::{
    DirectLimiter, LimitCheck, Limiter, LimiterBuilder, DEFAULT_MAX_KEY_LEN, WAIT_FOREVER,
};
pub use policy::{Algorithm, Policy, PolicySpec, RateSpec, MAX_RATES};
pub use quota::{parse_rates, Rate, MAX_HORIZON_US};
pub use semaphore::{Permit, Semaphore, SemaphoreError};
pub use store::multi::MultiDecision;
