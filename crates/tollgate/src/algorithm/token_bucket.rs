//! Token bucket with interval refill: `refill_amount` tokens every `refill_interval`, up to
//! `capacity`, starting from `initial_tokens`. Partial progress towards the next tick is kept.
//! Mirrored by `lua/token_bucket.lua`.

use super::{RateAlgorithm, Verdict};
use crate::error::Error;
use crate::time::Micros;

/// Token-bucket parameters of one rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// The most tokens the bucket holds (the rate's burst).
    pub capacity: u64,
    /// Tokens added per tick (the rate's limit).
    pub refill_amount: u64,
    /// Time between ticks in µs (the rate's period).
    pub refill_interval: Micros,
    /// Tokens of a new bucket.
    pub initial_tokens: u64,
}

/// Token-bucket state; `Default` (not present) is fresh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// False for a bucket that does not exist yet.
    pub present: bool,
    /// Tokens in the bucket at `last`.
    pub tokens: u64,
    /// The time of the last refill tick.
    pub last: Micros,
}

/// The token-bucket algorithm.
#[derive(Debug)]
pub struct TokenBucket;

impl TokenBucket {
    /// The bucket refilled up to `now` (see `docs/semantics.md`).
    pub fn refill(p: &Params, s: &State, now: Micros) -> State {
        let now = if s.present { now.max(s.last) } else { now };
        let (mut tokens, mut last) = if !s.present {
            (p.initial_tokens, now)
        } else if now > s.last {
            let k = (now - s.last) / p.refill_interval;
            (
                s.tokens.saturating_add(k.saturating_mul(p.refill_amount)),
                s.last + k * p.refill_interval,
            )
        } else {
            (s.tokens, s.last)
        };
        if tokens >= p.capacity {
            tokens = p.capacity;
            last = now;
        }
        State {
            present: true,
            tokens,
            last,
        }
    }

    fn until_full(p: &Params, tokens: u64, last: Micros, now: Micros) -> Micros {
        if tokens >= p.capacity {
            0
        } else {
            (last + (p.capacity - tokens).div_ceil(p.refill_amount) * p.refill_interval)
                .saturating_sub(now)
        }
    }
}

impl RateAlgorithm for TokenBucket {
    type Params = Params;
    type State = State;

    fn evaluate(p: &Params, s: &State, now: Micros, cost: u64) -> Result<(Verdict, State), Error> {
        let now = if s.present { now.max(s.last) } else { now };
        let r = Self::refill(p, s, now);
        if cost > p.capacity {
            return Err(Error::CostExceedsCapacity {
                cost,
                capacity: p.capacity,
            });
        }
        let reset_after_uncharged = Self::until_full(p, r.tokens, r.last, now);
        if cost <= r.tokens {
            let after = State {
                tokens: r.tokens - cost,
                ..r
            };
            let verdict = Verdict {
                allowed: true,
                limit: p.capacity,
                remaining: after.tokens,
                retry_after: 0,
                reset_after: Self::until_full(p, after.tokens, after.last, now),
                reset_after_uncharged,
            };
            Ok((verdict, after))
        } else {
            let ticks = (cost - r.tokens).div_ceil(p.refill_amount);
            let verdict = Verdict {
                allowed: false,
                limit: p.capacity,
                remaining: r.tokens,
                retry_after: r.last + ticks * p.refill_interval - now,
                reset_after: reset_after_uncharged,
                reset_after_uncharged,
            };
            Ok((verdict, *s))
        }
    }

    fn settle(p: &Params, s: &State, now: Micros) -> State {
        Self::refill(p, s, now)
    }

    fn refund(p: &Params, s: &State, now: Micros, amount: u64) -> State {
        let r = Self::refill(p, s, now);
        State {
            tokens: r.tokens.saturating_add(amount).min(p.capacity),
            ..r
        }
    }

    fn horizon(p: &Params, s: &State) -> Micros {
        if !s.present {
            0
        } else if s.tokens >= p.capacity {
            s.last
        } else {
            s.last + (p.capacity - s.tokens).div_ceil(p.refill_amount) * p.refill_interval
        }
    }

    fn capacity(p: &Params) -> u64 {
        p.capacity
    }

    fn script_params(p: &Params) -> Vec<u64> {
        vec![
            p.capacity,
            p.refill_amount,
            p.refill_interval,
            p.initial_tokens,
        ]
    }

    const STATE_WIDTH: usize = 3;

    fn encode_state(s: &State, out: &mut Vec<u64>) {
        out.extend([u64::from(s.present), s.tokens, s.last]);
    }

    fn decode_state(s: &[u64]) -> State {
        State {
            present: s[0] != 0,
            tokens: s[1],
            last: s[2],
        }
    }
}
