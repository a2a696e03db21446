//! [`ErasedLimiter`]: a limiter of any store behind one object type, and its multi-key call.

use futures_util::future::BoxFuture;
use std::any::{Any, TypeId};
use std::sync::Arc;
use tollgate::store::memory::MemoryBackend;
use tollgate::store::multi::{MultiBackend, MultiDecision};
use tollgate::store::Backend;
use tollgate::{Decision, Error, LimitCheck, Limiter, Policy};

/// A limiter of any store, behind one object type (so one layer can mix stores).
///
/// The `*_now` methods decide on the calling thread; the layer uses them only when
/// [`decides_in_process`](ErasedLimiter::decides_in_process) says the backend does no I/O (the
/// memory store), so a request is decided inside `Service::call` without a boxed future.
pub(crate) trait ErasedLimiter: Send + Sync + 'static {
    fn policy(&self) -> &Policy;
    fn decides_in_process(&self) -> bool;
    fn check_now(&self, key: &str, cost: u64) -> Result<Decision, Error>;
    fn peek_now(&self, key: &str, cost: u64) -> Result<Decision, Error>;
    fn refund_now(&self, key: &str, amount: u64) -> Result<(), Error>;
    fn check<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, Error>>;
    fn peek<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, Error>>;
    fn refund<'a>(&'a self, key: &'a str, amount: u64) -> BoxFuture<'a, Result<(), Error>>;
    /// The limiter itself, to find the other limiters of a multi-key call of one type.
    fn as_any(&self) -> &dyn Any;
    /// [`Limiter::check_all`] over `items`, run by this limiter's backend type, when every
    /// item's limiter is of that type (`None` otherwise: the layer then falls back to peek,
    /// check and refund).
    fn check_all_now(&self, items: &[Item<'_>]) -> Option<Result<MultiDecision, Error>>;
    /// Async [`check_all_now`](Self::check_all_now).
    fn check_all<'a>(
        &'a self,
        items: &'a [Item<'a>],
    ) -> Option<BoxFuture<'a, Result<MultiDecision, Error>>>;
}

/// One item of a multi-key call: a limiter, a key, a cost.
pub(crate) type Item<'a> = (&'a dyn ErasedLimiter, &'a str, u64);

/// The items as [`LimitCheck`]s of `Limiter<B>`, if every limiter is one.
fn typed<'a, B: MultiBackend>(items: &[Item<'a>]) -> Option<Vec<LimitCheck<'a, B>>> {
    items
        .iter()
        .map(|(limiter, key, cost)| {
            let limiter: &'a dyn ErasedLimiter = *limiter;
            limiter
                .as_any()
                .downcast_ref::<Limiter<B>>()
                .map(|l| l.item(key, *cost))
        })
        .collect()
}

/// Whether `B` is the memory store's backend, whose operations never wait on I/O (a short
/// critical section on a sharded map), so they can run inside `Service::call`.
fn is_in_process_backend<B: Backend>() -> bool {
    let id = TypeId::of::<B>();
    id == TypeId::of::<MemoryBackend>()
        || id == TypeId::of::<Arc<MemoryBackend>>()
        || id == TypeId::of::<Box<MemoryBackend>>()
}

impl<B: MultiBackend> ErasedLimiter for Limiter<B> {
    fn policy(&self) -> &Policy {
        Limiter::policy(self)
    }
    fn decides_in_process(&self) -> bool {
        is_in_process_backend::<B>()
    }
    fn check_now(&self, key: &str, cost: u64) -> Result<Decision, Error> {
        self.check_n(key, cost)
    }
    fn peek_now(&self, key: &str, cost: u64) -> Result<Decision, Error> {
        Limiter::peek(self, key, cost)
    }
    fn refund_now(&self, key: &str, amount: u64) -> Result<(), Error> {
        Limiter::refund(self, key, amount)
    }
    fn check<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, Error>> {
        Box::pin(self.check_n_async(key, cost))
    }
    fn peek<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, Error>> {
        Box::pin(self.peek_async(key, cost))
    }
    fn refund<'a>(&'a self, key: &'a str, amount: u64) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.refund_async(key, amount))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn check_all_now(&self, items: &[Item<'_>]) -> Option<Result<MultiDecision, Error>> {
        typed::<B>(items).map(|items| Limiter::check_all(&items))
    }
    fn check_all<'a>(
        &'a self,
        items: &'a [Item<'a>],
    ) -> Option<BoxFuture<'a, Result<MultiDecision, Error>>> {
        let items = typed::<B>(items)?;
        Some(Box::pin(
            async move { Limiter::check_all_async(&items).await },
        ))
    }
}
