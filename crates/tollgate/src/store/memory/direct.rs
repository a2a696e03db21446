//! A single unkeyed slot, for `DirectLimiter`.

use super::slots::{GcraOne, LogKind, Rates, SlotKind};
use crate::algorithm::{
    fixed_window, gcra, sliding_log, sliding_window, token_bucket, CompiledPolicy,
};
use crate::decision::Decision;
use crate::error::Error;
use crate::policy::Policy;
use crate::store::{validate_op, Op};
use crate::time::Micros;
use parking_lot::Mutex;
use std::sync::atomic::AtomicU64;

enum DirectEngine {
    GcraOne(gcra::Params, AtomicU64),
    Gcra(Box<[gcra::Params]>, Mutex<Box<[u64]>>),
    TokenBucket(
        Box<[token_bucket::Params]>,
        Mutex<Box<[token_bucket::State]>>,
    ),
    FixedWindow(
        Box<[fixed_window::Params]>,
        Mutex<Box<[fixed_window::State]>>,
    ),
    SlidingWindow(
        Box<[sliding_window::Params]>,
        Mutex<Box<[sliding_window::State]>>,
    ),
    SlidingLog(sliding_log::Params, Mutex<sliding_log::Log>),
}

/// One unkeyed state: what [`crate::DirectLimiter`] runs on.
pub(crate) struct DirectSlot(DirectEngine);

impl DirectSlot {
    pub(crate) fn new(policy: &Policy) -> Self {
        fn pair<K: SlotKind>(p: K::Params) -> (K::Params, K::Slot) {
            let slot = K::fresh(&p);
            (p, slot)
        }
        Self(match CompiledPolicy::new(policy) {
            CompiledPolicy::Gcra(p) if p.len() == 1 => {
                let p = p[0];
                let (p, s) = pair::<GcraOne>(p);
                DirectEngine::GcraOne(p, s)
            }
            CompiledPolicy::Gcra(p) => {
                let (p, s) = pair::<Rates<gcra::Gcra>>(p);
                DirectEngine::Gcra(p, s)
            }
            CompiledPolicy::TokenBucket(p) => {
                let (p, s) = pair::<Rates<token_bucket::TokenBucket>>(p);
                DirectEngine::TokenBucket(p, s)
            }
            CompiledPolicy::FixedWindow(p) => {
                let (p, s) = pair::<Rates<fixed_window::FixedWindow>>(p);
                DirectEngine::FixedWindow(p, s)
            }
            CompiledPolicy::SlidingWindow(p) => {
                let (p, s) = pair::<Rates<sliding_window::SlidingWindow>>(p);
                DirectEngine::SlidingWindow(p, s)
            }
            CompiledPolicy::SlidingLog(p) => {
                let (p, s) = pair::<LogKind>(p);
                DirectEngine::SlidingLog(p, s)
            }
        })
    }

    #[inline(always)]
    pub(crate) fn execute(&self, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        validate_op(op)?;
        match &self.0 {
            DirectEngine::GcraOne(p, s) => GcraOne::apply(p, s, now, op),
            DirectEngine::Gcra(p, s) => Rates::<gcra::Gcra>::apply(p, s, now, op),
            DirectEngine::TokenBucket(p, s) => {
                Rates::<token_bucket::TokenBucket>::apply(p, s, now, op)
            }
            DirectEngine::FixedWindow(p, s) => {
                Rates::<fixed_window::FixedWindow>::apply(p, s, now, op)
            }
            DirectEngine::SlidingWindow(p, s) => {
                Rates::<sliding_window::SlidingWindow>::apply(p, s, now, op)
            }
            DirectEngine::SlidingLog(p, s) => LogKind::apply(p, s, now, op),
        }
    }
}
