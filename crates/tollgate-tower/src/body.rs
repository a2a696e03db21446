//! [`ResponseBody`]: the body of responses that went through a tollgate layer.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::inflight::InFlightPermit;

/// The boxed error type of [`ResponseBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// Either the inner service's body (possibly holding an in-flight permit until it ends),
    /// or a body written by the layer (a problem+json rejection).
    ///
    /// ```
    /// use http_body::Body;
    /// let b: tollgate_tower::ResponseBody<String> = tollgate_tower::ResponseBody::full("hi".into());
    /// assert_eq!(b.size_hint().exact(), Some(2));
    /// ```
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
            permit: Option<InFlightPermit>,
        },
        Full {
            data: Option<Bytes>,
        },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    ///
    /// ```
    /// let _ = tollgate_tower::ResponseBody::inner(String::from("ok"));
    /// ```
    pub fn inner(body: B) -> Self {
        Self::with_permit(body, None)
    }

    pub(crate) fn with_permit(body: B, permit: Option<InFlightPermit>) -> Self {
        Self {
            kind: Kind::Inner { body, permit },
        }
    }

    /// A complete body.
    ///
    /// ```
    /// let _ = tollgate_tower::ResponseBody::<String>::full(bytes::Bytes::from_static(b"{}"));
    /// ```
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

impl<B: From<Bytes>> ResponseBody<B> {
    /// The body as the inner service's own type: the inner body as is, or the layer's bytes
    /// converted. Only for responses without an in-flight permit (the rate layer's: a permit
    /// must be held until the body ends, which only the wrapper can do).
    pub(crate) fn into_plain(self) -> B {
        match self.kind {
            Kind::Inner { body, permit } => {
                debug_assert!(permit.is_none(), "a permit would be released early");
                drop(permit);
                body
            }
            Kind::Full { data } => B::from(data.unwrap_or_default()),
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Inner { permit, .. } => f
                .debug_struct("ResponseBody::Inner")
                .field("holds_permit", &permit.is_some())
                .finish_non_exhaustive(),
            Kind::Full { data } => f
                .debug_struct("ResponseBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Inner { body, permit } => {
                let polled = body.poll_frame(cx);
                if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = &polled {
                    // The response is over: give the in-flight slot back now.
                    permit.take();
                }
                polled.map(|frame| frame.map(|r| r.map_err(Into::into)))
            }
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body, .. } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body, .. } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
