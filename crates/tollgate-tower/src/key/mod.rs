//! Key extractors: which client (or route, or API key) a request is counted against.
//!
//! An extractor reads the request head ([`http::request::Parts`]) and returns the key as a
//! string, or a [`KeyError`] saying why it could not. A request whose key cannot be extracted
//! is never silently let through: the policy's [`MissingKey`](crate::layer::MissingKey)
//! setting decides (by default a 400 with a problem+json body).
//!
//! | extractor | key |
//! |---|---|
//! | [`PeerIp`] | the TCP peer's address (axum `ConnectInfo<SocketAddr>` or a `SocketAddr` extension) |
//! | [`ClientIp`] | the client behind *trusted* proxies (`X-Forwarded-For` / `Forwarded`, walked from the right) |
//! | [`Header`] | a header's value (an API key) |
//! | [`MatchedRoute`] | axum's `MatchedPath` (the route template, e.g. `/users/{id}`) |
//! | [`UriPath`] | the request path |
//! | [`Global`] | one constant key: a limit shared by every request |
//! | [`from_fn`] | your closure |
//! | [`Composite`] | several extractors joined (e.g. user + route) |
//!
//! ```
//! use tollgate_tower::key::{KeyExtractor, Header, Composite, UriPath};
//! let extractor = Composite::new().with(Header::named("x-api-key").unwrap()).with(UriPath);
//! let (parts, ()) = http::Request::get("/search").header("x-api-key", "k1").body(()).unwrap().into_parts();
//! assert_eq!(extractor.extract(&parts).unwrap(), "2:k1|7:/search");
//! ```

mod ip;

pub use ip::{ip_key, peer_addr, ClientIp, ForwardedHeader, InvalidCidr, PeerIp};

use http::request::Parts;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Why a key could not be extracted.
///
/// ```
/// use tollgate_tower::key::{KeyExtractor, Header, KeyError};
/// let (parts, ()) = http::Request::get("/").body(()).unwrap().into_parts();
/// assert!(matches!(Header::named("x-api-key").unwrap().extract(&parts), Err(KeyError::MissingHeader(_))));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// No peer address in the request extensions (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()` in axum, or insert a
    /// `SocketAddr` extension in hyper).
    NoPeerAddress,
    /// The header is absent.
    MissingHeader(String),
    /// The header is present but not visible ASCII, or empty.
    InvalidHeader(String),
    /// A forwarding header written by a trusted proxy holds an entry that is not an IP
    /// address (e.g. `unknown` or an obfuscated identifier), so the client cannot be
    /// identified.
    UnparsableForwardedEntry(String),
    /// No axum `MatchedPath` (the request did not go through an axum router).
    NoMatchedPath,
    /// A custom extractor's reason.
    Custom(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NoPeerAddress => f.write_str("the peer address is unknown (no ConnectInfo<SocketAddr> or SocketAddr request extension)"),
            KeyError::MissingHeader(h) => write!(f, "the {h} header is missing"),
            KeyError::InvalidHeader(h) => write!(f, "the {h} header is empty or not visible ASCII"),
            KeyError::UnparsableForwardedEntry(e) => write!(f, "a trusted proxy forwarded an entry that is not an IP address: {e:?}"),
            KeyError::NoMatchedPath => f.write_str("the request has no matched route"),
            KeyError::Custom(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for KeyError {}

/// Extracts the rate-limit key of a request from its head.
///
/// Implemented for closures `Fn(&Parts) -> Result<String, KeyError>`.
///
/// ```
/// use tollgate_tower::key::{KeyExtractor, KeyError};
/// let by_tenant = |parts: &http::request::Parts| -> Result<String, KeyError> {
///     parts.uri.path().split('/').nth(1).filter(|s| !s.is_empty()).map(str::to_owned)
///         .ok_or_else(|| KeyError::Custom("no tenant in the path".into()))
/// };
/// let (parts, ()) = http::Request::get("/acme/orders").body(()).unwrap().into_parts();
/// assert_eq!(by_tenant.extract(&parts).unwrap(), "acme");
/// ```
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key of this request.
    fn extract(&self, parts: &Parts) -> Result<String, KeyError>;

    /// The same key, borrowed from the request head when it is there as is (a header
    /// value, the path, the matched route, a constant), so the rate-limit layer need not
    /// allocate it. Must equal [`extract`](KeyExtractor::extract); the default calls it.
    ///
    /// ```
    /// use std::borrow::Cow;
    /// use tollgate_tower::key::{KeyExtractor, Header};
    /// let (parts, ()) = http::Request::get("/").header("x-api-key", " k1 ").body(()).unwrap().into_parts();
    /// let key = Header::named("x-api-key").unwrap().extract_borrowed(&parts).unwrap();
    /// assert!(matches!(key, Cow::Borrowed("k1")));
    /// ```
    fn extract_borrowed<'a>(&self, parts: &'a Parts) -> Result<Cow<'a, str>, KeyError> {
        self.extract(parts).map(Cow::Owned)
    }
}

