//! [`Permit`]: held permits, released on drop; and the background renewal of leases.

use super::backend::{ExtendOutcome, HolderId, PermitBacking, ReleaseOutcome, SemaphoreBackend};
use super::{MemorySemaphoreBackend, Semaphore, SemaphoreError};
use crate::time::{micros, Micros};
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Permits held on a [`Semaphore`]. Dropping it releases them (without blocking an async
/// executor: remote releases are spawned on the current tokio runtime);
/// [`release`](Self::release) does it explicitly and reports a lease that had ended.
///
/// ```
/// use tollgate::semaphore::Semaphore;
/// let sem = Semaphore::memory("permit-doc", 2).unwrap();
/// {
///     let permit = sem.acquire().unwrap();
///     assert_eq!(permit.permits(), 1);
///     assert_eq!(sem.in_use().unwrap(), 1);
/// } // released here
/// assert_eq!(sem.in_use().unwrap(), 0);
/// ```
#[must_use = "dropping a permit releases it at once"]
pub struct Permit<B: SemaphoreBackend + ?Sized = MemorySemaphoreBackend> {
    sem: Semaphore<B>,
    holder: HolderId,
    permits: u64,
    backing: PermitBacking,
    lease: Arc<LeaseState>,
    released: bool,
}

struct LeaseState {
    expires_at: AtomicU64,
    lost: AtomicBool,
    stopped: Mutex<bool>,
    stop_cv: Condvar,
    stop_notify: tokio::sync::Notify,
}

impl LeaseState {
    fn stop(&self) {
        *self.stopped.lock() = true;
        self.stop_cv.notify_all();
        self.stop_notify.notify_one();
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.lock()
    }
}

impl<B: SemaphoreBackend + ?Sized> std::fmt::Debug for Permit<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("semaphore", &self.sem.name())
            .field("holder", &self.holder)
            .field("permits", &self.permits)
            .field("backing", &self.backing)
            .field("expires_at", &self.expires_at())
            .finish()
    }
}

impl<B: SemaphoreBackend + ?Sized> Permit<B> {
    pub(super) fn new(
        sem: Semaphore<B>,
        holder: HolderId,
        permits: u64,
        expires_at: Micros,
        backing: PermitBacking,
    ) -> Self {
        metrics::counter!("tollgate_semaphore_acquired_total").increment(1);
        if !backing.is_store() {
            metrics::counter!("tollgate_semaphore_acquired_without_store_total", "backing" => backing.as_str())
                .increment(1);
        }
        let lease = Arc::new(LeaseState {
            expires_at: AtomicU64::new(expires_at),
            lost: AtomicBool::new(false),
            stopped: Mutex::new(false),
            stop_cv: Condvar::new(),
            stop_notify: tokio::sync::Notify::new(),
        });
        if sem.auto_renews() {
            start_renewer(sem.clone(), holder, Arc::clone(&lease));
        }
        Self {
            sem,
            holder,
            permits,
            backing,
            lease,
            released: false,
        }
    }

    /// What holds these permits: [`PermitBacking::Store`] normally; under a
    /// [`FailSafeSemaphore`](super::FailSafeSemaphore) whose store failed at acquire time,
    /// [`PermitBacking::Fallback`] (the process-local fallback semaphore) or
    /// [`PermitBacking::Unbacked`] (fail open: nothing limits this holder).
    ///
    /// ```
    /// use tollgate::semaphore::{PermitBacking, Semaphore};
    /// let s = Semaphore::memory("permit-backing", 1).unwrap();
    /// assert_eq!(s.acquire().unwrap().backing(), PermitBacking::Store);
    /// ```
    pub fn backing(&self) -> PermitBacking {
        self.backing
    }

    /// True when the permit was granted by fail-open while the store failed: it is not
    /// counted anywhere, so holding it does not keep anyone else out.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tollgate::semaphore::{FailSafeSemaphore, MemorySemaphoreBackend, Semaphore};
    /// let backend = FailSafeSemaphore::fail_open(MemorySemaphoreBackend::new());
    /// let s = Semaphore::builder("permit-unbacked", 1).build_on(Arc::new(backend)).unwrap();
    /// assert!(!s.acquire().unwrap().is_unbacked()); // the store answered
    /// ```
    pub fn is_unbacked(&self) -> bool {
        self.backing == PermitBacking::Unbacked
    }

