//! The compiled policy shared by both stores: per-algorithm parameters, the capacity check
//! that precedes every decision, and (for SQLite) the state codec and the pure algorithms.

use tollgate::algorithm::{
    self, fixed_window, gcra, sliding_log, sliding_window, token_bucket, CompiledPolicy,
    RateAlgorithm,
};
use tollgate::store::Op;
use tollgate::time::Micros;
use tollgate::{Decision, Error, Policy};

/// A policy compiled for one algorithm.
#[derive(Clone, Debug)]
pub(crate) enum Engine {
    Gcra(Vec<gcra::Params>),
    TokenBucket(Vec<token_bucket::Params>),
    FixedWindow(Vec<fixed_window::Params>),
    SlidingWindow(Vec<sliding_window::Params>),
    SlidingLog(sliding_log::Params),
}

impl Engine {
    pub(crate) fn new(policy: &Policy) -> Result<Engine, Error> {
        Ok(match CompiledPolicy::new(policy) {
            CompiledPolicy::Gcra(p) => Engine::Gcra(p.into_vec()),
            CompiledPolicy::TokenBucket(p) => Engine::TokenBucket(p.into_vec()),
            CompiledPolicy::FixedWindow(p) => Engine::FixedWindow(p.into_vec()),
            CompiledPolicy::SlidingWindow(p) => Engine::SlidingWindow(p.into_vec()),
            CompiledPolicy::SlidingLog(p) => Engine::SlidingLog(p),
            _ => {
                return Err(Error::Store(tollgate::StoreError::new(
                    "sql",
                    format!(
                        "the SQL stores do not support the {} algorithm yet",
                        policy.algorithm()
                    ),
                )))
            }
        })
    }

    /// Each rate's capacity, in policy order.
    pub(crate) fn capacities(&self) -> Vec<u64> {
        match self {
            Engine::Gcra(p) => p.iter().map(|p| p.burst).collect(),
            Engine::TokenBucket(p) => p.iter().map(|p| p.capacity).collect(),
            Engine::FixedWindow(p) => p.iter().map(|p| p.limit).collect(),
            Engine::SlidingWindow(p) => p.iter().map(|p| p.limit).collect(),
            Engine::SlidingLog(p) => p.rates.iter().map(|r| r.limit).collect(),
        }
    }

