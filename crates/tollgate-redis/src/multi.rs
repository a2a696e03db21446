//! Several keys, each with its own policy, decided all-or-nothing in one script call: the
//! Redis implementation of [`tollgate::store::multi::MultiBackend`] (one round trip).

use crate::conn::{evalsha_cmd, protocol_error, redis_failure};
use crate::scripts;
use crate::store::{
    decision_from, integers, late_error, same_slot, RedisBackend, RedisStore, LATE,
};
use std::sync::Arc;
use std::time::Instant;
use tollgate::time::Micros;
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
}

/// One `EVALSHA` of `lua/multi.lua` for the whole call (one round trip); every backend must
/// come from one [`RedisStore`], and on a Cluster every key must be in one slot.
impl MultiBackend for RedisBackend {
    fn execute_all(
        items: &[KeyCheck<'_, Self>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let store = &first_backend(items)?.inner().store;
        let prepared = store.prepare_many(items, op == MultiOp::Check, now)?;
        let shared = store.shared();
        shared.block_on(run_many(Arc::clone(shared), prepared))
    }

    fn execute_all_async<'a>(
        items: &'a [KeyCheck<'a, Self>],
        op: MultiOp,
        now: Micros,
    ) -> futures_util::future::BoxFuture<'a, Result<MultiDecision, Error>> {
        Box::pin(async move {
            let store = &first_backend(items)?.inner().store;
            let prepared = store.prepare_many(items, op == MultiOp::Check, now)?;
            let shared = store.shared();
            shared.spawn(run_many(Arc::clone(shared), prepared)).await
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
