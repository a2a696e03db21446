//! GCRA, the generic cell rate algorithm: a continuous token bucket kept in one integer, the
//! theoretical arrival time (`tat`). Mirrored by `lua/gcra.lua`.

use super::{RateAlgorithm, Verdict};
use crate::error::Error;
use crate::quota::Rate;
use crate::time::Micros;

/// GCRA parameters of one rate.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// `T = ceil(period / limit)` µs: the time one unit takes to come back.
    pub emission_interval: Micros,
    /// `tau = T * burst` µs: how far ahead of now the TAT may run.
    pub tolerance: Micros,
    /// The most units admitted at once.
    pub burst: u64,
    /// `emission_interval` as a precomputed divisor: exact integer division by a multiply.
    divisor: strength_reduce::StrengthReducedU64,
}

impl Params {
    /// Compiles a rate.
    pub fn new(rate: &Rate) -> Params {
        let t = rate.emission_interval_us();
        Params {
            emission_interval: t,
            tolerance: t * rate.burst(),
            burst: rate.burst(),
            divisor: strength_reduce::StrengthReducedU64::new(t),
        }
    }
}

/// GCRA state: the theoretical arrival time; `0` is fresh.
pub type State = Micros;

/// The GCRA algorithm.
#[derive(Debug)]
pub struct Gcra;

impl RateAlgorithm for Gcra {
    type Params = Params;
    type State = State;

    #[inline(always)]
    fn evaluate(
        p: &Params,
        tat: &State,
        now: Micros,
        cost: u64,
    ) -> Result<(Verdict, State), Error> {
        if cost > p.burst {
            return Err(Error::CostExceedsCapacity {
                cost,
                capacity: p.burst,
            });
        }
        let tat0 = (*tat).max(now);
        let new_tat = tat0 + cost * p.emission_interval;
        let reset_after_uncharged = tat0 - now;
        if new_tat <= now + p.tolerance {
            let verdict = Verdict {
                allowed: true,
                limit: p.burst,
                remaining: (now + p.tolerance - new_tat) / p.divisor,
                retry_after: 0,
                reset_after: new_tat - now,
                reset_after_uncharged,
            };
            Ok((verdict, new_tat))
        } else {
            let verdict = Verdict {
                allowed: false,
                limit: p.burst,
                // Denied means `now + tau - tat0 < cost * T`, so fewer than `cost` units
                // remain: none for the usual cost of 1 (no division on that path).
                remaining: if cost == 1 {
                    0
                } else {
                    (now + p.tolerance).saturating_sub(tat0) / p.divisor
                },
                retry_after: new_tat - p.tolerance - now,
                reset_after: reset_after_uncharged,
                reset_after_uncharged,
            };
            Ok((verdict, *tat))
        }
    }

    fn refund(p: &Params, tat: &State, now: Micros, amount: u64) -> State {
        if *tat > now {
            tat.saturating_sub(amount.saturating_mul(p.emission_interval))
                .max(now)
        } else {
            *tat
        }
    }

    fn horizon(_p: &Params, tat: &State) -> Micros {
        *tat
    }

    fn capacity(p: &Params) -> u64 {
        p.burst
    }

    fn script_params(p: &Params) -> Vec<u64> {
        vec![p.emission_interval, p.tolerance, p.burst]
    }

    const STATE_WIDTH: usize = 1;

    fn encode_state(state: &State, out: &mut Vec<u64>) {
        out.push(*state);
    }

    fn decode_state(s: &[u64]) -> State {
        s[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_per_second_burst_then_deny() {
        let p = Params::new(&Rate::per_second(5).unwrap());
        let mut tat = 0;
        let now = 1_000_000;
        for expected_remaining in (0..5).rev() {
            let (v, next) = Gcra::evaluate(&p, &tat, now, 1).unwrap();
            assert!(v.allowed);
            assert_eq!(v.remaining, expected_remaining);
            tat = next;
        }
        let (v, _) = Gcra::evaluate(&p, &tat, now, 1).unwrap();
        assert!(!v.allowed);
        assert_eq!(v.retry_after, 200_000);
        assert_eq!(v.reset_after, 1_000_000);
    }

    /// A denial's `remaining` skips the division for a cost of 1 (always 0 then) and is the
    /// division's result for every other cost.
    #[test]
    fn denied_remaining_matches_the_division() {
        let p = Params::new(&Rate::per_second(7).unwrap().with_burst(9).unwrap());
        let now = 5_000_000;
        for tat in (now..now + 2 * p.tolerance).step_by(997) {
            for cost in 1..=p.burst {
                let (v, _) = Gcra::evaluate(&p, &tat, now, cost).unwrap();
                if !v.allowed {
                    let expected = (now + p.tolerance).saturating_sub(tat) / p.emission_interval;
                    assert_eq!(v.remaining, expected, "tat {tat} cost {cost}");
                    assert!(v.remaining < cost);
                }
            }
        }
    }
}
