//! The server's semaphores: named capacities and leases, acquired through the library's
//! [`tollgate::semaphore::Semaphore`] (its FIFO wait loop) and handed out as lease ids.

use super::*;

/// The result of a semaphore acquire.
///
/// ```
/// let a = tollgate_server::app::SemAcquire::Busy { in_use: 3, retry_after_us: None };
/// assert!(!matches!(a, tollgate_server::app::SemAcquire::Granted { .. }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum SemAcquire {
    /// Granted: release with `lease_id`; the permits expire after `expires_in_us` unless
    /// extended.
    Granted {
        /// The lease id (32 hex digits).
        lease_id: String,
        /// Until the lease ends.
        expires_in_us: u64,
    },
    /// Not granted within the wait.
    Busy {
        /// Permits held now.
        in_use: u64,
        /// When the earliest lease ends, if known.
        retry_after_us: Option<u64>,
    },
}

/// The most an acquire may wait on the server.
pub const MAX_SEMAPHORE_WAIT: Duration = Duration::from_secs(60);

impl App {
    fn semaphore(&self, name: &str) -> Result<SemaphoreSpec, AppError> {
        self.semaphore_specs
            .get(name)
            .copied()
            .ok_or_else(|| AppError::UnknownSemaphore(name.to_string()))
    }

    /// The configured semaphores.
    ///
    /// ```
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// assert_eq!(app.semaphores().count(), 0);
    /// ```
    pub fn semaphores(&self) -> impl Iterator<Item = (&String, &SemaphoreSpec)> {
        self.semaphore_specs.iter()
    }

    fn sem_error(&self, e: tollgate::StoreError) -> AppError {
        self.store_errors.record(&e);
        AppError::StoreUnavailable(e.to_string())
    }

