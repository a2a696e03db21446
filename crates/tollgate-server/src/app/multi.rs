//! Several `(policy, key, cost)` items decided all-or-nothing in one store call: the server's
//! face of the library's multi-key capability ([`tollgate::Limiter::check_all`]), used by
//! `POST /v1/check` with `"checks"` and the RESP `TG.CHECKALL` / `TG.PEEKALL` commands.

use super::{App, AppError, PolicyEntry};
use crate::config::FailurePolicy;
use std::sync::Arc;
use std::time::Instant;
use tollgate::{Decision, Error, Limiter, MultiDecision};

/// One item of [`App::decide_all`].
///
/// ```
/// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
/// let item = tollgate_server::app::MultiItem { entry: app.inline(None, "1/s").unwrap(), key: "k".into(), cost: 1 };
/// assert_eq!(item.cost, 1);
/// ```
#[derive(Clone, Debug)]
pub struct MultiItem {
    /// The policy.
    pub entry: Arc<PolicyEntry>,
    /// The user key.
    pub key: String,
    /// Units to decide.
    pub cost: u64,
}

/// The outcome of [`App::decide_all`].
///
/// ```
/// let o = tollgate_server::app::MultiOutcome {
///     decision: tollgate::MultiDecision::from_decisions(vec![]),
///     store_error: None,
/// };
/// assert!(o.decision.allowed);
/// ```
#[derive(Clone, Debug)]
pub struct MultiOutcome {
    /// Every item's decision; `allowed` only when every item admitted (then all were
    /// charged, else none was).
    pub decision: MultiDecision,
    /// Set when the store failed: the failure policy admitted or fell back (the decision
    /// carries what it did), or the closed policy denied every item.
    pub store_error: Option<String>,
}

impl App {
    /// Decides every item together (one store call: one round trip on Redis) and, for a
    /// check, charges all of them or none. Items may use different policies and algorithms.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use tollgate_server::app::{App, MultiItem};
    /// let app = App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// let items = |user: &str| vec![
    ///     MultiItem { entry: app.inline(None, "5/s").unwrap(), key: user.into(), cost: 1 },
    ///     MultiItem { entry: app.inline(None, "1/s").unwrap(), key: "all".into(), cost: 1 },
    /// ];
    /// assert!(app.decide_all(&items("alice"), true).await.unwrap().decision.allowed);
    /// let d = app.decide_all(&items("bob"), true).await.unwrap().decision;
    /// assert_eq!(d.binding().map(|(i, _)| i), Some(1));
    /// # });
    /// ```
    pub async fn decide_all(
        &self,
        items: &[MultiItem],
        charge: bool,
    ) -> Result<MultiOutcome, AppError> {
        if items.is_empty() {
            return Err(AppError::BadRequest(
                "\"checks\" needs at least one item".into(),
            ));
        }
        let mut store_keys = Vec::with_capacity(items.len());
        for item in items {
            self.validate_key(&item.key)?;
            if item.cost == 0 {
                return Err(AppError::BadRequest("the cost must be at least 1".into()));
            }
            store_keys.push(self.keys.map(&item.key)?.into_owned());
        }
        let started = Instant::now();
        let checks: Vec<_> = items
            .iter()
            .zip(&store_keys)
            .map(|(item, key)| item.entry.limiter.item(key, item.cost))
            .collect();
        let result = if charge {
            Limiter::check_all_async(&checks).await
        } else {
            Limiter::peek_all_async(&checks).await
        };
        let outcome = match result {
            Ok(decision) => {
                // A failure policy answered for the store (open, fallback): report it as a
                // single-key check does.
                let store_error = decision.store_error().map(|e| {
                    self.store_errors.record(e);
                    e.to_string()
                });
                Ok(MultiOutcome {
                    decision,
                    store_error,
                })
            }
            Err(Error::Store(e)) => {
                self.store_errors.increment(1);
                match self.failure {
                    FailurePolicy::Closed => Ok(MultiOutcome {
                        decision: MultiDecision::from_decisions(
                            items
                                .iter()
                                .map(|i| {
                                    let limit = i.entry.policy().max_cost();
                                    Decision::from_parts(
                                        false,
                                        limit,
                                        0,
                                        1_000_000,
                                        1_000_000,
                                        Some(0),
                                    )
                                })
                                .collect(),
                        ),
                        store_error: Some(e.to_string()),
                    }),
                    _ => Err(AppError::StoreUnavailable(e.to_string())),
                }
            }
            Err(e) => Err(AppError::BadRequest(e.to_string())),
        };
        let elapsed = started.elapsed().as_secs_f64();
        if let Ok(o) = &outcome {
            // Each item counts under its policy: admitted, the item that denied, or nothing
            // (an item that admitted in a denied call was not charged).
            let binding = o.decision.binding().map(|(i, _)| i);
            for (n, item) in items.iter().enumerate() {
                let m = &item.entry.metrics;
                m.latency.record(elapsed);
                if o.decision.allowed {
                    m.allowed.increment(1);
                } else if binding == Some(n) {
                    m.denied.increment(1);
                }
            }
        }
        outcome
    }
}
