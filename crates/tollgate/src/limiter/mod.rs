//! [`Limiter`]: keyed rate limiting on any store, with sync and async APIs; and
//! [`DirectLimiter`]: one unkeyed in-memory state, the fastest path.

use crate::decision::Decision;
use crate::error::Error;
use crate::hooks::Hook;
use crate::policy::Policy;
use crate::store::memory::MemoryBackend;
use crate::store::{Backend, Op};
use crate::time::ClockHandle;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Default maximum key length in bytes.
pub const DEFAULT_MAX_KEY_LEN: usize = 1024;

/// A `max_wait` without limit: [`Limiter::acquire`] (and every waiting method) waits as long
/// as the policy needs. It never waits for a cost that can never fit: a cost above the
/// capacity is [`Error::CostExceedsCapacity`] at once.
///
/// ```
/// use tollgate::{Error, Limiter, Policy, Rate, WAIT_FOREVER, time::ManualClock};
/// let clock = ManualClock::auto_advance(0);
/// let l = Limiter::builder(Policy::gcra(Rate::per_hour(1).unwrap()).unwrap()).clock(clock.clone()).build();
/// assert!(l.acquire("k", 1, WAIT_FOREVER).unwrap().allowed);
/// assert!(l.acquire("k", 1, WAIT_FOREVER).unwrap().allowed); // waited an hour (of the test clock)
/// assert_eq!(clock.now(), 3_600_000_000);
/// assert!(matches!(l.acquire("k", 2, WAIT_FOREVER), Err(Error::CostExceedsCapacity { .. })));
/// ```
pub const WAIT_FOREVER: Duration = Duration::MAX;

/// A keyed rate limiter. Clones share the same state (and store).
///
/// Sync methods (`check`, `acquire`, …) need no runtime; async methods (`check_async`,
/// `acquire_async`, …) never block the executor. With the in-memory store both are
/// non-blocking except `acquire`, which sleeps by design.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate};
/// let limiter = Limiter::memory(Policy::gcra(Rate::per_second(2).unwrap()).unwrap());
/// assert!(limiter.check("alice").unwrap().allowed);
/// assert!(limiter.check("alice").unwrap().allowed);
/// let third = limiter.check("alice").unwrap();
/// assert!(!third.allowed);
/// // the next unit comes back 500 ms after the first (minus the time the calls took)
/// assert!(third.retry_after > std::time::Duration::from_millis(400));
/// assert!(limiter.check("bob").unwrap().allowed); // keys are independent
/// ```
pub struct Limiter<B = MemoryBackend> {
    inner: Arc<Inner<B>>,
}

struct Inner<B> {
    policy: Policy,
    backend: B,
    clock: ClockHandle,
    max_key_len: usize,
    hook: Option<Hook>,
}

impl<B> Clone for Limiter<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B> std::fmt::Debug for Limiter<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl Limiter<MemoryBackend> {
    /// A limiter on the in-memory store with the system clock.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let limiter = Limiter::memory(Policy::gcra(Rate::per_minute(100).unwrap()).unwrap());
    /// assert_eq!(limiter.check("k").unwrap().remaining, 99);
    /// ```
    pub fn memory(policy: Policy) -> Self {
        Self::builder(policy).build()
    }

    /// A builder, for a clock, a key length or another store.
    ///
    /// ```
    /// let b = tollgate::Limiter::builder(tollgate::Policy::gcra(tollgate::Rate::per_second(1).unwrap()).unwrap());
    /// let limiter = b.build();
    /// # let _ = limiter;
    /// ```
    pub fn builder(policy: Policy) -> LimiterBuilder {
        LimiterBuilder {
            policy,
            clock: ClockHandle::default(),
            max_key_len: DEFAULT_MAX_KEY_LEN,
            hook: None,
        }
    }
}

