//! Rates: `limit` units per `period`, with an optional explicit burst.
//!
//! Names say what they mean: `Rate::per_second(5)` is five per second, never one every five
//! seconds. A rate string such as `"10/s"`, `"100/minute; 1000/hour"` or `"500 per 7 days"`
//! parses with [`Rate::parse`] / [`parse_rates`].

use crate::error::QuotaError;
use crate::time::{micros, Micros};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The largest horizon (time until a key is back to fresh) any policy may have: 2^52 µs
/// (about 142 years), so that `now + horizon` stays exact in Lua's 53-bit doubles.
pub const MAX_HORIZON_US: u64 = 1 << 52;

/// `limit` units per `period`, with a `burst` (GCRA / token bucket capacity) that defaults to
/// `limit`.
///
/// ```
/// use tollgate::Rate;
/// use std::time::Duration;
/// let r = Rate::per_minute(100).unwrap();
/// assert_eq!(r.limit(), 100);
/// assert_eq!(r.period(), Duration::from_secs(60));
/// assert_eq!(r.burst(), 100);
/// let r = Rate::per_second(10).unwrap().with_burst(50).unwrap();
/// assert_eq!(r.burst(), 50);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    limit: u64,
    period_us: Micros,
    burst: Option<u64>,
}

impl Rate {
    /// `limit` units per `period`.
    ///
    /// Rejects a zero limit, a period under 1 µs, more than one unit per microsecond, and
    /// periods or horizons over [`MAX_HORIZON_US`].
    ///
    /// ```
    /// use tollgate::{Rate, QuotaError};
    /// use std::time::Duration;
    /// assert!(Rate::new(500, Duration::from_secs(7 * 86_400)).is_ok());
    /// assert_eq!(Rate::new(1, Duration::ZERO), Err(QuotaError::ZeroPeriod(Duration::ZERO)));
    /// ```
    pub fn new(limit: u64, period: Duration) -> Result<Rate, QuotaError> {
        if limit == 0 {
            return Err(QuotaError::ZeroLimit);
        }
        let period_us = micros(period);
        if period_us == 0 {
            return Err(QuotaError::ZeroPeriod(period));
        }
        let rate = Rate {
            limit,
            period_us,
            burst: None,
        };
        rate.validate()?;
        Ok(rate)
    }

    /// `n` per second.
    ///
    /// ```
    /// assert_eq!(tollgate::Rate::per_second(5).unwrap().to_string(), "5/1s");
    /// ```
    pub fn per_second(n: u64) -> Result<Rate, QuotaError> {
        Rate::new(n, Duration::from_secs(1))
    }

    /// `n` per minute.
    ///
    /// ```
    /// assert_eq!(tollgate::Rate::per_minute(5).unwrap().period().as_secs(), 60);
    /// ```
    pub fn per_minute(n: u64) -> Result<Rate, QuotaError> {
        Rate::new(n, Duration::from_secs(60))
    }

    /// `n` per hour.
    ///
    /// ```
    /// assert_eq!(tollgate::Rate::per_hour(5).unwrap().period().as_secs(), 3_600);
    /// ```
    pub fn per_hour(n: u64) -> Result<Rate, QuotaError> {
        Rate::new(n, Duration::from_secs(3_600))
    }

    /// `n` per day.
    ///
    /// ```
    /// assert_eq!(tollgate::Rate::per_day(5).unwrap().period().as_secs(), 86_400);
    /// ```
    pub fn per_day(n: u64) -> Result<Rate, QuotaError> {
        Rate::new(n, Duration::from_secs(86_400))
    }

    /// Sets the burst: how many units may be taken at once from a fresh key (GCRA), or the
    /// bucket capacity (token bucket). Window and log algorithms reject a burst different from
    /// the limit.
    ///
    /// ```
    /// use tollgate::{Rate, QuotaError};
    /// assert_eq!(Rate::per_second(1).unwrap().with_burst(0), Err(QuotaError::ZeroBurst));
    /// assert_eq!(Rate::per_second(1).unwrap().with_burst(3).unwrap().burst(), 3);
    /// ```
    pub fn with_burst(self, burst: u64) -> Result<Rate, QuotaError> {
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        let rate = Rate {
            burst: Some(burst),
            ..self
        };
        rate.validate()?;
        Ok(rate)
    }

