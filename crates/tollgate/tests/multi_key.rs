//! Multi-key all-or-nothing on the memory store (`tollgate::store::multi`): mixed policies and
//! algorithms in one call, a denial charges nothing anywhere, per-key decisions equal what each
//! key alone decides, errors before anything is decided, and under threads (keys in varying
//! order, single-key calls mixed in) never more admitted than the policies allow, no deadlock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tollgate::store::memory::{MemoryBackend, MemoryStore};
use tollgate::store::multi::{KeyCheck, MultiBackend, MultiOp};
use tollgate::store::{Backend, Op, Store};
use tollgate::{Algorithm, Error, Policy, Rate};

const NOW: u64 = 1_780_000_000_000_000;

fn bind(store: &MemoryStore, scope: &str, policy: Policy) -> MemoryBackend {
    store.scope(scope).bind(&policy).unwrap()
}

fn peek(b: &MemoryBackend, key: &str, cost: u64, now: u64) -> tollgate::Decision {
    b.execute(key, Op::Peek(cost), now).unwrap().unwrap()
}

fn backends(store: &MemoryStore) -> Vec<MemoryBackend> {
    vec![
        bind(
            store,
            "gcra",
            Policy::gcra(Rate::per_second(5).unwrap()).unwrap(),
        ),
        bind(
            store,
            "log",
            Policy::parse(Algorithm::SlidingLog, "3/s; 10/min").unwrap(),
        ),
        bind(
            store,
            "bucket",
            Policy::token_bucket(4, 1, Duration::from_secs(1)).unwrap(),
        ),
        bind(
            store,
            "window",
            Policy::parse(Algorithm::FixedWindow, "2/s").unwrap(),
        ),
        bind(
            store,
            "sliding",
            Policy::parse(Algorithm::SlidingWindow, "6/s").unwrap(),
        ),
    ]
}

#[test]
fn mixed_algorithms_are_all_or_nothing_and_a_denial_charges_nothing() {
    let store = MemoryStore::new();
    let b = backends(&store);
    let items: Vec<KeyCheck<'_, MemoryBackend>> =
        b.iter().map(|b| KeyCheck::new(b, "alice", 1)).collect();
    // The fixed window (2/s) binds first: two calls pass, the third is denied by item 3.
    for round in 0..2 {
        let d = MultiBackend::execute_all(&items, MultiOp::Check, NOW).unwrap();
        assert!(d.allowed, "round {round}");
        assert_eq!(d.decisions.len(), 5);
    }
    let before: Vec<_> = b.iter().map(|b| peek(b, "alice", 1, NOW)).collect();
    let d = MultiBackend::execute_all(&items, MultiOp::Check, NOW).unwrap();
    assert!(!d.allowed);
    let (index, binding) = d.binding().unwrap();
    assert_eq!(index, 3, "the fixed window denied");
    assert_eq!(binding.denied_by, Some(0));
    // Per-key decisions are what each key alone decides, and nothing was charged.
    let after: Vec<_> = b.iter().map(|b| peek(b, "alice", 1, NOW)).collect();
    assert_eq!(before, after);
    assert_eq!(d.decisions, before);
    // Peek decides like check and charges nothing.
    let p = MultiBackend::execute_all(&items, MultiOp::Peek, NOW).unwrap();
    assert_eq!(p, d);
    // Other keys are independent.
    let bob: Vec<_> = b.iter().map(|b| KeyCheck::new(b, "bob", 1)).collect();
    assert!(
        MultiBackend::execute_all(&bob, MultiOp::Check, NOW)
            .unwrap()
            .allowed
    );
}

