//! Which limiters share state on the memory store (the rule of `tollgate::store::Store`,
//! the same on Redis and SQL, whose tests run the same `check_sharing`).

use tollgate::conformance::sharing::check_sharing;
use tollgate::store::memory::MemoryStore;
use tollgate::time::ManualClock;
use tollgate::{Error, Limiter, Policy, Rate};

fn per_hour(n: u64) -> Policy {
    Policy::gcra(Rate::per_hour(n).unwrap()).unwrap()
}

fn on(store: &MemoryStore, policy: Policy) -> Limiter {
    Limiter::builder(policy)
        .clock(ManualClock::new(1_000_000))
        .build_with(store)
        .unwrap()
}

/// Regression: two limiters with the same policy on one `MemoryStore` had separate state
/// (one table per `bind`), while on Redis they shared it.
#[test]
fn same_store_same_policy_shares_state() {
    let store = MemoryStore::new();
    let a = on(&store, per_hour(1));
    let b = on(&store, per_hour(1));
    assert!(a.check("alice").unwrap().allowed);
    assert!(!b.check("alice").unwrap().allowed);
    assert_eq!(a.backend().stats().keys, 1);
    assert_eq!(b.backend().stats().keys, 1);
    // clones of the store are the same store
    let c = on(&store.clone(), per_hour(1));
    assert!(!c.check("alice").unwrap().allowed);
}

#[test]
fn the_rule_holds_on_memory() {
    let store = MemoryStore::new();
    check_sharing(&store, |name| store.scope(name), 1_000_000, "").unwrap();
}

#[test]
fn different_stores_and_configured_copies_do_not_share() {
    let store = MemoryStore::new();
    let a = on(&store, per_hour(1));
    assert!(a.check("k").unwrap().allowed);
    assert!(
        on(&MemoryStore::new(), per_hour(1))
            .check("k")
            .unwrap()
            .allowed
    );
    // configuring makes a new store
    let bigger = store.clone().max_keys(10);
    assert!(on(&bigger, per_hour(1)).check("k").unwrap().allowed);
    // Limiter::memory uses a private store
    let private = Limiter::memory(per_hour(1));
    assert!(private.check("k").unwrap().allowed);
    assert!(Limiter::memory(per_hour(1)).check("k").unwrap().allowed);
}

#[test]
fn a_scope_holds_one_policy_while_it_is_in_use() {
    let store = MemoryStore::new();
    let login = on(&store.scope("login"), per_hour(1));
    assert!(login.check("k").unwrap().allowed);
    let err = Limiter::builder(per_hour(5))
        .build_with(&store.scope("login"))
        .unwrap_err();
    match err {
        Error::InvalidKey { reason } => {
            assert!(reason.contains("\"login\""), "{reason}");
            assert!(reason.contains("gcra:1/1h"), "{reason}");
        }
        other => panic!("expected InvalidKey, got {other:?}"),
    }
    // once no limiter holds the scope, a new policy starts it fresh
    drop(login);
    let new_policy = on(&store.scope("login"), per_hour(5));
    assert_eq!(new_policy.check("k").unwrap().remaining, 4);
}

#[test]
fn dropped_tables_are_forgotten() {
    let store = MemoryStore::new();
    let a = on(&store, per_hour(1));
    assert!(a.check("k").unwrap().allowed);
    drop(a);
    // the table died with its last limiter: the same policy starts fresh
    assert!(on(&store, per_hour(1)).check("k").unwrap().allowed);
}
