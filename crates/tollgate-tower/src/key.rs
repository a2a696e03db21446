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

use http::request::Parts;
use ipnet::IpNet;
use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
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

/// The TCP peer's socket address: axum's `ConnectInfo<SocketAddr>` extension (with the `axum`
/// feature), else a plain `SocketAddr` extension (insert one in a hyper service).
///
/// ```
/// use std::net::SocketAddr;
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert("192.0.2.1:5000".parse::<SocketAddr>().unwrap());
/// let (parts, ()) = req.into_parts();
/// assert_eq!(tollgate_tower::key::peer_addr(&parts).unwrap().port(), 5000);
/// ```
pub fn peer_addr(parts: &Parts) -> Option<SocketAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0);
    }
    parts.extensions.get::<SocketAddr>().copied()
}

/// Formats an IP as a key: IPv4-mapped IPv6 addresses become IPv4; IPv6 addresses are
/// grouped by their first `ipv6_prefix` bits (`None` or 128: the full address).
///
/// ```
/// use tollgate_tower::key::ip_key;
/// assert_eq!(ip_key("2001:db8:1:2:3:4:5:6".parse().unwrap(), Some(64)), "2001:db8:1:2::/64");
/// assert_eq!(ip_key("::ffff:192.0.2.7".parse().unwrap(), Some(64)), "192.0.2.7");
/// assert_eq!(ip_key("2001:db8::1".parse().unwrap(), None), "2001:db8::1");
/// ```
pub fn ip_key(ip: IpAddr, ipv6_prefix: Option<u8>) -> String {
    let ip = canonical(ip);
    match (ip, ipv6_prefix) {
        (IpAddr::V6(v6), Some(prefix)) if prefix < 128 => {
            let bits = u128::from(v6);
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            format!("{}/{prefix}", Ipv6Addr::from(bits & mask))
        }
        (ip, _) => ip.to_string(),
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn check_prefix(prefix: u8) -> u8 {
    prefix.min(128)
}

/// The TCP peer's IP address. Use it when clients connect directly (no proxy in front).
///
/// ```
/// use std::net::SocketAddr;
/// use tollgate_tower::key::{KeyExtractor, PeerIp};
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert("[2001:db8:aa:bb::7]:443".parse::<SocketAddr>().unwrap());
/// let (parts, ()) = req.into_parts();
/// assert_eq!(PeerIp::new().extract(&parts).unwrap(), "2001:db8:aa:bb::7");
/// assert_eq!(PeerIp::new().ipv6_prefix(64).extract(&parts).unwrap(), "2001:db8:aa:bb::/64");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerIp {
    ipv6_prefix: Option<u8>,
}

impl PeerIp {
    /// Keys by the full peer address.
    ///
    /// ```
    /// let _ = tollgate_tower::key::PeerIp::new();
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Groups IPv6 clients by their first `prefix` bits (64 is typical: one customer's
    /// subnet). Values above 128 mean 128.
    ///
    /// ```
    /// let _ = tollgate_tower::key::PeerIp::new().ipv6_prefix(56);
    /// ```
    pub fn ipv6_prefix(mut self, prefix: u8) -> Self {
        self.ipv6_prefix = Some(check_prefix(prefix));
        self
    }
}

impl KeyExtractor for PeerIp {
    fn extract(&self, parts: &Parts) -> Result<String, KeyError> {
        let peer = peer_addr(parts).ok_or(KeyError::NoPeerAddress)?;
        Ok(ip_key(peer.ip(), self.ipv6_prefix))
    }
}

/// Which forwarding header [`ClientIp`] reads.
///
/// ```
/// let _ = tollgate_tower::key::ForwardedHeader::Forwarded;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// The client's IP address behind trusted reverse proxies.
///
/// Forwarding headers are believed only when the TCP peer itself is a trusted proxy. The
/// header is then walked **from the right** (the entry appended by the proxy that talked to
/// us), skipping addresses inside the trusted CIDRs; the first address that is not a trusted
/// proxy is the client. The leftmost entry is never trusted on its own: any client can write
/// whatever it wants there. If every entry is a trusted proxy, the leftmost (the farthest
/// hop known) is used. Several header lines are read in order, as one list.
///
/// ```
/// use std::net::SocketAddr;
/// use tollgate_tower::key::{ClientIp, KeyExtractor};
/// let extractor = ClientIp::new(["10.0.0.0/8"]).unwrap();
///
/// // Through our proxy 10.0.0.5: the spoofed leftmost entry is ignored.
/// let mut req = http::Request::get("/").header("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.7").body(()).unwrap();
/// req.extensions_mut().insert("10.0.0.5:40000".parse::<SocketAddr>().unwrap());
/// let (parts, ()) = req.into_parts();
/// assert_eq!(extractor.extract(&parts).unwrap(), "203.0.113.9");
///
/// // A direct client cannot pick its key by sending the header.
/// let mut req = http::Request::get("/").header("x-forwarded-for", "6.6.6.6").body(()).unwrap();
/// req.extensions_mut().insert("198.51.100.4:40000".parse::<SocketAddr>().unwrap());
/// let (parts, ()) = req.into_parts();
/// assert_eq!(extractor.extract(&parts).unwrap(), "198.51.100.4");
/// ```
#[derive(Clone, Debug)]
pub struct ClientIp {
    trusted: Arc<[IpNet]>,
    header: ForwardedHeader,
    ipv6_prefix: Option<u8>,
}

/// A trusted-proxy CIDR that does not parse.
///
/// ```
/// assert!(tollgate_tower::key::ClientIp::new(["not-a-cidr"]).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidCidr(pub String);

impl fmt::Display for InvalidCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid trusted proxy {:?}: expected an IP address or a CIDR such as 10.0.0.0/8",
            self.0
        )
    }
}

