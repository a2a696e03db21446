//! Per-descriptor counters, named like the reference server's statistics, exported through
//! the server's Prometheus endpoint (`/metrics`) with the labels `domain` and `descriptor`
//! (the configuration path, e.g. `edge.remote_address`, or the request's values for a
//! `detailed_metric` descriptor):
//!
//! - `tollgate_rls_total_hits`: hits asked for (the descriptor's `hits_addend`);
//! - `tollgate_rls_over_limit`: hits this descriptor denied;
//! - `tollgate_rls_near_limit`: admitted hits that took the key above 80 % of its limit;
//! - `tollgate_rls_within_limit`: admitted (charged) hits;
//! - `tollgate_rls_shadow_mode`: hits a shadow-mode descriptor would have denied.

use metrics::Counter;

/// The counters of one descriptor.
#[derive(Clone)]
pub(crate) struct Stats {
    pub total_hits: Counter,
    pub over_limit: Counter,
    pub near_limit: Counter,
    pub within_limit: Counter,
    pub shadow_mode: Counter,
}

impl Stats {
    pub(crate) fn new(domain: &str, descriptor: &str) -> Stats {
        let c = |name: &'static str| metrics::counter!(name, "domain" => domain.to_string(), "descriptor" => descriptor.to_string());
        Stats {
            total_hits: c("tollgate_rls_total_hits"),
            over_limit: c("tollgate_rls_over_limit"),
            near_limit: c("tollgate_rls_near_limit"),
            within_limit: c("tollgate_rls_within_limit"),
            shadow_mode: c("tollgate_rls_shadow_mode"),
        }
    }
}

/// The reference server's near-limit ratio: admitted hits above 80 % of the limit count as
/// near the limit.
pub(crate) const NEAR_LIMIT_RATIO_PERCENT: u64 = 80;

/// Admitted hits that took the key above the near-limit threshold: of the `hits` that
/// brought the used amount from `used - hits` to `used`, those above `floor(limit × 0.8)`.
pub(crate) fn near_limit_hits(limit: u64, used: u64, hits: u64) -> u64 {
    let threshold = limit.saturating_mul(NEAR_LIMIT_RATIO_PERCENT) / 100;
    if used <= threshold {
        return 0;
    }
    (used - threshold).min(hits)
}

#[cfg(test)]
mod tests {
    #[test]
    fn near_limit_counts_only_hits_above_the_threshold() {
        // limit 10: threshold 8
        assert_eq!(super::near_limit_hits(10, 8, 1), 0);
        assert_eq!(super::near_limit_hits(10, 9, 1), 1);
        assert_eq!(super::near_limit_hits(10, 10, 5), 2);
        assert_eq!(super::near_limit_hits(10, 10, 1), 1);
    }
}
