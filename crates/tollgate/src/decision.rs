//! The outcome of a rate-limit check.

use crate::time::Micros;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A decision: whether the cost was admitted and what the key looks like now.
///
/// The fields map onto the IETF `RateLimit` / `RateLimit-Policy` fields and `Retry-After`:
/// `limit` is the quota (`q`), `remaining` is `r`, `reset_after` is `t`, and `retry_after` is
/// `Retry-After` (0 when allowed).
///
/// ```
/// use tollgate::{Limiter, Policy, Rate};
/// let limiter = Limiter::memory(Policy::gcra(Rate::per_second(2).unwrap()).unwrap());
/// let d = limiter.check("user-1").unwrap();
/// assert!(d.allowed);
/// assert_eq!((d.limit, d.remaining), (2, 1));
/// assert_eq!(d.retry_after, std::time::Duration::ZERO);
/// ```
///
/// Two decisions are equal when they decide the same; the time they were made
/// ([`decided_at`](Decision::decided_at)) is not compared.
#[must_use = "a Decision says whether the request may proceed"]
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Decision {
    /// The cost was admitted (and, for `check`, charged).
    pub allowed: bool,
    /// The binding rate's capacity (`burst` for GCRA / token bucket, `limit` otherwise).
    pub limit: u64,
    /// What is left of that capacity after this decision.
    pub remaining: u64,
    /// Zero when allowed; otherwise the shortest wait after which the same cost would be
    /// admitted if nothing else happened.
    pub retry_after: Duration,
    /// How long until the key is back to completely fresh.
    pub reset_after: Duration,
    /// `None` when allowed; else the index of the rate (in the policy) that denied.
    pub denied_by: Option<usize>,
    /// When the decision was received, in µs of the limiter's clock (0: unknown).
    at: Micros,
}

impl PartialEq for Decision {
    fn eq(&self, other: &Self) -> bool {
        self.compared() == other.compared()
    }
}

impl Eq for Decision {}

impl std::hash::Hash for Decision {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.compared().hash(state);
    }
}

impl Decision {
    /// What equality and hashing look at: everything but the time of the decision.
    #[allow(clippy::type_complexity)]
    fn compared(&self) -> (bool, u64, u64, Duration, Duration, Option<usize>) {
        (
            self.allowed,
            self.limit,
            self.remaining,
            self.retry_after,
            self.reset_after,
            self.denied_by,
        )
    }

    /// A decision from raw microsecond fields (used by stores that compute decisions remotely).
    ///
    /// ```
    /// let d = tollgate::Decision::from_parts(false, 5, 0, 200_000, 1_000_000, Some(0));
    /// assert_eq!(d.retry_after.as_millis(), 200);
    /// ```
    #[inline(always)]
    pub fn from_parts(
        allowed: bool,
        limit: u64,
        remaining: u64,
        retry_after_us: u64,
        reset_after_us: u64,
        denied_by: Option<usize>,
    ) -> Decision {
        Decision {
            allowed,
            limit,
            remaining,
            retry_after: Duration::from_micros(retry_after_us),
            reset_after: Duration::from_micros(reset_after_us),
            denied_by,
            at: 0,
        }
    }

    /// The same decision, received at `now` (µs since the UNIX epoch on the caller's clock).
    /// Every [`Limiter`](crate::Limiter) and [`DirectLimiter`](crate::DirectLimiter)
    /// decision carries the time it was received; a surface that builds decisions itself
    /// sets it here.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// let d = tollgate::Decision::from_parts(true, 5, 4, 0, 200_000, None).with_decided_at(1_000_000);
    /// assert_eq!(d.decided_at(), Some(UNIX_EPOCH + Duration::from_secs(1)));
    /// ```
    #[inline(always)]
    pub fn with_decided_at(mut self, now: Micros) -> Decision {
        self.at = now;
        self
    }

    /// Sets [`decided_at`](Self::decided_at) in place (the limiter's fast path: no copy).
    #[inline(always)]
    pub(crate) fn set_decided_at(&mut self, now: Micros) {
        self.at = now;
    }

