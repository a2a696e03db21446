//! Errors: invalid quotas (at construction) and failed calls (at decision time).
//!
//! A store failure is never reported as a denial: a denial is an `Ok(Decision)` with
//! `allowed == false`; a store failure is `Err(Error::Store(..))`.

use std::time::Duration;

/// Why a quota or policy was rejected at construction.
///
/// ```
/// use tollgate::{Rate, QuotaError};
/// assert!(matches!(Rate::per_second(0), Err(QuotaError::ZeroLimit)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// The number of units per period is zero.
    #[error("the limit must be at least 1 (got 0)")]
    ZeroLimit,
    /// The period is shorter than one microsecond.
    #[error("the period must be at least 1 microsecond (got {0:?})")]
    ZeroPeriod(Duration),
    /// The burst is zero.
    #[error("the burst must be at least 1 (got 0)")]
    ZeroBurst,
    /// More than one unit per microsecond.
    #[error(
        "{limit} per {period:?} is finer than 1 unit per microsecond, the resolution of tollgate"
    )]
    TooFine {
        /// Units per period.
        limit: u64,
        /// The period.
        period: Duration,
    },
    /// A quantity beyond 2^52 microseconds (~142 years): a period, a GCRA tolerance, a
    /// token-bucket refill horizon or an algorithm's horizon (time until a key is back to
    /// fresh), which the Lua/SQL stores could not keep exact.
    #[error("{rate}: {what} is too large: {value} exceeds the maximum {max}")]
    TooLarge {
        /// The rate (or the rate text) that is wrong, prefixed with the algorithm when known.
        rate: String,
        /// Which quantity overflowed.
        what: &'static str,
        /// The value asked for (saturated).
        value: u128,
        /// The maximum allowed.
        max: u128,
    },
    /// A burst was given to an algorithm where it has no meaning.
    #[error("the {algorithm} algorithm has no separate burst: burst ({burst}) must equal the limit ({limit})")]
    BurstNotSupported {
        /// The algorithm's name.
        algorithm: &'static str,
        /// The burst given.
        burst: u64,
        /// The limit.
        limit: u64,
    },
    /// `initial_tokens` above capacity, or used outside the token bucket.
    #[error("initial_tokens ({initial}) must be at most the capacity ({capacity}) and is only valid for the token bucket")]
    InvalidInitialTokens {
        /// The initial tokens given.
        initial: u64,
        /// The capacity.
        capacity: u64,
    },
    /// A policy with no rate.
    #[error("a policy needs at least one rate")]
    NoRates,
    /// A rate of a multi-rate policy that could never be the one that denies (another rate
    /// of the policy always denies first), or two rates with the same period.
    #[error("{algorithm}: rate {never} ({never_rate}) could never apply next to rate {because} ({because_rate}): {reason}")]
    InconsistentRates {
        /// The algorithm's name.
        algorithm: &'static str,
        /// Index of the rate that could never apply.
        never: usize,
        /// That rate, as text.
        never_rate: String,
        /// Index of the rate that makes it so.
        because: usize,
        /// That rate, as text.
        because_rate: String,
        /// Why.
        reason: &'static str,
    },
    /// A policy with more rates than supported.
    #[error("a policy holds at most {max} rates (got {got})")]
    TooManyRates {
        /// Rates given.
        got: usize,
        /// The maximum.
        max: usize,
    },
    /// A rate string that does not parse.
    #[error("cannot parse rate {input:?}: {reason}")]
    Parse {
        /// The input text.
        input: String,
        /// What is wrong.
        reason: String,
    },
}

/// A failed call. Denials are not errors: they are `Ok(Decision)` with `allowed == false`.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate, Error};
/// let limiter = Limiter::memory(Policy::gcra(Rate::per_second(5).unwrap()).unwrap());
/// assert!(matches!(limiter.check_n("k", 6), Err(Error::CostExceedsCapacity { cost: 6, capacity: 5 })));
/// assert!(matches!(limiter.check_n("k", 0), Err(Error::InvalidCost)));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cost is larger than the policy can ever admit in one call; waiting would never help.
    #[error("a cost of {cost} can never be admitted: the capacity is {capacity}")]
    CostExceedsCapacity {
        /// The cost asked for.
        cost: u64,
        /// The largest cost the policy admits at once.
        capacity: u64,
    },
    /// A cost (or refund amount) of zero.
    #[error("the cost must be at least 1")]
    InvalidCost,
    /// The key is longer than the configured maximum.
    #[error("the key is {len} bytes long; the maximum is {max}")]
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A key that cannot be stored as given (e.g. a Redis Cluster hash tag with braces), or
    /// keys that cannot be checked together (e.g. in different Redis Cluster slots).
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// What is wrong with it.
        reason: String,
    },
    /// `acquire` gave up: the cost would not be admitted within the maximum wait.
    /// `retry_after` is how long it would still have had to wait at the time it gave up.
    #[error("not admitted within the maximum wait (would need {retry_after:?} more)")]
    WaitTimeout {
        /// The wait that would still have been needed.
        retry_after: Duration,
    },
    /// A configuration that cannot work, refused when it is built or bound (e.g. local
    /// leases over an algorithm whose refunds could over-admit).
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong and what to use instead.
        reason: String,
    },
    /// The store failed (unreachable, timed out, bad reply). Never a denial.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
}

