//! [`HttpPolicy`]: a named limiter, its key extractor and where it applies.

use super::erased::ErasedLimiter;
use crate::headers::{self, ValueBuf};
use crate::key::KeyExtractor;
use http::header::HeaderValue;
use http::request::Parts;
use http::{Method, StatusCode};
use std::sync::Arc;
use tollgate::store::multi::MultiBackend;
use tollgate::{Decision, Limiter};

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
pub(crate) struct RouteMatcher {
    pub(crate) paths: Vec<String>,
    pub(crate) prefixes: Vec<String>,
    pub(crate) methods: Vec<Method>,
}

impl RouteMatcher {
    pub(crate) fn matches(&self, parts: &Parts) -> bool {
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
    pub(crate) name: Arc<str>,
    pub(crate) limiter: Arc<dyn ErasedLimiter>,
    pub(crate) extractor: Arc<dyn KeyExtractor>,
    pub(crate) matcher: RouteMatcher,
    pub(crate) cost: u64,
    pub(crate) missing_key: MissingKey,
    pub(crate) key_builder: Option<tollgate::keys::KeyBuilder>,
    /// The capacity, `w` and preformatted `RateLimit-Policy` item of each rate of the
    /// limiter's policy.
    pub(crate) windows: Arc<[Window]>,
    /// `"name";r=`: the constant start of the policy's `RateLimit` item.
    pub(crate) ratelimit_prefix: Arc<str>,
    /// The limiter decides without I/O (see [`ErasedLimiter::decides_in_process`]).
    pub(crate) in_process: bool,
}

/// One rate of a policy as the `RateLimit-Policy` field reports it.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    pub(crate) capacity: u64,
    pub(crate) secs: u64,
    /// `"name";q=<capacity>;w=<secs>`, formatted once (`None` if the name cannot be a field
    /// value; such a name is refused by `build()` anyway).
    pub(crate) policy_item: Option<HeaderValue>,
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
    /// [`RateLimitLayerBuilder::build`](crate::layer::RateLimitLayerBuilder::build)) that counts every request under the key `extractor`
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
    /// checked by [`RateLimitLayerBuilder::build`](crate::layer::RateLimitLayerBuilder::build)).
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
    pub(crate) fn window_of(&self, d: &Decision) -> Option<&Window> {
        self.windows
            .iter()
            .find(|w| w.capacity == d.limit)
            .or_else(|| self.windows.first())
    }

    pub(crate) fn window_for(&self, d: &Decision) -> u64 {
        self.window_of(d).map_or(1, |w| w.secs)
    }

    /// Appends this policy's `RateLimit-Policy` item for `d`.
    pub(crate) fn push_policy_item(&self, out: &mut ValueBuf, d: &Decision) {
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
    pub(crate) fn policy_value(&self, d: &Decision) -> Option<HeaderValue> {
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

    /// This policy's `RateLimit` value for `d` alone (`"<name>";r=<remaining>;t=<secs>`),
    /// assembled in one stack buffer: the prefix (at most 68 bytes: the name has at most 64)
    /// and two numbers of at most 20 digits always fit in 128 bytes.
    pub(crate) fn ratelimit_value(&self, d: &Decision) -> Option<HeaderValue> {
        let mut remaining = itoa::Buffer::new();
        let mut secs = itoa::Buffer::new();
        let parts: [&[u8]; 4] = [
            self.ratelimit_prefix.as_bytes(),
            remaining.format(d.remaining).as_bytes(),
            b";t=",
            secs.format(d.reset_after_secs()).as_bytes(),
        ];
        let mut buf = [0u8; 128];
        let mut len = 0;
        for part in parts {
            let end = len + part.len();
            buf.get_mut(len..end)?.copy_from_slice(part);
            len = end;
        }
        HeaderValue::from_bytes(&buf[..len]).ok()
    }

    /// Appends this policy's `RateLimit` item for `d`.
    pub(crate) fn push_ratelimit_item(&self, out: &mut ValueBuf, d: &Decision) {
        out.push_str(&self.ratelimit_prefix);
        out.push_ratelimit_numbers(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Global;
    use tollgate::{Policy, Rate};

    /// The one-policy `RateLimit` value is byte-identical to the general list formatting,
    /// up to the longest name and the largest numbers (the stack buffer's bound).
    #[test]
    fn ratelimit_value_matches_the_list_formatting() {
        let limiter = || Limiter::memory(Policy::gcra(Rate::per_second(5).unwrap()).unwrap());
        for name in ["a", &"n".repeat(64)] {
            let p = HttpPolicy::new(name, limiter(), Global);
            for d in [
                Decision::from_parts(true, 5, 4, 0, 200_000, None),
                Decision::from_parts(true, u64::MAX, u64::MAX, 0, u64::MAX, None),
            ] {
                let mut out = ValueBuf::new();
                p.push_ratelimit_item(&mut out, &d);
                let value = p.ratelimit_value(&d).expect("fits");
                assert_eq!(value.as_bytes(), out.as_bytes());
                let report = headers::PolicyReport {
                    name,
                    decision: d,
                    window_secs: 1,
                };
                assert_eq!(value, headers::ratelimit_field(&[report]).unwrap());
            }
        }
    }
}