    /// This holder's id in the store.
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::memory("permit-id", 1).unwrap();
    /// let p = s.acquire().unwrap();
    /// assert_eq!(p.holder_id().to_string().len(), 32);
    /// ```
    pub fn holder_id(&self) -> HolderId {
        self.holder
    }

    /// How many permits this holds.
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::memory("permit-n", 3).unwrap();
    /// assert_eq!(s.acquire_n(2).unwrap().permits(), 2);
    /// ```
    pub fn permits(&self) -> u64 {
        self.permits
    }

    /// The semaphore this came from.
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::memory("permit-sem", 1).unwrap();
    /// assert_eq!(s.acquire().unwrap().semaphore().name(), "permit-sem");
    /// ```
    pub fn semaphore(&self) -> &Semaphore<B> {
        &self.sem
    }

    /// When the lease ends, in µs on the *store's* clock (the semaphore's clock for the
    /// memory backend, the server's `TIME` for Redis), as of the last grant or extension.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{semaphore::Semaphore, time::ManualClock};
    /// let s = Semaphore::builder("permit-exp", 1).clock(ManualClock::new(1_000))
    ///     .lease(Duration::from_secs(1)).build().unwrap();
    /// assert_eq!(s.acquire().unwrap().expires_at(), 1_001_000);
    /// ```
    pub fn expires_at(&self) -> Micros {
        self.lease.expires_at.load(Ordering::Acquire)
    }

    /// True once an extension (manual or automatic) found the lease already ended: the
    /// permits are no longer held.
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::memory("permit-lost", 1).unwrap();
    /// assert!(!s.acquire().unwrap().lease_lost());
    /// ```
    pub fn lease_lost(&self) -> bool {
        self.lease.lost.load(Ordering::Acquire)
    }

    fn extended(&self, outcome: ExtendOutcome) -> Result<(), SemaphoreError> {
        match outcome {
            ExtendOutcome::Extended { expires_at } => {
                self.lease.expires_at.store(expires_at, Ordering::Release);
                Ok(())
            }
            ExtendOutcome::NotHeld => {
                self.lease.lost.store(true, Ordering::Release);
                lease_lost_observed(self.sem.name(), self.holder);
                Err(SemaphoreError::LeaseExpired {
                    holder: self.holder,
                })
            }
        }
    }

    /// Renews the lease: it now ends one full lease from now. Fails with
    /// [`SemaphoreError::LeaseExpired`] if it had already ended (nothing is held then, and
    /// nothing is taken back).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{semaphore::Semaphore, time::ManualClock};
    /// let clock = ManualClock::new(0);
    /// let s = Semaphore::builder("permit-extend", 1).clock(clock.clone())
    ///     .lease(Duration::from_secs(10)).build().unwrap();
    /// let p = s.acquire().unwrap();
    /// clock.advance(Duration::from_secs(9));
    /// p.extend().unwrap();
    /// assert_eq!(p.expires_at(), 19_000_000);
    /// ```
    pub fn extend(&self) -> Result<(), SemaphoreError> {
        self.extend_by(self.sem.lease())
    }

    /// Renews the lease so that it ends `lease` from now (at least 1 ms).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{semaphore::Semaphore, time::ManualClock};
    /// let s = Semaphore::builder("permit-extend-by", 1).clock(ManualClock::new(0)).build().unwrap();
    /// let p = s.acquire().unwrap();
    /// p.extend_by(Duration::from_secs(600)).unwrap();
    /// assert_eq!(p.expires_at(), 600_000_000);
    /// ```
    pub fn extend_by(&self, lease: Duration) -> Result<(), SemaphoreError> {
        let lease = valid_lease(lease)?;
        let outcome =
            self.sem
                .backend()
                .extend(self.sem.name(), self.holder, lease, self.sem.now())?;
        self.extended(outcome)
    }

    /// Async [`extend`](Self::extend).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("permit-extend-async", 1).unwrap();
    /// let p = s.acquire_async().await.unwrap();
    /// p.extend_async().await.unwrap();
    /// # });
    /// ```
    pub async fn extend_async(&self) -> Result<(), SemaphoreError> {
        self.extend_by_async(self.sem.lease()).await
    }

