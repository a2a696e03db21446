//! The replies of the rate-limit scripts: integers, decisions, and the Cluster slot rule of a
//! multi-key call.

use crate::conn::protocol_error;
use redis::Value;
use tollgate::keys::cluster_slot;
use tollgate::{Decision, Error};

/// The integers of a script's array reply.
pub(crate) fn integers(reply: &Value) -> Result<Vec<i64>, Error> {
    match reply {
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::Int(i) => Ok(*i),
                other => Err(protocol_error(format!(
                    "unexpected script reply item {other:?}"
                ))),
            })
            .collect(),
        other => Err(protocol_error(format!("unexpected script reply {other:?}"))),
    }
}

/// A decision from the 6 fields a script returns.
pub(crate) fn decision_from(f: &[i64]) -> Result<Decision, Error> {
    if f.len() < 6 || f[1..5].iter().any(|&v| v < 0) {
        return Err(protocol_error(format!("malformed decision {f:?}")));
    }
    Ok(Decision::from_parts(
        f[0] == 1,
        f[1] as u64,
        f[2] as u64,
        f[3] as u64,
        f[4] as u64,
        (f[5] >= 0).then_some(f[5] as usize),
    ))
}

/// The Cluster slot check of a multi-key call: `Ok` when every key is in one slot.
pub(crate) fn same_slot(keys: &[String]) -> Result<(), Error> {
    let Some(first) = keys.first() else {
        return Ok(());
    };
    let slot = cluster_slot(first);
    if let Some(other) = keys.iter().find(|k| cluster_slot(k) != slot) {
        return Err(Error::InvalidKey {
            reason: format!(
                "keys {first:?} (slot {slot}) and {other:?} (slot {}) are in different Redis \
                 Cluster slots and cannot be checked atomically; start every user key of the \
                 call with the same hash tag, e.g. \"{{tenant-7}}:user:42\" and \
                 \"{{tenant-7}}:ip:203.0.113.7\"",
                cluster_slot(other)
            ),
        });
    }
    Ok(())
}
