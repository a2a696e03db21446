//! Slot kinds: how one key's state is held and how an operation applies to it.

use crate::algorithm::{self, gcra, sliding_log, RateAlgorithm};
use crate::decision::Decision;
use crate::error::Error;
use crate::store::Op;
use crate::time::Micros;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How one key's state is stored and how an operation applies to it.
pub(crate) trait SlotKind: Send + Sync + 'static {
    type Params: Send + Sync;
    type Slot: Send + Sync;
    fn fresh(p: &Self::Params) -> Self::Slot;
    fn apply(
        p: &Self::Params,
        slot: &Self::Slot,
        now: Micros,
        op: Op,
    ) -> Result<Option<Decision>, Error>;
    fn horizon(p: &Self::Params, slot: &Self::Slot) -> Micros;
    /// True when the slot holds the fresh state (nothing worth storing).
    fn is_fresh(p: &Self::Params, slot: &Self::Slot) -> bool;
    /// What a check that is not charged persists (a multi-key call denied by another key):
    /// the token bucket keeps its refill progress, as a single-key denial does; nothing
    /// for the others.
    fn settle(_p: &Self::Params, _slot: &Self::Slot, _now: Micros) {}
}

/// Single-rate GCRA: one atomic TAT, updated by compare-and-swap.
pub(crate) struct GcraOne;

impl SlotKind for GcraOne {
    type Params = gcra::Params;
    type Slot = AtomicU64;

    fn fresh(_p: &gcra::Params) -> AtomicU64 {
        AtomicU64::new(0)
    }

    #[inline(always)]
    fn apply(
        p: &gcra::Params,
        slot: &AtomicU64,
        now: Micros,
        op: Op,
    ) -> Result<Option<Decision>, Error> {
        match op {
            Op::Check(cost) => GcraOne::decide(p, slot, now, cost, true).map(Some),
            Op::Peek(cost) => GcraOne::decide(p, slot, now, cost, false).map(Some),
            Op::Refund(amount) => {
                let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                    Some(gcra::Gcra::refund(p, &tat, now, amount))
                });
                Ok(None)
            }
            Op::Reset => {
                slot.store(0, Ordering::Release);
                Ok(None)
            }
        }
    }

    fn horizon(_p: &gcra::Params, slot: &AtomicU64) -> Micros {
        slot.load(Ordering::Acquire)
    }

    fn is_fresh(_p: &gcra::Params, slot: &AtomicU64) -> bool {
        slot.load(Ordering::Acquire) == 0
    }
}

impl GcraOne {
    /// Decides `cost` (charging it when admitted and `charge` is set): the single-rate GCRA
    /// decision without the `Op`/`Option` wrapping, for the unkeyed limiter's fast path.
    /// A cost of 0 is [`Error::InvalidCost`], as for every operation.
    #[inline(always)]
    pub(crate) fn decide(
        p: &gcra::Params,
        slot: &AtomicU64,
        now: Micros,
        cost: u64,
        charge: bool,
    ) -> Result<Decision, Error> {
        if cost == 0 {
            return Err(Error::InvalidCost);
        }
        let mut tat = slot.load(Ordering::Acquire);
        loop {
            let (v, next) = gcra::Gcra::evaluate(p, &tat, now, cost)?;
            let decision = Decision::from_parts(
                v.allowed,
                v.limit,
                v.remaining,
                v.retry_after,
                v.reset_after,
                (!v.allowed).then_some(0),
            );
            if !v.allowed || !charge {
                return Ok(decision);
            }
            match slot.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(decision),
                Err(actual) => tat = actual,
            }
        }
    }
}

/// One operation on a state held under its key's mutex: the arms every locked kind shares.
#[inline(always)]
fn apply_locked<S: ?Sized>(
    state: &mut S,
    op: Op,
    decide: impl FnOnce(&mut S, u64, bool) -> Result<Decision, Error>,
    refund: impl FnOnce(&mut S, u64),
    reset: impl FnOnce(&mut S),
) -> Result<Option<Decision>, Error> {
    match op {
        Op::Check(cost) => decide(state, cost, true).map(Some),
        Op::Peek(cost) => decide(state, cost, false).map(Some),
        Op::Refund(amount) => {
            refund(state, amount);
            Ok(None)
        }
        Op::Reset => {
            reset(state);
            Ok(None)
        }
    }
}

/// Any per-rate algorithm over several rates, under a per-key mutex.
pub(crate) struct Rates<A>(std::marker::PhantomData<A>);

impl<A> SlotKind for Rates<A>
where
    A: RateAlgorithm + Send + Sync + 'static,
    A::Params: Send + Sync,
    A::State: Send + Sync,
{
    type Params = Box<[A::Params]>;
    type Slot = Mutex<Box<[A::State]>>;

    fn fresh(p: &Self::Params) -> Self::Slot {
        Mutex::new(vec![A::State::default(); p.len()].into_boxed_slice())
    }

    fn apply(
        p: &Self::Params,
        slot: &Self::Slot,
        now: Micros,
        op: Op,
    ) -> Result<Option<Decision>, Error> {
        apply_locked(
            &mut slot.lock()[..],
            op,
            |states, cost, charge| algorithm::decide_rates::<A>(p, states, now, cost, charge),
            |states, amount| algorithm::refund_rates::<A>(p, states, now, amount),
            |states| states.fill(A::State::default()),
        )
    }

    fn horizon(p: &Self::Params, slot: &Self::Slot) -> Micros {
        algorithm::horizon_rates::<A>(p, &slot.lock())
    }

    fn is_fresh(_p: &Self::Params, slot: &Self::Slot) -> bool {
        slot.lock().iter().all(|s| *s == A::State::default())
    }

    fn settle(p: &Self::Params, slot: &Self::Slot, now: Micros) {
        for (p, s) in p.iter().zip(slot.lock().iter_mut()) {
            *s = A::settle(p, s, now);
        }
    }
}

/// The sliding log, under a per-key mutex.
pub(crate) struct LogKind;

impl SlotKind for LogKind {
    type Params = sliding_log::Params;
    type Slot = Mutex<sliding_log::Log>;

    fn fresh(_p: &Self::Params) -> Self::Slot {
        Mutex::new(sliding_log::Log::default())
    }

    fn apply(
        p: &Self::Params,
        slot: &Self::Slot,
        now: Micros,
        op: Op,
    ) -> Result<Option<Decision>, Error> {
        apply_locked(
            &mut *slot.lock(),
            op,
            |log, cost, charge| sliding_log::decide(p, log, now, cost, charge),
            |log, amount| sliding_log::refund(p, log, now, amount),
            |log| log.entries.clear(),
        )
    }

    fn horizon(p: &Self::Params, slot: &Self::Slot) -> Micros {
        sliding_log::horizon(p, &slot.lock())
    }

    fn is_fresh(_p: &Self::Params, slot: &Self::Slot) -> bool {
        slot.lock().entries.is_empty()
    }
}
