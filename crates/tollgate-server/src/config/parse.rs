//! Parsers shared by flags, environment variables and the file: durations, listen
//! addresses, `name=rates` policies, namespaces and key secrets.

use super::*;

/// Parses a duration: `"250ms"`, `"10s"`, `"5m"`, `"1h"`, `"1500us"`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(tollgate_server::config::parse_duration("250ms").unwrap(), Duration::from_millis(250));
/// assert!(tollgate_server::config::parse_duration("10").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s, m or h, e.g. \"10s\")"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} does not start with a whole number"))?;
    let d = match unit.trim() {
        "us" | "µs" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    Ok(d)
}

/// Parses a listen address, or `"off"` for none.
///
/// ```
/// let a = tollgate_server::config::parse_listen("127.0.0.1:0").unwrap();
/// assert_eq!(a.unwrap().port(), 0);
/// assert_eq!(tollgate_server::config::parse_listen("off").unwrap(), None);
/// ```
pub fn parse_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    s.parse::<SocketAddr>().map(Some).map_err(|_| {
        format!("{s:?} is not an address of the form 127.0.0.1:8080 or [::1]:8080 (or \"off\")")
    })
}

/// Parses a policy: the algorithm name and a rate list.
///
/// ```
/// let p = tollgate_server::config::parse_policy(Some("sliding_log"), "5/s;100/min", None).unwrap();
/// assert_eq!(p.rates().len(), 2);
/// ```
pub fn parse_policy(
    algorithm: Option<&str>,
    rates: &str,
    initial_tokens: Option<u64>,
) -> Result<Policy, String> {
    let algorithm: Algorithm = match algorithm {
        Some(a) => a.parse().map_err(|e: tollgate::QuotaError| e.to_string())?,
        None => Algorithm::Gcra,
    };
    let policy = Policy::parse(algorithm, rates).map_err(|e| e.to_string())?;
    match initial_tokens {
        Some(t) => policy.with_initial_tokens(t).map_err(|e| e.to_string()),
        None => Ok(policy),
    }
}

/// A policy name: 1–64 characters of `[A-Za-z0-9_.-]`.
///
/// ```
/// assert!(tollgate_server::config::valid_policy_name("api.v2-login"));
/// assert!(!tollgate_server::config::valid_policy_name("a b"));
/// ```
pub fn valid_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A namespace: 1–64 printable ASCII characters without spaces.
///
/// ```
/// assert!(tollgate_server::config::validate_namespace("rl").is_ok());
/// assert!(tollgate_server::config::validate_namespace("").is_err());
/// ```
pub fn validate_namespace(ns: &str) -> Result<String, String> {
    if ns.is_empty()
        || ns.len() > 64
        || !ns
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
    {
        return Err(format!(
            "{ns:?}: a namespace is 1-64 printable ASCII characters without spaces or braces"
        ));
    }
    Ok(ns.to_string())
}

/// An HMAC secret: at least 16 bytes.
///
/// ```
/// assert!(tollgate_server::config::validate_secret("short").is_err());
/// assert!(tollgate_server::config::validate_secret("0123456789abcdef").is_ok());
/// ```
pub fn validate_secret(secret: &str) -> Result<Vec<u8>, String> {
    if secret.len() < 16 {
        return Err(format!(
            "the key-hashing secret must be at least 16 bytes (got {})",
            secret.len()
        ));
    }
    Ok(secret.as_bytes().to_vec())
}

/// Parses a policy's `lease` section into a lease configuration checked against `policy`
/// (GCRA or token bucket; sensible batch sizes and duration).
///
/// ```
/// use tollgate_server::config::{parse_lease, parse_policy, LeaseSection};
/// let gcra = parse_policy(None, "1000/s", None).unwrap();
/// let l: LeaseSection = toml::from_str("max_batch = 200").unwrap();
/// assert_eq!(parse_lease(&l, &gcra).unwrap().get_max_batch(), 200);
/// let window = parse_policy(Some("fixed_window"), "1000/s", None).unwrap();
/// assert!(parse_lease(&l, &window).unwrap_err().contains("fixed_window"));
/// ```
pub fn parse_lease(
    l: &LeaseSection,
    policy: &Policy,
) -> Result<tollgate::store::lease::LeaseConfig, String> {
    let mut c = tollgate::store::lease::LeaseConfig::default();
    if let Some(n) = l.max_batch {
        c = c.max_batch(n);
    }
    if let Some(n) = l.min_batch {
        c = c.min_batch(n);
    }
    if let Some(d) = &l.duration {
        c = c.duration(parse_duration(d)?);
    }
    if let Some(n) = l.max_keys {
        c = c.max_keys(n);
    }
    c.validate(policy).map_err(|e| e.to_string())?;
    Ok(c)
}
