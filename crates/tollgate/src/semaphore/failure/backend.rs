//! [`FailSafeSemaphore`] as a [`SemaphoreBackend`]: every call through the breaker, then the
//! failure policy when the store fails. Each operation is one flow over [`Io`] (the sync
//! methods run it blocking, the async ones await it).

use super::*;
use crate::store::io::{self, Io};

/// The answer of a blocking flow that did not complete (never expected; see [`io::blocking`]).
fn lost<T>() -> Result<T, StoreError> {
    Err(StoreError::new(
        "failure policy",
        "a blocking call did not complete",
    ))
}

/// A backend's calls made the way `io` says.
async fn acquire_on<S: SemaphoreBackend + ?Sized>(
    backend: &S,
    io: Io,
    req: &AcquireRequest<'_>,
) -> Result<AcquireOutcome, StoreError> {
    match io {
        Io::Blocking => backend.try_acquire(req),
        Io::Async => backend.try_acquire_async(req).await,
    }
}

async fn release_on<S: SemaphoreBackend + ?Sized>(
    backend: &S,
    io: Io,
    (name, holder, now): (&str, HolderId, Micros),
) -> Result<ReleaseOutcome, StoreError> {
    match io {
        Io::Blocking => backend.release(name, holder, now),
        Io::Async => backend.release_async(name, holder, now).await,
    }
}

async fn extend_on<S: SemaphoreBackend + ?Sized>(
    backend: &S,
    io: Io,
    (name, holder, now): (&str, HolderId, Micros),
    lease: Micros,
) -> Result<ExtendOutcome, StoreError> {
    match io {
        Io::Blocking => backend.extend(name, holder, lease, now),
        Io::Async => backend.extend_async(name, holder, lease, now).await,
    }
}

async fn status_on<S: SemaphoreBackend + ?Sized>(
    backend: &S,
    io: Io,
    name: &str,
    now: Micros,
) -> Result<SemaphoreStatus, StoreError> {
    match io {
        Io::Blocking => backend.status(name, now),
        Io::Async => backend.status_async(name, now).await,
    }
}

impl<B: SemaphoreBackend, F: SemaphoreBackend> FailSafeSemaphore<B, F> {
    async fn acquire(
        &self,
        io: Io,
        req: &AcquireRequest<'_>,
    ) -> Result<AcquireOutcome, StoreError> {
        match self.guarded(acquire_on(&self.primary, io, req)).await {
            Ok(outcome) => {
                if let Some(fallback) = self.used_fallback_queue(req) {
                    // A queue place this holder may have taken locally in an earlier attempt.
                    let _ = release_on(fallback, io, (req.name, req.holder, req.now)).await;
                }
                Ok(outcome)
            }
            Err(err) => {
                let Some(local) = self.local() else {
                    return self.rejected(err);
                };
                if may_have_granted(&err) {
                    // The store may have granted before its answer was lost: give it back.
                    let _ = release_on(&self.primary, io, (req.name, req.holder, req.now)).await;
                }
                self.local_used.store(true, Ordering::Release);
                let result = acquire_on(local, io, &self.local_request(req)).await;
                self.local_answer(err, result)
            }
        }
    }

    async fn release(
        &self,
        io: Io,
        who: (&str, HolderId, Micros),
    ) -> Result<ReleaseOutcome, StoreError> {
        if let Some(local) = self.used_local() {
            if let Ok(ReleaseOutcome::Released) = release_on(local, io, who).await {
                return Ok(ReleaseOutcome::Released);
            }
        }
        self.guarded(release_on(&self.primary, io, who)).await
    }

    async fn extend(
        &self,
        io: Io,
        who: (&str, HolderId, Micros),
        lease: Micros,
    ) -> Result<ExtendOutcome, StoreError> {
        if let Some(local) = self.used_local() {
            if let Ok(extended @ ExtendOutcome::Extended { .. }) =
                extend_on(local, io, who, lease).await
            {
                return Ok(extended);
            }
        }
        self.guarded(extend_on(&self.primary, io, who, lease)).await
    }

    async fn status(&self, io: Io, name: &str, now: Micros) -> Result<SemaphoreStatus, StoreError> {
        let err = match self.guarded(status_on(&self.primary, io, name, now)).await {
            Err(err) => err,
            ok => return ok,
        };
        match &self.mode {
            Mode::Fallback(fallback) => {
                let result = status_on(fallback, io, name, now).await;
                self.status_answer(&err, &result);
                result
            }
            _ => {
                self.observe(&err, FailureOutcome::Rejected);
                Err(err)
            }
        }
    }
}

impl<B: SemaphoreBackend, F: SemaphoreBackend> SemaphoreBackend for FailSafeSemaphore<B, F> {
    fn is_local(&self) -> bool {
        self.primary.is_local() && self.local().is_none_or(|l| l.is_local())
    }

    fn try_acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        io::blocking(self.acquire(Io::Blocking, req), lost)
    }

    fn try_acquire_async<'a>(
        &'a self,
        req: &'a AcquireRequest<'a>,
    ) -> BoxFuture<'a, Result<AcquireOutcome, StoreError>> {
        Box::pin(self.acquire(Io::Async, req))
    }

    fn release(
        &self,
        name: &str,
        holder: HolderId,
        now: Micros,
    ) -> Result<ReleaseOutcome, StoreError> {
        io::blocking(self.release(Io::Blocking, (name, holder, now)), lost)
    }

    fn release_async<'a>(
        &'a self,
        name: &'a str,
        holder: HolderId,
        now: Micros,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, StoreError>> {
        Box::pin(self.release(Io::Async, (name, holder, now)))
    }

    fn extend(
        &self,
        name: &str,
        holder: HolderId,
        lease: Micros,
        now: Micros,
    ) -> Result<ExtendOutcome, StoreError> {
        io::blocking(self.extend(Io::Blocking, (name, holder, now), lease), lost)
    }

    fn extend_async<'a>(
        &'a self,
        name: &'a str,
        holder: HolderId,
        lease: Micros,
        now: Micros,
    ) -> BoxFuture<'a, Result<ExtendOutcome, StoreError>> {
        Box::pin(self.extend(Io::Async, (name, holder, now), lease))
    }

    fn status(&self, name: &str, now: Micros) -> Result<SemaphoreStatus, StoreError> {
        io::blocking(self.status(Io::Blocking, name, now), lost)
    }

    fn status_async<'a>(
        &'a self,
        name: &'a str,
        now: Micros,
    ) -> BoxFuture<'a, Result<SemaphoreStatus, StoreError>> {
        Box::pin(self.status(Io::Async, name, now))
    }

    // `wait` / `wait_blocking`: the default polling. A busy answer may come from either
    // backend, so neither one's change counter (`epoch`) can be trusted for waking.
}
