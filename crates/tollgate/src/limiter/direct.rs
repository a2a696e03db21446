//! [`DirectLimiter`]: an unkeyed limiter for one shared resource (the fastest path).

use super::{next_step, Limiter, Step};
use crate::decision::Decision;
use crate::error::Error;
use crate::policy::Policy;
use crate::store::memory::DirectSlot;
use crate::store::Op;
use crate::time::ClockHandle;
use std::sync::Arc;
use std::time::Duration;
/// One unkeyed in-memory rate limit (like governor's direct limiter): the fastest path, for a
/// single shared resource. Clones share the same state.
///
/// ```
/// use tollgate::{DirectLimiter, Policy, Rate};
/// let limiter = DirectLimiter::new(Policy::gcra(Rate::per_second(3).unwrap()).unwrap());
/// assert_eq!(limiter.check_n(3).unwrap().remaining, 0);
/// assert!(!limiter.check().unwrap().allowed);
/// ```
#[derive(Clone)]
pub struct DirectLimiter {
    pub(super) inner: Arc<DirectInner>,
}

pub(super) struct DirectInner {
    pub(super) policy: Policy,
    pub(super) slot: DirectSlot,
    pub(super) clock: ClockHandle,
}

impl std::fmt::Debug for DirectLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectLimiter")
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl DirectLimiter {
    /// An unkeyed limiter with the system clock.
    ///
    /// ```
    /// let l = tollgate::DirectLimiter::new(tollgate::Policy::gcra(tollgate::Rate::per_second(1).unwrap()).unwrap());
    /// assert!(l.check().unwrap().allowed);
    /// ```
    pub fn new(policy: Policy) -> Self {
        Limiter::builder(policy).build_direct()
    }

    /// The policy.
    ///
    /// ```
    /// let l = tollgate::DirectLimiter::new(tollgate::Policy::gcra(tollgate::Rate::per_second(1).unwrap()).unwrap());
    /// assert_eq!(l.policy().rates().len(), 1);
    /// ```
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Runs an operation that decides nothing (`Refund`, `Reset`).
    fn run(&self, op: Op) -> Result<(), Error> {
        self.inner
            .slot
            .execute(op, self.inner.clock.now())
            .map(|_| ())
    }

    /// Decides `cost` now (charging it when admitted and `charge` is set), stamped with the
    /// time it was decided.
    #[inline(always)]
    fn decide(&self, cost: u64, charge: bool) -> Result<Decision, Error> {
        let now = self.inner.clock.now();
        let mut decision = self.inner.slot.decide(cost, charge, now)?;
        decision.set_decided_at(now);
        Ok(decision)
    }

    /// Decides one unit and charges it when admitted.
    ///
    /// ```
    /// let l = tollgate::DirectLimiter::new(tollgate::Policy::gcra(tollgate::Rate::per_second(1).unwrap()).unwrap());
    /// assert!(l.check().unwrap().allowed);
    /// ```
    #[inline]
    pub fn check(&self) -> Result<Decision, Error> {
        self.check_n(1)
    }

    /// Decides `cost` units and charges them when admitted.
    ///
    /// ```
    /// let l = tollgate::DirectLimiter::new(tollgate::Policy::gcra(tollgate::Rate::per_second(4).unwrap()).unwrap());
    /// assert_eq!(l.check_n(2).unwrap().remaining, 2);
    /// ```
    #[inline]
    pub fn check_n(&self, cost: u64) -> Result<Decision, Error> {
        self.decide(cost, true)
    }

    /// The decision `check_n` would return, without charging.
    ///
    /// ```
    /// let l = tollgate::DirectLimiter::new(tollgate::Policy::gcra(tollgate::Rate::per_second(4).unwrap()).unwrap());
    /// assert_eq!(l.peek(1).unwrap().remaining, 3);
    /// assert_eq!(l.peek(1).unwrap().remaining, 3);
    /// ```
    pub fn peek(&self, cost: u64) -> Result<Decision, Error> {
        self.decide(cost, false)
    }

    /// Back to fresh.
    ///
    /// ```
    /// let l = tollgate::DirectLimiter::new(tollgate::Policy::gcra(tollgate::Rate::per_second(1).unwrap()).unwrap());
    /// let _ = l.check();
    /// l.reset();
    /// assert!(l.check().unwrap().allowed);
    /// ```
    pub fn reset(&self) {
        let _ = self.run(Op::Reset);
    }

    /// Gives back `amount` units.
    ///
    /// ```
    /// let l = tollgate::DirectLimiter::new(tollgate::Policy::gcra(tollgate::Rate::per_second(1).unwrap()).unwrap());
    /// let _ = l.check();
    /// l.refund(1).unwrap();
    /// assert!(l.check().unwrap().allowed);
    /// ```
    pub fn refund(&self, amount: u64) -> Result<(), Error> {
        self.run(Op::Refund(amount))
    }

    /// Waits (blocking) until `cost` is admitted, at most `max_wait`.
    ///
    /// ```
    /// let l = tollgate::DirectLimiter::new(tollgate::Policy::gcra(tollgate::Rate::per_second(1000).unwrap()).unwrap());
    /// assert!(l.acquire(1, std::time::Duration::from_secs(1)).unwrap().allowed);
    /// ```
    pub fn acquire(&self, cost: u64, max_wait: Duration) -> Result<Decision, Error> {
        let mut waited = Duration::ZERO;
        loop {
            match next_step(self.check_n(cost), &mut waited, max_wait)? {
                Step::Admitted(decision) => return Ok(decision),
                Step::Sleep(wait) => self.inner.clock.sleep_blocking(wait),
            }
        }
    }

    /// Waits (async) until `cost` is admitted, at most `max_wait`.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let l = tollgate::DirectLimiter::new(tollgate::Policy::gcra(tollgate::Rate::per_second(1000).unwrap()).unwrap());
    /// assert!(l.acquire_async(1, std::time::Duration::from_secs(1)).await.unwrap().allowed);
    /// # });
    /// ```
    pub async fn acquire_async(&self, cost: u64, max_wait: Duration) -> Result<Decision, Error> {
        let mut waited = Duration::ZERO;
        loop {
            match next_step(self.check_n(cost), &mut waited, max_wait)? {
                Step::Admitted(decision) => return Ok(decision),
                Step::Sleep(wait) => self.inner.clock.sleep(wait).await,
            }
        }
    }
}
