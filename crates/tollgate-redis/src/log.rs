//! [`LogBackend`] for Redis: one read-only script reads a sliding-log key (`LRANGE`) and the
//! clock the store decides with (the server's `TIME`, or the caller's), in one round trip.

use crate::conn::{protocol_error, redis_failure, Shared};
use crate::store::RedisBackend;
use redis::Value;
use std::sync::{Arc, OnceLock};
use tollgate::store::log::{not_a_log, visible, LogBackend, LogEntry};
use tollgate::time::Micros;
use tollgate::{Algorithm, Error};

/// KEYS[1]: the log (a list `ts_1, weight_1, ...`, see `lua/sliding_log.lua`); ARGV[1]: the
/// caller's now (µs) or '' for the server clock. Returns `{now, ts_1, weight_1, ...}`.
const READ_LOG: &str = r"
local now = ARGV[1]
if now == '' then
  local t = redis.call('TIME')
  now = t[1] .. string.format('%06d', tonumber(t[2]))
end
local out = redis.call('LRANGE', KEYS[1], 0, -1)
table.insert(out, 1, now)
return out
";

fn script() -> &'static redis::Script {
    static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(READ_LOG))
}

struct Read {
    cmd: redis::Cmd,
    max_window: Micros,
}

impl RedisBackend {
    fn prepare_log(&self, key: &str, now: Micros) -> Result<Read, Error> {
        let inner = self.inner();
        if inner.algorithm != Algorithm::SlidingLog {
            return Err(not_a_log());
        }
        // params: n, then (limit, window) per rate.
        let max_window = inner
            .params
            .iter()
            .skip(2)
            .step_by(2)
            .filter_map(|w| w.parse::<Micros>().ok())
            .max()
            .unwrap_or(0);
        let redis_key = self.redis_key(key)?;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script().get_hash())
            .arg(1)
            .arg(redis_key)
            .arg(inner.store.now_arg(now));
        Ok(Read { cmd, max_window })
    }
}

async fn read(shared: Arc<Shared>, cmd: redis::Cmd) -> Result<Value, Error> {
    let mut conn = shared.conn().await?;
    conn.evalsha(script(), &cmd)
        .await
        .map_err(|e| redis_failure("cannot read the log", &e))
}

fn entries(reply: Value, max_window: Micros) -> Result<Vec<LogEntry>, Error> {
    let Value::Array(items) = reply else {
        return Err(protocol_error(format!(
            "unexpected reply to the log read: {reply:?}"
        )));
    };
    let mut numbers = Vec::with_capacity(items.len());
    for item in items {
        let n = match item {
            Value::BulkString(b) => std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()),
            Value::Int(i) => u64::try_from(i).ok(),
            _ => None,
        };
        numbers.push(n.ok_or_else(|| protocol_error("a log entry is not a number"))?);
    }
    let (now, log) = numbers
        .split_first()
        .ok_or_else(|| protocol_error("an empty reply to the log read"))?;
    if log.len() % 2 != 0 {
        return Err(protocol_error("a log with an odd number of fields"));
    }
    Ok(visible(
        log.chunks_exact(2).map(|e| (e[0], e[1])),
        max_window,
        *now,
    ))
}

impl LogBackend for RedisBackend {
    fn log_entries(&self, key: &str, now: Micros) -> Result<Vec<LogEntry>, Error> {
        let r = self.prepare_log(key, now)?;
        let shared = Arc::clone(self.inner().store.shared());
        let reply = self.inner().store.shared().block_on(read(shared, r.cmd))?;
        entries(reply, r.max_window)
    }

    fn log_entries_async<'a>(
        &'a self,
        key: &'a str,
        now: Micros,
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<LogEntry>, Error>> {
        Box::pin(async move {
            let r = self.prepare_log(key, now)?;
            let shared = Arc::clone(self.inner().store.shared());
            let reply = self
                .inner()
                .store
                .shared()
                .spawn(read(shared, r.cmd))
                .await?;
            entries(reply, r.max_window)
        })
    }
}
