//! Response fields: `Retry-After`, the IETF `RateLimit` / `RateLimit-Policy` fields
//! (draft-ietf-httpapi-ratelimit-headers-10), the legacy `X-RateLimit-*` fields, and RFC 9457
//! `application/problem+json` bodies.
//!
//! The IETF fields are Structured Field lists with one item per policy that applied to the
//! request:
//!
//! ```text
//! RateLimit-Policy: "per-user";q=100;w=60, "global";q=1000;w=1
//! RateLimit: "per-user";r=42;t=17, "global";r=998;t=1
//! ```
//!
//! - `q` is the policy's capacity ([`Decision::limit`]: the burst for GCRA and the token
//!   bucket, the limit for the window algorithms and the sliding log);
//! - `w` is the time in whole seconds (rounded up only when it is not whole, at least 1) in
//!   which the rate replenishes that capacity ([`quota_window`]): the period for a policy of
//!   `n` per period (window algorithms, the sliding log, GCRA without a larger burst),
//!   `burst × period / limit` for GCRA with a burst, and `ceil(capacity / refill_amount)`
//!   refill intervals for the token bucket;
//! - a policy of several rates advertises one `RateLimit-Policy` item per rate, named
//!   `<name>-<i>` ([`policy_item_name`]), and its `RateLimit` item carries the name of the
//!   rate that binds ([`binding_rate`]), so the two fields always name the same item;
//! - `r` is [`Decision::remaining`] and `t` is [`Decision::reset_after`] rounded up to whole
//!   seconds.
//!
//! ```
//! use tollgate_tower::headers::{ratelimit_field, ratelimit_policy_field, PolicyReport};
//! let d = tollgate::Decision::from_parts(true, 100, 42, 0, 16_200_000, None);
//! let report = PolicyReport { name: "api", decision: d, window_secs: 60 };
//! assert_eq!(ratelimit_policy_field(&[report]).unwrap(), "\"api\";q=100;w=60");
//! assert_eq!(ratelimit_field(&[report]).unwrap(), "\"api\";r=42;t=17");
//! ```

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use std::borrow::Cow;
use tollgate::{Algorithm, Decision, Policy, Rate};

mod problem;

pub use problem::Problem;

/// The `RateLimit` field name.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// The `RateLimit-Policy` field name.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// Legacy `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// Legacy `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// Legacy `X-RateLimit-Reset` (seconds until the key is back to full, like the IETF `t`).
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The media type of RFC 9457 problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Which rate-limit fields the layer writes.
///
/// Default: IETF fields on every response (allowed and denied), `Retry-After` on denials,
/// no legacy fields.
///
/// ```
/// use tollgate_tower::headers::HeaderOptions;
/// let opts = HeaderOptions::default().legacy(true).on_allowed(false);
/// assert!(opts.ietf_enabled() && opts.legacy_enabled() && !opts.on_allowed_enabled());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderOptions {
    ietf: bool,
    legacy: bool,
    on_allowed: bool,
}

impl Default for HeaderOptions {
    fn default() -> Self {
        Self {
            ietf: true,
            legacy: false,
            on_allowed: true,
        }
    }
}

impl HeaderOptions {
    /// No rate-limit fields at all (denials still carry `Retry-After`).
    ///
    /// ```
    /// let o = tollgate_tower::headers::HeaderOptions::none();
    /// assert!(!o.ietf_enabled() && !o.legacy_enabled());
    /// ```
    pub fn none() -> Self {
        Self {
            ietf: false,
            legacy: false,
            on_allowed: false,
        }
    }

    /// Writes the IETF `RateLimit` / `RateLimit-Policy` fields (default on).
    ///
    /// ```
    /// let o = tollgate_tower::headers::HeaderOptions::default().ietf(false);
    /// assert!(!o.ietf_enabled());
    /// ```
    pub fn ietf(mut self, on: bool) -> Self {
        self.ietf = on;
        self
    }

    /// Writes the legacy `X-RateLimit-Limit/Remaining/Reset` fields (default off).
    ///
    /// ```
    /// let o = tollgate_tower::headers::HeaderOptions::default().legacy(true);
    /// assert!(o.legacy_enabled());
    /// ```
    pub fn legacy(mut self, on: bool) -> Self {
        self.legacy = on;
        self
    }

