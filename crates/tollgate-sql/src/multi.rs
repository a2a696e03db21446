//! Several keys, each with its own policy, decided all-or-nothing in one call: the SQL stores
//! implement the core capability [`tollgate::store::multi::MultiBackend`] (one function call
//! on PostgreSQL, one transaction on SQLite); this module holds the checks they share.

use tollgate::Error;

use crate::{PgBackend, SqliteBackend};
use futures_util::future::BoxFuture;
use tollgate::store::multi::{first_backend, MultiBackend, MultiOp};
pub use tollgate::store::multi::{KeyCheck, MultiDecision};
use tollgate::time::Micros;

/// `MultiBackend` for a SQL backend whose `store()` runs `many` / `many_async` (one function
/// call on PostgreSQL, rows locked in key order; one transaction on SQLite).
macro_rules! sql_multi_backend {
    ($backend:ty) => {
        impl MultiBackend for $backend {
            fn execute_all(
                items: &[KeyCheck<'_, Self>],
                op: MultiOp,
                now: Micros,
            ) -> Result<MultiDecision, Error> {
                first_backend(items)?
                    .store()
                    .many(items, op == MultiOp::Check, now)
            }

            fn execute_all_async<'a>(
                items: &'a [KeyCheck<'a, Self>],
                op: MultiOp,
                now: Micros,
            ) -> BoxFuture<'a, Result<MultiDecision, Error>> {
                Box::pin(async move {
                    let store = first_backend(items)?.store();
                    store.many_async(items, op == MultiOp::Check, now).await
                })
            }
        }
    };
}

sql_multi_backend!(SqliteBackend);
sql_multi_backend!(PgBackend);

/// The checks common to both stores, before anything reaches the database: at least one
/// key, and no stored key twice.
pub(crate) fn check_keys(stored_keys: &[String]) -> Result<(), Error> {
    if stored_keys.is_empty() {
        return Err(Error::InvalidKey {
            reason: "a multi-key call needs at least one key".into(),
        });
    }
    let mut sorted: Vec<&String> = stored_keys.iter().collect();
    sorted.sort_unstable();
    if let Some(pair) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::InvalidKey {
            reason: format!(
                "key {:?} appears twice in one multi-key call (two policies of one algorithm \
                 store a user key under the same name: give their keys distinct prefixes)",
                pair[0]
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_duplicate_keys_are_rejected() {
        assert!(matches!(check_keys(&[]), Err(Error::InvalidKey { .. })));
        let keys = ["b".to_string(), "a".to_string(), "b".to_string()];
        let err = check_keys(&keys).unwrap_err().to_string();
        assert!(err.contains("\"b\" appears twice"), "{err}");
        assert!(check_keys(&keys[..2]).is_ok());
    }
}
