//! A policy bound to the store ([`PolicyEntry`]), its metrics, and the IETF `RateLimit` /
//! `RateLimit-Policy` field values the server sends for it (tollgate-tower's formulas).

use super::*;
use axum::http::HeaderValue;

pub(super) struct PolicyMetrics {
    pub(super) allowed: Counter,
    pub(super) denied: Counter,
    pub(super) errors: Counter,
    pub(super) latency: Histogram,
}

impl PolicyMetrics {
    pub(super) fn new(label: &str) -> Self {
        let label = label.to_string();
        PolicyMetrics {
            allowed: metrics::counter!("tollgate_server_decisions_total", "policy" => label.clone(), "outcome" => "allowed"),
            denied: metrics::counter!("tollgate_server_decisions_total", "policy" => label.clone(), "outcome" => "denied"),
            errors: metrics::counter!("tollgate_server_decisions_total", "policy" => label.clone(), "outcome" => "error"),
            latency: metrics::histogram!("tollgate_server_decision_duration_seconds", "policy" => label),
        }
    }
}

/// A policy bound to the store: what both endpoints decide with.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
/// let entry = app.inline(Some("fixed_window"), "3/min").unwrap();
/// assert_eq!(entry.policy().rates()[0].limit(), 3);
/// # });
/// ```
pub struct PolicyEntry {
    name: String,
    policy: Policy,
    pub(super) limiter: Limiter<Arc<dyn DynMultiBackend>>,
    pub(super) metrics: PolicyMetrics,
    rate_limit_policy: String,
    /// `rate_limit_policy` as a header value, made once (`None` if it is not a valid one).
    rate_limit_policy_value: Option<HeaderValue>,
    /// `name` as a JSON string (quoted and escaped), made once for the response bodies.
    json_name: String,
}

impl std::fmt::Debug for PolicyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEntry")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl PolicyEntry {
    pub(super) fn new(name: &str, policy: Policy, backend: Arc<dyn DynMultiBackend>) -> Self {
        let rate_limit_policy = rate_limit_policy_field(name, &policy);
        PolicyEntry {
            name: name.to_string(),
            rate_limit_policy_value: HeaderValue::from_str(&rate_limit_policy).ok(),
            rate_limit_policy,
            json_name: serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into()),
            limiter: Limiter::builder(policy.clone())
                .max_key_len(usize::MAX)
                .build_on(backend),
            metrics: PolicyMetrics::new(name),
            policy,
        }
    }

    /// The policy's name (`inline` for inline rates, `cl.throttle` for CL.THROTTLE).
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert_eq!(app.inline(None, "1/s").unwrap().name(), "inline");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy.
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert_eq!(app.inline(None, "1/s").unwrap().policy().rates().len(), 1);
    /// ```
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The IETF `RateLimit-Policy` field value for this policy: one item per rate,
    /// `"name";q=<quota>;w=<window seconds>`.
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert_eq!(app.inline(None, "10/s burst 20").unwrap().rate_limit_policy(), "\"inline\";q=20;w=2");
    /// ```
    pub fn rate_limit_policy(&self) -> &str {
        &self.rate_limit_policy
    }

    /// [`PolicyEntry::rate_limit_policy`] as an HTTP header value (made once; `None` when
    /// the name makes it an invalid one).
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// let e = app.inline(None, "3/s").unwrap();
    /// assert_eq!(e.rate_limit_policy_value().unwrap(), "\"inline\";q=3;w=1");
    /// ```
    pub fn rate_limit_policy_value(&self) -> Option<&HeaderValue> {
        self.rate_limit_policy_value.as_ref()
    }

    /// The policy's name as a JSON string, quoted and escaped (made once).
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert_eq!(app.inline(None, "3/s").unwrap().json_name(), "\"inline\"");
    /// ```
    pub fn json_name(&self) -> &str {
        &self.json_name
    }
}

/// The quota (`q`) and window in seconds (`w`) of each rate, as the IETF fields advertise
/// them: `tollgate_tower::headers::quota_windows` (one formula for the tower layer and the
/// server; a policy of `n` per period advertises `w` = the period).
///
/// ```
/// let p = tollgate::Policy::parse(tollgate::Algorithm::Gcra, "10/s burst 20").unwrap();
/// assert_eq!(tollgate_server::app::quota_windows(&p), vec![(20, 2)]);
/// let p = tollgate::Policy::parse(tollgate::Algorithm::Gcra, "3/s").unwrap();
/// assert_eq!(tollgate_server::app::quota_windows(&p), vec![(3, 1)]);
/// ```
pub fn quota_windows(policy: &Policy) -> Vec<(u64, u64)> {
    tollgate_tower::headers::quota_windows(policy)
}

pub(super) fn rate_limit_policy_field(name: &str, policy: &Policy) -> String {
    tollgate_tower::headers::policy_field_for(name, policy)
}

/// The IETF `RateLimit` field for a decision: `"name";r=<remaining>;t=<seconds>` where `t`
/// is `retry_after` when denied and `reset_after` when allowed (rounded up). On a policy of
/// several rates the item is named after the rate that binds (`name-<i>`), as in
/// `RateLimit-Policy`.
///
/// ```
/// use tollgate::{Algorithm, Decision, Policy};
/// let api = Policy::parse(Algorithm::Gcra, "5/s").unwrap();
/// let d = Decision::from_parts(false, 5, 0, 1_500_000, 3_000_000, Some(0));
/// assert_eq!(tollgate_server::app::rate_limit_field("api", &api, &d), "\"api\";r=0;t=2");
/// let multi = Policy::parse(Algorithm::SlidingLog, "5/s; 1000/hour").unwrap();
/// let d = Decision::from_parts(true, 1000, 3, 0, 9_000_000, None);
/// assert_eq!(tollgate_server::app::rate_limit_field("multi", &multi, &d), "\"multi-1\";r=3;t=9");
/// ```
pub fn rate_limit_field(name: &str, policy: &Policy, decision: &Decision) -> String {
    let mut out = String::with_capacity(name.len() + 32);
    push_rate_limit_field(&mut out, name, policy, decision);
    out
}

/// Appends [`rate_limit_field`] to `out` (the server's hot path: no `format!`).
///
/// ```
/// use tollgate::{Algorithm, Decision, Policy};
/// let api = Policy::parse(Algorithm::Gcra, "5/s").unwrap();
/// let mut s = String::new();
/// let d = Decision::from_parts(true, 5, 4, 0, 200_000, None);
/// tollgate_server::app::push_rate_limit_field(&mut s, "api", &api, &d);
/// assert_eq!(s, "\"api\";r=4;t=1");
/// ```
pub fn push_rate_limit_field(out: &mut String, name: &str, policy: &Policy, decision: &Decision) {
    let item = tollgate_tower::headers::ratelimit_item_name(name, policy, decision);
    let t = if decision.allowed {
        decision.reset_after_secs()
    } else {
        decision.retry_after_secs()
    };
    let mut n = itoa::Buffer::new();
    out.push('"');
    out.push_str(&item);
    out.push_str("\";r=");
    out.push_str(n.format(decision.remaining));
    out.push_str(";t=");
    out.push_str(n.format(t));
}
