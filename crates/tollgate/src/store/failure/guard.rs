//! The breaker, metrics and hook shared by every failure wrapper.

use super::{BreakerTransition, CircuitBreaker, FailureOutcome, FailurePolicy};
use crate::error::{StoreError, StoreErrorKind};
use crate::hooks::{self, Event, Hook, StoreFailure};
use std::sync::Arc;

/// The breaker, metrics and hook shared by the failure wrappers (limiters and semaphores):
/// one mechanism for deciding when to skip the store and for reporting what happened.
#[derive(Clone)]
pub(crate) struct Guard {
    pub(crate) breaker: Arc<CircuitBreaker>,
    pub(crate) hook: Option<Hook>,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            breaker: CircuitBreaker::builder("store").build(),
            hook: None,
        }
    }
}

impl Guard {
    pub(crate) fn add_hook(&mut self, hook: Hook) {
        self.hook = Some(match self.hook.take() {
            Some(prev) => prev.then(hook),
            None => hook,
        });
    }

    /// Records the result of a store call the breaker let through.
    pub(crate) fn answered(&self, probe: bool, ok: bool) {
        if ok {
            self.transition(self.breaker.record_success(probe));
        } else {
            self.breaker.record_inconclusive(probe);
        }
    }

    /// Records a store failure of a call the breaker let through.
    pub(crate) fn failed(&self, probe: bool, err: &StoreError) {
        self.transition(self.breaker.record_failure(probe, err));
    }

    fn transition(&self, t: Option<BreakerTransition>) {
        if let Some(t) = t {
            hooks::emit(self.hook.as_ref(), &Event::Breaker(&t));
        }
    }

    /// Counts, logs and reports a failure the policy answered; fills `report` for a
    /// limiter's decision hook.
    pub(crate) fn observe(
        &self,
        what: &'static str,
        err: &StoreError,
        policy: FailurePolicy,
        outcome: FailureOutcome,
        report: Option<&mut Option<StoreFailure>>,
    ) {
        metrics::counter!(
            "tollgate_store_failures_total",
            "policy" => policy.as_str(),
            "outcome" => outcome.as_str()
        )
        .increment(1);
        metrics::counter!(
            "tollgate_store_errors_total",
            "store" => err.store,
            "kind" => err.kind.as_str()
        )
        .increment(1);
        if err.kind == StoreErrorKind::CircuitOpen {
            // One line per transition is logged by the breaker; not one per call.
            tracing::debug!(
                policy = policy.as_str(),
                outcome = outcome.as_str(),
                "{what}: {err}"
            );
        } else {
            tracing::warn!(
                store = err.store,
                kind = err.kind.as_str(),
                policy = policy.as_str(),
                outcome = outcome.as_str(),
                "{what} failed: {err}"
            );
        }
        if self.hook.is_none() && report.is_none() {
            return;
        }
        let failure = StoreFailure::new(err.clone(), policy, outcome);
        hooks::emit(self.hook.as_ref(), &Event::StoreFailure(&failure));
        if let Some(slot) = report {
            *slot = Some(failure);
        }
    }
}