impl<B: Backend> Limiter<B> {
    /// The policy.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// assert_eq!(l.policy().rates()[0].limit(), 1);
    /// ```
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The store backend (e.g. for [`MemoryBackend::stats`]).
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// assert_eq!(l.backend().stats().keys, 0);
    /// ```
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    #[inline]
    fn key_ok(&self, key: &str) -> Result<(), Error> {
        if key.len() > self.inner.max_key_len {
            return Err(Error::KeyTooLong {
                len: key.len(),
                max: self.inner.max_key_len,
            });
        }
        Ok(())
    }

    /// Sets a decision's time ([`Decision::decided_at`]): the clock reading after the store
    /// answered. The memory store answers at once, so its decisions keep the reading they
    /// were made with (no second read on the fast path).
    #[inline(always)]
    fn stamp(&self, mut d: Option<Decision>, now: crate::time::Micros) -> Option<Decision> {
        if let Some(d) = d.as_mut() {
            // In place: the decision is not moved again on the hot path.
            if std::any::TypeId::of::<B>() == std::any::TypeId::of::<MemoryBackend>() {
                d.set_decided_at(now);
            } else {
                d.set_decided_at(self.inner.clock.now());
            }
        }
        d
    }

    #[inline]
    fn run(&self, key: &str, op: Op) -> Result<Option<Decision>, Error> {
        let Some(hook) = &self.inner.hook else {
            self.key_ok(key)?;
            let now = self.inner.clock.now();
            return self
                .inner
                .backend
                .execute(key, op, now)
                .map(|d| self.stamp(d, now));
        };
        let mut failure = None;
        let result = self.key_ok(key).and_then(|()| {
            let now = self.inner.clock.now();
            self.inner
                .backend
                .execute_observed(key, op, now, &mut failure)
                .map(|d| self.stamp(d, now))
        });
        crate::hooks::decided(hook, key, op, &result, failure.as_ref());
        result
    }

    async fn run_async(&self, key: &str, op: Op) -> Result<Option<Decision>, Error> {
        let Some(hook) = &self.inner.hook else {
            self.key_ok(key)?;
            let now = self.inner.clock.now();
            let d = self.inner.backend.execute_async(key, op, now).await;
            return d.map(|d| self.stamp(d, now));
        };
        let mut failure = None;
        let result = match self.key_ok(key) {
            Ok(()) => {
                let now = self.inner.clock.now();
                let call = self
                    .inner
                    .backend
                    .execute_observed_async(key, op, now, &mut failure);
                call.await.map(|d| self.stamp(d, now))
            }
            Err(e) => Err(e),
        };
        crate::hooks::decided(hook, key, op, &result, failure.as_ref());
        result
    }

    /// Decides a cost of 1 on `key` and charges it when admitted. Fails fast: a denial is
    /// `Ok` with `allowed == false` and charges nothing.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// assert!(l.check("k").unwrap().allowed);
    /// assert!(!l.check("k").unwrap().allowed);
    /// ```
    #[inline]
    pub fn check(&self, key: &str) -> Result<Decision, Error> {
        self.check_n(key, 1)
    }

    /// Decides `cost` units on `key`; charges them only when admitted.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(10).unwrap()).unwrap());
    /// assert_eq!(l.check_n("k", 4).unwrap().remaining, 6);
    /// ```
    #[inline]
    pub fn check_n(&self, key: &str, cost: u64) -> Result<Decision, Error> {
        self.run(key, Op::Check(cost)).and_then(expect_decision)
    }

    /// The decision `check_n` would return now, without charging anything.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// assert!(l.peek("k", 1).unwrap().allowed);
    /// assert!(l.peek("k", 1).unwrap().allowed); // still not charged
    /// ```
    pub fn peek(&self, key: &str, cost: u64) -> Result<Decision, Error> {
        self.run(key, Op::Peek(cost)).and_then(expect_decision)
    }

    /// Forgets `key`: it is fresh again.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// let _ = l.check("k").unwrap();
    /// l.reset("k").unwrap();
    /// assert!(l.check("k").unwrap().allowed);
    /// ```
    pub fn reset(&self, key: &str) -> Result<(), Error> {
        self.run(key, Op::Reset).map(|_| ())
    }

