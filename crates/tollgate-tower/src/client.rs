//! The client throttle: a [`reqwest_middleware::Middleware`] that keeps a `reqwest` client
//! under a remote API's quota.
//!
//! Before each request is sent, [`ClientThrottle`] waits (with
//! [`Limiter::acquire_async`](tollgate::Limiter::acquire_async), at most `max_wait`) until the
//! request's key (by default the target `host:port`; or your closure) has a unit available. If
//! the wait would be longer than `max_wait`, the request is not sent and the call fails with a
//! middleware error wrapping [`tollgate::Error::WaitTimeout`].
//!
//! When the server still answers `429 Too Many Requests` or `503 Service Unavailable` with a
//! `Retry-After` (seconds or an HTTP date), the throttle waits that long and sends the request
//! again, at most `max_retries` times, only if the wait is at most `max_retry_after`, and
//! only for requests whose body can be cloned (a streaming body is never re-sent: its response
//! is returned as is). While a key waits out a `Retry-After`, other requests to the same key
//! wait too. Each retry goes through the limiter again. A 429/503 without `Retry-After` is
//! returned as is.
//!
//! ```no_run
//! use std::time::Duration;
//! use tollgate::{Limiter, Policy, Rate};
//! use tollgate_tower::client::ClientThrottle;
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The remote API allows 10 requests per second.
//! let limiter = Limiter::memory(Policy::gcra(Rate::per_second(10)?)?);
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(ClientThrottle::new(limiter).max_wait(Duration::from_secs(30)).max_retries(3))
//!     .build();
//! let body = client.get("https://api.example.com/items").send().await?.text().await?;
//! # let _ = body; Ok(()) }
//! ```

use http::Extensions;
use parking_lot::Mutex;
use reqwest::{Request, Response, StatusCode};
use reqwest_middleware::{Middleware, Next};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tollgate::store::memory::MemoryBackend;
use tollgate::store::Backend;
use tollgate::{Error, Limiter};

type KeyFn = dyn Fn(&Request) -> String + Send + Sync;

/// A reqwest middleware that waits before sending so the client stays under a quota, and
/// honours the server's `Retry-After`. Clones share the limiter and the `Retry-After` holds.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate};
/// use tollgate_tower::client::ClientThrottle;
/// let throttle = ClientThrottle::new(Limiter::memory(Policy::gcra(Rate::per_second(5).unwrap()).unwrap()))
///     .key_fn(|req| req.url().path().to_string());
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(throttle).build();
/// # let _ = client;
/// ```
pub struct ClientThrottle<B = MemoryBackend> {
    limiter: Limiter<B>,
    key: Arc<KeyFn>,
    max_wait: Duration,
    max_retries: u32,
    max_retry_after: Duration,
    holds: Arc<Mutex<HashMap<String, Instant>>>,
}

impl<B> Clone for ClientThrottle<B> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            key: Arc::clone(&self.key),
            max_wait: self.max_wait,
            max_retries: self.max_retries,
            max_retry_after: self.max_retry_after,
            holds: Arc::clone(&self.holds),
        }
    }
}

impl<B> fmt::Debug for ClientThrottle<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientThrottle")
            .field("limiter", &self.limiter)
            .field("max_wait", &self.max_wait)
            .field("max_retries", &self.max_retries)
            .field("max_retry_after", &self.max_retry_after)
            .finish_non_exhaustive()
    }
}

