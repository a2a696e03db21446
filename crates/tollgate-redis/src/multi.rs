//! Several keys, each with its own policy, decided all-or-nothing in one script call: the
//! Redis implementation of [`tollgate::store::multi::MultiBackend`] (one round trip).

use crate::conn::{evalsha_cmd, protocol_error, redis_failure};
use crate::scripts;
use crate::store::{
    decision_from, integers, late_error, same_slot, RedisBackend, RedisStore, LATE,
};
use std::sync::Arc;
use std::time::Instant;
use tollgate::time::{Clock, Micros, SystemClock};
use tollgate::Error;

use tollgate::store::multi::{first_backend, MultiBackend, MultiOp};
pub use tollgate::store::multi::{KeyCheck, MultiDecision};

struct Prepared {
    keys: Vec<String>,
    /// Every argument; the deadline (ARGV[4]) is filled in when the call is sent.
    args: Vec<String>,
    count: usize,
    started: Instant,
}

impl RedisStore {
    fn prepare_many(
        &self,
        checks: &[KeyCheck<'_, RedisBackend>],
        charge: bool,
        now: Micros,
    ) -> Result<Prepared, Error> {
        first_backend(checks)?;
        let mut keys = Vec::with_capacity(checks.len());
        let mut args = vec![
            if charge { "c" } else { "p" }.to_string(),
            self.now_arg(now),
            self.margin_arg().to_string(),
            String::new(),
        ];
        for check in checks {
            let inner = check.backend().inner();
            if !Arc::ptr_eq(inner.store.shared(), self.shared()) {
                return Err(Error::InvalidKey {
                    reason: "every backend of a multi-key call must come from this store".into(),
                });
            }
            check.backend().check_cost(check.cost())?;
            let key = check.backend().redis_key(check.key())?;
            if keys.contains(&key) {
                return Err(Error::InvalidKey {
                    reason: format!("key {key:?} appears twice in one multi-key call"),
                });
            }
            keys.push(key);
            args.push(inner.algorithm.name().to_string());
            args.push(check.cost().to_string());
            args.extend(inner.params.iter().cloned());
        }
        if self.is_cluster() {
            same_slot(&keys)?;
        }
        Ok(Prepared {
            keys,
            args,
            count: checks.len(),
            started: Instant::now(),
        })
    }

    /// Decides every check together and charges all of them or none (a denial charges
    /// nothing). Uses the server clock, or with [`crate::TimeSource::Caller`] the system
    /// clock (see [`check_all_at`](Self::check_all_at)). On a Cluster every key must be in
    /// one slot: start the user keys with a common hash tag (`"{tenant-7}:…"`), else the call
    /// fails with `Error::InvalidKey` before reaching Redis.
    ///
    /// ```no_run
    /// use tollgate::{Policy, Rate, store::Store};
    /// use tollgate_redis::{KeyCheck, RedisStore};
    /// let store = RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// let user = store.scope("user").bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// let ip = store.scope("ip").bind(&Policy::gcra(Rate::per_second(20).unwrap()).unwrap()).unwrap();
    /// let d = store.check_all(&[KeyCheck::new(&user, "alice", 1), KeyCheck::new(&ip, "203.0.113.7", 1)]).unwrap();
    /// assert!(d.allowed);
    /// ```
    pub fn check_all(&self, checks: &[KeyCheck<'_, RedisBackend>]) -> Result<MultiDecision, Error> {
        self.check_all_at(checks, SystemClock.now())
    }

    /// [`check_all`](Self::check_all) at the caller's time `now` (µs), used only with
    /// [`crate::TimeSource::Caller`].
    ///
    /// ```no_run
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_redis::{KeyCheck, RedisStore};
    /// # let store = RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// let d = store.check_all_at(&[KeyCheck::new(&user, "alice", 1)], 1_000_000).unwrap();
    /// # let _ = d;
    /// ```
    pub fn check_all_at(
        &self,
        checks: &[KeyCheck<'_, RedisBackend>],
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        self.run_all(checks, MultiOp::Check, now)
    }

    /// The decision [`check_all`](Self::check_all) would return, charging nothing.
    ///
    /// ```no_run
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_redis::{KeyCheck, RedisStore};
    /// # let store = RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// let d = store.peek_all(&[KeyCheck::new(&user, "alice", 1)]).unwrap();
    /// # let _ = d;
    /// ```
    pub fn peek_all(&self, checks: &[KeyCheck<'_, RedisBackend>]) -> Result<MultiDecision, Error> {
        self.peek_all_at(checks, SystemClock.now())
    }

    /// [`peek_all`](Self::peek_all) at the caller's time `now` (µs).
    ///
    /// ```no_run
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_redis::{KeyCheck, RedisStore};
    /// # let store = RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// let d = store.peek_all_at(&[KeyCheck::new(&user, "alice", 1)], 1_000_000).unwrap();
    /// # let _ = d;
    /// ```
    pub fn peek_all_at(
        &self,
        checks: &[KeyCheck<'_, RedisBackend>],
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        self.run_all(checks, MultiOp::Peek, now)
    }

    /// Async [`check_all`](Self::check_all).
    ///
    /// ```no_run
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_redis::{KeyCheck, RedisStore};
    /// # async fn demo() {
    /// # let store = RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// let d = store.check_all_async(&[KeyCheck::new(&user, "alice", 1)]).await.unwrap();
    /// # let _ = d;
    /// # }
    /// ```
    pub async fn check_all_async(
        &self,
        checks: &[KeyCheck<'_, RedisBackend>],
    ) -> Result<MultiDecision, Error> {
        self.check_all_at_async(checks, SystemClock.now()).await
    }

    /// Async [`check_all_at`](Self::check_all_at).
    ///
    /// ```no_run
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # use tollgate_redis::{KeyCheck, RedisStore};
    /// # async fn demo() {
    /// # let store = RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// # let user = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// let d = store.check_all_at_async(&[KeyCheck::new(&user, "alice", 1)], 5).await.unwrap();
    /// # let _ = d;
    /// # }
    /// ```
    pub async fn check_all_at_async(
        &self,
        checks: &[KeyCheck<'_, RedisBackend>],
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        self.run_all_async(checks, MultiOp::Check, now).await
    }
}

impl RedisStore {
    fn run_all(
        &self,
        checks: &[KeyCheck<'_, RedisBackend>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let prepared = self.prepare_many(checks, op == MultiOp::Check, now)?;
        let shared = Arc::clone(self.shared());
        self.shared().block_on(run_many(shared, prepared))
    }

    async fn run_all_async(
        &self,
        checks: &[KeyCheck<'_, RedisBackend>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let prepared = self.prepare_many(checks, op == MultiOp::Check, now)?;
        let shared = Arc::clone(self.shared());
        self.shared().spawn(run_many(shared, prepared)).await
    }
}

/// One `EVALSHA` of `lua/multi.lua` for the whole call (one round trip); every backend must
/// come from one [`RedisStore`], and on a Cluster every key must be in one slot.
impl MultiBackend for RedisBackend {
    fn execute_all(
        items: &[KeyCheck<'_, Self>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        first_backend(items)?.inner().store.run_all(items, op, now)
    }

    fn execute_all_async<'a>(
        items: &'a [KeyCheck<'a, Self>],
        op: MultiOp,
        now: Micros,
    ) -> futures_util::future::BoxFuture<'a, Result<MultiDecision, Error>> {
        Box::pin(async move {
            let store = &first_backend(items)?.inner().store;
            store.run_all_async(items, op, now).await
        })
    }
}

async fn run_many(
    shared: Arc<crate::conn::Shared>,
    mut prepared: Prepared,
) -> Result<MultiDecision, Error> {
    let mut conn = shared.conn_for_call().await?;
    prepared.args[3] = shared.deadline_arg(prepared.started);
    let script = scripts::multi_script();
    let cmd = evalsha_cmd(
        script,
        &prepared.keys,
        prepared.args.iter().map(String::as_str),
    );
    let reply = conn
        .evalsha(script, &cmd)
        .await
        .map_err(|e| redis_failure("script call failed", &e))?;
    if reply == redis::Value::Int(LATE) {
        return Err(late_error(shared.timeout));
    }
    let fields = integers(&reply)?;
    if fields.len() != 1 + 6 * prepared.count {
        return Err(protocol_error(format!(
            "malformed multi-key reply {fields:?}"
        )));
    }
    let decisions = fields[1..]
        .chunks(6)
        .map(decision_from)
        .collect::<Result<Vec<_>, _>>()?;
    let mut outcome = MultiDecision::from_decisions(decisions);
    outcome.allowed = fields[0] == 1;
    Ok(outcome)
}
