//! Hooks: observers of decisions, store failures and circuit-breaker transitions that can
//! **never change a verdict**.
//!
//! One mechanism serves every observer in tollgate: a [`Hook`] is a shared closure over an
//! [`Event`], called after the verdict is final, with nothing to return; a hook that panics is
//! caught (`catch_unwind`), counted in `tollgate_hook_panics_total` and logged, and the caller
//! gets the verdict it would have got without the hook (unless the binary is built with
//! `panic = "abort"`, where a panic ends the process as everywhere else).
//!
//! | where | events | attach with |
//! |---|---|---|
//! | a [`Limiter`](crate::Limiter) | [`Event::Decision`]: every check, peek, refund, reset — allowed, denied, or failed — and the store failure the failure policy answered, if any | [`LimiterBuilder::hook`](crate::LimiterBuilder::hook) / [`on_decision`](crate::LimiterBuilder::on_decision) |
//! | a failure policy ([`FailSafe`](crate::store::failure::FailSafe), [`FailSafeStore`](crate::store::failure::FailSafeStore), [`FailSafeSemaphore`](crate::semaphore::FailSafeSemaphore)) | [`Event::StoreFailure`] per failed store call, [`Event::Breaker`] per breaker transition | `.hook(..)` / `.on_failure(..)` |
//!
//! distributed-rate-limiter's `on_allow` / `on_block` / `on_error` are
//! [`Hook::on_allow`], [`Hook::on_block`] and [`Hook::on_error`].
//!
//! ```
//! use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
//! use tollgate::{Limiter, Policy, Rate, hooks::Hook};
//!
//! let blocked = Arc::new(AtomicUsize::new(0));
//! let seen = blocked.clone();
//! let limiter = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap())
//!     .hook(Hook::on_block(move |key, decision| {
//!         assert_eq!(key, "alice");
//!         assert!(!decision.allowed);
//!         seen.fetch_add(1, Ordering::Relaxed);
//!     }))
//!     // a hook that panics changes nothing: the verdict stands
//!     .on_decision(|_| panic!("a bug in a hook"))
//!     .build();
//! assert!(limiter.check("alice").unwrap().allowed);
//! assert!(!limiter.check("alice").unwrap().allowed);
//! assert_eq!(blocked.load(Ordering::Relaxed), 1);
//! ```

use crate::decision::Decision;
use crate::error::{Error, StoreError};
use crate::store::failure::{BreakerTransition, FailureOutcome, FailurePolicy};
use crate::store::Op;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// A store failure and what the failure policy did about it.
///
/// ```
/// use tollgate::{StoreError, hooks::StoreFailure};
/// use tollgate::store::failure::{FailureOutcome, FailurePolicy};
/// let f = StoreFailure::new(StoreError::new("redis", "down"), FailurePolicy::FailOpen, FailureOutcome::Admitted);
/// assert_eq!(f.outcome, FailureOutcome::Admitted);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreFailure {
    /// What the store reported (kind [`CircuitOpen`](crate::StoreErrorKind::CircuitOpen)
    /// when the breaker answered without asking it).
    pub error: StoreError,
    /// The failure policy that answered.
    pub policy: FailurePolicy,
    /// What it did.
    pub outcome: FailureOutcome,
}

impl StoreFailure {
    /// A failure report.
    ///
    /// ```
    /// use tollgate::{StoreError, hooks::StoreFailure};
    /// use tollgate::store::failure::{FailureOutcome, FailurePolicy};
    /// let f = StoreFailure::new(StoreError::new("x", "y"), FailurePolicy::FailClosed, FailureOutcome::Rejected);
    /// assert_eq!(f.policy, FailurePolicy::FailClosed);
    /// ```
    pub fn new(error: StoreError, policy: FailurePolicy, outcome: FailureOutcome) -> Self {
        Self {
            error,
            policy,
            outcome,
        }
    }
}

/// One limiter call, after its verdict is final.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate};
/// let limiter = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap())
///     .on_decision(|e| {
///         assert_eq!(e.key, "k");
///         assert!(e.is_allowed() || e.is_denied());
///         assert!(e.store_error().is_none());
///     })
///     .build();
/// let _ = limiter.check("k").unwrap();
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct DecisionEvent<'a> {
    /// The key as the caller gave it.
    pub key: &'a str,
    /// The operation.
    pub op: Op,
    /// What the caller gets: a decision (check, peek), nothing (refund, reset), or an error.
    pub result: Result<Option<&'a Decision>, &'a Error>,
    /// Set when the store failed and the failure policy answered instead (fail open,
    /// fallback) or returned the error (fail closed).
    pub store_failure: Option<&'a StoreFailure>,
}

