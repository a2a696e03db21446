//! Key naming, in one place: a namespace prefix, optional keyed hashing so raw identities
//! never reach a store, Redis Cluster hash tags, and a maximum length.
//!
//! Every store that persists keys outside the process (Redis, SQL) builds its keys here, so
//! one rule holds everywhere:
//!
//! | builder | user key | stored key |
//! |---|---|---|
//! | `KeyBuilder::new("rl")` | `alice` | `rl:alice` |
//! | `… .hmac_secret(s)` | `alice` | `rl:h:<64 hex chars of HMAC-SHA256(s, "alice")>` |
//! | `… .build_tagged("t42", "alice")` | `alice` | `rl:{t42}:alice` |
//! | `… .hmac_secret(s).build_tagged("t42", "alice")` | `alice` | `rl:{h:<hex of HMAC(t42)>}:h:<hex of HMAC(alice)>` |
//!
//! - **Keyed hashing** (HMAC-SHA256 with a secret): the store sees only a digest, never the IP
//!   address or e-mail the key was made from; without the secret nobody can tell which
//!   identity a digest stands for (a plain hash of an IPv4 address can be reversed by trying
//!   all 2^32 of them). Equal user keys still map to equal stored keys, which is all a rate
//!   limiter needs. Changing the secret starts every key fresh.
//! - **Hash tags** (`{…}`): Redis Cluster places a key by the part between the first `{` and
//!   the next `}`. Keys built with the same tag land in the same slot, so one atomic script
//!   can check them together (per-user + per-IP + global…). The namespace must not contain
//!   `{` or `}` (rejected at construction), so only the tag you choose decides the slot of a
//!   tagged key. Untagged keys are placed by their whole text.
//! - **Length**: a stored key longer than the maximum ([`DEFAULT_MAX_STORED_KEY_LEN`] bytes
//!   by default) is [`Error::KeyTooLong`], never truncated (truncation would merge clients).
//!   Hashed keys have a fixed length, so with a secret only the namespace and tag count.
//!
//! ```
//! use tollgate::keys::KeyBuilder;
//! let keys = KeyBuilder::new("rl").unwrap();
//! assert_eq!(keys.build("alice").unwrap(), "rl:alice");
//! assert_eq!(keys.build_tagged("tenant-7", "alice").unwrap(), "rl:{tenant-7}:alice");
//!
//! let private = KeyBuilder::new("rl").unwrap().hmac_secret(b"not-in-git").unwrap();
//! let stored = private.build("203.0.113.7").unwrap();
//! assert!(stored.starts_with("rl:h:") && !stored.contains("203.0.113.7"));
//! assert_eq!(stored.len(), "rl:h:".len() + 64);
//! ```

use crate::error::Error;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// The default maximum length of a stored key, in bytes.
pub const DEFAULT_MAX_STORED_KEY_LEN: usize = 1024;

/// Builds store keys: namespace, optional HMAC-SHA256, optional hash tag, bounded length.
///
/// Cloning is cheap enough for setup code; building a key allocates one `String`.
///
/// ```
/// use tollgate::keys::KeyBuilder;
/// let keys = KeyBuilder::new("app").unwrap().max_len(16);
/// assert_eq!(keys.build("bob").unwrap(), "app:bob");
/// assert!(keys.build("a-very-long-user-key").is_err());
/// ```
#[derive(Clone)]
pub struct KeyBuilder {
    namespace: String,
    mac: Option<Hmac<Sha256>>,
    max_len: usize,
}

impl fmt::Debug for KeyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBuilder")
            .field("namespace", &self.namespace)
            .field("hmac", &self.mac.is_some())
            .field("max_len", &self.max_len)
            .finish()
    }
}

/// Why a key builder could not be configured.
///
/// ```
/// use tollgate::keys::{KeyBuilder, KeyConfigError};
/// assert!(matches!(KeyBuilder::new("a{b}"), Err(KeyConfigError::BraceInNamespace(_))));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyConfigError {
    /// A namespace with `{` or `}` would take over Redis Cluster placement.
    #[error(
        "the key namespace {0:?} must not contain '{{' or '}}' (they are Redis Cluster hash tags)"
    )]
    BraceInNamespace(String),
    /// An empty HMAC secret protects nothing.
    #[error("the HMAC secret must not be empty")]
    EmptySecret,
}

impl KeyBuilder {
    /// A builder for keys `"<namespace>:<key>"`. The namespace may be empty (then keys are
    /// `"<key>"` as given), and must not contain `{` or `}`.
    ///
    /// ```
    /// use tollgate::keys::KeyBuilder;
    /// assert_eq!(KeyBuilder::new("").unwrap().build("x").unwrap(), "x");
    /// assert_eq!(KeyBuilder::new("a:b").unwrap().build("x").unwrap(), "a:b:x");
    /// ```
    pub fn new(namespace: impl Into<String>) -> Result<KeyBuilder, KeyConfigError> {
        let namespace = namespace.into();
        if namespace.contains(['{', '}']) {
            return Err(KeyConfigError::BraceInNamespace(namespace));
        }
        Ok(KeyBuilder {
            namespace,
            mac: None,
            max_len: DEFAULT_MAX_STORED_KEY_LEN,
        })
    }