impl<F> KeyExtractor for F
where
    F: Fn(&Parts) -> Result<String, KeyError> + Send + Sync + 'static,
{
    fn extract(&self, parts: &Parts) -> Result<String, KeyError> {
        self(parts)
    }
}

impl KeyExtractor for Arc<dyn KeyExtractor> {
    fn extract(&self, parts: &Parts) -> Result<String, KeyError> {
        (**self).extract(parts)
    }
    fn extract_borrowed<'a>(&self, parts: &'a Parts) -> Result<Cow<'a, str>, KeyError> {
        (**self).extract_borrowed(parts)
    }
}

/// A closure as an extractor (a named helper for type inference).
///
/// ```
/// use tollgate_tower::key::{from_fn, KeyExtractor};
/// let e = from_fn(|p| Ok(p.method.to_string()));
/// let (parts, ()) = http::Request::post("/").body(()).unwrap().into_parts();
/// assert_eq!(e.extract(&parts).unwrap(), "POST");
/// ```
pub fn from_fn<F>(f: F) -> F
where
    F: Fn(&Parts) -> Result<String, KeyError> + Send + Sync + 'static,
{
    f
}

/// A header's value (e.g. an API key). Empty or non-visible-ASCII values are rejected.
///
/// ```
/// use tollgate_tower::key::{Header, KeyExtractor};
/// let (parts, ()) = http::Request::get("/").header("x-api-key", "abc").body(()).unwrap().into_parts();
/// assert_eq!(Header::named("X-Api-Key").unwrap().extract(&parts).unwrap(), "abc");
/// ```
#[derive(Clone, Debug)]
pub struct Header {
    name: http::HeaderName,
}

impl Header {
    /// Reads header `name`.
    ///
    /// ```
    /// let _ = tollgate_tower::key::Header::new(http::header::AUTHORIZATION);
    /// ```
    pub fn new(name: http::HeaderName) -> Self {
        Self { name }
    }

    /// Reads the header called `name` (case-insensitive); an invalid header name is an error.
    ///
    /// ```
    /// assert!(tollgate_tower::key::Header::named("x-api-key").is_ok());
    /// assert!(tollgate_tower::key::Header::named("bad name").is_err());
    /// ```
    pub fn named(name: &str) -> Result<Self, http::header::InvalidHeaderName> {
        http::HeaderName::from_bytes(name.as_bytes()).map(Self::new)
    }
}

