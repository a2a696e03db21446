//! [`CircuitBreaker`]: makes a store outage fail fast.
//!
//! While the store answers, the breaker is **closed** and costs one atomic load per call.
//! After `failures` consecutive store errors (default 5) it **opens**: for the `cool_down`
//! (default 1 s) no call reaches the store; each is answered at once by the failure policy
//! (fail open, fail closed, fall back) with a [`StoreError`] of kind
//! [`StoreErrorKind::CircuitOpen`] naming the last real cause. After the cool-down the next
//! call is let through as a **probe** (half-open; every other call is still answered by the
//! policy): a success closes the breaker, a failure opens it for another cool-down. A probe
//! that neither succeeds nor fails within a cool-down (its future was dropped) is replaced by
//! a new one.
//!
//! One breaker serves both failure wrappers: [`FailSafe`](super::FailSafe) /
//! [`FailSafeStore`](super::FailSafeStore) for limiters and
//! [`FailSafeSemaphore`](crate::semaphore::FailSafeSemaphore) for semaphores, and one breaker
//! can be shared by both (an `Arc`), so one outage of one store is seen once.
//!
//! **Observability**: the gauge `tollgate_circuit_breaker_state{breaker}` (0 closed, 1 open,
//! 2 half-open), a log line per transition, and the transition as a
//! [`Event::Breaker`](crate::hooks::Event::Breaker) to the wrapper's hook.
//!
//! Time comes from a [`Clock`], so tests drive it with [`ManualClock`](crate::time::ManualClock):
//!
//! ```
//! use std::time::Duration;
//! use tollgate::{StoreError, StoreErrorKind};
//! use tollgate::store::failure::{BreakerState, CircuitBreaker};
//! use tollgate::time::ManualClock;
//!
//! let clock = ManualClock::new(0);
//! let breaker = CircuitBreaker::builder("redis")
//!     .failures(2)
//!     .cool_down(Duration::from_secs(1))
//!     .clock(clock.clone())
//!     .build();
//! let refused = StoreError::with_kind("redis", StoreErrorKind::ConnectionRefused, "port 6379");
//! breaker.record_failure(false, &refused);
//! assert_eq!(breaker.state(), BreakerState::Closed);
//! breaker.record_failure(false, &refused);
//! assert_eq!(breaker.state(), BreakerState::Open);
//! assert_eq!(breaker.last_error().unwrap().kind, StoreErrorKind::ConnectionRefused);
//! clock.advance(Duration::from_secs(1));
//! assert_eq!(breaker.state(), BreakerState::Open); // until a call probes
//! ```

use crate::error::{StoreError, StoreErrorKind};
use crate::time::{micros, Clock, ClockHandle, Micros};
use parking_lot::Mutex;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Default number of consecutive failures that open a breaker.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// Default time an open breaker waits before it lets a probe through.
pub const DEFAULT_BREAKER_COOL_DOWN: Duration = Duration::from_secs(1);

/// The state of a [`CircuitBreaker`].
///
/// ```
/// use tollgate::store::failure::BreakerState;
/// assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
/// assert_eq!(BreakerState::Open.gauge(), 1.0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go to the store.
    Closed,
    /// Calls are answered by the failure policy without touching the store.
    Open,
    /// One probe call is in flight; the others are answered by the failure policy.
    HalfOpen,
}

