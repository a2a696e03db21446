//! Script calls on the calling thread: for a blocking caller (a Python thread, any sync
//! `Backend::execute`) on a standalone server, the call runs over a pooled blocking connection
//! of this thread instead of being handed to the store's runtime thread and back. On a fast
//! local Redis that hand-off (two thread wake-ups) is most of a call's cost.

use super::{redis_failure, Shared, Target};
use redis::{ErrorKind, ServerErrorKind, Value};
use std::time::Instant;
use tollgate::{Error, StoreError};

/// Idle blocking connections kept per store (more concurrent callers open more, and close
/// the extra ones when done).
const MAX_IDLE: usize = 32;

impl Shared {
    /// Runs the script call that `build` makes (given the deadline argument) on the calling
    /// thread; each read and write waits at most the store's timeout, and the script's
    /// deadline (from `started`) keeps a late call from charging anything. `None` when this path does not
    /// apply — a Cluster, or the server's clock still has to be read or renewed (the async
    /// path does that) — and the caller uses [`Shared::block_on`].
    pub(crate) fn evalsha_blocking(
        &self,
        script: &redis::Script,
        started: Instant,
        build: impl FnOnce(&str) -> redis::Cmd,
    ) -> Option<Result<Value, Error>> {
        let Target::Standalone(client) = &self.target else {
            return None;
        };
        if self.clock_stale() {
            return None;
        }
        let cmd = build(&self.deadline_arg(started));
        let pooled = self.idle_blocking().pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => match self.connect_blocking(client) {
                Ok(conn) => conn,
                Err(e) => return Some(Err(redis_failure("cannot connect", &e))),
            },
        };
        let mut reply = cmd.query::<Value>(&mut conn);
        if matches!(&reply, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)) {
            // After SCRIPT FLUSH, a restart or a failover: load it and send the call again.
            reply = script.load(&mut conn).and_then(|_| cmd.query(&mut conn));
        }
        Some(match reply {
            Ok(value) => {
                let mut idle = self.idle_blocking();
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
                Ok(value)
            }
            // A connection that timed out may still get the late reply: never reuse it.
            Err(e) if e.is_timeout() => {
                Err(Error::Store(StoreError::timeout("redis", self.timeout)))
            }
            Err(e) => {
                if !(e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()) {
                    self.idle_blocking().push(conn);
                }
                Err(redis_failure("script call failed", &e))
            }
        })
    }

    /// A blocking connection whose reads and writes time out after the store's timeout (set
    /// once: no system call per request).
    fn connect_blocking(&self, client: &redis::Client) -> redis::RedisResult<redis::Connection> {
        let conn = client.get_connection_with_timeout(self.timeout)?;
        conn.set_read_timeout(Some(self.timeout))?;
        conn.set_write_timeout(Some(self.timeout))?;
        Ok(conn)
    }

    fn idle_blocking(&self) -> std::sync::MutexGuard<'_, Vec<redis::Connection>> {
        self.blocking.lock().unwrap_or_else(|p| p.into_inner())
    }
}
