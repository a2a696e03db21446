//! The sliding-window counter's error against the exact sliding log, pinned with a
//! `ManualClock` (`docs/semantics.md`, "Sliding-window counter: how far off it can be").
//!
//! Worst case: `L` units admitted in the last microsecond of a window; the next window's
//! estimate counts them as `L × (W − e) / W`, so by elapsed `e` it admits `⌊L × e / W⌋` more
//! while they are still inside the last `W`. The most admitted within any `W` is therefore
//! `2L − ⌈2L / W⌉` (`W` in µs): 199 for 100 per 60 s, where the exact sliding log admits 100.

use std::time::Duration;
use tollgate::time::ManualClock;
use tollgate::{Algorithm, Limiter, Policy};

const L: u64 = 100;
const W: u64 = 60_000_000; // 60 s in µs
/// A window boundary: a multiple of 60 s since the UNIX epoch.
const WS: u64 = 1_699_999_980_000_000;

fn pair(clock: &ManualClock) -> (Limiter, Limiter) {
    let make = |algorithm| {
        Limiter::builder(Policy::parse(algorithm, "100/60s").unwrap())
            .clock(clock.clone())
            .build()
    };
    (make(Algorithm::SlidingWindow), make(Algorithm::SlidingLog))
}

/// The most timestamps (with multiplicity) inside any interval `(t - W, t]`.
fn max_in_any_window(admitted: &[u64]) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..admitted.len() {
        while admitted[hi] - admitted[lo] >= W {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

#[test]
fn worst_case_is_2l_minus_ceil_2l_over_w() {
    assert_eq!(WS % W, 0);
    let clock = ManualClock::new(WS - 1);
    let (counter, log) = pair(&clock);
    let mut by_counter = Vec::new();
    let mut by_log = Vec::new();
    let attempt = |n: u64, by_counter: &mut Vec<u64>, by_log: &mut Vec<u64>| {
        for _ in 0..n {
            if counter.check("k").unwrap().allowed {
                by_counter.push(clock.now());
            }
            if log.check("k").unwrap().allowed {
                by_log.push(clock.now());
            }
        }
    };
    // a full burst in the last µs of window 0 (window -1 empty): both admit all of it
    attempt(L, &mut by_counter, &mut by_log);
    assert_eq!((by_counter.len(), by_log.len()), (100, 100));
    // the latest instant at which the burst is still inside the last W: elapsed W - 2 µs
    clock.set(WS + W - 2);
    attempt(L, &mut by_counter, &mut by_log);
    let extra = L * (W - 2) / W; // ⌊L·e/W⌋ at e = W − 2 µs
    assert_eq!(extra, 99);
    assert_eq!(by_counter.len() as u64, L + extra);
    assert_eq!(by_log.len(), 100, "the exact log admits nothing more");
    let worst = 2 * L - (2 * L).div_ceil(W);
    assert_eq!(worst, 199);
    assert_eq!(max_in_any_window(&by_counter) as u64, worst);
    assert_eq!(max_in_any_window(&by_log) as u64, L);
    // one µs later the burst has left the last W and the counter is within L again
    clock.advance(Duration::from_micros(1));
    assert!(!counter.check("k").unwrap().allowed);
}

/// The measurement: quiet, then 3× the limit from two thirds into a window (the
/// burst fills the end of the window), evenly spaced. The window's last third admits `L`,
/// the next window `L × e / W` by elapsed `e`: the most in any `W` is `(2 − 1/3) L` = 166.
#[test]
fn a_burst_at_three_times_the_rate_filling_a_window_end_gives_166() {
    let clock = ManualClock::new(WS + 2 * W / 3);
    let (counter, log) = pair(&clock);
    let (mut by_counter, mut by_log) = (Vec::new(), Vec::new());
    let gap = W / (3 * L); // 200 ms
    while clock.now() < WS + 3 * W {
        if counter.check("k").unwrap().allowed {
            by_counter.push(clock.now());
        }
        if log.check("k").unwrap().allowed {
            by_log.push(clock.now());
        }
        clock.advance(Duration::from_micros(gap));
    }
    assert_eq!(max_in_any_window(&by_counter), 166);
    assert_eq!(max_in_any_window(&by_log), 100);
}

/// The bound holds whatever the traffic: Poisson arrivals at 3× the limit for 200 windows
/// never put more than `2L − 1` admissions in any `W` (measured here: see the printout),
/// and admit about as much in total as the exact log.
#[test]
fn poisson_overload_stays_within_the_bound() {
    let clock = ManualClock::new(WS);
    let (counter, log) = pair(&clock);
    let (mut by_counter, mut by_log) = (Vec::new(), Vec::new());
    // a small LCG for reproducible exponential inter-arrival times (mean W / 3L)
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut uniform = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mean = W as f64 / (3 * L) as f64;
    let end = WS + 200 * W;
    while clock.now() < end {
        let gap = (-uniform().ln() * mean) as u64;
        clock.advance(Duration::from_micros(gap.max(1)));
        if counter.check("k").unwrap().allowed {
            by_counter.push(clock.now());
        }
        if log.check("k").unwrap().allowed {
            by_log.push(clock.now());
        }
    }
    let worst_counter = max_in_any_window(&by_counter);
    println!(
        "3x Poisson load, 200 windows of 100/60 s: counter admitted {} (most in any 60 s: {}), \
         exact log {} (most in any 60 s: {})",
        by_counter.len(),
        worst_counter,
        by_log.len(),
        max_in_any_window(&by_log)
    );
    assert!((worst_counter as u64) < 2 * L, "{worst_counter}");
    assert!(
        worst_counter as u64 > L,
        "overload makes the estimate overshoot somewhere"
    );
    assert_eq!(max_in_any_window(&by_log) as u64, L);
    let (a, b) = (by_counter.len() as f64, by_log.len() as f64);
    assert!((a / b - 1.0).abs() < 0.05, "totals {a} vs {b}");
}
