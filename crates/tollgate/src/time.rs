//! Time: one [`Clock`] abstraction, the [`SystemClock`] and a [`ManualClock`] for tests.
//!
//! Times are integer microseconds ([`Micros`]). The system clock reads the wall clock once and
//! then advances with a monotonic high-resolution counter, so decisions never see time jump
//! backwards within a process. Distributed stores use the store's own clock by default
//! (Redis `TIME`, database `now()`), so hosts with skewed clocks still agree; waits always use
//! the *durations* returned in decisions, never a difference between two different clocks.

use futures_util::future::BoxFuture;
use parking_lot::{Condvar, Mutex};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds: the unit of every time and duration on the decision path.
pub type Micros = u64;

/// Converts a [`Duration`] to whole microseconds, saturating at `u64::MAX`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(tollgate::time::micros(Duration::from_millis(3)), 3_000);
/// ```
pub fn micros(d: Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A source of time that can also wait. Implement it to drive tollgate from your own time.
///
/// ```
/// use tollgate::time::{Clock, ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_micros(500));
/// assert_eq!(clock.now(), 1_500);
/// ```
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time in microseconds.
    fn now(&self) -> Micros;
    /// Blocks the current thread for `d` of this clock's time.
    fn sleep_blocking(&self, d: Duration);
    /// Waits for `d` of this clock's time without blocking the executor.
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

/// The system clock: wall-clock microseconds since the UNIX epoch, advanced by a monotonic
/// TSC-based counter (via `quanta`) so reading it costs a few nanoseconds.
///
/// ```
/// use tollgate::time::{Clock, SystemClock};
/// let a = SystemClock.now();
/// let b = SystemClock.now();
/// assert!(b >= a && a > 1_600_000_000_000_000); // after 2020
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// The wall-clock reading taken once per process, advanced by the TSC counter.
pub(crate) struct Anchor {
    counter: quanta::Clock,
    raw_at_anchor: u64,
    wall_at_anchor: Micros,
    /// Microseconds per counter tick as a 0.64 fixed-point fraction: `µs = ticks * this >> 64`
    /// (one multiply; quanta's own scaling to nanoseconds and a division by 1,000 cost three
    /// times as many instructions on the decision path).
    us_per_tick_q64: u64,
}

impl fmt::Debug for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Anchor")
            .field("wall_at_anchor", &self.wall_at_anchor)
            .finish()
    }
}

/// Counter ticks over which [`Anchor::us_per_tick_q64`] is measured from quanta's calibration:
/// 2^40 ticks (minutes of TSC time) keeps the relative error near 10^-12.
const CALIBRATION_TICKS_LOG2: u32 = 40;

/// `us_per_tick * 2^64`, from how many nanoseconds quanta says `2^CALIBRATION_TICKS_LOG2`
/// ticks take (saturating: a counter slower than 1 MHz, which quanta never uses, would read
/// as 1 µs per tick).
fn us_per_tick_q64(ns_per_calibration: u64) -> u64 {
    let q = (u128::from(ns_per_calibration) << (64 - CALIBRATION_TICKS_LOG2)) / 1_000;
    u64::try_from(q).unwrap_or(u64::MAX)
}

impl Anchor {
    fn new(counter: quanta::Clock, wall_at_anchor: Micros) -> Anchor {
        let raw_at_anchor = counter.raw();
        let ns = counter.delta_as_nanos(0, 1 << CALIBRATION_TICKS_LOG2);
        Anchor {
            counter,
            raw_at_anchor,
            wall_at_anchor,
            us_per_tick_q64: us_per_tick_q64(ns),
        }
    }

    #[inline(always)]
    fn now(&self) -> Micros {
        // A counter read behind the anchor (TSC skew between cores) counts as no time, as in
        // quanta's `delta_as_nanos`.
        let ticks = self.counter.raw().saturating_sub(self.raw_at_anchor);
        let elapsed_us = (u128::from(ticks) * u128::from(self.us_per_tick_q64)) >> 64;
        self.wall_at_anchor + elapsed_us as u64
    }
}