    /// Validates an operation before it reaches the database: cost 0 is invalid, and a cost
    /// above a rate's capacity (the first such rate, in policy order, as the pure algorithms
    /// report it) can never be admitted.
    pub(crate) fn validate(&self, op: Op) -> Result<(), Error> {
        match op {
            Op::Check(0) | Op::Peek(0) | Op::Refund(0) => Err(Error::InvalidCost),
            Op::Check(cost) | Op::Peek(cost) => {
                match self.capacities().into_iter().find(|&c| cost > c) {
                    Some(capacity) => Err(Error::CostExceedsCapacity { cost, capacity }),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Runs `op` on the decoded `state` at `now` with the pure algorithms. Returns the decision
    /// and the state to persist (`None`: leave the stored state as it is).
    pub(crate) fn apply(
        &self,
        state: Option<&[u64]>,
        now: Micros,
        op: Op,
    ) -> Result<(Option<Decision>, Option<Vec<u64>>), Error> {
        fn rates<A: RateAlgorithm>(
            params: &[A::Params],
            state: Option<&[u64]>,
            now: Micros,
            op: Op,
            decode: impl Fn(&[u64]) -> A::State,
            encode: impl Fn(&A::State, &mut Vec<u64>),
            width: usize,
        ) -> Result<(Option<Decision>, Option<Vec<u64>>), Error> {
            let mut states: Vec<A::State> = match state {
                Some(s) if s.len() == width * params.len() => {
                    s.chunks_exact(width).map(&decode).collect()
                }
                _ => vec![A::State::default(); params.len()],
            };
            let before = states.clone();
            let decision = match op {
                Op::Check(cost) => Some(algorithm::decide_rates::<A>(
                    params,
                    &mut states,
                    now,
                    cost,
                    true,
                )?),
                Op::Peek(cost) => Some(algorithm::decide_rates::<A>(
                    params,
                    &mut states,
                    now,
                    cost,
                    false,
                )?),
                Op::Refund(amount) => {
                    if state.is_none() {
                        return Ok((None, None));
                    }
                    algorithm::refund_rates::<A>(params, &mut states, now, amount);
                    None
                }
                _ => return Ok((None, None)),
            };
            if states == before {
                return Ok((decision, None));
            }
            let mut out = Vec::with_capacity(width * params.len());
            for s in &states {
                encode(s, &mut out);
            }
            Ok((decision, Some(out)))
        }
        match self {
            Engine::Gcra(p) => {
                rates::<gcra::Gcra>(p, state, now, op, |s| s[0], |s, out| out.push(*s), 1)
            }
            Engine::TokenBucket(p) => rates::<token_bucket::TokenBucket>(
                p,
                state,
                now,
                op,
                |s| token_bucket::State {
                    present: s[0] != 0,
                    tokens: s[1],
                    last: s[2],
                },
                |s, out| out.extend([u64::from(s.present), s.tokens, s.last]),
                3,
            ),
            Engine::FixedWindow(p) => rates::<fixed_window::FixedWindow>(
                p,
                state,
                now,
                op,
                |s| fixed_window::State {
                    window_start: s[0],
                    count: s[1],
                },
                |s, out| out.extend([s.window_start, s.count]),
                2,
            ),
            Engine::SlidingWindow(p) => rates::<sliding_window::SlidingWindow>(
                p,
                state,
                now,
                op,
                |s| sliding_window::State {
                    window_start: s[0],
                    prev: s[1],
                    curr: s[2],
                },
                |s, out| out.extend([s.window_start, s.prev, s.curr]),
                3,
            ),
            Engine::SlidingLog(p) => {
                let mut log = sliding_log::Log::default();
                if let Some(s) = state.filter(|s| s.len() % 2 == 0) {
                    log.entries = s.chunks_exact(2).map(|e| (e[0], e[1])).collect();
                }
                let before = log.clone();
                let decision = match op {
                    Op::Check(cost) => Some(sliding_log::decide(p, &mut log, now, cost, true)?),
                    Op::Peek(cost) => Some(sliding_log::decide(p, &mut log, now, cost, false)?),
                    Op::Refund(amount) => {
                        if state.is_none() {
                            return Ok((None, None));
                        }
                        sliding_log::refund(p, &mut log, now, amount);
                        None
                    }
                    _ => return Ok((None, None)),
                };
                if log == before {
                    return Ok((decision, None));
                }
                let out = log.entries.iter().flat_map(|&(t, w)| [t, w]).collect();
                Ok((decision, Some(out)))
            }
        }
    }

    /// Decides `cost` on the decoded `state` at `now` without writing anything: the step of a
    /// multi-key check that precedes the all-or-nothing write (`decide_rates` split in two).
    pub(crate) fn evaluate(
        &self,
        state: Option<&[u64]>,
        now: Micros,
        cost: u64,
    ) -> Result<Evaluation, Error> {
        fn rates<A: RateAlgorithm>(
            params: &[A::Params],
            state: Option<&[u64]>,
            now: Micros,
            cost: u64,
            decode: impl Fn(&[u64]) -> A::State,
            encode: impl Fn(&A::State, &mut Vec<u64>),
            width: usize,
        ) -> Result<Evaluation, Error> {
            let states: Vec<A::State> = match state {
                Some(s) if s.len() == width * params.len() => {
                    s.chunks_exact(width).map(&decode).collect()
                }
                _ => vec![A::State::default(); params.len()],
            };
            let mut verdicts = Vec::with_capacity(params.len());
            let mut charged = Vec::with_capacity(params.len());
            for (p, s) in params.iter().zip(&states) {
                let (verdict, next) = A::evaluate(p, s, now, cost)?;
                verdicts.push(verdict);
                charged.push(next);
            }
            let settled: Vec<A::State> = params
                .iter()
                .zip(&states)
                .map(|(p, s)| A::settle(p, s, now))
                .collect();
            let decision = algorithm::combine(&verdicts);
            let changed = |next: &[A::State]| {
                (next != states.as_slice()).then(|| {
                    let mut out = Vec::with_capacity(width * params.len());
                    for s in next {
                        encode(s, &mut out);
                    }
                    out
                })
            };
            Ok(Evaluation {
                decision,
                charged: changed(&charged),
                settled: changed(&settled),
            })
        }
        match self {
            Engine::Gcra(p) => {
                rates::<gcra::Gcra>(p, state, now, cost, |s| s[0], |s, out| out.push(*s), 1)
            }
            Engine::TokenBucket(p) => rates::<token_bucket::TokenBucket>(
                p,
                state,
                now,
                cost,
                decode_token_bucket,
                |s, out| out.extend([u64::from(s.present), s.tokens, s.last]),
                3,
            ),
            Engine::FixedWindow(p) => rates::<fixed_window::FixedWindow>(
                p,
                state,
                now,
                cost,
                decode_fixed_window,
                |s, out| out.extend([s.window_start, s.count]),
                2,
            ),
            Engine::SlidingWindow(p) => rates::<sliding_window::SlidingWindow>(
                p,
                state,
                now,
                cost,
                decode_sliding_window,
                |s, out| out.extend([s.window_start, s.prev, s.curr]),
                3,
            ),
            Engine::SlidingLog(p) => {
                let mut log = sliding_log::Log::default();
                if let Some(s) = state.filter(|s| s.len() % 2 == 0) {
                    log.entries = s.chunks_exact(2).map(|e| (e[0], e[1])).collect();
                }
                let before = log.clone();
                // The sliding log decides every rate together (one shared log): charge a
                // copy, which is the state to write if the whole call is admitted.
                let decision = sliding_log::decide(p, &mut log, now, cost, true)?;
                Ok(Evaluation {
                    decision,
                    charged: (log != before)
                        .then(|| log.entries.iter().flat_map(|&(t, w)| [t, w]).collect()),
                    // an uncharged check leaves the log as it is
                    settled: None,
                })
            }
        }
    }

    /// The time from which the encoded `state` is equivalent to fresh.
    pub(crate) fn horizon(&self, state: &[u64]) -> Micros {
        match self {
            Engine::Gcra(_) => state.iter().copied().max().unwrap_or(0),
            Engine::TokenBucket(p) => p
                .iter()
                .zip(state.chunks_exact(3))
                .map(|(p, s)| {
                    token_bucket::TokenBucket::horizon(
                        p,
                        &token_bucket::State {
                            present: s[0] != 0,
                            tokens: s[1],
                            last: s[2],
                        },
                    )
                })
                .max()
                .unwrap_or(0),
            Engine::FixedWindow(p) => p
                .iter()
                .zip(state.chunks_exact(2))
                .map(|(p, s)| {
                    fixed_window::FixedWindow::horizon(
                        p,
                        &fixed_window::State {
                            window_start: s[0],
                            count: s[1],
                        },
                    )
                })
                .max()
                .unwrap_or(0),
            Engine::SlidingWindow(p) => p
                .iter()
                .zip(state.chunks_exact(3))
                .map(|(p, s)| {
                    sliding_window::SlidingWindow::horizon(
                        p,
                        &sliding_window::State {
                            window_start: s[0],
                            prev: s[1],
                            curr: s[2],
                        },
                    )
                })
                .max()
                .unwrap_or(0),
            Engine::SlidingLog(p) => {
                let newest = state.chunks_exact(2).last().map(|e| e[0]);
                newest.map_or(0, |n| n + p.max_window)
            }
        }
    }
}

/// One key decided without writing ([`Engine::evaluate`]).
pub(crate) struct Evaluation {
    /// What this key alone would decide.
    pub(crate) decision: Decision,
    /// The state to write when the whole call is admitted (`None`: unchanged).
    pub(crate) charged: Option<Vec<u64>>,
    /// The state to write when the call is not charged (`None`: unchanged).
    pub(crate) settled: Option<Vec<u64>>,
}

fn decode_token_bucket(s: &[u64]) -> token_bucket::State {
    token_bucket::State {
        present: s[0] != 0,
        tokens: s[1],
        last: s[2],
    }
}

fn decode_fixed_window(s: &[u64]) -> fixed_window::State {
    fixed_window::State {
        window_start: s[0],
        count: s[1],
    }
}

fn decode_sliding_window(s: &[u64]) -> sliding_window::State {
    sliding_window::State {
        window_start: s[0],
        prev: s[1],
        curr: s[2],
    }
}

/// Encodes a state as little-endian `u64`s (the SQLite blob).
pub(crate) fn encode_blob(state: &[u64]) -> Vec<u8> {
    state.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Decodes a blob written by [`encode_blob`]; `None` for a malformed blob (treated as fresh).
pub(crate) fn decode_blob(blob: &[u8]) -> Option<Vec<u64>> {
    if blob.len() % 8 != 0 {
        return None;
    }
    Some(
        blob.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trip() {
        let s = vec![0, 1, u64::MAX, 1 << 52];
        assert_eq!(decode_blob(&encode_blob(&s)).unwrap(), s);
        assert_eq!(decode_blob(&[1, 2, 3]), None);
    }
}
