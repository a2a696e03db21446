//! The loaded configuration, compiled: every domain's descriptor tree with its limits bound
//! to the server's store, and the reference server's matching rules (exact value, then a
//! `prefix*` wildcard value, then the key alone; the limit applies only when the request
//! descriptor ends at its depth).

use super::stats::Stats;
use super::yaml::{DescriptorSpec, DomainSpec, RlsConfigError, Unit};
use crate::app::App;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use tollgate::store::multi::DynMultiBackend;
use tollgate::Policy;

/// One configured limit, bound to the store.
pub(crate) struct Limit {
    name: Option<String>,
    unit: Option<Unit>,
    requests_per_unit: u32,
    unlimited: bool,
    shadow_mode: bool,
    detailed_metric: bool,
    replaces: Vec<String>,
    policy: Option<Policy>,
    backend: Option<Arc<dyn DynMultiBackend>>,
    domain: String,
    stat_key: String,
    stats: Stats,
}

impl std::fmt::Debug for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit")
            .field("stat_key", &self.stat_key)
            .field("requests_per_unit", &self.requests_per_unit)
            .field("unit", &self.unit)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Limit {
    /// A limit built from a request's `limit` override (never shadow, no name), bound to
    /// the store under the stat key `<domain>.<descriptor>_override`.
    pub(crate) fn from_override(
        app: &App,
        domain: &str,
        unit: Unit,
        requests_per_unit: u32,
        stat_key: String,
    ) -> Result<Limit, String> {
        let policy = match requests_per_unit {
            0 => None,
            n => Some(super::yaml::build_policy(unit, n, None, None)?),
        };
        let backend = match &policy {
            Some(p) => Some(app.bind_multi(p).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Limit {
            name: None,
            unit: Some(unit),
            requests_per_unit,
            unlimited: false,
            shadow_mode: false,
            detailed_metric: false,
            replaces: Vec::new(),
            policy,
            backend,
            domain: domain.to_string(),
            stats: Stats::new(domain, &stat_key),
            stat_key,
        })
    }

    /// The limit's `name`, if configured.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The unit (`None` when unlimited).
    pub(crate) fn unit(&self) -> Option<Unit> {
        self.unit
    }

    /// Requests per unit (0 when unlimited).
    pub(crate) fn requests_per_unit(&self) -> u32 {
        self.requests_per_unit
    }

    /// `unlimited: true`.
    pub(crate) fn unlimited(&self) -> bool {
        self.unlimited
    }

    /// `shadow_mode: true`: decided and counted, never denies.
    pub(crate) fn shadow_mode(&self) -> bool {
        self.shadow_mode
    }

    /// The names of the limits this one replaces.
    pub(crate) fn replaces(&self) -> &[String] {
        &self.replaces
    }

    /// The policy (`None` when unlimited, and for `requests_per_unit: 0`: deny all).
    pub(crate) fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// The bound backend (`None` when unlimited).
    pub(crate) fn backend(&self) -> Option<&Arc<dyn DynMultiBackend>> {
        self.backend.as_ref()
    }

    /// The metric name of the limit: `<domain>.<key>_<value>.<key>…` from the configuration.
    pub(crate) fn stat_key(&self) -> &str {
        &self.stat_key
    }

    /// The per-descriptor counters (for a `detailed_metric` limit, the counters of the
    /// request's own values).
    pub(crate) fn stats_for(&self, entries: &[(&str, &str)]) -> Stats {
        if !self.detailed_metric {
            return self.stats.clone();
        }
        let mut key = self.domain.clone();
        for (k, v) in entries {
            let _ = write!(key, ".{k}_{v}");
        }
        Stats::new(&self.domain, &key)
    }
}

#[derive(Default)]
struct Level {
    exact: HashMap<String, HashMap<String, Node>>,
    wildcard: Vec<(String, String, Node)>,
    any: HashMap<String, Node>,
}

struct Node {
    limit: Option<Arc<Limit>>,
    children: Level,
    /// `share_threshold` on a wildcard: the value every matched value is counted under.
    shared_value: Option<String>,
}

impl Level {
    fn lookup(&self, key: &str, value: &str) -> Option<&Node> {
        if let Some(n) = self.exact.get(key).and_then(|values| values.get(value)) {
            return Some(n);
        }
        if let Some((_, _, n)) = self
            .wildcard
            .iter()
            .find(|(k, prefix, _)| k == key && value.starts_with(prefix.as_str()))
        {
            return Some(n);
        }
        self.any.get(key)
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_empty()
    }
}

/// A request descriptor matched to a limit.
#[derive(Debug)]
#[non_exhaustive]
pub(crate) struct Match {
    /// The limit.
    pub(crate) limit: Arc<Limit>,
    /// The key under which the store counts this descriptor: `{<domain>}:<k>=<v>|<k>=<v>`
    /// (the domain as a Redis Cluster hash tag, so one request's keys share a slot).
    pub(crate) store_key: String,
}

/// Every domain, compiled.
#[derive(Default)]
pub struct Rules {
    domains: HashMap<String, Level>,
    files: Vec<String>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("domains", &self.domains.keys())
            .finish_non_exhaustive()
    }
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '%' | '|' | '=' | '{' | '}' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// The store key of a request descriptor: `{<domain>}:<k>=<v>|<k>=<v>`, with `%`, `|`, `=`,
/// `{` and `}` percent-escaped so different descriptors never share a key.
///
/// ```
/// assert_eq!(tollgate_server::rls::store_key("d", &[("a", "x|y"), ("b", "")]), "{d}:a=x%7Cy|b=");
/// ```
pub fn store_key(domain: &str, entries: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(8 + domain.len() + entries.len() * 16);
    out.push('{');
    escape_into(&mut out, domain);
    out.push_str("}:");
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        escape_into(&mut out, k);
        out.push('=');
        escape_into(&mut out, v);
    }
    out
}