impl std::error::Error for InvalidCidr {}

impl ClientIp {
    /// Trusts the proxies in `cidrs` (`"10.0.0.0/8"`, `"fd00::/8"`, or single addresses).
    ///
    /// ```
    /// let e = tollgate_tower::key::ClientIp::new(["127.0.0.1", "10.0.0.0/8", "fd00::/8"]).unwrap();
    /// # let _ = e;
    /// ```
    pub fn new<I, S>(cidrs: I) -> Result<Self, InvalidCidr>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let trusted = cidrs
            .into_iter()
            .map(|c| {
                let c = c.as_ref().trim();
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| InvalidCidr(c.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            trusted: trusted.into(),
            header: ForwardedHeader::default(),
            ipv6_prefix: None,
        })
    }

    /// Reads `header` (default `X-Forwarded-For`).
    ///
    /// ```
    /// use tollgate_tower::key::{ClientIp, ForwardedHeader};
    /// let e = ClientIp::new(["10.0.0.0/8"]).unwrap().header(ForwardedHeader::Forwarded);
    /// # let _ = e;
    /// ```
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Groups IPv6 clients by their first `prefix` bits.
    ///
    /// ```
    /// let _ = tollgate_tower::key::ClientIp::new(["10.0.0.0/8"]).unwrap().ipv6_prefix(64);
    /// ```
    pub fn ipv6_prefix(mut self, prefix: u8) -> Self {
        self.ipv6_prefix = Some(check_prefix(prefix));
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request (before formatting as a key).
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use tollgate_tower::key::{ClientIp, ForwardedHeader};
    /// let e = ClientIp::new(["10.0.0.0/8"]).unwrap().header(ForwardedHeader::Forwarded);
    /// let mut req = http::Request::get("/")
    ///     .header("forwarded", "for=192.0.2.60;proto=http, for=\"[2001:db8::17]:4711\"")
    ///     .body(()).unwrap();
    /// req.extensions_mut().insert("10.1.2.3:1000".parse::<SocketAddr>().unwrap());
    /// let (parts, ()) = req.into_parts();
    /// assert_eq!(e.client_ip(&parts).unwrap().to_string(), "2001:db8::17");
    /// ```
    pub fn client_ip(&self, parts: &Parts) -> Result<IpAddr, KeyError> {
        let peer = canonical(peer_addr(parts).ok_or(KeyError::NoPeerAddress)?.ip());
        if !self.is_trusted(peer) {
            return Ok(peer);
        }
        let entries = self.entries(parts)?;
        let mut client = peer;
        for entry in entries.iter().rev() {
            let ip = match parse_node(entry) {
                Some(ip) => canonical(ip),
                None => return Err(KeyError::UnparsableForwardedEntry(entry.clone())),
            };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        Ok(client)
    }

    /// The forwarding header's entries, left to right (every header line, in order).
    fn entries(&self, parts: &Parts) -> Result<Vec<String>, KeyError> {
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        let mut out = Vec::new();
        for value in parts.headers.get_all(name) {
            let text = value
                .to_str()
                .map_err(|_| KeyError::InvalidHeader(name.to_string()))?;
            for element in split_outside_quotes(text, ',') {
                let element = element.trim();
                if element.is_empty() {
                    continue;
                }
                match self.header {
                    ForwardedHeader::XForwardedFor => out.push(element.to_string()),
                    ForwardedHeader::Forwarded => {
                        // An element without `for=` (e.g. only `proto=https`) says nothing
                        // about the client; one with it gives the node.
                        let node = split_outside_quotes(element, ';').find_map(|pair| {
                            let (k, v) = pair.split_once('=')?;
                            k.trim()
                                .eq_ignore_ascii_case("for")
                                .then(|| v.trim().trim_matches('"').to_string())
                        });
                        match node {
                            Some(node) => out.push(node),
                            None => {
                                return Err(KeyError::UnparsableForwardedEntry(element.to_string()))
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Splits `text` at `sep` outside double quotes.
fn split_outside_quotes(text: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut in_quotes = false;
    let mut start = 0;
    let mut pieces = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c == sep && !in_quotes => {
                pieces.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    pieces.into_iter()
}

/// Parses a forwarded node: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:443`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = node.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = node.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

impl KeyExtractor for ClientIp {
    fn extract(&self, parts: &Parts) -> Result<String, KeyError> {
        Ok(ip_key(self.client_ip(parts)?, self.ipv6_prefix))
    }
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
        match value.to_str() {
            Ok(s) if !s.trim().is_empty() => Ok(Cow::Borrowed(s.trim())),
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

    #[test]
    fn untrusted_peer_ignores_headers() {
        let e = ClientIp::new(["10.0.0.0/8"]).unwrap();
        let p = parts_with("8.8.8.8:1", &[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(e.extract(&p).unwrap(), "8.8.8.8");
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
    fn ipv4_mapped_peers_and_trusted_ranges() {
        let e = ClientIp::new(["10.0.0.0/8"]).unwrap();
        let p = parts_with("[::ffff:10.0.0.1]:1", &[("x-forwarded-for", "7.7.7.7")]);
        assert_eq!(e.extract(&p).unwrap(), "7.7.7.7");
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