impl DecisionEvent<'_> {
    /// The decision, for a check or peek that got one.
    ///
    /// ```
    /// # let l = tollgate::Limiter::builder(tollgate::Policy::gcra(tollgate::Rate::per_second(1).unwrap()).unwrap())
    /// #     .on_decision(|e| assert_eq!(e.decision().unwrap().limit, 1)).build();
    /// # let _ = l.check("k");
    /// ```
    pub fn decision(&self) -> Option<&Decision> {
        self.result.ok().flatten()
    }

    /// A check or peek that was admitted.
    ///
    /// ```
    /// # let l = tollgate::Limiter::builder(tollgate::Policy::gcra(tollgate::Rate::per_second(1).unwrap()).unwrap())
    /// #     .on_decision(|e| assert!(e.is_allowed())).build();
    /// # let _ = l.check("k");
    /// ```
    pub fn is_allowed(&self) -> bool {
        self.decision().is_some_and(|d| d.allowed)
    }

    /// A check or peek that was denied.
    ///
    /// ```
    /// # let l = tollgate::Limiter::builder(tollgate::Policy::gcra(tollgate::Rate::per_second(1).unwrap()).unwrap())
    /// #     .on_decision(|e| assert!(!e.is_denied())).build();
    /// # let _ = l.check("k");
    /// ```
    pub fn is_denied(&self) -> bool {
        self.decision().is_some_and(|d| !d.allowed)
    }

    /// The store error of this call: returned to the caller, or answered by the failure
    /// policy.
    ///
    /// ```
    /// # let l = tollgate::Limiter::builder(tollgate::Policy::gcra(tollgate::Rate::per_second(1).unwrap()).unwrap())
    /// #     .on_decision(|e| assert!(e.store_error().is_none())).build();
    /// # let _ = l.check("k");
    /// ```
    pub fn store_error(&self) -> Option<&StoreError> {
        match (self.result, self.store_failure) {
            (_, Some(f)) => Some(&f.error),
            (Err(Error::Store(e)), None) => Some(e),
            _ => None,
        }
    }
}

/// What a [`Hook`] is shown.
///
/// ```
/// use tollgate::hooks::{Event, Hook};
/// let hook = Hook::new(|event| match event {
///     Event::Decision(d) => println!("{}: {:?}", d.key, d.result),
///     Event::StoreFailure(f) => eprintln!("store failed ({:?}): {}", f.outcome, f.error),
///     Event::Breaker(t) => eprintln!("breaker {}: {:?} -> {:?}", t.breaker, t.from, t.to),
///     _ => {}
/// });
/// # let _ = hook;
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A limiter call and its verdict.
    Decision(&'a DecisionEvent<'a>),
    /// A store call failed; the failure policy answered.
    StoreFailure(&'a StoreFailure),
    /// A circuit breaker changed state.
    Breaker(&'a BreakerTransition),
}

type HookFn = dyn Fn(&Event<'_>) + Send + Sync;

/// An observer: a shared closure over [`Event`]s that cannot change any verdict (it returns
/// nothing, runs after the verdict is final, and a panic inside it is caught). Clones share
/// the closure.
///
/// ```
/// use tollgate::hooks::Hook;
/// let log = Hook::on_error(|key, err| eprintln!("rate limit on {key} failed: {err}"));
/// let both = log.clone().then(Hook::on_allow(|key, _| println!("{key} admitted")));
/// # let _ = both;
/// ```
#[derive(Clone)]
pub struct Hook(Arc<HookFn>);

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hook")
    }
}

