//! `CL.THROTTLE`, compatible with redis-cell.
//!
//! `CL.THROTTLE <key> <max_burst> <count per period> <period> [<quantity>]` runs GCRA with a
//! burst of `max_burst + 1` and an emission interval of `period / count` seconds, and replies
//! with redis-cell's five integers:
//!
//! | # | field | meaning |
//! |---|---|---|
//! | 1 | limited | 0 allowed, 1 limited |
//! | 2 | limit | `max_burst + 1` |
//! | 3 | remaining | units left |
//! | 4 | retry_after | seconds until a retry can succeed; `-1` when allowed |
//! | 5 | reset_after | seconds until the key is back to full |
//!
//! Seconds are rounded as redis-cell does (`src/lib.rs` there): the whole seconds, plus one if
//! the duration has a non-zero *millisecond* part — so 1.0004 s reports 1 and 1.001 s reports
//! 2. A quantity of 0 peeks. A quantity above the limit is refused with `retry_after = -1`
//! (it can never succeed) and charges nothing, as in redis-cell.
//!
//! ```
//! use tollgate_server::cell::cell_seconds;
//! assert_eq!(cell_seconds(1_000_400), 1);
//! assert_eq!(cell_seconds(1_001_000), 2);
//! assert_eq!(cell_seconds(0), 0);
//! ```

use crate::app::{App, AppError};

/// redis-cell's rounding of a duration in microseconds to whole seconds: truncate, then add
/// one when the millisecond part is non-zero.
///
/// ```
/// assert_eq!(tollgate_server::cell::cell_seconds(999), 0);
/// assert_eq!(tollgate_server::cell::cell_seconds(200_000), 1);
/// ```
pub fn cell_seconds(us: u64) -> i64 {
    let secs = (us / 1_000_000) as i64;
    let millis = (us % 1_000_000) / 1_000;
    secs + i64::from(millis > 0)
}

/// A CL.THROTTLE reply.
///
/// ```
/// let r = tollgate_server::cell::ThrottleReply { limited: false, limit: 16, remaining: 15, retry_after: -1, reset_after: 4 };
/// assert_eq!(r.to_array(), [0, 16, 15, -1, 4]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleReply {
    /// The request was refused.
    pub limited: bool,
    /// `max_burst + 1`.
    pub limit: i64,
    /// Units left.
    pub remaining: i64,
    /// Seconds until a retry can succeed, `-1` when allowed or never.
    pub retry_after: i64,
    /// Seconds until the key is full again.
    pub reset_after: i64,
}

impl ThrottleReply {
    /// The five integers, in redis-cell's order.
    ///
    /// ```
    /// let r = tollgate_server::cell::ThrottleReply { limited: true, limit: 1, remaining: 0, retry_after: 1, reset_after: 1 };
    /// assert_eq!(r.to_array()[0], 1);
    /// ```
    pub fn to_array(&self) -> [i64; 5] {
        [
            i64::from(self.limited),
            self.limit,
            self.remaining,
            self.retry_after,
            self.reset_after,
        ]
    }
}

/// Parses one integer argument the way redis-cell reports failures.
///
/// ```
/// assert_eq!(tollgate_server::cell::parse_i64(b"-3").unwrap(), -3);
/// assert_eq!(tollgate_server::cell::parse_i64(b"x").unwrap_err(), "ERR Couldn't parse as integer: x");
/// ```
pub fn parse_i64(arg: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| {
            format!(
                "ERR Couldn't parse as integer: {}",
                String::from_utf8_lossy(arg)
            )
        })
}

/// Runs CL.THROTTLE.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
/// // max_burst 1 (limit 2), 1 per 10 s
/// let r = tollgate_server::cell::throttle(&app, "k", 1, 1, 10, 1).await.unwrap();
/// assert_eq!(r.to_array(), [0, 2, 1, -1, 10]);
/// let r = tollgate_server::cell::throttle(&app, "k", 1, 1, 10, 1).await.unwrap();
/// assert_eq!(r.to_array(), [0, 2, 0, -1, 20]);
/// let r = tollgate_server::cell::throttle(&app, "k", 1, 1, 10, 1).await.unwrap();
/// assert_eq!(r.to_array(), [1, 2, 0, 10, 20]);
/// # });
/// ```
pub async fn throttle(
    app: &App,
    key: &str,
    max_burst: i64,
    count: i64,
    period: i64,
    quantity: i64,
) -> Result<ThrottleReply, AppError> {
    if max_burst < 0 {
        return Err(AppError::BadRequest(format!(
            "max_burst must be 0 or more (got {max_burst})"
        )));
    }
    if count < 1 {
        return Err(AppError::BadRequest(format!(
            "count per period must be at least 1 (got {count})"
        )));
    }
    if period < 1 {
        return Err(AppError::BadRequest(format!(
            "period must be at least 1 second (got {period})"
        )));
    }
    if quantity < 0 {
        return Err(AppError::BadRequest(format!(
            "quantity must be 0 or more (got {quantity})"
        )));
    }
    let entry = app.cell_policy(max_burst as u64, count as u64, period as u64)?;
    let rate = entry.policy().rates()[0];
    let burst = rate.burst();
    let emission_us = rate.period_us().div_ceil(rate.limit());
    let limit = burst as i64;
    if quantity == 0 || quantity as u64 > burst {
        // Peek at the current state with a cost of 1 and undo that unit's effect: this is the
        // state redis-cell reports for a peek (quantity 0) and for a quantity that can never
        // fit (which it refuses with retry_after -1, charging nothing).
        let d = app.peek(&entry, key, 1).await?.decision;
        let reset_us = d.reset_after.as_micros() as u64;
        let (remaining, reset_after) = if d.allowed {
            (d.remaining + 1, reset_us.saturating_sub(emission_us))
        } else {
            (d.remaining, reset_us)
        };
        return Ok(ThrottleReply {
            limited: quantity != 0,
            limit,
            remaining: remaining as i64,
            retry_after: -1,
            reset_after: cell_seconds(reset_after),
        });
    }
    let d = app.check(&entry, key, quantity as u64).await?.decision;
    Ok(ThrottleReply {
        limited: !d.allowed,
        limit,
        remaining: d.remaining as i64,
        retry_after: if d.allowed {
            -1
        } else {
            cell_seconds(d.retry_after.as_micros() as u64)
        },
        reset_after: cell_seconds(d.reset_after.as_micros() as u64),
    })
}
