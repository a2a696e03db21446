//! Multi-key calls on SQLite, behind the core capability [`MultiBackend`]
//! (`Limiter::check_all` and every surface use it): every key of a call read, decided and
//! written in one `BEGIN IMMEDIATE` transaction (a read transaction for a peek).

use super::backend::write_state;
use super::{off_thread, read_state, sqlite_error, Shared, SqliteBackend};
use crate::engine::Engine;
use crate::multi::check_keys;
use futures_util::future::BoxFuture;
use rusqlite::TransactionBehavior;
use std::sync::Arc;
use tollgate::store::multi::{first_backend, KeyCheck, MultiBackend, MultiDecision, MultiOp};
use tollgate::store::Op;
use tollgate::time::Micros;
use tollgate::Error;

/// A multi-key call checked and ready for the database.
struct PreparedMulti {
    shared: Arc<Shared>,
    /// (stored key, engine, cost), in call order.
    keys: Vec<(String, Arc<Engine>, u64)>,
}

/// Every check that needs no database: at least one key, every backend from the first
/// one's store, costs within each policy, no stored key twice.
fn prepare(checks: &[KeyCheck<'_, SqliteBackend>]) -> Result<PreparedMulti, Error> {
    let shared = Arc::clone(&first_backend(checks)?.shared);
    let mut keys = Vec::with_capacity(checks.len());
    for check in checks {
        let backend = check.backend();
        if !Arc::ptr_eq(&backend.shared, &shared) {
            return Err(Error::InvalidKey {
                reason: "every backend of a multi-key call must come from this store".into(),
            });
        }
        backend.engine.validate(Op::Check(check.cost()))?;
        keys.push((
            format!("{}{}", backend.prefix, check.key()),
            Arc::clone(&backend.engine),
            check.cost(),
        ));
    }
    let stored: Vec<String> = keys.iter().map(|k| k.0.clone()).collect();
    check_keys(&stored)?;
    Ok(PreparedMulti { shared, keys })
}

/// Runs a prepared multi-key call: a check in one `BEGIN IMMEDIATE` transaction (read
/// every key, decide every key without writing, then write every key charged if all
/// admit, else settled), a peek in one read transaction (one snapshot, no lock).
fn run(prepared: &PreparedMulti, op: MultiOp, now: Micros) -> Result<MultiDecision, Error> {
    let shared = &prepared.shared;
    let charge = op == MultiOp::Check;
    let sweep = charge && shared.sweep_due();
    shared.try_with_conn(|conn| {
        let behavior = if charge {
            TransactionBehavior::Immediate
        } else {
            TransactionBehavior::Deferred
        };
        let tx = conn
            .transaction_with_behavior(behavior)
            .map_err(|e| sqlite_error("cannot begin a transaction", e))?;
        let mut evaluations = Vec::with_capacity(prepared.keys.len());
        for (key, engine, cost) in &prepared.keys {
            let state = read_state(&tx, &shared.sql.select, key)?;
            evaluations.push(engine.evaluate(state.as_deref(), now, *cost)?);
        }
        let every = evaluations.iter().all(|e| e.decision.allowed);
        if charge {
            let write = |tx: &rusqlite::Transaction<'_>| -> rusqlite::Result<()> {
                for ((key, engine, _), evaluation) in prepared.keys.iter().zip(&evaluations) {
                    let next = if every {
                        &evaluation.charged
                    } else {
                        &evaluation.settled
                    };
                    if let Some(next) = next {
                        write_state(tx, &shared.sql, engine, key, next, now)?;
                    }
                }
                if sweep {
                    shared.sweep(tx, now)?;
                }
                Ok(())
            };
            write(&tx).map_err(|e| sqlite_error("cannot write state", e))?;
        }
        tx.commit().map_err(|e| sqlite_error("cannot commit", e))?;
        Ok(MultiDecision::from_decisions(
            evaluations.into_iter().map(|e| e.decision).collect(),
        ))
    })
}

/// One `BEGIN IMMEDIATE` transaction, so no other call (of any process) sees or changes the
/// keys in between; a peek is one read transaction (a consistent snapshot, no lock). `now`
/// is the caller's time (the limiter's clock). The async call runs on tokio's blocking
/// pool when inside a tokio runtime, else inline.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate};
/// use tollgate_sql::SqliteStore;
/// let store = SqliteStore::in_memory().unwrap();
/// store.ensure_schema().unwrap();
/// let user = Limiter::builder(Policy::gcra(Rate::per_minute(5).unwrap()).unwrap())
///     .build_with(&store).unwrap();
/// let global = Limiter::builder(Policy::fixed_window(Rate::per_minute(1).unwrap()).unwrap())
///     .build_with(&store).unwrap();
/// assert!(Limiter::check_all(&[user.item("alice", 1), global.item("all", 1)]).unwrap().allowed);
/// // the global window is full: denied, and alice is not charged
/// let d = Limiter::check_all(&[user.item("alice", 1), global.item("all", 1)]).unwrap();
/// assert_eq!((d.allowed, d.binding().map(|(item, _)| item)), (false, Some(1)));
/// assert_eq!(user.peek("alice", 1).unwrap().remaining, 3);
/// ```
impl MultiBackend for SqliteBackend {
    fn execute_all(
        items: &[KeyCheck<'_, Self>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        run(&prepare(items)?, op, now)
    }

    fn execute_all_async<'a>(
        items: &'a [KeyCheck<'a, Self>],
        op: MultiOp,
        now: Micros,
    ) -> BoxFuture<'a, Result<MultiDecision, Error>> {
        let prepared = prepare(items);
        Box::pin(async move {
            let prepared = prepared?;
            off_thread(move || run(&prepared, op, now)).await
        })
    }
}
