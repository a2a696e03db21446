//! The rate-limit layer: [`RateLimitLayer`] (a `tower::Layer`), its service [`RateLimit`] and
//! its future [`ResponseFuture`].
//!
//! A layer holds one or more [`HttpPolicy`]s. Each policy names a [`tollgate::Limiter`], a key
//! extractor and, optionally, the routes and methods it applies to. For every request the
//! layer finds the policies that apply, extracts their keys and decides:
//!
//! - **one policy**: one atomic `check` on its limiter;
//! - **several policies** (e.g. per-user *and* global): *all-or-nothing per request*, in **one
//!   multi-key call** ([`tollgate::Limiter::check_all`], the store capability
//!   [`tollgate::store::multi`]) when the policies' limiters share a backend type (every
//!   tollgate store: memory, Redis — one script call, one round trip —, PostgreSQL, SQLite;
//!   `Arc<dyn DynMultiBackend>` for stores chosen at run time, which must then be one store):
//!   every key admits and is charged, or nothing is charged anywhere, atomically. Limiters of
//!   *different* backend types in one layer cannot share a call: the layer then peeks every
//!   limiter, checks them in order and refunds the earlier charges if a later check denies
//!   (a concurrent request may briefly see the units about to be refunded as taken: denied a
//!   little early, never admitted beyond a limit). A denial reports the `RateLimit` fields of
//!   the policies that denied (the others were not charged).
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

use crate::headers::{self, HeaderOptions, PolicyReport, Problem, ValueBuf};
use crate::key::{KeyError, KeyExtractor};
use futures_util::future::BoxFuture;
use http::header::HeaderValue;
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::sync::Arc;
use tollgate::store::memory::MemoryBackend;
use tollgate::store::multi::{MultiBackend, MultiDecision};
use tollgate::store::Backend;
use tollgate::{Decision, Error, LimitCheck, Limiter, Policy};

/// A limiter of any store, behind one object type (so one layer can mix stores).
///
/// The `*_now` methods decide on the calling thread; the layer uses them only when
/// [`decides_in_process`](ErasedLimiter::decides_in_process) says the backend does no I/O (the
/// memory store), so a request is decided inside `Service::call` without a boxed future.
pub(crate) trait ErasedLimiter: Send + Sync + 'static {
    fn policy(&self) -> &Policy;
    fn decides_in_process(&self) -> bool;
    fn check_now(&self, key: &str, cost: u64) -> Result<Decision, Error>;
    fn peek_now(&self, key: &str, cost: u64) -> Result<Decision, Error>;
    fn refund_now(&self, key: &str, amount: u64) -> Result<(), Error>;
    fn check<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, Error>>;
    fn peek<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, Error>>;
    fn refund<'a>(&'a self, key: &'a str, amount: u64) -> BoxFuture<'a, Result<(), Error>>;
    /// The limiter itself, to find the other limiters of a multi-key call of one type.
    fn as_any(&self) -> &dyn Any;
    /// [`Limiter::check_all`] over `items`, run by this limiter's backend type, when every
    /// item's limiter is of that type (`None` otherwise: the layer then falls back to peek,
    /// check and refund).
    fn check_all_now(&self, items: &[Item<'_>]) -> Option<Result<MultiDecision, Error>>;
    /// Async [`check_all_now`](Self::check_all_now).
    fn check_all<'a>(
        &'a self,
        items: &'a [Item<'a>],
    ) -> Option<BoxFuture<'a, Result<MultiDecision, Error>>>;
}

/// One item of a multi-key call: a limiter, a key, a cost.
pub(crate) type Item<'a> = (&'a dyn ErasedLimiter, &'a str, u64);

/// The items as [`LimitCheck`]s of `Limiter<B>`, if every limiter is one.
fn typed<'a, B: MultiBackend>(items: &[Item<'a>]) -> Option<Vec<LimitCheck<'a, B>>> {
    items
        .iter()
        .map(|(limiter, key, cost)| {
            let limiter: &'a dyn ErasedLimiter = *limiter;
            limiter
                .as_any()
                .downcast_ref::<Limiter<B>>()
                .map(|l| l.item(key, *cost))
        })
        .collect()
}

