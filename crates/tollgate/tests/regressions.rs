//! One regression test per fixed bug (see the commit that fixed it).

use std::time::Duration;
use tollgate::store::{memory::MemoryStore, Backend, Op, Store};
use tollgate::{Algorithm, Policy, Rate};

/// A caller whose `now` is older than the time a key was last written at (another thread read
/// the clock a little later and won the race) must neither panic (GCRA `remaining` underflow)
/// nor reset a window's count by moving it back to the previous window.
#[test]
fn a_stale_now_neither_underflows_nor_resets_a_window() {
    for algorithm in Algorithm::ALL {
        let policy = Policy::new(
            algorithm,
            [Rate::new(2, Duration::from_micros(1_000)).unwrap()],
        )
        .unwrap();
        let b = MemoryStore::new().bind(&policy).unwrap();
        // fill the window that starts at 2000 at t = 2000
        for _ in 0..2 {
            assert!(
                b.execute("k", Op::Check(1), 2_000)
                    .unwrap()
                    .unwrap()
                    .allowed,
                "{algorithm}"
            );
        }
        // a caller that read the clock at 1999 (previous window) arrives late
        let late = b.execute("k", Op::Check(1), 1_999).unwrap().unwrap();
        assert!(
            !late.allowed,
            "{algorithm}: a stale now was admitted past the limit"
        );
        let after = b.execute("k", Op::Check(1), 2_001).unwrap().unwrap();
        assert!(
            !after.allowed,
            "{algorithm}: the stale call reset the window"
        );
    }
    // GCRA: state more than tau ahead of a stale now
    let gcra = MemoryStore::new()
        .bind(&Policy::gcra(Rate::new(1, Duration::from_micros(100)).unwrap()).unwrap())
        .unwrap();
    assert!(
        gcra.execute("k", Op::Check(1), 10_000)
            .unwrap()
            .unwrap()
            .allowed
    );
    let stale = gcra.execute("k", Op::Check(1), 9_000).unwrap().unwrap();
    assert!(!stale.allowed);
    assert_eq!(stale.remaining, 0);
}

/// A token bucket that starts empty (`initial_tokens = 0`) must start refilling at its first
/// check even though that check is denied; before the fix every denied check re-created it
/// empty and a client polling faster than the refill interval was denied forever.
#[test]
fn an_empty_token_bucket_starts_refilling_at_its_first_denied_check() {
    let policy = Policy::token_bucket(5, 1, Duration::from_micros(100))
        .unwrap()
        .with_initial_tokens(0)
        .unwrap();
    let b = MemoryStore::new().bind(&policy).unwrap();
    let mut admitted_at = None;
    for t in (10_000..10_500).step_by(50) {
        let d = b.execute("k", Op::Check(1), t).unwrap().unwrap();
        if d.allowed {
            admitted_at = Some(t);
            break;
        }
    }
    assert_eq!(admitted_at, Some(10_100));
}
