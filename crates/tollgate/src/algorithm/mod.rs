//! The pure algorithms: integer state transitions with no I/O, one per file.
//!
//! Each algorithm's exact formulas are in `docs/semantics.md`; the Lua scripts and SQL
//! statements of the distributed stores mirror these functions line for line.
//!
//! A per-rate algorithm implements [`RateAlgorithm`]: `evaluate` looks at one rate's state
//! without changing it and returns a [`Verdict`] plus the state to persist if the call is
//! charged. [`decide_rates`] combines several rates all-or-nothing.

pub mod fixed_window;
pub mod gcra;
pub mod sliding_log;
pub mod sliding_window;
pub mod token_bucket;

use crate::decision::Decision;
use crate::error::Error;
use crate::policy::{Algorithm, Policy};
use crate::time::Micros;

/// A policy compiled into its algorithm's per-rate parameters: what every store that runs the
/// pure functions (memory, SQLite) starts from.
///
/// ```
/// use tollgate::{Policy, Rate, algorithm::CompiledPolicy};
/// let p = Policy::gcra(Rate::per_second(4).unwrap()).unwrap();
/// match CompiledPolicy::new(&p) {
///     CompiledPolicy::Gcra(rates) => assert_eq!(rates[0].emission_interval, 250_000),
///     _ => unreachable!(),
/// }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum CompiledPolicy {
    /// GCRA, one entry per rate.
    Gcra(Box<[gcra::Params]>),
    /// Token bucket, one entry per rate.
    TokenBucket(Box<[token_bucket::Params]>),
    /// Fixed window, one entry per rate.
    FixedWindow(Box<[fixed_window::Params]>),
    /// Sliding-window counter, one entry per rate.
    SlidingWindow(Box<[sliding_window::Params]>),
    /// Sliding log: every rate over one shared log.
    SlidingLog(sliding_log::Params),
}

impl CompiledPolicy {
    /// Compiles `policy`.
    pub fn new(policy: &Policy) -> CompiledPolicy {
        let rates = policy.rates();
        match policy.algorithm() {
            Algorithm::Gcra => CompiledPolicy::Gcra(rates.iter().map(gcra::Params::new).collect()),
            Algorithm::TokenBucket => CompiledPolicy::TokenBucket(
                rates
                    .iter()
                    .enumerate()
                    .map(|(i, r)| token_bucket::Params {
                        capacity: r.burst(),
                        refill_amount: r.limit(),
                        refill_interval: r.period_us(),
                        initial_tokens: policy.initial_tokens(i),
                    })
                    .collect(),
            ),
            Algorithm::FixedWindow => {
                CompiledPolicy::FixedWindow(rates.iter().map(fixed_window::Params::new).collect())
            }
            Algorithm::SlidingWindow => CompiledPolicy::SlidingWindow(
                rates.iter().map(sliding_window::Params::new).collect(),
            ),
            Algorithm::SlidingLog => CompiledPolicy::SlidingLog(sliding_log::Params::new(rates)),
        }
    }

    /// Each rate's capacity (the largest cost it can ever admit), in policy order.
    ///
    /// ```
    /// use tollgate::{Algorithm, Policy, algorithm::CompiledPolicy};
    /// let p = Policy::parse(Algorithm::Gcra, "5/s burst 8; 100/min").unwrap();
    /// assert_eq!(CompiledPolicy::new(&p).capacities(), vec![8, 100]);
    /// ```
    pub fn capacities(&self) -> Vec<u64> {
        fn each<A: RateAlgorithm>(p: &[A::Params]) -> Vec<u64> {
            p.iter().map(A::capacity).collect()
        }
        match self {
            CompiledPolicy::Gcra(p) => each::<gcra::Gcra>(p),
            CompiledPolicy::TokenBucket(p) => each::<token_bucket::TokenBucket>(p),
            CompiledPolicy::FixedWindow(p) => each::<fixed_window::FixedWindow>(p),
            CompiledPolicy::SlidingWindow(p) => each::<sliding_window::SlidingWindow>(p),
            CompiledPolicy::SlidingLog(p) => p.rates.iter().map(|r| r.limit).collect(),
        }
    }

    /// Every rate's parameters as the distributed stores take them (see
    /// [`RateAlgorithm::script_params`]), in policy order.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, algorithm::CompiledPolicy};
    /// let p = Policy::gcra(Rate::per_second(4).unwrap()).unwrap();
    /// // emission interval, tolerance, burst
    /// assert_eq!(CompiledPolicy::new(&p).script_params(), vec![vec![250_000, 1_000_000, 4]]);
    /// ```
    pub fn script_params(&self) -> Vec<Vec<u64>> {
        fn each<A: RateAlgorithm>(p: &[A::Params]) -> Vec<Vec<u64>> {
            p.iter().map(A::script_params).collect()
        }
        match self {
            CompiledPolicy::Gcra(p) => each::<gcra::Gcra>(p),
            CompiledPolicy::TokenBucket(p) => each::<token_bucket::TokenBucket>(p),
            CompiledPolicy::FixedWindow(p) => each::<fixed_window::FixedWindow>(p),
            CompiledPolicy::SlidingWindow(p) => each::<sliding_window::SlidingWindow>(p),
            CompiledPolicy::SlidingLog(p) => {
                p.rates.iter().map(|r| vec![r.limit, r.window]).collect()
            }
        }
    }
}

/// One rate's verdict, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// This rate admits the cost.
    pub allowed: bool,
    /// This rate's capacity.
    pub limit: u64,
    /// Remaining after charging (allowed) or now (denied).
    pub remaining: u64,
    /// 0 when allowed.
    pub retry_after: Micros,
    /// Until fresh, after charging (allowed) or now (denied).
    pub reset_after: Micros,
    /// Until fresh without this call's charge.
    pub reset_after_uncharged: Micros,
}

