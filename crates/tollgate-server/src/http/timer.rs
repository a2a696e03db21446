//! hyper's header-read timer without a tokio timer per request.
//!
//! hyper arms the header-read timeout (`request_timeout`, the slowloris protection) for every
//! request head: it asks its [`Timer`] for a new [`Sleep`] and drops it once the head is in.
//! With hyper-util's `TokioTimer` that is a tokio timer registered in the runtime's timer wheel
//! and removed again for every request (≈ 450 instructions of a ≈ 18k-instruction check).
//!
//! [`ConnTimer`] keeps ONE tokio timer per connection and lets each request's [`Sleep`] share
//! it. The shared timer stays armed at the earliest deadline still possibly wanted; a request's
//! sleep whose deadline is later only records its own deadline. When the shared timer fires
//! before the polling sleep's deadline it is re-armed at that deadline (once per
//! `request_timeout` on a busy connection instead of once per request). Timeouts fire exactly
//! when they did: a sleep completes only when the shared timer has fired at or after the
//! sleep's own deadline.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use hyper::rt::Timer;
//! use std::time::{Duration, Instant};
//! let timer = tollgate_server::http::ConnTimer::default();
//! let start = Instant::now();
//! timer.sleep(Duration::from_millis(20)).await;
//! assert!(start.elapsed() >= Duration::from_millis(20));
//! # }
//! ```

use hyper::rt::{Sleep, Timer};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The one tokio timer of a connection.
type Shared = Arc<Mutex<Armed>>;

/// The connection's tokio timer (created on the first poll, inside the runtime) and the waker
/// it was last polled with.
#[derive(Debug, Default)]
struct Armed {
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set only by a poll of `timer` that left it registered with this waker.
    waker: Option<Waker>,
}

impl Armed {
    /// Polls the timer for a sleep until `deadline`: ready only once the timer has fired at
    /// or after `deadline`.
    fn poll_until(&mut self, deadline: tokio::time::Instant, cx: &mut Context<'_>) -> Poll<()> {
        if let (Some(timer), Some(waker)) = (&self.timer, &self.waker) {
            // Registered, not fired, at or before `deadline`, and it will wake this task: a
            // poll would change nothing (the common case: the connection task polls the head
            // read again and again while it waits).
            if !timer.is_elapsed() && timer.deadline() <= deadline && waker.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        self.waker = None;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            // A shorter timeout than the one armed (not hyper's pattern, but allowed).
            timer.as_mut().reset(deadline);
        }
        loop {
            // Outside tokio's cooperative budget: a budget-exhausted `Pending` would return
            // without registering the timer, and the shortcut above would then wait forever.
            match Pin::new(&mut tokio::task::coop::unconstrained(timer.as_mut())).poll(cx) {
                Poll::Pending => {
                    self.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(()) if timer.deadline() >= deadline => return Poll::Ready(()),
                // It fired for an earlier request's deadline: wait on for this one.
                Poll::Ready(()) => timer.as_mut().reset(deadline),
            }
        }
    }
}

/// A [`Timer`] for one connection's hyper `http1::Builder`, for its header-read timeout: every
/// [`Sleep`] it makes shares one tokio timer, armed at the earliest deadline still wanted and
/// re-armed at a later sleep's own deadline only when it fires, so a busy connection registers
/// a tokio timer once per timeout instead of once per request. A sleep completes exactly at
/// its own deadline. Make one per connection.
///
/// ```
/// let mut builder = hyper::server::conn::http1::Builder::new();
/// builder
///     .timer(tollgate_server::http::ConnTimer::default())
///     .header_read_timeout(std::time::Duration::from_secs(30));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ConnTimer {
    shared: Shared,
}

impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        let deadline = Instant::now()
            .checked_add(duration)
            .unwrap_or_else(far_future);
        self.sleep_until(deadline)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(SharedSleep {
            shared: Arc::clone(&self.shared),
            deadline: tokio::time::Instant::from_std(deadline),
        })
    }
}

