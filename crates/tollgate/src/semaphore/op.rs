//! [`SemaphoreOp`] and [`SemaphoreReply`]: the one operation a
//! [`SemaphoreBackend`](super::SemaphoreBackend) runs per call, and its answer.

use super::backend::{
    AcquireOutcome, AcquireRequest, ExtendOutcome, HolderId, ReleaseOutcome, SemaphoreStatus,
};
use crate::error::StoreError;
use crate::time::Micros;

/// One operation on a semaphore, as sent to a [`SemaphoreBackend`](super::SemaphoreBackend).
///
/// ```
/// use tollgate::semaphore::{HolderId, SemaphoreOp};
/// let op = SemaphoreOp::Status { name: "db", now: 0 };
/// assert_eq!(op.name(), "db");
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum SemaphoreOp<'a> {
    /// Take permits (see [`AcquireRequest`]).
    Acquire(AcquireRequest<'a>),
    /// Free the holder's permits (if its lease is live) and remove it from the wait queue.
    Release {
        /// The semaphore.
        name: &'a str,
        /// The holder.
        holder: HolderId,
        /// The caller's clock (µs).
        now: Micros,
    },
    /// Move a live holder's expiry to `now + lease`.
    Extend {
        /// The semaphore.
        name: &'a str,
        /// The holder.
        holder: HolderId,
        /// The new lease (µs).
        lease: Micros,
        /// The caller's clock (µs).
        now: Micros,
    },
    /// Count live holders, permits and waiters.
    Status {
        /// The semaphore.
        name: &'a str,
        /// The caller's clock (µs).
        now: Micros,
    },
}

impl SemaphoreOp<'_> {
    /// The semaphore's name.
    ///
    /// ```
    /// use tollgate::semaphore::{HolderId, SemaphoreOp};
    /// assert_eq!(SemaphoreOp::Release { name: "s", holder: HolderId(1), now: 0 }.name(), "s");
    /// ```
    pub fn name(&self) -> &str {
        match self {
            SemaphoreOp::Acquire(req) => req.name,
            SemaphoreOp::Release { name, .. }
            | SemaphoreOp::Extend { name, .. }
            | SemaphoreOp::Status { name, .. } => name,
        }
    }
}

/// A [`SemaphoreBackend`](super::SemaphoreBackend)'s answer to a [`SemaphoreOp`] (the variant of the operation).
///
/// ```
/// use tollgate::semaphore::{ReleaseOutcome, SemaphoreReply};
/// let r = SemaphoreReply::Release(ReleaseOutcome::Released);
/// assert_eq!(r.into_release().unwrap(), ReleaseOutcome::Released);
/// assert!(r.into_status().is_err()); // not the answer to a status call
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub enum SemaphoreReply {
    /// To [`SemaphoreOp::Acquire`].
    Acquire(AcquireOutcome),
    /// To [`SemaphoreOp::Release`].
    Release(ReleaseOutcome),
    /// To [`SemaphoreOp::Extend`].
    Extend(ExtendOutcome),
    /// To [`SemaphoreOp::Status`].
    Status(SemaphoreStatus),
}

macro_rules! reply_accessor {
    ($(#[$doc:meta])* $fn:ident, $variant:ident, $t:ty) => {
        $(#[$doc])*
        pub fn $fn(self) -> Result<$t, StoreError> {
            match self {
                SemaphoreReply::$variant(v) => Ok(v),
                other => Err(StoreError::new(
                    "semaphore",
                    format!("the backend answered {other:?} to a {} call", stringify!($variant)),
                )),
            }
        }
    };
}

impl SemaphoreReply {
    reply_accessor!(
        /// The acquire outcome, or an error when the reply is of another operation.
        ///
        /// ```
        /// use tollgate::semaphore::{AcquireOutcome, SemaphoreReply};
        /// let r = SemaphoreReply::Acquire(AcquireOutcome::Granted { expires_at: 5 });
        /// assert!(r.into_acquire().unwrap().is_granted());
        /// ```
        into_acquire, Acquire, AcquireOutcome
    );
    reply_accessor!(
        /// The release outcome, or an error when the reply is of another operation.
        ///
        /// ```
        /// use tollgate::semaphore::{ReleaseOutcome, SemaphoreReply};
        /// assert!(SemaphoreReply::Release(ReleaseOutcome::NotHeld).into_release().is_ok());
        /// ```
        into_release, Release, ReleaseOutcome
    );
    reply_accessor!(
        /// The extend outcome, or an error when the reply is of another operation.
        ///
        /// ```
        /// use tollgate::semaphore::{ExtendOutcome, SemaphoreReply};
        /// assert!(SemaphoreReply::Extend(ExtendOutcome::NotHeld).into_extend().is_ok());
        /// ```
        into_extend, Extend, ExtendOutcome
    );
    reply_accessor!(
        /// The status, or an error when the reply is of another operation.
        ///
        /// ```
        /// use tollgate::semaphore::{SemaphoreReply, SemaphoreStatus};
        /// assert!(SemaphoreReply::Status(SemaphoreStatus::default()).into_status().is_ok());
        /// ```
        into_status, Status, SemaphoreStatus
    );
}