#[inline(always)]
fn anchor() -> &'static Anchor {
    static ANCHOR: OnceLock<Anchor> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        let wall_at_anchor = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(micros)
            .unwrap_or(0);
        Anchor::new(quanta::Clock::new(), wall_at_anchor)
    })
}

impl SystemClock {
    #[inline(always)]
    pub(crate) fn now_fast() -> Micros {
        anchor().now()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Micros {
        Self::now_fast()
    }
    fn sleep_blocking(&self, d: Duration) {
        std::thread::sleep(d);
    }
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// A clock that only moves when told to: for tests. It drives waits too: a sleeping
/// `acquire` wakes when [`ManualClock::advance`] moves time past its deadline. With
/// [`ManualClock::auto_advance`], every sleep advances the clock by itself instead (handy for
/// single-threaded tests of waiting code).
///
/// Clones share the same time.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate, time::ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::new(0);
/// let limiter = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap())
///     .clock(clock.clone())
///     .build();
/// assert!(limiter.check("k").unwrap().allowed);
/// assert!(!limiter.check("k").unwrap().allowed);
/// clock.advance(Duration::from_secs(1));
/// assert!(limiter.check("k").unwrap().allowed);
/// ```
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    now: AtomicU64,
    auto_advance: bool,
    lock: Mutex<()>,
    changed: Condvar,
    watch: tokio::sync::watch::Sender<Micros>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .field("auto_advance", &self.inner.auto_advance)
            .finish()
    }
}

impl ManualClock {
    /// A manual clock starting at `start` microseconds; sleeps wait for [`advance`](Self::advance).
    ///
    /// ```
    /// let c = tollgate::time::ManualClock::new(42);
    /// assert_eq!(tollgate::time::Clock::now(&c), 42);
    /// ```
    pub fn new(start: Micros) -> Self {
        Self::build(start, false)
    }

    /// A manual clock whose sleeps advance it by the slept duration immediately.
    ///
    /// ```
    /// use tollgate::time::{Clock, ManualClock};
    /// let c = ManualClock::auto_advance(0);
    /// c.sleep_blocking(std::time::Duration::from_secs(2));
    /// assert_eq!(c.now(), 2_000_000);
    /// ```
    pub fn auto_advance(start: Micros) -> Self {
        Self::build(start, true)
    }

    fn build(start: Micros, auto_advance: bool) -> Self {
        let (watch, _) = tokio::sync::watch::channel(start);
        Self {
            inner: Arc::new(ManualInner {
                now: AtomicU64::new(start),
                auto_advance,
                lock: Mutex::new(()),
                changed: Condvar::new(),
                watch,
            }),
        }
    }

    /// The current time in microseconds.
    ///
    /// ```
    /// assert_eq!(tollgate::time::ManualClock::new(7).now(), 7);
    /// ```
    pub fn now(&self) -> Micros {
        self.inner.now.load(Ordering::Acquire)
    }

    /// Moves time forward by `d` and wakes the sleepers whose deadline has come.
    ///
    /// ```
    /// let c = tollgate::time::ManualClock::new(0);
    /// c.advance(std::time::Duration::from_millis(1));
    /// assert_eq!(c.now(), 1_000);
    /// ```
    pub fn advance(&self, d: Duration) {
        let step = micros(d);
        let _guard = self.inner.lock.lock();
        let now = self.inner.now.fetch_add(step, Ordering::AcqRel) + step;
        self.inner.changed.notify_all();
        self.inner.watch.send_replace(now);
    }

