//! Every bad input gets a clear error, at construction or at call time.

use std::time::Duration;
use tollgate::{
    parse_rates, Algorithm, Error, Limiter, Policy, PolicySpec, QuotaError, Rate, RateSpec,
};

fn gcra(limit: u64) -> Policy {
    Policy::gcra(Rate::per_second(limit).unwrap()).unwrap()
}

#[test]
fn zero_limit_and_zero_period_are_rejected() {
    assert_eq!(Rate::per_second(0), Err(QuotaError::ZeroLimit));
    assert_eq!(
        Rate::new(5, Duration::ZERO),
        Err(QuotaError::ZeroPeriod(Duration::ZERO))
    );
    assert_eq!(
        Rate::new(5, Duration::from_nanos(999)),
        Err(QuotaError::ZeroPeriod(Duration::from_nanos(999)))
    );
    assert!(Rate::per_second(1).unwrap().with_burst(0) == Err(QuotaError::ZeroBurst));
}

#[test]
fn more_than_one_unit_per_microsecond_is_too_fine() {
    let e = Rate::per_second(2_000_000).unwrap_err();
    assert!(
        matches!(
            e,
            QuotaError::TooFine {
                limit: 2_000_000,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("1 unit per microsecond"));
    assert!(Rate::per_second(1_000_000).is_ok());
}

#[test]
fn overflowing_horizons_are_rejected() {
    // a period beyond 2^52 µs
    let e = Rate::new(1, Duration::from_secs(200 * 365 * 86_400)).unwrap_err();
    assert!(matches!(e, QuotaError::TooLarge { .. }), "{e}");
    // a burst so large that T * burst overflows the horizon
    let e = Rate::per_hour(1).unwrap().with_burst(u64::MAX).unwrap_err();
    assert!(matches!(e, QuotaError::TooLarge { .. }), "{e}");
    // more than one unit per µs (a huge limit)
    let e = Rate::new(
        u64::MAX / 2,
        Duration::from_secs(u64::MAX / 4_000_000_000_000),
    )
    .unwrap_err();
    assert!(
        matches!(e, QuotaError::TooLarge { .. } | QuotaError::TooFine { .. }),
        "{e}"
    );
    let e = Rate::parse("5/99999999999999999999w").unwrap_err();
    assert!(
        matches!(e, QuotaError::Parse { .. } | QuotaError::TooLarge { .. }),
        "{e}"
    );
}

#[test]
fn rate_strings_that_do_not_parse_say_why() {
    for (input, needle) in [
        ("ten/s", "limit must be a whole number"),
        ("10/parsec", "unknown period unit"),
        ("10/", "missing the period unit"),
        ("10 every second", "expected"),
        ("10/s burst lots", "burst must be a whole number"),
        ("-1/s", "limit must be a whole number"),
    ] {
        let e = Rate::parse(input).unwrap_err();
        assert!(e.to_string().contains(needle), "{input}: {e}");
    }
    assert_eq!(Rate::parse("0/s"), Err(QuotaError::ZeroLimit));
    assert!(matches!(
        Rate::parse("5/0s"),
        Err(QuotaError::ZeroPeriod(_))
    ));
    assert_eq!(parse_rates(" ; "), Err(QuotaError::NoRates));
}

#[test]
fn rate_strings_parse_every_documented_form() {
    let cases = [
        ("10/s", 10, 1_000_000),
        ("10/second", 10, 1_000_000),
        ("10 per second", 10, 1_000_000),
        ("100/minute", 100, 60_000_000),
        ("100/5m", 100, 300_000_000),
        ("500 per 7 days", 500, 7 * 86_400_000_000),
        ("1000/hour", 1000, 3_600_000_000),
        ("3/250ms", 3, 250_000),
        ("1_000/d", 1000, 86_400_000_000),
        ("2/w", 2, 604_800_000_000),
    ];
    for (input, limit, period_us) in cases {
        let r = Rate::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!((r.limit(), r.period_us()), (limit, period_us), "{input}");
    }
    let rates = parse_rates("100/minute;1000/hour").unwrap();
    assert_eq!(rates.len(), 2);
    assert_eq!(Rate::parse("10/s burst 25").unwrap().burst(), 25);
    // Display round-trips
    for input in ["5/1s", "100/5m", "7/3d burst 9", "3/250ms"] {
        assert_eq!(Rate::parse(input).unwrap().to_string(), input);
    }
}

#[test]
fn multi_rate_lists_that_make_no_sense_are_rejected() {
    let r = |s: &str| Rate::parse(s).unwrap();
    let e = Policy::new(Algorithm::Gcra, [r("10/s"), r("20/s")]).unwrap_err();
    assert!(
        matches!(
            e,
            QuotaError::InconsistentRates {
                never: 1,
                because: 0,
                ..
            }
        ),
        "{e}"
    );
    let e = Policy::new(Algorithm::SlidingLog, [r("100/h"), r("10/s"), r("5/min")]).unwrap_err();
    assert!(matches!(e, QuotaError::InconsistentRates { .. }), "{e}");
    assert!(e.to_string().contains("never apply"), "{e}");
    assert_eq!(
        Policy::new(Algorithm::Gcra, Vec::<Rate>::new()).unwrap_err(),
        QuotaError::NoRates
    );
    let many: Vec<Rate> = (1..=9)
        .map(|i| Rate::new(i * 10, Duration::from_secs(i)).unwrap())
        .collect();
    assert!(matches!(
        Policy::new(Algorithm::Gcra, many),
        Err(QuotaError::TooManyRates { got: 9, max: 8 })
    ));
}

#[test]
fn burst_and_initial_tokens_only_where_they_mean_something() {
    let bursty = Rate::per_second(5).unwrap().with_burst(10).unwrap();
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::SlidingLog,
    ] {
        let e = Policy::new(algorithm, [bursty]).unwrap_err();
        assert!(
            matches!(e, QuotaError::BurstNotSupported { .. }),
            "{algorithm}: {e}"
        );
    }
    assert!(Policy::new(Algorithm::Gcra, [bursty]).is_ok());
    assert!(matches!(
        gcra(5).with_initial_tokens(1),
        Err(QuotaError::InvalidInitialTokens { .. })
    ));
    let tb = Policy::token_bucket(10, 1, Duration::from_secs(1)).unwrap();
    assert!(matches!(
        tb.with_initial_tokens(11),
        Err(QuotaError::InvalidInitialTokens {
            initial: 11,
            capacity: 10
        })
    ));
}

#[test]
fn policy_specs_validate_when_deserialised() {
    let spec = PolicySpec {
        algorithm: Algorithm::Gcra,
        rates: vec![RateSpec {
            limit: 0,
            period_us: 1_000_000,
            burst: None,
            initial_tokens: None,
        }],
    };
    assert_eq!(Policy::try_from(spec).unwrap_err(), QuotaError::ZeroLimit);
    let bad: Result<Policy, _> =
        serde_json::from_str(r#"{"algorithm":"fixed_window","rates":[{"limit":5,"period_us":0}]}"#);
    assert!(bad.unwrap_err().to_string().contains("period"));
    let unknown: Result<Policy, _> =
        serde_json::from_str(r#"{"algorithm":"leaky","rates":[{"limit":5,"period_us":10}]}"#);
    assert!(unknown.is_err());
    assert!("leaky".parse::<Algorithm>().is_err());
}

#[test]
fn costs_that_can_never_fit_and_zero_costs_are_errors_not_waits() {
    for algorithm in Algorithm::ALL {
        let limiter =
            Limiter::memory(Policy::new(algorithm, [Rate::per_second(5).unwrap()]).unwrap());
        assert!(
            matches!(
                limiter.check_n("k", 6),
                Err(Error::CostExceedsCapacity {
                    cost: 6,
                    capacity: 5
                })
            ),
            "{algorithm}"
        );
        assert!(
            matches!(limiter.check_n("k", 0), Err(Error::InvalidCost)),
            "{algorithm}"
        );
        assert!(
            matches!(limiter.peek("k", 0), Err(Error::InvalidCost)),
            "{algorithm}"
        );
        assert!(
            matches!(limiter.refund("k", 0), Err(Error::InvalidCost)),
            "{algorithm}"
        );
        // acquire fails at once instead of waiting forever
        let started = std::time::Instant::now();
        assert!(matches!(
            limiter.acquire("k", 6, Duration::from_secs(60)),
            Err(Error::CostExceedsCapacity { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
        // and nothing was charged by any of it
        assert_eq!(limiter.peek("k", 1).unwrap().remaining, 4, "{algorithm}");
    }
    let multi = Limiter::memory(Policy::parse(Algorithm::SlidingLog, "5/s;100/min").unwrap());
    assert!(matches!(
        multi.check_n("k", 6),
        Err(Error::CostExceedsCapacity {
            cost: 6,
            capacity: 5
        })
    ));
}

#[test]
fn oversized_keys_are_rejected_and_store_nothing() {
    let limiter = Limiter::builder(gcra(5)).max_key_len(16).build();
    let long = "k".repeat(17);
    let e = limiter.check(&long).unwrap_err();
    assert!(matches!(e, Error::KeyTooLong { len: 17, max: 16 }));
    assert_eq!(e.to_string(), "the key is 17 bytes long; the maximum is 16");
    assert_eq!(limiter.backend().stats().keys, 0);
    assert!(limiter.check(&"k".repeat(16)).unwrap().allowed);
    let default = Limiter::memory(gcra(5));
    assert!(default
        .check(&"x".repeat(tollgate::DEFAULT_MAX_KEY_LEN + 1))
        .is_err());
}

#[test]
fn acquire_that_cannot_be_admitted_in_time_fails_without_charging() {
    let limiter = Limiter::memory(Policy::gcra(Rate::per_minute(1).unwrap()).unwrap());
    assert!(limiter.check("k").unwrap().allowed);
    let e = limiter
        .acquire("k", 1, Duration::from_millis(10))
        .unwrap_err();
    match e {
        Error::WaitTimeout { retry_after } => assert!(retry_after > Duration::from_secs(59)),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn bursty_multi_rates_are_rejected_only_when_one_rate_can_never_apply() {
    let r = |s: &str| Rate::parse(s).unwrap();
    // slower sustained rate with a larger burst, plus a faster rate with a smaller burst: both bind
    assert!(Policy::new(Algorithm::Gcra, [r("1/10s burst 5"), r("1/s burst 2")]).is_ok());
    assert!(Policy::new(Algorithm::TokenBucket, [r("1/s burst 3"), r("2/s burst 2")]).is_ok());
    // the first is stricter in both rate and burst: the second never applies
    let e = Policy::new(Algorithm::Gcra, [r("1/s burst 2"), r("2/s burst 3")]).unwrap_err();
    assert!(
        matches!(
            e,
            QuotaError::InconsistentRates {
                never: 1,
                because: 0,
                ..
            }
        ),
        "{e}"
    );
    let e = Policy::new(Algorithm::TokenBucket, [r("5/min"), r("5/min")]).unwrap_err();
    assert!(matches!(e, QuotaError::InconsistentRates { .. }), "{e}");
}
