//! Regression tests for the quotas people write (issue: `100000/day` was rejected because
//! `limit × period ≤ 2^52` was enforced for every algorithm). The golden vectors
//! (`tests/vectors/*.json`, cases named `long_*`) pin the decisions of these quotas on every
//! store; these tests pin construction and the error messages.

use std::time::Duration;
use tollgate::{Algorithm, Limiter, Policy, QuotaError, Rate};

const QUOTAS: [&str; 6] = [
    "100000/day",
    "1500000/hour",
    "10000 per 28 days",
    "5000000 per 30 days",
    "1000000000 per 365 days",
    "1 per 365 days",
];

#[test]
fn every_quota_people_write_is_accepted_by_every_algorithm() {
    for quota in QUOTAS {
        for algorithm in Algorithm::ALL {
            let policy = Policy::parse(algorithm, quota)
                .unwrap_or_else(|e| panic!("{algorithm} {quota}: {e}"));
            let limiter = Limiter::memory(policy.clone());
            let cap = policy.max_cost();
            let d = limiter.check_n("k", cap).unwrap();
            assert!(d.allowed, "{algorithm} {quota}: the whole capacity at once");
            assert_eq!(d.remaining, 0, "{algorithm} {quota}");
            let d = limiter.check("k").unwrap();
            assert!(!d.allowed, "{algorithm} {quota}: one more is denied");
            assert!(d.retry_after > Duration::ZERO, "{algorithm} {quota}");
            assert!(
                d.retry_after <= policy.max_horizon(),
                "{algorithm} {quota}: {:?}",
                d.retry_after
            );
        }
    }
}

#[test]
fn pyrate_limiters_headline_rates_work_on_the_sliding_log() {
    let p = Policy::parse(
        Algorithm::SlidingLog,
        "500/hour; 1000/day; 10000 per 4 weeks",
    )
    .unwrap();
    assert_eq!(p.rates().len(), 3);
    assert_eq!(p.max_horizon(), Duration::from_secs(28 * 86_400));
    // The same list is fine on the other algorithms too.
    for algorithm in Algorithm::ALL {
        Policy::parse(algorithm, "500/hour; 1000/day; 10000 per 4 weeks")
            .unwrap_or_else(|e| panic!("{algorithm}: {e}"));
    }
}

#[test]
fn a_rate_that_can_never_bind_is_named_with_the_reason() {
    // PyrateLimiter's rule: 5/s already caps a minute at 300, so 1000/min never denies.
    let e = Policy::parse(Algorithm::SlidingLog, "5/s; 1000/min").unwrap_err();
    match &e {
        QuotaError::InconsistentRates {
            algorithm,
            never,
            never_rate,
            because,
            because_rate,
            ..
        } => {
            assert_eq!(*algorithm, "sliding_log");
            assert_eq!((*never, never_rate.as_str()), (1, "1000/1m"));
            assert_eq!((*because, because_rate.as_str()), (0, "5/1s"));
        }
        other => panic!("{other:?}"),
    }
    let text = e.to_string();
    assert!(text.starts_with("sliding_log: rate 1 (1000/1m)"), "{text}");
    assert!(text.contains("rate 0 (5/1s)"), "{text}");
    // A longer period that allows no more units: the shorter rate never denies.
    let e = Policy::parse(Algorithm::FixedWindow, "100/min; 100/hour").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("fixed_window: rate 0 (100/1m) could never apply next to rate 1"),
        "{e}"
    );
    // Same period twice.
    let e = Policy::parse(Algorithm::SlidingWindow, "10/s; 20/s").unwrap_err();
    assert!(e.to_string().contains("same period"), "{e}");
    // Equal ratios are allowed, as in PyrateLimiter (non-increasing limit/interval).
    assert!(Policy::parse(Algorithm::SlidingLog, "5/s; 300/min").is_ok());
}

#[test]
fn a_horizon_too_long_for_the_algorithm_names_the_algorithm_and_the_rate() {
    // 2^51 + 1 µs: a valid period, but the sliding window keeps two windows (2^52 + 2 µs).
    let period = Duration::from_micros((1 << 51) + 1);
    let rate = Rate::new(1, period).unwrap();
    assert!(Policy::fixed_window(rate).is_ok());
    let e = Policy::sliding_window(rate).unwrap_err();
    assert!(matches!(e, QuotaError::TooLarge { .. }), "{e}");
    assert!(
        e.to_string().starts_with("sliding_window rate 0 (1/"),
        "{e}"
    );
    // A period over 2^52 µs is rejected for every algorithm, naming the rate text.
    let e = Rate::parse("1 per 52200 days").unwrap_err();
    assert!(e.to_string().starts_with("1/52200d"), "{e}");
}
