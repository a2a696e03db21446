//! [`Gate`]: the shared state of a layer, and the decision of a request (all policies that
//! apply, all-or-nothing), its metrics and its response fields.

use super::erased::Item;
use super::policy::{HttpPolicy, MissingKey};
use crate::headers::{self, HeaderOptions, PolicyReport, Problem, ValueBuf};
use crate::key::{KeyError, KeyExtractor};
use http::header::HeaderValue;
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use std::borrow::Cow;
use std::sync::Arc;
use tollgate::store::multi::MultiDecision;
use tollgate::{Decision, Error};

/// The outcomes counted in `tollgate_http_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Allowed = 0,
    Denied = 1,
    Error = 2,
    NoKey = 3,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Allowed,
        Outcome::Denied,
        Outcome::Error,
        Outcome::NoKey,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
            Outcome::NoKey => "no_key",
        }
    }
}

/// The name of the layer's counter.
const REQUESTS_TOTAL: &str = "tollgate_http_requests_total";

/// What `metrics::counter!` would pass from this module (target = module path, level INFO).
/// The metadata target stays `tollgate_tower::layer` (what recorders filter on), whatever
/// file of the layer counts.
static COUNTER_METADATA: metrics::Metadata<'static> = metrics::Metadata::new(
    "tollgate_tower::layer",
    metrics::Level::INFO,
    Some("tollgate_tower::layer"),
);

/// The counter keys of one policy (`policy`, `outcome`, `mode` labels), built once so that
/// counting a request allocates and hashes nothing.
pub(crate) fn metric_keys(policy: &HttpPolicy, shadow: bool) -> [metrics::Key; 4] {
    Outcome::ALL.map(|outcome| {
        metrics::Key::from_parts(
            REQUESTS_TOTAL,
            vec![
                metrics::Label::new(
                    "policy",
                    metrics::SharedString::from(Arc::clone(&policy.name)),
                ),
                metrics::Label::new("outcome", outcome.label()),
                metrics::Label::new("mode", mode(shadow)),
            ],
        )
    })
}

