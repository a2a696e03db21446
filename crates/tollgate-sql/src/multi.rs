//! Several keys, each with its own policy, decided all-or-nothing in one call: the argument
//! and result types shared by [`PgStore::check_all`](crate::PgStore::check_all) and
//! [`SqliteStore::check_all`](crate::SqliteStore::check_all) (the same shape as
//! `tollgate_redis::{KeyCheck, MultiDecision}`).

use tollgate::algorithm::{combine, Verdict};
use tollgate::time::Micros;
use tollgate::{Decision, Error};

/// One key of a multi-key call: the backend (policy) it is limited by, the user key, and
/// the cost. `B` is [`PgBackend`](crate::PgBackend) or [`SqliteBackend`](crate::SqliteBackend).
///
/// ```
/// use tollgate::{Policy, Rate, store::Store};
/// use tollgate_sql::{KeyCheck, SqliteStore};
/// let store = SqliteStore::in_memory().unwrap();
/// store.ensure_schema().unwrap();
/// let per_user = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
/// let check = KeyCheck::new(&per_user, "user:alice", 1);
/// assert_eq!((check.key(), check.cost()), ("user:alice", 1));
/// ```
#[derive(Debug)]
pub struct KeyCheck<'a, B> {
    pub(crate) backend: &'a B,
    pub(crate) key: &'a str,
    pub(crate) cost: u64,
}

impl<B> Clone for KeyCheck<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for KeyCheck<'_, B> {}

impl<'a, B> KeyCheck<'a, B> {
    /// `cost` units of `key` under `backend`'s policy.
    ///
    /// ```
    /// use tollgate::{Policy, Rate, store::Store};
    /// let store = tollgate_sql::SqliteStore::in_memory().unwrap();
    /// store.ensure_schema().unwrap();
    /// let global = store.bind(&Policy::gcra(Rate::per_second(1000).unwrap()).unwrap()).unwrap();
    /// let check = tollgate_sql::KeyCheck::new(&global, "global", 1);
    /// # let _ = check;
    /// ```
    pub fn new(backend: &'a B, key: &'a str, cost: u64) -> Self {
        KeyCheck { backend, key, cost }
    }

    /// The user key.
    ///
    /// ```
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # let store = tollgate_sql::SqliteStore::in_memory().unwrap();
    /// # store.ensure_schema().unwrap();
    /// # let b = store.bind(&Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).unwrap();
    /// assert_eq!(tollgate_sql::KeyCheck::new(&b, "ip:203.0.113.7", 2).key(), "ip:203.0.113.7");
    /// ```
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// The cost.
    ///
    /// ```
    /// # use tollgate::{Policy, Rate, store::Store};
    /// # let store = tollgate_sql::SqliteStore::in_memory().unwrap();
    /// # store.ensure_schema().unwrap();
    /// # let b = store.bind(&Policy::gcra(Rate::per_second(5).unwrap()).unwrap()).unwrap();
    /// assert_eq!(tollgate_sql::KeyCheck::new(&b, "k", 3).cost(), 3);
    /// ```
    pub fn cost(&self) -> u64 {
        self.cost
    }
}

/// The outcome of a multi-key call.
///
/// ```
/// use tollgate::Decision;
/// let d = tollgate_sql::MultiDecision {
///     allowed: true,
///     decision: Decision::from_parts(true, 5, 4, 0, 200_000, None),
///     denied_key: None,
///     decisions: vec![Decision::from_parts(true, 5, 4, 0, 200_000, None)],
/// };
/// assert!(d.allowed && d.binding().is_none());
/// ```
#[must_use = "a MultiDecision says whether the request may proceed"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiDecision {
    /// Every key admitted its cost; for a check, every key was charged. When false,
    /// nothing was charged on any key.
    pub allowed: bool,
    /// The decision combined across the keys by the rule `docs/semantics.md` gives for
    /// several rates on one key, with keys in place of rates. Allowed: `limit`/`remaining`
    /// of the key with the least `remaining` (first in call order on a tie), `reset_after`
    /// the longest. Denied: the denying key with the longest `retry_after` (first on a tie,
    /// see [`denied_key`](Self::denied_key)) gives `limit`, `remaining`, `retry_after` and
    /// `denied_by` (the rate of *that key's* policy that denied); `reset_after` is the
    /// longest over every key without this call's charge.
    pub decision: Decision,
    /// When denied: the index (in call order) of the key that denied, as above.
    pub denied_key: Option<usize>,
    /// Each key's own decision, in call order: what that key alone would decide (its
    /// `allowed` may be true while the call was denied by another key; then its
    /// `remaining`/`reset_after` are what they would have been after charging it, which
    /// did not happen).
    pub decisions: Vec<Decision>,
}