    /// Gives back `amount` unused units to `key` (never beyond fresh).
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(5).unwrap()).unwrap());
    /// let _ = l.check_n("k", 5).unwrap();
    /// l.refund("k", 2).unwrap();
    /// assert_eq!(l.peek("k", 1).unwrap().remaining, 1);
    /// ```
    pub fn refund(&self, key: &str, amount: u64) -> Result<(), Error> {
        self.run(key, Op::Refund(amount)).map(|_| ())
    }

    /// Waits (blocking the thread) until `cost` is admitted on `key`, at most `max_wait` in
    /// total. If the wait needed is already longer than what is left of `max_wait`, it fails
    /// at once with [`Error::WaitTimeout`] instead of sleeping in vain. A cost that can never
    /// fit is [`Error::CostExceedsCapacity`] immediately.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate, Error};
    /// use std::time::Duration;
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(100).unwrap().with_burst(1).unwrap()).unwrap());
    /// assert!(l.acquire("k", 1, Duration::ZERO).is_ok());
    /// // the next unit comes in 10 ms: waiting up to 1 s admits it
    /// assert!(l.acquire("k", 1, Duration::from_secs(1)).unwrap().allowed);
    /// assert!(matches!(l.acquire("k", 1, Duration::ZERO), Err(Error::WaitTimeout { .. })));
    /// ```
    pub fn acquire(&self, key: &str, cost: u64, max_wait: Duration) -> Result<Decision, Error> {
        let mut waited = Duration::ZERO;
        loop {
            match next_step(self.check_n(key, cost), &mut waited, max_wait)? {
                Step::Admitted(decision) => return Ok(decision),
                Step::Sleep(wait) => self.inner.clock.sleep_blocking(wait),
            }
        }
    }

    /// Async [`check`](Self::check).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// assert!(l.check_async("k").await.unwrap().allowed);
    /// # });
    /// ```
    pub async fn check_async(&self, key: &str) -> Result<Decision, Error> {
        self.check_n_async(key, 1).await
    }

    /// Async [`check_n`](Self::check_n).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(3).unwrap()).unwrap());
    /// assert_eq!(l.check_n_async("k", 3).await.unwrap().remaining, 0);
    /// # });
    /// ```
    pub async fn check_n_async(&self, key: &str, cost: u64) -> Result<Decision, Error> {
        self.run_async(key, Op::Check(cost))
            .await
            .and_then(expect_decision)
    }

    /// Async [`peek`](Self::peek).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(3).unwrap()).unwrap());
    /// assert_eq!(l.peek_async("k", 1).await.unwrap().remaining, 2);
    /// # });
    /// ```
    pub async fn peek_async(&self, key: &str, cost: u64) -> Result<Decision, Error> {
        self.run_async(key, Op::Peek(cost))
            .await
            .and_then(expect_decision)
    }

    /// Async [`reset`](Self::reset).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// l.reset_async("k").await.unwrap();
    /// # });
    /// ```
    pub async fn reset_async(&self, key: &str) -> Result<(), Error> {
        self.run_async(key, Op::Reset).await.map(|_| ())
    }

    /// Async [`refund`](Self::refund).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(1).unwrap()).unwrap());
    /// l.refund_async("k", 1).await.unwrap();
    /// # });
    /// ```
    pub async fn refund_async(&self, key: &str, amount: u64) -> Result<(), Error> {
        self.run_async(key, Op::Refund(amount)).await.map(|_| ())
    }

    /// Async [`acquire`](Self::acquire): waits without blocking the executor; the wait on one
    /// key never delays another key. Dropping the future cancels cleanly: nothing is charged
    /// unless it completed with `Ok`.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use tollgate::{Limiter, Policy, Rate};
    /// use std::time::Duration;
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(100).unwrap().with_burst(1).unwrap()).unwrap());
    /// l.acquire_async("k", 1, Duration::ZERO).await.unwrap();
    /// assert!(l.acquire_async("k", 1, Duration::from_secs(1)).await.unwrap().allowed);
    /// # });
    /// ```
    pub async fn acquire_async(
        &self,
        key: &str,
        cost: u64,
        max_wait: Duration,
    ) -> Result<Decision, Error> {
        let mut waited = Duration::ZERO;
        loop {
            match next_step(self.check_n_async(key, cost).await, &mut waited, max_wait)? {
                Step::Admitted(decision) => return Ok(decision),
                Step::Sleep(wait) => self.inner.clock.sleep(wait).await,
            }
        }
    }

    /// Runs `f` once `cost` is admitted on `key` (waiting up to `max_wait`): the decorator of
    /// the Python libraries.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// use std::time::Duration;
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(10).unwrap()).unwrap());
    /// let answer = l.call("api", 1, Duration::from_secs(1), || 6 * 7).unwrap();
    /// assert_eq!(answer, 42);
    /// ```
    pub fn call<T>(
        &self,
        key: &str,
        cost: u64,
        max_wait: Duration,
        f: impl FnOnce() -> T,
    ) -> Result<T, Error> {
        let _admitted = self.acquire(key, cost, max_wait)?;
        Ok(f())
    }

    /// Awaits `fut` once `cost` is admitted on `key` (waiting up to `max_wait`).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use tollgate::{Limiter, Policy, Rate};
    /// use std::time::Duration;
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(10).unwrap()).unwrap());
    /// let v = l.call_async("api", 1, Duration::from_secs(1), async { 7 }).await.unwrap();
    /// assert_eq!(v, 7);
    /// # });
    /// ```
    pub async fn call_async<F: Future>(
        &self,
        key: &str,
        cost: u64,
        max_wait: Duration,
        fut: F,
    ) -> Result<F::Output, Error> {
        let _admitted = self.acquire_async(key, cost, max_wait).await?;
        Ok(fut.await)
    }

    /// Wraps a function so every call first waits (up to `max_wait`) for one unit on `key`.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate, Error};
    /// use std::time::Duration;
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(2).unwrap()).unwrap());
    /// let double = l.wrap("double", Duration::ZERO, |x: u32| x * 2);
    /// assert_eq!(double(1).unwrap(), 2);
    /// assert_eq!(double(2).unwrap(), 4);
    /// assert!(matches!(double(3), Err(Error::WaitTimeout { .. })));
    /// ```
    pub fn wrap<A, T>(
        &self,
        key: impl Into<String>,
        max_wait: Duration,
        f: impl Fn(A) -> T,
    ) -> impl Fn(A) -> Result<T, Error> {
        self.wrap_n(key, 1, max_wait, f)
    }

    /// [`wrap`](Self::wrap) with a weight: every call first waits (up to `max_wait`) for
    /// `cost` units on `key`. A cost above the capacity fails every call with
    /// [`Error::CostExceedsCapacity`] (never an endless wait); a cost of 0 with
    /// [`Error::InvalidCost`].
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate, Error};
    /// use std::time::Duration;
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(10).unwrap()).unwrap());
    /// let bulk = l.wrap_n("bulk", 4, Duration::ZERO, |rows: Vec<u32>| rows.len());
    /// assert_eq!(bulk(vec![1, 2]).unwrap(), 2);
    /// assert_eq!(bulk(vec![3]).unwrap(), 1);
    /// assert!(matches!(bulk(vec![4]), Err(Error::WaitTimeout { .. }))); // 8 of 10 used
    /// assert_eq!(l.peek("bulk", 1).unwrap().remaining, 1);
    /// let huge = l.wrap_n("bulk", 11, Duration::ZERO, |()| ());
    /// assert!(matches!(huge(()), Err(Error::CostExceedsCapacity { cost: 11, capacity: 10 })));
    /// ```
    pub fn wrap_n<A, T>(
        &self,
        key: impl Into<String>,
        cost: u64,
        max_wait: Duration,
        f: impl Fn(A) -> T,
    ) -> impl Fn(A) -> Result<T, Error> {
        let limiter = self.clone();
        let key = key.into();
        move |arg| limiter.call(&key, cost, max_wait, || f(arg))
    }

    /// Wraps an async function so every call first waits (up to `max_wait`) for one unit on
    /// `key`.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use tollgate::{Limiter, Policy, Rate};
    /// use std::time::Duration;
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(5).unwrap()).unwrap());
    /// let fetch = l.wrap_async("api", Duration::from_secs(1), |id: u32| async move { id + 1 });
    /// assert_eq!(fetch(1).await.unwrap(), 2);
    /// # });
    /// ```
    pub fn wrap_async<A, F, Fut>(
        &self,
        key: impl Into<String>,
        max_wait: Duration,
        f: F,
    ) -> impl Fn(A) -> futures_util::future::BoxFuture<'static, Result<Fut::Output, Error>>
    where
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        A: Send + 'static,
    {
        self.wrap_async_n(key, 1, max_wait, f)
    }

    /// [`wrap_async`](Self::wrap_async) with a weight: every call first waits (up to
    /// `max_wait`) for `cost` units on `key`.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use tollgate::{Limiter, Policy, Rate, Error};
    /// use std::time::Duration;
    /// let l = Limiter::memory(Policy::gcra(Rate::per_second(10).unwrap()).unwrap());
    /// let upload = l.wrap_async_n("upload", 5, Duration::ZERO, |n: u32| async move { n * 2 });
    /// assert_eq!(upload(1).await.unwrap(), 2);
    /// assert_eq!(upload(2).await.unwrap(), 4);
    /// assert!(matches!(upload(3).await, Err(Error::WaitTimeout { .. })));
    /// # });
    /// ```
    pub fn wrap_async_n<A, F, Fut>(
        &self,
        key: impl Into<String>,
        cost: u64,
        max_wait: Duration,
        f: F,
    ) -> impl Fn(A) -> futures_util::future::BoxFuture<'static, Result<Fut::Output, Error>>
    where
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        A: Send + 'static,
    {
        let limiter = self.clone();
        let key: Arc<str> = key.into().into();
        let f = Arc::new(f);
        move |arg| {
            let limiter = limiter.clone();
            let key = Arc::clone(&key);
            let f = Arc::clone(&f);
            Box::pin(async move {
                let _admitted = limiter.acquire_async(&key, cost, max_wait).await?;
                Ok(f(arg).await)
            })
        }
    }
}

