//! envoyproxy/ratelimit's YAML configuration format, parsed and validated into a
//! [`DomainSpec`]: one file per domain, nested descriptors, `rate_limit {unit,
//! requests_per_unit, name, unlimited, replaces}`, `shadow_mode`, `detailed_metric`,
//! `share_threshold`, plus tollgate's extensions `algorithm` and `burst` inside `rate_limit`.
//!
//! Every error names the file, the path inside it and the problem:
//!
//! ```
//! use tollgate_server::rls::yaml::parse_domain;
//! let e = parse_domain("mongo.yaml", "domain: mongo\ndescriptors:\n  - key: db\n    rate_limit: {unit: fortnight, requests_per_unit: 5}\n").unwrap_err();
//! assert_eq!(e.to_string(), "mongo.yaml: descriptors[0].rate_limit.unit: unknown unit \"fortnight\" (expected second, minute, hour, day, week, month or year)");
//!
//! let d = parse_domain("mongo.yaml", "domain: mongo\ndescriptors:\n  - key: db\n    value: users\n    rate_limit: {unit: second, requests_per_unit: 500}\n").unwrap();
//! assert_eq!(d.descriptors[0].rate_limit.as_ref().unwrap().requests_per_unit, 500);
//! ```

use serde_norway::Value;
use std::time::Duration;
use tollgate::{Algorithm, Policy, Rate};

/// A configuration error: the file, the path in it (`descriptors[0].rate_limit.unit`) and
/// the problem.
///
/// ```
/// let e = tollgate_server::rls::yaml::RlsConfigError::new("a.yaml", "domain", "is empty");
/// assert_eq!(e.to_string(), "a.yaml: domain: is empty");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
#[non_exhaustive]
pub struct RlsConfigError {
    /// The file (as given to the loader).
    pub file: String,
    /// The path inside the file; empty for the whole file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl RlsConfigError {
    /// An error about `path` in `file`.
    ///
    /// ```
    /// let e = tollgate_server::rls::yaml::RlsConfigError::new("a.yaml", "", "not YAML");
    /// assert_eq!(e.to_string(), "a.yaml: not YAML");
    /// ```
    pub fn new(
        file: impl Into<String>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        RlsConfigError {
            file: file.into(),
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The reference server's rate-limit units (`RateLimitResponse.RateLimit.Unit`).
///
/// ```
/// use tollgate_server::rls::yaml::Unit;
/// assert_eq!(Unit::parse("MINUTE"), Some(Unit::Minute));
/// assert_eq!(Unit::Day.duration().as_secs(), 86_400);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    /// 1 s.
    Second,
    /// 60 s.
    Minute,
    /// 3600 s.
    Hour,
    /// 86,400 s.
    Day,
    /// 7 days.
    Week,
    /// 30 days (as the reference server counts a month).
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    /// Parses a unit name, case-insensitively (the reference server upper-cases it).
    ///
    /// ```
    /// assert!(tollgate_server::rls::yaml::Unit::parse("sec").is_none());
    /// ```
    pub fn parse(s: &str) -> Option<Unit> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "second" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            "week" => Unit::Week,
            "month" => Unit::Month,
            "year" => Unit::Year,
            _ => return None,
        })
    }

    /// The unit's protobuf number (`envoy.type.v3.RateLimitUnit` and
    /// `RateLimitResponse.RateLimit.Unit` share it).
    ///
    /// ```
    /// use tollgate_server::rls::yaml::Unit;
    /// assert_eq!(Unit::from_proto(Unit::Week.proto()), Some(Unit::Week));
    /// assert_eq!(Unit::from_proto(0), None);
    /// ```
    pub fn proto(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
            Unit::Week => 7,
        }
    }

    /// The unit of a protobuf number (`None` for `UNKNOWN` and unknown numbers).
    ///
    /// ```
    /// assert_eq!(tollgate_server::rls::yaml::Unit::from_proto(1), Some(tollgate_server::rls::yaml::Unit::Second));
    /// ```
    pub fn from_proto(n: i32) -> Option<Unit> {
        Some(match n {
            1 => Unit::Second,
            2 => Unit::Minute,
            3 => Unit::Hour,
            4 => Unit::Day,
            5 => Unit::Month,
            6 => Unit::Year,
            7 => Unit::Week,
            _ => return None,
        })
    }

    /// The window length.
    ///
    /// ```
    /// assert_eq!(tollgate_server::rls::yaml::Unit::Month.duration().as_secs(), 30 * 86_400);
    /// ```
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        })
    }

    /// The lower-case name.
    ///
    /// ```
    /// assert_eq!(tollgate_server::rls::yaml::Unit::Hour.name(), "hour");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }
}

