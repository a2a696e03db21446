//! tollgate vs governor 0.10, side by side in one run, with the ratios printed at the end.
//!
//! Run: `cargo bench -p tollgate --bench vs_governor`
//!
//! Instruction counts (stable on a loaded machine): `CALLGRIND_LOOP=1 valgrind
//! --tool=callgrind --callgrind-out-file=cg.out <bench binary>`, then
//! `callgrind_annotate --inclusive=yes cg.out | grep loops::` (each count / 10^6 = instructions
//! per check).
//!
//! Measured: a single-key GCRA check (allowed and denied: tollgate's `DirectLimiter` vs
//! governor's direct limiter; and the denial with its wait read, which governor computes
//! from its `NotUntil` only when asked), a keyed check on one hot `String` key, and a keyed check cycling
//! over 100,000 random `String` keys; then the memory each idle key costs in both, counted by an
//! instrumented global allocator (live heap bytes, excluding the key's own bytes).

use criterion::{black_box, Criterion};
use governor::{Quota, RateLimiter};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;
use tollgate::{DirectLimiter, Limiter, Policy, Rate};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const KEYS: usize = 100_000;

/// Deterministic pseudo-random keys that look like client identifiers.
fn random_keys(n: usize) -> Vec<String> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("client-{x:016x}")
        })
        .collect()
}

fn always_allowed_policy() -> Policy {
    // 1,000,000/s with a burst no benchmark run can exhaust
    Policy::gcra(
        Rate::per_second(1_000_000)
            .unwrap()
            .with_burst(1 << 40)
            .unwrap(),
    )
    .unwrap()
}

fn always_allowed_quota() -> Quota {
    Quota::per_second(NonZeroU32::new(1_000_000).unwrap()).allow_burst(NonZeroU32::MAX)
}

fn always_denied_policy() -> Policy {
    Policy::gcra(Rate::per_hour(1).unwrap()).unwrap()
}

fn always_denied_quota() -> Quota {
    Quota::per_hour(NonZeroU32::new(1).unwrap())
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("direct_allowed");
    let t = DirectLimiter::new(always_allowed_policy());
    let gov = RateLimiter::direct(always_allowed_quota());
    g.bench_function("tollgate", |b| {
        b.iter(|| black_box(t.check().unwrap().allowed))
    });
    g.bench_function("governor", |b| b.iter(|| black_box(gov.check().is_ok())));
    g.finish();

    let mut g = c.benchmark_group("direct_denied");
    let t = DirectLimiter::new(always_denied_policy());
    let _ = t.check();
    let gov = RateLimiter::direct(always_denied_quota());
    let _ = gov.check();
    g.bench_function("tollgate", |b| {
        b.iter(|| black_box(t.check().unwrap().allowed))
    });
    g.bench_function("governor", |b| b.iter(|| black_box(gov.check().is_ok())));
    g.finish();

    // The denial with the wait read: governor computes it from its `NotUntil` on request,
    // tollgate's decision carries it.
    let mut g = c.benchmark_group("direct_denied_with_wait");
    let clock = governor::clock::DefaultClock::default();
    g.bench_function("tollgate", |b| {
        b.iter(|| black_box(t.check().unwrap().retry_after))
    });
    g.bench_function("governor", |b| {
        b.iter(|| {
            use governor::clock::Clock;
            black_box(gov.check().err().map(|n| n.wait_time_from(clock.now())))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("keyed_hot_key");
    let hot = "client-hot".to_string();
    let t = Limiter::memory(always_allowed_policy());
    let gov = RateLimiter::keyed(always_allowed_quota());
    g.bench_function("tollgate", |b| {
        b.iter(|| black_box(t.check(&hot).unwrap().allowed))
    });
    g.bench_function("governor", |b| {
        b.iter(|| black_box(gov.check_key(&hot).is_ok()))
    });
    g.finish();

    let mut g = c.benchmark_group("keyed_100k_string_keys");
    let keys = random_keys(KEYS);
    let t = Limiter::memory(always_allowed_policy());
    let gov = RateLimiter::keyed(always_allowed_quota());
    for k in &keys {
        let _ = t.check(k);
        let _ = gov.check_key(k);
    }
    let mut i = 0;
    g.bench_function("tollgate", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(t.check(&keys[i]).unwrap().allowed)
        })
    });
    let mut i = 0;
    g.bench_function("governor", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(gov.check_key(&keys[i]).is_ok())
        })
    });
    g.finish();
}

/// Live heap bytes per idle key, minus the key's own bytes, for `n` keys.
fn memory_per_key() -> (f64, f64) {
    let keys = random_keys(KEYS);
    let key_bytes: usize = keys.iter().map(|k| k.len()).sum();

    let region = Region::new(GLOBAL);
    let t = Limiter::memory(always_allowed_policy());
    for k in &keys {
        let _ = t.check(k).unwrap();
    }
    let s = region.change();
    let tollgate =
        (s.bytes_allocated as f64 - s.bytes_deallocated as f64 - key_bytes as f64) / KEYS as f64;
    drop(t);

    let region = Region::new(GLOBAL);
    let gov = RateLimiter::keyed(always_allowed_quota());
    for k in &keys {
        let _ = gov.check_key(k);
    }
    let s = region.change();
    let governor =
        (s.bytes_allocated as f64 - s.bytes_deallocated as f64 - key_bytes as f64) / KEYS as f64;
    drop(gov);
    (tollgate, governor)
}