    /// Async [`extend_by`](Self::extend_by).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("permit-extend-by-async", 1).unwrap();
    /// let p = s.acquire_async().await.unwrap();
    /// p.extend_by_async(std::time::Duration::from_secs(5)).await.unwrap();
    /// # });
    /// ```
    pub async fn extend_by_async(&self, lease: Duration) -> Result<(), SemaphoreError> {
        let lease = valid_lease(lease)?;
        let outcome = self
            .sem
            .backend()
            .extend_async(self.sem.name(), self.holder, lease, self.sem.now())
            .await?;
        self.extended(outcome)
    }

    fn released(&self, outcome: ReleaseOutcome) -> Result<(), SemaphoreError> {
        match outcome {
            ReleaseOutcome::Released => Ok(()),
            ReleaseOutcome::NotHeld => {
                lease_lost_observed(self.sem.name(), self.holder);
                Err(SemaphoreError::LeaseExpired {
                    holder: self.holder,
                })
            }
        }
    }

    /// Keeps the permits past this value: they stay held until their lease ends (no renewal)
    /// or someone releases them by holder id (`SemaphoreBackend::release`). For leases that
    /// cross a process or request boundary — the server hands the holder id to its client as a
    /// lease id. Returns the holder id and the lease end on the store's clock (µs).
    ///
    /// ```
    /// use tollgate::semaphore::{Semaphore, SemaphoreBackend};
    /// let s = Semaphore::memory("permit-detach", 1).unwrap();
    /// let (holder, _expires_at) = s.acquire().unwrap().detach();
    /// assert_eq!(s.in_use().unwrap(), 1); // still held after the permit is gone
    /// let _ = s.backend().release("permit-detach", holder, 0).unwrap();
    /// assert_eq!(s.in_use().unwrap(), 0);
    /// ```
    pub fn detach(mut self) -> (HolderId, Micros) {
        self.released = true;
        self.lease.stop();
        (self.holder, self.expires_at())
    }

    /// Releases the permits now. [`SemaphoreError::LeaseExpired`] tells that the lease had
    /// ended before (the permits were already free, maybe taken by someone else: nothing of
    /// theirs is touched).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{semaphore::{Semaphore, SemaphoreError}, time::ManualClock};
    /// let clock = ManualClock::new(0);
    /// let s = Semaphore::builder("permit-release", 1).clock(clock.clone())
    ///     .lease(Duration::from_secs(1)).build().unwrap();
    /// s.acquire().unwrap().release().unwrap();
    /// let late = s.acquire().unwrap();
    /// clock.advance(Duration::from_secs(2));
    /// assert!(matches!(late.release(), Err(SemaphoreError::LeaseExpired { .. })));
    /// ```
    pub fn release(mut self) -> Result<(), SemaphoreError> {
        self.released = true;
        self.lease.stop();
        let outcome = self
            .sem
            .backend()
            .release(self.sem.name(), self.holder, self.sem.now())?;
        self.released(outcome)
    }

    /// Async [`release`](Self::release).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("permit-release-async", 1).unwrap();
    /// s.acquire_async().await.unwrap().release_async().await.unwrap();
    /// assert_eq!(s.in_use_async().await.unwrap(), 0);
    /// # });
    /// ```
    pub async fn release_async(mut self) -> Result<(), SemaphoreError> {
        self.released = true;
        self.lease.stop();
        // If this future is dropped mid-call, the spawned release still completes.
        let sem = self.sem.clone();
        let holder = self.holder;
        let outcome = if sem.backend().is_local() {
            sem.backend().release(sem.name(), holder, sem.now())?
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let task = rt.spawn(async move {
                sem.backend()
                    .release_async(sem.name(), holder, sem.now())
                    .await
            });
            task.await
                .map_err(|_| crate::StoreError::new("semaphore", "the release task was lost"))??
        } else {
            sem.backend()
                .release_async(sem.name(), holder, sem.now())
                .await?
        };
        self.released(outcome)
    }
}

impl<B: SemaphoreBackend + ?Sized> Drop for Permit<B> {
    fn drop(&mut self) {
        if !self.released {
            self.lease.stop();
            release_in_background(self.sem.clone(), self.holder, true);
        }
    }
}

fn valid_lease(lease: Duration) -> Result<Micros, SemaphoreError> {
    if lease < Duration::from_millis(1) {
        return Err(SemaphoreError::LeaseTooShort(lease));
    }
    Ok(micros(lease))
}

