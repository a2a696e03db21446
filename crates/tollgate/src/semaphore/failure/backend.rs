//! [`FailSafeSemaphore`] as a [`SemaphoreBackend`]: every call through the breaker, then the
//! failure policy when the store fails.

use super::*;

impl<B: SemaphoreBackend, F: SemaphoreBackend> SemaphoreBackend for FailSafeSemaphore<B, F> {
    fn is_local(&self) -> bool {
        self.primary.is_local() && self.local().is_none_or(|l| l.is_local())
    }

    fn try_acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        match self.guarded(|| self.primary.try_acquire(req)) {
            Ok(outcome) => {
                if let Some(fallback) = self.used_fallback_queue(req) {
                    // A queue place this holder may have taken locally in an earlier attempt.
                    let _ = fallback.release(req.name, req.holder, req.now);
                }
                Ok(outcome)
            }
            Err(err) => {
                let Some(local) = self.local() else {
                    return self.rejected(err);
                };
                if may_have_granted(&err) {
                    // The store may have granted before its answer was lost: give it back.
                    let _ = self.primary.release(req.name, req.holder, req.now);
                }
                self.local_used.store(true, Ordering::Release);
                let result = local.try_acquire(&self.local_request(req));
                self.local_answer(err, result)
            }
        }
    }

    fn try_acquire_async<'a>(
        &'a self,
        req: &'a AcquireRequest<'a>,
    ) -> BoxFuture<'a, Result<AcquireOutcome, StoreError>> {
        Box::pin(async move {
            match self
                .guarded_async(self.primary.try_acquire_async(req))
                .await
            {
                Ok(outcome) => {
                    if let Some(fallback) = self.used_fallback_queue(req) {
                        let _ = fallback.release_async(req.name, req.holder, req.now).await;
                    }
                    Ok(outcome)
                }
                Err(err) => {
                    let Some(local) = self.local() else {
                        return self.rejected(err);
                    };
                    if may_have_granted(&err) {
                        let _ = self
                            .primary
                            .release_async(req.name, req.holder, req.now)
                            .await;
                    }
                    self.local_used.store(true, Ordering::Release);
                    let local_req = self.local_request(req);
                    let result = local.try_acquire_async(&local_req).await;
                    self.local_answer(err, result)
                }
            }
        })
    }

    fn release(
        &self,
        name: &str,
        holder: HolderId,
        now: Micros,
    ) -> Result<ReleaseOutcome, StoreError> {
        if let Some(local) = self.used_local() {
            if let Ok(ReleaseOutcome::Released) = local.release(name, holder, now) {
                return Ok(ReleaseOutcome::Released);
            }
        }
        self.guarded(|| self.primary.release(name, holder, now))
    }

    fn release_async<'a>(
        &'a self,
        name: &'a str,
        holder: HolderId,
        now: Micros,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, StoreError>> {
        Box::pin(async move {
            if let Some(local) = self.used_local() {
                if let Ok(ReleaseOutcome::Released) = local.release_async(name, holder, now).await {
                    return Ok(ReleaseOutcome::Released);
                }
            }
            self.guarded_async(self.primary.release_async(name, holder, now))
                .await
        })
    }

    fn extend(
        &self,
        name: &str,
        holder: HolderId,
        lease: Micros,
        now: Micros,
    ) -> Result<ExtendOutcome, StoreError> {
        if let Some(local) = self.used_local() {
            if let Ok(extended @ ExtendOutcome::Extended { .. }) =
                local.extend(name, holder, lease, now)
            {
                return Ok(extended);
            }
        }
        self.guarded(|| self.primary.extend(name, holder, lease, now))
    }

    fn extend_async<'a>(
        &'a self,
        name: &'a str,
        holder: HolderId,
        lease: Micros,
        now: Micros,
    ) -> BoxFuture<'a, Result<ExtendOutcome, StoreError>> {
        Box::pin(async move {
            if let Some(local) = self.used_local() {
                if let Ok(extended @ ExtendOutcome::Extended { .. }) =
                    local.extend_async(name, holder, lease, now).await
                {
                    return Ok(extended);
                }
            }
            self.guarded_async(self.primary.extend_async(name, holder, lease, now))
                .await
        })
    }

    fn status(&self, name: &str, now: Micros) -> Result<SemaphoreStatus, StoreError> {
        match self.guarded(|| self.primary.status(name, now)) {
            Err(err) => match &self.mode {
                Mode::Fallback(fallback) => {
                    let result = fallback.status(name, now);
                    self.status_answer(&err, &result);
                    result
                }
                _ => {
                    self.observe(&err, FailureOutcome::Rejected);
                    Err(err)
                }
            },
            ok => ok,
        }
    }

    fn status_async<'a>(
        &'a self,
        name: &'a str,
        now: Micros,
    ) -> BoxFuture<'a, Result<SemaphoreStatus, StoreError>> {
        Box::pin(async move {
            match self
                .guarded_async(self.primary.status_async(name, now))
                .await
            {
                Err(err) => match &self.mode {
                    Mode::Fallback(fallback) => {
                        let result = fallback.status_async(name, now).await;
                        self.status_answer(&err, &result);
                        result
                    }
                    _ => {
                        self.observe(&err, FailureOutcome::Rejected);
                        Err(err)
                    }
                },
                ok => ok,
            }
        })
    }

    // `wait` / `wait_blocking`: the default polling. A busy answer may come from either
    // backend, so neither one's change counter (`epoch`) can be trusted for waking.
}
