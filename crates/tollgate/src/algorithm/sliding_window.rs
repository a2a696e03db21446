//! Sliding-window counter: the previous and current clock-aligned windows, the previous one
//! weighted by how much of it still overlaps the last `window`. Approximate, O(1) per rate.
//! Compared in integers scaled by the window length, so no division is lost. The scaled
//! products (`limit × window` reaches about 3·10^22 for `10^9 per 365 days`) are computed in
//! 128 bits, exactly. Mirrored by `lua/sliding_window.lua` (exact multi-limb products) and the
//! PostgreSQL function (`numeric`).

use super::{RateAlgorithm, Verdict};
use crate::error::Error;
use crate::quota::Rate;
use crate::time::Micros;

/// Sliding-window parameters of one rate.
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

/// Sliding-window state; `Default` is fresh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Start of the current window.
    pub window_start: Micros,
    /// Units admitted in the window before it.
    pub prev: u64,
    /// Units admitted in the current window.
    pub curr: u64,
}

/// The sliding-window-counter algorithm.
#[derive(Debug)]
pub struct SlidingWindow;

impl SlidingWindow {
    /// The state rolled forward to the window containing `now`.
    pub fn roll(p: &Params, s: &State, now: Micros) -> State {
        let now = now.max(s.window_start);
        let ws = now - now % p.window;
        let (prev, curr) = if s.window_start == ws {
            (s.prev, s.curr)
        } else if s.window_start + p.window == ws {
            (s.curr, 0)
        } else {
            (0, 0)
        };
        State {
            window_start: ws,
            prev,
            curr,
        }
    }

    /// The earliest wait after which `cost` fits (the `wait()` of the spec). Called only on a
    /// denial, so `prev * (w - e) > (limit - curr - cost) * w`, which keeps every quotient
    /// below `w`.
    fn wait(p: &Params, s: &State, e: Micros, cost: u64) -> Micros {
        let w = p.window;
        if p.limit >= s.curr + cost && s.prev > 0 {
            let room = p.limit - s.curr - cost;
            let e_min = w - mul_div(room, w, s.prev).min(w);
            if e_min < w {
                return e_min - e;
            }
        }
        if s.curr == 0 {
            return w - e;
        }
        let e2 = w - mul_div(p.limit - cost, w, s.curr).min(w);
        if e2 < w {
            (w - e) + e2
        } else {
            (w - e) + w
        }
    }

    fn reset_after(p: &Params, prev: u64, curr: u64, e: Micros) -> Micros {
        if curr > 0 {
            (p.window - e) + p.window
        } else if prev > 0 {
            p.window - e
        } else {
            0
        }
    }
}

impl RateAlgorithm for SlidingWindow {
    type Params = Params;
    type State = State;

    fn evaluate(p: &Params, s: &State, now: Micros, cost: u64) -> Result<(Verdict, State), Error> {
        let now = now.max(s.window_start);
        let r = Self::roll(p, s, now);
        let w = p.window;
        let e = now - r.window_start;
        if cost > p.limit {
            return Err(Error::CostExceedsCapacity {
                cost,
                capacity: p.limit,
            });
        }
        // prev's weighted share, scaled by w (exact: up to ~2^97).
        let weighted = u128::from(r.prev) * u128::from(w - e);
        let scaled = |units: u64| u128::from(units) * u128::from(w);
        let allowed = weighted + scaled(r.curr + cost) <= scaled(p.limit);
        let curr_after = if allowed { r.curr + cost } else { r.curr };
        // remaining = max(0, (L*w - weighted - curr_after*w) / w); the quotient is <= L.
        let remaining =
            scaled(p.limit).saturating_sub(weighted + scaled(curr_after)) / u128::from(w);
        let verdict = Verdict {
            allowed,
            limit: p.limit,
            remaining: remaining as u64,
            retry_after: if allowed {
                0
            } else {
                Self::wait(p, &r, e, cost)
            },
            reset_after: Self::reset_after(p, r.prev, curr_after, e),
            reset_after_uncharged: Self::reset_after(p, r.prev, r.curr, e),
        };
        let next = if allowed {
            State {
                curr: curr_after,
                ..r
            }
        } else {
            *s
        };
        Ok((verdict, next))
    }

    fn refund(p: &Params, s: &State, now: Micros, amount: u64) -> State {
        let r = Self::roll(p, s, now);
        State {
            curr: r.curr.saturating_sub(amount),
            ..r
        }
    }

    fn horizon(p: &Params, s: &State) -> Micros {
        if s.curr > 0 {
            s.window_start + 2 * p.window
        } else if s.prev > 0 {
            s.window_start + p.window
        } else {
            0
        }
    }

    fn capacity(p: &Params) -> u64 {
        p.limit
    }

    fn script_params(p: &Params) -> Vec<u64> {
        vec![p.limit, p.window]
    }

    const STATE_WIDTH: usize = 3;

    fn encode_state(s: &State, out: &mut Vec<u64>) {
        out.extend([s.window_start, s.prev, s.curr]);
    }

    fn decode_state(s: &[u64]) -> State {
        State {
            window_start: s[0],
            prev: s[1],
            curr: s[2],
        }
    }
}

/// `floor(a * b / c)` computed exactly in 128 bits (saturating at `u64::MAX`).
fn mul_div(a: u64, b: u64, c: u64) -> u64 {
    let q = u128::from(a) * u128::from(b) / u128::from(c);
    u64::try_from(q).unwrap_or(u64::MAX)
}