    /// Hashes every user key (and tag) with HMAC-SHA256 under `secret`, so the store only
    /// ever sees `h:<64 hex digits>`. Keep the secret out of source control; rotating it
    /// starts every key fresh.
    ///
    /// ```
    /// use tollgate::keys::KeyBuilder;
    /// let a = KeyBuilder::new("rl").unwrap().hmac_secret("s1").unwrap();
    /// let b = KeyBuilder::new("rl").unwrap().hmac_secret("s2").unwrap();
    /// assert_eq!(a.build("u").unwrap(), a.build("u").unwrap());
    /// assert_ne!(a.build("u").unwrap(), b.build("u").unwrap());
    /// assert!(KeyBuilder::new("rl").unwrap().hmac_secret("").is_err());
    /// ```
    pub fn hmac_secret(mut self, secret: impl AsRef<[u8]>) -> Result<KeyBuilder, KeyConfigError> {
        let secret = secret.as_ref();
        if secret.is_empty() {
            return Err(KeyConfigError::EmptySecret);
        }
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .map_err(|_| KeyConfigError::EmptySecret)?;
        self.mac = Some(mac);
        Ok(self)
    }

    /// The maximum stored key length in bytes (default [`DEFAULT_MAX_STORED_KEY_LEN`]).
    ///
    /// ```
    /// use tollgate::{Error, keys::KeyBuilder};
    /// let keys = KeyBuilder::new("n").unwrap().max_len(4);
    /// assert!(matches!(keys.build("abc"), Err(Error::KeyTooLong { len: 5, max: 4 })));
    /// ```
    pub fn max_len(mut self, max_len: usize) -> KeyBuilder {
        self.max_len = max_len;
        self
    }

    /// A builder whose namespace is this one followed by `:<part>` (same secret and maximum).
    ///
    /// ```
    /// use tollgate::keys::KeyBuilder;
    /// let login = KeyBuilder::new("rl").unwrap().scoped("login").unwrap();
    /// assert_eq!(login.build("bob").unwrap(), "rl:login:bob");
    /// ```
    pub fn scoped(&self, part: &str) -> Result<KeyBuilder, KeyConfigError> {
        let namespace = if self.namespace.is_empty() {
            part.to_string()
        } else {
            format!("{}:{part}", self.namespace)
        };
        if namespace.contains(['{', '}']) {
            return Err(KeyConfigError::BraceInNamespace(namespace));
        }
        Ok(KeyBuilder {
            namespace,
            mac: self.mac.clone(),
            max_len: self.max_len,
        })
    }

    /// The namespace.
    ///
    /// ```
    /// assert_eq!(tollgate::keys::KeyBuilder::new("rl").unwrap().namespace(), "rl");
    /// ```
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// True when user keys are hashed.
    ///
    /// ```
    /// assert!(!tollgate::keys::KeyBuilder::new("rl").unwrap().is_hashed());
    /// ```
    pub fn is_hashed(&self) -> bool {
        self.mac.is_some()
    }

    /// The stored key for `user_key`: `"<ns>:<key>"`, or `"<ns>:h:<hex>"` with a secret.
    ///
    /// ```
    /// use tollgate::keys::KeyBuilder;
    /// assert_eq!(KeyBuilder::new("rl").unwrap().build("u:1").unwrap(), "rl:u:1");
    /// ```
    ///
    /// A user key that starts with a hash tag, `"{tag}:rest"`, keeps it: without a secret
    /// the key is used as given; with a secret the tag and the rest are hashed separately,
    /// `"<ns>:{h:<hex>}:h:<hex>"`, so keys with equal tags still share a Cluster slot. In
    /// both cases `build("{t}:k") == build_tagged("t", "k")`.
    ///
    /// ```
    /// use tollgate::keys::{KeyBuilder, cluster_slot};
    /// let keys = KeyBuilder::new("rl").unwrap().hmac_secret("s").unwrap();
    /// let a = keys.build("{org-9}:user:1").unwrap();
    /// assert_eq!(a, keys.build_tagged("org-9", "user:1").unwrap());
    /// assert_eq!(cluster_slot(&a), cluster_slot(&keys.build("{org-9}:ip:1").unwrap()));
    /// ```
    pub fn build(&self, user_key: &str) -> Result<String, Error> {
        if let Some((tag, rest)) = leading_tag(user_key) {
            return self.build_tagged(tag, rest);
        }
        let mut out = String::with_capacity(self.namespace.len() + 1 + user_key.len().min(256));
        self.push_namespace(&mut out);
        self.push_part(&mut out, user_key);
        self.checked(out)
    }