impl KeyExtractor for Header {
    fn extract(&self, parts: &Parts) -> Result<String, KeyError> {
        self.extract_borrowed(parts).map(Cow::into_owned)
    }
    fn extract_borrowed<'a>(&self, parts: &'a Parts) -> Result<Cow<'a, str>, KeyError> {
        let value = parts
            .headers
            .get(&self.name)
            .ok_or_else(|| KeyError::MissingHeader(self.name.to_string()))?;
        // A visible-ASCII value has no whitespace beyond ASCII's: the ASCII trim is the same.
        match value.to_str().map(str::trim_ascii) {
            Ok(s) if !s.is_empty() => Ok(Cow::Borrowed(s)),
            _ => Err(KeyError::InvalidHeader(self.name.to_string())),
        }
    }
}

/// The route template axum matched (`MatchedPath`, e.g. `/users/{id}`), so every user of one
/// route shares a key. Needs the `axum` feature; outside axum every request gets
/// [`KeyError::NoMatchedPath`] (use [`UriPath`] there).
///
/// ```
/// use tollgate_tower::key::{KeyExtractor, MatchedRoute, KeyError};
/// let (parts, ()) = http::Request::get("/users/7").body(()).unwrap().into_parts();
/// assert_eq!(MatchedRoute.extract(&parts), Err(KeyError::NoMatchedPath));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct MatchedRoute;

/// The matched route template, if the request went through an axum router.
///
/// ```
/// let (parts, ()) = http::Request::get("/x").body(()).unwrap().into_parts();
/// assert_eq!(tollgate_tower::key::matched_route(&parts), None);
/// ```
pub fn matched_route(parts: &Parts) -> Option<&str> {
    #[cfg(feature = "axum")]
    if let Some(m) = parts.extensions.get::<axum::extract::MatchedPath>() {
        return Some(m.as_str());
    }
    let _ = parts;
    None
}

impl KeyExtractor for MatchedRoute {
    fn extract(&self, parts: &Parts) -> Result<String, KeyError> {
        self.extract_borrowed(parts).map(Cow::into_owned)
    }
    fn extract_borrowed<'a>(&self, parts: &'a Parts) -> Result<Cow<'a, str>, KeyError> {
        matched_route(parts)
            .map(Cow::Borrowed)
            .ok_or(KeyError::NoMatchedPath)
    }
}

/// The request path (without the query).
///
/// ```
/// use tollgate_tower::key::{KeyExtractor, UriPath};
/// let (parts, ()) = http::Request::get("/a/b?c=d").body(()).unwrap().into_parts();
/// assert_eq!(UriPath.extract(&parts).unwrap(), "/a/b");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct UriPath;

impl KeyExtractor for UriPath {
    fn extract(&self, parts: &Parts) -> Result<String, KeyError> {
        Ok(parts.uri.path().to_string())
    }
    fn extract_borrowed<'a>(&self, parts: &'a Parts) -> Result<Cow<'a, str>, KeyError> {
        Ok(Cow::Borrowed(parts.uri.path()))
    }
}

/// One constant key: a limit shared by every request (a global limit).
///
/// ```
/// use tollgate_tower::key::{KeyExtractor, Global};
/// let (parts, ()) = http::Request::get("/").body(()).unwrap().into_parts();
/// assert_eq!(Global.extract(&parts).unwrap(), "global");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Global;

impl KeyExtractor for Global {
    fn extract(&self, _parts: &Parts) -> Result<String, KeyError> {
        Ok("global".to_string())
    }
    fn extract_borrowed<'a>(&self, _parts: &'a Parts) -> Result<Cow<'a, str>, KeyError> {
        Ok(Cow::Borrowed("global"))
    }
}

/// Several extractors joined into one key (e.g. user + route). Each part is written as
/// `<length>:<value>` and parts are joined with `|`, so two different combinations never
/// give the same key. If any part fails, the whole key fails.
///
/// ```
/// use tollgate_tower::key::{Composite, Header, MatchedRoute, KeyExtractor};
/// let per_user_and_route = Composite::new().with(Header::named("x-user").unwrap()).with(MatchedRoute);
/// # let _ = per_user_and_route;
/// ```
#[derive(Clone, Default)]
pub struct Composite {
    parts: Vec<Arc<dyn KeyExtractor>>,
}

