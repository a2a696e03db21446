//! [`SemaphoreBuilder`]: capacity, lease, waits, renewal, clock, then the backend.

use super::*;

/// Builds a [`Semaphore`]: lease, maximum wait, auto-renewal, clock, backend.
///
/// ```
/// use std::time::Duration;
/// use tollgate::semaphore::Semaphore;
/// let sem = Semaphore::builder("reports", 4)
///     .lease(Duration::from_secs(10))
///     .auto_renew(true)
///     .wait_forever()
///     .build()
///     .unwrap();
/// assert_eq!(sem.capacity(), 4);
/// assert_eq!(sem.max_wait(), None);
/// ```
#[derive(Debug)]
#[must_use = "call build() or build_on(backend)"]
pub struct SemaphoreBuilder {
    pub(super) name: String,
    pub(super) config: Config,
}

impl SemaphoreBuilder {
    /// How long a holder keeps its permits without releasing or extending (default 60 s; at
    /// least 1 ms).
    ///
    /// ```
    /// use std::time::Duration;
    /// let s = tollgate::semaphore::Semaphore::builder("b-lease", 1).lease(Duration::from_secs(5)).build().unwrap();
    /// assert_eq!(s.lease(), Duration::from_secs(5));
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// The longest an `acquire` waits in total (default 30 s). `Duration::ZERO` makes
    /// `acquire` fail at once when no permit is free.
    ///
    /// ```
    /// use std::time::Duration;
    /// let s = tollgate::semaphore::Semaphore::builder("b-wait", 1).max_wait(Duration::ZERO).build().unwrap();
    /// let _p = s.acquire().unwrap();
    /// assert!(s.acquire().is_err());
    /// ```
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = Some(max_wait);
        self
    }

    /// Waits without limit (like `max_sleep=0` in redis-limiters).
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::builder("b-forever", 1).wait_forever().build().unwrap();
    /// assert_eq!(s.max_wait(), None);
    /// ```
    pub fn wait_forever(mut self) -> Self {
        self.config.max_wait = None;
        self
    }

    /// Renews every permit's lease in the background (every third of the lease) while the
    /// permit is alive (a tokio task when acquired inside a runtime, else a thread). A holder
    /// that hangs forever then keeps its permits forever, and a holder that dies loses them
    /// after one lease. Default: off.
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::builder("b-renew", 1).auto_renew(true).build().unwrap();
    /// assert!(s.auto_renews());
    /// ```
    pub fn auto_renew(mut self, on: bool) -> Self {
        self.config.auto_renew = on;
        self
    }

    /// Uses `clock` for leases (memory backend) and for the maximum wait.
    ///
    /// ```
    /// use tollgate::{semaphore::Semaphore, time::ManualClock};
    /// let s = Semaphore::builder("b-clock", 1).clock(ManualClock::new(0)).build().unwrap();
    /// # let _ = s;
    /// ```
    pub fn clock(self, clock: impl Clock) -> Self {
        self.shared_clock(Arc::new(clock))
    }

    /// Uses a shared clock.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tollgate::{semaphore::Semaphore, time::{Clock, SystemClock}};
    /// let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    /// let s = Semaphore::builder("b-shared-clock", 1).shared_clock(clock).build().unwrap();
    /// # let _ = s;
    /// ```
    pub fn shared_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.config.clock = ClockHandle::custom(clock);
        self.config.custom_clock = true;
        self
    }

    /// Rejects names longer than `max` bytes (default 1024).
    ///
    /// ```
    /// let r = tollgate::semaphore::Semaphore::builder("abcd", 1).max_name_len(3).build();
    /// assert!(r.is_err());
    /// ```
    pub fn max_name_len(mut self, max: usize) -> Self {
        self.config.max_name_len = max;
        self
    }

    /// A semaphore on the process-wide in-memory backend
    /// ([`MemorySemaphoreBackend::global`]).
    ///
    /// ```
    /// let s = tollgate::semaphore::Semaphore::builder("b-build", 1).build().unwrap();
    /// assert_eq!(s.name(), "b-build");
    /// ```
    pub fn build(self) -> Result<Semaphore<MemorySemaphoreBackend>, SemaphoreError> {
        self.build_on(MemorySemaphoreBackend::global())
    }

    /// A semaphore on `backend` (a private memory backend, Redis, …).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tollgate::semaphore::{MemorySemaphoreBackend, Semaphore, SemaphoreBackend};
    /// let backend: Arc<dyn SemaphoreBackend> = Arc::new(MemorySemaphoreBackend::new());
    /// let s: Semaphore<dyn SemaphoreBackend> = Semaphore::builder("b-dyn", 1).build_on(backend).unwrap();
    /// assert!(s.try_acquire().unwrap().is_some());
    /// ```
    pub fn build_on<B: SemaphoreBackend + ?Sized>(
        self,
        backend: Arc<B>,
    ) -> Result<Semaphore<B>, SemaphoreError> {
        if self.config.capacity == 0 {
            return Err(SemaphoreError::ZeroCapacity);
        }
        if self.config.lease < Duration::from_millis(1) {
            return Err(SemaphoreError::LeaseTooShort(self.config.lease));
        }
        check_name(&self.name, self.config.max_name_len)?;
        Ok(Semaphore {
            inner: Arc::new(Inner {
                name: self.name.into(),
                config: self.config,
                backend,
            }),
        })
    }
}
