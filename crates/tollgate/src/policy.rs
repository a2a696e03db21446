//! A policy: which algorithm, and one or more rates enforced together on each key.

use crate::error::QuotaError;
use crate::quota::{parse_rates, Rate, MAX_HORIZON_US};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The most rates one policy may hold.
pub const MAX_RATES: usize = 8;

/// The algorithm a policy uses. See `docs/semantics.md` for the exact integer formulas.
///
/// ```
/// use tollgate::Algorithm;
/// assert_eq!("sliding_log".parse::<Algorithm>().unwrap(), Algorithm::SlidingLog);
/// assert_eq!(Algorithm::default(), Algorithm::Gcra);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Algorithm {
    /// Generic cell rate algorithm: a continuous token bucket in one integer per rate.
    #[default]
    Gcra,
    /// Token bucket refilled by `limit` tokens every `period` (interval refill), capacity
    /// `burst`, optional initial tokens.
    TokenBucket,
    /// Exact sliding log of admitted costs; several rates share one log.
    SlidingLog,
    /// Sliding-window counter: previous and current clock-aligned window, weighted (approximate).
    SlidingWindow,
    /// Fixed clock-aligned windows.
    FixedWindow,
}

impl Algorithm {
    /// The snake_case name used in configs, vectors and Redis keys.
    ///
    /// ```
    /// assert_eq!(tollgate::Algorithm::TokenBucket.name(), "token_bucket");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::FixedWindow => "fixed_window",
        }
    }

    /// Every algorithm.
    ///
    /// ```
    /// assert_eq!(tollgate::Algorithm::ALL.len(), 5);
    /// ```
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::SlidingLog,
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
    ];
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = QuotaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s.trim().to_ascii_lowercase().replace('-', "_"))
            .ok_or_else(|| QuotaError::Parse {
                input: s.to_string(),
                reason: "unknown algorithm (gcra, token_bucket, sliding_log, sliding_window, fixed_window)".into(),
            })
    }
}

/// An algorithm and the rates it enforces together on every key (all-or-nothing).
///
/// Every constructor validates, so a `Policy` value is always usable.
///
/// ```
/// use tollgate::{Policy, Rate, Algorithm};
/// let p = Policy::gcra(Rate::per_second(5).unwrap()).unwrap();
/// assert_eq!(p.algorithm(), Algorithm::Gcra);
/// let p = Policy::parse(Algorithm::SlidingLog, "5/s; 1000/hour").unwrap();
/// assert_eq!(p.rates().len(), 2);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "PolicySpec", into = "PolicySpec")]
pub struct Policy {
    algorithm: Algorithm,
    rates: Vec<Rate>,
    initial_tokens: Option<u64>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Policy({self})")
    }
}

impl fmt::Display for Policy {
    /// `algorithm:rate;rate` e.g. `gcra:5/1s burst 10`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.algorithm)?;
        for (i, r) in self.rates.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{r}")?;
        }
        if let Some(t) = self.initial_tokens {
            write!(f, " initial {t}")?;
        }
        Ok(())
    }
}

