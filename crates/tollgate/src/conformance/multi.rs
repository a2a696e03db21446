//! The multi-key rules every store follows (see [`MultiBackend`]): one check, run by each
//! store's tests against a real instance (memory, Redis standalone and Cluster, PostgreSQL,
//! SQLite).

use crate::decision::Decision;
use crate::error::Error;
use crate::policy::{Algorithm, Policy};
use crate::store::multi::{KeyCheck, MultiBackend, MultiOp};
use crate::store::{Backend, Op, Store};
use crate::time::Micros;

/// What must not change between two reads of a key at nearly the same time (a store on its
/// own clock moves `retry_after`/`reset_after` by the µs between calls).
fn stable(d: &Decision) -> (bool, u64, u64, Option<usize>) {
    (d.allowed, d.limit, d.remaining, d.denied_by)
}

fn policies() -> Result<Vec<(&'static str, Policy)>, String> {
    let p = |algorithm, rates: &str| Policy::parse(algorithm, rates).map_err(|e| e.to_string());
    // Hour-long periods: a store on its own clock refills nothing during the check.
    Ok(vec![
        ("gcra", p(Algorithm::Gcra, "5/h")?),
        ("log", p(Algorithm::SlidingLog, "3/h; 10/d")?),
        ("bucket", p(Algorithm::TokenBucket, "1/h burst 4")?),
        ("window", p(Algorithm::FixedWindow, "2/h")?),
        ("sliding", p(Algorithm::SlidingWindow, "6/h")?),
    ])
}

/// Checks the multi-key rules on backends made by `scoped(name)` (the store's
/// `scope(name)`), at `now` (the caller's clock; stores on their own clock ignore it), with
/// user keys starting with `key_prefix` (give a Cluster hash tag there, e.g. `"{t}:"`):
///
/// 1. five algorithms in one call are all-or-nothing: the 2/h fixed window lets two calls
///    through, the third is denied by it (`binding`), and nothing is charged anywhere;
/// 2. each key's decision is what that key alone decides; `Peek` decides like `Check` and
///    charges nothing; an allowed call charges each key like a single check;
/// 3. no item, a key twice, cost 0 and a cost above a capacity are errors, and charge nothing.
///
/// Returns which expectation failed.
///
/// ```
/// use tollgate::{conformance::multi::check_multi_rules, store::memory::MemoryStore};
/// let store = MemoryStore::new();
/// check_multi_rules(|name| store.scope(name), 1_000_000, "doc:").unwrap();
/// ```
pub fn check_multi_rules<S: Store>(
    scoped: impl Fn(&str) -> S,
    now: Micros,
    key_prefix: &str,
) -> Result<(), String>
where
    S::Backend: MultiBackend,
{
    let mut backends = Vec::new();
    for (name, policy) in policies()? {
        let b = scoped(name)
            .bind(&policy)
            .map_err(|e| format!("bind {policy}: {e}"))?;
        backends.push(b);
    }
    let key = format!("{key_prefix}alice");
    let peek_all = |key: &str| -> Result<Vec<Decision>, String> {
        backends
            .iter()
            .map(|b| match b.execute(key, Op::Peek(1), now) {
                Ok(Some(d)) => Ok(d),
                Ok(None) => Err("peek returned no decision".to_string()),
                Err(e) => Err(format!("peek: {e}")),
            })
            .collect()
    };
    let items: Vec<KeyCheck<'_, S::Backend>> =
        backends.iter().map(|b| KeyCheck::new(b, &key, 1)).collect();
    let run = |items: &[KeyCheck<'_, S::Backend>], op| {
        S::Backend::execute_all(items, op, now).map_err(|e: Error| format!("{op:?}: {e}"))
    };
    for round in 0..2 {
        let before = peek_all(&key)?;
        let d = run(&items, MultiOp::Check)?;
        if !d.allowed || d.decisions.len() != backends.len() {
            return Err(format!("round {round}: {d:?}"));
        }
        for (i, (got, alone)) in d.decisions.iter().zip(&before).enumerate() {
            if stable(got) != stable(alone) {
                return Err(format!(
                    "round {round}, item {i}: {got:?} vs alone {alone:?}"
                ));
            }
        }
    }
    let before = peek_all(&key)?;
    let peeked = run(&items, MultiOp::Peek)?;
    let d = run(&items, MultiOp::Check)?;
    if d.allowed || d.binding().map(|(i, d)| (i, d.denied_by)) != Some((3, Some(0))) {
        return Err(format!(
            "third call: want a denial by item 3 (the window): {d:?}"
        ));
    }
    let after = peek_all(&key)?;
    let same = |a: &[Decision], b: &[Decision]| {
        a.iter().map(stable).collect::<Vec<_>>() == b.iter().map(stable).collect::<Vec<_>>()
    };
    if !same(&before, &after) {
        return Err(format!(
            "a denial charged something: {before:?} -> {after:?}"
        ));
    }
    if !same(&d.decisions, &before) || !same(&peeked.decisions, &d.decisions) {
        return Err(format!(
            "per-key decisions differ from each key alone: {d:?} / peek {peeked:?} / alone {before:?}"
        ));
    }
    // Errors, before anything is decided.
    let fresh = format!("{key_prefix}bob");
    let expect_err = |what: &str, items: &[KeyCheck<'_, S::Backend>]| match S::Backend::execute_all(
        items,
        MultiOp::Check,
        now,
    ) {
        Err(_) => Ok(()),
        Ok(d) => Err(format!("{what}: want an error, got {d:?}")),
    };
    expect_err("no item", &[])?;
    expect_err(
        "a key twice",
        &[
            KeyCheck::new(&backends[0], &fresh, 1),
            KeyCheck::new(&backends[0], &fresh, 1),
        ],
    )?;
    expect_err(
        "cost 0",
        &[
            KeyCheck::new(&backends[0], &fresh, 1),
            KeyCheck::new(&backends[1], &fresh, 0),
        ],
    )?;
    expect_err(
        "a cost above the window's capacity",
        &[
            KeyCheck::new(&backends[0], &fresh, 1),
            KeyCheck::new(&backends[3], &fresh, 3),
        ],
    )?;
    let gcra = backends[0]
        .execute(&fresh, Op::Peek(1), now)
        .map_err(|e| e.to_string())?
        .ok_or("no decision")?;
    if gcra.remaining != 4 {
        return Err(format!("a failed call charged the GCRA key: {gcra:?}"));
    }
    // The same user key under two policies is two keys.
    let two = [
        KeyCheck::new(&backends[0], &fresh, 1),
        KeyCheck::new(&backends[1], &fresh, 1),
    ];
    if !run(&two, MultiOp::Check)?.allowed {
        return Err("one key under two policies was refused".into());
    }
    Ok(())
}
