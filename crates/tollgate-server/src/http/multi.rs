//! `POST /v1/check` and `/v1/peek` with `"checks"`: several `(policy, key, cost)` items decided
//! all-or-nothing in one store call ([`App::decide_all`]).

use super::{resolve, ApiError, DecideRequest, DecisionBody, HttpState};
use crate::app::{rate_limit_field, MultiItem};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// The reply to a multi-key `/v1/check`.
///
/// ```
/// let r = tollgate_server::http::MultiBody { allowed: true, denied_by_item: None, decisions: vec![] };
/// assert!(r.allowed);
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct MultiBody {
    /// Every item admitted (and, for check, every item was charged); false: nothing was
    /// charged anywhere.
    pub allowed: bool,
    /// When denied: the index of the item to wait for (the longest `retry_after`).
    pub denied_by_item: Option<usize>,
    /// Each item's own decision, in request order.
    pub decisions: Vec<DecisionBody>,
}

/// Decides `checks` (the items of one request) together.
pub(super) async fn decide_all(
    state: &HttpState,
    outer: &DecideRequest,
    checks: &[DecideRequest],
    charge: bool,
) -> Result<Response, ApiError> {
    let bad = |m: &str| ApiError(StatusCode::BAD_REQUEST, m.into());
    if outer.policy.is_some()
        || outer.rates.is_some()
        || outer.algorithm.is_some()
        || !outer.key.is_empty()
        || outer.cost.is_some()
        || outer.amount.is_some()
    {
        return Err(bad(
            "with \"checks\", give each item's policy, key and cost inside \"checks\" only",
        ));
    }
    let mut items = Vec::with_capacity(checks.len());
    for (i, c) in checks.iter().enumerate() {
        if c.checks.is_some() || c.amount.is_some() {
            return Err(bad(&format!(
                "checks[{i}]: an item has \"policy\" or \"rates\", \"key\" and \"cost\" only"
            )));
        }
        items.push(MultiItem {
            entry: resolve(state, c)?,
            key: c.key.clone(),
            cost: c.cost.unwrap_or(1),
        });
    }
    let outcome = state.app.decide_all(&items, charge).await?;
    let d = &outcome.decision;
    let mut headers = HeaderMap::new();
    let policies: Vec<&str> = items.iter().map(|i| i.entry.rate_limit_policy()).collect();
    if let Ok(v) = HeaderValue::from_str(&policies.join(", ")) {
        headers.insert("ratelimit-policy", v);
    }
    // Allowed: every item's quota; denied: the items that denied (the others were not
    // charged, so their decisions describe a charge that did not happen).
    let fields: Vec<String> = items
        .iter()
        .zip(&d.decisions)
        .filter(|(_, dec)| d.allowed || !dec.allowed)
        .map(|(item, dec)| rate_limit_field(item.entry.name(), item.entry.policy(), dec))
        .collect();
    if let Ok(v) = HeaderValue::from_str(&fields.join(", ")) {
        headers.insert("ratelimit", v);
    }
    if let Some((_, binding)) = d.binding() {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(binding.retry_after_secs()),
        );
    }
    let body = MultiBody {
        allowed: d.allowed,
        denied_by_item: d.binding().map(|(i, _)| i),
        decisions: items
            .iter()
            .zip(&d.decisions)
            .map(|(item, dec)| {
                DecisionBody::new(item.entry.name(), dec, outcome.store_error.clone())
            })
            .collect(),
    };
    Ok((StatusCode::OK, headers, Json(body)).into_response())
}
