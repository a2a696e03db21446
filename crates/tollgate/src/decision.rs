//! The outcome of a rate-limit check.

use std::time::Duration;

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
#[must_use = "a Decision says whether the request may proceed"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
}

impl Decision {
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
        }
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