/// Whether `B` is the memory store's backend, whose operations never wait on I/O (a short
/// critical section on a sharded map), so they can run inside `Service::call`.
fn is_in_process_backend<B: Backend>() -> bool {
    let id = TypeId::of::<B>();
    id == TypeId::of::<MemoryBackend>()
        || id == TypeId::of::<Arc<MemoryBackend>>()
        || id == TypeId::of::<Box<MemoryBackend>>()
}

impl<B: MultiBackend> ErasedLimiter for Limiter<B> {
    fn policy(&self) -> &Policy {
        Limiter::policy(self)
    }
    fn decides_in_process(&self) -> bool {
        is_in_process_backend::<B>()
    }
    fn check_now(&self, key: &str, cost: u64) -> Result<Decision, Error> {
        self.check_n(key, cost)
    }
    fn peek_now(&self, key: &str, cost: u64) -> Result<Decision, Error> {
        Limiter::peek(self, key, cost)
    }
    fn refund_now(&self, key: &str, amount: u64) -> Result<(), Error> {
        Limiter::refund(self, key, amount)
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
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn check_all_now(&self, items: &[Item<'_>]) -> Option<Result<MultiDecision, Error>> {
        typed::<B>(items).map(|items| Limiter::check_all(&items))
    }
    fn check_all<'a>(
        &'a self,
        items: &'a [Item<'a>],
    ) -> Option<BoxFuture<'a, Result<MultiDecision, Error>>> {
        let items = typed::<B>(items)?;
        Some(Box::pin(
            async move { Limiter::check_all_async(&items).await },
        ))
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
    /// The capacity, `w` and preformatted `RateLimit-Policy` item of each rate of the
    /// limiter's policy.
    windows: Arc<[Window]>,
    /// `"name";r=`: the constant start of the policy's `RateLimit` item.
    ratelimit_prefix: Arc<str>,
    /// The limiter decides without I/O (see [`ErasedLimiter::decides_in_process`]).
    in_process: bool,
}