impl Rules {
    /// Compiles parsed files: one domain per file (a domain in two files is an error that
    /// names both), every limit bound to `app`'s store.
    ///
    /// ```
    /// use tollgate_server::{app::App, config::Config, rls::{Rules, yaml::parse_domain}};
    /// let app = App::new(&Config::default(), None).unwrap();
    /// let spec = parse_domain("edge.yaml", "domain: edge\n").unwrap();
    /// let rules = Rules::compile(&app, vec![spec]).unwrap();
    /// assert!(rules.has_domain("edge") && !rules.has_domain("api"));
    /// assert_eq!(rules.files(), ["edge.yaml"]);
    /// ```
    pub fn compile(app: &App, specs: Vec<DomainSpec>) -> Result<Rules, RlsConfigError> {
        let mut rules = Rules::default();
        let mut seen: HashMap<String, String> = HashMap::new();
        for spec in specs {
            if let Some(other) = seen.get(&spec.domain) {
                return Err(RlsConfigError::new(
                    &spec.file,
                    "domain",
                    format!("domain {:?} is also configured in {other}", spec.domain),
                ));
            }
            seen.insert(spec.domain.clone(), spec.file.clone());
            let level = compile_level(app, &spec, &spec.descriptors, &spec.domain)?;
            rules.files.push(spec.file.clone());
            rules.domains.insert(spec.domain, level);
        }
        Ok(rules)
    }

    /// The files the rules came from (see [`compile`](Self::compile)).
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Whether `domain` is configured (see [`compile`](Self::compile)).
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The limit for one request descriptor (its `(key, value)` entries), as the reference
    /// server finds it; `None` when nothing matches (the descriptor is not limited).
    pub(crate) fn find(&self, domain: &str, entries: &[(&str, &str)]) -> Option<Match> {
        let mut level = self.domains.get(domain)?;
        let mut found = None;
        let mut keyed: Vec<(&str, &str)> = entries.to_vec();
        for (i, (k, v)) in entries.iter().enumerate() {
            let Some(node) = level.lookup(k, v) else {
                break;
            };
            if let Some(shared) = &node.shared_value {
                keyed[i].1 = shared.as_str();
            }
            if let Some(limit) = &node.limit {
                if i + 1 == entries.len() {
                    found = Some(Arc::clone(limit));
                }
            }
            if node.children.is_empty() {
                break;
            }
            level = &node.children;
        }
        found.map(|limit| Match {
            limit,
            store_key: store_key(domain, &keyed),
        })
    }
}

fn compile_level(
    app: &App,
    spec: &DomainSpec,
    descriptors: &[DescriptorSpec],
    stat_prefix: &str,
) -> Result<Level, RlsConfigError> {
    let mut level = Level::default();
    for d in descriptors {
        let stat_key = match &d.value {
            Some(v) => format!("{stat_prefix}.{}_{v}", d.key),
            None => format!("{stat_prefix}.{}", d.key),
        };
        let limit = match &d.rate_limit {
            None => None,
            Some(rl) => {
                let backend = match &rl.policy {
                    Some(p) => Some(app.bind_multi(p).map_err(|e| {
                        RlsConfigError::new(
                            &spec.file,
                            format!("{}.rate_limit", d.path),
                            format!("cannot bind to the store: {e}"),
                        )
                    })?),
                    None => None,
                };
                Some(Arc::new(Limit {
                    name: rl.name.clone(),
                    unit: rl.unit,
                    requests_per_unit: rl.requests_per_unit,
                    unlimited: rl.unlimited,
                    shadow_mode: d.shadow_mode,
                    detailed_metric: d.detailed_metric,
                    replaces: rl.replaces.clone(),
                    policy: rl.policy.clone(),
                    backend,
                    domain: spec.domain.clone(),
                    stats: Stats::new(&spec.domain, &stat_key),
                    stat_key: stat_key.clone(),
                }))
            }
        };
        let node = Node {
            limit,
            children: compile_level(app, spec, &d.descriptors, &stat_key)?,
            shared_value: d
                .share_threshold
                .then(|| d.value.clone().unwrap_or_default()),
        };
        match &d.value {
            Some(v) if v.ends_with('*') => {
                let prefix = v.trim_end_matches('*').to_string();
                level.wildcard.push((d.key.clone(), prefix, node));
            }
            Some(v) => {
                level
                    .exact
                    .entry(d.key.clone())
                    .or_default()
                    .insert(v.clone(), node);
            }
            None => {
                level.any.insert(d.key.clone(), node);
            }
        }
    }
    Ok(level)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn find_matches_like_the_reference_server() {
        let app = App::new(&Config::default(), None).unwrap();
        let spec = super::super::yaml::parse_domain(
            "edge.yaml",
            "domain: edge\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: minute, requests_per_unit: 10}\n",
        )
        .unwrap();
        let rules = Rules::compile(&app, vec![spec]).unwrap();
        let m = rules
            .find("edge", &[("remote_address", "203.0.113.7")])
            .unwrap();
        assert_eq!(m.limit.requests_per_unit(), 10);
        assert_eq!(m.store_key, "{edge}:remote_address=203.0.113.7");
        assert!(rules.find("edge", &[("path", "/")]).is_none());
        assert!(rules.find("other", &[("remote_address", "x")]).is_none());
    }
}
