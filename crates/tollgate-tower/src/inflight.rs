//! [`InFlightPermit`]: a held in-flight slot, released when dropped (carried by the response
//! body until the response is sent).

use std::fmt;

/// A held in-flight slot; dropping it gives the slot back.
///
/// ```
/// use tollgate_tower::concurrency::{InFlightLimit, LocalInFlight};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let limit = LocalInFlight::new(1);
/// let permit = limit.try_acquire("k").await.unwrap().expect("free");
/// assert!(limit.try_acquire("k").await.unwrap().is_none());
/// drop(permit);
/// assert!(limit.try_acquire("k").await.unwrap().is_some());
/// # });
/// ```
pub struct InFlightPermit {
    _release: Box<dyn Send + Sync>,
}

impl InFlightPermit {
    /// A permit that releases its slot when `guard` is dropped.
    ///
    /// ```
    /// let p = tollgate_tower::concurrency::InFlightPermit::new(());
    /// drop(p);
    /// ```
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self {
            _release: Box::new(guard),
        }
    }
}

impl fmt::Debug for InFlightPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InFlightPermit")
    }
}
