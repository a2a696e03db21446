//! Multi-key calls on SQLite: every key of a call read, decided and written in one
//! `BEGIN IMMEDIATE` transaction (a read transaction for a peek).

use super::*;

/// A multi-key call checked and ready for the database.
struct PreparedMulti {
    /// (stored key, engine, cost), in call order.
    keys: Vec<(String, Arc<Engine>, u64)>,
}

impl SqliteStore {
    fn prepare_many(&self, checks: &[KeyCheck<'_, SqliteBackend>]) -> Result<PreparedMulti, Error> {
        let mut keys = Vec::with_capacity(checks.len());
        for check in checks {
            if !Arc::ptr_eq(&check.backend().shared, &self.shared) {
                return Err(Error::InvalidKey {
                    reason: "every backend of a multi-key call must come from this store".into(),
                });
            }
            check.backend().engine.validate(Op::Check(check.cost()))?;
            keys.push((
                format!("{}{}", check.backend().prefix, check.key()),
                check.backend().engine.clone(),
                check.cost(),
            ));
        }
        let stored: Vec<String> = keys.iter().map(|k| k.0.clone()).collect();
        check_keys(&stored)?;
        Ok(PreparedMulti { keys })
    }

    /// Runs a prepared multi-key call: a check in one `BEGIN IMMEDIATE` transaction (read
    /// every key, decide every key without writing, then write every key charged if all
    /// admit, else settled), a peek in one read transaction (one snapshot, no lock).
    fn run_many(
        shared: &Shared,
        prepared: &PreparedMulti,
        charge: bool,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let sql = &shared.sql;
        let sweep = charge
            && shared.writes.fetch_add(1, Ordering::Relaxed) % shared.sweep_every
                == shared.sweep_every - 1;
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
                let state = read_state(&tx, &sql.select, key)?;
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
                        let Some(next) = next else { continue };
                        let horizon = engine.horizon(next);
                        if horizon <= now {
                            tx.prepare_cached(&sql.delete)?.execute(params![key])?;
                        } else {
                            tx.prepare_cached(&sql.upsert)?.execute(params![
                                key,
                                encode_blob(next),
                                to_i64(horizon)
                            ])?;
                        }
                    }
                    if sweep {
                        tx.prepare_cached(&sql.sweep)?
                            .execute(params![to_i64(now), to_i64(shared.sweep_batch)])?;
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

    pub(crate) fn many(
        &self,
        checks: &[KeyCheck<'_, SqliteBackend>],
        charge: bool,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let prepared = self.prepare_many(checks)?;
        Self::run_many(&self.shared, &prepared, charge, now)
    }

    pub(crate) async fn many_async(
        &self,
        checks: &[KeyCheck<'_, SqliteBackend>],
        charge: bool,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let prepared = self.prepare_many(checks)?;
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let shared = self.shared.clone();
                handle
                    .spawn_blocking(move || Self::run_many(&shared, &prepared, charge, now))
                    .await
                    .map_err(|e| sqlite_error("the blocking task failed", e))?
            }
            Err(_) => Self::run_many(&self.shared, &prepared, charge, now),
        }
    }

    /// Decides every check together at the system clock's time and charges all of them or
    /// none: one `BEGIN IMMEDIATE` transaction, so no other call (of any process) sees or
    /// changes the keys in between. Each check has its own policy (backend) and cost; a
    /// denial charges nothing anywhere (a token bucket still keeps its refill, as a
    /// single-key denial does). See [`MultiDecision`] for the result.
    ///
    /// Errors before touching the database: no check (`Error::InvalidKey`), one stored key
    /// twice (`Error::InvalidKey`; two policies of one algorithm store a user key under the
    /// same name, so give their keys distinct prefixes), a cost of 0 (`Error::InvalidCost`)
    /// or above a policy's capacity (`Error::CostExceedsCapacity`), a backend of another
    /// store (`Error::InvalidKey`).
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::Store};
    /// use tollgate_sql::{KeyCheck, SqliteStore};
    /// let store = SqliteStore::in_memory().unwrap();
    /// store.ensure_schema().unwrap();
    /// let user = store.bind(&Policy::gcra(Rate::per_minute(5).unwrap()).unwrap()).unwrap();
    /// let ip = store.bind(&Policy::token_bucket(20, 1, std::time::Duration::from_secs(60)).unwrap()).unwrap();
    /// let d = store.check_all(&[KeyCheck::new(&user, "user:alice", 1), KeyCheck::new(&ip, "ip:203.0.113.7", 1)]).unwrap();
    /// assert!(d.allowed);
    /// assert_eq!(d.decisions[0].remaining, 4);
    /// ```
    pub fn check_all(
        &self,
        checks: &[KeyCheck<'_, SqliteBackend>],
    ) -> Result<MultiDecision, Error> {
        self.check_all_at(checks, SystemClock.now())
    }

    /// [`check_all`](Self::check_all) at `now` (µs), the limiter's clock.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::Store};
    /// use tollgate_sql::{KeyCheck, SqliteStore};
    /// let store = SqliteStore::in_memory().unwrap();
    /// store.ensure_schema().unwrap();
    /// let user = store.bind(&Policy::gcra(Rate::per_minute(5).unwrap()).unwrap()).unwrap();
    /// let global = store.bind(&Policy::fixed_window(Rate::per_minute(1).unwrap()).unwrap()).unwrap();
    /// let t = 1_000_000;
    /// assert!(store.check_all_at(&[KeyCheck::new(&user, "alice", 1), KeyCheck::new(&global, "all", 1)], t).unwrap().allowed);
    /// // the global window is full: denied, and alice is not charged
    /// let d = store.check_all_at(&[KeyCheck::new(&user, "alice", 1), KeyCheck::new(&global, "all", 1)], t).unwrap();
    /// assert_eq!((d.allowed, d.binding().map(|(key, _)| key)), (false, Some(1)));
    /// assert_eq!(store.peek_all_at(&[KeyCheck::new(&user, "alice", 1)], t).unwrap().decisions[0].remaining, 3);
    /// ```
    pub fn check_all_at(
        &self,
        checks: &[KeyCheck<'_, SqliteBackend>],
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        self.many(checks, true, now)
    }

    /// The decision [`check_all`](Self::check_all) would return, charging nothing (one
    /// read transaction: a consistent snapshot of every key, no lock).
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::Store};
    /// use tollgate_sql::{KeyCheck, SqliteStore};
    /// let store = SqliteStore::in_memory().unwrap();
    /// store.ensure_schema().unwrap();
    /// let user = store.bind(&Policy::gcra(Rate::per_minute(5).unwrap()).unwrap()).unwrap();
    /// let d = store.peek_all(&[KeyCheck::new(&user, "alice", 1)]).unwrap();
    /// assert!(d.allowed);
    /// assert_eq!(store.row_count().unwrap(), 0);
    /// ```
    pub fn peek_all(&self, checks: &[KeyCheck<'_, SqliteBackend>]) -> Result<MultiDecision, Error> {
        self.peek_all_at(checks, SystemClock.now())
    }

    /// [`peek_all`](Self::peek_all) at `now` (µs).
    ///
    /// ```
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_sql::{KeyCheck, SqliteStore};
    /// # let store = SqliteStore::in_memory().unwrap();
    /// # store.ensure_schema().unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_minute(5).unwrap()).unwrap()).unwrap();
    /// let d = store.peek_all_at(&[KeyCheck::new(&user, "alice", 5)], 1_000_000).unwrap();
    /// assert_eq!(d.decisions[0].remaining, 0);
    /// ```
    pub fn peek_all_at(
        &self,
        checks: &[KeyCheck<'_, SqliteBackend>],
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        self.many(checks, false, now)
    }

    /// Async [`check_all`](Self::check_all): runs on tokio's blocking pool when inside a
    /// tokio runtime (the executor never waits on the database lock), else inline.
    ///
    /// ```
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_sql::{KeyCheck, SqliteStore};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let store = SqliteStore::in_memory().unwrap();
    /// # store.ensure_schema().unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_minute(5).unwrap()).unwrap()).unwrap();
    /// let d = store.check_all_async(&[KeyCheck::new(&user, "alice", 1)]).await.unwrap();
    /// assert!(d.allowed);
    /// # });
    /// ```
    pub async fn check_all_async(
        &self,
        checks: &[KeyCheck<'_, SqliteBackend>],
    ) -> Result<MultiDecision, Error> {
        self.many_async(checks, true, SystemClock.now()).await
    }

    /// Async [`check_all_at`](Self::check_all_at).
    ///
    /// ```
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_sql::{KeyCheck, SqliteStore};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let store = SqliteStore::in_memory().unwrap();
    /// # store.ensure_schema().unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_minute(5).unwrap()).unwrap()).unwrap();
    /// let d = store.check_all_at_async(&[KeyCheck::new(&user, "alice", 1)], 5).await.unwrap();
    /// assert_eq!(d.decisions[0].remaining, 4);
    /// # });
    /// ```
    pub async fn check_all_at_async(
        &self,
        checks: &[KeyCheck<'_, SqliteBackend>],
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        self.many_async(checks, true, now).await
    }

    /// Async [`peek_all`](Self::peek_all).
    ///
    /// ```
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_sql::{KeyCheck, SqliteStore};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let store = SqliteStore::in_memory().unwrap();
    /// # store.ensure_schema().unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_minute(5).unwrap()).unwrap()).unwrap();
    /// assert!(store.peek_all_async(&[KeyCheck::new(&user, "alice", 1)]).await.unwrap().allowed);
    /// # });
    /// ```
    pub async fn peek_all_async(
        &self,
        checks: &[KeyCheck<'_, SqliteBackend>],
    ) -> Result<MultiDecision, Error> {
        self.many_async(checks, false, SystemClock.now()).await
    }

    /// Async [`peek_all_at`](Self::peek_all_at).
    ///
    /// ```
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_sql::{KeyCheck, SqliteStore};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let store = SqliteStore::in_memory().unwrap();
    /// # store.ensure_schema().unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_minute(5).unwrap()).unwrap()).unwrap();
    /// let d = store.peek_all_at_async(&[KeyCheck::new(&user, "alice", 1)], 5).await.unwrap();
    /// assert_eq!(d.decisions[0].remaining, 4);
    /// # });
    /// ```
    pub async fn peek_all_at_async(
        &self,
        checks: &[KeyCheck<'_, SqliteBackend>],
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        self.many_async(checks, false, now).await
    }
}