fn lease_lost_observed(name: &str, holder: HolderId) {
    metrics::counter!("tollgate_semaphore_lease_lost_total").increment(1);
    tracing::warn!(
        semaphore = name,
        holder = %holder,
        "semaphore lease had ended before release/extend: the permits were no longer held"
    );
}

/// Releases `holder` without blocking an executor: inline for local backends, spawned on the
/// current tokio runtime for remote ones, blocking only outside any runtime. `report`: warn
/// when the lease had ended.
fn release_in_background<B: SemaphoreBackend + ?Sized>(
    sem: Semaphore<B>,
    holder: HolderId,
    report: bool,
) {
    let finish = move |name: &str, outcome: Result<ReleaseOutcome, crate::StoreError>| match outcome
    {
        Ok(ReleaseOutcome::NotHeld) if report => lease_lost_observed(name, holder),
        Ok(_) => {}
        Err(e) => tracing::warn!(
            semaphore = name,
            holder = %holder,
            "semaphore release failed; the permits come back when the lease ends: {e}"
        ),
    };
    if sem.backend().is_local() {
        let outcome = sem.backend().release(sem.name(), holder, sem.now());
        finish(sem.name(), outcome);
    } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let outcome = sem
                .backend()
                .release_async(sem.name(), holder, sem.now())
                .await;
            finish(sem.name(), outcome);
        });
    } else {
        let outcome = sem.backend().release(sem.name(), holder, sem.now());
        finish(sem.name(), outcome);
    }
}

/// Gives back a holder's grant or queue place unless disarmed (used by async acquires: a
/// dropped future, a timeout or an error leave nothing behind).
pub(super) struct ReleaseGuard<B: SemaphoreBackend + ?Sized> {
    sem: Semaphore<B>,
    holder: HolderId,
    armed: bool,
}

impl<B: SemaphoreBackend + ?Sized> ReleaseGuard<B> {
    pub(super) fn new(sem: Semaphore<B>, holder: HolderId) -> Self {
        Self {
            sem,
            holder,
            armed: true,
        }
    }

    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl<B: SemaphoreBackend + ?Sized> Drop for ReleaseGuard<B> {
    fn drop(&mut self) {
        if self.armed {
            release_in_background(self.sem.clone(), self.holder, false);
        }
    }
}

fn start_renewer<B: SemaphoreBackend + ?Sized>(
    sem: Semaphore<B>,
    holder: HolderId,
    state: Arc<LeaseState>,
) {
    let interval = (sem.lease() / 3).max(Duration::from_millis(1));
    let lease = micros(sem.lease());
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            loop {
                let stop = state.stop_notify.notified();
                tokio::pin!(stop);
                stop.as_mut().enable();
                if state.is_stopped() || tokio::time::timeout(interval, stop).await.is_ok() {
                    return;
                }
                if state.is_stopped() {
                    return;
                }
                let outcome = sem
                    .backend()
                    .extend_async(sem.name(), holder, lease, sem.now())
                    .await;
                if renewed(&sem, holder, &state, outcome) {
                    return;
                }
            }
        });
    } else {
        let spawned = std::thread::Builder::new()
            .name("tollgate-lease-renew".into())
            .spawn(move || loop {
                {
                    let mut stopped = state.stopped.lock();
                    if !*stopped {
                        let _ = state.stop_cv.wait_for(&mut stopped, interval);
                    }
                    if *stopped {
                        return;
                    }
                }
                let outcome = sem.backend().extend(sem.name(), holder, lease, sem.now());
                if renewed(&sem, holder, &state, outcome) {
                    return;
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("could not start the lease renewal thread: {e}");
        }
    }
}

/// Applies one renewal; true when renewing must stop (the lease is gone).
fn renewed<B: SemaphoreBackend + ?Sized>(
    sem: &Semaphore<B>,
    holder: HolderId,
    state: &LeaseState,
    outcome: Result<ExtendOutcome, crate::StoreError>,
) -> bool {
    match outcome {
        Ok(ExtendOutcome::Extended { expires_at }) => {
            state.expires_at.store(expires_at, Ordering::Release);
            false
        }
        Ok(ExtendOutcome::NotHeld) => {
            if !state.is_stopped() {
                state.lost.store(true, Ordering::Release);
                lease_lost_observed(sem.name(), holder);
            }
            true
        }
        Err(e) => {
            tracing::warn!(
                semaphore = sem.name(),
                holder = %holder,
                "semaphore lease renewal failed (will retry): {e}"
            );
            false
        }
    }
}
