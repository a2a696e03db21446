//! [`Problem`]: RFC 9457 problem details, the body of every response the layers answer.

use super::PROBLEM_JSON;
use http::header::{HeaderValue, CONTENT_TYPE};

/// An RFC 9457 problem details document.
///
/// ```
/// use tollgate_tower::headers::Problem;
/// let p = Problem::new(http::StatusCode::TOO_MANY_REQUESTS, "slow down").with_extension("policy", "api".into());
/// let v: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
/// assert_eq!(v["status"], 429);
/// assert_eq!(v["title"], "Too Many Requests");
/// assert_eq!(v["type"], "about:blank");
/// assert_eq!(v["policy"], "api");
/// ```
#[derive(Clone, Debug)]
pub struct Problem {
    /// The HTTP status.
    pub status: http::StatusCode,
    /// The problem type URI (`about:blank` by default).
    pub type_uri: String,
    /// A human-readable explanation of this occurrence.
    pub detail: String,
    /// Extension members (e.g. `policy`, `retry_after`).
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// A problem of type `about:blank` whose title is the status's reason phrase.
    ///
    /// ```
    /// let p = tollgate_tower::headers::Problem::new(http::StatusCode::SERVICE_UNAVAILABLE, "store down");
    /// assert_eq!(p.status, 503);
    /// ```
    pub fn new(status: http::StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            type_uri: "about:blank".to_string(),
            detail: detail.into(),
            extensions: serde_json::Map::new(),
        }
    }

    /// Adds an extension member.
    ///
    /// ```
    /// let p = tollgate_tower::headers::Problem::new(http::StatusCode::TOO_MANY_REQUESTS, "x")
    ///     .with_extension("retry_after", 3.into());
    /// assert_eq!(p.extensions["retry_after"], 3);
    /// ```
    pub fn with_extension(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(key.to_string(), value);
        self
    }

    /// Sets the problem type URI.
    ///
    /// ```
    /// let p = tollgate_tower::headers::Problem::new(http::StatusCode::TOO_MANY_REQUESTS, "x")
    ///     .with_type("https://example.com/problems/rate-limited");
    /// assert!(p.type_uri.ends_with("rate-limited"));
    /// ```
    pub fn with_type(mut self, type_uri: impl Into<String>) -> Self {
        self.type_uri = type_uri.into();
        self
    }

    /// The JSON document.
    ///
    /// ```
    /// let p = tollgate_tower::headers::Problem::new(http::StatusCode::BAD_REQUEST, "no key");
    /// assert!(String::from_utf8(p.to_json()).unwrap().contains("\"detail\":\"no key\""));
    /// ```
    pub fn to_json(&self) -> Vec<u8> {
        let mut doc = serde_json::Map::new();
        doc.insert("type".into(), self.type_uri.clone().into());
        doc.insert(
            "title".into(),
            self.status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string()
                .into(),
        );
        doc.insert("status".into(), self.status.as_u16().into());
        doc.insert("detail".into(), self.detail.clone().into());
        for (k, v) in &self.extensions {
            doc.entry(k.clone()).or_insert_with(|| v.clone());
        }
        serde_json::to_vec(&serde_json::Value::Object(doc)).unwrap_or_default()
    }

    /// A full response (status, `Content-Type: application/problem+json`, body).
    ///
    /// ```
    /// let r = tollgate_tower::headers::Problem::new(http::StatusCode::TOO_MANY_REQUESTS, "x").into_response();
    /// assert_eq!(r.headers()["content-type"], "application/problem+json");
    /// ```
    pub fn into_response(self) -> http::Response<bytes::Bytes> {
        let body = bytes::Bytes::from(self.to_json());
        let mut response = http::Response::new(body);
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}
