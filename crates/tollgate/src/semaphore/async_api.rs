//! The async face of [`Semaphore`]: the `*_async` methods (the sync ones are in `mod.rs`;
//! both run the one wait loop of `wait.rs`).

use super::*;

impl<B: SemaphoreBackend + ?Sized> Semaphore<B> {
    /// Async [`acquire`](Self::acquire). Cancel-safe: dropping the future at any point
    /// leaves nothing held and no queue place behind.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-acq-async", 1).unwrap();
    /// let p = s.acquire_async().await.unwrap();
    /// p.release_async().await.unwrap();
    /// # });
    /// ```
    pub async fn acquire_async(&self) -> Result<Permit<B>, SemaphoreError> {
        self.acquire_n_async(1).await
    }

    /// Async [`acquire_n`](Self::acquire_n).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-acq-n-async", 4).unwrap();
    /// let p = s.acquire_n_async(4).await.unwrap();
    /// assert_eq!(p.permits(), 4);
    /// # });
    /// ```
    pub async fn acquire_n_async(&self, n: u64) -> Result<Permit<B>, SemaphoreError> {
        self.acquire_n_within_async(n, self.inner.config.max_wait)
            .await
    }

    /// Async [`acquire_n_within`](Self::acquire_n_within).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use std::time::Duration;
    /// let s = tollgate::semaphore::Semaphore::memory("s-within-async", 1).unwrap();
    /// let _held = s.acquire_async().await.unwrap();
    /// assert!(s.acquire_n_within_async(1, Some(Duration::from_millis(10))).await.is_err());
    /// # });
    /// ```
    pub async fn acquire_n_within_async(
        &self,
        n: u64,
        max_wait: Option<Duration>,
    ) -> Result<Permit<B>, SemaphoreError> {
        self.acquire_async_inner(n, max_wait)
            .await?
            .map_err(|(in_use, next)| self.timeout_error(max_wait, in_use, next))
    }

    /// Async [`try_acquire`](Self::try_acquire).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-try-async", 1).unwrap();
    /// let _p = s.try_acquire_async().await.unwrap().unwrap();
    /// assert!(s.try_acquire_async().await.unwrap().is_none());
    /// # });
    /// ```
    pub async fn try_acquire_async(&self) -> Result<Option<Permit<B>>, SemaphoreError> {
        self.try_acquire_n_async(1).await
    }

    /// Async [`try_acquire_n`](Self::try_acquire_n).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-try-n-async", 2).unwrap();
    /// assert!(s.try_acquire_n_async(3).await.is_err()); // can never fit
    /// # });
    /// ```
    pub async fn try_acquire_n_async(&self, n: u64) -> Result<Option<Permit<B>>, SemaphoreError> {
        Ok(self
            .acquire_async_inner(n, Some(Duration::ZERO))
            .await?
            .ok())
    }

    /// Async [`in_use`](Self::in_use).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-in-use-async", 2).unwrap();
    /// assert_eq!(s.in_use_async().await.unwrap(), 0);
    /// # });
    /// ```
    pub async fn in_use_async(&self) -> Result<u64, SemaphoreError> {
        Ok(self.status_async().await?.in_use)
    }

    /// Async [`status`](Self::status).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-status-async", 2).unwrap();
    /// assert_eq!(s.status_async().await.unwrap().holders, 0);
    /// # });
    /// ```
    pub async fn status_async(&self) -> Result<SemaphoreStatus, SemaphoreError> {
        Ok(self
            .inner
            .backend
            .status_async(&self.inner.name, self.now())
            .await?)
    }

    /// Awaits `fut` while holding one permit.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-call-async", 1).unwrap();
    /// assert_eq!(s.call_async(async { 7 }).await.unwrap(), 7);
    /// # });
    /// ```
    pub async fn call_async<F: Future>(&self, fut: F) -> Result<F::Output, SemaphoreError> {
        let _permit = self.acquire_async().await?;
        Ok(fut.await)
    }

    /// Wraps an async function so every call runs while holding one permit.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let s = tollgate::semaphore::Semaphore::memory("s-wrap-async", 1).unwrap();
    /// let fetch = s.wrap_async(|id: u32| async move { id + 1 });
    /// assert_eq!(fetch(1).await.unwrap(), 2);
    /// # });
    /// ```
    pub fn wrap_async<A, F, Fut>(
        &self,
        f: F,
    ) -> impl Fn(A) -> futures_util::future::BoxFuture<'static, Result<Fut::Output, SemaphoreError>>
    where
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        A: Send + 'static,
    {
        let sem = self.clone();
        let f = Arc::new(f);
        move |arg| {
            let sem = sem.clone();
            let f = Arc::clone(&f);
            Box::pin(async move {
                let _permit = sem.acquire_async().await?;
                Ok(f(arg).await)
            })
        }
    }
}
