//! Long quotas on Redis: Lua numbers are doubles, and the sliding-window counter multiplies a
//! limit of up to 10^9 by a window of up to a year in µs (about 3·10^22, far beyond 2^53). The
//! scripts compare and divide those products exactly (prelude.lua `mulcmp`/`muldiv`). This
//! differential test drives the same pseudo-random operations at realistic 2026 timestamps
//! through Redis and the memory store (which runs the pure Rust functions in 128-bit
//! arithmetic) and requires identical decisions, for every algorithm.

use crate::common::*;
use tollgate::store::memory::MemoryStore;
use tollgate::store::{Backend, Op, Store};
use tollgate::{Algorithm, Policy};
use tollgate_redis::TimeSource;

/// xorshift64*: deterministic, so a failure replays.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const QUOTAS: [&str; 7] = [
    "1000000000 per 365 days",
    "5000000 per 30 days",
    "10000 per 28 days",
    "100000/day",
    "1500000/hour",
    "1 per 365 days",
    "999999937 per 364 days",
];

#[test]
fn long_quotas_decide_exactly_like_the_memory_store() {
    let Some(server) = standalone() else { return };
    let ns = unique_ns("long");
    let redis = standalone_store(server, &ns, TimeSource::Caller);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut compared = 0;
    for quota in QUOTAS {
        for algorithm in Algorithm::ALL {
            let policy = Policy::parse(algorithm, quota).unwrap();
            let on_redis = redis.bind(&policy).unwrap();
            let on_memory = MemoryStore::new().bind(&policy).unwrap();
            let cap = policy.max_cost();
            let horizon = policy.max_horizon().as_micros() as u64;
            // 2026-05-29 plus a random offset, then random steps of up to a fifth of the horizon.
            let mut now = 1_780_012_800_000_000 + rng.below(horizon.max(1));
            let key = format!("{algorithm}/{quota}");
            for _ in 0..40 {
                now += rng.below(horizon / 5 + 2);
                let cost = match rng.below(4) {
                    0 => cap,
                    1 => 1,
                    _ => 1 + rng.below(cap),
                };
                let op = match rng.below(10) {
                    0 => Op::Peek(cost),
                    1 => Op::Refund(cost),
                    _ => Op::Check(cost),
                };
                let r = on_redis.execute(&key, op, now).unwrap();
                let m = on_memory.execute(&key, op, now).unwrap();
                assert_eq!(r, m, "{algorithm} {quota} {op:?} at {now}");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, QUOTAS.len() * Algorithm::ALL.len() * 40);
}
