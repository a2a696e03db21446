//! [`RedisBackend`]: a [`RedisStore`] bound to one policy — one script call per operation.

use super::reply::{decision_from, integers};
use super::RedisStore;
use crate::cache::DenialCache;
use crate::conn::{evalsha_cmd, redis_failure, store_error, Shared};
use crate::scripts;
use futures_util::future::BoxFuture;
use redis::Value;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::keys::KeyBuilder;
use tollgate::store::{Backend, Op};
use tollgate::time::Micros;
use tollgate::{Algorithm, Decision, Error, StoreError};

/// A [`RedisStore`] bound to one policy: the `Backend` of a `tollgate::Limiter`. Cloning is
/// cheap.
///
/// ```no_run
/// use tollgate::{Policy, Rate, store::{Backend, Op, Store}};
/// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
/// let backend = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
/// let d = backend.execute("k", Op::Check(1), 0).unwrap().unwrap();
/// assert!(d.allowed);
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    pub(super) inner: Arc<BackendInner>,
}

pub(crate) struct BackendInner {
    pub(crate) store: RedisStore,
    pub(crate) algorithm: Algorithm,
    pub(super) keys: KeyBuilder,
    /// `n` then every rate's parameters, as script arguments.
    pub(crate) params: Vec<String>,
    pub(super) capacities: Vec<u64>,
    pub(super) cache: Option<DenialCache>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("algorithm", &self.inner.algorithm)
            .field("namespace", &self.inner.keys.namespace())
            .finish_non_exhaustive()
    }
}

/// A prepared call, owned, so it can run on the store's runtime: the script's arguments
/// before (`head`) and after (`params`) the deadline, which is set when the call is sent.
struct Call {
    key: String,
    head: [String; 4],
    started: Instant,
    backend: Arc<BackendInner>,
    wants_decision: bool,
}

impl RedisBackend {
    /// The Redis key that holds `user_key`'s state (namespace, scope, optional HMAC).
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::Store};
    /// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// let backend = store.scope("api").bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// assert_eq!(backend.redis_key("alice").unwrap(), "tollgate:api:alice");
    /// assert_eq!(backend.redis_key("{t1}:alice").unwrap(), "tollgate:api:{t1}:alice");
    /// ```
    pub fn redis_key(&self, user_key: &str) -> Result<String, Error> {
        self.inner.keys.build(user_key)
    }

    /// The store this backend belongs to.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::Store};
    /// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// let backend = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// assert!(!backend.store().is_cluster());
    /// ```
    pub fn store(&self) -> &RedisStore {
        &self.inner.store
    }

    /// The number of keys currently held by the local denial cache (0 when disabled).
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::Store};
    /// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// let backend = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// assert_eq!(backend.cached_denials(), 0);
    /// ```
    pub fn cached_denials(&self) -> usize {
        self.inner.cache.as_ref().map_or(0, DenialCache::len)
    }

    pub(crate) fn inner(&self) -> &BackendInner {
        &self.inner
    }

    /// Checks a cost against every rate's capacity, in policy order, like the algorithms.
    pub(crate) fn check_cost(&self, cost: u64) -> Result<(), Error> {
        if cost == 0 {
            return Err(Error::InvalidCost);
        }
        if let Some(&capacity) = self.inner.capacities.iter().find(|&&c| cost > c) {
            return Err(Error::CostExceedsCapacity { cost, capacity });
        }
        Ok(())
    }

    /// Validates and prepares `op`, or answers it from the denial cache.
    fn prepare(&self, key: &str, op: Op, now: Micros) -> Result<Result<Call, Decision>, Error> {
        let inner = &self.inner;
        let (code, amount) = match op {
            Op::Check(cost) => {
                self.check_cost(cost)?;
                ("c", cost)
            }
            Op::Peek(cost) => {
                self.check_cost(cost)?;
                ("p", cost)
            }
            Op::Refund(0) => return Err(Error::InvalidCost),
            Op::Refund(amount) => ("r", amount),
            Op::Reset => ("x", 0),
            _ => return Err(store_error(format!("unsupported operation {op:?}"))),
        };
        let redis_key = inner.keys.build(key)?;
        if let Some(cache) = &inner.cache {
            match op {
                Op::Check(cost) | Op::Peek(cost) => {
                    if let Some(d) = cache.get(&redis_key, cost, inner.store.local_now(now)) {
                        return Ok(Err(d));
                    }
                }
                _ => cache.remove(&redis_key),
            }
        }
        let head = [
            code.to_string(),
            inner.store.now_arg(now),
            amount.to_string(),
            inner.store.margin_arg().to_string(),
        ];
        Ok(Ok(Call {
            key: redis_key,
            head,
            started: Instant::now(),
            backend: Arc::clone(inner),
            wants_decision: matches!(op, Op::Check(_) | Op::Peek(_)),
        }))
    }

    /// Records a decision in the denial cache.
    fn remember(&self, key: &str, op: Op, now: Micros, decision: &Decision) {
        if let (Some(cache), Some(cost)) = (&self.inner.cache, op.cost()) {
            if decision.allowed {
                cache.remove(key);
            } else {
                cache.insert(key, cost, decision, self.inner.store.local_now(now));
            }
        }
    }

    fn finish(
        &self,
        op: Op,
        now: Micros,
        key: &str,
        reply: Value,
        wants_decision: bool,
    ) -> Result<Option<Decision>, Error> {
        if reply == Value::Int(LATE) {
            return Err(late_error(self.inner.store.shared().timeout));
        }
        if !wants_decision {
            return Ok(None);
        }
        let fields = integers(&reply)?;
        let decision = decision_from(&fields)?;
        self.remember(key, op, now, &decision);
        Ok(Some(decision))
    }
}

