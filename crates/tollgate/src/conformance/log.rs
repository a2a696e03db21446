//! The rules every [`LogBackend`] keeps, as one check each store's tests run (with the
//! caller's clock, so the times below are the times the store decides at).

use crate::policy::Policy;
use crate::store::log::{LogBackend, LogEntry};
use crate::store::{Backend, Op, Store};
use crate::time::Micros;
use crate::Algorithm;

/// Checks, on `store` at times from `t0` (µs), with keys under `key_prefix`: an unknown key
/// reads empty; admitted checks appear oldest first with their weights (one instant merged);
/// denials and peeks add nothing; a refund takes weight off the newest entries; entries leave
/// when no window sees them; a reset empties the log; a policy that is not a sliding log
/// cannot be read.
///
/// ```
/// use tollgate::{conformance::log::check_log_rules, store::memory::MemoryStore};
/// check_log_rules(&MemoryStore::new(), 1_000_000, "doc:").unwrap();
/// ```
pub fn check_log_rules<S: Store>(store: &S, t0: Micros, key_prefix: &str) -> Result<(), String>
where
    S::Backend: LogBackend,
{
    let policy = Policy::parse(Algorithm::SlidingLog, "5/s; 8/2s").map_err(|e| e.to_string())?;
    let b = store.bind(&policy).map_err(|e| format!("bind: {e}"))?;
    let key = format!("{key_prefix}log");
    let read = |now: Micros| b.log_entries(&key, now).map_err(|e| format!("read: {e}"));
    let e = |at: Micros, weight: u64| LogEntry { at, weight };
    let run = |op: Op, now: Micros| -> Result<bool, String> {
        b.execute(&key, op, now)
            .map(|d| d.is_some_and(|d| d.allowed))
            .map_err(|e| format!("{op:?}: {e}"))
    };
    let expect = |what: &str, got: Vec<LogEntry>, want: Vec<LogEntry>| {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what}: read {got:?}, expected {want:?}"))
        }
    };
    expect("unknown key", read(t0)?, vec![])?;
    const S: Micros = 1_000_000;
    if !(run(Op::Check(2), t0)? && run(Op::Check(1), t0)? && run(Op::Check(2), t0 + S / 2)?) {
        return Err("the first checks were denied".into());
    }
    let _ = run(Op::Peek(1), t0 + S / 2)?;
    if run(Op::Check(1), t0 + S / 2)? {
        return Err("a sixth unit in one second was admitted".into());
    }
    expect(
        "after checks",
        read(t0 + S / 2)?,
        vec![e(t0, 3), e(t0 + S / 2, 2)],
    )?;
    run(Op::Refund(1), t0 + S / 2)?;
    expect(
        "after a refund",
        read(t0 + S / 2)?,
        vec![e(t0, 3), e(t0 + S / 2, 1)],
    )?;
    // The 2 s window still sees t0 at t0 + 1.9 s; nothing sees it from t0 + 2 s.
    expect(
        "inside the longest window",
        read(t0 + 19 * S / 10)?,
        vec![e(t0, 3), e(t0 + S / 2, 1)],
    )?;
    expect(
        "past the longest window",
        read(t0 + 2 * S)?,
        vec![e(t0 + S / 2, 1)],
    )?;
    run(Op::Reset, t0 + S)?;
    expect("after a reset", read(t0 + S)?, vec![])?;
    let gcra = Policy::parse(Algorithm::Gcra, "5/s").map_err(|e| e.to_string())?;
    let g = store.bind(&gcra).map_err(|e| format!("bind gcra: {e}"))?;
    if g.log_entries(&key, t0).is_ok() {
        return Err("a GCRA backend answered a log read".into());
    }
    Ok(())
}
