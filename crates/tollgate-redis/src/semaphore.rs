//! [`RedisSemaphoreBackend`]: the leases of `tollgate::semaphore::Semaphore` on Redis, shared by
//! a fleet.
//!
//! One semaphore is seven keys with the hash tag `{<name>}` (one Cluster slot):
//! `<namespace>:sem:{<name>}:h` (holders: a sorted set of holder id → lease end),
//! `…:p` (permits per holder), `…:q` / `…:w` / `…:n` (the FIFO wait queue: ticket, end of the
//! queue place, permits asked for), `…:s` (the ticket counter) and `…:c` (the running count of
//! permits in use). Every operation is one Lua script (`lua/semaphore_*.lua`) that first drops
//! expired holders and waiters, then acts, then sets every key's TTL to the latest lease end:
//! nothing outlives the last holder. Each call is O(log n) in holders and waiters (no call
//! reads every holder): acquire + release pairs/s are flat from 10 to 20,000 live holders
//! (`cargo bench -p tollgate-redis --bench semaphore_holders`, figures in docs/semaphore.md).
//!
//! Every script call carries a deadline on Redis's clock (the call's start plus half the
//! store timeout, as for the rate-limit scripts): a call that reaches Redis later, queued
//! behind a stall while its caller was told it timed out, changes nothing.
//!
//! Time is the server's `TIME` by default (the store's [`TimeSource`](crate::TimeSource)).
//! Waiters poll with exponential backoff (1 → 50 ms, jittered) and never later than the
//! earliest lease end; their place in the queue keeps them first in line meanwhile.
//!
//! ```no_run
//! use std::time::Duration;
//! use tollgate::semaphore::Semaphore;
//! use tollgate_redis::{RedisSemaphoreBackend, RedisStore};
//!
//! let store = RedisStore::open("redis://127.0.0.1:6379/").unwrap();
//! let backend = RedisSemaphoreBackend::new(&store).unwrap();
//! let sem = Semaphore::builder("partner-api", 10)
//!     .lease(Duration::from_secs(30))
//!     .max_wait(Duration::from_secs(5))
//!     .build_on(backend.into_arc())
//!     .unwrap();
//! let permit = sem.acquire().unwrap(); // at most 10 holders in the whole fleet
//! // … call the partner API …
//! drop(permit);
//! ```

use crate::conn::Shared;
use crate::store::{integers, late_error, RedisBackend, LATE};
use crate::RedisStore;
use futures_util::future::BoxFuture;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tollgate::semaphore::{
    AcquireOutcome, ExtendOutcome, ReleaseOutcome, SemaphoreBackend, SemaphoreOp, SemaphoreReply,
    SemaphoreStatus,
};
use tollgate::store::Store;
use tollgate::{Error, Policy, Rate, StoreError};

macro_rules! semaphore_script {
    ($file:literal) => {
        concat!(
            include_str!("../lua/prelude.lua"),
            include_str!("../lua/semaphore_common.lua"),
            include_str!(concat!("../lua/", $file))
        )
    };
}

/// The Lua source of each semaphore operation (prelude + common + operation).
///
/// ```
/// let src = tollgate_redis::semaphore_script_source("acquire").unwrap();
/// assert!(src.contains("ZRANGEBYSCORE"));
/// assert!(tollgate_redis::semaphore_script_source("nope").is_none());
/// ```
pub fn semaphore_script_source(operation: &str) -> Option<&'static str> {
    Some(match operation {
        "acquire" => semaphore_script!("semaphore_acquire.lua"),
        "release" => semaphore_script!("semaphore_release.lua"),
        "extend" => semaphore_script!("semaphore_extend.lua"),
        "status" => semaphore_script!("semaphore_status.lua"),
        _ => return None,
    })
}

#[derive(Clone, Copy)]
enum Script {
    Acquire = 0,
    Release = 1,
    Extend = 2,
    Status = 3,
}

impl Script {
    fn get(self) -> &'static redis::Script {
        static SCRIPTS: [OnceLock<redis::Script>; 4] = [const { OnceLock::new() }; 4];
        let name = ["acquire", "release", "extend", "status"][self as usize];
        SCRIPTS[self as usize]
            .get_or_init(|| redis::Script::new(semaphore_script_source(name).unwrap_or_default()))
    }
}