/// The rate-limit fields of an allowed response, added to the inner service's response.
#[derive(Debug, Default)]
pub(crate) struct AllowedFields {
    ratelimit_policy: Option<HeaderValue>,
    ratelimit: Option<HeaderValue>,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` (boxed: off by default, and the response
    /// future carries this struct).
    legacy: Option<Box<[HeaderValue; 3]>>,
}

impl AllowedFields {
    /// Inserts the fields (replacing any the inner service wrote), in the order the layer
    /// always wrote them.
    pub(crate) fn insert_into(self, headers: &mut HeaderMap) {
        if let Some(v) = self.ratelimit_policy {
            headers.insert(headers::RATELIMIT_POLICY, v);
        }
        if let Some(v) = self.ratelimit {
            headers.insert(headers::RATELIMIT, v);
        }
        if let Some([limit, remaining, reset]) = self.legacy.map(|l| *l) {
            headers.insert(headers::X_RATELIMIT_LIMIT, limit);
            headers.insert(headers::X_RATELIMIT_REMAINING, remaining);
            headers.insert(headers::X_RATELIMIT_RESET, reset);
        }
    }
}

/// The layer's shared state: every clone of the layer and of its services points here.
pub(crate) struct Gate {
    pub(crate) policies: Vec<HttpPolicy>,
    /// Per policy, the counter key of each [`Outcome`].
    pub(crate) metric_keys: Vec<[metrics::Key; 4]>,
    pub(crate) shadow: bool,
    pub(crate) headers: HeaderOptions,
    pub(crate) problem_type: String,
    pub(crate) denied_status: StatusCode,
}

/// The result of the synchronous part of a decision (extracting keys).
pub(crate) enum Plan<'a> {
    /// No policy applies.
    Pass,
    /// Decide these (policy index, key) pairs.
    Decide(Work<'a>),
    /// Answer at once (a key could not be extracted).
    Reject(Box<http::Response<bytes::Bytes>>),
}

/// What the layer decided: call the inner service (adding fields), or answer itself.
pub(crate) enum Verdict {
    Allow {
        headers: Option<AllowedFields>,
        permit: Option<crate::concurrency::InFlightPermit>,
    },
    Reject(Box<http::Response<bytes::Bytes>>),
}

/// One policy (by index) and the key a request is counted under, borrowed from the request
/// head when the extractor allows it.
pub(crate) type Pair<'a> = (usize, Cow<'a, str>);

/// The (policy index, key) pairs a request is decided on: one pair without a heap allocation
/// (the common case), several in a `Vec`.
pub(crate) enum Work<'a> {
    Empty,
    One([Pair<'a>; 1]),
    Many(Vec<Pair<'a>>),
}

impl<'a> Work<'a> {
    /// The same pairs with owned keys, for a decision that outlives the request head.
    pub(crate) fn into_owned(self) -> Work<'static> {
        let owned = |(i, key): Pair<'a>| (i, Cow::Owned(key.into_owned()));
        match self {
            Work::Empty => Work::Empty,
            Work::One([pair]) => Work::One([owned(pair)]),
            Work::Many(all) => Work::Many(all.into_iter().map(owned).collect()),
        }
    }

    fn push(&mut self, pair: Pair<'a>) {
        *self = match std::mem::replace(self, Work::Empty) {
            Work::Empty => Work::One([pair]),
            Work::One([first]) => Work::Many(vec![first, pair]),
            Work::Many(mut all) => {
                all.push(pair);
                Work::Many(all)
            }
        };
    }

    pub(crate) fn as_slice(&self) -> &[Pair<'a>] {
        match self {
            Work::Empty => &[],
            Work::One(one) => one,
            Work::Many(all) => all,
        }
    }
}

fn mode(shadow: bool) -> &'static str {
    if shadow {
        "shadow"
    } else {
        "enforce"
    }
}

impl Gate {
    pub(crate) fn plan<'a>(&self, parts: &'a Parts) -> Plan<'a> {
        if let [p] = self.policies.as_slice() {
            // One policy (the common layer): no pair list to grow.
            return match self.key_of(0, p, parts) {
                Ok(Some(key)) => Plan::Decide(Work::One([(0, key)])),
                Ok(None) => Plan::Pass,
                Err(response) => Plan::Reject(response),
            };
        }
        let mut work = Work::Empty;
        for (i, p) in self.policies.iter().enumerate() {
            match self.key_of(i, p, parts) {
                Ok(Some(key)) => work.push((i, key)),
                Ok(None) => {}
                Err(response) => return Plan::Reject(response),
            }
        }
        match work {
            Work::Empty => Plan::Pass,
            work => Plan::Decide(work),
        }
    }

    /// The key policy `p` (index `i`) counts this request under: `Ok(None)` when the policy
    /// does not apply (another route or method, a missing key it skips, or one it would
    /// reject in shadow mode), `Err` with the answer when a missing key rejects the request.
    fn key_of<'a>(
        &self,
        i: usize,
        p: &HttpPolicy,
        parts: &'a Parts,
    ) -> Result<Option<Cow<'a, str>>, Box<http::Response<bytes::Bytes>>> {
        if !p.matcher.matches(parts) {
            return Ok(None);
        }
        let extracted = p
            .extractor
            .extract_borrowed(parts)
            .and_then(|raw| match &p.key_builder {
                None => Ok(raw),
                Some(keys) => keys
                    .build(&raw)
                    .map(Cow::Owned)
                    .map_err(|e| KeyError::Custom(format!("the key is unusable: {e}"))),
            });
        match extracted {
            Ok(key) => Ok(Some(key)),
            Err(err) => match &p.missing_key {
                MissingKey::Skip => Ok(None),
                MissingKey::Fallback(key) => Ok(Some(Cow::Owned(key.clone()))),
                MissingKey::Reject(status) => {
                    self.count(i, Outcome::NoKey);
                    tracing::debug!(policy = %p.name, error = %err, "no rate-limit key");
                    if self.shadow {
                        return Ok(None);
                    }
                    Err(Box::new(self.missing_key_response(p, *status, &err)))
                }
            },
        }
    }

    /// Whether every limiter of `work` decides without I/O, so [`Gate::decide_now`] applies.
    pub(crate) fn decides_now(&self, work: &Work<'_>) -> bool {
        work.as_slice()
            .iter()
            .all(|(i, _)| self.policies[*i].in_process)
    }

    fn missing_key_response(
        &self,
        p: &HttpPolicy,
        status: StatusCode,
        err: &KeyError,
    ) -> http::Response<bytes::Bytes> {
        Problem::new(
            status,
            format!(
                "the request cannot be rate limited by policy {:?}: {err}",
                &*p.name
            ),
        )
        .with_type(self.problem_type.clone())
        .with_extension("policy", p.name.to_string().into())
        .into_response()
    }

    /// Counts one request in `tollgate_http_requests_total{policy, outcome, mode}` under the
    /// current recorder, with the key built at `build()`.
    fn count(&self, policy: usize, outcome: Outcome) {
        if let Some(keys) = self.metric_keys.get(policy) {
            let key = &keys[outcome as usize];
            metrics::with_recorder(|recorder| {
                recorder
                    .register_counter(key, &COUNTER_METADATA)
                    .increment(1);
            });
        }
    }

    /// Decides every (policy, key) pair all-or-nothing; see the module docs.
    pub(crate) async fn decide(self: Arc<Self>, work: Work<'static>) -> Verdict {
        let work = work.as_slice();
        if let [(i, key)] = work {
            let p = &self.policies[*i];
            return match p.limiter.check(key, p.cost).await {
                Ok(d) => self.finish(work, &[d]),
                Err(e) => self.on_error(*i, e),
            };
        }
        let items = self.items(work);
        if let Some(call) = items[0].0.check_all(&items) {
            return self.finish_multi(work, call.await);
        }
        let mut decisions: Vec<Decision> = Vec::with_capacity(work.len());
        for (i, key) in work {
            let p = &self.policies[*i];
            let peeked = p.limiter.peek(key, p.cost).await;
            if let Some(verdict) = self.settle(work, &mut decisions, *i, peeked) {
                return verdict;
            }
        }
        decisions.clear();
        for (j, (i, key)) in work.iter().enumerate() {
            let p = &self.policies[*i];
            let outcome = p.limiter.check(key, p.cost).await;
            let denied_or_failed = !matches!(outcome, Ok(d) if d.allowed);
            if denied_or_failed {
                self.refund_first(work, j).await;
            }
            if let Some(verdict) = self.settle(work, &mut decisions, *i, outcome) {
                return verdict;
            }
        }
        self.finish(work, &decisions)
    }

    /// [`Gate::decide`] on the calling thread, for limiters that decide without I/O
    /// ([`Gate::decides_now`]): the same steps, in the same order, with the same outcomes.
    pub(crate) fn decide_now(&self, work: &Work<'_>) -> Verdict {
        let work = work.as_slice();
        if let [(i, key)] = work {
            let p = &self.policies[*i];
            return match p.limiter.check_now(key, p.cost) {
                Ok(d) => self.finish(work, &[d]),
                Err(e) => self.on_error(*i, e),
            };
        }
        let items = self.items(work);
        if let Some(outcome) = items[0].0.check_all_now(&items) {
            return self.finish_multi(work, outcome);
        }
        let mut decisions: Vec<Decision> = Vec::with_capacity(work.len());
        for (i, key) in work {
            let p = &self.policies[*i];
            let peeked = p.limiter.peek_now(key, p.cost);
            if let Some(verdict) = self.settle(work, &mut decisions, *i, peeked) {
                return verdict;
            }
        }
        decisions.clear();
        for (j, (i, key)) in work.iter().enumerate() {
            let p = &self.policies[*i];
            let outcome = p.limiter.check_now(key, p.cost);
            let denied_or_failed = !matches!(outcome, Ok(d) if d.allowed);
            if denied_or_failed {
                self.refund_first_now(work, j);
            }
            if let Some(verdict) = self.settle(work, &mut decisions, *i, outcome) {
                return verdict;
            }
        }
        self.finish(work, &decisions)
    }

    /// Records one policy's peek or check in `decisions`: the verdict that ends the request
    /// when it denied (every decision so far) or failed (policy `i`'s error), else `None`.
    fn settle(
        &self,
        work: &[Pair<'_>],
        decisions: &mut Vec<Decision>,
        i: usize,
        outcome: Result<Decision, Error>,
    ) -> Option<Verdict> {
        match outcome {
            Ok(d) => {
                decisions.push(d);
                (!d.allowed).then(|| self.finish(work, decisions))
            }
            Err(e) => Some(self.on_error(i, e)),
        }
    }

    /// The (limiter, key, cost) items of `work`, for a multi-key call.
    fn items<'a>(&'a self, work: &'a [Pair<'_>]) -> Vec<Item<'a>> {
        work.iter()
            .map(|(i, key)| {
                let p = &self.policies[*i];
                (&*p.limiter, key.as_ref(), p.cost)
            })
            .collect()
    }

    /// The verdict of a multi-key call: every policy's decision, or the store error
    /// (attributed to the first policy of the request).
    fn finish_multi(&self, work: &[Pair<'_>], outcome: Result<MultiDecision, Error>) -> Verdict {
        match outcome {
            Ok(d) => self.finish(work, &d.decisions),
            Err(e) => self.on_error(work[0].0, e),
        }
    }

    /// Refunds the charges of the first `n` pairs (a later check denied or failed).
    async fn refund_first(&self, work: &[Pair<'_>], n: usize) {
        for (i, key) in &work[..n] {
            let p = &self.policies[*i];
            if let Err(e) = p.limiter.refund(key, p.cost).await {
                tracing::warn!(policy = %p.name, error = %e, "refund after a later denial failed");
            }
        }
    }

    /// [`Gate::refund_first`] on the calling thread.
    fn refund_first_now(&self, work: &[Pair<'_>], n: usize) {
        for (i, key) in &work[..n] {
            let p = &self.policies[*i];
            if let Err(e) = p.limiter.refund_now(key, p.cost) {
                tracing::warn!(policy = %p.name, error = %e, "refund after a later denial failed");
            }
        }
    }

    fn on_error(&self, policy: usize, e: Error) -> Verdict {
        let p = &self.policies[policy];
        self.count(policy, Outcome::Error);
        tracing::warn!(policy = %p.name, error = %e, shadow = self.shadow, "rate-limit store error");
        if self.shadow {
            return Verdict::Allow {
                headers: None,
                permit: None,
            };
        }
        let (status, detail) = match &e {
            Error::KeyTooLong { .. } | Error::InvalidKey { .. } => (
                StatusCode::BAD_REQUEST,
                format!(
                    "the rate-limit key of policy {:?} is invalid: {e}",
                    &*p.name
                ),
            ),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "rate limiting is unavailable (policy {:?}); try again later",
                    &*p.name
                ),
            ),
        };
        Verdict::Reject(Box::new(
            Problem::new(status, detail)
                .with_type(self.problem_type.clone())
                .with_extension("policy", p.name.to_string().into())
                .into_response(),
        ))
    }

    fn finish(&self, work: &[Pair<'_>], decisions: &[Decision]) -> Verdict {
        if let ([d], [(i, _)]) = (decisions, work) {
            if d.allowed {
                // One policy that admits (the common request): what the loops below do.
                self.count(*i, Outcome::Allowed);
                return Verdict::Allow {
                    headers: self.allowed_fields(work, decisions),
                    permit: None,
                };
            }
        }
        // The denial to report: the longest retry_after (the first on a tie), after which
        // every policy admits (a multi-key call may return several denials).
        let mut denied: Option<(&Decision, usize, &Cow<'_, str>)> = None;
        for (d, (i, key)) in decisions.iter().zip(work) {
            if !d.allowed && denied.is_none_or(|(best, _, _)| d.retry_after > best.retry_after) {
                denied = Some((d, *i, key));
            }
        }
        match denied {
            None => {
                for (i, _) in &work[..decisions.len()] {
                    self.count(*i, Outcome::Allowed);
                }
                Verdict::Allow {
                    headers: self.allowed_fields(work, decisions),
                    permit: None,
                }
            }
            Some((d, i, key)) => {
                let p = &self.policies[i];
                self.count(i, Outcome::Denied);
                tracing::debug!(
                    policy = %p.name,
                    key = %key,
                    retry_after_ms = d.retry_after.as_millis() as u64,
                    shadow = self.shadow,
                    "rate limited"
                );
                if self.shadow {
                    return Verdict::Allow {
                        headers: self.allowed_fields(work, decisions),
                        permit: None,
                    };
                }
                // Only the policies that denied: the others were not charged, and their
                // decisions describe a charge that did not happen.
                let reports: Vec<PolicyReport<'_>> = decisions
                    .iter()
                    .zip(work)
                    .filter(|(d, _)| !d.allowed)
                    .map(|(d, (i, _))| {
                        let p = &self.policies[*i];
                        PolicyReport {
                            name: &p.name,
                            decision: *d,
                            window_secs: p.window_for(d),
                        }
                    })
                    .collect();
                let retry = d.retry_after_secs().max(1);
                let mut response = Problem::new(
                    self.denied_status,
                    format!("rate limit {:?} exceeded; retry after {retry} s", &*p.name),
                )
                .with_type(self.problem_type.clone())
                .with_extension("policy", p.name.to_string().into())
                .with_extension("retry_after", retry.into())
                .into_response();
                headers::write_fields(response.headers_mut(), &reports, Some(d), self.headers);
                Verdict::Reject(Box::new(response))
            }
        }
    }

    /// The fields of a response the layer lets through: what
    /// [`headers::write_fields`] writes without a denial, built from the preformatted
    /// per-policy parts.
    fn allowed_fields(&self, work: &[Pair<'_>], decisions: &[Decision]) -> Option<AllowedFields> {
        let h = self.headers;
        if !h.on_allowed_enabled()
            || !(h.ietf_enabled() || h.legacy_enabled())
            || decisions.is_empty()
        {
            return None;
        }
        // Several policies: one list item per policy, in the policies' order.
        let list = |push: fn(&HttpPolicy, &mut ValueBuf, &Decision)| {
            let mut out = ValueBuf::new();
            for (n, (d, (i, _))) in decisions.iter().zip(work).enumerate() {
                if n > 0 {
                    out.push_str(headers::LIST_SEPARATOR);
                }
                push(&self.policies[*i], &mut out, d);
            }
            out.to_value()
        };
        let mut fields = AllowedFields::default();
        if h.ietf_enabled() {
            fields.ratelimit_policy = match decisions {
                [d] => self.policies[work[0].0].policy_value(d),
                _ => list(|p, out, d| p.push_policy_item(out, d)),
            };
            fields.ratelimit = match decisions {
                [d] => self.policies[work[0].0].ratelimit_value(d),
                _ => list(|p, out, d| p.push_ratelimit_item(out, d)),
            };
        }
        if h.legacy_enabled() {
            // The denying decision if any (shadow mode), else the one with the fewest
            // remaining units (the first of equals).
            let tightest = decisions
                .iter()
                .find(|d| !d.allowed)
                .or_else(|| decisions.iter().min_by_key(|d| d.remaining));
            fields.legacy = tightest.map(|d| {
                Box::new([
                    HeaderValue::from(d.limit),
                    HeaderValue::from(d.remaining),
                    HeaderValue::from(d.reset_after_secs()),
                ])
            });
        }
        Some(fields)
    }
}