impl Policy {
    /// A policy of `algorithm` enforcing every rate in `rates` together.
    ///
    /// Rejects: no rate, more than [`MAX_RATES`], a burst on algorithms without one, a rate
    /// whose horizon exceeds [`crate::MAX_HORIZON_US`], and a rate that could never be the one
    /// that denies. For windows and logs that is PyrateLimiter's rule: ordered by period, each
    /// longer period allows more units but no more per unit of time (`5/s; 1000/min` is
    /// rejected: 5/s already caps a minute at 300); two rates with one period are rejected.
    /// For GCRA and the token bucket, a rate that another rate matches or beats in both
    /// sustained rate and burst. The error names the algorithm and both rates.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, Algorithm, QuotaError};
    /// let ok = Policy::new(Algorithm::FixedWindow, [Rate::per_second(5).unwrap(), Rate::per_hour(1000).unwrap()]);
    /// assert!(ok.is_ok());
    /// let bad = Policy::new(Algorithm::Gcra, [Rate::per_second(10).unwrap(), Rate::per_minute(5).unwrap()]);
    /// assert!(matches!(bad, Err(QuotaError::InconsistentRates { .. })));
    /// // PyrateLimiter's headline example works as written.
    /// assert!(Policy::parse(Algorithm::SlidingLog, "500/hour; 1000/day; 10000 per 28 days").is_ok());
    /// let e = Policy::parse(Algorithm::SlidingLog, "5/s; 1000/min").unwrap_err();
    /// assert_eq!(e.to_string(), "sliding_log: rate 1 (1000/1m) could never apply next to rate 0 (5/1s): \
    ///     a longer period must allow no more units per unit of time than a shorter one (the shorter rate always denies first)");
    /// ```
    pub fn new(
        algorithm: Algorithm,
        rates: impl IntoIterator<Item = Rate>,
    ) -> Result<Policy, QuotaError> {
        let rates: Vec<Rate> = rates.into_iter().collect();
        if rates.is_empty() {
            return Err(QuotaError::NoRates);
        }
        if rates.len() > MAX_RATES {
            return Err(QuotaError::TooManyRates {
                got: rates.len(),
                max: MAX_RATES,
            });
        }
        if !matches!(algorithm, Algorithm::Gcra | Algorithm::TokenBucket) {
            if let Some(r) = rates.iter().find(|r| r.has_explicit_burst()) {
                return Err(QuotaError::BurstNotSupported {
                    algorithm: algorithm.name(),
                    burst: r.burst(),
                    limit: r.limit(),
                });
            }
        }
        for (i, r) in rates.iter().enumerate() {
            let horizon = rate_horizon_us(algorithm, r);
            if horizon > MAX_HORIZON_US as u128 {
                return Err(QuotaError::TooLarge {
                    rate: format!("{algorithm} rate {i} ({r})"),
                    what: "the time until a key is back to fresh (µs)",
                    value: horizon,
                    max: MAX_HORIZON_US as u128,
                });
            }
        }
        for (i, a) in rates.iter().enumerate() {
            for (j, b) in rates.iter().enumerate().skip(i + 1) {
                if let Some((never, because, reason)) = never_applies(algorithm, (i, a), (j, b)) {
                    return Err(QuotaError::InconsistentRates {
                        algorithm: algorithm.name(),
                        never,
                        never_rate: rates[never].to_string(),
                        because,
                        because_rate: rates[because].to_string(),
                        reason,
                    });
                }
            }
        }
        Ok(Policy {
            algorithm,
            rates,
            initial_tokens: None,
        })
    }

    /// Parses `rates` (e.g. `"100/minute;1000/hour"`) into a policy of `algorithm`.
    ///
    /// ```
    /// use tollgate::{Policy, Algorithm};
    /// assert!(Policy::parse(Algorithm::Gcra, "10/s burst 20").is_ok());
    /// assert!(Policy::parse(Algorithm::Gcra, "10/parsec").is_err());
    /// ```
    pub fn parse(algorithm: Algorithm, rates: &str) -> Result<Policy, QuotaError> {
        Policy::new(algorithm, parse_rates(rates)?)
    }

    /// GCRA (the default algorithm) on one rate; the rate's burst is the GCRA burst.
    ///
    /// ```
    /// let p = tollgate::Policy::gcra(tollgate::Rate::per_second(5).unwrap()).unwrap();
    /// assert_eq!(p.to_string(), "gcra:5/1s");
    /// ```
    pub fn gcra(rate: Rate) -> Result<Policy, QuotaError> {
        Policy::new(Algorithm::Gcra, [rate])
    }

    /// Token bucket: `capacity` tokens, `refill_amount` added every `refill_interval`; starts
    /// full (see [`Policy::with_initial_tokens`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = tollgate::Policy::token_bucket(10, 2, Duration::from_secs(1)).unwrap();
    /// assert_eq!(p.rates()[0].burst(), 10);
    /// assert!(tollgate::Policy::token_bucket(10, 0, Duration::from_secs(1)).is_err());
    /// ```
    pub fn token_bucket(
        capacity: u64,
        refill_amount: u64,
        refill_interval: Duration,
    ) -> Result<Policy, QuotaError> {
        let rate = Rate::new(refill_amount, refill_interval)?.with_burst(capacity)?;
        Policy::new(Algorithm::TokenBucket, [rate])
    }

    /// Sliding log (exact) over one or more rates sharing one log.
    ///
    /// ```
    /// use tollgate::{Policy, parse_rates};
    /// assert!(Policy::sliding_log(parse_rates("5/s;100/min").unwrap()).is_ok());
    /// ```
    pub fn sliding_log(rates: impl IntoIterator<Item = Rate>) -> Result<Policy, QuotaError> {
        Policy::new(Algorithm::SlidingLog, rates)
    }

    /// Sliding-window counter (approximate, O(1) per key and rate).
    ///
    /// ```
    /// assert!(tollgate::Policy::sliding_window(tollgate::Rate::per_minute(60).unwrap()).is_ok());
    /// ```
    pub fn sliding_window(rate: Rate) -> Result<Policy, QuotaError> {
        Policy::new(Algorithm::SlidingWindow, [rate])
    }

