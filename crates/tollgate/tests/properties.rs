//! Property tests: each algorithm against an independent brute-force reference model, and the
//! universal properties every algorithm must have.

use proptest::prelude::*;
use std::time::Duration;
use tollgate::store::{memory::MemoryStore, Backend, Op, Store};
use tollgate::{Algorithm, Decision, Policy, Rate};

const T0: u64 = 10_000_000_000;

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn check(b: &impl Backend, t: u64, cost: u64) -> Decision {
    b.execute("k", Op::Check(cost), t).unwrap().unwrap()
}

fn peek(b: &impl Backend, t: u64, cost: u64) -> Decision {
    b.execute("k", Op::Peek(cost), t).unwrap().unwrap()
}

/// Random (gap, cost) sequences.
fn steps(max_gap: u64, max_cost: u64) -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0..max_gap, 1..=max_cost), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// GCRA equals a continuous token bucket kept in exact integer "µs of credit":
    /// level = min(tau, level + dt); admit iff level >= cost * T.
    #[test]
    fn gcra_matches_an_exact_continuous_bucket(
        limit in 1u64..20, period_ms in 1u64..2_000, burst in 1u64..20,
        seq in steps(3_000_000, 20),
    ) {
        let rate = Rate::new(limit, Duration::from_millis(period_ms)).unwrap().with_burst(burst).unwrap();
        let b = MemoryStore::new().bind(&Policy::gcra(rate).unwrap()).unwrap();
        let t_unit = (period_ms * 1000).div_ceil(limit);
        let tau = t_unit * burst;
        let mut level = tau;
        let mut t = T0;
        let mut last = T0;
        for (gap, cost) in seq {
            t += gap;
            level = (level + (t - last)).min(tau);
            last = t;
            if cost > burst {
                prop_assert!(b.execute("k", Op::Check(cost), t).is_err());
                continue;
            }
            let d = check(&b, t, cost);
            let need = cost * t_unit;
            if level >= need {
                level -= need;
                prop_assert!(d.allowed);
                prop_assert_eq!(d.remaining, level / t_unit);
                prop_assert_eq!(us(d.reset_after), tau - level);
                prop_assert_eq!(d.retry_after, Duration::ZERO);
            } else {
                prop_assert!(!d.allowed);
                prop_assert_eq!(us(d.retry_after), need - level);
                prop_assert_eq!(d.remaining, level / t_unit);
                prop_assert_eq!(d.denied_by, Some(0));
            }
        }
    }

    /// GCRA never admits more than `burst + elapsed / T` in any interval.
    #[test]
    fn gcra_never_admits_more_than_burst_plus_elapsed_over_t(
        limit in 1u64..50, period_ms in 1u64..1_000, burst in 1u64..30,
        seq in steps(100_000, 5),
    ) {
        let rate = Rate::new(limit, Duration::from_millis(period_ms)).unwrap().with_burst(burst).unwrap();
        let b = MemoryStore::new().bind(&Policy::gcra(rate).unwrap()).unwrap();
        let t_unit = (period_ms * 1000).div_ceil(limit);
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        let mut t = T0;
        for (gap, cost) in seq {
            t += gap;
            if cost <= burst && check(&b, t, cost).allowed {
                admitted.push((t, cost));
            }
        }
        for i in 0..admitted.len() {
            let mut sum = 0;
            for j in i..admitted.len() {
                sum += admitted[j].1;
                let elapsed = admitted[j].0 - admitted[i].0;
                prop_assert!(sum <= burst + elapsed / t_unit,
                    "{} admitted in {} µs (burst {}, T {})", sum, elapsed, burst, t_unit);
            }
        }
    }

    /// The sliding log equals a brute-force list of admitted (ts, cost), for several rates.
    #[test]
    fn sliding_log_matches_a_brute_force_list(
        l1 in 1u64..8, w1 in 1u64..1_000, extra in 1u64..20, mult in 2u64..6,
        seq in steps(400_000, 8),
    ) {
        let w1 = w1 * 1000;
        // The longer rate allows more units but no more per unit of time (PyrateLimiter's
        // rule for rate lists, which policies enforce): l1 < l2 <= l1 * mult.
        let l2 = l1 + 1 + (extra - 1) % (l1 * (mult - 1));
        let rates = [(l1, w1), (l2, w1 * mult)];
        let policy = Policy::sliding_log(rates.iter().map(|&(l, w)| Rate::new(l, Duration::from_micros(w)).unwrap())).unwrap();
        let b = MemoryStore::new().bind(&policy).unwrap();
        let mut log: Vec<(u64, u64)> = Vec::new();
        let mut t = T0;
        for (gap, cost) in seq {
            t += gap;
            if cost > l1 {
                prop_assert!(b.execute("k", Op::Check(cost), t).is_err());
                continue;
            }
            let count = |log: &[(u64, u64)], w: u64, at: u64| log.iter().filter(|e| at - e.0 < w).map(|e| e.1).sum::<u64>();
            let fits_at = |log: &[(u64, u64)], at: u64| rates.iter().all(|&(l, w)| count(log, w, at) + cost <= l);
            let d = check(&b, t, cost);
            prop_assert_eq!(d.allowed, fits_at(&log, t));
            if d.allowed {
                log.push((t, cost));
                let rem = rates.iter().map(|&(l, w)| l - count(&log, w, t)).min().unwrap();
                prop_assert_eq!(d.remaining, rem);
            } else {
                // the earliest time it fits is one of the times an entry leaves a window
                let mut candidates: Vec<u64> = log.iter()
                    .flat_map(|e| rates.iter().map(move |&(_, w)| e.0 + w))
                    .filter(|&c| c > t)
                    .collect();
                candidates.sort();
                let earliest = candidates.into_iter().find(|&c| fits_at(&log, c)).unwrap();
                prop_assert_eq!(us(d.retry_after), earliest - t);
            }
        }
    }

    /// The token bucket equals a microsecond-by-microsecond simulation of ticks.
    #[test]
    fn token_bucket_matches_a_tick_by_tick_simulation(
        capacity in 1u64..10, refill in 1u64..5, interval in 5u64..40, initial in 0u64..10,
        seq in steps(120, 10),
    ) {
        let initial = initial.min(capacity);
        let policy = Policy::token_bucket(capacity, refill, Duration::from_micros(interval)).unwrap()
            .with_initial_tokens(initial).unwrap();
        let b = MemoryStore::new().bind(&policy).unwrap();
        // simulation state: tokens and µs since the last tick (None before the first call)
        let mut sim: Option<(u64, u64)> = None;
        let mut t = T0;
        let step = |s: &mut (u64, u64)| {
            if s.0 >= capacity { s.1 = 0; return; }
            s.1 += 1;
            if s.1 == interval { s.0 += refill; s.1 = 0; }
            if s.0 >= capacity { s.0 = capacity; s.1 = 0; }
        };
        for (gap, cost) in seq {
            if let Some(s) = sim.as_mut() { for _ in 0..gap { step(s); } }
            t += gap;
            if cost > capacity {
                // an error changes nothing (it does not create the bucket)
                prop_assert!(b.execute("k", Op::Check(cost), t).is_err());
                continue;
            }
            let s = sim.get_or_insert((initial, 0));
            if s.0 >= capacity { s.0 = capacity; s.1 = 0; }
            let d = check(&b, t, cost);
            if s.0 >= cost {
                prop_assert!(d.allowed);
                s.0 -= cost;
                prop_assert_eq!(d.remaining, s.0);
            } else {
                prop_assert!(!d.allowed);
                prop_assert_eq!(d.remaining, s.0);
                let mut future = *s;
                let mut wait = 0;
                while future.0 < cost { step(&mut future); wait += 1; }
                prop_assert_eq!(us(d.retry_after), wait);
            }
        }
    }

    /// The fixed window equals per-window counters.
    #[test]
    fn fixed_window_matches_per_window_counters(
        limit in 1u64..10, window in 10u64..500, seq in steps(300, 5),
    ) {
        let policy = Policy::fixed_window(Rate::new(limit, Duration::from_micros(window)).unwrap()).unwrap();
        let b = MemoryStore::new().bind(&policy).unwrap();
        let mut counts = std::collections::HashMap::new();
        let mut t = T0;
        for (gap, cost) in seq {
            t += gap;
            if cost > limit { continue; }
            let c = counts.entry(t / window).or_insert(0u64);
            let d = check(&b, t, cost);
            prop_assert_eq!(d.allowed, *c + cost <= limit);
            if d.allowed { *c += cost; }
            prop_assert_eq!(d.remaining, limit - *c);
        }
    }

    /// Universal properties, every algorithm: peek equals the check that follows it; a denial
    /// charges nothing; `retry_after` is exact (admitted then, denied 1 µs before); the
    /// sliding window never admits more than the limit within one aligned window.
    #[test]
    fn peek_is_check_without_charge_and_retry_after_is_exact(
        algo in 0usize..5, limit in 1u64..10, period in 1u64..2_000, seq in steps(1_500, 6),
    ) {
        let algorithm = Algorithm::ALL[algo];
        let policy = Policy::new(algorithm, [Rate::new(limit, Duration::from_micros(period.max(limit))).unwrap()]).unwrap();
        let b = MemoryStore::new().bind(&policy).unwrap();
        let mut t = T0;
        for (gap, cost) in seq {
            t += gap;
            if cost > limit { continue; }
            let p = peek(&b, t, cost);
            let d = check(&b, t, cost);
            prop_assert_eq!(p, d, "peek then check differ");
            if !d.allowed {
                // nothing was charged: the same check still gives the same answer
                prop_assert_eq!(peek(&b, t, cost), d);
                let retry = us(d.retry_after);
                prop_assert!(retry > 0);
                prop_assert!(!peek(&b, t + retry - 1, cost).allowed, "{algorithm}: admitted before retry_after");
                prop_assert!(peek(&b, t + retry, cost).allowed, "{algorithm}: not admitted at retry_after");
            } else {
                prop_assert_eq!(d.retry_after, Duration::ZERO);
            }
        }
    }

    /// reset_after is exact: at now + reset_after the key is back to full capacity.
    #[test]
    fn reset_after_leads_back_to_full_capacity(
        algo in 0usize..5, limit in 1u64..10, period in 10u64..2_000, seq in steps(1_000, 4),
    ) {
        let algorithm = Algorithm::ALL[algo];
        let policy = Policy::new(algorithm, [Rate::new(limit, Duration::from_micros(period)).unwrap()]).unwrap();
        let b = MemoryStore::new().bind(&policy).unwrap();
        let mut t = T0;
        let mut last = None;
        for (gap, cost) in seq {
            t += gap;
            if cost > limit { continue; }
            last = Some((t, check(&b, t, cost)));
        }
        if let Some((t, d)) = last {
            let fresh_at = t + us(d.reset_after);
            let full = peek(&b, fresh_at, 1);
            // for token buckets "full" is the capacity; for windows the limit
            prop_assert_eq!(full.remaining, limit - 1, "{}: not full at reset_after", algorithm);
        }
    }
}