/// A failure of the store behind a limiter (Redis down, SQL error, timeout…).
///
/// [`kind`](Self::kind) says what went wrong, so a refused connection is never reported as a
/// timeout; `message` has the store's own words.
///
/// ```
/// use tollgate::{StoreError, StoreErrorKind};
/// let e = StoreError::new("redis", "connection refused");
/// assert_eq!(e.to_string(), "redis: connection refused");
/// let e = StoreError::with_kind("redis", StoreErrorKind::ConnectionRefused, "cannot connect");
/// assert_eq!(e.kind, StoreErrorKind::ConnectionRefused);
/// assert_eq!(e.to_string(), "redis: connection refused: cannot connect");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{store}: {}{message}", kind.prefix())]
#[non_exhaustive]
pub struct StoreError {
    /// Which store failed ("redis", "postgres", …).
    pub store: &'static str,
    /// What went wrong.
    pub message: String,
    /// True when the call timed out (`kind == StoreErrorKind::Timeout`).
    pub timeout: bool,
    /// The class of the failure.
    pub kind: StoreErrorKind,
}

/// The class of a [`StoreError`]: what a caller (or an operator reading a log line, a metric
/// label or a readiness answer) needs to know about the cause.
///
/// ```
/// use tollgate::StoreErrorKind;
/// assert_eq!(StoreErrorKind::ConnectionRefused.as_str(), "connection_refused");
/// assert_eq!(StoreErrorKind::CircuitOpen.as_str(), "circuit_open");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// Nothing listens at the store's address (the connection was refused).
    ConnectionRefused,
    /// The connection could not be opened or was lost (reset, broken pipe, DNS, TLS…).
    Connection,
    /// The call (or connecting) took longer than the store's timeout.
    Timeout,
    /// The store refused the credentials (`NOAUTH`, `WRONGPASS`, a failed SQL login).
    Auth,
    /// The store does not have the script or function the call needs (Redis `NOSCRIPT`
    /// that reloading did not fix, a missing SQL function or table).
    ScriptMissing,
    /// The store answered something the client does not understand (a malformed reply).
    Protocol,
    /// Not sent at all: the failure policy's circuit breaker is open after consecutive
    /// failures (the message names the last cause).
    CircuitOpen,
    /// Anything else (a script error, a database error, a full disk…).
    Other,
}

impl StoreErrorKind {
    /// A stable label (metrics, logs, JSON).
    ///
    /// ```
    /// assert_eq!(tollgate::StoreErrorKind::Timeout.as_str(), "timeout");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::ConnectionRefused => "connection_refused",
            StoreErrorKind::Connection => "connection",
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::Auth => "auth",
            StoreErrorKind::ScriptMissing => "script_missing",
            StoreErrorKind::Protocol => "protocol",
            StoreErrorKind::CircuitOpen => "circuit_open",
            StoreErrorKind::Other => "other",
        }
    }

    /// The words put before the message in `Display` (empty for `Other` and `Timeout`,
    /// whose messages say it themselves).
    fn prefix(self) -> &'static str {
        match self {
            StoreErrorKind::ConnectionRefused => "connection refused: ",
            StoreErrorKind::Connection => "connection failed: ",
            StoreErrorKind::Auth => "authentication failed: ",
            StoreErrorKind::ScriptMissing => "script missing: ",
            StoreErrorKind::Protocol => "protocol error: ",
            StoreErrorKind::CircuitOpen => "circuit open: ",
            StoreErrorKind::Timeout | StoreErrorKind::Other => "",
        }
    }
}

impl std::fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StoreError {
    /// A store error with a message (kind [`StoreErrorKind::Other`]).
    ///
    /// ```
    /// let e = tollgate::StoreError::new("sqlite", "database is locked");
    /// assert!(!e.timeout);
    /// assert_eq!(e.kind, tollgate::StoreErrorKind::Other);
    /// ```
    pub fn new(store: &'static str, message: impl Into<String>) -> Self {
        Self::with_kind(store, StoreErrorKind::Other, message)
    }

    /// A store error of a given kind.
    ///
    /// ```
    /// use tollgate::{StoreError, StoreErrorKind};
    /// let e = StoreError::with_kind("postgres", StoreErrorKind::Auth, "password authentication failed");
    /// assert_eq!(e.kind, StoreErrorKind::Auth);
    /// assert!(!e.timeout);
    /// ```
    pub fn with_kind(
        store: &'static str,
        kind: StoreErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            store,
            message: message.into(),
            timeout: kind == StoreErrorKind::Timeout,
            kind,
        }
    }

    /// A store call that timed out.
    ///
    /// ```
    /// let e = tollgate::StoreError::timeout("redis", std::time::Duration::from_millis(50));
    /// assert!(e.timeout);
    /// assert_eq!(e.kind, tollgate::StoreErrorKind::Timeout);
    /// ```
    pub fn timeout(store: &'static str, after: Duration) -> Self {
        Self::with_kind(
            store,
            StoreErrorKind::Timeout,
            format!("timed out after {after:?}"),
        )
    }
}