/// A per-rate algorithm over a small `Copy` state whose `Default` is the fresh state.
pub trait RateAlgorithm {
    /// Per-rate parameters, compiled from a [`crate::Rate`].
    type Params;
    /// Per-rate state; `Default` is fresh.
    type State: Copy + Default + PartialEq + std::fmt::Debug;

    /// Evaluates `cost` at `now` without changing `state`: the verdict and the state to
    /// persist if the call is charged. `Err` when the cost can never fit.
    fn evaluate(
        p: &Self::Params,
        state: &Self::State,
        now: Micros,
        cost: u64,
    ) -> Result<(Verdict, Self::State), Error>;

    /// The state a `check` persists when the call is *not* charged (denied, or denied by
    /// another rate): normally the state itself; the token bucket persists its refill (which
    /// creates a new bucket and starts its refill clock — nothing is charged).
    fn settle(_p: &Self::Params, state: &Self::State, _now: Micros) -> Self::State {
        *state
    }

    /// The state after giving back `amount` units at `now` (never beyond fresh).
    fn refund(p: &Self::Params, state: &Self::State, now: Micros, amount: u64) -> Self::State;

    /// From this time on, `state` is equivalent to fresh and may be dropped.
    fn horizon(p: &Self::Params, state: &Self::State) -> Micros;

    /// The capacity one call can never exceed under this rate.
    fn capacity(p: &Self::Params) -> u64;

    /// The rate's parameters as the distributed stores take them, in order: the Lua script's
    /// ARGV after the rate count, and the PL/pgSQL function's parameter arrays (`p_a`, `p_b`,
    /// …, one value per array). The one place this layout is defined.
    fn script_params(p: &Self::Params) -> Vec<u64>;

    /// How many integers one rate's state takes where a store persists it as numbers (the
    /// SQL stores' arrays and blobs; the Lua scripts' comma lists use the same order).
    const STATE_WIDTH: usize;

    /// Appends `state` as [`STATE_WIDTH`](Self::STATE_WIDTH) integers.
    fn encode_state(state: &Self::State, out: &mut Vec<u64>);

    /// The state written by [`encode_state`](Self::encode_state); `s` holds exactly
    /// [`STATE_WIDTH`](Self::STATE_WIDTH) integers.
    fn decode_state(s: &[u64]) -> Self::State;
}

/// Combines per-rate verdicts all-or-nothing (see "Several rates on one key" in
/// `docs/semantics.md`).
pub fn combine(verdicts: &[Verdict]) -> Decision {
    let allowed = verdicts.iter().all(|v| v.allowed);
    if allowed {
        let mut binding = 0;
        for (i, v) in verdicts.iter().enumerate() {
            if v.remaining < verdicts[binding].remaining {
                binding = i;
            }
        }
        let reset = verdicts.iter().map(|v| v.reset_after).max().unwrap_or(0);
        let b = &verdicts[binding];
        Decision::from_parts(true, b.limit, b.remaining, 0, reset, None)
    } else {
        let mut denier: Option<usize> = None;
        for (i, v) in verdicts.iter().enumerate() {
            if !v.allowed && denier.is_none_or(|d| v.retry_after > verdicts[d].retry_after) {
                denier = Some(i);
            }
        }
        let d = denier.unwrap_or(0);
        let reset = verdicts
            .iter()
            .map(|v| {
                if v.allowed {
                    v.reset_after_uncharged
                } else {
                    v.reset_after
                }
            })
            .max()
            .unwrap_or(0);
        let v = &verdicts[d];
        Decision::from_parts(false, v.limit, v.remaining, v.retry_after, reset, Some(d))
    }
}

/// Decides `cost` on several rates of algorithm `A`, all-or-nothing. When `charge` is true
/// and every rate admits, `states` is updated; otherwise it is left untouched.
pub fn decide_rates<A: RateAlgorithm>(
    params: &[A::Params],
    states: &mut [A::State],
    now: Micros,
    cost: u64,
    charge: bool,
) -> Result<Decision, Error> {
    debug_assert_eq!(params.len(), states.len());
    let mut verdicts = [EMPTY; crate::policy::MAX_RATES];
    let mut next = [A::State::default(); crate::policy::MAX_RATES];
    for (i, (p, s)) in params.iter().zip(states.iter()).enumerate() {
        let (v, n) = A::evaluate(p, s, now, cost)?;
        verdicts[i] = v;
        next[i] = n;
    }
    let decision = combine(&verdicts[..params.len()]);
    if charge {
        if decision.allowed {
            states.copy_from_slice(&next[..params.len()]);
        } else {
            for (p, s) in params.iter().zip(states.iter_mut()) {
                *s = A::settle(p, s, now);
            }
        }
    }
    Ok(decision)
}

/// Refunds `amount` on every rate.
pub fn refund_rates<A: RateAlgorithm>(
    params: &[A::Params],
    states: &mut [A::State],
    now: Micros,
    amount: u64,
) {
    for (p, s) in params.iter().zip(states.iter_mut()) {
        *s = A::refund(p, s, now, amount);
    }
}

/// The time from which every rate's state is fresh.
pub fn horizon_rates<A: RateAlgorithm>(params: &[A::Params], states: &[A::State]) -> Micros {
    params
        .iter()
        .zip(states)
        .map(|(p, s)| A::horizon(p, s))
        .max()
        .unwrap_or(0)
}

const EMPTY: Verdict = Verdict {
    allowed: true,
    limit: 0,
    remaining: 0,
    retry_after: 0,
    reset_after: 0,
    reset_after_uncharged: 0,
};