impl BreakerState {
    /// A stable label (`closed`, `open`, `half_open`).
    ///
    /// ```
    /// assert_eq!(tollgate::store::failure::BreakerState::Open.as_str(), "open");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of the `tollgate_circuit_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    ///
    /// ```
    /// assert_eq!(tollgate::store::failure::BreakerState::Closed.gauge(), 0.0);
    /// ```
    pub fn gauge(self) -> f64 {
        f64::from(self as u8)
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// A change of a breaker's state, as reported to hooks.
///
/// ```
/// use tollgate::store::failure::{BreakerState, BreakerTransition};
/// let t = BreakerTransition { breaker: "redis".into(), from: BreakerState::Closed, to: BreakerState::Open, cause: None };
/// assert_eq!(t.to, BreakerState::Open);
/// ```
#[derive(Clone, Debug)]
pub struct BreakerTransition {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
    /// The store error that caused it (when it opened).
    pub cause: Option<StoreError>,
}

/// What the breaker lets a call do.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Go to the store.
    Pass,
    /// Go to the store as the half-open probe; report the result.
    Probe,
    /// Do not touch the store: answer with this error (kind `CircuitOpen`).
    Reject(StoreError),
}

impl Admission {
    pub(crate) fn is_probe(&self) -> bool {
        matches!(self, Admission::Probe)
    }
}

/// Builds a [`CircuitBreaker`].
///
/// ```
/// use std::time::Duration;
/// let b = tollgate::store::failure::CircuitBreaker::builder("redis")
///     .failures(3)
///     .cool_down(Duration::from_millis(500))
///     .build();
/// assert_eq!(b.failures_to_open(), 3);
/// ```
#[derive(Debug)]
#[must_use = "call build()"]
pub struct BreakerBuilder {
    name: Arc<str>,
    failures: u32,
    cool_down: Duration,
    clock: ClockHandle,
}

impl BreakerBuilder {
    /// Consecutive store failures that open the breaker (default 5); `0` disables it (every
    /// call goes to the store, as without a breaker).
    ///
    /// ```
    /// let b = tollgate::store::failure::CircuitBreaker::builder("x").failures(0).build();
    /// assert!(!b.is_enabled());
    /// ```
    pub fn failures(mut self, n: u32) -> Self {
        self.failures = n;
        self
    }

    /// How long an open breaker answers without the store before it probes (default 1 s;
    /// at least 1 µs).
    ///
    /// ```
    /// let b = tollgate::store::failure::CircuitBreaker::builder("x")
    ///     .cool_down(std::time::Duration::from_secs(2)).build();
    /// assert_eq!(b.cool_down(), std::time::Duration::from_secs(2));
    /// ```
    pub fn cool_down(mut self, d: Duration) -> Self {
        self.cool_down = d.max(Duration::from_micros(1));
        self
    }

    /// Reads time from `clock` (default: the system clock).
    ///
    /// ```
    /// let b = tollgate::store::failure::CircuitBreaker::builder("x")
    ///     .clock(tollgate::time::ManualClock::new(0)).build();
    /// # let _ = b;
    /// ```
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = ClockHandle::custom(Arc::new(clock));
        self
    }

    /// The breaker, shared (`Arc`) so several wrappers can use one.
    ///
    /// ```
    /// let b = tollgate::store::failure::CircuitBreaker::builder("x").build();
    /// assert_eq!(b.name(), "x");
    /// ```
    pub fn build(self) -> Arc<CircuitBreaker> {
        let gauge =
            metrics::gauge!("tollgate_circuit_breaker_state", "breaker" => self.name.to_string());
        gauge.set(0.0);
        Arc::new(CircuitBreaker {
            name: self.name,
            threshold: self.failures,
            cool_down: micros(self.cool_down).max(1),
            clock: self.clock,
            state: AtomicU8::new(BreakerState::Closed as u8),
            consecutive: AtomicU32::new(0),
            inner: Mutex::new(Inner::default()),
            gauge,
        })
    }
}

#[derive(Default)]
struct Inner {
    opened_at: Micros,
    probe_started: Micros,
    last_error: Option<StoreError>,
}

/// Opens after consecutive store failures so calls are answered by the failure policy at
/// once; probes after a cool-down and closes on success (see the [module docs](self)).
///
/// ```
/// use tollgate::store::failure::{BreakerState, CircuitBreaker};
/// let b = CircuitBreaker::builder("redis").build();
/// assert_eq!(b.state(), BreakerState::Closed);
/// assert_eq!(b.failures_to_open(), 5);
/// ```
pub struct CircuitBreaker {
    name: Arc<str>,
    threshold: u32,
    cool_down: Micros,
    clock: ClockHandle,
    state: AtomicU8,
    consecutive: AtomicU32,
    inner: Mutex<Inner>,
    gauge: metrics::Gauge,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .field("failures_to_open", &self.threshold)
            .field("cool_down_us", &self.cool_down)
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// A builder; `name` labels the metric and the log lines.
    ///
    /// ```
    /// let b = tollgate::store::failure::CircuitBreaker::builder("postgres").build();
    /// assert_eq!(b.name(), "postgres");
    /// ```
    pub fn builder(name: impl Into<String>) -> BreakerBuilder {
        BreakerBuilder {
            name: name.into().into(),
            failures: DEFAULT_BREAKER_FAILURES,
            cool_down: DEFAULT_BREAKER_COOL_DOWN,
            clock: ClockHandle::default(),
        }
    }