/// Semaphore leases on a [`RedisStore`] (standalone or Cluster), for
/// [`tollgate::semaphore::Semaphore`]. Shares the store's connection, runtime, namespace,
/// key hashing, timeout and clock. The key layout (seven keys with the hash tag `{<name>}`)
/// is in `docs/semaphore.md`.
///
/// ```no_run
/// use tollgate::semaphore::Semaphore;
/// use tollgate_redis::{RedisSemaphoreBackend, RedisStore};
/// let backend = RedisSemaphoreBackend::new(&RedisStore::open("redis://127.0.0.1:6379/").unwrap()).unwrap();
/// let sem = Semaphore::builder("reports", 2).build_on(backend.into_arc()).unwrap();
/// assert!(sem.try_acquire().unwrap().is_some());
/// ```
#[derive(Clone, Debug)]
pub struct RedisSemaphoreBackend {
    store: RedisStore,
    /// Builds keys under `<namespace>:sem` with the store's hashing and length rules.
    keys: RedisBackend,
}

fn redis_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::new("redis", e.to_string())
}

fn to_store_error(e: Error) -> StoreError {
    match e {
        Error::Store(s) => s,
        other => redis_error(other),
    }
}

struct Call {
    script: Script,
    keys: Vec<String>,
    args: Vec<String>,
    /// When the caller started the call: its deadline on Redis's clock is half the store
    /// timeout later (as for the rate-limit scripts).
    started: Instant,
}

async fn run(shared: Arc<Shared>, call: Call) -> Result<Vec<i64>, Error> {
    let mut conn = shared.conn_for_call().await?;
    let mut invocation = call.script.get().prepare_invoke();
    for k in &call.keys {
        invocation.key(k.as_str());
    }
    for a in &call.args {
        invocation.arg(a.as_str());
    }
    // The last argument: the script refuses to run after it (`LATE`, changing nothing).
    invocation.arg(shared.deadline_arg(call.started));
    let reply = conn
        .invoke(&invocation)
        .await
        .map_err(|e| crate::conn::redis_failure("semaphore script failed", &e))?;
    match reply {
        redis::Value::Int(LATE) => Err(late_error(shared.timeout)),
        redis::Value::Int(i) => Ok(vec![i]),
        other => integers(&other),
    }
}

impl RedisSemaphoreBackend {
    /// Semaphores on `store` (keys under `<namespace>:sem:`). Connects nothing.
    ///
    /// ```
    /// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// let backend = tollgate_redis::RedisSemaphoreBackend::new(&store).unwrap();
    /// assert_eq!(backend.redis_keys("db").unwrap()[0], "tollgate:sem:{db}:h");
    /// ```
    pub fn new(store: &RedisStore) -> Result<Self, Error> {
        // Any valid policy: only its key builder is used.
        let any_policy = Rate::per_second(1)
            .and_then(Policy::gcra)
            .map_err(|e| Error::Store(redis_error(e)))?;
        let keys = store.scope("sem").bind(&any_policy)?;
        Ok(Self {
            store: store.clone(),
            keys,
        })
    }

    /// Wraps it in an `Arc`, as [`SemaphoreBuilder::build_on`](tollgate::semaphore::SemaphoreBuilder::build_on) takes.
    ///
    /// ```
    /// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// let arc = tollgate_redis::RedisSemaphoreBackend::new(&store).unwrap().into_arc();
    /// # drop(arc);
    /// ```
    pub fn into_arc(self) -> Arc<Self> {
        Arc::new(self)
    }

    /// The store.
    ///
    /// ```
    /// let store = tollgate_redis::RedisStore::open("redis://127.0.0.1:6379/").unwrap();
    /// let b = tollgate_redis::RedisSemaphoreBackend::new(&store).unwrap();
    /// assert!(!b.store().is_cluster());
    /// ```
    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    /// The seven Redis keys of semaphore `name` (holders, permits, queue, queue place ends,
    /// permits wanted, ticket counter, permits in use), all in the Cluster slot of `{name}`.
    ///
    /// ```
    /// let store = tollgate_redis::RedisStore::builder().url("redis://127.0.0.1:6379/").namespace("app").build().unwrap();
    /// let keys = tollgate_redis::RedisSemaphoreBackend::new(&store).unwrap().redis_keys("api").unwrap();
    /// assert_eq!(keys[5], "app:sem:{api}:s");
    /// assert_eq!(keys[6], "app:sem:{api}:c");
    /// ```
    pub fn redis_keys(&self, name: &str) -> Result<Vec<String>, StoreError> {
        ["h", "p", "q", "w", "n", "s", "c"]
            .iter()
            .map(|suffix| {
                self.keys
                    .redis_key(&format!("{{{name}}}:{suffix}"))
                    .map_err(|e| redis_error(format!("invalid semaphore name {name:?}: {e}")))
            })
            .collect()
    }

