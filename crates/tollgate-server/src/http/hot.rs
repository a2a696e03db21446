//! The hot path of the HTTP API: what each connection serves ([`Dispatch`]: `POST /v1/check`
//! goes straight to its handler, everything else through the axum router) and the decision
//! response, written directly (the JSON body and the `RateLimit` fields without
//! intermediate values).
//!
//! Measured with `cargo bench -p tollgate-server --bench vs_throttlecrab`: the router lookup,
//! the error-rewriting middleware (its per-request `String` of the path and boxed future),
//! serde's generic serializer and the per-request validation of the `RateLimit-Policy` value
//! were a fifth of the server's own CPU time per check. The responses are the same: a test
//! compares the body with serde's, and the router still answers every other request
//! (`405` on `GET /v1/check`, `404`, the JSON error bodies).

use super::{decide, router, HangUp, HttpState, SEMAPHORE_ACQUIRE_PATH};
use crate::app::{push_rate_limit_field, Outcome, PolicyEntry};
use axum::body::Body;
use axum::http::header::{HeaderName, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, Method, Request};
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use http_body_util::{Either, Full};
use std::cell::RefCell;
use std::convert::Infallible;
use std::sync::Arc;
use tower::ServiceExt;

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// What every HTTP connection serves: `POST /v1/check` goes to its handler directly (no
/// router lookup, no middleware: its responses, errors included, are already JSON); every
/// other request goes through [`router`], which answers it exactly as before.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use tollgate_server::{app::App, config::Config, http::{Dispatch, HttpState}};
/// let mut config = Config::default();
/// config.add_policy("api", None, "2/s", None, |f| f.to_string()).unwrap();
/// let app = Arc::new(App::new(&config, None).unwrap());
/// let state = HttpState { app, max_body: 65536, request_timeout: std::time::Duration::from_secs(10) };
/// let dispatch = Arc::new(Dispatch::new(state));
/// let req = axum::http::Request::post("/v1/check").body(r#"{"policy":"api","key":"u1"}"#.to_string()).unwrap();
/// let res = Arc::clone(&dispatch).call(req).await.unwrap();
/// assert_eq!(res.headers()["ratelimit"], "\"api\";r=1;t=1");
/// let req = axum::http::Request::get("/v1/check").body(String::new()).unwrap();
/// assert_eq!(dispatch.call(req).await.unwrap().status(), 405);
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct Dispatch {
    state: HttpState,
    router: Router,
}

impl Dispatch {
    /// The dispatch for `state` (builds the router once).
    pub fn new(state: HttpState) -> Self {
        Dispatch {
            router: router(state.clone()),
            state,
        }
    }

    /// Answers one request.
    pub async fn call<B>(self: Arc<Self>, req: Request<B>) -> Result<DispatchResponse, Infallible>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.answer(req, None).await
    }

    /// Answers one request of a connection watched by `hang_up` (given to the requests that
    /// can wait).
    async fn answer<B>(
        &self,
        req: Request<B>,
        hang_up: Option<&HangUp>,
    ) -> Result<DispatchResponse, Infallible>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if req.method() == Method::POST && req.uri().path() == "/v1/check" {
            return Ok(match decide(&self.state, req.into_body(), true).await {
                Ok(r) => r,
                Err(e) => e.into_response().map(DispatchBody::Right),
            });
        }
        let mut req = req.map(Body::new);
        if let Some(hang_up) = hang_up.filter(|_| req.uri().path() == SEMAPHORE_ACQUIRE_PATH) {
            req.extensions_mut().insert(hang_up.clone());
        }
        let response = self.router.clone().oneshot(req).await?;
        Ok(response.map(DispatchBody::Right))
    }
}

/// The body of [`Dispatch`]'s responses: a decision's JSON as it is (the hot path: no boxed
/// body per check), or the router's body.
pub type DispatchBody = Either<Full<Bytes>, Body>;

/// A response of [`Dispatch`].
pub type DispatchResponse = axum::http::Response<DispatchBody>;

