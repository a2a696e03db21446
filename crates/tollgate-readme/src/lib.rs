//! The README's Rust examples, compiled and run as doc tests (`cargo test -p tollgate-readme`).
#![doc = include_str!("../../../README.md")]
