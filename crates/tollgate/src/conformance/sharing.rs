//! The state-sharing rule every store follows (see [`Store`]): one check, run by each
//! store's tests against a real instance.

use crate::error::Error;
use crate::policy::{Algorithm, Policy};
use crate::quota::Rate;
use crate::store::{Backend, Op, Store};
use crate::time::Micros;

/// Checks [`Store`]'s sharing rule on `store` at time `now` (the caller's clock; stores that
/// use their own clock ignore it), with user keys starting with `key_prefix`:
///
/// 1. two backends bound with the same policy share state;
/// 2. a different policy of the same algorithm, and another algorithm, have their own state;
/// 3. `scoped(name)` (the store's `scope(name)`) shares state between backends bound under
///    one name, not with the unscoped policy, and not with another name.
///
/// Returns which expectation failed.
///
/// ```
/// use tollgate::{conformance::sharing::check_sharing, store::memory::MemoryStore};
/// let store = MemoryStore::new();
/// check_sharing(&store, |name| store.scope(name), 1_000_000, "doc:").unwrap();
/// ```
pub fn check_sharing<S: Store>(
    store: &S,
    scoped: impl Fn(&str) -> S,
    now: Micros,
    key_prefix: &str,
) -> Result<(), String> {
    let hourly = |n| Rate::per_hour(n).map_err(|e| e.to_string());
    let one = Policy::gcra(hourly(1)?).map_err(|e| e.to_string())?;
    let two = Policy::gcra(hourly(2)?).map_err(|e| e.to_string())?;
    let window = Policy::new(Algorithm::FixedWindow, [hourly(1)?]).map_err(|e| e.to_string())?;
    let bind = |s: &S, p: &Policy| s.bind(p).map_err(|e| format!("bind {p}: {e}"));
    let key = format!("{key_prefix}k");
    let check = |what: &str, b: &S::Backend, want: bool| -> Result<(), String> {
        let d = b
            .execute(&key, Op::Check(1), now)
            .map_err(|e: Error| format!("{what}: {e}"))?
            .ok_or_else(|| format!("{what}: no decision"))?;
        if d.allowed == want {
            Ok(())
        } else {
            Err(format!("{what}: expected allowed = {want}, got {d:?}"))
        }
    };

    let a = bind(store, &one)?;
    let b = bind(store, &one)?;
    check("first limiter of 1/hour", &a, true)?;
    check(
        "second limiter of the same policy (shares the state)",
        &b,
        false,
    )?;
    check(
        "2/hour on the same key (its own state)",
        &bind(store, &two)?,
        true,
    )?;
    check(
        "fixed window 1/hour (its own state)",
        &bind(store, &window)?,
        true,
    )?;

    let s1 = bind(&scoped("shared"), &one)?;
    check("scope \"shared\" (not the unscoped state)", &s1, true)?;
    let s2 = bind(&scoped("shared"), &one)?;
    check(
        "scope \"shared\" again (shares the scope's state)",
        &s2,
        false,
    )?;
    check(
        "scope \"other\" (its own state)",
        &bind(&scoped("other"), &one)?,
        true,
    )?;
    // the first backends still hold their state
    check("first limiter again", &a, false)?;
    Ok(())
}
