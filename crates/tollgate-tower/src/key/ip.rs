//! Client addresses: the TCP peer ([`PeerIp`]) and the client behind trusted proxies
//! ([`ClientIp`], `X-Forwarded-For` / `Forwarded` walked from the right).

use super::{KeyError, KeyExtractor};
use http::request::Parts;
use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

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
    pub(super) ipv6_prefix: Option<u8>,
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