    /// Writes the fields on allowed responses too, not only on 429s (default on).
    ///
    /// ```
    /// let o = tollgate_tower::headers::HeaderOptions::default().on_allowed(false);
    /// assert!(!o.on_allowed_enabled());
    /// ```
    pub fn on_allowed(mut self, on: bool) -> Self {
        self.on_allowed = on;
        self
    }

    /// Whether the IETF fields are written.
    ///
    /// ```
    /// assert!(tollgate_tower::headers::HeaderOptions::default().ietf_enabled());
    /// ```
    pub fn ietf_enabled(&self) -> bool {
        self.ietf
    }

    /// Whether the legacy fields are written.
    ///
    /// ```
    /// assert!(!tollgate_tower::headers::HeaderOptions::default().legacy_enabled());
    /// ```
    pub fn legacy_enabled(&self) -> bool {
        self.legacy
    }

    /// Whether allowed responses carry the fields.
    ///
    /// ```
    /// assert!(tollgate_tower::headers::HeaderOptions::default().on_allowed_enabled());
    /// ```
    pub fn on_allowed_enabled(&self) -> bool {
        self.on_allowed
    }
}

/// One policy's decision for one request, as reported in the fields.
///
/// ```
/// use tollgate_tower::headers::PolicyReport;
/// let r = PolicyReport { name: "p", decision: tollgate::Decision::fail_open(5), window_secs: 1 };
/// assert_eq!(r.decision.limit, 5);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct PolicyReport<'a> {
    /// The policy's name (already validated as a Structured Field string).
    pub name: &'a str,
    /// Its decision.
    pub decision: Decision,
    /// The `w` parameter: seconds in which the capacity replenishes.
    pub window_secs: u64,
}

/// The `w` parameter for a GCRA (or window) rate: `burst × period / limit` in whole seconds,
/// computed exactly and rounded up only when not whole, at least 1. For a rate of `n` per
/// period without a larger burst this is the period. [`quota_window`] gives the token
/// bucket's window too.
///
/// ```
/// use tollgate::Rate;
/// use tollgate_tower::headers::window_secs;
/// assert_eq!(window_secs(&Rate::per_minute(100).unwrap()), 60);
/// assert_eq!(window_secs(&Rate::per_second(3).unwrap()), 1);
/// assert_eq!(window_secs(&Rate::per_minute(100).unwrap().with_burst(10).unwrap()), 6);
/// assert_eq!(window_secs(&Rate::per_second(1000).unwrap()), 1);
/// ```
pub fn window_secs(rate: &Rate) -> u64 {
    let us = u128::from(rate.period_us()) * u128::from(rate.burst()) / u128::from(rate.limit());
    // `us` is floored, so `us × limit` short of `period × burst` means it was not whole µs.
    let exact =
        us * u128::from(rate.limit()) == u128::from(rate.period_us()) * u128::from(rate.burst());
    secs_up(us + u128::from(!exact))
}