/// `rate_limit:` of a descriptor.
///
/// ```
/// let d = tollgate_server::rls::yaml::parse_domain("a.yaml", "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 3, algorithm: gcra, burst: 5}\n").unwrap();
/// let r = d.descriptors[0].rate_limit.as_ref().unwrap();
/// assert_eq!(r.policy.as_ref().unwrap().rates()[0].burst(), 5);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RateLimitSpec {
    /// The window unit (`None` only when `unlimited`).
    pub unit: Option<Unit>,
    /// Requests per unit.
    pub requests_per_unit: u32,
    /// `unlimited: true`: matched, never limited.
    pub unlimited: bool,
    /// The limit's name (for `replaces` and the fields).
    pub name: Option<String>,
    /// Names of the limits this one replaces when both match one request.
    pub replaces: Vec<String>,
    /// The policy: a clock-aligned fixed window per unit unless `algorithm` / `burst` say
    /// otherwise (`None` when `unlimited`, and for `requests_per_unit: 0`, which denies
    /// every request).
    pub policy: Option<Policy>,
}

/// One `descriptors:` entry.
///
/// ```
/// let d = tollgate_server::rls::yaml::parse_domain("a.yaml", "domain: a\ndescriptors:\n  - key: path\n    value: \"/api/*\"\n    shadow_mode: true\n").unwrap();
/// assert_eq!(d.descriptors[0].value.as_deref(), Some("/api/*"));
/// assert!(d.descriptors[0].shadow_mode);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DescriptorSpec {
    /// The entry key.
    pub key: String,
    /// The value; absent: any value (each value limited on its own); ending in `*`: any
    /// value with that prefix.
    pub value: Option<String>,
    /// The limit at this depth, if any.
    pub rate_limit: Option<RateLimitSpec>,
    /// Decide and count, but never deny.
    pub shadow_mode: bool,
    /// Metrics named after the request's values rather than the configuration's.
    pub detailed_metric: bool,
    /// With a wildcard `value`: every value it matches shares one counter (else each value
    /// has its own).
    pub share_threshold: bool,
    /// Nested descriptors (the next entry of a request descriptor).
    pub descriptors: Vec<DescriptorSpec>,
    /// Where it is in the file (`descriptors[0].descriptors[1]`), for errors.
    pub path: String,
}

