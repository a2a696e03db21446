//! [`FailSafeSemaphore`] as a [`SemaphoreBackend`]: every call through the breaker, then the
//! failure policy when the store fails. Each operation is one flow over [`Io`] (the blocking
//! `call` runs it at once, `call_async` awaits it).

use super::*;
use crate::semaphore::backend::{SemaphoreOp, SemaphoreReply};
use crate::store::io::{self, Io};

/// `op` on `backend`, made the way `io` says.
async fn call_on<S: SemaphoreBackend + ?Sized>(
    backend: &S,
    io: Io,
    op: SemaphoreOp<'_>,
) -> Result<SemaphoreReply, StoreError> {
    match io {
        Io::Blocking => backend.call(op),
        Io::Async => backend.call_async(op).await,
    }
}

/// Gives the holder of `req` back to `backend` (best effort: the lease or queue TTL cleans
/// up otherwise).
async fn give_back<S: SemaphoreBackend + ?Sized>(backend: &S, io: Io, req: &AcquireRequest<'_>) {
    let op = SemaphoreOp::Release {
        name: req.name,
        holder: req.holder,
        now: req.now,
    };
    let _ = call_on(backend, io, op).await;
}

impl<B: SemaphoreBackend, F: SemaphoreBackend> FailSafeSemaphore<B, F> {
    async fn run(&self, io: Io, op: SemaphoreOp<'_>) -> Result<SemaphoreReply, StoreError> {
        match op {
            SemaphoreOp::Acquire(req) => self.acquire(io, &req).await.map(SemaphoreReply::Acquire),
            SemaphoreOp::Release { .. } | SemaphoreOp::Extend { .. } => {
                self.release_or_extend(io, op).await
            }
            SemaphoreOp::Status { .. } => self.status(io, op).await,
        }
    }

    async fn acquire(
        &self,
        io: Io,
        req: &AcquireRequest<'_>,
    ) -> Result<AcquireOutcome, StoreError> {
        let primary = call_on(&self.primary, io, SemaphoreOp::Acquire(*req));
        match self
            .guarded(primary)
            .await
            .and_then(SemaphoreReply::into_acquire)
        {
            Ok(outcome) => {
                if let Some(fallback) = self.used_fallback_queue(req) {
                    // A queue place this holder may have taken locally in an earlier attempt.
                    give_back(fallback, io, req).await;
                }
                Ok(outcome)
            }
            Err(err) => {
                let Some(local) = self.local() else {
                    return self.rejected(err);
                };
                if may_have_granted(&err) {
                    // The store may have granted before its answer was lost: give it back.
                    give_back(&self.primary, io, req).await;
                }
                self.local_used.store(true, Ordering::Release);
                let local_op = SemaphoreOp::Acquire(self.local_request(req));
                let result = call_on(local, io, local_op).await;
                self.local_answer(err, result.and_then(SemaphoreReply::into_acquire))
            }
        }
    }

    /// Release and extend: a permit granted without the store is answered locally; any other
    /// goes to the store (its error is returned under every policy).
    async fn release_or_extend(
        &self,
        io: Io,
        op: SemaphoreOp<'_>,
    ) -> Result<SemaphoreReply, StoreError> {
        if let Some(local) = self.used_local() {
            let reply = call_on(local, io, op).await;
            if let Ok(
                held @ (SemaphoreReply::Release(ReleaseOutcome::Released)
                | SemaphoreReply::Extend(ExtendOutcome::Extended { .. })),
            ) = reply
            {
                return Ok(held);
            }
        }
        self.guarded(call_on(&self.primary, io, op)).await
    }

    async fn status(&self, io: Io, op: SemaphoreOp<'_>) -> Result<SemaphoreReply, StoreError> {
        let err = match self.guarded(call_on(&self.primary, io, op)).await {
            Err(err) => err,
            ok => return ok,
        };
        match &self.mode {
            Mode::Fallback(fallback) => {
                let result = call_on(fallback, io, op).await;
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

    fn call(&self, op: SemaphoreOp<'_>) -> Result<SemaphoreReply, StoreError> {
        io::blocking(self.run(Io::Blocking, op), || {
            Err(StoreError::new(
                "failure policy",
                "a blocking call did not complete",
            ))
        })
    }

    fn call_async<'a>(
        &'a self,
        op: SemaphoreOp<'a>,
    ) -> BoxFuture<'a, Result<SemaphoreReply, StoreError>> {
        Box::pin(self.run(Io::Async, op))
    }

    // `wait` / `wait_blocking`: the default polling. A busy answer may come from either
    // backend, so neither one's change counter (`epoch`) can be trusted for waking.
}