    /// Fixed clock-aligned window.
    ///
    /// ```
    /// assert!(tollgate::Policy::fixed_window(tollgate::Rate::per_minute(60).unwrap()).is_ok());
    /// ```
    pub fn fixed_window(rate: Rate) -> Result<Policy, QuotaError> {
        Policy::new(Algorithm::FixedWindow, [rate])
    }

    /// Token bucket only: the tokens a new key starts with (default: the capacity).
    /// Applies to every rate, capped at each rate's capacity.
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = tollgate::Policy::token_bucket(10, 1, Duration::from_secs(1)).unwrap();
    /// assert!(p.clone().with_initial_tokens(0).is_ok());
    /// assert!(p.with_initial_tokens(11).is_err());
    /// ```
    pub fn with_initial_tokens(self, initial_tokens: u64) -> Result<Policy, QuotaError> {
        let capacity = self.rates.iter().map(Rate::burst).max().unwrap_or(0);
        if self.algorithm != Algorithm::TokenBucket || initial_tokens > capacity {
            return Err(QuotaError::InvalidInitialTokens {
                initial: initial_tokens,
                capacity,
            });
        }
        Ok(Policy {
            initial_tokens: Some(initial_tokens),
            ..self
        })
    }

    /// The algorithm.
    ///
    /// ```
    /// let p = tollgate::Policy::gcra(tollgate::Rate::per_second(5).unwrap()).unwrap();
    /// assert_eq!(p.algorithm(), tollgate::Algorithm::Gcra);
    /// ```
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The rates, in the order given (indexes match `Decision::denied_by`).
    ///
    /// ```
    /// let p = tollgate::Policy::gcra(tollgate::Rate::per_second(5).unwrap()).unwrap();
    /// assert_eq!(p.rates()[0].limit(), 5);
    /// ```
    pub fn rates(&self) -> &[Rate] {
        &self.rates
    }

    /// Token bucket: the initial tokens of rate `i` (capped at its capacity).
    ///
    /// ```
    /// let p = tollgate::Policy::token_bucket(4, 1, std::time::Duration::from_secs(1)).unwrap();
    /// assert_eq!(p.initial_tokens(0), 4);
    /// ```
    pub fn initial_tokens(&self, i: usize) -> u64 {
        let cap = self.rates.get(i).map(Rate::burst).unwrap_or(0);
        self.initial_tokens.map_or(cap, |t| t.min(cap))
    }

    /// The largest cost one call can ever be admitted with (the smallest capacity).
    ///
    /// ```
    /// let p = tollgate::Policy::parse(tollgate::Algorithm::SlidingLog, "5/s;100/min").unwrap();
    /// assert_eq!(p.max_cost(), 5);
    /// ```
    pub fn max_cost(&self) -> u64 {
        self.rates
            .iter()
            .map(|r| match self.algorithm {
                Algorithm::Gcra | Algorithm::TokenBucket => r.burst(),
                _ => r.limit(),
            })
            .min()
            .unwrap_or(0)
    }

    /// The longest time any key of this policy needs to be back to fresh from a completely
    /// used state: the TTL a store must keep state for.
    ///
    /// ```
    /// let p = tollgate::Policy::gcra(tollgate::Rate::per_second(5).unwrap()).unwrap();
    /// assert_eq!(p.max_horizon(), std::time::Duration::from_secs(1));
    /// ```
    pub fn max_horizon(&self) -> Duration {
        let us = self
            .rates
            .iter()
            .map(|r| rate_horizon_us(self.algorithm, r))
            .max()
            .unwrap_or(0);
        // Policy::new keeps every horizon within MAX_HORIZON_US (2^52).
        Duration::from_micros(us as u64)
    }
}

/// The longest time a key of `algorithm` needs to be back to fresh under rate `r`, in µs.
fn rate_horizon_us(algorithm: Algorithm, r: &Rate) -> u128 {
    let (limit, period, burst) = (r.limit() as u128, r.period_us() as u128, r.burst() as u128);
    match algorithm {
        Algorithm::Gcra => r.emission_interval_us() as u128 * burst,
        Algorithm::TokenBucket => burst.div_ceil(limit) * period,
        Algorithm::SlidingWindow => 2 * period,
        Algorithm::SlidingLog | Algorithm::FixedWindow => period,
    }
}

