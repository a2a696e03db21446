//! Regression (issue 15, item 5): a waiter behind a holder whose lease expires gets the permit
//! when the lease ends, not when its own maximum wait runs out. The holder here never
//! releases (its permit is leaked, like a process killed with -9): only the lease frees it.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::semaphore::{MemorySemaphoreBackend, Semaphore};
use tollgate::time::ManualClock;

const LEASE: Duration = Duration::from_secs(2);
const MAX_WAIT: Duration = Duration::from_secs(10);

fn semaphore(name: &str) -> Semaphore<MemorySemaphoreBackend> {
    Semaphore::builder(name, 1)
        .lease(LEASE)
        .max_wait(MAX_WAIT)
        .build_on(Arc::new(MemorySemaphoreBackend::new()))
        .unwrap()
}

/// Asserts the wait ended when the lease did (2 s), well before the maximum wait (10 s).
fn assert_woken_at_lease_end(waited: Duration) {
    assert!(
        waited >= LEASE - Duration::from_millis(50),
        "granted before the holder's lease ended: {waited:?}"
    );
    assert!(
        waited < LEASE + Duration::from_millis(700),
        "granted {waited:?} after the wait began, the lease ended at {LEASE:?}"
    );
}

#[test]
fn a_sync_waiter_gets_the_permit_when_the_lease_expires() {
    let sem = semaphore("lease-expiry-sync");
    let started = Instant::now();
    std::mem::forget(sem.acquire().unwrap()); // a holder that dies without releasing
    let permit = sem.acquire().expect("granted within the maximum wait");
    assert_woken_at_lease_end(started.elapsed());
    drop(permit);
    assert_eq!(sem.in_use().unwrap(), 0);
}

#[test]
fn an_async_waiter_gets_the_permit_when_the_lease_expires() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sem = semaphore("lease-expiry-async");
        let started = Instant::now();
        std::mem::forget(sem.acquire_async().await.unwrap());
        let permit = sem.acquire_async().await.expect("granted");
        assert_woken_at_lease_end(started.elapsed());
        drop(permit);
    });
}

#[test]
fn with_a_manual_clock_the_waiter_is_granted_when_the_clock_passes_the_lease() {
    let clock = ManualClock::new(0);
    let sem = Semaphore::builder("lease-expiry-manual", 1)
        .clock(clock.clone())
        .lease(LEASE)
        .max_wait(MAX_WAIT)
        .build_on(Arc::new(MemorySemaphoreBackend::new()))
        .unwrap();
    std::mem::forget(sem.acquire().unwrap());
    let waiter = {
        let sem = sem.clone();
        std::thread::spawn(move || sem.acquire().map(|p| p.expires_at()))
    };
    while sem.status().unwrap().waiting < 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    clock.advance(LEASE - Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(50));
    assert!(!waiter.is_finished(), "granted while the lease was live");
    clock.advance(Duration::from_millis(1)); // the lease ends exactly now
    let started = Instant::now();
    let expires_at = waiter
        .join()
        .unwrap()
        .expect("granted at the lease's end, 8 s before the maximum wait");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "woken {:?} after the clock passed the lease",
        started.elapsed()
    );
    // the new lease starts at 2 s on the manual clock
    assert_eq!(expires_at, 2 * 2_000_000);
}

/// The backend's own wait (what tollgate-server's semaphore endpoints wait on) ends when the
/// lease does, though it is asked to wait the whole 10 s: before the fix it slept until a
/// release or the end of its wait, and a lease that ended releases nothing.
#[test]
fn the_backend_wait_ends_when_a_lease_ends() {
    use tollgate::semaphore::{AcquireOutcome, AcquireRequest, HolderId, SemaphoreBackend};
    use tollgate::time::{Clock, SystemClock};
    let backend = MemorySemaphoreBackend::new();
    let request = |holder| AcquireRequest {
        name: "backend-wait",
        holder,
        permits: 1,
        capacity: 1,
        lease: LEASE.as_micros() as u64,
        queue_ttl: Some(MAX_WAIT.as_micros() as u64),
        now: SystemClock.now(),
    };
    let started = Instant::now();
    assert!(matches!(
        backend.try_acquire(&request(HolderId::random())).unwrap(),
        AcquireOutcome::Granted { .. }
    ));
    let waiter = HolderId::random();
    let AcquireOutcome::Busy { epoch, .. } = backend.try_acquire(&request(waiter)).unwrap() else {
        panic!("the permit is held")
    };
    backend.wait_blocking("backend-wait", epoch, 0, MAX_WAIT);
    assert_woken_at_lease_end(started.elapsed());
    assert!(matches!(
        backend.try_acquire(&request(waiter)).unwrap(),
        AcquireOutcome::Granted { .. }
    ));

    // async: the same, on a fresh holder's lease
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let waiter = HolderId::random();
    let AcquireOutcome::Busy { epoch, .. } = backend.try_acquire(&request(waiter)).unwrap() else {
        panic!("the permit is held")
    };
    rt.block_on(backend.wait("backend-wait", epoch, 0, MAX_WAIT));
    assert_woken_at_lease_end(started.elapsed());
}
