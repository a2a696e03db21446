//! [`PgBackend`]: a [`PgStore`] bound to one policy, and its single-key calls (one
//! prepared `SELECT * FROM <table>_<algorithm>(…)` per decision).

use super::conn::{limited, CallConn, Shared};
use super::{describe, pg_driver_error, pg_error, to_i64, PgStore};
use crate::engine::Engine;
use crate::table::key_prefix;
use futures_util::future::BoxFuture;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio_postgres::types::ToSql;
use tollgate::store::{Backend, Op, Store};
use tollgate::time::Micros;
use tollgate::{Decision, Error, Policy, StoreError, StoreErrorKind};

pub(super) struct Call {
    pub(super) engine: Engine,
    /// The algorithm's function suffix (`gcra`, `token_bucket`, …).
    pub(super) algorithm: &'static str,
    decide_sql: String,
    reset_sql: String,
    pub(super) prefix: String,
    pub(super) a: Vec<i64>,
    pub(super) b: Vec<i64>,
    pub(super) c: Vec<i64>,
    pub(super) d: Vec<i64>,
}

/// A [`PgStore`] bound to one policy.
///
/// ```no_run
/// use tollgate::store::{Backend, Op, Store};
/// let store = tollgate_sql::PgStore::connect("postgres://localhost/db").unwrap();
/// let policy = tollgate::Policy::gcra(tollgate::Rate::per_second(1).unwrap()).unwrap();
/// let backend = store.bind(&policy).unwrap();
/// let d = backend.execute("k", Op::Check(1), 0).unwrap().unwrap();
/// # let _ = d;
/// ```
#[derive(Clone)]
pub struct PgBackend {
    pub(super) shared: Arc<Shared>,
    pub(super) call: Arc<Call>,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("table", &self.shared.table.as_str())
            .field("function", &self.call.decide_sql)
            .finish()
    }
}

impl Store for PgStore {
    type Backend = PgBackend;

    /// Binds `policy` (no round trip; a missing schema shows on the first call, with a hint
    /// to run [`PgStore::migrate`]).
    fn bind(&self, policy: &Policy) -> Result<PgBackend, Error> {
        let engine = Engine::new(policy)?;
        let name = policy.algorithm().name();
        // One parameter array per position of the algorithm's script parameters
        // (`RateAlgorithm::script_params`: the layout shared with the Lua scripts); unused
        // positions are empty arrays.
        let rows = engine.script_params();
        let column = |k: usize| -> Vec<i64> {
            rows.iter()
                .filter_map(|r| r.get(k).copied().map(to_i64))
                .collect()
        };
        let (a, b, c, d) = (column(0), column(1), column(2), column(3));
        let t = &self.shared.table;
        Ok(PgBackend {
            shared: self.shared.clone(),
            call: Arc::new(Call {
                decide_sql: format!(
                    "SELECT * FROM {}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    t.quoted(&format!("_{name}"))
                ),
                // one statement: the deadline check (as in the functions) and the delete
                reset_sql: format!(
                    "WITH late AS (SELECT $2::bigint < floor(extract(epoch FROM \
                     clock_timestamp()) * 1000000)::bigint AS late), \
                     gone AS (DELETE FROM {} WHERE key = $1 \
                     AND NOT coalesce((SELECT late FROM late), false) RETURNING 1) \
                     SELECT coalesce(late, false) FROM late",
                    t.quoted("")
                ),
                prefix: key_prefix(&self.shared.namespace, self.scope.as_deref(), policy),
                algorithm: name,
                engine,
                a,
                b,
                c,
                d,
            }),
        })
    }
}

impl PgBackend {
    /// The call of `op` on `key` as a future for the store's runtime (checked first: a bad
    /// cost fails here, before anything is sent).
    fn call(
        &self,
        key: &str,
        op: Op,
        now: Micros,
    ) -> Result<impl Future<Output = Result<Option<Decision>, Error>> + Send + 'static, Error> {
        self.call.engine.validate(op)?;
        let started = Instant::now();
        let key = format!("{}{key}", self.call.prefix);
        Ok(run(
            Arc::clone(&self.shared),
            Arc::clone(&self.call),
            key,
            op,
            now,
            started,
        ))
    }
}

/// A call whose statement reached the database after its deadline (and changed nothing).
pub(super) fn late_error(what: &str) -> Error {
    Error::Store(StoreError::with_kind(
        super::STORE,
        StoreErrorKind::Timeout,
        format!("{what}: reached the database after the call's deadline: nothing was changed"),
    ))
}

/// Whether this call also sweeps expired rows (one call in `sweep_every`).
pub(super) fn sweep_now(shared: &Shared) -> i32 {
    if shared.calls.fetch_add(1, Ordering::Relaxed) % shared.sweep_every == shared.sweep_every - 1 {
        shared.sweep_batch
    } else {
        0
    }
}

async fn run(
    shared: Arc<Shared>,
    call: Arc<Call>,
    key: String,
    op: Op,
    now: Micros,
    started: Instant,
) -> Result<Option<Decision>, Error> {
    let CallConn {
        mut conn,
        set,
        deadline,
    } = shared.call_conn(started).await?;
    let (op_code, cost) = match op {
        Op::Check(c) => (0i32, c),
        Op::Peek(c) => (1, c),
        Op::Refund(c) => (2, c),
        _ => (-1, 0), // reset
    };
    let reset = op_code < 0;
    let sweep = if reset { 0 } else { sweep_now(&shared) };
    let (cost, now) = (to_i64(cost), shared.now_param(now));
    let decide: [&(dyn ToSql + Sync); 10] = [
        &key, &now, &op_code, &cost, &call.a, &call.b, &call.c, &call.d, &sweep, &deadline,
    ];
    let (what, sql, params): (_, _, &[&(dyn ToSql + Sync)]) = if reset {
        ("reset", &call.reset_sql, &[&key, &deadline])
    } else {
        ("decide", &call.decide_sql, &decide)
    };
    let guard = conn.in_flight();
    let stmt = conn
        .statement(sql)
        .await
        .map_err(|e| pg_driver_error(what, &e))?;
    let row = limited(
        &conn.client,
        set.as_deref(),
        conn.client.query_opt(&stmt, params),
    )
    .await;
    guard.done();
    let row = row.map_err(|e| pg_driver_error(what, &e))?;
    if reset {
        // the reset's one row: whether it came too late to delete anything
        let late = row.map(|r| r.try_get::<_, bool>(0)).transpose();
        return match late.map_err(|e| pg_driver_error(what, &e))? {
            Some(true) => Err(late_error(what)),
            _ => Ok(None),
        };
    }
    let Some(row) = row else {
        return Ok(None);
    };
    let bad = |e: tokio_postgres::Error| pg_error("bad reply", describe(&e));
    let get = |i: usize| -> Result<u64, Error> {
        let v: i64 = row.try_get(i).map_err(bad)?;
        u64::try_from(v).map_err(|_| pg_error("bad reply", format!("negative value {v}")))
    };
    let allowed: bool = row.try_get(0).map_err(bad)?;
    let denied_by: Option<i32> = row.try_get(5).map_err(bad)?;
    Ok(Some(Decision::from_parts(
        allowed,
        get(1)?,
        get(2)?,
        get(3)?,
        get(4)?,
        denied_by.and_then(|d| usize::try_from(d).ok()),
    )))
}

impl Backend for PgBackend {
    fn execute(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        self.shared
            .block_on("postgres call", self.call(key, op, now)?)
    }

    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        let call = self.call(key, op, now);
        Box::pin(async move { self.shared.run_async("postgres call", call?).await })
    }
}
