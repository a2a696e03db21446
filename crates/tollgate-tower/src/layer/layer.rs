//! [`RateLimitLayer`] and its builder.

use super::{metric_keys, Gate, HttpPolicy, RateLimit};
use crate::headers::{is_valid_policy_name, HeaderOptions};
use http::StatusCode;
use std::fmt;
use std::sync::Arc;
use tower_layer::Layer;

/// A `tower::Layer` that rate-limits requests with one or more [`HttpPolicy`]s.
///
/// Cloning the layer, or the services it makes, shares the same limiters: every route and
/// every connection counts against the same state (unlike tower's own `RateLimit`, whose
/// clones each get their own budget).
///
/// ```
/// use tollgate::{Limiter, Policy, Rate};
/// use tollgate_tower::{HttpPolicy, RateLimitLayer, key::Global};
/// let layer = RateLimitLayer::builder()
///     .policy(HttpPolicy::new("global", Limiter::memory(Policy::gcra(Rate::per_second(100).unwrap()).unwrap()), Global))
///     .build()
///     .unwrap();
/// let handler = tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::from("hello")))
/// });
/// let svc = tower::ServiceBuilder::new().layer(layer.clone()).service(handler);
/// let another = tower_layer::Layer::layer(&layer, svc.clone()); // same limiter state
/// # let _ = another;
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    gate: Arc<Gate>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policies", &self.gate.policies)
            .field("shadow", &self.gate.shadow)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Starts a builder.
    ///
    /// ```
    /// let b = tollgate_tower::RateLimitLayer::builder().shadow(true);
    /// # let _ = b;
    /// ```
    pub fn builder() -> RateLimitLayerBuilder {
        RateLimitLayerBuilder::default()
    }

    /// A layer with a single policy and default settings.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// use tollgate_tower::{HttpPolicy, RateLimitLayer, key::PeerIp};
    /// let layer = RateLimitLayer::new(HttpPolicy::new("ip", Limiter::memory(Policy::gcra(Rate::per_second(5).unwrap()).unwrap()), PeerIp::new()));
    /// assert!(layer.is_ok());
    /// ```
    pub fn new(policy: HttpPolicy) -> Result<Self, LayerError> {
        Self::builder().policy(policy).build()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_gate(inner, Arc::clone(&self.gate))
    }
}

/// A configuration the layer refuses, with the reason.
///
/// ```
/// use tollgate_tower::{RateLimitLayer, LayerError};
/// assert!(matches!(RateLimitLayer::builder().build(), Err(LayerError::NoPolicies)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayerError {
    /// A layer without policies would limit nothing.
    NoPolicies,
    /// A policy name that is not 1–64 characters of `A-Z a-z 0-9 - _ . : /`.
    InvalidPolicyName(String),
    /// Two policies with the same name (their `RateLimit` fields could not be told apart).
    DuplicatePolicyName(String),
    /// A per-request cost of zero, or above what the policy can ever admit.
    InvalidCost {
        /// The policy.
        policy: String,
        /// The cost configured.
        cost: u64,
        /// The largest cost the policy admits.
        max: u64,
    },
    /// The status for denials is not a 4xx or 5xx.
    InvalidStatus(u16),
}

impl fmt::Display for LayerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerError::NoPolicies => f.write_str("a rate-limit layer needs at least one policy"),
            LayerError::InvalidPolicyName(n) => write!(
                f,
                "invalid policy name {n:?}: use 1 to 64 characters of A-Z a-z 0-9 - _ . : /"
            ),
            LayerError::DuplicatePolicyName(n) => write!(f, "two policies are named {n:?}"),
            LayerError::InvalidCost { policy, cost, max } => write!(
                f,
                "policy {policy:?}: a cost of {cost} per request is invalid (must be 1..={max})"
            ),
            LayerError::InvalidStatus(s) => {
                write!(f, "{s} is not an error status (expected 4xx or 5xx)")
            }
        }
    }
}

impl std::error::Error for LayerError {}

/// Builds a [`RateLimitLayer`].
///
/// ```
/// use tollgate::{Limiter, Policy, Rate};
/// use tollgate_tower::{HttpPolicy, RateLimitLayer, headers::HeaderOptions, key::PeerIp};
/// let layer = RateLimitLayer::builder()
///     .policy(HttpPolicy::new("ip", Limiter::memory(Policy::gcra(Rate::per_second(5).unwrap()).unwrap()), PeerIp::new()))
///     .headers(HeaderOptions::default().legacy(true))
///     .problem_type("https://example.com/problems/rate-limited")
///     .shadow(false)
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[must_use = "call build()"]
pub struct RateLimitLayerBuilder {
    policies: Vec<HttpPolicy>,
    shadow: bool,
    headers: HeaderOptions,
    problem_type: String,
    denied_status: StatusCode,
}

