//! The breaker, metrics and hook shared by every failure wrapper.

use super::{BreakerTransition, CircuitBreaker, FailureOutcome, FailurePolicy};
use crate::error::{Error, StoreError, StoreErrorKind};
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

    /// Records the result of a limiter's store call the breaker let through: `Err` with the
    /// store error when it failed (the failure policy answers then), else the result as is
    /// (an answer, or a usage error the policy does not handle).
    pub(crate) fn settle<T>(
        &self,
        probe: bool,
        result: Result<T, Error>,
    ) -> Result<Result<T, Error>, StoreError> {
        match result {
            Err(Error::Store(err)) => {
                self.failed(probe, &err);
                Err(err)
            }
            other => {
                self.answered(probe, other.is_ok());
                Ok(other)
            }
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

/// The breaker and hook configuration every failure wrapper has (`FailSafe`, `FailSafeStore`,
/// `FailSafeSemaphore`), defined once: `breaker`, `with_breaker`, `hook` and `on_failure`
/// over the wrapper's `guard` field. `$setup` is a doc-test prelude that binds `w`, a wrapper
/// of the type, for the examples; `$scope` says which calls the breaker and hooks see.
macro_rules! guard_methods {
    ($setup:literal, $scope:literal) => {
        /// The circuit breaker in front of the store (see
        /// [`store::failure::breaker`](crate::store::failure::breaker)).
        ///
        /// ```
        #[doc = $setup]
        /// use tollgate::store::failure::BreakerState;
        /// assert_eq!(w.breaker().state(), BreakerState::Closed);
        /// ```
        pub fn breaker(&self) -> &Arc<CircuitBreaker> {
            &self.guard.breaker
        }

        /// Uses `breaker` instead of the default one (5 failures, 1 s cool-down): one with
        /// another threshold, cool-down or clock, or one shared with the other wrappers over
        /// the same store (limiters and semaphores), so one outage is seen once.
        #[doc = $scope]
        ///
        /// ```
        #[doc = $setup]
        /// use tollgate::store::failure::CircuitBreaker;
        /// let shared = CircuitBreaker::builder("redis").failures(3).build();
        /// let w = w.with_breaker(shared.clone());
        /// assert!(std::sync::Arc::ptr_eq(w.breaker(), &shared));
        /// assert_eq!(w.breaker().failures_to_open(), 3);
        /// ```
        pub fn with_breaker(mut self, breaker: Arc<CircuitBreaker>) -> Self {
            self.guard.breaker = breaker;
            self
        }

        /// Shows every store failure
        /// ([`Event::StoreFailure`](crate::hooks::Event::StoreFailure)) and breaker
        /// transition ([`Event::Breaker`](crate::hooks::Event::Breaker)) to `hook` (the same
        /// [`Hook`] as for limiters; see [`hooks`](crate::hooks)). A second hook is called
        /// after the first.
        #[doc = $scope]
        ///
        /// ```
        #[doc = $setup]
        /// use tollgate::hooks::Hook;
        /// let w = w.hook(Hook::on_breaker(|t| eprintln!("store breaker: {:?} -> {:?}", t.from, t.to)));
        /// # let _ = w;
        /// ```
        pub fn hook(mut self, hook: Hook) -> Self {
            self.guard.add_hook(hook);
            self
        }

        /// Calls `hook` on every store failure the policy answered, with the outcome (a
        /// [`Hook::on_failure`]). The hook cannot change the outcome: it returns nothing and
        /// a panic inside it is caught.
        #[doc = $scope]
        ///
        /// ```
        #[doc = $setup]
        /// let w = w.on_failure(|err, outcome| eprintln!("store failed ({outcome:?}): {err}"));
        /// # let _ = w;
        /// ```
        pub fn on_failure(
            self,
            hook: impl Fn(&StoreError, FailureOutcome) + Send + Sync + 'static,
        ) -> Self {
            self.hook(Hook::on_failure(hook))
        }
    };
}
pub(crate) use guard_methods;