/// What one accepted HTTP connection serves: the shared [`Dispatch`], with the watcher of
/// this connection's hang-up for the requests that can wait.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use tollgate_server::{app::App, config::Config, http::{ConnIo, ConnService, Dispatch, HttpState}};
/// let app = Arc::new(App::new(&Config::default(), None).unwrap());
/// let state = HttpState { app, max_body: 65536, request_timeout: std::time::Duration::from_secs(10) };
/// let dispatch = Arc::new(Dispatch::new(state));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
/// let (accepted, _client) = tokio::join!(listener.accept(), client);
/// let io = ConnIo::new(accepted.unwrap().0).unwrap();
/// let conn = Arc::new(ConnService::new(dispatch, io.hang_up()));
/// let req = axum::http::Request::get("/health").body(String::new()).unwrap();
/// assert_eq!(conn.call(req).await.unwrap().status(), 200);
/// # });
/// ```
#[derive(Debug)]
pub struct ConnService {
    dispatch: Arc<Dispatch>,
    hang_up: HangUp,
}

impl ConnService {
    /// The service of the connection `hang_up` watches.
    pub fn new(dispatch: Arc<Dispatch>, hang_up: HangUp) -> Self {
        Self { dispatch, hang_up }
    }

    /// Answers one request of this connection.
    pub async fn call<B>(self: Arc<Self>, req: Request<B>) -> Result<DispatchResponse, Infallible>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.dispatch.answer(req, Some(&self.hang_up)).await
    }
}

/// Appends `n` in decimal.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The JSON body of a decision: the bytes `serde_json` writes for [`DecisionBody`], without
/// building one (no `String` for the policy name, whose JSON form the entry keeps).
fn decision_json(
    out: &mut Vec<u8>,
    entry: &PolicyEntry,
    d: &tollgate::Decision,
    store_error: Option<&str>,
) {
    out.extend_from_slice(b"{\"allowed\":");
    out.extend_from_slice(if d.allowed { b"true" } else { b"false" });
    out.extend_from_slice(b",\"limit\":");
    push_u64(out, d.limit);
    out.extend_from_slice(b",\"remaining\":");
    push_u64(out, d.remaining);
    out.extend_from_slice(b",\"retry_after_ms\":");
    push_u64(out, d.retry_after.as_micros().div_ceil(1000) as u64);
    out.extend_from_slice(b",\"reset_after_ms\":");
    push_u64(out, d.reset_after.as_micros().div_ceil(1000) as u64);
    out.extend_from_slice(b",\"denied_by\":");
    match d.denied_by {
        Some(i) => push_u64(out, i as u64),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"policy\":");
    out.extend_from_slice(entry.json_name().as_bytes());
    if let Some(e) = store_error {
        out.extend_from_slice(b",\"store_error\":");
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, e);
    }
    out.push(b'}');
}

thread_local! {
    /// Where each response's body and `RateLimit` field are written before being copied
    /// into an allocation of their exact size: `Bytes::from(Vec)` keeps a `Vec` whose
    /// length and capacity match as is, any other costs it a second allocation.
    static SCRATCH: RefCell<(Vec<u8>, String)> = const { RefCell::new((Vec::new(), String::new())) };
}

/// Scratch space beyond this is given back after use.
const SCRATCH_KEEP: usize = 4096;

