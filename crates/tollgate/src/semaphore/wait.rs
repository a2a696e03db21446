//! The one wait loop of [`Semaphore`]: attempt, and while busy wait (for a release, the
//! earliest lease end, or a poll backoff) until granted or the maximum wait runs out. Written
//! once as a flow over [`Io`]; the sync methods run it blocking ([`io::blocking`]), the async
//! ones await it with cancel-safe attempts.

use super::*;
use crate::store::io::{self, Io};

/// How the wait loop ended.
pub(super) enum Attempted {
    Granted(Micros, PermitBacking),
    /// Permits in use, and µs until the earliest live lease ends (if any holder).
    TimedOut(u64, Option<Micros>),
}

/// A wait that ran out: permits in use, and µs until the earliest live lease ends.
pub(super) type TimedOut = (u64, Option<Micros>);

impl<B: SemaphoreBackend + ?Sized> Semaphore<B> {
    pub(super) fn request(
        &self,
        holder: HolderId,
        permits: u64,
        queue: bool,
        now: Micros,
    ) -> AcquireRequest<'_> {
        AcquireRequest {
            name: &self.inner.name,
            holder,
            permits,
            capacity: self.inner.config.capacity,
            lease: self.lease_us(),
            queue_ttl: queue.then(|| micros(QUEUE_TTL)),
            now,
        }
    }

    /// How long to wait after a busy answer, or `None` when the deadline has passed.
    fn next_wait(
        &self,
        deadline: Option<Micros>,
        next_expiry_in: Option<Micros>,
    ) -> Option<Duration> {
        let now = self.now();
        let left = match deadline {
            Some(d) if now >= d => return None,
            Some(d) => d - now,
            None => u64::MAX,
        };
        let until_expiry = next_expiry_in.map_or(u64::MAX, |e| e.max(1));
        let slice = if self.inner.config.custom_clock {
            CUSTOM_CLOCK_SLICE
        } else {
            WAIT_SLICE
        };
        Some(Duration::from_micros(left.min(until_expiry)).min(slice))
    }

    pub(super) fn timeout_error(
        &self,
        max_wait: Option<Duration>,
        in_use: u64,
        next_expiry_in: Option<Micros>,
    ) -> SemaphoreError {
        metrics::counter!("tollgate_semaphore_timeouts_total").increment(1);
        SemaphoreError::WaitTimeout {
            max_wait: max_wait.unwrap_or(Duration::MAX),
            in_use,
            capacity: self.inner.config.capacity,
            retry_after: next_expiry_in.map(Duration::from_micros),
        }
    }

    /// One async attempt, cancel-safe: local backends answer inline (nothing can interrupt
    /// between the grant and the handover); remote ones run in a spawned task that gives back
    /// a grant (or queue place) nobody received.
    async fn attempt_async(
        &self,
        holder: HolderId,
        permits: u64,
        queue: bool,
    ) -> Result<AcquireOutcome, StoreError> {
        let now = self.now();
        if self.inner.backend.is_local() {
            return self
                .inner
                .backend
                .try_acquire(&self.request(holder, permits, queue, now));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No tokio runtime: the caller's drop guard releases on cancellation.
            let req = self.request(holder, permits, queue, now);
            return self.inner.backend.try_acquire_async(&req).await;
        };
        let sem = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let req = sem.request(holder, permits, queue, now);
            let result = sem.inner.backend.try_acquire_async(&req).await;
            if tx.send(result).is_err() {
                // The acquiring future is gone: whatever the store granted goes back.
                let _ = sem
                    .inner
                    .backend
                    .release_async(&sem.inner.name, holder, sem.now())
                    .await;
            }
        });
        rx.await
            .unwrap_or_else(|_| Err(StoreError::new("semaphore", "the acquire task was lost")))
    }

    /// The wait loop. It gives nothing back itself: the fronts release the holder when it
    /// ends without a grant.
    async fn wait_loop(
        &self,
        io: Io,
        holder: HolderId,
        permits: u64,
        max_wait: Option<Duration>,
    ) -> Result<Attempted, SemaphoreError> {
        self.check_permits(permits)?;
        let deadline = max_wait.map(|w| self.now().saturating_add(micros(w)));
        let queue = max_wait != Some(Duration::ZERO);
        let mut attempt = 0u32;
        loop {
            let outcome = match io {
                Io::Blocking => {
                    let req = self.request(holder, permits, queue, self.now());
                    self.inner.backend.try_acquire(&req)
                }
                Io::Async => self.attempt_async(holder, permits, queue).await,
            }?;
            let (in_use, next_expiry_in, epoch) = match outcome {
                AcquireOutcome::Busy {
                    in_use,
                    next_expiry_in,
                    epoch,
                } => (in_use, next_expiry_in, epoch),
                AcquireOutcome::Granted { expires_at } => {
                    return Ok(Attempted::Granted(expires_at, PermitBacking::Store))
                }
                AcquireOutcome::GrantedWithoutStore {
                    expires_at,
                    backing,
                } => return Ok(Attempted::Granted(expires_at, backing)),
            };
            let Some(wait) = self.next_wait(deadline, next_expiry_in) else {
                return Ok(Attempted::TimedOut(in_use, next_expiry_in));
            };
            let (backend, name) = (&self.inner.backend, &*self.inner.name);
            match io {
                Io::Blocking => backend.wait_blocking(name, epoch, attempt, wait),
                Io::Async => backend.wait(name, epoch, attempt, wait).await,
            }
            attempt = attempt.saturating_add(1);
        }
    }

    fn permit(
        &self,
        holder: HolderId,
        permits: u64,
        attempted: Attempted,
    ) -> Result<Permit<B>, TimedOut> {
        match attempted {
            Attempted::Granted(expires_at, backing) => Ok(Permit::new(
                self.clone(),
                holder,
                permits,
                expires_at,
                backing,
            )),
            Attempted::TimedOut(in_use, next) => Err((in_use, next)),
        }
    }

    /// The sync front: `Ok(Err(timed out))` when nothing was granted within `max_wait`.
    pub(super) fn acquire_blocking(
        &self,
        permits: u64,
        max_wait: Option<Duration>,
    ) -> Result<Result<Permit<B>, TimedOut>, SemaphoreError> {
        let holder = HolderId::random();
        let flow = self.wait_loop(Io::Blocking, holder, permits, max_wait);
        let result = io::blocking(flow, || {
            Err(StoreError::new("semaphore", "a blocking wait did not complete").into())
        });
        let queued = max_wait != Some(Duration::ZERO);
        match &result {
            // The store may have granted before failing to answer; a waiter leaves the queue.
            Err(SemaphoreError::Store(_)) => self.forget_holder(holder),
            Ok(Attempted::TimedOut(..)) if queued => self.forget_holder(holder),
            _ => {}
        }
        Ok(self.permit(holder, permits, result?))
    }

    /// The async front: `Ok(Err(timed out))` when nothing was granted within `max_wait`.
    pub(super) async fn acquire_async_inner(
        &self,
        permits: u64,
        max_wait: Option<Duration>,
    ) -> Result<Result<Permit<B>, TimedOut>, SemaphoreError> {
        let holder = HolderId::random();
        // Armed until a Permit owns the holder: a timeout, an error or a drop of this future
        // gives back any grant and the queue place.
        let mut guard = permit::ReleaseGuard::new(self.clone(), holder);
        let attempted = self.wait_loop(Io::Async, holder, permits, max_wait).await?;
        if let Attempted::Granted(..) = attempted {
            guard.disarm();
        }
        Ok(self.permit(holder, permits, attempted))
    }

    /// Gives back whatever `holder` may hold or queue for, ignoring failures (the lease or
    /// the queue TTL then cleans up).
    fn forget_holder(&self, holder: HolderId) {
        let _ = self
            .inner
            .backend
            .release(&self.inner.name, holder, self.now());
    }
}