impl Default for RateLimitLayerBuilder {
    fn default() -> Self {
        Self {
            policies: Vec::new(),
            shadow: false,
            headers: HeaderOptions::default(),
            problem_type: "about:blank".to_string(),
            denied_status: StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl fmt::Debug for RateLimitLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field("policies", &self.policies)
            .field("shadow", &self.shadow)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayerBuilder {
    /// Adds a policy. Policies apply in the order added.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// use tollgate_tower::{HttpPolicy, RateLimitLayer, key::Global};
    /// let b = RateLimitLayer::builder()
    ///     .policy(HttpPolicy::new("g", Limiter::memory(Policy::gcra(Rate::per_second(5).unwrap()).unwrap()), Global));
    /// # let _ = b;
    /// ```
    pub fn policy(mut self, policy: HttpPolicy) -> Self {
        self.policies.push(policy);
        self
    }

    /// Shadow (dry-run) mode: decide, write fields and metrics, but never block.
    ///
    /// ```
    /// let b = tollgate_tower::RateLimitLayer::builder().shadow(true);
    /// # let _ = b;
    /// ```
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// Which rate-limit fields to write.
    ///
    /// ```
    /// let b = tollgate_tower::RateLimitLayer::builder()
    ///     .headers(tollgate_tower::headers::HeaderOptions::default().on_allowed(false));
    /// # let _ = b;
    /// ```
    pub fn headers(mut self, headers: HeaderOptions) -> Self {
        self.headers = headers;
        self
    }

    /// The `type` URI of the problem+json bodies (default `about:blank`).
    ///
    /// ```
    /// let b = tollgate_tower::RateLimitLayer::builder().problem_type("https://example.com/probs/limit");
    /// # let _ = b;
    /// ```
    pub fn problem_type(mut self, uri: impl Into<String>) -> Self {
        self.problem_type = uri.into();
        self
    }

    /// The status of denials (default 429; must be 4xx or 5xx).
    ///
    /// ```
    /// let b = tollgate_tower::RateLimitLayer::builder().denied_status(http::StatusCode::SERVICE_UNAVAILABLE);
    /// # let _ = b;
    /// ```
    pub fn denied_status(mut self, status: StatusCode) -> Self {
        self.denied_status = status;
        self
    }

    /// Validates and builds the layer.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// use tollgate_tower::{HttpPolicy, RateLimitLayer, LayerError, key::Global};
    /// let l = || Limiter::memory(Policy::gcra(Rate::per_second(5).unwrap()).unwrap());
    /// let dup = RateLimitLayer::builder()
    ///     .policy(HttpPolicy::new("a", l(), Global))
    ///     .policy(HttpPolicy::new("a", l(), Global))
    ///     .build();
    /// assert_eq!(dup.unwrap_err(), LayerError::DuplicatePolicyName("a".into()));
    /// let too_costly = RateLimitLayer::new(HttpPolicy::new("b", l(), Global).cost(6));
    /// assert!(matches!(too_costly, Err(LayerError::InvalidCost { cost: 6, max: 5, .. })));
    /// ```
    pub fn build(self) -> Result<RateLimitLayer, LayerError> {
        if self.policies.is_empty() {
            return Err(LayerError::NoPolicies);
        }
        if !(self.denied_status.is_client_error() || self.denied_status.is_server_error()) {
            return Err(LayerError::InvalidStatus(self.denied_status.as_u16()));
        }
        for (i, p) in self.policies.iter().enumerate() {
            if !is_valid_policy_name(&p.name) {
                return Err(LayerError::InvalidPolicyName(p.name.to_string()));
            }
            if self.policies[..i].iter().any(|q| q.name == p.name) {
                return Err(LayerError::DuplicatePolicyName(p.name.to_string()));
            }
            let max = p.limiter.policy().max_cost();
            if p.cost == 0 || p.cost > max {
                return Err(LayerError::InvalidCost {
                    policy: p.name.to_string(),
                    cost: p.cost,
                    max,
                });
            }
        }
        let metric_keys = self
            .policies
            .iter()
            .map(|p| metric_keys(p, self.shadow))
            .collect();
        Ok(RateLimitLayer {
            gate: Arc::new(Gate {
                metric_keys,
                policies: self.policies,
                shadow: self.shadow,
                headers: self.headers,
                problem_type: self.problem_type,
                denied_status: self.denied_status,
            }),
        })
    }
}