    /// Sets the time to `t` (it may not go backwards: earlier values are ignored).
    ///
    /// ```
    /// let c = tollgate::time::ManualClock::new(0);
    /// c.set(5_000);
    /// c.set(1_000);
    /// assert_eq!(c.now(), 5_000);
    /// ```
    pub fn set(&self, t: Micros) {
        let _guard = self.inner.lock.lock();
        let now = self.inner.now.fetch_max(t, Ordering::AcqRel).max(t);
        self.inner.changed.notify_all();
        self.inner.watch.send_replace(now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Micros {
        ManualClock::now(self)
    }

    fn sleep_blocking(&self, d: Duration) {
        if self.inner.auto_advance {
            self.advance(d);
            return;
        }
        let deadline = self.now().saturating_add(micros(d));
        let mut guard = self.inner.lock.lock();
        while self.now() < deadline {
            self.inner.changed.wait(&mut guard);
        }
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        if self.inner.auto_advance {
            self.advance(d);
            return Box::pin(std::future::ready(()));
        }
        let deadline = self.now().saturating_add(micros(d));
        let mut rx = self.inner.watch.subscribe();
        Box::pin(async move {
            while *rx.borrow_and_update() < deadline {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

/// The clock a limiter uses: the system clock (fast path: the anchor is resolved once, at
/// construction) or a custom one.
#[derive(Clone, Debug)]
pub(crate) enum ClockHandle {
    System(&'static Anchor),
    Custom(Arc<dyn Clock>),
}

impl Default for ClockHandle {
    fn default() -> Self {
        ClockHandle::System(anchor())
    }
}

impl ClockHandle {
    pub(crate) fn custom(clock: Arc<dyn Clock>) -> Self {
        ClockHandle::Custom(clock)
    }

    #[inline(always)]
    pub(crate) fn now(&self) -> Micros {
        match self {
            ClockHandle::System(a) => a.now(),
            ClockHandle::Custom(c) => c.now(),
        }
    }

    pub(crate) fn sleep_blocking(&self, d: Duration) {
        match self {
            ClockHandle::System(_) => std::thread::sleep(d),
            ClockHandle::Custom(c) => c.sleep_blocking(d),
        }
    }

    pub(crate) fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        match self {
            ClockHandle::System(_) => Box::pin(tokio::time::sleep(d)),
            ClockHandle::Custom(c) => c.sleep(d),
        }
    }
}

#[cfg(test)]
mod anchor_tests {
    use super::*;

    /// The one-multiply scaling agrees with quanta's nanoseconds / 1,000 to within a
    /// microsecond (plus 10^-11 of the value) from one tick to weeks of ticks.
    #[test]
    fn anchor_scaling_matches_quanta() {
        let anchor = Anchor::new(quanta::Clock::new(), 0);
        for ticks in [
            0u64,
            1,
            999,
            1_000_000,
            3_000_000_007,
            1 << 40,
            1 << 50,
            3 << 50,
        ] {
            let ours = ((u128::from(ticks) * u128::from(anchor.us_per_tick_q64)) >> 64) as u64;
            let quanta_us = anchor.counter.delta_as_nanos(0, ticks) / 1_000;
            let tolerance = 1 + quanta_us / 100_000_000_000;
            assert!(
                ours.abs_diff(quanta_us) <= tolerance,
                "{ticks} ticks: {ours} µs vs quanta's {quanta_us} µs"
            );
        }
    }

    #[test]
    fn nanosecond_ticks_scale_to_a_thousandth() {
        // 2^40 ticks of 1 ns each
        assert_eq!(
            us_per_tick_q64(1 << 40),
            (1u128 << 64).div_euclid(1_000) as u64
        );
        assert_eq!(us_per_tick_q64(u64::MAX), u64::MAX);
    }

    #[test]
    fn system_clock_tracks_the_wall_clock() {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(micros)
            .unwrap();
        let ours = SystemClock.now();
        assert!(ours.abs_diff(wall) < 1_000_000, "{ours} vs wall {wall}");
        std::thread::sleep(Duration::from_millis(20));
        let later = SystemClock.now();
        assert!(
            (15_000..5_000_000).contains(&(later - ours)),
            "{ours} -> {later}"
        );
    }
}
