//! Sliding log: the exact log of admitted costs `(ts, weight)`, shared by every rate of the
//! policy (PyrateLimiter's model). Mirrored by `lua/sliding_log.lua`.

use super::{combine, Verdict};
use crate::decision::Decision;
use crate::error::Error;
use crate::policy::MAX_RATES;
use crate::quota::Rate;
use crate::time::Micros;
use std::collections::VecDeque;

/// One rate of a sliding log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateParams {
    /// Units per window.
    pub limit: u64,
    /// The window length in µs.
    pub window: Micros,
}

/// Sliding-log parameters: every rate, and the longest window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// The rates, in policy order.
    pub rates: Vec<RateParams>,
    /// The longest window: entries older than this are dropped.
    pub max_window: Micros,
}

impl Params {
    /// Compiles the rates of a policy.
    pub fn new(rates: &[Rate]) -> Params {
        let rates: Vec<RateParams> = rates
            .iter()
            .map(|r| RateParams {
                limit: r.limit(),
                window: r.period_us(),
            })
            .collect();
        let max_window = rates.iter().map(|r| r.window).max().unwrap_or(0);
        Params { rates, max_window }
    }
}

/// The log: entries `(ts, weight)` in increasing `ts`, entries at one `ts` merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    /// The entries, oldest first.
    pub entries: VecDeque<(Micros, u64)>,
}

impl Log {
    fn newest(&self) -> Option<Micros> {
        self.entries.back().map(|e| e.0)
    }

    /// Drops the entries that no window can see any more.
    fn prune(&mut self, p: &Params, now: Micros) {
        while let Some(&(ts, _)) = self.entries.front() {
            if now - ts >= p.max_window {
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }
}

/// Decides `cost` at `now` on every rate, all-or-nothing; appends to the log when `charge`
/// is true and every rate admits.
pub fn decide(
    p: &Params,
    log: &mut Log,
    now: Micros,
    cost: u64,
    charge: bool,
) -> Result<Decision, Error> {
    let now = log.newest().map_or(now, |n| n.max(now));
    let mut verdicts = [Verdict {
        allowed: true,
        limit: 0,
        remaining: 0,
        retry_after: 0,
        reset_after: 0,
        reset_after_uncharged: 0,
    }; MAX_RATES];
    for (i, r) in p.rates.iter().enumerate() {
        if cost > r.limit {
            return Err(Error::CostExceedsCapacity {
                cost,
                capacity: r.limit,
            });
        }
        let in_window = |ts: Micros| now - ts < r.window;
        let count: u64 = log
            .entries
            .iter()
            .rev()
            .take_while(|e| in_window(e.0))
            .map(|e| e.1)
            .sum();
        let allowed = count + cost <= r.limit;
        let uncharged_reset = match log.newest() {
            Some(newest) if count > 0 => newest + r.window - now,
            _ => 0,
        };
        let retry_after = if allowed {
            0
        } else {
            let excess = count + cost - r.limit;
            let mut sum = 0;
            let mut retry = 0;
            for &(ts, weight) in log.entries.iter().filter(|e| in_window(e.0)) {
                sum += weight;
                if sum >= excess {
                    retry = ts + r.window - now;
                    break;
                }
            }
            retry
        };
        verdicts[i] = Verdict {
            allowed,
            limit: r.limit,
            remaining: r.limit - count - if allowed { cost } else { 0 },
            retry_after,
            reset_after: if allowed { r.window } else { uncharged_reset },
            reset_after_uncharged: uncharged_reset,
        };
    }
    let decision = combine(&verdicts[..p.rates.len()]);
    if charge && decision.allowed {
        log.prune(p, now);
        match log.entries.back_mut() {
            Some(last) if last.0 == now => last.1 += cost,
            _ => log.entries.push_back((now, cost)),
        }
    }
    Ok(decision)
}

/// Gives back `amount` units, taken from the newest entries.
pub fn refund(p: &Params, log: &mut Log, now: Micros, amount: u64) {
    log.prune(p, log.newest().map_or(now, |n| n.max(now)));
    let mut left = amount;
    while left > 0 {
        let Some(last) = log.entries.back_mut() else {
            break;
        };
        if last.1 > left {
            last.1 -= left;
            left = 0;
        } else {
            left -= last.1;
            log.entries.pop_back();
        }
    }
}

/// The log as integers where a store persists it as numbers: `ts, weight` per entry, oldest
/// first (the SQL stores' arrays and blobs; the Lua script's comma list uses the same order).
///
/// ```
/// use tollgate::algorithm::sliding_log::{decode_log, encode_log, Log};
/// let mut log = Log::default();
/// log.entries.push_back((10, 2));
/// assert_eq!(encode_log(&log), vec![10, 2]);
/// assert_eq!(decode_log(&[10, 2]), Some(log));
/// ```
pub fn encode_log(log: &Log) -> Vec<u64> {
    // A plain loop rather than a `flat_map` chain: 4x faster in debug builds (the Python
    // extension's in tests), where a log can hold thousands of entries.
    let mut out = Vec::with_capacity(2 * log.entries.len());
    for &(t, w) in &log.entries {
        out.push(t);
        out.push(w);
    }
    out
}

/// The log written by [`encode_log`]; `None` for an odd number of integers.
///
/// ```
/// assert!(tollgate::algorithm::sliding_log::decode_log(&[1]).is_none());
/// ```
pub fn decode_log(s: &[u64]) -> Option<Log> {
    if s.len() % 2 != 0 {
        return None;
    }
    Some(Log {
        entries: s.chunks_exact(2).map(|e| (e[0], e[1])).collect(),
    })
}

/// From this time on the log is empty for every window.
pub fn horizon(p: &Params, log: &Log) -> Micros {
    log.newest().map_or(0, |n| n + p.max_window)
}
