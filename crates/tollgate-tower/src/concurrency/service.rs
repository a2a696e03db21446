//! [`ConcurrencyLimit`]: the service made by [`ConcurrencyLimitLayer`](super::ConcurrencyLimitLayer), and the per-request decision.

use super::layer::ConcurrencyState;
use crate::body::ResponseBody;
use crate::headers::Problem;
use crate::layer::{MissingKey, ResponseFuture, Verdict};
use http::{Request, Response, StatusCode};
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// The service made by [`ConcurrencyLimitLayer`](super::ConcurrencyLimitLayer).
///
/// ```
/// use tollgate_tower::concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer, LocalInFlight};
/// let layer = ConcurrencyLimitLayer::new("c", LocalInFlight::new(2), tollgate_tower::key::Global);
/// let svc: ConcurrencyLimit<()> = tower_layer::Layer::layer(&layer, ());
/// # let _ = svc;
/// ```
#[derive(Clone)]
pub struct ConcurrencyLimit<S> {
    pub(super) inner: S,
    pub(super) state: Arc<ConcurrencyState>,
}

impl<S> fmt::Debug for ConcurrencyLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("name", &self.state.name)
            .finish_non_exhaustive()
    }
}

fn count(name: &Arc<str>, outcome: &'static str) {
    metrics::counter!(
        "tollgate_http_requests_total",
        "policy" => metrics::SharedString::from(Arc::clone(name)),
        "outcome" => outcome,
        "mode" => "enforce",
    )
    .increment(1);
}

impl ConcurrencyState {
    fn problem(&self, status: StatusCode, detail: String) -> Response<bytes::Bytes> {
        Problem::new(status, detail)
            .with_extension("policy", self.name.to_string().into())
            .into_response()
    }

    async fn decide(self: Arc<Self>, key: String) -> Verdict {
        match self.limit.try_acquire(&key).await {
            Ok(Some(permit)) => {
                count(&self.name, "allowed");
                Verdict::Allow {
                    headers: None,
                    permit: Some(permit),
                }
            }
            Ok(None) => {
                count(&self.name, "denied");
                tracing::debug!(policy = %self.name, "concurrency limit full");
                let mut response = self.problem(
                    self.full_status,
                    format!(
                        "too many requests in flight for concurrency limit {:?} (at most {})",
                        &*self.name,
                        self.limit.capacity()
                    ),
                );
                if let Some(secs) = self.retry_after_secs {
                    response
                        .headers_mut()
                        .insert(http::header::RETRY_AFTER, secs.into());
                }
                Verdict::Reject(Box::new(response))
            }
            Err(e) => {
                count(&self.name, "error");
                tracing::warn!(policy = %self.name, error = %e, "concurrency limit store error");
                Verdict::Reject(Box::new(self.problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "concurrency limiting is unavailable ({:?}); try again later",
                        &*self.name
                    ),
                )))
            }
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ConcurrencyLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    ReqB: Send + 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let key = match self.state.extractor.extract(&parts) {
            Ok(key) => key,
            Err(err) => match &self.state.missing_key {
                MissingKey::Fallback(key) => key.clone(),
                MissingKey::Skip => {
                    return ResponseFuture::calling(
                        self.inner.call(Request::from_parts(parts, body)),
                    )
                }
                MissingKey::Reject(status) => {
                    count(&self.state.name, "no_key");
                    return ResponseFuture::answered(Box::new(self.state.problem(
                        *status,
                        format!(
                            "the request cannot be concurrency limited by {:?}: {err}",
                            &*self.state.name
                        ),
                    )));
                }
            },
        };
        let verdict = Box::pin(Arc::clone(&self.state).decide(key));
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::deciding(verdict, ready, Request::from_parts(parts, body))
    }
}