/// One rate of a policy as the `RateLimit-Policy` field reports it.
#[derive(Clone, Debug)]
struct Window {
    capacity: u64,
    secs: u64,
    /// `"name";q=<capacity>;w=<secs>`, formatted once (`None` if the name cannot be a field
    /// value; such a name is refused by `build()` anyway).
    policy_item: Option<HeaderValue>,
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
    pub fn new<B: MultiBackend>(
        name: impl Into<String>,
        limiter: Limiter<B>,
        extractor: impl KeyExtractor,
    ) -> Self {
        let name: Arc<str> = name.into().into();
        let windows: Vec<Window> = limiter
            .policy()
            .rates()
            .iter()
            .map(|r| {
                let (capacity, secs) = headers::quota_window(limiter.policy().algorithm(), r);
                let mut item = ValueBuf::new();
                item.push_policy_item(&name, capacity, secs);
                Window {
                    capacity,
                    secs,
                    policy_item: item.to_value(),
                }
            })
            .collect();
        let in_process = limiter.decides_in_process();
        Self {
            ratelimit_prefix: format!("\"{name}\";r=").into(),
            name,
            in_process,
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

    /// The rate a decision describes: the one whose capacity is the decision's limit, else
    /// the first.
    fn window_of(&self, d: &Decision) -> Option<&Window> {
        self.windows
            .iter()
            .find(|w| w.capacity == d.limit)
            .or_else(|| self.windows.first())
    }

    fn window_for(&self, d: &Decision) -> u64 {
        self.window_of(d).map_or(1, |w| w.secs)
    }

    /// Appends this policy's `RateLimit-Policy` item for `d`.
    fn push_policy_item(&self, out: &mut ValueBuf, d: &Decision) {
        match self.window_of(d) {
            Some(Window {
                capacity,
                policy_item: Some(item),
                ..
            }) if *capacity == d.limit => out.push_bytes(item.as_bytes()),
            _ => out.push_policy_item(&self.name, d.limit, self.window_for(d)),
        }
    }

    /// This policy's `RateLimit-Policy` value for `d` alone: the preformatted item when `d`
    /// describes one of the policy's rates (a reference-count increment), else formatted.
    fn policy_value(&self, d: &Decision) -> Option<HeaderValue> {
        match self.window_of(d) {
            Some(Window {
                capacity,
                policy_item: Some(item),
                ..
            }) if *capacity == d.limit => Some(item.clone()),
            _ => {
                let mut out = ValueBuf::new();
                self.push_policy_item(&mut out, d);
                out.to_value()
            }
        }
    }

    /// Appends this policy's `RateLimit` item for `d`.
    fn push_ratelimit_item(&self, out: &mut ValueBuf, d: &Decision) {
        out.push_str(&self.ratelimit_prefix);
        out.push_ratelimit_numbers(d);
    }
}

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
static COUNTER_METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

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
    Reject(http::Response<bytes::Bytes>),
}

/// What the layer decided: call the inner service (adding fields), or answer itself.
pub(crate) enum Verdict {
    Allow {
        headers: Option<AllowedFields>,
        permit: Option<crate::concurrency::InFlightPermit>,
    },
    Reject(http::Response<bytes::Bytes>),
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
        let mut work = Work::Empty;
        for (i, p) in self.policies.iter().enumerate() {
            if !p.matcher.matches(parts) {
                continue;
            }
            let extracted =
                p.extractor
                    .extract_borrowed(parts)
                    .and_then(|raw| match &p.key_builder {
                        None => Ok(raw),
                        Some(keys) => keys
                            .build(&raw)
                            .map(Cow::Owned)
                            .map_err(|e| KeyError::Custom(format!("the key is unusable: {e}"))),
                    });
            match extracted {
                Ok(key) => work.push((i, key)),
                Err(err) => match &p.missing_key {
                    MissingKey::Skip => {}
                    MissingKey::Fallback(key) => work.push((i, Cow::Owned(key.clone()))),
                    MissingKey::Reject(status) => {
                        self.count(i, Outcome::NoKey);
                        tracing::debug!(policy = %p.name, error = %err, "no rate-limit key");
                        if self.shadow {
                            continue;
                        }
                        return Plan::Reject(self.missing_key_response(p, *status, &err));
                    }
                },
            }
        }
        match work {
            Work::Empty => Plan::Pass,
            work => Plan::Decide(work),
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
            match p.limiter.peek(key, p.cost).await {
                Ok(d) => {
                    decisions.push(d);
                    if !d.allowed {
                        return self.finish(work, &decisions);
                    }
                }
                Err(e) => return self.on_error(*i, e),
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
            match outcome {
                Ok(d) => {
                    decisions.push(d);
                    if !d.allowed {
                        return self.finish(work, &decisions);
                    }
                }
                Err(e) => return self.on_error(*i, e),
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
            match p.limiter.peek_now(key, p.cost) {
                Ok(d) => {
                    decisions.push(d);
                    if !d.allowed {
                        return self.finish(work, &decisions);
                    }
                }
                Err(e) => return self.on_error(*i, e),
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
            match outcome {
                Ok(d) => {
                    decisions.push(d);
                    if !d.allowed {
                        return self.finish(work, &decisions);
                    }
                }
                Err(e) => return self.on_error(*i, e),
            }
        }
        self.finish(work, &decisions)
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
        Verdict::Reject(
            Problem::new(status, detail)
                .with_type(self.problem_type.clone())
                .with_extension("policy", p.name.to_string().into())
                .into_response(),
        )
    }

    fn finish(&self, work: &[Pair<'_>], decisions: &[Decision]) -> Verdict {
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
                Verdict::Reject(response)
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
        let applied = || {
            decisions
                .iter()
                .zip(work)
                .map(|(d, (i, _))| (&self.policies[*i], d))
        };
        let mut fields = AllowedFields::default();
        if h.ietf_enabled() {
            fields.ratelimit_policy = match decisions {
                [d] => self.policies[work[0].0].policy_value(d),
                _ => {
                    let mut out = ValueBuf::new();
                    for (n, (p, d)) in applied().enumerate() {
                        if n > 0 {
                            out.push_str(headers::LIST_SEPARATOR);
                        }
                        p.push_policy_item(&mut out, d);
                    }
                    out.to_value()
                }
            };
            let mut out = ValueBuf::new();
            for (n, (p, d)) in applied().enumerate() {
                if n > 0 {
                    out.push_str(headers::LIST_SEPARATOR);
                }
                p.push_ratelimit_item(&mut out, d);
            }
            fields.ratelimit = out.to_value();
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
