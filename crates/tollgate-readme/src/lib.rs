//! The README's and `docs/redis.md`'s Rust examples, compiled (and, for the README, run) as
//! doc tests (`cargo test -p tollgate-readme`), so the documents stay true. Every example
//! must also be free of ignored decisions: `unused_must_use` is an error in them.
#![doc(test(attr(deny(unused_must_use))))]
#![doc = include_str!("../../../README.md")]

/// The examples of `docs/redis.md` (compiled; they need a Redis server to run, so they are
/// `no_run`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/redis.md")]
pub struct RedisMdExamples;