    /// Units per period.
    ///
    /// ```
    /// assert_eq!(tollgate::Rate::per_hour(9).unwrap().limit(), 9);
    /// ```
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The period.
    ///
    /// ```
    /// assert_eq!(tollgate::Rate::per_second(9).unwrap().period().as_millis(), 1000);
    /// ```
    pub fn period(&self) -> Duration {
        Duration::from_micros(self.period_us)
    }

    /// The period in microseconds.
    ///
    /// ```
    /// assert_eq!(tollgate::Rate::per_second(9).unwrap().period_us(), 1_000_000);
    /// ```
    pub fn period_us(&self) -> Micros {
        self.period_us
    }

    /// The burst (defaults to the limit).
    ///
    /// ```
    /// assert_eq!(tollgate::Rate::per_second(9).unwrap().burst(), 9);
    /// ```
    pub fn burst(&self) -> u64 {
        self.burst.unwrap_or(self.limit)
    }

    /// True when a burst different from the default was set.
    ///
    /// ```
    /// let r = tollgate::Rate::per_second(9).unwrap();
    /// assert!(!r.has_explicit_burst());
    /// assert!(r.with_burst(2).unwrap().has_explicit_burst());
    /// ```
    pub fn has_explicit_burst(&self) -> bool {
        self.burst.is_some_and(|b| b != self.limit)
    }

    /// GCRA emission interval: `ceil(period / limit)` µs.
    pub(crate) fn emission_interval_us(&self) -> Micros {
        self.period_us.div_ceil(self.limit)
    }

    /// Checks what every algorithm needs of a rate: at most one unit per µs, and the period,
    /// the GCRA tolerance and the token-bucket refill horizon within [`MAX_HORIZON_US`].
    /// `limit × period` is not bounded: the sliding-window counter computes that product
    /// exactly in every store (so `10^9 per 365 days` is fine). Algorithm-specific horizons
    /// are checked by [`crate::Policy::new`].
    fn validate(&self) -> Result<(), QuotaError> {
        let check = |what, value: u128| {
            if value > MAX_HORIZON_US as u128 {
                Err(QuotaError::TooLarge {
                    rate: self.to_string(),
                    what,
                    value,
                    max: MAX_HORIZON_US as u128,
                })
            } else {
                Ok(())
            }
        };
        check("the period in microseconds", self.period_us as u128)?;
        if self.limit > self.period_us {
            return Err(QuotaError::TooFine {
                limit: self.limit,
                period: self.period(),
            });
        }
        if self.burst.is_some() {
            let burst = self.burst() as u128;
            check(
                "the GCRA tolerance (emission interval x burst, µs)",
                self.emission_interval_us() as u128 * burst,
            )?;
            check(
                "the token-bucket refill horizon (ceil(burst/limit) x period, µs)",
                burst.div_ceil(self.limit as u128) * self.period_us as u128,
            )?;
        }
        Ok(())
    }