/// The response to one decision: the JSON body, `RateLimit-Policy`, `RateLimit` and, when
/// denied, `Retry-After`.
pub(super) fn decision_response(entry: &PolicyEntry, outcome: Outcome) -> DispatchResponse {
    let d = outcome.decision;
    let (body, field) = SCRATCH.with_borrow_mut(|(body, field)| {
        body.clear();
        decision_json(body, entry, &d, outcome.store_error.as_deref());
        field.clear();
        push_rate_limit_field(field, entry.name(), entry.policy(), &d);
        let out = (
            Bytes::copy_from_slice(body),
            Bytes::copy_from_slice(field.as_bytes()),
        );
        if body.capacity() > SCRATCH_KEEP {
            *body = Vec::new();
        }
        if field.capacity() > SCRATCH_KEEP {
            *field = String::new();
        }
        out
    });
    let mut response = axum::http::Response::new(DispatchBody::Left(Full::new(body)));
    let headers = response.headers_mut();
    headers.reserve(4);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(v) = entry.rate_limit_policy_value() {
        headers.insert(RATELIMIT_POLICY, v.clone());
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(field) {
        headers.insert(RATELIMIT, v);
    }
    if !d.allowed {
        headers.insert(RETRY_AFTER, HeaderValue::from(d.retry_after_secs()));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::App;
    use crate::config::Config;
    use crate::http::DecisionBody;
    use tollgate::Decision;

    #[test]
    fn the_body_is_the_bytes_serde_writes() {
        let mut config = Config::default();
        config
            .add_policy("api", None, "5/s", None, |f| f.to_string())
            .unwrap();
        let app = App::new(&config, None).unwrap();
        let mut entries = vec![app.inline(None, "3/s").unwrap()];
        entries.extend(app.policies().cloned());
        let decisions = [
            Decision::from_parts(true, 5, 4, 0, 200_000, None),
            Decision::from_parts(false, 5, 0, 1_500, 1_000_001, Some(0)),
            Decision::from_parts(false, u64::MAX, 0, 999, u64::MAX / 2, Some(3)),
        ];
        for entry in &entries {
            for d in &decisions {
                for err in [None, Some("timed out \"x\" \u{1}é".to_string())] {
                    let mut ours = Vec::new();
                    decision_json(&mut ours, entry, d, err.as_deref());
                    let serde =
                        serde_json::to_vec(&DecisionBody::new(entry.name(), d, err)).unwrap();
                    assert_eq!(
                        String::from_utf8(ours).unwrap(),
                        String::from_utf8(serde).unwrap()
                    );
                }
            }
        }
    }

    fn dispatch(rate: &str) -> std::sync::Arc<Dispatch> {
        let mut config = Config::default();
        config
            .add_policy("api", None, rate, None, |f| f.to_string())
            .unwrap();
        let app = std::sync::Arc::new(App::new(&config, None).unwrap());
        std::sync::Arc::new(Dispatch::new(crate::http::HttpState {
            app,
            max_body: 65536,
            request_timeout: std::time::Duration::from_secs(10),
        }))
    }

    async fn post(d: &std::sync::Arc<Dispatch>, body: Body) -> (u16, String) {
        let req = Request::post("/v1/check").body(body).unwrap();
        let res = std::sync::Arc::clone(d).call(req).await.unwrap();
        let status = res.status().as_u16();
        let bytes = axum::body::to_bytes(Body::new(res.into_body()), 65536)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn scanned_and_escaped_strings_name_the_same_key() {
        let d = dispatch("1/s");
        let (status, body) = post(&d, Body::from(r#"{"policy":"api","key":"k\u0031"}"#)).await;
        assert_eq!((status, body.contains(r#""allowed":true"#)), (200, true));
        let (status, body) = post(&d, Body::from(r#"{"policy":"a\u0070i","key":"k1"}"#)).await;
        assert_eq!((status, body.contains(r#""allowed":false"#)), (200, true));
    }

    #[tokio::test]
    async fn a_body_in_several_frames_is_read_whole() {
        let d = dispatch("1/s");
        let parts = [r#"{"policy":"ap"#, r#"i","key":"#, r#""k1"}"#];
        let stream = futures_util::stream::iter(parts.map(Ok::<_, Infallible>));
        let (status, body) = post(&d, Body::from_stream(stream)).await;
        assert_eq!((status, body.contains(r#""allowed":true"#)), (200, true));
    }

    #[tokio::test]
    async fn several_items_and_bad_bodies_answer_as_the_owned_request() {
        let d = dispatch("1/s");
        let multi = r#"{"checks":[{"policy":"api","key":"a"},{"policy":"api","key":"b"}]}"#;
        let (status, body) = post(&d, Body::from(multi)).await;
        assert_eq!(
            (status, body.contains(r#""denied_by_item":null"#)),
            (200, true),
            "{body}"
        );
        for bad in [
            r#"{"policy":"api","key":"k","nope":1}"#,
            r#"{"checks":5,"key":7}"#,
            r#"{"policy":"api","key":5}"#,
            "",
        ] {
            let owned = serde_json::from_str::<crate::http::DecideRequest>(bad).unwrap_err();
            let (status, body) = post(&d, Body::from(bad)).await;
            assert_eq!(status, 400, "{bad}");
            let expected = serde_json::json!({ "error": format!("invalid JSON body: {owned}") });
            assert_eq!(body, expected.to_string(), "{bad}");
        }
    }
}
