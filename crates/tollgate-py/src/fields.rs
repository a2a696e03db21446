//! `ratelimit_fields` / `retry_after_field`: the HTTP response fields of a decision, formatted
//! by `tollgate_tower::headers` (the formula of the tower layer, in one place) for the
//! Python web middleware (`tollgate.asgi`, `tollgate.wsgi`).

use crate::errors;
use crate::limiter::PyLimiter;
use crate::types::PyDecision;
use pyo3::prelude::*;
use tollgate::{Decision, Policy};
use tollgate_tower::headers::{
    is_valid_policy_name, quota_windows, ratelimit_field, ratelimit_policy_field, PolicyReport,
};

/// The `w` the tower layer reports for `d` on `policy`: the window of the rate whose capacity
/// is the decision's limit, else the first rate's.
fn window_for(policy: &Policy, d: &Decision) -> u64 {
    let windows = quota_windows(policy);
    windows
        .iter()
        .find(|(q, _)| *q == d.limit)
        .or_else(|| windows.first())
        .map_or(1, |(_, w)| *w)
}

/// `(RateLimit, RateLimit-Policy)` for `(name, limiter, decision)` items, one list item per
/// entry in order; `None` for no items. A name that is not 1-64 characters of
/// `A-Z a-z 0-9 - _ . : /` raises `ConfigError`.
#[pyfunction]
pub(crate) fn ratelimit_fields(
    py: Python<'_>,
    items: Vec<(String, PyRef<'_, PyLimiter>, PyRef<'_, PyDecision>)>,
) -> PyResult<Option<(String, String)>> {
    let mut reports = Vec::with_capacity(items.len());
    for (name, limiter, decision) in &items {
        check_policy_name(py, name)?;
        reports.push(PolicyReport {
            name,
            decision: decision.d,
            window_secs: window_for(&limiter.shared.policy, &decision.d),
        });
    }
    Ok(ratelimit_field(&reports).zip(ratelimit_policy_field(&reports)))
}

/// Raises `ConfigError` unless `name` can be a policy name in the fields: 1 to 64
/// characters of `A-Z a-z 0-9 - _ . : /`.
#[pyfunction]
pub(crate) fn check_policy_name(py: Python<'_>, name: &str) -> PyResult<()> {
    if is_valid_policy_name(name) {
        return Ok(());
    }
    Err(errors::config(
        py,
        format!("policy name {name:?} must be 1-64 characters of A-Z a-z 0-9 - _ . : /"),
    ))
}

/// The `Retry-After` value (whole seconds, rounded up, at least 1) for a denial.
#[pyfunction]
pub(crate) fn retry_after_field(decision: PyRef<'_, PyDecision>) -> u64 {
    decision.d.retry_after_secs().max(1)
}
