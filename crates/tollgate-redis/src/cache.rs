//! The optional local denial cache: once Redis denies a key with a `retry_after`, the same or
//! a larger cost on that key is denied locally until then, without a round trip.

use parking_lot::Mutex;
use std::collections::HashMap;
use tollgate::time::Micros;
use tollgate::Decision;

struct Entry {
    until: Micros,
    reset_until: Micros,
    cost: u64,
    decision: Decision,
}

pub(crate) struct DenialCache {
    max_entries: usize,
    map: Mutex<HashMap<String, Entry>>,
}

impl DenialCache {
    pub(crate) fn new(max_entries: usize) -> Self {
        DenialCache {
            max_entries: max_entries.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// A cached denial of `key` for `cost` at local time `now`, if one still holds.
    pub(crate) fn get(&self, key: &str, cost: u64, now: Micros) -> Option<Decision> {
        let map = self.map.lock();
        let e = map.get(key)?;
        if now >= e.until || cost < e.cost {
            return None;
        }
        Some(Decision::from_parts(
            false,
            e.decision.limit,
            e.decision.remaining,
            e.until - now,
            e.reset_until.saturating_sub(now),
            e.decision.denied_by,
        ))
    }

    /// Remembers a denial returned by Redis at local time `now`.
    pub(crate) fn insert(&self, key: &str, cost: u64, decision: &Decision, now: Micros) {
        let retry = decision.retry_after.as_micros() as Micros;
        if decision.allowed || retry == 0 {
            return;
        }
        let mut map = self.map.lock();
        if map.len() >= self.max_entries && !map.contains_key(key) {
            map.retain(|_, e| e.until > now);
            if map.len() >= self.max_entries {
                return; // full of live denials: answer from Redis
            }
        }
        map.insert(
            key.to_string(),
            Entry {
                until: now + retry,
                reset_until: now + decision.reset_after.as_micros() as Micros,
                cost,
                decision: *decision,
            },
        );
    }

    /// Forgets `key` (after an admission, a refund or a reset).
    pub(crate) fn remove(&self, key: &str) {
        let mut map = self.map.lock();
        if !map.is_empty() {
            map.remove(key);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }
}