/// The default key: the target's `host:port`.
///
/// ```
/// let req = reqwest::Request::new(reqwest::Method::GET, "https://api.example.com/x".parse().unwrap());
/// assert_eq!(tollgate_tower::client::host_key(&req), "api.example.com:443");
/// ```
pub fn host_key(req: &Request) -> String {
    let url = req.url();
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (a date in the past is 0).
///
/// ```
/// use std::time::Duration;
/// use tollgate_tower::client::parse_retry_after;
/// assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
/// assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
/// assert_eq!(parse_retry_after("soon"), None);
/// ```
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

impl<B: Backend> ClientThrottle<B> {
    /// Throttles every request on `limiter`, keyed by `host:port`; waits at most 60 s for the
    /// quota; retries a 429/503 with `Retry-After` at most 2 times, waiting at most 60 s each.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let t = tollgate_tower::client::ClientThrottle::new(Limiter::memory(Policy::gcra(Rate::per_minute(100).unwrap()).unwrap()));
    /// # let _ = t;
    /// ```
    pub fn new(limiter: Limiter<B>) -> Self {
        Self {
            limiter,
            key: Arc::new(host_key),
            max_wait: Duration::from_secs(60),
            max_retries: 2,
            max_retry_after: Duration::from_secs(60),
            holds: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Keys requests with `f` (e.g. per endpoint, per API token).
    ///
    /// ```
    /// # use tollgate::{Limiter, Policy, Rate};
    /// let t = tollgate_tower::client::ClientThrottle::new(Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap()))
    ///     .key_fn(|req| format!("{} {}", req.method(), req.url().path()));
    /// # let _ = t;
    /// ```
    pub fn key_fn(mut self, f: impl Fn(&Request) -> String + Send + Sync + 'static) -> Self {
        self.key = Arc::new(f);
        self
    }

    /// The longest a request waits for the local quota before failing (default 60 s).
    ///
    /// ```
    /// # use tollgate::{Limiter, Policy, Rate};
    /// let t = tollgate_tower::client::ClientThrottle::new(Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap()))
    ///     .max_wait(std::time::Duration::from_secs(5));
    /// # let _ = t;
    /// ```
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// How often a 429/503 with `Retry-After` is retried (default 2; 0 disables retries).
    ///
    /// ```
    /// # use tollgate::{Limiter, Policy, Rate};
    /// let t = tollgate_tower::client::ClientThrottle::new(Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap()))
    ///     .max_retries(0);
    /// # let _ = t;
    /// ```
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// The longest `Retry-After` the throttle waits out (default 60 s); a longer one returns
    /// the server's response as is.
    ///
    /// ```
    /// # use tollgate::{Limiter, Policy, Rate};
    /// let t = tollgate_tower::client::ClientThrottle::new(Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap()))
    ///     .max_retry_after(std::time::Duration::from_secs(10));
    /// # let _ = t;
    /// ```
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// Waits out a server-imposed hold on `key`, if any.
    async fn wait_hold(&self, key: &str) -> Result<(), Error> {
        let until = {
            let mut holds = self.holds.lock();
            match holds.get(key) {
                Some(&until) if until > Instant::now() => Some(until),
                Some(_) => {
                    holds.remove(key);
                    None
                }
                None => None,
            }
        };
        if let Some(until) = until {
            let wait = until.saturating_duration_since(Instant::now());
            if wait > self.max_wait {
                return Err(Error::WaitTimeout { retry_after: wait });
            }
            tokio::time::sleep_until(until).await;
        }
        Ok(())
    }

    fn hold(&self, key: &str, wait: Duration) {
        let until = Instant::now() + wait;
        let mut holds = self.holds.lock();
        let entry = holds.entry(key.to_string()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }

    fn retry_wait(&self, response: &Response) -> Option<Duration> {
        if !matches!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            return None;
        }
        let value = response.headers().get(http::header::RETRY_AFTER)?;
        let wait = parse_retry_after(value.to_str().ok()?)?;
        (wait <= self.max_retry_after).then_some(wait)
    }
}

#[async_trait::async_trait]
impl<B: Backend> Middleware for ClientThrottle<B> {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let key = (self.key)(&req);
        let mut req = req;
        let mut attempt: u32 = 0;
        loop {
            self.wait_hold(&key)
                .await
                .map_err(reqwest_middleware::Error::middleware)?;
            let _admitted = self
                .limiter
                .acquire_async(&key, 1, self.max_wait)
                .await
                .map_err(reqwest_middleware::Error::middleware)?;
            let retry_copy = if attempt < self.max_retries {
                req.try_clone()
            } else {
                None
            };
            let response = next.clone().run(req, extensions).await?;
            let (Some(copy), Some(wait)) = (retry_copy, self.retry_wait(&response)) else {
                return Ok(response);
            };
            tracing::debug!(
                key = %key,
                status = response.status().as_u16(),
                wait_ms = wait.as_millis() as u64,
                attempt,
                "server asked to retry later"
            );
            metrics::counter!("tollgate_http_client_retries_total").increment(1);
            self.hold(&key, wait);
            req = copy;
            attempt += 1;
        }
    }
}
