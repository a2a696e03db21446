//! One leased key: its batch, its demand and the single-flight reserve flag.

use crate::decision::Decision;
use crate::time::{micros, Micros};
use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

/// What a call does next, decided under the key's lock.
#[derive(Debug)]
pub(super) enum Plan {
    /// Admitted from the batch.
    Local(Decision),
    /// Another caller is reserving: wait for it, then plan again.
    Wait,
    /// Reserve a batch of this many units (this caller is now the reserver).
    Reserve(u64),
    /// Ask the store for exactly this call, as without leases.
    Pass,
}

/// Limits a plan is made with.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) max_batch: u64,
    pub(super) min_batch: u64,
    pub(super) duration: Micros,
}

/// The state of one key.
#[derive(Debug, Default)]
pub(super) struct KeyState {
    /// Units charged in the store and not used yet.
    pub(super) units: u64,
    /// When the batch's lease ends (its unused units are then given back).
    pub(super) expires: Micros,
    /// A caller is reserving a batch.
    pub(super) reserving: bool,
    /// No batch is tried before this instant (a batch was denied).
    no_batch_until: Micros,
    /// The reserve's decision: the limit, the store's remaining and reset after the charge.
    limit: u64,
    base_remaining: u64,
    base_reset: Micros,
    base_at: Micros,
    /// Demand: units asked for in the current window (from `win_start`) and the previous one.
    win_start: Micros,
    cur: u64,
    prev: u64,
    /// The last call.
    pub(super) last_used: Micros,
}

impl KeyState {
    /// Counts `cost` units of demand at `now`.
    pub(super) fn record(&mut self, cost: u64, now: Micros, duration: Micros) {
        let elapsed = now.saturating_sub(self.win_start);
        if elapsed >= duration {
            self.prev = if elapsed < duration.saturating_mul(2) {
                self.cur
            } else {
                0
            };
            self.cur = 0;
            self.win_start = now;
        }
        self.cur = self.cur.saturating_add(cost);
        self.last_used = self.last_used.max(now);
    }

    /// The decision for a call admitted from the batch: the store's remaining at the last
    /// reserve plus the units still in the batch, and the reserve's `reset_after` less the
    /// time since.
    pub(super) fn local_decision(&self, now: Micros) -> Decision {
        let since = now.saturating_sub(self.base_at);
        Decision::from_parts(
            true,
            self.limit,
            self.base_remaining.saturating_add(self.units),
            0,
            self.base_reset.saturating_sub(since),
            None,
        )
        .with_decided_at(now)
    }

    /// Decides what a `Check(cost)` (`charge`) or `Peek(cost)` does at `now`.
    pub(super) fn plan(
        &mut self,
        cost: u64,
        now: Micros,
        charge: bool,
        l: Limits,
        cap: u64,
    ) -> Plan {
        if self.units >= cost {
            if charge {
                self.units -= cost;
            }
            return Plan::Local(self.local_decision(now));
        }
        if !charge {
            return Plan::Pass;
        }
        if self.reserving {
            return Plan::Wait;
        }
        if now < self.no_batch_until {
            return Plan::Pass;
        }
        let batch = self.prev.max(self.cur).min(l.max_batch).min(cap);
        if batch < l.min_batch || batch <= cost {
            return Plan::Pass;
        }
        self.reserving = true;
        Plan::Reserve(batch)
    }

    /// A reserve of `batch` admitted with `d`: `cost` of it goes to the reserver, the rest
    /// joins the batch (with the units left over, fewer than `cost`). Returns the reserver's
    /// decision.
    pub(super) fn banked(
        &mut self,
        d: &Decision,
        batch: u64,
        cost: u64,
        now: Micros,
        duration: Micros,
    ) -> Decision {
        self.units = self.units.saturating_add(batch - cost);
        self.expires = now.saturating_add(duration);
        self.limit = d.limit;
        self.base_remaining = d.remaining;
        self.base_reset = micros(d.reset_after);
        self.base_at = now;
        self.local_decision(now)
    }

    /// A reserve denied with `d`: no batch before `retry_after`.
    pub(super) fn denied(&mut self, d: &Decision, now: Micros) {
        self.no_batch_until = now.saturating_add(micros(d.retry_after).max(1));
    }

    /// Takes the units of an ended lease (or of every lease, `force`) to give back.
    pub(super) fn take_expired(&mut self, now: Micros, force: bool) -> u64 {
        if self.reserving || self.units == 0 || (!force && now < self.expires) {
            return 0;
        }
        std::mem::take(&mut self.units)
    }
}

/// A key's state and the two ways to wait for its reserver.
#[derive(Debug, Default)]
pub(super) struct KeyLease {
    pub(super) state: Mutex<KeyState>,
    cond: Condvar,
    notify: Notify,
}

impl KeyLease {
    /// Blocks the thread until the reserver is done (`st` is this key's locked state).
    pub(super) fn wait_blocking(&self, st: &mut parking_lot::MutexGuard<'_, KeyState>) {
        while st.reserving {
            self.cond.wait(st);
        }
    }

    /// Waits without blocking the executor until the reserver is done.
    pub(super) async fn wait_async(&self) {
        let notified = self.notify.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        let busy = self.state.lock().reserving;
        if busy {
            notified.await;
        }
    }
}

/// The reserver's duty: however the reserve ends (done, failed, or its future dropped), the
/// flag is cleared and every waiter of the key is woken.
pub(super) struct Reserving<'a> {
    lease: &'a KeyLease,
    done: bool,
}

impl<'a> Reserving<'a> {
    /// Takes the duty for `lease` (whose `reserving` flag the plan set).
    pub(super) fn new(lease: &'a KeyLease) -> Self {
        Reserving { lease, done: false }
    }

    /// Updates the state with `f`, clears the flag and wakes the waiters.
    pub(super) fn finish<R>(mut self, f: impl FnOnce(&mut KeyState) -> R) -> R {
        self.done = true;
        let r = {
            let mut st = self.lease.state.lock();
            let r = f(&mut st);
            st.reserving = false;
            r
        };
        self.wake();
        r
    }

    fn wake(&self) {
        self.lease.cond.notify_all();
        self.lease.notify.notify_waiters();
    }
}

impl Drop for Reserving<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.lease.state.lock().reserving = false;
            self.wake();
        }
    }
}
