//! Regression (issue 11): when a failure policy absorbed a store failure in a multi-key call
//! (fail open, or the memory fallback), `Limiter::check_all` / `check_all_async` said nothing
//! about it — the limiters' decision hooks saw no store failure and the answer carried no
//! error, so a surface (the server's `store_error`) could not show it. A single-key call
//! reports it (`Backend::execute_observed`); a multi-key call now does the same: the
//! `MultiDecision` carries one `StoreFailure` per item and each limiter's hook sees its own.

use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex};
use tollgate::hooks::StoreFailure;
use tollgate::store::failure::{FailSafeStore, FailureOutcome, FailurePolicy};
use tollgate::store::memory::MemoryStore;
use tollgate::store::multi::{KeyCheck, MultiBackend, MultiDecision, MultiOp};
use tollgate::store::{Backend, Op, Store};
use tollgate::time::Micros;
use tollgate::{Decision, Error, Limiter, Policy, Rate, StoreError};

/// A store that is down.
#[derive(Clone, Copy)]
struct DownStore;
struct Down;

fn refused() -> Error {
    Error::Store(StoreError::new("redis", "connection refused"))
}

impl Store for DownStore {
    type Backend = Down;
    fn bind(&self, _policy: &Policy) -> Result<Down, Error> {
        Ok(Down)
    }
}

impl Backend for Down {
    fn execute(&self, _key: &str, _op: Op, _now: Micros) -> Result<Option<Decision>, Error> {
        Err(refused())
    }
    fn execute_async<'a>(
        &'a self,
        _key: &'a str,
        _op: Op,
        _now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(async { Err(refused()) })
    }
}

impl MultiBackend for Down {
    fn execute_all(
        _: &[KeyCheck<'_, Self>],
        _: MultiOp,
        _: Micros,
    ) -> Result<MultiDecision, Error> {
        Err(refused())
    }
    fn execute_all_async<'a>(
        _: &'a [KeyCheck<'a, Self>],
        _: MultiOp,
        _: Micros,
    ) -> BoxFuture<'a, Result<MultiDecision, Error>> {
        Box::pin(async { Err(refused()) })
    }
}

type Seen = Arc<Mutex<Vec<(String, Option<StoreFailure>)>>>;

/// Two limiters (5/s per user, 1/s global) on `store`, whose decision hooks record the store
/// failure they see; and the failure hook's count.
fn limiters<S: Store>(store: &S) -> (Limiter<S::Backend>, Limiter<S::Backend>, Seen) {
    let seen: Seen = Arc::default();
    let build = |per_second| {
        let seen = Arc::clone(&seen);
        Limiter::builder(Policy::gcra(Rate::per_second(per_second).unwrap()).unwrap())
            .on_decision(move |e| {
                let failure = e.store_failure.cloned();
                seen.lock().unwrap().push((e.key.to_owned(), failure));
            })
            .build_with(store)
            .unwrap()
    };
    (build(5), build(1), seen)
}

fn assert_reported(d: &MultiDecision, seen: &Seen, outcome: FailureOutcome, policy: FailurePolicy) {
    assert_eq!(d.store_failures.len(), 2, "one store failure per item");
    for f in &d.store_failures {
        assert_eq!((f.outcome, f.policy), (outcome, policy));
        assert_eq!(f.error.message, "connection refused");
    }
    assert_eq!(
        d.store_error().map(|e| e.to_string()).as_deref(),
        Some("redis: connection refused")
    );
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["alice", "all"], "each limiter's hook saw its item");
    for (_, failure) in &seen {
        let failure = failure.as_ref().expect("the hook saw the store failure");
        assert_eq!(failure.outcome, outcome);
    }
}

#[test]
fn fail_open_reports_the_store_failure_of_a_multi_key_call() {
    let failures = Arc::new(Mutex::new(Vec::new()));
    let counted = Arc::clone(&failures);
    let store = FailSafeStore::fail_open(DownStore)
        .on_failure(move |_, outcome| counted.lock().unwrap().push(outcome));
    let (user, global, seen) = limiters(&store);
    let d = Limiter::check_all(&[user.item("alice", 1), global.item("all", 1)]).unwrap();
    assert!(d.allowed);
    assert_reported(&d, &seen, FailureOutcome::Admitted, FailurePolicy::FailOpen);
    assert_eq!(
        *failures.lock().unwrap(),
        [FailureOutcome::Admitted, FailureOutcome::Admitted],
        "the store's failure hook fired once per item"
    );
}

#[tokio::test]
async fn the_memory_fallback_reports_the_store_failure_of_a_multi_key_call() {
    let store = FailSafeStore::fallback_to_memory(DownStore);
    let (user, global, seen) = limiters(&store);
    let items = [user.item("alice", 1), global.item("all", 1)];
    let d = Limiter::check_all_async(&items).await.unwrap();
    assert!(d.allowed);
    assert_reported(&d, &seen, FailureOutcome::FellBack, FailurePolicy::Fallback);
    // The fallback decides (and denies: 1/s global spent), and still reports the failure.
    let d = Limiter::check_all_async(&items).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.binding().map(|(i, _)| i), Some(1));
    assert_reported(&d, &seen, FailureOutcome::FellBack, FailurePolicy::Fallback);
    let d = Limiter::peek_all(&items).unwrap();
    assert_reported(&d, &seen, FailureOutcome::FellBack, FailurePolicy::Fallback);
}

#[test]
fn a_healthy_store_reports_no_failure() {
    let store = FailSafeStore::fail_open(MemoryStore::new());
    let (user, global, seen) = limiters(&store);
    let d = Limiter::check_all(&[user.item("alice", 1), global.item("all", 1)]).unwrap();
    assert!(d.allowed && d.store_failures.is_empty() && d.store_error().is_none());
    assert!(seen.lock().unwrap().iter().all(|(_, f)| f.is_none()));
}