    /// The stored key for `user_key` in the Redis Cluster slot of `tag`:
    /// `"<ns>:{<tag>}:<key>"` (with a secret both the tag and the key are hashed:
    /// `"<ns>:{h:<hex>}:h:<hex>"`). Keys built with the same tag share one slot, so they can
    /// be checked together atomically. A tag must not contain `{` or `}` unless hashed.
    ///
    /// ```
    /// use tollgate::keys::{KeyBuilder, cluster_slot};
    /// let keys = KeyBuilder::new("rl").unwrap();
    /// let a = keys.build_tagged("org-9", "user:1").unwrap();
    /// let b = keys.build_tagged("org-9", "ip:203.0.113.7").unwrap();
    /// assert_eq!(cluster_slot(&a), cluster_slot(&b));
    /// assert!(keys.build_tagged("a}b", "x").is_err());
    /// ```
    pub fn build_tagged(&self, tag: &str, user_key: &str) -> Result<String, Error> {
        let mut out = String::with_capacity(self.namespace.len() + tag.len() + user_key.len() + 8);
        self.push_namespace(&mut out);
        out.push('{');
        if self.mac.is_none() && tag.contains(['{', '}']) {
            return Err(Error::InvalidKey {
                reason: "a hash tag must not contain '{' or '}'".into(),
            });
        }
        if self.mac.is_none() && tag.is_empty() {
            return Err(Error::InvalidKey {
                reason: "a hash tag must not be empty (Redis ignores \"{}\")".into(),
            });
        }
        self.push_part(&mut out, tag);
        out.push_str("}:");
        self.push_part(&mut out, user_key);
        self.checked(out)
    }

    fn push_namespace(&self, out: &mut String) {
        if !self.namespace.is_empty() {
            out.push_str(&self.namespace);
            out.push(':');
        }
    }

    fn push_part(&self, out: &mut String, part: &str) {
        match &self.mac {
            None => out.push_str(part),
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(part.as_bytes());
                out.push_str("h:");
                for byte in mac.finalize().into_bytes() {
                    out.push(HEX[(byte >> 4) as usize] as char);
                    out.push(HEX[(byte & 0xf) as usize] as char);
                }
            }
        }
    }

    fn checked(&self, key: String) -> Result<String, Error> {
        if key.len() > self.max_len {
            return Err(Error::KeyTooLong {
                len: key.len(),
                max: self.max_len,
            });
        }
        Ok(key)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `"{tag}:rest"` or `"{tag}rest"` -> `(tag, rest)` for a non-empty tag.
fn leading_tag(key: &str) -> Option<(&str, &str)> {
    let inner = key.strip_prefix('{')?;
    let close = inner.find('}')?;
    if close == 0 || inner[..close].contains('{') {
        return None;
    }
    let rest = &inner[close + 1..];
    Some((&inner[..close], rest.strip_prefix(':').unwrap_or(rest)))
}

/// The part of `key` that Redis Cluster hashes: the text between the first `{` and the next
/// `}` when that is not empty, else the whole key.
///
/// ```
/// use tollgate::keys::hash_tag;
/// assert_eq!(hash_tag("rl:{t1}:u"), "t1");
/// assert_eq!(hash_tag("rl:{}:u"), "rl:{}:u");
/// assert_eq!(hash_tag("rl:u"), "rl:u");
/// ```
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The Redis Cluster slot (0..16384) of `key`: CRC16-XMODEM of its [`hash_tag`] mod 16384.
///
/// ```
/// use tollgate::keys::cluster_slot;
/// assert_eq!(cluster_slot("foo"), 12182); // from the Redis Cluster specification
/// assert_eq!(cluster_slot("{user1000}.following"), cluster_slot("{user1000}.followers"));
/// ```
pub fn cluster_slot(key: &str) -> u16 {
    crc16_xmodem(hash_tag(key).as_bytes()) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_reference_check_value() {
        // CRC-16/XMODEM of "123456789" is 0x31C3.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let keys = KeyBuilder::new("").unwrap().hmac_secret("Jefe").unwrap();
        assert_eq!(
            keys.build("what do ya want for nothing?").unwrap(),
            "h:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hashed_tags_colocate_and_hide_the_tag() {
        let keys = KeyBuilder::new("rl").unwrap().hmac_secret("s").unwrap();
        let a = keys.build_tagged("tenant{1}", "alice").unwrap();
        let b = keys.build_tagged("tenant{1}", "bob").unwrap();
        assert_eq!(cluster_slot(&a), cluster_slot(&b));
        assert!(!a.contains("tenant") && !a.contains("alice"));
    }

    #[test]
    fn empty_tag_is_rejected_without_secret() {
        let keys = KeyBuilder::new("rl").unwrap();
        assert!(matches!(
            keys.build_tagged("", "a"),
            Err(Error::InvalidKey { .. })
        ));
    }
}
