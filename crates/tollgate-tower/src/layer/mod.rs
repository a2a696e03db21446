//! The rate-limit layer: [`RateLimitLayer`] (a `tower::Layer`), its service [`RateLimit`] and
//! its future [`ResponseFuture`].
//!
//! A layer holds one or more [`HttpPolicy`]s. Each policy names a [`tollgate::Limiter`], a key
//! extractor and, optionally, the routes and methods it applies to. For every request the
//! layer finds the policies that apply, extracts their keys and decides:
//!
//! - **one policy**: one atomic `check` on its limiter;
//! - **several policies** (e.g. per-user *and* global): *all-or-nothing per request*. First
//!   every limiter is peeked (nothing charged); if any would deny, the request is denied and
//!   nothing is charged anywhere. Otherwise every limiter is checked in order; if a later
//!   check denies (another request took the last unit between the peek and the check), the
//!   earlier charges are refunded. With the memory store the refund makes the outcome
//!   all-or-nothing for this request; concurrent requests may briefly see the units that are
//!   about to be refunded as taken (they are denied a little early, never admitted beyond a
//!   limit). A store that offers a multi-key atomic check (the Redis store's single-script
//!   multi-key check) avoids even that window.
//!
//! Denials answer `429 Too Many Requests` with `Retry-After`, the IETF `RateLimit` /
//! `RateLimit-Policy` fields (see [`crate::headers`]) and an RFC 9457 problem+json body. A
//! store failure that reaches the layer (`Err(tollgate::Error::Store)`: the limiter's failure
//! policy chose to fail closed) answers `503 Service Unavailable` with a problem+json body,
//! never a 500. In shadow mode nothing is ever blocked: decisions, fields and metrics happen
//! as usual, and the request goes through.
//!
//! Metrics: `tollgate_http_requests_total{policy, outcome, mode}` with `outcome` one of
//! `allowed`, `denied`, `error`, `no_key` and `mode` `enforce` or `shadow`. When several
//! policies apply and one denies, the denying policy counts `denied` and the others count
//! nothing for that request.
//!
//! ```
//! use tollgate::{Limiter, Policy, Rate};
//! use tollgate_tower::{HttpPolicy, RateLimitLayer, key::PeerIp};
//!
//! let per_ip = Limiter::memory(Policy::gcra(Rate::per_second(10).unwrap()).unwrap());
//! let login = Limiter::memory(Policy::gcra(Rate::per_minute(5).unwrap()).unwrap());
//! let layer = RateLimitLayer::builder()
//!     .policy(HttpPolicy::new("per-ip", per_ip, PeerIp::new()))
//!     .policy(HttpPolicy::new("login", login, PeerIp::new()).path("/login").method(http::Method::POST))
//!     .build()
//!     .unwrap();
//! // app = axum::Router::new().route(...).layer(layer);
//! # let _ = layer;
//! ```

mod future;
#[allow(clippy::module_inception)]
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::{LayerError, RateLimitLayer, RateLimitLayerBuilder};
pub use service::RateLimit;

use crate::headers::{self, HeaderOptions, PolicyReport, Problem};
use crate::key::{KeyError, KeyExtractor};
use futures_util::future::BoxFuture;
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use std::sync::Arc;
use tollgate::store::Backend;
use tollgate::{Decision, Error, Limiter, Policy};

/// A limiter of any store, behind one object type (so one layer can mix stores).
pub(crate) trait ErasedLimiter: Send + Sync + 'static {
    fn policy(&self) -> &Policy;
    fn check<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, Error>>;
    fn peek<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, Error>>;
    fn refund<'a>(&'a self, key: &'a str, amount: u64) -> BoxFuture<'a, Result<(), Error>>;
}

impl<B: Backend> ErasedLimiter for Limiter<B> {
    fn policy(&self) -> &Policy {
        Limiter::policy(self)
    }
    fn check<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, Error>> {
        Box::pin(self.check_n_async(key, cost))
    }
    fn peek<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, Error>> {
        Box::pin(self.peek_async(key, cost))
    }
    fn refund<'a>(&'a self, key: &'a str, amount: u64) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.refund_async(key, amount))
    }
}

/// What to do with a request whose key cannot be extracted for a policy.
///
/// ```
/// use tollgate_tower::layer::MissingKey;
/// let m = MissingKey::Reject(http::StatusCode::UNAUTHORIZED);
/// assert_eq!(MissingKey::default(), MissingKey::Reject(http::StatusCode::BAD_REQUEST));
/// # let _ = m;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingKey {
    /// Answer with this status and a problem+json body explaining which key is missing
    /// (default: 400 Bad Request).
    Reject(StatusCode),
    /// Count the request under this fixed key instead (e.g. all anonymous callers together).
    Fallback(String),
    /// Do not apply this policy to the request (an explicit opt-in: e.g. a per-API-key policy
    /// that anonymous requests skip because another policy covers them).
    Skip,
}