    /// Parses one rate: `"10/s"`, `"10 per second"`, `"100/5m"`, `"500 per 7 days"`,
    /// optionally followed by `" burst 20"`.
    ///
    /// Units: `us`/`µs`, `ms`, `s`/`sec`/`second(s)`, `m`/`min`/`minute(s)`, `h`/`hr`/`hour(s)`,
    /// `d`/`day(s)`, `w`/`week(s)`.
    ///
    /// ```
    /// use tollgate::Rate;
    /// use std::time::Duration;
    /// let r = Rate::parse("500 per 7 days").unwrap();
    /// assert_eq!((r.limit(), r.period()), (500, Duration::from_secs(7 * 86_400)));
    /// let r = Rate::parse("10/s burst 20").unwrap();
    /// assert_eq!((r.limit(), r.burst()), (10, 20));
    /// assert!(Rate::parse("ten/s").is_err());
    /// ```
    pub fn parse(input: &str) -> Result<Rate, QuotaError> {
        let err = |reason: &str| QuotaError::Parse {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let text = input.trim().to_ascii_lowercase();
        let (rate_text, burst) = match text.split_once("burst") {
            Some((r, b)) => {
                let b = b.trim().trim_start_matches(['=', ':']).trim();
                let burst: u64 = b
                    .parse()
                    .map_err(|_| err("the burst must be a whole number"))?;
                (r.trim().to_string(), Some(burst))
            }
            None => (text.clone(), None),
        };
        let (count, per) = if let Some((c, p)) = rate_text.split_once('/') {
            (c, p)
        } else if let Some((c, p)) = rate_text.split_once(" per ") {
            (c, p)
        } else {
            return Err(err("expected \"<n>/<period>\" or \"<n> per <period>\""));
        };
        let limit: u64 = count
            .trim()
            .replace('_', "")
            .parse()
            .map_err(|_| err("the limit must be a whole number"))?;
        let per = per.trim();
        let digits_end = per
            .find(|c: char| !c.is_ascii_digit() && c != '_')
            .unwrap_or(per.len());
        let multiplier: u64 = if digits_end == 0 {
            1
        } else {
            per[..digits_end]
                .replace('_', "")
                .parse()
                .map_err(|_| err("the period multiplier must be a whole number"))?
        };
        let unit_us: u64 = match per[digits_end..].trim() {
            "us" | "µs" | "micro" | "micros" | "microsecond" | "microseconds" => 1,
            "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1_000,
            "s" | "sec" | "secs" | "second" | "seconds" => 1_000_000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000_000,
            "d" | "day" | "days" => 86_400_000_000,
            "w" | "week" | "weeks" => 604_800_000_000,
            "" => return Err(err("missing the period unit (s, m, h, d…)")),
            _ => return Err(err("unknown period unit")),
        };
        if multiplier == 0 {
            return Err(QuotaError::ZeroPeriod(Duration::ZERO));
        }
        let period_us = multiplier
            .checked_mul(unit_us)
            .ok_or_else(|| QuotaError::TooLarge {
                rate: input.trim().to_string(),
                what: "the period in microseconds",
                value: multiplier as u128 * unit_us as u128,
                max: MAX_HORIZON_US as u128,
            })?;
        let rate = Rate::new(limit, Duration::from_micros(period_us))?;
        match burst {
            Some(b) => rate.with_burst(b),
            None => Ok(rate),
        }
    }
}

impl FromStr for Rate {
    type Err = QuotaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Rate::parse(s)
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rate({self})")
    }
}

impl fmt::Display for Rate {
    /// `limit/period` with the period in the largest unit that divides it; then ` burst b`
    /// when a burst was set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 6] = [
            (604_800_000_000, "w"),
            (86_400_000_000, "d"),
            (3_600_000_000, "h"),
            (60_000_000, "m"),
            (1_000_000, "s"),
            (1_000, "ms"),
        ];
        let (n, unit) = UNITS
            .iter()
            .find(|(u, _)| self.period_us % u == 0)
            .map(|(u, name)| (self.period_us / u, *name))
            .unwrap_or((self.period_us, "us"));
        write!(f, "{}/{}{}", self.limit, n, unit)?;
        if self.has_explicit_burst() {
            write!(f, " burst {}", self.burst())?;
        }
        Ok(())
    }
}

/// Parses several rates separated by `;` or `,`: `"100/minute;1000/hour"`.
///
/// ```
/// let rates = tollgate::parse_rates("5/s; 1000/hour").unwrap();
/// assert_eq!(rates.len(), 2);
/// assert_eq!(rates[1].limit(), 1000);
/// assert!(tollgate::parse_rates("").is_err());
/// ```
pub fn parse_rates(input: &str) -> Result<Vec<Rate>, QuotaError> {
    let rates = input
        .split([';', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Rate::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if rates.is_empty() {
        return Err(QuotaError::NoRates);
    }
    Ok(rates)
}
