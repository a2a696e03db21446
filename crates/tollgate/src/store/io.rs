//! One flow, two fronts: the wrappers that have a sync and an async face (failure policies,
//! the semaphore's wait loop) write their logic once, as an `async fn` that takes an [`Io`]
//! and does each store call either blocking ([`Io::Blocking`]: the sync method, inline) or
//! awaited ([`Io::Async`]). A flow whose calls are all blocking never waits on anything, so
//! its future completes on the first poll: [`blocking`] runs it to the end on the calling
//! thread (the sync front), and `.await` runs it with [`Io::Async`] (the async front).

use std::future::Future;

/// How a flow makes its store calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Io {
    /// The sync methods, blocking the calling thread.
    Blocking,
    /// The async methods, awaited.
    Async,
}

/// Runs a flow built with [`Io::Blocking`] to the end on this thread; `lost` answers if it
/// did not complete at once (a flow that awaited something despite [`Io::Blocking`]: a bug,
/// reported as an error rather than a panic).
pub(crate) fn blocking<T>(flow: impl Future<Output = T>, lost: impl FnOnce() -> T) -> T {
    futures_util::FutureExt::now_or_never(flow).unwrap_or_else(lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocking_flow_completes_and_an_awaiting_one_is_reported() {
        assert_eq!(blocking(async { 7 }, || 0), 7);
        let pending = std::future::pending::<u8>();
        assert_eq!(blocking(pending, || 9), 9);
    }
}