/// Whole seconds, rounded up, at least 1.
fn secs_up(us: u128) -> u64 {
    u64::try_from(us.div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The quota `q` and window `w` (whole seconds) that `RateLimit-Policy` advertises for one
/// rate of a policy of `algorithm`: `q` is the most a fresh key admits at once
/// ([`Decision::limit`]), `w` the time a fully used key takes to get `q` back.
///
/// - GCRA: `q = burst`, `w = burst × period / limit` (the period itself when `burst = limit`);
/// - token bucket (interval refill): `q = capacity`, `w = ceil(capacity / refill_amount) ×
///   refill_interval`;
/// - fixed window, sliding window, sliding log: `q = limit`, `w = period`.
///
/// `w` is rounded up to whole seconds only when it is not whole, and is at least 1.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Algorithm, Policy, Rate};
/// use tollgate_tower::headers::quota_window;
/// assert_eq!(quota_window(Algorithm::Gcra, &Rate::per_second(3).unwrap()), (3, 1));
/// assert_eq!(quota_window(Algorithm::Gcra, &Rate::per_second(10).unwrap().with_burst(20).unwrap()), (20, 2));
/// assert_eq!(quota_window(Algorithm::SlidingLog, &Rate::per_hour(500).unwrap()), (500, 3600));
/// assert_eq!(quota_window(Algorithm::FixedWindow, &Rate::new(7, Duration::from_millis(1500)).unwrap()), (7, 2));
/// // 10 tokens, 4 added every 1.5 s: empty to full takes 3 intervals = 4.5 s
/// let bucket = Policy::token_bucket(10, 4, Duration::from_millis(1500)).unwrap();
/// assert_eq!(quota_window(Algorithm::TokenBucket, &bucket.rates()[0]), (10, 5));
/// ```
pub fn quota_window(algorithm: Algorithm, rate: &Rate) -> (u64, u64) {
    match algorithm {
        Algorithm::Gcra => (rate.burst(), window_secs(rate)),
        Algorithm::TokenBucket => {
            let intervals = rate.burst().div_ceil(rate.limit());
            let us = u128::from(intervals) * u128::from(rate.period_us());
            (rate.burst(), secs_up(us))
        }
        _ => (rate.limit(), secs_up(u128::from(rate.period_us()))),
    }
}

/// [`quota_window`] of every rate of `policy`, in the policy's order.
///
/// ```
/// use tollgate::{Algorithm, Policy};
/// use tollgate_tower::headers::quota_windows;
/// let p = Policy::parse(Algorithm::SlidingLog, "5/s; 1000/hour").unwrap();
/// assert_eq!(quota_windows(&p), vec![(5, 1), (1000, 3600)]);
/// ```
pub fn quota_windows(policy: &Policy) -> Vec<(u64, u64)> {
    policy
        .rates()
        .iter()
        .map(|r| quota_window(policy.algorithm(), r))
        .collect()
}

/// The index of the rate of `policy` that `decision` describes: the rate that denied, else
/// the rate whose capacity is the decision's `limit` (the one with the fewest units left;
/// two rates of a valid policy never have the same capacity), else 0.
///
/// ```
/// use tollgate::{Algorithm, Decision, Policy};
/// use tollgate_tower::headers::binding_rate;
/// let p = Policy::parse(Algorithm::SlidingLog, "5/s; 1000/hour").unwrap();
/// assert_eq!(binding_rate(&p, &Decision::from_parts(true, 5, 4, 0, 1_000_000, None)), 0);
/// assert_eq!(binding_rate(&p, &Decision::from_parts(true, 1000, 3, 0, 9_000_000, None)), 1);
/// assert_eq!(binding_rate(&p, &Decision::from_parts(false, 1000, 0, 5, 9, Some(1))), 1);
/// ```
pub fn binding_rate(policy: &Policy, decision: &Decision) -> usize {
    let rates = policy.rates();
    if let Some(i) = decision.denied_by.filter(|&i| i < rates.len()) {
        return i;
    }
    rates
        .iter()
        .position(|r| quota_window(policy.algorithm(), r).0 == decision.limit)
        .unwrap_or(0)
}

/// The item name of rate `index` of a policy named `name` with `rates` rates: `name` itself
/// for a single rate, else `<name>-<index>`. `RateLimit-Policy` lists every rate under these
/// names and `RateLimit` uses the binding rate's, so they match (draft-10 §4/§5).
///
/// ```
/// use tollgate_tower::headers::policy_item_name;
/// assert_eq!(policy_item_name("api", 1, 0), "api");
/// assert_eq!(policy_item_name("multi", 2, 1), "multi-1");
/// ```
pub fn policy_item_name(name: &str, rates: usize, index: usize) -> Cow<'_, str> {
    if rates > 1 {
        Cow::Owned(format!("{name}-{index}"))
    } else {
        Cow::Borrowed(name)
    }
}

/// The `RateLimit-Policy` value listing every rate of `policy` (one item per rate, named by
/// [`policy_item_name`], with [`quota_window`]'s `q` and `w`).
///
/// ```
/// use tollgate::{Algorithm, Policy};
/// use tollgate_tower::headers::policy_field_for;
/// let p = Policy::parse(Algorithm::Gcra, "3/s").unwrap();
/// assert_eq!(policy_field_for("api", &p), "\"api\";q=3;w=1");
/// let p = Policy::parse(Algorithm::SlidingLog, "5/s; 1000/hour").unwrap();
/// assert_eq!(policy_field_for("multi", &p), "\"multi-0\";q=5;w=1, \"multi-1\";q=1000;w=3600");
/// ```
pub fn policy_field_for(name: &str, policy: &Policy) -> String {
    let rates = policy.rates().len();
    let mut out = ValueBuf::new();
    for (i, (q, w)) in quota_windows(policy).into_iter().enumerate() {
        if i > 0 {
            out.push_str(LIST_SEPARATOR);
        }
        out.push_policy_item(&policy_item_name(name, rates, i), q, w);
    }
    out.into_string()
}

/// The name of the `RateLimit` item for `decision` on `policy` (named `name`): the
/// [`policy_item_name`] of its [`binding_rate`], so it matches one `RateLimit-Policy` item
/// of [`policy_field_for`].
///
/// ```
/// use tollgate::{Algorithm, Decision, Policy};
/// use tollgate_tower::headers::ratelimit_item_name;
/// let p = Policy::parse(Algorithm::SlidingLog, "5/s; 1000/hour").unwrap();
/// let d = Decision::from_parts(true, 5, 4, 0, 1_000_000, None);
/// assert_eq!(ratelimit_item_name("multi", &p, &d), "multi-0");
/// ```
pub fn ratelimit_item_name<'a>(
    name: &'a str,
    policy: &Policy,
    decision: &Decision,
) -> Cow<'a, str> {
    policy_item_name(name, policy.rates().len(), binding_rate(policy, decision))
}