impl Default for MissingKey {
    fn default() -> Self {
        MissingKey::Reject(StatusCode::BAD_REQUEST)
    }
}

/// Which requests a policy applies to: every request unless paths or methods are given.
#[derive(Clone, Debug, Default)]
struct RouteMatcher {
    paths: Vec<String>,
    prefixes: Vec<String>,
    methods: Vec<Method>,
}

impl RouteMatcher {
    fn matches(&self, parts: &Parts) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(&parts.method) {
            return false;
        }
        if self.paths.is_empty() && self.prefixes.is_empty() {
            return true;
        }
        let route = crate::key::matched_route(parts);
        let path = parts.uri.path();
        let exact = |p: &String| route == Some(p.as_str()) || path == p;
        let prefix = |p: &String| path.starts_with(p.as_str());
        self.paths.iter().any(exact) || self.prefixes.iter().any(prefix)
    }
}

/// One rate-limit policy of a layer: a name (used in the `RateLimit` fields and metrics), a
/// limiter, a key extractor, and where it applies.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate};
/// use tollgate_tower::{HttpPolicy, key::Header, layer::MissingKey};
/// let limiter = Limiter::memory(Policy::gcra(Rate::per_minute(60).unwrap()).unwrap());
/// let policy = HttpPolicy::new("api-key", limiter, Header::named("x-api-key").unwrap())
///     .path_prefix("/api/")
///     .cost(1)
///     .on_missing_key(MissingKey::Reject(http::StatusCode::UNAUTHORIZED));
/// # let _ = policy;
/// ```
#[derive(Clone)]
pub struct HttpPolicy {
    name: Arc<str>,
    limiter: Arc<dyn ErasedLimiter>,
    extractor: Arc<dyn KeyExtractor>,
    matcher: RouteMatcher,
    cost: u64,
    missing_key: MissingKey,
    key_builder: Option<tollgate::keys::KeyBuilder>,
    /// (capacity, w seconds) for each rate of the limiter's policy.
    windows: Arc<[(u64, u64)]>,
}

impl std::fmt::Debug for HttpPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPolicy")
            .field("name", &self.name)
            .field("policy", self.limiter.policy())
            .field("matcher", &self.matcher)
            .field("cost", &self.cost)
            .field("missing_key", &self.missing_key)
            .finish_non_exhaustive()
    }
}

impl HttpPolicy {
    /// A policy named `name` (1–64 characters of `A-Z a-z 0-9 - _ . : /`, checked by
    /// [`RateLimitLayerBuilder::build`]) that counts every request under the key `extractor`
    /// gives, on `limiter` (any store).
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// use tollgate_tower::{HttpPolicy, key::Global};
    /// let global = HttpPolicy::new("global", Limiter::memory(Policy::gcra(Rate::per_second(1000).unwrap()).unwrap()), Global);
    /// assert_eq!(global.name(), "global");
    /// ```
    pub fn new<B: Backend>(
        name: impl Into<String>,
        limiter: Limiter<B>,
        extractor: impl KeyExtractor,
    ) -> Self {
        let windows: Vec<(u64, u64)> = limiter
            .policy()
            .rates()
            .iter()
            .map(|r| {
                let capacity = match limiter.policy().algorithm() {
                    tollgate::Algorithm::Gcra | tollgate::Algorithm::TokenBucket => r.burst(),
                    _ => r.limit(),
                };
                (capacity, headers::window_secs(r))
            })
            .collect();
        Self {
            name: name.into().into(),
            limiter: Arc::new(limiter),
            extractor: Arc::new(extractor),
            matcher: RouteMatcher::default(),
            cost: 1,
            missing_key: MissingKey::default(),
            key_builder: None,
            windows: windows.into(),
        }
    }