/// If one of two rates of a policy could never be the one that denies, returns
/// `(index of that rate, index of the rate that makes it so, why)`.
///
/// GCRA and the token bucket: a rate that the other matches or beats in both sustained rate
/// and burst. Windows and the sliding log follow PyrateLimiter's rule for rate lists
/// (`validate_rate_list`): ordered by period, each longer period must allow more units and no
/// more units per unit of time than a shorter one; two rates with one period are an error.
fn never_applies(
    algorithm: Algorithm,
    (i, a): (usize, &Rate),
    (j, b): (usize, &Rate),
) -> Option<(usize, usize, &'static str)> {
    // a.limit / a.period <= b.limit / b.period, in exact integers.
    let per_time_le = |a: &Rate, b: &Rate| {
        a.limit() as u128 * b.period_us() as u128 <= b.limit() as u128 * a.period_us() as u128
    };
    if matches!(algorithm, Algorithm::Gcra | Algorithm::TokenBucket) {
        const WHY: &str = "the other rate is at least as strict in both sustained rate and burst";
        if per_time_le(a, b) && a.burst() <= b.burst() {
            return Some((j, i, WHY));
        }
        if per_time_le(b, a) && b.burst() <= a.burst() {
            return Some((i, j, WHY));
        }
        return None;
    }
    if a.period_us() == b.period_us() {
        let (never, because) = if a.limit() >= b.limit() {
            (i, j)
        } else {
            (j, i)
        };
        return Some((
            never,
            because,
            "both have the same period; keep the stricter one",
        ));
    }
    let ((si, short), (li, long)) = if a.period_us() < b.period_us() {
        ((i, a), (j, b))
    } else {
        ((j, b), (i, a))
    };
    if long.limit() <= short.limit() {
        return Some((
            si,
            li,
            "a shorter period must allow fewer units than a longer one (the longer rate always denies first)",
        ));
    }
    if !per_time_le(long, short) {
        return Some((
            li,
            si,
            "a longer period must allow no more units per unit of time than a shorter one (the shorter rate always denies first)",
        ));
    }
    None
}

/// The serialisable form of a [`Policy`] (the golden-vector and config format); converting it
/// into a `Policy` validates it.
///
/// ```
/// let spec: tollgate::PolicySpec = serde_json::from_str(
///     r#"{"algorithm":"gcra","rates":[{"limit":5,"period_us":1000000,"burst":10}]}"#).unwrap();
/// let policy = tollgate::Policy::try_from(spec).unwrap();
/// assert_eq!(policy.rates()[0].burst(), 10);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySpec {
    /// The algorithm (default GCRA).
    #[serde(default)]
    pub algorithm: Algorithm,
    /// The rates.
    pub rates: Vec<RateSpec>,
}

/// The serialisable form of one rate.
///
/// ```
/// let r = tollgate::RateSpec { limit: 5, period_us: 1_000_000, burst: None, initial_tokens: None };
/// assert_eq!(r.limit, 5);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateSpec {
    /// Units per period.
    pub limit: u64,
    /// The period in microseconds.
    pub period_us: u64,
    /// The burst (GCRA) or capacity (token bucket); default: the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Token bucket: the tokens a new key starts with; default: the capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_tokens: Option<u64>,
}

impl TryFrom<PolicySpec> for Policy {
    type Error = QuotaError;
    fn try_from(spec: PolicySpec) -> Result<Self, Self::Error> {
        let mut rates = Vec::with_capacity(spec.rates.len());
        for r in &spec.rates {
            let rate = Rate::new(r.limit, Duration::from_micros(r.period_us))?;
            rates.push(match r.burst {
                Some(b) => rate.with_burst(b)?,
                None => rate,
            });
        }
        let mut policy = Policy::new(spec.algorithm, rates)?;
        let initial: Vec<u64> = spec.rates.iter().filter_map(|r| r.initial_tokens).collect();
        if let Some(&first) = initial.first() {
            if initial.iter().any(|&t| t != first) {
                return Err(QuotaError::InvalidInitialTokens {
                    initial: first,
                    capacity: policy.max_cost(),
                });
            }
            policy = policy.with_initial_tokens(first)?;
        }
        Ok(policy)
    }
}

impl From<Policy> for PolicySpec {
    fn from(p: Policy) -> Self {
        PolicySpec {
            algorithm: p.algorithm,
            rates: p
                .rates
                .iter()
                .map(|r| RateSpec {
                    limit: r.limit(),
                    period_us: r.period_us(),
                    burst: r.has_explicit_burst().then(|| r.burst()),
                    initial_tokens: p.initial_tokens,
                })
                .collect(),
        }
    }
}
