//! Several keys, each with its own policy, decided all-or-nothing in one round trip: the
//! function `<table>_check_all` (source: `sql/check_all.sql`).

use super::{describe, join, pg_error, to_i64, PgBackend, PgStore, Shared, CHECK_ALL};
use crate::multi::{check_keys, KeyCheck, MultiDecision};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tollgate::store::Op;
use tollgate::time::{Clock, Micros, SystemClock};
use tollgate::{Decision, Error};

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

impl PgStore {
    fn prepare_many(&self, checks: &[KeyCheck<'_, PgBackend>]) -> Result<PreparedMulti, Error> {
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
            if !Arc::ptr_eq(&backend.shared, &self.shared) {
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
        Ok(p)
    }

    /// The SQL of a multi-key call.
    fn check_all_statement(&self) -> String {
        format!(
            "SELECT * FROM {}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            self.shared.table.quoted(CHECK_ALL)
        )
    }

    async fn run_many(
        shared: Arc<Shared>,
        statement: String,
        prepared: PreparedMulti,
        charge: bool,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let mut conn = shared.get().await?;
        let sweep: i32 = if charge
            && shared.calls.fetch_add(1, Ordering::Relaxed) % shared.sweep_every
                == shared.sweep_every - 1
        {
            shared.sweep_batch
        } else {
            0
        };
        let stmt = conn
            .statement(&statement)
            .await
            .map_err(|e| pg_error("prepare", describe(&e)))?;
        let op: i32 = if charge { 0 } else { 1 };
        let rows = conn
            .client
            .query(
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
                ],
            )
            .await
            .map_err(|e| pg_error("check_all", describe(&e)))?;
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

    pub(crate) fn many(
        &self,
        checks: &[KeyCheck<'_, PgBackend>],
        charge: bool,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let prepared = self.prepare_many(checks)?;
        let fut = Self::run_many(
            self.shared.clone(),
            self.check_all_statement(),
            prepared,
            charge,
            now,
        );
        self.shared.block_on("postgres multi-key call", fut)
    }

    pub(crate) async fn many_async(
        &self,
        checks: &[KeyCheck<'_, PgBackend>],
        charge: bool,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let prepared = self.prepare_many(checks)?;
        let fut = Self::run_many(
            self.shared.clone(),
            self.check_all_statement(),
            prepared,
            charge,
            now,
        );
        join(
            "postgres multi-key call",
            self.shared.spawn("postgres multi-key call", fut),
        )
        .await
    }

    /// Decides every check together and charges all of them or none, in one round trip:
    /// the function `<table>_check_all` locks every key's row in one global order (sorted
    /// keys, so calls on overlapping key sets never deadlock), decides each key with its
    /// algorithm's code at one time without writing, then writes every key (charged) only if
    /// all admit. A denial charges nothing anywhere (a token bucket still keeps its refill,
    /// as a single-key denial does). See [`MultiDecision`] for the result.
    ///
    /// Time: the database clock, or with [`caller_time`](crate::PgStoreBuilder::caller_time)
    /// the system clock (see [`check_all_at`](Self::check_all_at)).
    ///
    /// Errors before reaching the database: no check (`Error::InvalidKey`), one stored key
    /// twice (`Error::InvalidKey`; two policies of one algorithm store a user key under the
    /// same name, so give their keys distinct prefixes), a cost of 0 (`Error::InvalidCost`)
    /// or above a policy's capacity (`Error::CostExceedsCapacity`), a backend of another
    /// store (`Error::InvalidKey`).
    ///
    /// ```no_run
    /// use tollgate::{Policy, Rate, store::Store};
    /// use tollgate_sql::{KeyCheck, PgStore};
    /// let store = PgStore::connect("postgres://postgres@127.0.0.1/postgres").unwrap();
    /// store.migrate().unwrap();
    /// let user = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// let global = store.bind(&Policy::sliding_window(Rate::per_second(1000).unwrap()).unwrap()).unwrap();
    /// let d = store.check_all(&[KeyCheck::new(&user, "user:alice", 1), KeyCheck::new(&global, "all", 1)]).unwrap();
    /// if let Some((key, denial)) = d.binding() {
    ///     println!("denied by key {key}, retry in {:?}", denial.retry_after);
    /// }
    /// ```
    pub fn check_all(&self, checks: &[KeyCheck<'_, PgBackend>]) -> Result<MultiDecision, Error> {
        self.check_all_at(checks, SystemClock.now())
    }

    /// [`check_all`](Self::check_all) at the caller's time `now` (µs), used only with
    /// [`caller_time`](crate::PgStoreBuilder::caller_time) (else the database clock).
    ///
    /// ```no_run
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_sql::{KeyCheck, PgStore};
    /// let store = PgStore::builder("postgres://postgres@127.0.0.1/postgres").caller_time(true).connect().unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// let d = store.check_all_at(&[KeyCheck::new(&user, "alice", 1)], 1_000_000).unwrap();
    /// # let _ = d;
    /// ```
    pub fn check_all_at(
        &self,
        checks: &[KeyCheck<'_, PgBackend>],
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        self.many(checks, true, now)
    }

    /// The decision [`check_all`](Self::check_all) would return, charging nothing and
    /// locking nothing (one round trip; each key's row is read as last committed, so a
    /// check running at the same time may show on some keys and not yet on others).
    ///
    /// ```no_run
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_sql::{KeyCheck, PgStore};
    /// # let store = PgStore::connect("postgres://postgres@127.0.0.1/postgres").unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// let d = store.peek_all(&[KeyCheck::new(&user, "alice", 1)]).unwrap();
    /// # let _ = d;
    /// ```
    pub fn peek_all(&self, checks: &[KeyCheck<'_, PgBackend>]) -> Result<MultiDecision, Error> {
        self.peek_all_at(checks, SystemClock.now())
    }

    /// [`peek_all`](Self::peek_all) at the caller's time `now` (µs).
    ///
    /// ```no_run
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_sql::{KeyCheck, PgStore};
    /// # let store = PgStore::connect("postgres://postgres@127.0.0.1/postgres").unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// let d = store.peek_all_at(&[KeyCheck::new(&user, "alice", 1)], 1_000_000).unwrap();
    /// # let _ = d;
    /// ```
    pub fn peek_all_at(
        &self,
        checks: &[KeyCheck<'_, PgBackend>],
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        self.many(checks, false, now)
    }

    /// Async [`check_all`](Self::check_all) (any executor).
    ///
    /// ```no_run
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_sql::{KeyCheck, PgStore};
    /// # async fn demo() {
    /// # let store = PgStore::connect("postgres://postgres@127.0.0.1/postgres").unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// let d = store.check_all_async(&[KeyCheck::new(&user, "alice", 1)]).await.unwrap();
    /// # let _ = d;
    /// # }
    /// ```
    pub async fn check_all_async(
        &self,
        checks: &[KeyCheck<'_, PgBackend>],
    ) -> Result<MultiDecision, Error> {
        self.many_async(checks, true, SystemClock.now()).await
    }

    /// Async [`check_all_at`](Self::check_all_at).
    ///
    /// ```no_run
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_sql::{KeyCheck, PgStore};
    /// # async fn demo() {
    /// # let store = PgStore::connect("postgres://postgres@127.0.0.1/postgres").unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// let d = store.check_all_at_async(&[KeyCheck::new(&user, "alice", 1)], 5).await.unwrap();
    /// # let _ = d;
    /// # }
    /// ```
    pub async fn check_all_at_async(
        &self,
        checks: &[KeyCheck<'_, PgBackend>],
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        self.many_async(checks, true, now).await
    }

    /// Async [`peek_all`](Self::peek_all).
    ///
    /// ```no_run
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_sql::{KeyCheck, PgStore};
    /// # async fn demo() {
    /// # let store = PgStore::connect("postgres://postgres@127.0.0.1/postgres").unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// let d = store.peek_all_async(&[KeyCheck::new(&user, "alice", 1)]).await.unwrap();
    /// # let _ = d;
    /// # }
    /// ```
    pub async fn peek_all_async(
        &self,
        checks: &[KeyCheck<'_, PgBackend>],
    ) -> Result<MultiDecision, Error> {
        self.many_async(checks, false, SystemClock.now()).await
    }

    /// Async [`peek_all_at`](Self::peek_all_at).
    ///
    /// ```no_run
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_sql::{KeyCheck, PgStore};
    /// # async fn demo() {
    /// # let store = PgStore::connect("postgres://postgres@127.0.0.1/postgres").unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// let d = store.peek_all_at_async(&[KeyCheck::new(&user, "alice", 1)], 5).await.unwrap();
    /// # let _ = d;
    /// # }
    /// ```
    pub async fn peek_all_at_async(
        &self,
        checks: &[KeyCheck<'_, PgBackend>],
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        self.many_async(checks, false, now).await
    }
}
