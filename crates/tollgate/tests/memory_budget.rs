//! Regression (issue 15, item 3): `MemoryStore::max_keys` is one budget for the store, its
//! clones and scopes, across every table (policy, scope) they make. It used to apply to each
//! table, so a flood spread over many policies (tollgate-server makes one per CL.THROTTLE
//! parameter set and per inline rate) stored `max_keys` keys per policy.

use tollgate::store::memory::{MemoryBackend, MemoryStore};
use tollgate::time::ManualClock;
use tollgate::{Limiter, Policy, Rate};

const MAX: usize = 1_000;

/// `n` per hour: a key charged once stays stored for a long while (its horizon is far).
fn policy(n: u64) -> Policy {
    Policy::gcra(Rate::per_hour(n).unwrap()).unwrap()
}

fn limiters(
    store: &MemoryStore,
    policies: u64,
    clock: &ManualClock,
) -> Vec<Limiter<MemoryBackend>> {
    (0..policies)
        .map(|i| {
            Limiter::builder(policy(100 + i))
                .clock(clock.clone())
                .build_with(store)
                .unwrap()
        })
        .collect()
}

fn table_keys(limiters: &[Limiter<MemoryBackend>]) -> usize {
    limiters.iter().map(|l| l.backend().stats().keys).sum()
}

#[test]
fn a_flood_over_many_policies_stays_within_one_budget() {
    let clock = ManualClock::new(1_000_000);
    let store = MemoryStore::new().max_keys(MAX);
    let limiters = limiters(&store, 50, &clock);
    for (i, l) in limiters.iter().enumerate() {
        for k in 0..MAX {
            assert!(l.check(&format!("flood-{i}-{k}")).unwrap().allowed);
        }
        assert!(
            store.keys() <= MAX,
            "{} keys after {} policies",
            store.keys(),
            i + 1
        );
    }
    // 50 policies x 1,000 keys were offered: one budget of 1,000 holds them
    assert_eq!(
        store.keys(),
        table_keys(&limiters),
        "the budget counts every table"
    );
    assert!(
        store.keys() > MAX / 2,
        "eviction frees a slice, not everything"
    );
    let evicted: u64 = limiters.iter().map(|l| l.backend().stats().evictions).sum();
    assert!(evicted >= (50 * MAX - MAX) as u64, "{evicted} evictions");
}

#[test]
fn scopes_and_clones_share_the_budget_and_dropped_tables_give_it_back() {
    let clock = ManualClock::new(1_000_000);
    let store = MemoryStore::new().max_keys(MAX);
    let a = Limiter::builder(policy(10))
        .clock(clock.clone())
        .build_with(&store.scope("a"))
        .unwrap();
    let b = Limiter::builder(policy(10))
        .clock(clock.clone())
        .build_with(&store.clone().scope("b"))
        .unwrap();
    for k in 0..MAX {
        let _ = a.check(&format!("a-{k}")).unwrap();
    }
    assert_eq!(store.keys(), MAX);
    for k in 0..MAX {
        let _ = b.check(&format!("b-{k}")).unwrap();
    }
    assert!(store.keys() <= MAX, "{}", store.keys());
    // evicted from the table holding the most keys: `a` gave way to `b`
    assert!(a.backend().stats().evictions > 0);
    assert!(b.backend().stats().keys > 0);
    drop(a);
    assert_eq!(
        store.keys(),
        b.backend().stats().keys,
        "a's keys left the budget"
    );
}

#[test]
fn expired_keys_of_other_tables_go_before_any_eviction() {
    let clock = ManualClock::new(1_000_000);
    let store = MemoryStore::new().max_keys(MAX);
    // 1 per second: a charged key is back to fresh after a second
    let short = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap())
        .clock(clock.clone())
        .build_with(&store)
        .unwrap();
    for k in 0..MAX {
        let _ = short.check(&format!("s-{k}")).unwrap();
    }
    clock.advance(std::time::Duration::from_secs(2));
    let long = Limiter::builder(policy(10))
        .clock(clock.clone())
        .build_with(&store)
        .unwrap();
    for k in 0..MAX {
        let _ = long.check(&format!("l-{k}")).unwrap();
    }
    assert!(store.keys() <= MAX);
    assert_eq!(long.backend().stats().evictions, 0);
    assert_eq!(
        short.backend().stats().evictions,
        0,
        "expired keys went first"
    );
    assert!(short.backend().stats().expired > 0);
}

#[test]
fn multi_key_calls_respect_the_budget() {
    let clock = ManualClock::new(1_000_000);
    let store = MemoryStore::new().max_keys(MAX);
    let limiters = limiters(&store, 4, &clock);
    for k in 0..MAX {
        let keys: Vec<String> = (0..4).map(|i| format!("m-{i}-{k}")).collect();
        let items: Vec<_> = limiters
            .iter()
            .zip(&keys)
            .map(|(l, key)| l.item(key, 1))
            .collect();
        assert!(Limiter::check_all(&items).unwrap().allowed);
        assert!(store.keys() <= MAX + 4, "{}", store.keys());
    }
}

#[test]
fn concurrent_floods_stay_within_the_budget() {
    let store = MemoryStore::new().max_keys(MAX);
    let threads = 4;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let limiters: Vec<_> = (0..8u64)
                    .map(|i| {
                        Limiter::builder(policy(1_000 + 8 * t + i))
                            .build_with(&store)
                            .unwrap()
                    })
                    .collect();
                let mut peak = 0;
                for k in 0..2_000 {
                    let l = &limiters[k % limiters.len()];
                    let _ = l.check(&format!("c-{t}-{k}")).unwrap();
                    peak = peak.max(store.keys());
                }
                (peak, limiters)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let peak = results.iter().map(|(p, _)| *p).max().unwrap();
    // at most one key per thread inserting at the same moment beyond the budget
    assert!(peak <= MAX + threads as usize, "peak {peak}");
    let all: Vec<Limiter<MemoryBackend>> = results.into_iter().flat_map(|(_, l)| l).collect();
    assert_eq!(store.keys(), table_keys(&all));
}