    /// A breaker that never opens.
    ///
    /// ```
    /// assert!(!tollgate::store::failure::CircuitBreaker::disabled().is_enabled());
    /// ```
    pub fn disabled() -> Arc<CircuitBreaker> {
        Self::builder("disabled").failures(0).build()
    }

    /// The name.
    ///
    /// ```
    /// assert_eq!(tollgate::store::failure::CircuitBreaker::builder("a").build().name(), "a");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it can open at all (`failures > 0`).
    ///
    /// ```
    /// assert!(tollgate::store::failure::CircuitBreaker::builder("a").build().is_enabled());
    /// ```
    pub fn is_enabled(&self) -> bool {
        self.threshold > 0
    }

    /// Consecutive failures that open it.
    ///
    /// ```
    /// assert_eq!(tollgate::store::failure::CircuitBreaker::builder("a").failures(7).build().failures_to_open(), 7);
    /// ```
    pub fn failures_to_open(&self) -> u32 {
        self.threshold
    }

    /// The cool-down.
    ///
    /// ```
    /// let b = tollgate::store::failure::CircuitBreaker::builder("a").build();
    /// assert_eq!(b.cool_down(), tollgate::store::failure::DEFAULT_BREAKER_COOL_DOWN);
    /// ```
    pub fn cool_down(&self) -> Duration {
        Duration::from_micros(self.cool_down)
    }

