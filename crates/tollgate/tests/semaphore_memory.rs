//! The in-memory semaphore: capacity under contention (threads and tasks), FIFO waiting,
//! leases with a manual clock, extension, auto-renewal, wrappers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;
use tollgate::semaphore::{MemorySemaphoreBackend, Semaphore, SemaphoreError};
use tollgate::time::ManualClock;

fn private(name: &str, capacity: u64) -> Semaphore {
    Semaphore::builder(name, capacity)
        .build_on(Arc::new(MemorySemaphoreBackend::new()))
        .unwrap()
}

/// Tracks holders independently of the semaphore: `enter` fails the test if more than
/// `capacity` are inside at once.
struct Occupancy {
    inside: AtomicU64,
    peak: AtomicU64,
}

impl Occupancy {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inside: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        })
    }
    fn enter(&self, n: u64) {
        let now = self.inside.fetch_add(n, Ordering::SeqCst) + n;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self, n: u64) {
        self.inside.fetch_sub(n, Ordering::SeqCst);
    }
}

#[test]
fn threads_never_exceed_capacity() {
    let sem = private("threads", 3);
    let occ = Occupancy::new();
    let threads = 12;
    let rounds = 200;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (sem, occ, barrier) = (sem.clone(), occ.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for r in 0..rounds {
                    let n = 1 + ((i + r) % 2) as u64; // 1 or 2 permits
                    let permit = sem.acquire_n(n).unwrap();
                    occ.enter(n);
                    std::thread::yield_now();
                    occ.leave(n);
                    drop(permit);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let peak = occ.peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "peak {peak} exceeds the capacity 3");
    assert!(
        peak >= 2,
        "the test never ran holders concurrently (peak {peak})"
    );
    let st = sem.status().unwrap();
    assert_eq!((st.in_use, st.holders, st.waiting), (0, 0, 0));
    assert_eq!(sem.backend().names(), 0, "state left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_never_exceed_capacity() {
    let sem = private("tasks", 4);
    let occ = Occupancy::new();
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let (sem, occ) = (sem.clone(), occ.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..30 {
                let n = 1 + i % 3;
                let permit = sem.acquire_n_async(n).await.unwrap();
                occ.enter(n);
                tokio::task::yield_now().await;
                occ.leave(n);
                drop(permit);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let peak = occ.peak.load(Ordering::SeqCst);
    assert!(peak <= 4, "peak {peak} exceeds the capacity 4");
    assert_eq!(sem.in_use_async().await.unwrap(), 0);
    assert_eq!(sem.status().unwrap().waiting, 0);
}

#[test]
fn try_acquire_and_counts() {
    let sem = private("counts", 5);
    let a = sem.try_acquire_n(3).unwrap().unwrap();
    let b = sem.try_acquire_n(2).unwrap().unwrap();
    assert!(sem.try_acquire().unwrap().is_none());
    let st = sem.status().unwrap();
    assert_eq!((st.in_use, st.holders), (5, 2));
    drop(a);
    assert_eq!(sem.in_use().unwrap(), 2);
    assert!(sem.try_acquire_n(4).unwrap().is_none());
    let c = sem.try_acquire_n(3).unwrap().unwrap();
    b.release().unwrap();
    c.release().unwrap();
    assert_eq!(sem.in_use().unwrap(), 0);
}

#[test]
fn invalid_arguments_are_errors() {
    assert!(matches!(
        Semaphore::builder("x", 0).build(),
        Err(SemaphoreError::ZeroCapacity)
    ));
    assert!(matches!(
        Semaphore::builder("", 1).build(),
        Err(SemaphoreError::EmptyName)
    ));
    assert!(matches!(
        Semaphore::builder("x", 1)
            .lease(Duration::from_micros(10))
            .build(),
        Err(SemaphoreError::LeaseTooShort(_))
    ));
    assert!(matches!(
        Semaphore::builder("x".repeat(2000), 1).build(),
        Err(SemaphoreError::NameTooLong { len: 2000, .. })
    ));
    let sem = private("invalid", 2);
    assert!(matches!(
        sem.acquire_n(3),
        Err(SemaphoreError::PermitsExceedCapacity {
            permits: 3,
            capacity: 2
        })
    ));
    assert!(matches!(
        sem.try_acquire_n(0),
        Err(SemaphoreError::ZeroPermits)
    ));
    let p = sem.acquire().unwrap();
    assert!(matches!(
        p.extend_by(Duration::ZERO),
        Err(SemaphoreError::LeaseTooShort(_))
    ));
    assert!(sem.with_name("").is_err());
}

#[test]
fn waiters_are_served_in_fifo_order() {
    let sem = private("fifo", 1);
    let holder = sem.acquire().unwrap();
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..4 {
        let (sem2, order2) = (sem.clone(), order.clone());
        handles.push(std::thread::spawn(move || {
            let p = sem2.acquire().unwrap();
            order2.lock().push(i);
            std::thread::sleep(Duration::from_millis(2));
            drop(p);
        }));
        // wait until this waiter is queued before starting the next
        while sem.status().unwrap().waiting < i + 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    drop(holder);
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(*order.lock(), vec![0, 1, 2, 3]);
}

#[test]
fn a_large_request_is_not_starved_by_small_ones() {
    let sem = private("starve", 2);
    let one = sem.acquire().unwrap();
    let sem2 = sem.clone();
    let big = std::thread::spawn(move || sem2.acquire_n(2).map(|p| p.permits()));
    while sem.status().unwrap().waiting < 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // One permit is free, but the waiter ahead needs two: a newcomer must not overtake it.
    assert!(sem.try_acquire().unwrap().is_none());
    drop(one);
    assert_eq!(big.join().unwrap().unwrap(), 2);
}

#[test]
fn the_maximum_wait_covers_the_whole_wait_and_leaves_no_queue_place() {
    let clock = ManualClock::new(0);
    let sem = Semaphore::builder("maxwait", 1)
        .clock(clock.clone())
        .lease(Duration::from_secs(60))
        .max_wait(Duration::from_secs(5))
        .build_on(Arc::new(MemorySemaphoreBackend::new()))
        .unwrap();
    let _held = sem.acquire().unwrap();
    let sem2 = sem.clone();
    let waiter = std::thread::spawn(move || sem2.acquire());
    while sem.status().unwrap().waiting < 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    clock.advance(Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(20));
    assert!(!waiter.is_finished(), "gave up before the maximum wait");
    clock.advance(Duration::from_secs(2));
    let r = waiter.join().unwrap();
    assert!(
        matches!(
            r,
            Err(SemaphoreError::WaitTimeout {
                in_use: 1,
                capacity: 1,
                ..
            })
        ),
        "{r:?}"
    );
    let st = sem.status().unwrap();
    assert_eq!((st.in_use, st.waiting), (1, 0));
}

#[test]
fn extend_keeps_a_lease_alive_and_fails_after_it_ended() {
    let clock = ManualClock::new(0);
    let sem = Semaphore::builder("extend", 1)
        .clock(clock.clone())
        .lease(Duration::from_secs(10))
        .build_on(Arc::new(MemorySemaphoreBackend::new()))
        .unwrap();
    let p = sem.acquire().unwrap();
    for _ in 0..5 {
        clock.advance(Duration::from_secs(9));
        p.extend().unwrap();
    }
    assert_eq!(
        sem.in_use().unwrap(),
        1,
        "extended lease still held after 45 s"
    );
    clock.advance(Duration::from_secs(10)); // exactly the lease: ended
    assert!(matches!(
        p.extend(),
        Err(SemaphoreError::LeaseExpired { .. })
    ));
    assert!(p.lease_lost());
    assert_eq!(
        sem.in_use().unwrap(),
        0,
        "a failed extend must not bring it back"
    );
    assert!(matches!(
        p.release(),
        Err(SemaphoreError::LeaseExpired { .. })
    ));
}

#[test]
fn auto_renew_holds_past_the_lease_and_stops_on_drop() {
    let sem = Semaphore::builder("renew-sync", 1)
        .lease(Duration::from_millis(60))
        .auto_renew(true)
        .build_on(Arc::new(MemorySemaphoreBackend::new()))
        .unwrap();
    let p = sem.acquire().unwrap();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            sem.try_acquire().unwrap().is_none(),
            "renewed lease was lost"
        );
    }
    assert!(!p.lease_lost());
    p.release().unwrap();
    assert!(sem.try_acquire().unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_renew_in_a_runtime() {
    let sem = Semaphore::builder("renew-async", 2)
        .lease(Duration::from_millis(60))
        .auto_renew(true)
        .build_on(Arc::new(MemorySemaphoreBackend::new()))
        .unwrap();
    let p = sem.acquire_n_async(2).await.unwrap();
    let first_expiry = p.expires_at();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(sem.in_use_async().await.unwrap(), 2);
    assert!(p.expires_at() > first_expiry + 100_000, "never renewed");
    drop(p);
    assert_eq!(sem.in_use_async().await.unwrap(), 0);
    // A dropped permit's renewer stops: nothing comes back.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sem.in_use_async().await.unwrap(), 0);
}

#[test]
fn call_and_wrap_release_even_on_panic() {
    let sem = private("wrappers", 1);
    assert_eq!(sem.call(|| 5).unwrap(), 5);
    let sem2 = sem.clone();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        sem2.call(|| panic!("boom")).unwrap();
    }));
    assert!(panicked.is_err());
    assert_eq!(sem.in_use().unwrap(), 0);
    let f = sem.wrap(|x: i32| x + 1);
    assert_eq!(f(1).unwrap(), 2);
    assert_eq!(sem.in_use().unwrap(), 0);
}

#[tokio::test]
async fn async_wrappers() {
    let sem = private("wrappers-async", 1);
    let inner = sem.clone();
    let v = sem
        .call_async(async move { inner.in_use_async().await.unwrap() })
        .await
        .unwrap();
    assert_eq!(v, 1, "the future runs while holding the permit");
    let f = sem.wrap_async(|x: u32| async move { x * 3 });
    assert_eq!(f(3).await.unwrap(), 9);
    assert_eq!(sem.in_use_async().await.unwrap(), 0);
}

#[test]
fn names_are_independent_and_share_the_backend() {
    let backend = Arc::new(MemorySemaphoreBackend::new());
    let a = Semaphore::builder("tenant:a", 1)
        .build_on(backend.clone())
        .unwrap();
    let b = a.with_name("tenant:b").unwrap();
    let a2 = Semaphore::builder("tenant:a", 1)
        .build_on(backend.clone())
        .unwrap();
    let pa = a.acquire().unwrap();
    assert!(
        a2.try_acquire().unwrap().is_none(),
        "same name, same semaphore"
    );
    let pb = b.try_acquire().unwrap().unwrap();
    assert_eq!(backend.names(), 2);
    drop((pa, pb));
    assert_eq!(backend.names(), 0);
}

#[test]
fn the_global_backend_is_shared_by_name() {
    let a = Semaphore::memory("global-shared-name", 1).unwrap();
    let b = Semaphore::memory("global-shared-name", 1).unwrap();
    let _p = a.acquire().unwrap();
    assert!(b.try_acquire().unwrap().is_none());
}
