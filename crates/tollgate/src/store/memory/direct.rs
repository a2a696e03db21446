//! A single unkeyed slot, for `DirectLimiter`.

use super::slots::{GcraOne, LogKind, Rates, SlotKind};
use crate::algorithm::{fixed_window, gcra, sliding_window, token_bucket, CompiledPolicy};
use crate::decision::Decision;
use crate::error::Error;
use crate::policy::Policy;
use crate::store::{validate_op, Op};
use crate::time::Micros;
use std::sync::atomic::AtomicU64;

/// One slot kind's parameters and state, behind `dyn` (every kind but the single-rate GCRA
/// takes a mutex per operation, so the indirect call is not what it costs).
struct Held<K: SlotKind> {
    params: K::Params,
    slot: K::Slot,
}

trait Apply: Send + Sync {
    fn apply(&self, now: Micros, op: Op) -> Result<Option<Decision>, Error>;
}

impl<K: SlotKind> Apply for Held<K> {
    fn apply(&self, now: Micros, op: Op) -> Result<Option<Decision>, Error> {
        K::apply(&self.params, &self.slot, now, op)
    }
}

fn held<K: SlotKind>(params: K::Params) -> DirectEngine {
    let slot = K::fresh(&params);
    DirectEngine::Other(Box::new(Held::<K> { params, slot }))
}

enum DirectEngine {
    /// Single-rate GCRA, the fast path: one atomic TAT.
    GcraOne(gcra::Params, AtomicU64),
    /// Every other algorithm or several rates.
    Other(Box<dyn Apply>),
}

/// One unkeyed state: what [`crate::DirectLimiter`] runs on.
pub(crate) struct DirectSlot(DirectEngine);

impl DirectSlot {
    pub(crate) fn new(policy: &Policy) -> Self {
        Self(match CompiledPolicy::new(policy) {
            CompiledPolicy::Gcra(p) if p.len() == 1 => {
                DirectEngine::GcraOne(p[0], GcraOne::fresh(&p[0]))
            }
            CompiledPolicy::Gcra(p) => held::<Rates<gcra::Gcra>>(p),
            CompiledPolicy::TokenBucket(p) => held::<Rates<token_bucket::TokenBucket>>(p),
            CompiledPolicy::FixedWindow(p) => held::<Rates<fixed_window::FixedWindow>>(p),
            CompiledPolicy::SlidingWindow(p) => held::<Rates<sliding_window::SlidingWindow>>(p),
            CompiledPolicy::SlidingLog(p) => held::<LogKind>(p),
        })
    }

    /// Runs `op` at `now`.
    #[inline(always)]
    pub(crate) fn execute(&self, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        validate_op(op)?;
        match &self.0 {
            DirectEngine::GcraOne(p, s) => GcraOne::apply(p, s, now, op),
            DirectEngine::Other(engine) => engine.apply(now, op),
        }
    }

    /// Decides `cost` at `now`, charging it when admitted and `charge` is set: `Check` and
    /// `Peek` without the `Option` (they always decide), and without the `Op` dispatch on
    /// the single-rate GCRA.
    #[inline(always)]
    pub(crate) fn decide(&self, cost: u64, charge: bool, now: Micros) -> Result<Decision, Error> {
        match &self.0 {
            DirectEngine::GcraOne(p, s) => GcraOne::decide(p, s, now, cost, charge),
            DirectEngine::Other(engine) => {
                let op = if charge {
                    Op::Check(cost)
                } else {
                    Op::Peek(cost)
                };
                validate_op(op)?;
                engine
                    .apply(now, op)
                    .and_then(crate::limiter::expect_decision)
            }
        }
    }
}
