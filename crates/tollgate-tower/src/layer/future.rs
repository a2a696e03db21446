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

/// How a future's response is shaped: the rate layer answers in the inner service's own
/// body type ([`Plain`]), the concurrency layer in a [`ResponseBody`] that holds the
/// in-flight permit until the body ends ([`Wrapped`]).
trait BodyShape<B> {
    type Body;
    /// The inner service's response, with `permit` held as long as the body needs it.
    fn from_inner(response: Response<B>, permit: Option<InFlightPermit>) -> Response<Self::Body>;
    /// A response the layer wrote itself.
    fn from_layer(response: Response<Bytes>) -> Response<Self::Body>;
}

/// The body in a [`ResponseBody`].
struct Wrapped;

impl<B> BodyShape<B> for Wrapped {
    type Body = ResponseBody<B>;
    fn from_inner(response: Response<B>, permit: Option<InFlightPermit>) -> Response<Self::Body> {
        response.map(|body| ResponseBody::with_permit(body, permit))
    }
    fn from_layer(response: Response<Bytes>) -> Response<Self::Body> {
        response.map(ResponseBody::full)
    }
}

/// The inner service's body as is (the response is passed on without being taken apart),
/// the layer's bytes converted. Only for futures that never hold a permit (the rate layer's).
struct Plain;

impl<B: From<Bytes>> BodyShape<B> for Plain {
    type Body = B;
    fn from_inner(response: Response<B>, permit: Option<InFlightPermit>) -> Response<B> {
        debug_assert!(permit.is_none(), "a permit would be released early");
        drop(permit);
        response
    }
    fn from_layer(response: Response<Bytes>) -> Response<B> {
        response.map(B::from)
    }
}

/// Drives `state` to the response, shaped by `K`.
fn poll_state<S, Req, ResB, K>(
    mut state: Pin<&mut State<S, Req>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<K::Body>, S::Error>>
where
    S: Service<Req, Response = Response<ResB>>,
    K: BodyShape<ResB>,
{
    loop {
        match state.as_mut().project() {
            StateProj::Deciding { verdict, call } => {
                let verdict = ready!(verdict.as_mut().poll(cx));
                match verdict {
                    Verdict::Allow { headers, permit } => match call.take().map(|c| *c) {
                        Some((mut inner, req)) => {
                            let future = inner.call(req);
                            state.set(State::Calling {
                                future,
                                headers,
                                permit,
                            });
                        }
                        None => {
                            // Polled again after the call was made: unreachable by
                            // construction, answered without panicking.
                            state.set(State::Answered { response: None });
                        }
                    },
                    Verdict::Reject(response) => {
                        state.set(State::Answered {
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
                let mut response = ready!(future.poll(cx))?;
                if let Some(fields) = headers.take() {
                    fields.insert_into(response.headers_mut());
                }
                return Poll::Ready(Ok(K::from_inner(response, permit.take())));
            }
            StateProj::Answered { response } => {
                let response = response.take().map_or_else(
                    || {
                        let mut r = Response::new(Bytes::new());
                        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        r
                    },
                    |r| *r,
                );
                return Poll::Ready(Ok(K::from_layer(response)));
            }
        }
    }
}

impl<S, Req, ResB> Future for ResponseFuture<S, Req>
where
    S: Service<Req, Response = Response<ResB>>,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_state::<S, Req, ResB, Wrapped>(self.project().state, cx)
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
        poll_state::<S, Req, ResB, Plain>(self.project().inner.project().state, cx)
    }
}
