//! [`ResponseFuture`]: decide, then call the inner service (or answer directly); and
//! [`RateLimitFuture`], the same with the inner service's own body type.

use super::{AllowedFields, Verdict};
use crate::body::ResponseBody;
use crate::inflight::InFlightPermit;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower_service::Service;

pin_project! {
    /// The future of [`ConcurrencyLimit`](crate::concurrency::ConcurrencyLimit) services
    /// (and, inside [`RateLimitFuture`], of [`RateLimit`](super::RateLimit)): first the
    /// decision, then the inner service's response with the rate-limit fields added (or the
    /// layer's own rejection), its body wrapped in a [`ResponseBody`] (which holds the
    /// in-flight permit until the body ends).
    ///
    /// ```
    /// fn is_future<F: std::future::Future>() {}
    /// is_future::<tollgate_tower::ResponseFuture<tower::util::BoxCloneService<http::Request<String>, http::Response<String>, std::convert::Infallible>, http::Request<String>>>();
    /// ```
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        // Boxed: only stores that do I/O take this path, and keeping the request out of
        // line keeps the future small for the common, synchronous one.
        Deciding {
            verdict: BoxFuture<'static, Verdict>,
            call: Option<Box<(S, Req)>>,
        },
        Calling {
            #[pin]
            future: S::Future,
            headers: Option<AllowedFields>,
            permit: Option<InFlightPermit>,
        },
        Answered {
            response: Option<Box<Response<bytes::Bytes>>>,
        },
    }
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    pub(crate) fn deciding(verdict: BoxFuture<'static, Verdict>, inner: S, req: Req) -> Self {
        Self {
            state: State::Deciding {
                verdict,
                call: Some(Box::new((inner, req))),
            },
        }
    }

    pub(crate) fn calling(future: S::Future) -> Self {
        Self::calling_with(future, None, None)
    }

    /// The inner service was already called (the decision was made in `call`): add
    /// `headers` to its response and hold `permit` until its body ends.
    pub(crate) fn calling_with(
        future: S::Future,
        headers: Option<AllowedFields>,
        permit: Option<InFlightPermit>,
    ) -> Self {
        Self {
            state: State::Calling {
                future,
                headers,
                permit,
            },
        }
    }

    pub(crate) fn answered(response: Box<Response<bytes::Bytes>>) -> Self {
        Self {
            state: State::Answered {
                response: Some(response),
            },
        }
    }
}

impl<S, Req, ResB> Future for ResponseFuture<S, Req>
where
    S: Service<Req, Response = Response<ResB>>,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Deciding { verdict, call } => {
                    let verdict = ready!(verdict.as_mut().poll(cx));
                    match verdict {
                        Verdict::Allow { headers, permit } => match call.take().map(|c| *c) {
                            Some((mut inner, req)) => {
                                let future = inner.call(req);
                                this.state.set(State::Calling {
                                    future,
                                    headers,
                                    permit,
                                });
                            }
                            None => {
                                // Polled again after the call was made: unreachable by
                                // construction, answered without panicking.
                                this.state.set(State::Answered { response: None });
                            }
                        },
                        Verdict::Reject(response) => {
                            this.state.set(State::Answered {
                                response: Some(response),
                            });
                        }
                    }
                }
                StateProj::Calling {
                    future,
                    headers,
                    permit,
                } => {
                    let response = ready!(future.poll(cx))?;
                    let (mut parts, body) = response.into_parts();
                    if let Some(fields) = headers.take() {
                        fields.insert_into(&mut parts.headers);
                    }
                    let body = ResponseBody::with_permit(body, permit.take());
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                StateProj::Answered { response } => {
                    let response = response.take().map_or_else(
                        || {
                            let mut r = Response::new(bytes::Bytes::new());
                            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            r
                        },
                        |r| *r,
                    );
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
                }
            }
        }
    }
}

pin_project! {
    /// The future of [`RateLimit`](super::RateLimit) services: [`ResponseFuture`] with the
    /// response in the inner service's own body type (`ResB: From<Bytes>`, as axum's `Body`
    /// and `http_body_util::Full<Bytes>` are), so a framework that boxes foreign body types
    /// (axum does, for every layered route) has nothing to re-box.
    ///
    /// ```
    /// fn is_future<F: std::future::Future>() {}
    /// type Inner = tower::util::BoxCloneService<http::Request<String>, http::Response<axum::body::Body>, std::convert::Infallible>;
    /// is_future::<tollgate_tower::layer::RateLimitFuture<Inner, http::Request<String>>>();
    /// ```
    pub struct RateLimitFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        inner: ResponseFuture<S, Req>,
    }
}

impl<S, Req> RateLimitFuture<S, Req>
where
    S: Service<Req>,
{
    pub(crate) fn new(inner: ResponseFuture<S, Req>) -> Self {
        Self { inner }
    }
}

impl<S, Req, ResB> Future for RateLimitFuture<S, Req>
where
    S: Service<Req, Response = Response<ResB>>,
    ResB: From<Bytes>,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(self.project().inner.poll(cx))?;
        Poll::Ready(Ok(response.map(ResponseBody::into_plain)))
    }
}
