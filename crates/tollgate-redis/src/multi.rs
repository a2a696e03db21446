//! Several keys, each with its own policy, decided all-or-nothing in one script call.

use crate::conn::{evalsha_cmd, protocol_error, redis_failure};
use crate::scripts;
use crate::store::{decision_from, integers, same_slot, RedisBackend, RedisStore};
use std::sync::Arc;
use tollgate::time::{Clock, Micros, SystemClock};
use tollgate::{Decision, Error};

/// One key of a multi-key call: the backend (policy) it is limited by, the user key, and
/// the cost.
///
/// ```
/// use tollgate::{Policy, Rate, store::Store};
/// use tollgate_redis::{KeyCheck, RedisStore};
/// let store = RedisStore::open("redis://127.0.0.1:6379/").unwrap();
/// let per_user = store.scope("user").bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
/// let check = KeyCheck::new(&per_user, "alice", 1);
/// # let _ = check;
/// ```
#[derive(Clone, Copy, Debug)]
pub struct KeyCheck<'a> {
    backend: &'a RedisBackend,
    key: &'a str,
    cost: u64,
}

impl<'a> KeyCheck<'a> {
    /// `cost` units of `key` under `backend`'s policy.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::Store};
    /// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// let global = store.scope("global").bind(&Policy::gcra(Rate::per_second(1000).unwrap()).unwrap()).unwrap();
    /// let check = tollgate_redis::KeyCheck::new(&global, "all", 1);
    /// # let _ = check;
    /// ```
    pub fn new(backend: &'a RedisBackend, key: &'a str, cost: u64) -> Self {
        KeyCheck { backend, key, cost }
    }
}

/// The outcome of a multi-key call.
///
/// ```
/// let d = tollgate_redis::MultiDecision { allowed: false, decisions: vec![] };
/// assert!(!d.allowed);
/// ```
#[must_use = "a MultiDecision says whether the request may proceed"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiDecision {
    /// Every key admitted its cost; for a check, every key was charged. When false,
    /// nothing was charged.
    pub allowed: bool,
    /// Each key's own decision, in call order: what that key alone would decide (its
    /// `allowed` may be true while the call was denied by another key).
    pub decisions: Vec<Decision>,
}

impl MultiDecision {
    /// The first key (in call order) that denied, with the longest `retry_after` among the
    /// denials: the key to report, and how long to wait before every key admits.
    ///
    /// ```
    /// use tollgate::Decision;
    /// let d = tollgate_redis::MultiDecision {
    ///     allowed: false,
    ///     decisions: vec![
    ///         Decision::from_parts(true, 5, 4, 0, 200_000, None),
    ///         Decision::from_parts(false, 1, 0, 900_000, 900_000, Some(0)),
    ///     ],
    /// };
    /// assert_eq!(d.binding().unwrap().0, 1);
    /// ```
    pub fn binding(&self) -> Option<(usize, &Decision)> {
        let mut best: Option<(usize, &Decision)> = None;
        for (i, d) in self.decisions.iter().enumerate() {
            if !d.allowed && best.is_none_or(|(_, b)| d.retry_after > b.retry_after) {
                best = Some((i, d));
            }
        }
        best
    }
}

struct Prepared {
    keys: Vec<String>,
    args: Vec<String>,
    count: usize,
}

impl RedisStore {
    fn prepare_many(
        &self,
        checks: &[KeyCheck<'_>],
        charge: bool,
        now: Micros,
    ) -> Result<Prepared, Error> {
        if checks.is_empty() {
            return Err(Error::InvalidKey {
                reason: "a multi-key call needs at least one key".into(),
            });
        }
        let mut keys = Vec::with_capacity(checks.len());
        let mut args = vec![
            if charge { "c" } else { "p" }.to_string(),
            self.now_arg(now),
            self.margin_arg().to_string(),
        ];
        for check in checks {
            let inner = check.backend.inner();
            if !Arc::ptr_eq(inner.store.shared(), self.shared()) {
                return Err(Error::InvalidKey {
                    reason: "every backend of a multi-key call must come from this store".into(),
                });
            }
            check.backend.check_cost(check.cost)?;
            let key = check.backend.redis_key(check.key)?;
            if keys.contains(&key) {
                return Err(Error::InvalidKey {
                    reason: format!("key {key:?} appears twice in one multi-key call"),
                });
            }
            keys.push(key);
            args.push(inner.algorithm.name().to_string());
            args.push(check.cost.to_string());
            args.extend(inner.params.iter().cloned());
        }
        if self.is_cluster() {
            same_slot(&keys)?;
        }
        Ok(Prepared {
            keys,
            args,
            count: checks.len(),
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
    pub fn check_all(&self, checks: &[KeyCheck<'_>]) -> Result<MultiDecision, Error> {
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
        checks: &[KeyCheck<'_>],
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let prepared = self.prepare_many(checks, true, now)?;
        let shared = Arc::clone(self.shared());
        self.shared().block_on(run_many(shared, prepared))
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
    pub fn peek_all(&self, checks: &[KeyCheck<'_>]) -> Result<MultiDecision, Error> {
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
        checks: &[KeyCheck<'_>],
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let prepared = self.prepare_many(checks, false, now)?;
        let shared = Arc::clone(self.shared());
        self.shared().block_on(run_many(shared, prepared))
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
    pub async fn check_all_async(&self, checks: &[KeyCheck<'_>]) -> Result<MultiDecision, Error> {
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
        checks: &[KeyCheck<'_>],
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let prepared = self.prepare_many(checks, true, now)?;
        let shared = Arc::clone(self.shared());
        self.shared().spawn(run_many(shared, prepared)).await
    }
}

async fn run_many(
    shared: Arc<crate::conn::Shared>,
    prepared: Prepared,
) -> Result<MultiDecision, Error> {
    let mut conn = shared.conn().await?;
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
    Ok(MultiDecision {
        allowed: fields[0] == 1,
        decisions,
    })
}
