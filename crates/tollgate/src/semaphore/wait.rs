//! The one wait loop of [`Semaphore`]: attempt, and while busy wait (for a release, the
//! earliest lease end, or a poll backoff) until granted or the maximum wait runs out. Its
//! logic is one sans-IO step (`next_step`: what to do after an answer); the blocking and the
//! async fronts only make the calls (the async one with cancel-safe attempts).

use super::*;

/// How the wait loop ended.
pub(super) enum Attempted {
    Granted(Micros, PermitBacking),
    /// Permits in use, and µs until the earliest live lease ends (if any holder).
    TimedOut(u64, Option<Micros>),
}

/// A wait that ran out: permits in use, and µs until the earliest live lease ends.
pub(super) type TimedOut = (u64, Option<Micros>);

/// The wait loop's state between attempts.
struct Waiting {
    deadline: Option<Micros>,
    queue: bool,
    attempt: u32,
}

/// What the wait loop does next: end, or wait for a release (since the busy answer's
/// change counter, this many busy answers so far, at most this long) and try again.
enum Step {
    Done(Attempted),
    Wait(u64, u32, Duration),
}

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

    /// The wait loop's state before the first attempt (`Err` for a request that can never
    /// be granted).
    fn start_wait(
        &self,
        permits: u64,
        max_wait: Option<Duration>,
    ) -> Result<Waiting, SemaphoreError> {
        self.check_permits(permits)?;
        Ok(Waiting {
            deadline: max_wait.map(|w| self.now().saturating_add(micros(w))),
            queue: max_wait != Some(Duration::ZERO),
            attempt: 0,
        })
    }

    /// The wait loop's one step (sans-IO): what to do after an attempt's `outcome`.
    fn next_step(&self, w: &mut Waiting, outcome: AcquireOutcome) -> Step {
        let (in_use, next_expiry_in, epoch) = match outcome {
            AcquireOutcome::Busy {
                in_use,
                next_expiry_in,
                epoch,
            } => (in_use, next_expiry_in, epoch),
            AcquireOutcome::Granted { expires_at } => {
                return Step::Done(Attempted::Granted(expires_at, PermitBacking::Store))
            }
            AcquireOutcome::GrantedWithoutStore {
                expires_at,
                backing,
            } => return Step::Done(Attempted::Granted(expires_at, backing)),
        };
        let Some(wait) = self.next_wait(w.deadline, next_expiry_in) else {
            return Step::Done(Attempted::TimedOut(in_use, next_expiry_in));
        };
        let attempt = w.attempt;
        w.attempt = attempt.saturating_add(1);
        Step::Wait(epoch, attempt, wait)
    }

    /// The blocking front of the wait loop. It gives nothing back itself: the callers
    /// release the holder when it ends without a grant.
    fn wait_loop_blocking(
        &self,
        holder: HolderId,
        permits: u64,
        max_wait: Option<Duration>,
    ) -> Result<Attempted, SemaphoreError> {
        let mut w = self.start_wait(permits, max_wait)?;
        loop {
            let req = self.request(holder, permits, w.queue, self.now());
            let (epoch, attempt, wait) =
                match self.next_step(&mut w, self.inner.backend.try_acquire(&req)?) {
                    Step::Done(attempted) => return Ok(attempted),
                    Step::Wait(epoch, attempt, wait) => (epoch, attempt, wait),
                };
            let name = &self.inner.name;
            self.inner.backend.wait_blocking(name, epoch, attempt, wait);
        }
    }

    /// The async front of the wait loop (cancel-safe attempts).
    async fn wait_loop_async(
        &self,
        holder: HolderId,
        permits: u64,
        max_wait: Option<Duration>,
    ) -> Result<Attempted, SemaphoreError> {
        let mut w = self.start_wait(permits, max_wait)?;
        loop {
            let outcome = self.attempt_async(holder, permits, w.queue).await?;
            let (epoch, attempt, wait) = match self.next_step(&mut w, outcome) {
                Step::Done(attempted) => return Ok(attempted),
                Step::Wait(epoch, attempt, wait) => (epoch, attempt, wait),
            };
            let name = &self.inner.name;
            self.inner.backend.wait(name, epoch, attempt, wait).await;
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
        let result = self.wait_loop_blocking(holder, permits, max_wait);
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
        let attempted = self.wait_loop_async(holder, permits, max_wait).await?;
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