impl fmt::Debug for Composite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Composite")
            .field("parts", &self.parts.len())
            .finish()
    }
}

impl Composite {
    /// An empty composite (extracts the empty key until parts are added).
    ///
    /// ```
    /// let _ = tollgate_tower::key::Composite::new();
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a part.
    ///
    /// ```
    /// use tollgate_tower::key::{Composite, UriPath, Global, KeyExtractor};
    /// let c = Composite::new().with(Global).with(UriPath);
    /// let (parts, ()) = http::Request::get("/x").body(()).unwrap().into_parts();
    /// assert_eq!(c.extract(&parts).unwrap(), "6:global|2:/x");
    /// ```
    pub fn with(mut self, extractor: impl KeyExtractor) -> Self {
        self.parts.push(Arc::new(extractor));
        self
    }
}

impl KeyExtractor for Composite {
    fn extract(&self, parts: &Parts) -> Result<String, KeyError> {
        let mut out = String::new();
        for (i, e) in self.parts.iter().enumerate() {
            let value = e.extract_borrowed(parts)?;
            if i > 0 {
                out.push('|');
            }
            out.push_str(itoa::Buffer::new().format(value.len()));
            out.push(':');
            out.push_str(&value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, SocketAddr};

    fn parts_with(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::get("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req = b.body(()).unwrap();
        req.extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        req.into_parts().0
    }

    #[test]
    fn borrowed_keys_equal_owned_keys() {
        let extractors: Vec<(&str, Arc<dyn KeyExtractor>)> = vec![
            ("header", Arc::new(Header::named("x-api-key").unwrap())),
            ("path", Arc::new(UriPath)),
            ("route", Arc::new(MatchedRoute)),
            ("global", Arc::new(Global)),
            ("peer", Arc::new(PeerIp::new())),
            (
                "composite",
                Arc::new(
                    Composite::new()
                        .with(Header::named("x-api-key").unwrap())
                        .with(UriPath)
                        .with(Global),
                ),
            ),
            (
                "closure",
                Arc::new(from_fn(|p: &Parts| Ok(p.method.to_string()))),
            ),
        ];
        let requests = [
            parts_with("192.0.2.1:1", &[("x-api-key", "  k1 ")]),
            parts_with("192.0.2.1:1", &[("x-api-key", "   ")]),
            parts_with("[2001:db8::1]:1", &[]),
        ];
        for parts in &requests {
            for (name, e) in &extractors {
                let owned = e.extract(parts);
                let borrowed = e.extract_borrowed(parts).map(Cow::into_owned);
                assert_eq!(owned, borrowed, "{name}");
            }
        }
        // The header, the path and the constant are not copied.
        let parts = &requests[0];
        for e in [&extractors[0].1, &extractors[1].1, &extractors[3].1] {
            assert!(matches!(e.extract_borrowed(parts), Ok(Cow::Borrowed(_))));
        }
        assert_eq!(extractors[5].1.extract(parts).unwrap(), "2:k1|1:/|6:global");
    }

    #[test]
    fn xff_walks_from_the_right_skipping_trusted() {
        let e = ClientIp::new(["10.0.0.0/8", "192.168.1.1"]).unwrap();
        let p = parts_with(
            "10.0.0.1:1",
            &[("x-forwarded-for", "1.1.1.1, 2.2.2.2, 192.168.1.1, 10.9.9.9")],
        );
        assert_eq!(e.extract(&p).unwrap(), "2.2.2.2");
    }

    #[test]
    fn multiple_xff_lines_are_one_list() {
        let e = ClientIp::new(["10.0.0.0/8"]).unwrap();
        let p = parts_with(
            "10.0.0.1:1",
            &[
                ("x-forwarded-for", "9.9.9.9"),
                ("x-forwarded-for", "3.3.3.3, 10.0.0.2"),
            ],
        );
        assert_eq!(e.extract(&p).unwrap(), "3.3.3.3");
    }

    #[test]
    fn all_trusted_uses_leftmost_and_no_header_uses_peer() {
        let e = ClientIp::new(["10.0.0.0/8"]).unwrap();
        let p = parts_with("10.0.0.1:1", &[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]);
        assert_eq!(e.extract(&p).unwrap(), "10.0.0.3");
        let p = parts_with("10.0.0.1:1", &[]);
        assert_eq!(e.extract(&p).unwrap(), "10.0.0.1");
    }

    #[test]
    fn garbage_from_a_trusted_proxy_is_an_error_not_a_guess() {
        let e = ClientIp::new(["10.0.0.0/8"]).unwrap();
        let p = parts_with("10.0.0.1:1", &[("x-forwarded-for", "1.2.3.4, unknown")]);
        assert!(matches!(
            e.extract(&p),
            Err(KeyError::UnparsableForwardedEntry(_))
        ));
        // ... but garbage left of the client is never read.
        let p = parts_with("10.0.0.1:1", &[("x-forwarded-for", "junk, 5.6.7.8")]);
        assert_eq!(e.extract(&p).unwrap(), "5.6.7.8");
    }

    /// An untrusted peer's headers are ignored; an IPv4-mapped IPv6 peer matches the IPv4
    /// trusted range.
    #[test]
    fn which_peers_are_trusted() {
        let e = ClientIp::new(["10.0.0.0/8"]).unwrap();
        for (peer, forwarded, expected) in [
            ("8.8.8.8:1", "1.2.3.4", "8.8.8.8"),
            ("[::ffff:10.0.0.1]:1", "7.7.7.7", "7.7.7.7"),
        ] {
            let p = parts_with(peer, &[("x-forwarded-for", forwarded)]);
            assert_eq!(e.extract(&p).unwrap(), expected, "peer {peer}");
        }
    }

    #[test]
    fn forwarded_rfc7239() {
        let e = ClientIp::new(["10.0.0.0/8"])
            .unwrap()
            .header(ForwardedHeader::Forwarded);
        let p = parts_with(
            "10.0.0.1:1",
            &[(
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, For=10.2.2.2;by=10.0.0.1",
            )],
        );
        assert_eq!(e.extract(&p).unwrap(), "2001:db8:cafe::17");
        let e64 = e.clone().ipv6_prefix(48);
        assert_eq!(e64.extract(&p).unwrap(), "2001:db8:cafe::/48");
        let p = parts_with("10.0.0.1:1", &[("forwarded", "for=_hidden")]);
        assert!(e.extract(&p).is_err());
    }

    #[test]
    fn ipv6_prefix_edges() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_key(ip, Some(0)), "::/0");
        assert_eq!(ip_key(ip, Some(128)), "2001:db8::1");
        assert_eq!(PeerIp::new().ipv6_prefix(200).ipv6_prefix, Some(128));
    }

    #[test]
    fn composite_is_unambiguous() {
        let c = Composite::new()
            .with(Header::named("a").unwrap())
            .with(Header::named("b").unwrap());
        let p1 = parts_with("1.1.1.1:1", &[("a", "x|1:y"), ("b", "z")]);
        let p2 = parts_with("1.1.1.1:1", &[("a", "x"), ("b", "y|1:z")]);
        assert_ne!(c.extract(&p1).unwrap(), c.extract(&p2).unwrap());
    }

    #[test]
    fn header_errors() {
        let p = parts_with("1.1.1.1:1", &[("x-key", "  ")]);
        assert_eq!(
            Header::named("x-key").unwrap().extract(&p),
            Err(KeyError::InvalidHeader("x-key".into()))
        );
        assert_eq!(
            PeerIp::new().extract(&http::Request::new(()).into_parts().0),
            Err(KeyError::NoPeerAddress)
        );
    }
}
