//! Fixed clock-aligned windows: windows start at multiples of the period since the epoch.
//! Mirrored by `lua/fixed_window.lua`.

use super::{RateAlgorithm, Verdict};
use crate::error::Error;
use crate::quota::Rate;
use crate::time::Micros;

/// Fixed-window parameters of one rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Units per window.
    pub limit: u64,
    /// The window length in µs.
    pub window: Micros,
}

impl Params {
    /// Compiles a rate.
    pub fn new(rate: &Rate) -> Params {
        Params {
            limit: rate.limit(),
            window: rate.period_us(),
        }
    }
}

/// Fixed-window state; `Default` is fresh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Start of the window `count` belongs to.
    pub window_start: Micros,
    /// Units admitted in that window.
    pub count: u64,
}

/// The fixed-window algorithm.
#[derive(Debug)]
pub struct FixedWindow;

impl RateAlgorithm for FixedWindow {
    type Params = Params;
    type State = State;

    fn evaluate(p: &Params, s: &State, now: Micros, cost: u64) -> Result<(Verdict, State), Error> {
        let now = now.max(s.window_start);
        let ws = now - now % p.window;
        let count = if s.window_start == ws { s.count } else { 0 };
        if cost > p.limit {
            return Err(Error::CostExceedsCapacity {
                cost,
                capacity: p.limit,
            });
        }
        let until_end = ws + p.window - now;
        let reset_of = |c: u64| if c > 0 { until_end } else { 0 };
        let allowed = count + cost <= p.limit;
        let count_after = if allowed { count + cost } else { count };
        let verdict = Verdict {
            allowed,
            limit: p.limit,
            remaining: p.limit - count_after,
            retry_after: if allowed { 0 } else { until_end },
            reset_after: reset_of(count_after),
            reset_after_uncharged: reset_of(count),
        };
        let next = State {
            window_start: ws,
            count: count_after,
        };
        Ok((verdict, next))
    }

    fn refund(p: &Params, s: &State, now: Micros, amount: u64) -> State {
        let now = now.max(s.window_start);
        let ws = now - now % p.window;
        if s.window_start == ws {
            State {
                window_start: ws,
                count: s.count.saturating_sub(amount),
            }
        } else {
            *s
        }
    }

    fn horizon(p: &Params, s: &State) -> Micros {
        s.window_start + p.window
    }

    fn capacity(p: &Params) -> u64 {
        p.limit
    }

    fn script_params(p: &Params) -> Vec<u64> {
        vec![p.limit, p.window]
    }

    const STATE_WIDTH: usize = 2;

    fn encode_state(s: &State, out: &mut Vec<u64>) {
        out.extend([s.window_start, s.count]);
    }

    fn decode_state(s: &[u64]) -> State {
        State {
            window_start: s[0],
            count: s[1],
        }
    }
}
