//! Several keys, each with its own policy, decided all-or-nothing in one call: both SQL
//! backends implement the core capability [`tollgate::store::multi::MultiBackend`] (one
//! function call on PostgreSQL, one transaction on SQLite), which
//! [`tollgate::Limiter::check_all`] and every surface use. This module holds the check they
//! share.

use tollgate::Error;

pub use tollgate::store::multi::{KeyCheck, MultiDecision};

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
