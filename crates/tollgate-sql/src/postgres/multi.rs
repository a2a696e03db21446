//! Several keys, each with its own policy, decided all-or-nothing in one round trip: the
//! function `<table>_check_all` (source: `sql/check_all.sql`), behind the core capability
//! [`MultiBackend`] (`Limiter::check_all` and every surface use it).

use super::backend::sweep_now;
use super::conn::{limited, CallConn, Shared};
use super::schema::CHECK_ALL;
use super::{describe, pg_driver_error, pg_error, to_i64, PgBackend};
use crate::multi::check_keys;
use futures_util::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tollgate::store::multi::{first_backend, KeyCheck, MultiBackend, MultiDecision, MultiOp};
use tollgate::store::Op;
use tollgate::time::Micros;
use tollgate::{Decision, Error};

const WHAT: &str = "postgres multi-key call";

/// The arguments of one `<table>_check_all` call, checked before anything reaches the
/// database.
struct PreparedMulti {
    keys: Vec<String>,
    algorithms: Vec<&'static str>,
    costs: Vec<i64>,
    rates: Vec<i32>,
    a: Vec<i64>,
    b: Vec<i64>,
    c: Vec<i64>,
    d: Vec<i64>,
}

/// The call over `checks` as a future for the store's runtime, after every check that needs
/// no database: at least one key, every backend from the first one's store, costs within
/// each policy, no stored key twice.
fn prepare(
    checks: &[KeyCheck<'_, PgBackend>],
    op: MultiOp,
    now: Micros,
) -> Result<
    (
        Arc<Shared>,
        impl Future<Output = Result<MultiDecision, Error>> + Send + 'static,
    ),
    Error,
> {
    let started = Instant::now();
    let shared = Arc::clone(&first_backend(checks)?.shared);
    let mut p = PreparedMulti {
        keys: Vec::with_capacity(checks.len()),
        algorithms: Vec::with_capacity(checks.len()),
        costs: Vec::with_capacity(checks.len()),
        rates: Vec::with_capacity(checks.len()),
        a: Vec::new(),
        b: Vec::new(),
        c: Vec::new(),
        d: Vec::new(),
    };
    for check in checks {
        let backend = check.backend();
        if !Arc::ptr_eq(&backend.shared, &shared) {
            return Err(Error::InvalidKey {
                reason: "every backend of a multi-key call must come from this store".into(),
            });
        }
        let call = &backend.call;
        call.engine.validate(Op::Check(check.cost()))?;
        p.keys.push(format!("{}{}", call.prefix, check.key()));
        p.algorithms.push(call.algorithm);
        p.costs.push(to_i64(check.cost()));
        let n = call.a.len();
        p.rates.push(i32::try_from(n).unwrap_or(i32::MAX));
        // every key contributes n entries to each array (0 where the algorithm has no
        // such parameter), so key k's parameters start at the sum of the n before it
        for (all, own) in [
            (&mut p.a, &call.a),
            (&mut p.b, &call.b),
            (&mut p.c, &call.c),
            (&mut p.d, &call.d),
        ] {
            all.extend((0..n).map(|i| own.get(i).copied().unwrap_or(0)));
        }
    }
    check_keys(&p.keys)?;
    let run = run(Arc::clone(&shared), p, op == MultiOp::Check, now, started);
    Ok((shared, run))
}

async fn run(
    shared: Arc<Shared>,
    prepared: PreparedMulti,
    charge: bool,
    now: Micros,
    started: Instant,
) -> Result<MultiDecision, Error> {
    let CallConn {
        mut conn,
        set,
        deadline,
    } = shared.call_conn(started).await?;
    let sweep = if charge { sweep_now(&shared) } else { 0 };
    let sql = format!(
        "SELECT * FROM {}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        shared.table.quoted(CHECK_ALL)
    );
    let guard = conn.in_flight();
    let stmt = conn
        .statement(&sql)
        .await
        .map_err(|e| pg_driver_error("prepare", &e))?;
    let op: i32 = if charge { 0 } else { 1 };
    let rows = limited(
        &conn.client,
        set.as_deref(),
        conn.client.query(
            &stmt,
            &[
                &shared.now_param(now),
                &op,
                &prepared.keys,
                &prepared.algorithms,
                &prepared.costs,
                &prepared.rates,
                &prepared.a,
                &prepared.b,
                &prepared.c,
                &prepared.d,
                &sweep,
                &deadline,
            ],
        ),
    )
    .await;
    guard.done();
    let rows = rows.map_err(|e| pg_driver_error("check_all", &e))?;
    if rows.len() != prepared.keys.len() {
        return Err(pg_error(
            "bad reply",
            format!("{} rows for {} keys", rows.len(), prepared.keys.len()),
        ));
    }
    let mut results: Vec<Option<Decision>> = (0..rows.len()).map(|_| None).collect();
    for row in &rows {
        let bad = |e: tokio_postgres::Error| pg_error("bad reply", describe(&e));
        let get = |i: usize| -> Result<u64, Error> {
            let v: i64 = row.try_get(i).map_err(bad)?;
            u64::try_from(v).map_err(|_| pg_error("bad reply", format!("negative value {v}")))
        };
        let index: i32 = row.try_get(0).map_err(bad)?;
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| results.get_mut(i))
            .ok_or_else(|| pg_error("bad reply", format!("key index {index}")))?;
        let allowed: bool = row.try_get(1).map_err(bad)?;
        let denied_by: Option<i32> = row.try_get(6).map_err(bad)?;
        *slot = Some(Decision::from_parts(
            allowed,
            get(2)?,
            get(3)?,
            get(4)?,
            get(5)?,
            denied_by.and_then(|d| usize::try_from(d).ok()),
        ));
    }
    let results = results
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| pg_error("bad reply", "a key index is missing"))?;
    Ok(MultiDecision::from_decisions(results))
}

/// One function call `<table>_check_all`: it locks every key's row in one global order
/// (sorted keys, so calls on overlapping key sets never deadlock), decides each key with
/// its algorithm's code at one time without writing, then writes every key (charged) only
/// if all admit; a peek locks nothing. `now` is used only with
/// [`caller_time`](crate::PgStoreBuilder::caller_time), else the database clock decides.
///
/// ```no_run
/// use tollgate::{Limiter, Policy, Rate};
/// use tollgate_sql::PgStore;
/// let store = PgStore::connect("postgres://postgres@127.0.0.1/postgres").unwrap();
/// store.migrate().unwrap();
/// let user = Limiter::builder(Policy::gcra(Rate::per_second(5).unwrap()).unwrap())
///     .build_with(&store).unwrap();
/// let global = Limiter::builder(Policy::sliding_window(Rate::per_second(1000).unwrap()).unwrap())
///     .build_with(&store).unwrap();
/// let d = Limiter::check_all(&[user.item("user:alice", 1), global.item("all", 1)]).unwrap();
/// if let Some((item, denial)) = d.binding() {
///     println!("denied by item {item}, retry in {:?}", denial.retry_after);
/// }
/// ```
impl MultiBackend for PgBackend {
    fn execute_all(
        items: &[KeyCheck<'_, Self>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let (shared, call) = prepare(items, op, now)?;
        shared.block_on(WHAT, call)
    }

    fn execute_all_async<'a>(
        items: &'a [KeyCheck<'a, Self>],
        op: MultiOp,
        now: Micros,
    ) -> BoxFuture<'a, Result<MultiDecision, Error>> {
        let prepared = prepare(items, op, now);
        Box::pin(async move {
            let (shared, call) = prepared?;
            shared.run_async(WHAT, call).await
        })
    }
}