    /// The policy's name.
    ///
    /// ```
    /// # use tollgate::{Limiter, Policy, Rate};
    /// # let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// let p = tollgate_tower::HttpPolicy::new("n", l, tollgate_tower::key::Global);
    /// assert_eq!(p.name(), "n");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Applies the policy to this route: the axum route template (`MatchedPath`, e.g.
    /// `/users/{id}`) or, outside axum, the exact request path. Several calls add routes.
    ///
    /// ```
    /// # use tollgate::{Limiter, Policy, Rate};
    /// # let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// let p = tollgate_tower::HttpPolicy::new("users", l, tollgate_tower::key::Global).path("/users/{id}");
    /// # let _ = p;
    /// ```
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.matcher.paths.push(path.into());
        self
    }

    /// Applies the policy to every request path starting with `prefix`.
    ///
    /// ```
    /// # use tollgate::{Limiter, Policy, Rate};
    /// # let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// let p = tollgate_tower::HttpPolicy::new("api", l, tollgate_tower::key::Global).path_prefix("/api/");
    /// # let _ = p;
    /// ```
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.matcher.prefixes.push(prefix.into());
        self
    }

    /// Applies the policy only to this method. Several calls add methods.
    ///
    /// ```
    /// # use tollgate::{Limiter, Policy, Rate};
    /// # let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// let p = tollgate_tower::HttpPolicy::new("writes", l, tollgate_tower::key::Global)
    ///     .method(http::Method::POST).method(http::Method::PUT);
    /// # let _ = p;
    /// ```
    pub fn method(mut self, method: Method) -> Self {
        self.matcher.methods.push(method);
        self
    }

    /// Charges `cost` units per request (default 1; must be at most the policy's capacity,
    /// checked by [`RateLimitLayerBuilder::build`]).
    ///
    /// ```
    /// # use tollgate::{Limiter, Policy, Rate};
    /// # let l = Limiter::memory(Policy::gcra(Rate::per_second(10).unwrap()).unwrap());
    /// let p = tollgate_tower::HttpPolicy::new("export", l, tollgate_tower::key::Global).cost(5);
    /// # let _ = p;
    /// ```
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    /// What to do when the key cannot be extracted (default: 400 with problem+json).
    ///
    /// ```
    /// # use tollgate::{Limiter, Policy, Rate};
    /// # let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// use tollgate_tower::layer::MissingKey;
    /// let p = tollgate_tower::HttpPolicy::new("k", l, tollgate_tower::key::Global)
    ///     .on_missing_key(MissingKey::Fallback("anonymous".into()));
    /// # let _ = p;
    /// ```
    pub fn on_missing_key(mut self, missing_key: MissingKey) -> Self {
        self.missing_key = missing_key;
        self
    }

    /// Passes every extracted key through `keys` ([`tollgate::keys::KeyBuilder`]: namespace,
    /// HMAC-SHA256 so raw IPs or API keys never reach the store, bounded length) before it
    /// reaches the limiter. Without it the extracted key goes to the limiter as is (stores
    /// such as Redis apply their own key builder on top). A key the builder rejects is
    /// answered 400 with problem+json.
    ///
    /// ```
    /// # use tollgate::{Limiter, Policy, Rate};
    /// # let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// let keys = tollgate::keys::KeyBuilder::new("http").unwrap().hmac_secret("secret").unwrap();
    /// let p = tollgate_tower::HttpPolicy::new("ip", l, tollgate_tower::key::PeerIp::new()).key_builder(keys);
    /// # let _ = p;
    /// ```
    pub fn key_builder(mut self, keys: tollgate::keys::KeyBuilder) -> Self {
        self.key_builder = Some(keys);
        self
    }

    fn window_for(&self, d: &Decision) -> u64 {
        self.windows
            .iter()
            .find(|(cap, _)| *cap == d.limit)
            .or_else(|| self.windows.first())
            .map_or(1, |(_, w)| *w)
    }

    fn label(&self) -> metrics::SharedString {
        metrics::SharedString::from(Arc::clone(&self.name))
    }
}

/// The layer's shared state: every clone of the layer and of its services points here.
pub(crate) struct Gate {
    pub(crate) policies: Vec<HttpPolicy>,
    pub(crate) shadow: bool,
    pub(crate) headers: HeaderOptions,
    pub(crate) problem_type: String,
    pub(crate) denied_status: StatusCode,
}

/// The result of the synchronous part of a decision (extracting keys).
pub(crate) enum Plan {
    /// No policy applies.
    Pass,
    /// Decide these (policy index, key) pairs.
    Decide(Vec<(usize, String)>),
    /// Answer at once (a key could not be extracted).
    Reject(http::Response<bytes::Bytes>),
}

/// What the layer decided: call the inner service (adding fields), or answer itself.
pub(crate) enum Verdict {
    Allow {
        headers: Option<HeaderMap>,
        permit: Option<crate::concurrency::InFlightPermit>,
    },
    Reject(http::Response<bytes::Bytes>),
}

fn mode(shadow: bool) -> &'static str {
    if shadow {
        "shadow"
    } else {
        "enforce"
    }
}