    /// When the decision was received, on the limiter's clock (the system clock unless a
    /// test clock was set); `None` for a decision built by hand without
    /// [`with_decided_at`](Decision::with_decided_at).
    ///
    /// For stores that decide with their own clock (Redis `TIME`, the database's `now()`),
    /// this is the *caller's* clock reading right after the store answered, never the
    /// store's: durations (`retry_after`, `reset_after`) are the same on every clock, so
    /// adding them to the caller's time gives instants on the caller's clock that host
    /// clock skew does not shift. They are late by at most the reply's trip from the store
    /// (conservative: waiting until them never retries too early).
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate, time::ManualClock};
    /// let clock = ManualClock::new(1_700_000_000_000_000);
    /// let l = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).clock(clock).build();
    /// let d = l.check("k").unwrap();
    /// assert_eq!(d.decided_at(), Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)));
    /// ```
    pub fn decided_at(&self) -> Option<SystemTime> {
        (self.at != 0).then(|| UNIX_EPOCH + Duration::from_micros(self.at))
    }

    /// The instant the key is back to completely fresh: [`decided_at`](Decision::decided_at)
    /// plus `reset_after` (what a `X-RateLimit-Reset` timestamp or a "resets at 14:03"
    /// message wants). A decision built by hand without a decision time counts from now.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tollgate::{Limiter, Policy, Rate, time::ManualClock};
    /// let clock = ManualClock::new(1_700_000_000_000_000);
    /// let l = Limiter::builder(Policy::gcra(Rate::per_minute(6).unwrap()).unwrap()).clock(clock).build();
    /// let d = l.check("k").unwrap();
    /// assert_eq!(d.reset_after, Duration::from_secs(10));
    /// assert_eq!(d.reset_at(), UNIX_EPOCH + Duration::from_secs(1_700_000_010));
    /// ```
    pub fn reset_at(&self) -> SystemTime {
        self.decided_at().unwrap_or_else(SystemTime::now) + self.reset_after
    }

    /// The instant the same cost would be admitted if nothing else happened:
    /// [`decided_at`](Decision::decided_at) plus `retry_after` (the decision time itself when
    /// allowed). A decision built by hand without a decision time counts from now.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tollgate::{Limiter, Policy, Rate, time::ManualClock};
    /// let clock = ManualClock::new(1_700_000_000_000_000);
    /// let l = Limiter::builder(Policy::gcra(Rate::per_minute(6).unwrap()).unwrap()).clock(clock).build();
    /// let _ = l.check_n("k", 6).unwrap();
    /// let d = l.check("k").unwrap();
    /// assert!(!d.allowed);
    /// assert_eq!(d.retry_at(), UNIX_EPOCH + Duration::from_secs(1_700_000_010));
    /// ```
    pub fn retry_at(&self) -> SystemTime {
        self.decided_at().unwrap_or_else(SystemTime::now) + self.retry_after
    }

    /// A decision admitted without consulting a store (fail-open), with the policy's limit.
    ///
    /// ```
    /// let d = tollgate::Decision::fail_open(10);
    /// assert!(d.allowed && d.remaining == 10);
    /// ```
    pub fn fail_open(limit: u64) -> Decision {
        Decision::from_parts(true, limit, limit, 0, 0, None)
    }

    /// `retry_after` rounded up to whole seconds, as the HTTP `Retry-After` header wants.
    ///
    /// ```
    /// let d = tollgate::Decision::from_parts(false, 5, 0, 1_200_000, 2_000_000, Some(0));
    /// assert_eq!(d.retry_after_secs(), 2);
    /// ```
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after)
    }

    /// `reset_after` rounded up to whole seconds (the IETF `t` parameter).
    ///
    /// ```
    /// let d = tollgate::Decision::from_parts(true, 5, 4, 0, 200_000, None);
    /// assert_eq!(d.reset_after_secs(), 1);
    /// ```
    pub fn reset_after_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