fn mean_ns(dir: &std::path::Path, group: &str, function: &str) -> Option<f64> {
    let path = dir.join(group).join(function).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

/// Checks per function in the `CALLGRIND_LOOP` mode.
const LOOP: u64 = 1_000_000;

/// One loop per measured call, each a separate symbol for `callgrind_annotate --inclusive=yes`
/// (instructions per call = the function's inclusive count / [`LOOP`]; the multipliers keep
/// the compiler from merging identical loops).
mod loops {
    use super::LOOP;
    use criterion::black_box;
    use governor::clock::{Clock, DefaultClock};
    use governor::DefaultDirectRateLimiter;
    use tollgate::DirectLimiter;

    #[inline(never)]
    pub fn tollgate_allowed(t: &DirectLimiter) -> u64 {
        (0..LOOP)
            .map(|_| u64::from(black_box(t.check().unwrap().allowed)))
            .sum()
    }
    #[inline(never)]
    pub fn governor_allowed(g: &DefaultDirectRateLimiter) -> u64 {
        (0..LOOP)
            .map(|_| u64::from(black_box(g.check().is_ok())) * 2)
            .sum()
    }
    #[inline(never)]
    pub fn tollgate_denied(t: &DirectLimiter) -> u64 {
        (0..LOOP)
            .map(|_| u64::from(black_box(t.check().unwrap().allowed)) * 3)
            .sum()
    }
    #[inline(never)]
    pub fn governor_denied(g: &DefaultDirectRateLimiter) -> u64 {
        (0..LOOP)
            .map(|_| u64::from(black_box(g.check().is_ok())) * 4)
            .sum()
    }
    #[inline(never)]
    pub fn tollgate_denied_with_wait(t: &DirectLimiter) -> u64 {
        (0..LOOP)
            .map(|_| black_box(t.check().unwrap().retry_after).as_micros() as u64)
            .sum()
    }
    #[inline(never)]
    pub fn governor_denied_with_wait(g: &DefaultDirectRateLimiter) -> u64 {
        let clock = DefaultClock::default();
        (0..LOOP)
            .map(|_| match black_box(g.check()) {
                Ok(()) => 0,
                Err(n) => n.wait_time_from(clock.now()).as_micros() as u64,
            })
            .sum()
    }
}

/// `CALLGRIND_LOOP=1`: runs each single-key check [`LOOP`] times and exits, for
/// `valgrind --tool=callgrind <bench binary>` (instruction counts do not depend on the load).
fn callgrind_loops() {
    let t = DirectLimiter::new(always_allowed_policy());
    let gov = RateLimiter::direct(always_allowed_quota());
    let td = DirectLimiter::new(always_denied_policy());
    let _ = td.check();
    let gd = RateLimiter::direct(always_denied_quota());
    let _ = gd.check();
    let sums = [
        loops::tollgate_allowed(&t),
        loops::governor_allowed(&gov),
        loops::tollgate_denied(&td),
        loops::governor_denied(&gd),
        loops::tollgate_denied_with_wait(&td),
        loops::governor_denied_with_wait(&gd),
    ];
    println!("{LOOP} checks per loop: {sums:?}");
}

fn main() {
    if std::env::var_os("CALLGRIND_LOOP").is_some() {
        callgrind_loops();
        return;
    }
    let dir = PathBuf::from(
        std::env::var("CARGO_TARGET_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").to_string()),
    )
    .join("criterion");
    let mut c = Criterion::default()
        .output_directory(&dir)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();

    println!(
        "\n== tollgate vs governor 0.10 (median ns per check; ratio = tollgate / governor) =="
    );
    println!(
        "{:<26} {:>12} {:>12} {:>8}",
        "benchmark", "tollgate", "governor", "ratio"
    );
    for group in [
        "direct_allowed",
        "direct_denied",
        "direct_denied_with_wait",
        "keyed_hot_key",
        "keyed_100k_string_keys",
    ] {
        if let (Some(t), Some(g)) = (
            mean_ns(&dir, group, "tollgate"),
            mean_ns(&dir, group, "governor"),
        ) {
            println!("{group:<26} {t:>10.2}ns {g:>10.2}ns {:>7.2}x", t / g);
        }
    }
    let (t, g) = memory_per_key();
    println!(
        "{:<26} {:>10.1} B {:>10.1} B {:>7.2}x   (live heap bytes per idle key, excluding the key)",
        "memory_per_idle_key",
        t,
        g,
        t / g
    );
}