/// The reply of a script that reached Redis after its call's deadline and changed nothing
/// (`LATE` in `lua/prelude.lua`).
pub(crate) const LATE: i64 = -1;

/// The error of a call whose script came too late to run: a timeout, like the client's own.
pub(crate) fn late_error(timeout: Duration) -> Error {
    Error::Store(StoreError::with_kind(
        "redis",
        tollgate::StoreErrorKind::Timeout,
        format!(
            "timed out: the call reached Redis more than {:?} (half the store timeout) after \
             it started, so it was not run and charged nothing",
            timeout / 2
        ),
    ))
}

/// The `EVALSHA` of `call` with its deadline argument.
fn call_cmd(call: &Call, script: &redis::Script, deadline: &str) -> redis::Cmd {
    evalsha_cmd(
        script,
        std::slice::from_ref(&call.key),
        call.head
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(deadline))
            .chain(call.backend.params.iter().map(String::as_str)),
    )
}

async fn run(shared: Arc<Shared>, call: Call) -> Result<(String, Value), Error> {
    let mut conn = shared.conn_for_call().await?;
    let deadline = shared.deadline_arg(call.started);
    let script = scripts::single_script(call.backend.algorithm);
    let cmd = call_cmd(&call, script, &deadline);
    let reply = conn
        .evalsha(script, &cmd)
        .await
        .map_err(|e| redis_failure("script call failed", &e))?;
    Ok((call.key, reply))
}

impl Backend for RedisBackend {
    fn execute(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        let call = match self.prepare(key, op, now)? {
            Ok(call) => call,
            Err(cached) => return Ok(Some(cached)),
        };
        let wants = call.wants_decision;
        let shared = self.inner.store.shared();
        // On the calling thread when it can (standalone): no hand-off to the runtime thread.
        let script = scripts::single_script(call.backend.algorithm);
        if let Some(reply) =
            shared.evalsha_blocking(script, call.started, |d| call_cmd(&call, script, d))
        {
            return self.finish(op, now, &call.key, reply?, wants);
        }
        let (redis_key, reply) = shared.block_on(run(Arc::clone(shared), call))?;
        self.finish(op, now, &redis_key, reply, wants)
    }

    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(async move {
            let call = match self.prepare(key, op, now)? {
                Ok(call) => call,
                Err(cached) => return Ok(Some(cached)),
            };
            let wants = call.wants_decision;
            let shared = Arc::clone(self.inner.store.shared());
            let (redis_key, reply) = self.inner.store.shared().spawn(run(shared, call)).await?;
            self.finish(op, now, &redis_key, reply, wants)
        })
    }
}