    /// The current state.
    ///
    /// ```
    /// let b = tollgate::store::failure::CircuitBreaker::builder("a").build();
    /// assert_eq!(b.state(), tollgate::store::failure::BreakerState::Closed);
    /// ```
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Consecutive failures counted so far (reset by a success).
    ///
    /// ```
    /// let b = tollgate::store::failure::CircuitBreaker::builder("a").build();
    /// b.record_failure(false, &tollgate::StoreError::new("x", "down"));
    /// assert_eq!(b.consecutive_failures(), 1);
    /// b.record_success(false);
    /// assert_eq!(b.consecutive_failures(), 0);
    /// ```
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Acquire)
    }

    /// The last store error seen (kept until the breaker closes again).
    ///
    /// ```
    /// let b = tollgate::store::failure::CircuitBreaker::builder("a").build();
    /// assert!(b.last_error().is_none());
    /// ```
    pub fn last_error(&self) -> Option<StoreError> {
        self.inner.lock().last_error.clone()
    }

    /// Runs one store call outside a failure wrapper (e.g. a readiness probe) through the
    /// breaker: while it is open the call is not made and the `CircuitOpen` error is returned
    /// at once; otherwise its result counts like any call's (a success as the probe closes
    /// the breaker).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use tollgate::{StoreError, StoreErrorKind};
    /// use tollgate::store::failure::{BreakerState, CircuitBreaker};
    /// let b = CircuitBreaker::builder("redis").failures(1).build();
    /// let down = || async { Err::<(), _>(StoreError::with_kind("redis", StoreErrorKind::ConnectionRefused, "ping")) };
    /// assert_eq!(b.call_async(down).await.unwrap_err().kind, StoreErrorKind::ConnectionRefused);
    /// assert_eq!(b.state(), BreakerState::Open);
    /// let up = || async { Ok::<_, StoreError>(()) };
    /// assert_eq!(b.call_async(up).await.unwrap_err().kind, StoreErrorKind::CircuitOpen);
    /// # });
    /// ```
    pub async fn call_async<T, Fut>(&self, call: impl FnOnce() -> Fut) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let probe = match self.admit() {
            Admission::Reject(err) => return Err(err),
            admission => admission.is_probe(),
        };
        let result = call().await;
        match &result {
            Ok(_) => {
                self.record_success(probe);
            }
            Err(err) => {
                self.record_failure(probe, err);
            }
        }
        result
    }

    /// Whether a call may go to the store now. Closed: yes (one atomic load). Open: no until
    /// the cool-down has passed, then this call becomes the probe.
    pub(crate) fn admit(&self) -> Admission {
        if self.state.load(Ordering::Acquire) == BreakerState::Closed as u8 {
            return Admission::Pass;
        }
        self.admit_slow()
    }

    #[cold]
    fn admit_slow(&self) -> Admission {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        let (since, open) = match self.state() {
            BreakerState::Closed => return Admission::Pass,
            BreakerState::Open => (inner.opened_at, true),
            BreakerState::HalfOpen => (inner.probe_started, false),
        };
        if now.saturating_sub(since) >= self.cool_down {
            inner.probe_started = now;
            if open {
                self.set_state(BreakerState::HalfOpen);
            }
            return Admission::Probe;
        }
        let wait = self.cool_down - now.saturating_sub(since).min(self.cool_down);
        Admission::Reject(self.open_error(inner.last_error.as_ref(), wait))
    }

    fn open_error(&self, last: Option<&StoreError>, wait: Micros) -> StoreError {
        let (store, cause) = match last {
            Some(e) => (e.store, e.to_string()),
            None => ("store", "unknown".to_string()),
        };
        StoreError::with_kind(
            store,
            StoreErrorKind::CircuitOpen,
            format!(
                "not sent: breaker {:?} open after {} consecutive failures, next probe in {:?} (last: {cause})",
                &*self.name,
                self.threshold,
                Duration::from_micros(wait)
            ),
        )
    }

    /// Records a call the store answered. `probe`: the call was admitted as the probe.
    /// Returns the transition, if any.
    ///
    /// ```
    /// use tollgate::store::failure::{BreakerState, CircuitBreaker};
    /// let b = CircuitBreaker::builder("a").build();
    /// assert!(b.record_success(false).is_none());
    /// assert_eq!(b.state(), BreakerState::Closed);
    /// ```
    pub fn record_success(&self, probe: bool) -> Option<BreakerTransition> {
        if !probe
            && self.consecutive.load(Ordering::Relaxed) == 0
            && self.state.load(Ordering::Relaxed) == BreakerState::Closed as u8
        {
            return None;
        }
        let mut inner = self.inner.lock();
        self.consecutive.store(0, Ordering::Release);
        let from = self.state();
        if !probe || from == BreakerState::Closed {
            return None;
        }
        inner.last_error = None;
        self.set_state(BreakerState::Closed);
        drop(inner);
        Some(self.transition(from, BreakerState::Closed, None))
    }

    /// Records a store failure. `probe`: the call was admitted as the probe. Returns the
    /// transition, if any.
    ///
    /// ```
    /// use tollgate::store::failure::{BreakerState, CircuitBreaker};
    /// let b = CircuitBreaker::builder("a").failures(1).build();
    /// let t = b.record_failure(false, &tollgate::StoreError::new("x", "down")).unwrap();
    /// assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
    /// ```
    pub fn record_failure(&self, probe: bool, err: &StoreError) -> Option<BreakerTransition> {
        if !self.is_enabled() {
            return None;
        }
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        inner.last_error = Some(err.clone());
        let count = self.consecutive.load(Ordering::Relaxed).saturating_add(1);
        self.consecutive.store(count, Ordering::Release);
        let from = self.state();
        let open = match from {
            BreakerState::Closed => count >= self.threshold,
            BreakerState::HalfOpen => probe,
            BreakerState::Open => false,
        };
        if !open {
            return None;
        }
        inner.opened_at = now;
        self.set_state(BreakerState::Open);
        drop(inner);
        Some(self.transition(from, BreakerState::Open, Some(err.clone())))
    }

    /// A probe that ended without saying anything about the store (e.g. a usage error):
    /// the next call may probe at once.
    pub(crate) fn record_inconclusive(&self, probe: bool) {
        if probe {
            let mut inner = self.inner.lock();
            if self.state() == BreakerState::HalfOpen {
                inner.probe_started = inner.probe_started.saturating_sub(self.cool_down);
            }
        }
    }

    fn set_state(&self, state: BreakerState) {
        self.state.store(state as u8, Ordering::Release);
        self.gauge.set(state.gauge());
    }

    fn transition(
        &self,
        from: BreakerState,
        to: BreakerState,
        cause: Option<StoreError>,
    ) -> BreakerTransition {
        match &cause {
            Some(e) => tracing::warn!(
                breaker = &*self.name,
                from = from.as_str(),
                to = to.as_str(),
                kind = e.kind.as_str(),
                "store circuit breaker opened for {:?}: {e}",
                self.cool_down()
            ),
            None => tracing::info!(
                breaker = &*self.name,
                from = from.as_str(),
                to = to.as_str(),
                "store circuit breaker closed: the store answers again"
            ),
        }
        BreakerTransition {
            breaker: Arc::clone(&self.name),
            from,
            to,
            cause,
        }
    }
}