/// About 30 years ahead: what tokio itself uses for "never".
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// One request's header-read timeout, completed at `deadline` by the connection's shared timer.
#[derive(Debug)]
struct SharedSleep {
    shared: Shared,
    deadline: tokio::time::Instant,
}

impl Future for SharedSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A panic cannot leave the state inconsistent: `waker` is cleared before the timer is
        // touched, so at worst the next poll polls the timer again.
        let mut armed = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        armed.poll_until(self.deadline, cx)
    }
}

impl Sleep for SharedSleep {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test]
    async fn a_later_sleep_waits_past_the_deadline_the_timer_was_armed_at() {
        let timer = ConnTimer::default();
        let start = Instant::now();
        // The first request's timeout arms the shared timer at +40 ms, then the head arrives.
        let mut first = timer.sleep(ms(40));
        assert!(futures_poll_once(&mut first).is_pending());
        drop(first);
        // The next request's timeout is later: the timer fires at +40 ms and is re-armed.
        tokio::time::sleep(ms(20)).await;
        timer.sleep(ms(100)).await;
        let waited = start.elapsed();
        assert!(waited >= ms(120), "completed early, after {waited:?}");
        assert!(waited < ms(2000), "completed late, after {waited:?}");
    }

    #[tokio::test]
    async fn a_shorter_sleep_rearms_the_timer_earlier() {
        let timer = ConnTimer::default();
        let mut long = timer.sleep(ms(10_000));
        assert!(futures_poll_once(&mut long).is_pending());
        drop(long);
        let start = Instant::now();
        timer.sleep(ms(30)).await;
        let waited = start.elapsed();
        assert!(waited >= ms(30) && waited < ms(2000), "waited {waited:?}");
    }

    #[tokio::test]
    async fn a_timer_that_fired_unobserved_does_not_end_a_later_sleep() {
        let timer = ConnTimer::default();
        let mut first = timer.sleep(ms(10));
        assert!(futures_poll_once(&mut first).is_pending());
        drop(first);
        // The shared timer elapses while nobody polls it.
        tokio::time::sleep(ms(50)).await;
        let mut second = timer.sleep(ms(60));
        assert!(futures_poll_once(&mut second).is_pending());
        let start = Instant::now();
        second.await;
        assert!(start.elapsed() >= ms(40), "after {:?}", start.elapsed());
    }

    /// Counts its wakes.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_latest_waker_is_the_one_woken() {
        let timer = ConnTimer::default();
        let mut sleep = timer.sleep(ms(30));
        let first = Arc::new(CountingWaker(0.into()));
        let second = Arc::new(CountingWaker(0.into()));
        let poll_with = |sleep: &mut Pin<Box<dyn Sleep>>, w: &Arc<CountingWaker>| {
            let waker = Waker::from(Arc::clone(w));
            sleep.as_mut().poll(&mut Context::from_waker(&waker))
        };
        assert!(poll_with(&mut sleep, &first).is_pending());
        // Polled again with the same waker: the shortcut; with another: re-registered.
        assert!(poll_with(&mut sleep, &first).is_pending());
        assert!(poll_with(&mut sleep, &second).is_pending());
        tokio::time::sleep(ms(80)).await;
        assert_eq!(first.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(second.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(poll_with(&mut sleep, &second).is_ready());
    }

    #[test]
    fn a_duration_past_the_end_of_time_never_fires_instead_of_panicking() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut never = ConnTimer::default().sleep(Duration::MAX);
            assert!(futures_poll_once(&mut never).is_pending());
        });
    }

    fn futures_poll_once(sleep: &mut Pin<Box<dyn Sleep>>) -> Poll<()> {
        let waker = std::task::Waker::noop();
        sleep.as_mut().poll(&mut Context::from_waker(waker))
    }
}