/// One file: a domain and its descriptors.
///
/// ```
/// let d = tollgate_server::rls::yaml::parse_domain("a.yaml", "domain: edge\n").unwrap();
/// assert_eq!(d.domain, "edge");
/// assert!(d.descriptors.is_empty());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DomainSpec {
    /// The file it came from.
    pub file: String,
    /// The domain.
    pub domain: String,
    /// Top-level descriptors.
    pub descriptors: Vec<DescriptorSpec>,
}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, path: &str, message: impl Into<String>) -> RlsConfigError {
        RlsConfigError::new(self.file, path, message)
    }

    fn mapping<'v>(
        &self,
        v: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Result<Vec<(&'v str, &'v Value)>, RlsConfigError> {
        let Value::Mapping(m) = v else {
            return Err(self.err(path, format!("expected a mapping, found {}", kind(v))));
        };
        let mut out = Vec::with_capacity(m.len());
        for (k, val) in m {
            let Value::String(k) = k else {
                return Err(self.err(path, format!("a key is {}, not a string", kind(k))));
            };
            if !allowed.contains(&k.as_str()) {
                return Err(self.err(
                    &join(path, k),
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                ));
            }
            out.push((k.as_str(), val));
        }
        Ok(out)
    }

    fn string(&self, v: &Value, path: &str) -> Result<String, RlsConfigError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            // YAML reads `value: 200` or `value: true` as non-strings; the reference
            // server takes them as text.
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(self.err(path, format!("expected a string, found {}", kind(other)))),
        }
    }

    fn boolean(&self, v: &Value, path: &str) -> Result<bool, RlsConfigError> {
        match v {
            Value::Bool(b) => Ok(*b),
            other => Err(self.err(
                path,
                format!("expected true or false, found {}", kind(other)),
            )),
        }
    }

    fn unsigned(&self, v: &Value, path: &str, max: u64) -> Result<u64, RlsConfigError> {
        match v.as_u64() {
            Some(n) if n <= max => Ok(n),
            _ => Err(self.err(
                path,
                format!("expected a whole number from 0 to {max}, found {}", show(v)),
            )),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        other => kind(other).to_string(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Parses and validates one file's text; `file` names it in errors.
///
/// ```
/// let e = tollgate_server::rls::yaml::parse_domain("x.yaml", "descriptors: []").unwrap_err();
/// assert_eq!(e.to_string(), "x.yaml: domain: missing");
/// ```
pub fn parse_domain(file: &str, text: &str) -> Result<DomainSpec, RlsConfigError> {
    let ctx = Ctx { file };
    let root: Value =
        serde_norway::from_str(text).map_err(|e| ctx.err("", format!("not valid YAML: {e}")))?;
    let fields = ctx.mapping(&root, "", &["domain", "descriptors"])?;
    let mut domain = None;
    let mut descriptors = Vec::new();
    for (k, v) in fields {
        match k {
            "domain" => domain = Some(ctx.string(v, "domain")?),
            _ => descriptors = parse_list(&ctx, v, "descriptors")?,
        }
    }
    let domain = domain.ok_or_else(|| ctx.err("domain", "missing"))?;
    if domain.is_empty() {
        return Err(ctx.err("domain", "must not be empty"));
    }
    Ok(DomainSpec {
        file: file.to_string(),
        domain,
        descriptors,
    })
}

fn parse_list(ctx: &Ctx<'_>, v: &Value, path: &str) -> Result<Vec<DescriptorSpec>, RlsConfigError> {
    let items = match v {
        Value::Sequence(items) => items,
        Value::Null => return Ok(Vec::new()),
        other => return Err(ctx.err(path, format!("expected a list, found {}", kind(other)))),
    };
    let mut out: Vec<DescriptorSpec> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let d = parse_descriptor(ctx, item, &format!("{path}[{i}]"))?;
        if let Some(prev) = out.iter().find(|p| p.key == d.key && p.value == d.value) {
            return Err(ctx.err(
                &d.path,
                format!(
                    "duplicate descriptor (key {:?}{}) also at {}",
                    d.key,
                    d.value
                        .as_deref()
                        .map_or(String::new(), |v| format!(", value {v:?}")),
                    prev.path
                ),
            ));
        }
        out.push(d);
    }
    Ok(out)
}

fn parse_descriptor(
    ctx: &Ctx<'_>,
    v: &Value,
    path: &str,
) -> Result<DescriptorSpec, RlsConfigError> {
    let fields = ctx.mapping(
        v,
        path,
        &[
            "key",
            "value",
            "rate_limit",
            "descriptors",
            "shadow_mode",
            "detailed_metric",
            "share_threshold",
        ],
    )?;
    let mut d = DescriptorSpec {
        key: String::new(),
        value: None,
        rate_limit: None,
        shadow_mode: false,
        detailed_metric: false,
        share_threshold: false,
        descriptors: Vec::new(),
        path: path.to_string(),
    };
    let mut has_key = false;
    for (k, val) in fields {
        let p = join(path, k);
        match k {
            "key" => {
                d.key = ctx.string(val, &p)?;
                has_key = true;
            }
            "value" => d.value = Some(ctx.string(val, &p)?),
            "rate_limit" => d.rate_limit = Some(parse_rate_limit(ctx, val, &p)?),
            "shadow_mode" => d.shadow_mode = ctx.boolean(val, &p)?,
            "detailed_metric" => d.detailed_metric = ctx.boolean(val, &p)?,
            "share_threshold" => d.share_threshold = ctx.boolean(val, &p)?,
            _ => d.descriptors = parse_list(ctx, val, &p)?,
        }
    }
    if !has_key || d.key.is_empty() {
        return Err(ctx.err(&join(path, "key"), "missing or empty"));
    }
    if d.share_threshold && !d.value.as_deref().is_some_and(|v| v.ends_with('*')) {
        return Err(ctx.err(
            &join(path, "share_threshold"),
            "needs a wildcard value (one ending in *)",
        ));
    }
    Ok(d)
}

fn parse_rate_limit(ctx: &Ctx<'_>, v: &Value, path: &str) -> Result<RateLimitSpec, RlsConfigError> {
    let fields = ctx.mapping(
        v,
        path,
        &[
            "unit",
            "requests_per_unit",
            "unlimited",
            "name",
            "replaces",
            "algorithm",
            "burst",
        ],
    )?;
    let mut unit = None;
    let mut rpu = None;
    let mut unlimited = false;
    let mut name = None;
    let mut replaces = Vec::new();
    let mut algorithm = None;
    let mut burst = None;
    for (k, val) in fields {
        let p = join(path, k);
        match k {
            "unit" => {
                let s = ctx.string(val, &p)?;
                unit = Some(Unit::parse(&s).ok_or_else(|| {
                    ctx.err(
                        &p,
                        format!("unknown unit {s:?} (expected second, minute, hour, day, week, month or year)"),
                    )
                })?);
            }
            "requests_per_unit" => rpu = Some(ctx.unsigned(val, &p, u64::from(u32::MAX))? as u32),
            "unlimited" => unlimited = ctx.boolean(val, &p)?,
            "name" => name = Some(ctx.string(val, &p)?),
            "replaces" => replaces = parse_replaces(ctx, val, &p)?,
            "algorithm" => {
                let s = ctx.string(val, &p)?;
                algorithm = Some(
                    s.parse::<Algorithm>()
                        .map_err(|e| ctx.err(&p, e.to_string()))?,
                );
            }
            _ => burst = Some(ctx.unsigned(val, &p, u64::MAX)?),
        }
    }
    if unlimited {
        if unit.is_some() || rpu.is_some() || algorithm.is_some() || burst.is_some() {
            return Err(ctx.err(
                path,
                "unlimited: true takes no unit, requests_per_unit, algorithm or burst",
            ));
        }
        return Ok(RateLimitSpec {
            unit: None,
            requests_per_unit: 0,
            unlimited,
            name,
            replaces,
            policy: None,
        });
    }
    let unit = unit.ok_or_else(|| ctx.err(&join(path, "unit"), "missing"))?;
    let rpu = rpu.ok_or_else(|| ctx.err(&join(path, "requests_per_unit"), "missing"))?;
    // requests_per_unit: 0 denies every request (the reference server's block list).
    let policy = if rpu == 0 {
        None
    } else {
        Some(build_policy(unit, rpu, algorithm, burst).map_err(|m| ctx.err(path, m))?)
    };
    Ok(RateLimitSpec {
        unit: Some(unit),
        requests_per_unit: rpu,
        unlimited,
        name,
        replaces,
        policy,
    })
}

fn parse_replaces(ctx: &Ctx<'_>, v: &Value, path: &str) -> Result<Vec<String>, RlsConfigError> {
    let Value::Sequence(items) = v else {
        return Err(ctx.err(
            path,
            format!("expected a list of {{name: ...}}, found {}", kind(v)),
        ));
    };
    let mut names = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let fields = ctx.mapping(item, &p, &["name"])?;
        let name = match fields.first() {
            Some((_, v)) => ctx.string(v, &join(&p, "name"))?,
            None => String::new(),
        };
        if name.is_empty() {
            return Err(ctx.err(&join(&p, "name"), "missing or empty"));
        }
        names.push(name);
    }
    Ok(names)
}

/// The policy of a limit: `requests_per_unit` per `unit`; without `algorithm`, a
/// clock-aligned fixed window (the reference server's decisions). `burst` applies to GCRA
/// and the token bucket.
///
/// ```
/// use tollgate::Algorithm;
/// use tollgate_server::rls::yaml::{build_policy, Unit};
/// let p = build_policy(Unit::Minute, 10, None, None).unwrap();
/// assert_eq!(p.algorithm(), Algorithm::FixedWindow);
/// assert!(build_policy(Unit::Minute, 0, None, None).unwrap_err().contains("requests_per_unit"));
/// ```
pub fn build_policy(
    unit: Unit,
    requests_per_unit: u32,
    algorithm: Option<Algorithm>,
    burst: Option<u64>,
) -> Result<Policy, String> {
    if requests_per_unit == 0 {
        return Err("requests_per_unit must be at least 1 (use unlimited: true for no limit, or a limit to deny all)".into());
    }
    let algorithm = algorithm.unwrap_or(Algorithm::FixedWindow);
    let mut rate = Rate::new(u64::from(requests_per_unit), unit.duration())
        .map_err(|e| format!("requests_per_unit / unit: {e}"))?;
    if let Some(b) = burst {
        rate = rate.with_burst(b).map_err(|e| format!("burst: {e}"))?;
    }
    Policy::new(algorithm, [rate]).map_err(|e| format!("algorithm / burst: {e}"))
}
