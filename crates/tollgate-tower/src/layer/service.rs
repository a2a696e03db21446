//! [`RateLimit`]: the service made by [`RateLimitLayer`](super::RateLimitLayer).

use super::{Gate, Plan, RateLimitFuture, ResponseFuture, Verdict};
use bytes::Bytes;
use http::{Request, Response};
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;
use tracing::Instrument;

/// Rate-limits requests before they reach `S`. Clones share the layer's limiters.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate};
/// use tollgate_tower::{HttpPolicy, RateLimit, RateLimitLayer, key::Global};
/// use tower::{Service, ServiceExt};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let layer = RateLimitLayer::new(HttpPolicy::new("g", Limiter::memory(Policy::gcra(Rate::per_minute(1).unwrap()).unwrap()), Global)).unwrap();
/// let handler = tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::from("ok")))
/// });
/// let mut svc: RateLimit<_> = tower_layer::Layer::layer(&layer, handler);
/// let first = svc.ready().await.unwrap().call(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(first.status(), 200);
/// let mut clone = svc.clone(); // shares the budget
/// let second = clone.ready().await.unwrap().call(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(second.status(), 429);
/// assert_eq!(second.headers()["retry-after"], "60");
/// # });
/// ```
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("policies", &self.gate.policies.len())
            .field("shadow", &self.gate.shadow)
            .finish_non_exhaustive()
    }
}

impl<S> RateLimit<S> {
    pub(crate) fn from_gate(inner: S, gate: Arc<Gate>) -> Self {
        Self { inner, gate }
    }

    /// The wrapped service.
    ///
    /// ```
    /// # use tollgate::{Limiter, Policy, Rate};
    /// # use tollgate_tower::{HttpPolicy, RateLimitLayer, key::Global};
    /// # let layer = RateLimitLayer::new(HttpPolicy::new("g", Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap()), Global)).unwrap();
    /// let svc = tower_layer::Layer::layer(&layer, 42u32);
    /// assert_eq!(*svc.get_ref(), 42);
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    ReqB: Send + 'static,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = RateLimitFuture<S, Request<ReqB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (parts, body) = req.into_parts();
        // Keys may borrow from `parts`: everything that needs them happens in this statement.
        let step = match self.gate.plan(&parts) {
            Plan::Pass => Step::Pass,
            Plan::Reject(response) => Step::Answer(response),
            Plan::Decide(work) if self.gate.decides_now(&work) => {
                // Every limiter decides without I/O (the memory store): decide here, call the
                // inner service (driven ready by `poll_ready`) at once, no boxed future. The
                // span only when a tracing subscriber takes DEBUG: with tracing's `log`
                // feature (which axum's default features turn on) building a span that no
                // subscriber wants still costs a trip through `log` on every request.
                let verdict = if tracing::level_enabled!(tracing::Level::DEBUG) {
                    let span = tracing::debug_span!(
                        "tollgate.http.ratelimit",
                        method = %parts.method,
                        path = %parts.uri.path(),
                    );
                    span.in_scope(|| self.gate.decide_now(&work))
                } else {
                    self.gate.decide_now(&work)
                };
                match verdict {
                    Verdict::Allow { headers, permit } => Step::Call(headers, permit),
                    Verdict::Reject(response) => Step::Answer(response),
                }
            }
            Plan::Decide(work) => {
                let span = tracing::debug_span!(
                    "tollgate.http.ratelimit",
                    method = %parts.method,
                    path = %parts.uri.path(),
                );
                let decision = Arc::clone(&self.gate).decide(work.into_owned());
                Step::Decide(Box::pin(decision.instrument(span)))
            }
        };
        let req = Request::from_parts(parts, body);
        RateLimitFuture::new(match step {
            Step::Pass => ResponseFuture::calling(self.inner.call(req)),
            Step::Call(headers, permit) => {
                ResponseFuture::calling_with(self.inner.call(req), headers, permit)
            }
            Step::Answer(response) => ResponseFuture::answered(response),
            Step::Decide(verdict) => {
                // The clone takes the place of the service that was driven ready.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::deciding(verdict, ready, req)
            }
        })
    }
}

/// What `call` does once the keys (which may borrow from the request head) are no longer
/// needed.
enum Step {
    /// No policy applies: call the inner service.
    Pass,
    /// Decided and allowed: call the inner service, add these fields.
    Call(
        Option<super::AllowedFields>,
        Option<crate::concurrency::InFlightPermit>,
    ),
    /// Answer without calling the inner service.
    Answer(Box<Response<bytes::Bytes>>),
    /// Decide in the response future (a store that does I/O), then call.
    Decide(futures_util::future::BoxFuture<'static, Verdict>),
}