/// What a wait loop does after one check.
enum Step {
    /// Admitted: return this decision.
    Admitted(Decision),
    /// Denied: sleep this long, then check again.
    Sleep(Duration),
}

/// One round of every wait loop (`acquire`, `acquire_async`, keyed and direct): a store error
/// ends the loop; an admission is returned; a denial sleeps `retry_after` (at least 1 µs) and
/// counts it into `waited`, or fails at once with [`Error::WaitTimeout`] when that would
/// exceed `max_wait`.
fn next_step(
    checked: Result<Decision, Error>,
    waited: &mut Duration,
    max_wait: Duration,
) -> Result<Step, Error> {
    let decision = checked?;
    if decision.allowed {
        return Ok(Step::Admitted(decision));
    }
    let wait = decision.retry_after.max(Duration::from_micros(1));
    if waited.saturating_add(wait) > max_wait {
        return Err(Error::WaitTimeout {
            retry_after: decision.retry_after,
        });
    }
    *waited = waited.saturating_add(wait);
    Ok(Step::Sleep(wait))
}

#[inline(always)]
pub(crate) fn expect_decision(d: Option<Decision>) -> Result<Decision, Error> {
    // Check and Peek always produce a decision; a backend that returns none is broken, and
    // that is a store error, never a denial.
    match d {
        Some(d) => Ok(d),
        None => Err(no_decision()),
    }
}

#[cold]
fn no_decision() -> Error {
    crate::StoreError::new("backend", "returned no decision for a check").into()
}

mod builder;
mod direct;
mod multi;

pub use builder::LimiterBuilder;
pub use direct::DirectLimiter;
pub use multi::LimitCheck;