/// Formats `RateLimit-Policy` for the given reports; `None` when there are none.
///
/// ```
/// use tollgate_tower::headers::{ratelimit_policy_field, PolicyReport};
/// let d = tollgate::Decision::from_parts(true, 5, 4, 0, 200_000, None);
/// let a = PolicyReport { name: "a", decision: d, window_secs: 1 };
/// let b = PolicyReport { name: "b", decision: d, window_secs: 3600 };
/// assert_eq!(ratelimit_policy_field(&[a, b]).unwrap(), "\"a\";q=5;w=1, \"b\";q=5;w=3600");
/// ```
pub fn ratelimit_policy_field(reports: &[PolicyReport<'_>]) -> Option<String> {
    policy_field_bytes(reports).map(|b| b.into_string())
}

/// Formats `RateLimit` for the given reports; `None` when there are none.
///
/// ```
/// use tollgate_tower::headers::{ratelimit_field, PolicyReport};
/// let d = tollgate::Decision::from_parts(false, 5, 0, 1_500_000, 2_000_000, Some(0));
/// let a = PolicyReport { name: "a", decision: d, window_secs: 1 };
/// assert_eq!(ratelimit_field(&[a]).unwrap(), "\"a\";r=0;t=2");
/// ```
pub fn ratelimit_field(reports: &[PolicyReport<'_>]) -> Option<String> {
    ratelimit_field_bytes(reports).map(|b| b.into_string())
}

fn policy_field_bytes(reports: &[PolicyReport<'_>]) -> Option<ValueBuf> {
    join(reports, |out, r| {
        out.push_policy_item(r.name, r.decision.limit, r.window_secs);
    })
}

fn ratelimit_field_bytes(reports: &[PolicyReport<'_>]) -> Option<ValueBuf> {
    join(reports, |out, r| {
        out.push_str("\"");
        out.push_str(r.name);
        out.push_str("\";r=");
        out.push_ratelimit_numbers(&r.decision);
    })
}

fn join(
    reports: &[PolicyReport<'_>],
    mut item: impl FnMut(&mut ValueBuf, &PolicyReport<'_>),
) -> Option<ValueBuf> {
    if reports.is_empty() {
        return None;
    }
    let mut out = ValueBuf::new();
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            out.push_str(LIST_SEPARATOR);
        }
        item(&mut out, r);
    }
    Some(out)
}

/// Between the items of a Structured Field list.
pub(crate) const LIST_SEPARATOR: &str = ", ";

/// How many bytes of a field value [`ValueBuf`] keeps on the stack: one item of either field
/// (a name of at most 64 characters, two numbers of at most 20 digits, punctuation).
const INLINE_VALUE_LEN: usize = 128;

/// The bytes of one field value, built without allocating up to [`INLINE_VALUE_LEN`] bytes
/// (one policy's item always fits); longer values move to the heap. Numbers are written
/// with `itoa`.
pub(crate) struct ValueBuf {
    inline: [u8; INLINE_VALUE_LEN],
    len: usize,
    spilled: Vec<u8>,
}

impl ValueBuf {
    pub(crate) fn new() -> Self {
        Self {
            inline: [0; INLINE_VALUE_LEN],
            len: 0,
            spilled: Vec::new(),
        }
    }

    #[inline]
    pub(crate) fn push_bytes(&mut self, bytes: &[u8]) {
        if self.spilled.is_empty() && self.len + bytes.len() <= INLINE_VALUE_LEN {
            self.inline[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
            return;
        }
        if self.spilled.is_empty() {
            self.spilled.reserve(2 * (self.len + bytes.len()));
            self.spilled.extend_from_slice(&self.inline[..self.len]);
        }
        self.spilled.extend_from_slice(bytes);
    }

    #[inline]
    pub(crate) fn push_str(&mut self, s: &str) {
        self.push_bytes(s.as_bytes());
    }

    #[inline]
    pub(crate) fn push_u64(&mut self, n: u64) {
        let mut digits = itoa::Buffer::new();
        self.push_str(digits.format(n));
    }

    /// `"name";q=<capacity>;w=<seconds>`: one `RateLimit-Policy` item.
    pub(crate) fn push_policy_item(&mut self, name: &str, capacity: u64, window_secs: u64) {
        self.push_str("\"");
        self.push_str(name);
        self.push_str("\";q=");
        self.push_u64(capacity);
        self.push_str(";w=");
        self.push_u64(window_secs);
    }

    /// `<remaining>;t=<seconds>`: the part of a `RateLimit` item after `"name";r=`.
    pub(crate) fn push_ratelimit_numbers(&mut self, d: &Decision) {
        self.push_u64(d.remaining);
        self.push_str(";t=");
        self.push_u64(d.reset_after_secs());
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }

    /// The value as a header value (one allocation); `None` if it holds bytes a field value
    /// cannot (e.g. a policy name with control characters).
    pub(crate) fn to_value(&self) -> Option<HeaderValue> {
        HeaderValue::from_bytes(self.as_bytes()).ok()
    }

    fn into_string(self) -> String {
        // Only `&str` pieces and ASCII digits are ever pushed.
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

/// The report the legacy single-valued fields describe: the denying one if any, else the one
/// with the fewest remaining units.
fn tightest<'r, 'a>(reports: &'r [PolicyReport<'a>]) -> Option<&'r PolicyReport<'a>> {
    reports
        .iter()
        .find(|r| !r.decision.allowed)
        .or_else(|| reports.iter().min_by_key(|r| r.decision.remaining))
}

/// Writes the configured rate-limit fields for `reports` into `headers` (and `Retry-After`
/// when `denied` is given, from that decision).
///
/// ```
/// use http::HeaderMap;
/// use tollgate_tower::headers::{write_fields, HeaderOptions, PolicyReport};
/// let d = tollgate::Decision::from_parts(false, 5, 0, 1_200_000, 3_000_000, Some(0));
/// let r = PolicyReport { name: "ip", decision: d, window_secs: 1 };
/// let mut h = HeaderMap::new();
/// write_fields(&mut h, &[r], Some(&d), HeaderOptions::default().legacy(true));
/// assert_eq!(h["retry-after"], "2");
/// assert_eq!(h["ratelimit"], "\"ip\";r=0;t=3");
/// assert_eq!(h["x-ratelimit-remaining"], "0");
/// ```
pub fn write_fields(
    headers: &mut HeaderMap,
    reports: &[PolicyReport<'_>],
    denied: Option<&Decision>,
    options: HeaderOptions,
) {
    if let Some(d) = denied {
        headers.insert(RETRY_AFTER, HeaderValue::from(d.retry_after_secs().max(1)));
    }
    if options.ietf {
        if let Some(v) = policy_field_bytes(reports).and_then(|b| b.to_value()) {
            headers.insert(RATELIMIT_POLICY, v);
        }
        if let Some(v) = ratelimit_field_bytes(reports).and_then(|b| b.to_value()) {
            headers.insert(RATELIMIT, v);
        }
    }
    if options.legacy {
        if let Some(r) = tightest(reports) {
            headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(r.decision.limit));
            headers.insert(
                X_RATELIMIT_REMAINING,
                HeaderValue::from(r.decision.remaining),
            );
            headers.insert(
                X_RATELIMIT_RESET,
                HeaderValue::from(r.decision.reset_after_secs()),
            );
        }
    }
}

/// Whether `name` can be used as a policy name: 1 to 64 characters from `A-Z a-z 0-9 - _ . : /`
/// (so it is a valid Structured Field string and a readable metric label without escaping).
///
/// ```
/// use tollgate_tower::headers::is_valid_policy_name;
/// assert!(is_valid_policy_name("per-user:v1"));
/// assert!(!is_valid_policy_name("has \"quotes\""));
/// assert!(!is_valid_policy_name(""));
/// ```
pub fn is_valid_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
}