impl MultiDecision {
    /// The key (index in call order) that denied and its own decision: the first key with
    /// the longest `retry_after` among the denials (how long to wait before every key
    /// admits). `None` when allowed.
    ///
    /// ```
    /// use tollgate::Decision;
    /// let d = tollgate_sql::MultiDecision {
    ///     allowed: false,
    ///     decision: Decision::from_parts(false, 1, 0, 900_000, 900_000, Some(0)),
    ///     denied_key: Some(1),
    ///     decisions: vec![
    ///         Decision::from_parts(true, 5, 4, 0, 200_000, None),
    ///         Decision::from_parts(false, 1, 0, 900_000, 900_000, Some(0)),
    ///     ],
    /// };
    /// assert_eq!(d.binding().unwrap().0, 1);
    /// ```
    pub fn binding(&self) -> Option<(usize, &Decision)> {
        let key = self.denied_key?;
        self.decisions.get(key).map(|d| (key, d))
    }
}

/// One key's result from a store: its own decision and its `reset_after` (µs) without this
/// call's charge.
pub(crate) struct KeyResult {
    pub(crate) decision: Decision,
    pub(crate) reset_uncharged: Micros,
}

/// Combines the keys' results (in call order) into a [`MultiDecision`]: each key plays the
/// part of one rate in `tollgate::algorithm::combine`.
pub(crate) fn combine_keys(results: Vec<KeyResult>) -> MultiDecision {
    let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let verdicts: Vec<Verdict> = results
        .iter()
        .map(|r| Verdict {
            allowed: r.decision.allowed,
            limit: r.decision.limit,
            remaining: r.decision.remaining,
            retry_after: micros(r.decision.retry_after),
            reset_after: micros(r.decision.reset_after),
            reset_after_uncharged: r.reset_uncharged,
        })
        .collect();
    let combined = combine(&verdicts);
    let denied_key = combined.denied_by;
    let decision = match denied_key {
        // the combination's `denied_by` is a key index: report the denying key's own rate
        Some(key) => Decision::from_parts(
            false,
            combined.limit,
            combined.remaining,
            micros(combined.retry_after),
            micros(combined.reset_after),
            results[key].decision.denied_by,
        ),
        None => combined,
    };
    MultiDecision {
        allowed: decision.allowed,
        decision,
        denied_key,
        decisions: results.into_iter().map(|r| r.decision).collect(),
    }
}

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

    fn r(d: Decision, unch: Micros) -> KeyResult {
        KeyResult {
            decision: d,
            reset_uncharged: unch,
        }
    }

    #[test]
    fn combination_follows_the_multi_rate_rule() {
        // allowed: least remaining, longest reset
        let m = combine_keys(vec![
            r(Decision::from_parts(true, 10, 7, 0, 300, None), 0),
            r(Decision::from_parts(true, 5, 2, 0, 100, None), 0),
            r(Decision::from_parts(true, 9, 2, 0, 900, None), 0),
        ]);
        assert!(m.allowed && m.denied_key.is_none());
        assert_eq!(m.decision, Decision::from_parts(true, 5, 2, 0, 900, None));
        // denied: longest retry among the denials (first on a tie), its own rate index;
        // reset: the longest uncharged one
        let m = combine_keys(vec![
            r(Decision::from_parts(true, 10, 7, 0, 5_000, None), 4_000),
            r(Decision::from_parts(false, 5, 0, 70, 80, Some(1)), 80),
            r(Decision::from_parts(false, 3, 0, 90, 90, Some(2)), 90),
            r(Decision::from_parts(false, 4, 0, 90, 95, Some(0)), 95),
        ]);
        assert!(!m.allowed);
        assert_eq!(m.denied_key, Some(2));
        assert_eq!(m.binding().map(|(k, _)| k), Some(2));
        assert_eq!(
            m.decision,
            Decision::from_parts(false, 3, 0, 90, 4_000, Some(2))
        );
        assert_eq!(m.decisions.len(), 4);
    }

    #[test]
    fn empty_and_duplicate_keys_are_rejected() {
        assert!(matches!(check_keys(&[]), Err(Error::InvalidKey { .. })));
        let keys = ["b".to_string(), "a".to_string(), "b".to_string()];
        let err = check_keys(&keys).unwrap_err().to_string();
        assert!(err.contains("\"b\" appears twice"), "{err}");
        assert!(check_keys(&keys[..2]).is_ok());
    }
}