#[test]
fn an_allowed_call_charges_every_key_exactly_like_single_calls() {
    let store = MemoryStore::new();
    let b = backends(&store);
    let twin = MemoryStore::new();
    let t = backends(&twin);
    let items: Vec<_> = b.iter().map(|b| KeyCheck::new(b, "k", 2)).collect();
    let d = MultiBackend::execute_all(&items, MultiOp::Check, NOW).unwrap();
    assert!(d.allowed);
    for (i, t) in t.iter().enumerate() {
        let single = t.execute("k", Op::Check(2), NOW).unwrap().unwrap();
        assert_eq!(d.decisions[i], single, "item {i}");
        assert_eq!(peek(&b[i], "k", 1, NOW + 1), peek(t, "k", 1, NOW + 1));
    }
    assert_eq!(d.tightest().unwrap().0, 3, "the fixed window has 0 left");
}

#[test]
fn bad_calls_are_errors_before_anything_is_decided() {
    let store = MemoryStore::new();
    let b = backends(&store);
    let none: [KeyCheck<'_, MemoryBackend>; 0] = [];
    assert!(matches!(
        MultiBackend::execute_all(&none, MultiOp::Check, NOW),
        Err(Error::InvalidKey { .. })
    ));
    let twice = [KeyCheck::new(&b[0], "k", 1), KeyCheck::new(&b[0], "k", 1)];
    assert!(matches!(
        MultiBackend::execute_all(&twice, MultiOp::Check, NOW),
        Err(Error::InvalidKey { .. })
    ));
    // The same key under two policies is two keys.
    let two = [KeyCheck::new(&b[0], "k", 1), KeyCheck::new(&b[1], "k", 1)];
    assert!(
        MultiBackend::execute_all(&two, MultiOp::Check, NOW)
            .unwrap()
            .allowed
    );
    let zero = [KeyCheck::new(&b[0], "z", 1), KeyCheck::new(&b[1], "z", 0)];
    assert!(matches!(
        MultiBackend::execute_all(&zero, MultiOp::Check, NOW),
        Err(Error::InvalidCost)
    ));
    // A cost above the fixed window's capacity: an error, and the GCRA key is not charged.
    let huge = [KeyCheck::new(&b[0], "h", 1), KeyCheck::new(&b[3], "h", 3)];
    assert!(matches!(
        MultiBackend::execute_all(&huge, MultiOp::Check, NOW),
        Err(Error::CostExceedsCapacity {
            cost: 3,
            capacity: 2
        })
    ));
    assert_eq!(peek(&b[0], "h", 1, NOW).remaining, 4);
}

#[test]
fn a_token_bucket_denied_by_another_key_keeps_its_refill_progress() {
    let store = MemoryStore::new();
    let empty_start = bind(
        &store,
        "tb",
        Policy::token_bucket(2, 1, Duration::from_secs(1))
            .unwrap()
            .with_initial_tokens(0)
            .unwrap(),
    );
    let closed = bind(
        &store,
        "closed",
        Policy::gcra(Rate::per_hour(1).unwrap()).unwrap(),
    );
    let _ = closed.execute("x", Op::Check(1), NOW).unwrap();
    // The bucket alone would deny too, but its first check must create it and start its
    // refill clock (as a single-key denied check does), even when another key denies.
    let items = [
        KeyCheck::new(&closed, "x", 1),
        KeyCheck::new(&empty_start, "u", 1),
    ];
    assert!(
        !MultiBackend::execute_all(&items, MultiOp::Check, NOW)
            .unwrap()
            .allowed
    );
    let d = peek(&empty_start, "u", 1, NOW + 1_000_000);
    assert!(
        d.allowed,
        "one token refilled a second after the denied call"
    );
}

const USERS: usize = 5;
const USER_CAP: u64 = 30;
const GLOBAL_CAP: u64 = 100;

/// Per-user GCRA and a global sliding log, both an hour long: at frozen time nothing refills.
fn users_and_global(store: &MemoryStore) -> (Arc<MemoryBackend>, Arc<MemoryBackend>) {
    let users = bind(
        store,
        "users",
        Policy::gcra(Rate::per_hour(USER_CAP).unwrap()).unwrap(),
    );
    let global = bind(
        store,
        "global",
        Policy::parse(Algorithm::SlidingLog, &format!("{GLOBAL_CAP}/h")).unwrap(),
    );
    (Arc::new(users), Arc::new(global))
}

/// Units charged so far on a key whose capacity is `cap` (frozen time).
fn used(d: &tollgate::Decision, cap: u64) -> u64 {
    if d.allowed {
        cap - d.remaining - 1
    } else {
        cap
    }
}

#[test]
fn threads_with_keys_in_varying_order_never_over_admit_and_are_never_seen_half_done() {
    let store = MemoryStore::new();
    let (users, global) = users_and_global(&store);
    let admitted: Arc<Vec<AtomicU64>> = Arc::new((0..USERS).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // An observer takes atomic snapshots (a multi-key peek of every key): the units charged on
    // the users always add up to the units charged on the global key. A call seen half done
    // (a user charged, the global key not yet) breaks that.
    let observer = {
        let (users, global, done) = (Arc::clone(&users), Arc::clone(&global), Arc::clone(&done));
        std::thread::spawn(move || {
            let names: Vec<String> = (0..USERS).map(|u| format!("user-{u}")).collect();
            let mut snapshots = 0u64;
            while !done.load(Ordering::Relaxed) || snapshots == 0 {
                let mut items: Vec<_> =
                    names.iter().map(|n| KeyCheck::new(&*users, n, 1)).collect();
                items.push(KeyCheck::new(&*global, "all", 1));
                let d = MultiBackend::execute_all(&items, MultiOp::Peek, NOW).unwrap();
                let user_units: u64 = d.decisions[..USERS].iter().map(|d| used(d, USER_CAP)).sum();
                assert_eq!(
                    user_units,
                    used(&d.decisions[USERS], GLOBAL_CAP),
                    "half-done call seen"
                );
                snapshots += 1;
            }
            snapshots
        })
    };
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let (users, global, admitted) = (
                Arc::clone(&users),
                Arc::clone(&global),
                Arc::clone(&admitted),
            );
            std::thread::spawn(move || {
                for i in 0..400 {
                    let u = (t + i) % USERS;
                    let user = format!("user-{u}");
                    let a = KeyCheck::new(&*users, &user, 1);
                    let g = KeyCheck::new(&*global, "all", 1);
                    let items = if (t + i) % 2 == 0 { [a, g] } else { [g, a] };
                    let d = MultiBackend::execute_all(&items, MultiOp::Check, NOW).unwrap();
                    if d.allowed {
                        admitted[u].fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    assert!(observer.join().unwrap() > 0);
    let per_user: Vec<u64> = admitted.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    assert_eq!(per_user.iter().sum::<u64>(), GLOBAL_CAP, "{per_user:?}");
    assert_eq!(used(&peek(&global, "all", 1, NOW), GLOBAL_CAP), GLOBAL_CAP);
    for (u, &n) in per_user.iter().enumerate() {
        assert!(n <= USER_CAP, "user {u}: {n}");
        // Denied calls charged nothing: each user key holds exactly its admissions.
        assert_eq!(
            used(&peek(&users, &format!("user-{u}"), 1, NOW), USER_CAP),
            n,
            "user {u}"
        );
    }
}

#[test]
fn single_key_calls_racing_multi_key_calls_share_the_capacity_exactly() {
    let store = MemoryStore::new();
    let (users, global) = users_and_global(&store);
    let admitted = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..6)
        .map(|t| {
            let (users, global, admitted) = (
                Arc::clone(&users),
                Arc::clone(&global),
                Arc::clone(&admitted),
            );
            std::thread::spawn(move || {
                for i in 0..200 {
                    let allowed = if t % 3 == 0 {
                        global
                            .execute("all", Op::Check(1), NOW)
                            .unwrap()
                            .unwrap()
                            .allowed
                    } else {
                        let user = format!("user-{}", (t + i) % USERS);
                        let items = [
                            KeyCheck::new(&*global, "all", 1),
                            KeyCheck::new(&*users, &user, 1),
                        ];
                        MultiBackend::execute_all(&items, MultiOp::Check, NOW)
                            .unwrap()
                            .allowed
                    };
                    if allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), GLOBAL_CAP);
}

#[test]
fn the_shared_multi_key_rules_hold_on_the_memory_store() {
    let store = MemoryStore::new();
    tollgate::conformance::multi::check_multi_rules(|name| store.scope(name), NOW, "m:").unwrap();
}

mod limiters {
    use std::sync::{Arc, Mutex};
    use tollgate::store::memory::MemoryStore;
    use tollgate::{Error, Limiter, Policy, Rate};

    fn limiter(store: &MemoryStore, scope: &str, per_hour: u64) -> Limiter {
        Limiter::builder(Policy::gcra(Rate::per_hour(per_hour).unwrap()).unwrap())
            .build_with(&store.scope(scope))
            .unwrap()
    }

    #[test]
    fn check_all_is_all_or_nothing_and_hooks_see_why() {
        let store = MemoryStore::new();
        let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let log = Arc::clone(&seen);
        let per_user = Limiter::builder(Policy::gcra(Rate::per_hour(5).unwrap()).unwrap())
            .on_decision(move |e| {
                let allowed = e.decision().is_some_and(|d| d.allowed);
                log.lock().unwrap().push((e.key.to_string(), allowed));
            })
            .build_with(&store.scope("user"))
            .unwrap();
        let global = limiter(&store, "global", 1);
        let d = Limiter::check_all(&[per_user.item("alice", 1), global.item("all", 1)]).unwrap();
        assert!(d.allowed);
        assert!(d.decisions.iter().all(|d| d.decided_at().is_some()));
        let d = Limiter::check_all(&[per_user.item("bob", 1), global.item("all", 1)]).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.binding().unwrap().0, 1);
        // bob alone would have been admitted, but the hook is told he was blocked
        assert!(d.decisions[0].allowed);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![("alice".to_string(), true), ("bob".to_string(), false)]
        );
        assert_eq!(per_user.peek("bob", 1).unwrap().remaining, 4);
        // peek_all charges nothing
        assert!(
            Limiter::peek_all(&[per_user.item("carol", 5)])
                .unwrap()
                .allowed
        );
        assert!(per_user.check_n("carol", 5).unwrap().allowed);
    }

    #[test]
    fn check_all_checks_keys_like_single_calls() {
        let store = MemoryStore::new();
        let short = Limiter::builder(Policy::gcra(Rate::per_hour(5).unwrap()).unwrap())
            .max_key_len(4)
            .build_with(&store)
            .unwrap();
        let global = limiter(&store, "global", 1);
        assert!(matches!(
            Limiter::check_all(&[global.item("all", 1), short.item("toolong", 1)]),
            Err(Error::KeyTooLong { len: 7, max: 4 })
        ));
        assert!(global.check("all").unwrap().allowed, "nothing was charged");
        assert!(matches!(
            Limiter::<tollgate::store::memory::MemoryBackend>::check_all(&[]),
            Err(Error::InvalidKey { .. })
        ));
    }

    #[tokio::test]
    async fn check_all_async_decides_like_the_sync_call() {
        let store = MemoryStore::new();
        let a = limiter(&store, "a", 2);
        let b = limiter(&store, "b", 1);
        assert!(
            Limiter::check_all_async(&[a.item("k", 1), b.item("k", 1)])
                .await
                .unwrap()
                .allowed
        );
        let d = Limiter::check_all_async(&[a.item("k", 1), b.item("k", 1)])
            .await
            .unwrap();
        assert_eq!(d.binding().map(|(i, _)| i), Some(1));
        assert_eq!(
            Limiter::peek_all_async(&[a.item("k", 1)])
                .await
                .unwrap()
                .decisions[0]
                .remaining,
            0
        );
    }
}