    fn call_blocking(&self, call: Call) -> Result<Vec<i64>, StoreError> {
        let shared = Arc::clone(self.store.shared());
        self.store
            .shared()
            .block_on(run(shared, call))
            .map_err(to_store_error)
    }

    async fn call_async(&self, call: Call) -> Result<Vec<i64>, StoreError> {
        let shared = Arc::clone(self.store.shared());
        self.store
            .shared()
            .spawn(run(shared, call))
            .await
            .map_err(to_store_error)
    }

    /// The script call of `op`: its keys, then its arguments (the semaphore's time and
    /// expiry margin last).
    fn call_of(&self, op: SemaphoreOp<'_>) -> Result<Call, StoreError> {
        let (script, mut args, now) = match op {
            SemaphoreOp::Acquire(req) => (
                Script::Acquire,
                vec![
                    req.holder.to_string(),
                    req.permits.to_string(),
                    req.capacity.to_string(),
                    req.lease.to_string(),
                    req.queue_ttl.map(|t| t.to_string()).unwrap_or_default(),
                ],
                req.now,
            ),
            SemaphoreOp::Release { holder, now, .. } => {
                (Script::Release, vec![holder.to_string()], now)
            }
            SemaphoreOp::Extend {
                holder, lease, now, ..
            } => (
                Script::Extend,
                vec![holder.to_string(), lease.to_string()],
                now,
            ),
            SemaphoreOp::Status { now, .. } => (Script::Status, vec![], now),
            _ => {
                return Err(redis_error(format!(
                    "unsupported semaphore operation {op:?}"
                )))
            }
        };
        args.push(self.store.now_arg(now));
        args.push(self.store.margin_arg().to_string());
        Ok(Call {
            script,
            keys: self.redis_keys(op.name())?,
            args,
            started: Instant::now(),
        })
    }
}

fn field(f: &[i64], i: usize) -> Result<i64, StoreError> {
    f.get(i)
        .copied()
        .ok_or_else(|| redis_error(format!("semaphore script reply too short: {f:?}")))
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The reply of `script` from its integer fields.
fn reply_of(script: Script, f: Vec<i64>) -> Result<SemaphoreReply, StoreError> {
    let yes = field(&f, 0)? == 1;
    Ok(match script {
        Script::Acquire if yes => SemaphoreReply::Acquire(AcquireOutcome::Granted {
            expires_at: unsigned(field(&f, 1)?),
        }),
        Script::Acquire => {
            let next = field(&f, 2)?;
            SemaphoreReply::Acquire(AcquireOutcome::Busy {
                in_use: unsigned(field(&f, 1)?),
                next_expiry_in: (next >= 0).then(|| unsigned(next)),
                epoch: 0,
            })
        }
        Script::Release if yes => SemaphoreReply::Release(ReleaseOutcome::Released),
        Script::Release => SemaphoreReply::Release(ReleaseOutcome::NotHeld),
        Script::Extend if yes => SemaphoreReply::Extend(ExtendOutcome::Extended {
            expires_at: unsigned(field(&f, 1)?),
        }),
        Script::Extend => SemaphoreReply::Extend(ExtendOutcome::NotHeld),
        Script::Status => SemaphoreReply::Status(SemaphoreStatus {
            in_use: unsigned(field(&f, 0)?),
            holders: unsigned(field(&f, 1)?),
            waiting: unsigned(field(&f, 2)?),
        }),
    })
}

impl SemaphoreBackend for RedisSemaphoreBackend {
    fn call(&self, op: SemaphoreOp<'_>) -> Result<SemaphoreReply, StoreError> {
        let call = self.call_of(op)?;
        let script = call.script;
        reply_of(script, self.call_blocking(call)?)
    }

    fn call_async<'a>(
        &'a self,
        op: SemaphoreOp<'a>,
    ) -> BoxFuture<'a, Result<SemaphoreReply, StoreError>> {
        Box::pin(async move {
            let call = self.call_of(op)?;
            let script = call.script;
            reply_of(script, self.call_async(call).await?)
        })
    }
}