impl Hook {
    /// A hook over every event.
    ///
    /// ```
    /// let h = tollgate::hooks::Hook::new(|e| println!("{e:?}"));
    /// # let _ = h;
    /// ```
    pub fn new(f: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Hook {
        Hook(Arc::new(f))
    }

    /// A hook over limiter decisions only ([`Event::Decision`]).
    ///
    /// ```
    /// let h = tollgate::hooks::Hook::on_decision(|d| println!("{} -> {:?}", d.key, d.result));
    /// # let _ = h;
    /// ```
    pub fn on_decision(f: impl Fn(&DecisionEvent<'_>) + Send + Sync + 'static) -> Hook {
        Hook::new(move |e| {
            if let Event::Decision(d) = e {
                f(d)
            }
        })
    }

    /// Called with the key and the decision of every admitted check or peek.
    ///
    /// ```
    /// let h = tollgate::hooks::Hook::on_allow(|key, d| println!("{key}: {} left", d.remaining));
    /// # let _ = h;
    /// ```
    pub fn on_allow(f: impl Fn(&str, &Decision) + Send + Sync + 'static) -> Hook {
        Hook::on_decision(move |e| match e.decision() {
            Some(d) if d.allowed => f(e.key, d),
            _ => {}
        })
    }

    /// Called with the key and the decision of every denied check or peek.
    ///
    /// ```
    /// let h = tollgate::hooks::Hook::on_block(|key, d| println!("{key}: retry in {:?}", d.retry_after));
    /// # let _ = h;
    /// ```
    pub fn on_block(f: impl Fn(&str, &Decision) + Send + Sync + 'static) -> Hook {
        Hook::on_decision(move |e| match e.decision() {
            Some(d) if !d.allowed => f(e.key, d),
            _ => {}
        })
    }

    /// Called with the key and the store error of every limiter call whose store failed —
    /// whether the error reached the caller (fail closed) or the failure policy answered
    /// (fail open, fallback).
    ///
    /// ```
    /// let h = tollgate::hooks::Hook::on_error(|key, err| eprintln!("{key}: {} ({})", err, err.kind));
    /// # let _ = h;
    /// ```
    pub fn on_error(f: impl Fn(&str, &StoreError) + Send + Sync + 'static) -> Hook {
        Hook::on_decision(move |e| {
            if let Some(err) = e.store_error() {
                f(e.key, err)
            }
        })
    }

    /// Called on every store failure a failure policy answered, with what it did
    /// ([`Event::StoreFailure`]).
    ///
    /// ```
    /// let h = tollgate::hooks::Hook::on_failure(|err, outcome| eprintln!("{outcome:?}: {err}"));
    /// # let _ = h;
    /// ```
    pub fn on_failure(f: impl Fn(&StoreError, FailureOutcome) + Send + Sync + 'static) -> Hook {
        Hook::new(move |e| {
            if let Event::StoreFailure(s) = e {
                f(&s.error, s.outcome)
            }
        })
    }

    /// Called on every circuit-breaker transition ([`Event::Breaker`]).
    ///
    /// ```
    /// let h = tollgate::hooks::Hook::on_breaker(|t| eprintln!("{}: {:?} -> {:?}", t.breaker, t.from, t.to));
    /// # let _ = h;
    /// ```
    pub fn on_breaker(f: impl Fn(&BreakerTransition) + Send + Sync + 'static) -> Hook {
        Hook::new(move |e| {
            if let Event::Breaker(t) = e {
                f(t)
            }
        })
    }

    /// This hook, then `next` (each one guarded on its own: a panic in one does not skip
    /// the other).
    ///
    /// ```
    /// use tollgate::hooks::Hook;
    /// let h = Hook::new(|_| {}).then(Hook::new(|_| {}));
    /// # let _ = h;
    /// ```
    pub fn then(self, next: Hook) -> Hook {
        Hook::new(move |e| {
            self.emit(e);
            next.emit(e);
        })
    }

    /// Shows `event` to the hook. A panic inside the hook is caught, counted and logged;
    /// the caller carries on with its verdict.
    ///
    /// ```
    /// use tollgate::hooks::{Event, Hook, StoreFailure};
    /// use tollgate::store::failure::{FailureOutcome, FailurePolicy};
    /// let h = Hook::new(|_| panic!("boom"));
    /// let f = StoreFailure::new(tollgate::StoreError::new("x", "y"), FailurePolicy::FailOpen, FailureOutcome::Admitted);
    /// h.emit(&Event::StoreFailure(&f)); // does not panic
    /// ```
    pub fn emit(&self, event: &Event<'_>) {
        if catch_unwind(AssertUnwindSafe(|| (self.0)(event))).is_err() {
            panicked();
        }
    }
}

#[cold]
fn panicked() {
    metrics::counter!("tollgate_hook_panics_total").increment(1);
    tracing::error!("a tollgate hook panicked; the panic was caught and the verdict stands");
}

/// Shows `event` to an optional hook.
#[inline]
pub(crate) fn emit(hook: Option<&Hook>, event: &Event<'_>) {
    if let Some(h) = hook {
        h.emit(event);
    }
}

/// Shows a limiter call's verdict to its hook.
pub(crate) fn decided(
    hook: &Hook,
    key: &str,
    op: Op,
    result: &Result<Option<Decision>, Error>,
    store_failure: Option<&StoreFailure>,
) {
    let event = DecisionEvent {
        key,
        op,
        result: result.as_ref().map(Option::as_ref),
        store_failure,
    };
    hook.emit(&Event::Decision(&event));
}