impl Gate {
    pub(crate) fn plan(&self, parts: &Parts) -> Plan {
        let mut work = Vec::new();
        for (i, p) in self.policies.iter().enumerate() {
            if !p.matcher.matches(parts) {
                continue;
            }
            let extracted = p
                .extractor
                .extract(parts)
                .and_then(|raw| match &p.key_builder {
                    None => Ok(raw),
                    Some(keys) => keys
                        .build(&raw)
                        .map_err(|e| KeyError::Custom(format!("the key is unusable: {e}"))),
                });
            match extracted {
                Ok(key) => work.push((i, key)),
                Err(err) => match &p.missing_key {
                    MissingKey::Skip => {}
                    MissingKey::Fallback(key) => work.push((i, key.clone())),
                    MissingKey::Reject(status) => {
                        self.count(p, "no_key");
                        tracing::debug!(policy = %p.name, error = %err, "no rate-limit key");
                        if self.shadow {
                            continue;
                        }
                        return Plan::Reject(self.missing_key_response(p, *status, &err));
                    }
                },
            }
        }
        if work.is_empty() {
            Plan::Pass
        } else {
            Plan::Decide(work)
        }
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

    fn count(&self, p: &HttpPolicy, outcome: &'static str) {
        metrics::counter!(
            "tollgate_http_requests_total",
            "policy" => p.label(),
            "outcome" => outcome,
            "mode" => mode(self.shadow),
        )
        .increment(1);
    }

    /// Decides every (policy, key) pair all-or-nothing; see the module docs.
    pub(crate) async fn decide(self: Arc<Self>, work: Vec<(usize, String)>) -> Verdict {
        let mut decisions: Vec<Decision> = Vec::with_capacity(work.len());
        if let [(i, key)] = work.as_slice() {
            let p = &self.policies[*i];
            match p.limiter.check(key, p.cost).await {
                Ok(d) => decisions.push(d),
                Err(e) => return self.on_error(p, e),
            }
            return self.finish(&work, &decisions);
        }
        for (i, key) in &work {
            let p = &self.policies[*i];
            match p.limiter.peek(key, p.cost).await {
                Ok(d) => {
                    decisions.push(d);
                    if !d.allowed {
                        return self.finish(&work, &decisions);
                    }
                }
                Err(e) => return self.on_error(p, e),
            }
        }
        decisions.clear();
        for (j, (i, key)) in work.iter().enumerate() {
            let p = &self.policies[*i];
            let outcome = p.limiter.check(key, p.cost).await;
            let denied_or_failed = !matches!(outcome, Ok(d) if d.allowed);
            if denied_or_failed {
                self.refund_first(&work, j).await;
            }
            match outcome {
                Ok(d) => {
                    decisions.push(d);
                    if !d.allowed {
                        return self.finish(&work, &decisions);
                    }
                }
                Err(e) => return self.on_error(p, e),
            }
        }
        self.finish(&work, &decisions)
    }

    /// Refunds the charges of the first `n` pairs (a later check denied or failed).
    async fn refund_first(&self, work: &[(usize, String)], n: usize) {
        for (i, key) in &work[..n] {
            let p = &self.policies[*i];
            if let Err(e) = p.limiter.refund(key, p.cost).await {
                tracing::warn!(policy = %p.name, error = %e, "refund after a later denial failed");
            }
        }
    }

    fn on_error(&self, p: &HttpPolicy, e: Error) -> Verdict {
        self.count(p, "error");
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
        Verdict::Reject(
            Problem::new(status, detail)
                .with_type(self.problem_type.clone())
                .with_extension("policy", p.name.to_string().into())
                .into_response(),
        )
    }

    fn finish(&self, work: &[(usize, String)], decisions: &[Decision]) -> Verdict {
        let reports: Vec<PolicyReport<'_>> = decisions
            .iter()
            .zip(work)
            .map(|(d, (i, _))| {
                let p = &self.policies[*i];
                PolicyReport {
                    name: &p.name,
                    decision: *d,
                    window_secs: p.window_for(d),
                }
            })
            .collect();
        let denied = decisions
            .iter()
            .zip(work)
            .find(|(d, _)| !d.allowed)
            .map(|(d, (i, key))| (d, &self.policies[*i], key));
        match denied {
            None => {
                for (i, _) in work {
                    self.count(&self.policies[*i], "allowed");
                }
                Verdict::Allow {
                    headers: self.allowed_headers(&reports),
                    permit: None,
                }
            }
            Some((d, p, key)) => {
                self.count(p, "denied");
                tracing::debug!(
                    policy = %p.name,
                    key = %key,
                    retry_after_ms = d.retry_after.as_millis() as u64,
                    shadow = self.shadow,
                    "rate limited"
                );
                if self.shadow {
                    return Verdict::Allow {
                        headers: self.allowed_headers(&reports),
                        permit: None,
                    };
                }
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
                Verdict::Reject(response)
            }
        }
    }

    fn allowed_headers(&self, reports: &[PolicyReport<'_>]) -> Option<HeaderMap> {
        let h = self.headers;
        if !h.on_allowed_enabled() || !(h.ietf_enabled() || h.legacy_enabled()) {
            return None;
        }
        let mut map = HeaderMap::new();
        headers::write_fields(&mut map, reports, None, h);
        Some(map)
    }
}