    /// Acquires `permits` of semaphore `name` for `lease` (default: the configured lease),
    /// waiting up to `wait` in FIFO order. A `wait` above [`MAX_SEMAPHORE_WAIT`] is an error
    /// ([`AppError::BadRequest`]), never silently shortened.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use tollgate_server::app::{App, SemAcquire, SemaphoreSpec};
    /// let mut config = tollgate_server::config::Config::default();
    /// config.semaphores.insert("db".into(), SemaphoreSpec { capacity: 1, lease: Duration::from_secs(30) });
    /// let app = App::new(&config, None).unwrap();
    /// let SemAcquire::Granted { lease_id, .. } = app.sem_acquire("db", 1, None, Duration::ZERO).await.unwrap() else { panic!() };
    /// assert!(matches!(app.sem_acquire("db", 1, None, Duration::ZERO).await.unwrap(), SemAcquire::Busy { in_use: 1, .. }));
    /// assert!(app.sem_release("db", &lease_id).await.unwrap());
    /// # });
    /// ```
    pub async fn sem_acquire(
        &self,
        name: &str,
        permits: u64,
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<SemAcquire, AppError> {
        let spec = self.semaphore(name)?;
        if permits == 0 || permits > spec.capacity {
            return Err(AppError::BadRequest(format!(
                "permits must be between 1 and the capacity {} (got {permits})",
                spec.capacity
            )));
        }
        let lease = lease.unwrap_or(spec.lease);
        if lease.is_zero() || lease > Duration::from_secs(86_400) {
            return Err(AppError::BadRequest(
                "the lease must be between 1 ms and 24 h".into(),
            ));
        }
        if wait > MAX_SEMAPHORE_WAIT {
            return Err(AppError::BadRequest(format!(
                "wait_ms must be at most {} (got {})",
                MAX_SEMAPHORE_WAIT.as_millis(),
                wait.as_millis()
            )));
        }
        // The library's semaphore does the waiting (FIFO queue, wake-ups on release and at
        // the earliest lease end, cancel safety: a dropped request leaves nothing held or
        // queued); the granted permits are then detached and handed out as a lease id.
        let sem = tollgate::semaphore::Semaphore::builder(name, spec.capacity)
            .lease(lease)
            .max_wait(wait)
            .build_on(Arc::clone(&self.semaphores))
            .map_err(|e| AppError::BadRequest(e.to_string()))?;
        match sem.acquire_n_async(permits).await {
            Ok(permit) => {
                let (holder, expires_at) = permit.detach();
                Ok(SemAcquire::Granted {
                    lease_id: holder.to_string(),
                    expires_in_us: expires_at.saturating_sub(now_us()),
                })
            }
            Err(SemaphoreError::WaitTimeout {
                in_use,
                retry_after,
                ..
            }) => Ok(SemAcquire::Busy {
                in_use,
                retry_after_us: retry_after
                    .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            }),
            Err(SemaphoreError::Store(e)) => Err(self.sem_error(e)),
            Err(e) => Err(AppError::BadRequest(e.to_string())),
        }
    }

    fn lease_id(id: &str) -> Result<tollgate::semaphore::HolderId, AppError> {
        tollgate::semaphore::HolderId::parse(id).ok_or_else(|| {
            // Never reflect a client's input whole (a 60 KB "lease id" came back whole).
            AppError::BadRequest(format!(
                "{} is not a lease id (32 hex digits)",
                crate::app::shown(id)
            ))
        })
    }

    /// Releases a lease; `false` when it was not held (already released or expired).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let mut config = tollgate_server::config::Config::default();
    /// config.semaphores.insert("db".into(), tollgate_server::app::SemaphoreSpec { capacity: 1, lease: std::time::Duration::from_secs(1) });
    /// let app = tollgate_server::app::App::new(&config, None).unwrap();
    /// assert!(!app.sem_release("db", &"0".repeat(31).chars().chain(['1']).collect::<String>()).await.unwrap());
    /// # });
    /// ```
    pub async fn sem_release(&self, name: &str, lease_id: &str) -> Result<bool, AppError> {
        self.semaphore(name)?;
        let holder = Self::lease_id(lease_id)?;
        let r = self
            .semaphores
            .release_async(name, holder, now_us())
            .await
            .map_err(|e| self.sem_error(e))?;
        Ok(r == tollgate::semaphore::ReleaseOutcome::Released)
    }

    /// Extends a lease to `lease` from now; the new time left, or `None` when not held.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use tollgate_server::app::{App, SemAcquire, SemaphoreSpec};
    /// let mut config = tollgate_server::config::Config::default();
    /// config.semaphores.insert("db".into(), SemaphoreSpec { capacity: 1, lease: Duration::from_secs(1) });
    /// let app = App::new(&config, None).unwrap();
    /// let SemAcquire::Granted { lease_id, .. } = app.sem_acquire("db", 1, None, Duration::ZERO).await.unwrap() else { panic!() };
    /// assert!(app.sem_extend("db", &lease_id, None).await.unwrap().is_some());
    /// # });
    /// ```
    pub async fn sem_extend(
        &self,
        name: &str,
        lease_id: &str,
        lease: Option<Duration>,
    ) -> Result<Option<u64>, AppError> {
        let spec = self.semaphore(name)?;
        let holder = Self::lease_id(lease_id)?;
        let lease = lease.unwrap_or(spec.lease);
        let now = now_us();
        let r = self
            .semaphores
            .extend_async(name, holder, lease.as_micros() as u64, now)
            .await
            .map_err(|e| self.sem_error(e))?;
        Ok(match r {
            tollgate::semaphore::ExtendOutcome::Extended { expires_at } => {
                Some(expires_at.saturating_sub(now))
            }
            tollgate::semaphore::ExtendOutcome::NotHeld => None,
        })
    }

    /// Permits in use, holders and waiters of a semaphore.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let mut config = tollgate_server::config::Config::default();
    /// config.semaphores.insert("db".into(), tollgate_server::app::SemaphoreSpec { capacity: 2, lease: std::time::Duration::from_secs(1) });
    /// let app = tollgate_server::app::App::new(&config, None).unwrap();
    /// assert_eq!(app.sem_status("db").await.unwrap().in_use, 0);
    /// # });
    /// ```
    pub async fn sem_status(
        &self,
        name: &str,
    ) -> Result<tollgate::semaphore::SemaphoreStatus, AppError> {
        self.semaphore(name)?;
        self.semaphores
            .status_async(name, now_us())
            .await
            .map_err(|e| self.sem_error(e))
    }
}
