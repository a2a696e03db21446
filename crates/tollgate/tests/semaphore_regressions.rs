//! Regression tests for the semaphore bugs of the tools our users come from, plus the
//! cancellation and error paths: every path gives back what it took.
//!
//! 1. A timeout raised after the permit was taken leaks the permit.
//! 2. Holding past the expiry lets a second holder in and leaves capacity inflated for good.
//! 3. Capacity is lost for good when a holder dies.

use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tollgate::semaphore::{
    AcquireOutcome, MemorySemaphoreBackend, Semaphore, SemaphoreBackend, SemaphoreError,
    SemaphoreOp, SemaphoreReply, SemaphoreStatus,
};
use tollgate::time::ManualClock;
use tollgate::StoreError;

/// A "remote" store: the memory backend behind a network-like delay that happens *after*
/// the grant, optionally failing after granting. `is_local` is false, so the semaphore
/// treats it like Redis.
struct SlowRemote {
    inner: MemorySemaphoreBackend,
    answer_delay: Duration,
    fail_after_grant: AtomicBool,
    grants: AtomicU32,
}

impl SlowRemote {
    fn new(answer_delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner: MemorySemaphoreBackend::new(),
            answer_delay,
            fail_after_grant: AtomicBool::new(false),
            grants: AtomicU32::new(0),
        })
    }
    fn after_grant(&self, o: AcquireOutcome) -> Result<AcquireOutcome, StoreError> {
        if o.is_granted() {
            self.grants.fetch_add(1, Ordering::SeqCst);
            if self.fail_after_grant.load(Ordering::SeqCst) {
                return Err(StoreError::new("test", "connection reset after the grant"));
            }
        }
        Ok(o)
    }
}

impl SemaphoreBackend for SlowRemote {
    fn call(&self, op: SemaphoreOp<'_>) -> Result<SemaphoreReply, StoreError> {
        let reply = self.inner.call(op)?;
        if let SemaphoreReply::Acquire(o) = reply {
            std::thread::sleep(self.answer_delay);
            return self.after_grant(o).map(SemaphoreReply::Acquire);
        }
        Ok(reply)
    }
    fn call_async<'a>(
        &'a self,
        op: SemaphoreOp<'a>,
    ) -> BoxFuture<'a, Result<SemaphoreReply, StoreError>> {
        Box::pin(async move {
            match op {
                SemaphoreOp::Acquire(_) => {
                    let o = self.inner.call(op)?.into_acquire()?;
                    tokio::time::sleep(self.answer_delay).await; // the reply is on its way…
                    self.after_grant(o).map(SemaphoreReply::Acquire)
                }
                SemaphoreOp::Release { .. } => {
                    tokio::time::sleep(self.answer_delay / 4).await;
                    self.inner.call(op)
                }
                _ => self.inner.call_async(op).await,
            }
        })
    }
}

async fn settle_until_free<B: SemaphoreBackend + ?Sized>(sem: &Semaphore<B>) -> SemaphoreStatus {
    // Releases of dropped futures run in spawned tasks: give them a moment.
    for _ in 0..200 {
        let st = sem.status_async().await.unwrap();
        if st.in_use == 0 && st.waiting == 0 {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sem.status_async().await.unwrap()
}

/// Bug 1: the caller's timeout fires while the store's grant is on its way back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_1_timeout_after_the_grant_does_not_leak_the_permit() {
    let remote = SlowRemote::new(Duration::from_millis(50));
    let sem = Semaphore::builder("bug1", 1)
        .build_on(remote.clone())
        .unwrap();
    for round in 1..=5 {
        let r = tokio::time::timeout(Duration::from_millis(10), sem.acquire_async()).await;
        assert!(
            r.is_err(),
            "the outer timeout must fire while the reply is in flight"
        );
        // The store did grant (the reply was still on its way when the caller gave up)…
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(remote.grants.load(Ordering::SeqCst), round);
        // …and the grant came back.
        let st = settle_until_free(&sem).await;
        assert_eq!(
            (st.in_use, st.holders, st.waiting),
            (0, 0, 0),
            "round {round}"
        );
    }
    assert!(sem.try_acquire_async().await.unwrap().is_some());
}

/// Bug 1, the built-in maximum wait: a waiter that times out leaves nothing behind, even
/// when its last attempt was still in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_1_wait_timeout_leaves_no_permit_and_no_queue_place() {
    let remote = SlowRemote::new(Duration::from_millis(5));
    let sem = Semaphore::builder("bug1-wait", 2)
        .max_wait(Duration::from_millis(60))
        .build_on(remote)
        .unwrap();
    let held = sem.acquire_n_async(2).await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..8 {
        let sem = sem.clone();
        waiters.push(tokio::spawn(async move { sem.acquire_async().await }));
    }
    for w in waiters {
        assert!(matches!(
            w.await.unwrap(),
            Err(SemaphoreError::WaitTimeout { .. })
        ));
    }
    drop(held);
    let st = settle_until_free(&sem).await;
    assert_eq!((st.in_use, st.waiting), (0, 0));
}

/// Cancellation at every point of an async acquire (dropping the future after N polls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_at_any_point_leaks_nothing() {
    for delay_ms in [0u64, 1, 3, 7, 12] {
        let remote = SlowRemote::new(Duration::from_millis(delay_ms));
        let sem = Semaphore::builder(format!("cancel-{delay_ms}"), 2)
            .build_on(remote)
            .unwrap();
        let blocker = sem.acquire_async().await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..20u64 {
            let sem = sem.clone();
            tasks.push(tokio::spawn(async move {
                let cut = Duration::from_micros(500 * i);
                let _ = tokio::time::timeout(cut, async {
                    let p = sem.acquire_async().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    drop(p);
                })
                .await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        drop(blocker);
        let st = settle_until_free(&sem).await;
        assert_eq!(
            (st.in_use, st.holders, st.waiting),
            (0, 0, 0),
            "delay {delay_ms} ms"
        );
    }
}

/// The same on the local backend (no spawned attempt: grant and handover are one step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_on_the_memory_backend_leaks_nothing() {
    let sem = Semaphore::builder("cancel-memory", 1)
        .build_on(Arc::new(MemorySemaphoreBackend::new()))
        .unwrap();
    let held = sem.acquire_async().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..30u64 {
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_micros(300 * i), sem.acquire_async()).await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(2)).await;
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    let st = settle_until_free(&sem).await;
    assert_eq!((st.in_use, st.holders, st.waiting), (0, 0, 0));
}

/// An error after the store granted (the connection died on the way back): the grant is
/// given back, the caller gets the store error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_after_the_grant_gives_the_permit_back() {
    let remote = SlowRemote::new(Duration::from_millis(1));
    remote.fail_after_grant.store(true, Ordering::SeqCst);
    let sem = Semaphore::builder("error-after", 1)
        .build_on(remote.clone())
        .unwrap();
    assert!(matches!(
        sem.acquire_async().await,
        Err(SemaphoreError::Store(_))
    ));
    let sem_sync = sem.clone();
    let r = tokio::task::spawn_blocking(move || sem_sync.acquire().map(|_| ()))
        .await
        .unwrap();
    assert!(matches!(r, Err(SemaphoreError::Store(_))));
    assert_eq!(remote.grants.load(Ordering::SeqCst), 2);
    remote.fail_after_grant.store(false, Ordering::SeqCst);
    let st = settle_until_free(&sem).await;
    assert_eq!((st.in_use, st.holders), (0, 0));
}

/// Bug 2: A holds past its lease; B gets the slot; A's late release must not free B's
/// permit or raise the capacity.
#[test]
fn regression_2_holding_past_the_expiry_never_inflates_capacity() {
    let clock = ManualClock::new(1_000_000);
    let sem = Semaphore::builder("bug2", 1)
        .clock(clock.clone())
        .lease(Duration::from_secs(10))
        .max_wait(Duration::ZERO)
        .build_on(Arc::new(MemorySemaphoreBackend::new()))
        .unwrap();
    let a = sem.acquire().unwrap();
    clock.advance(Duration::from_secs(10)); // A's lease ended exactly now
    let b = sem
        .acquire()
        .expect("the slot of an expired holder is free");
    assert_ne!(a.holder_id(), b.holder_id());
    // A finishes late: it is told, and nothing of B's is touched.
    assert!(matches!(
        a.release(),
        Err(SemaphoreError::LeaseExpired { .. })
    ));
    assert_eq!(sem.in_use().unwrap(), 1);
    assert!(
        sem.try_acquire().unwrap().is_none(),
        "capacity inflated by a late release"
    );
    // A late extend does not resurrect anything either.
    let c_clock = clock.clone();
    let a2 = sem.with_name("bug2-b").unwrap().acquire().unwrap();
    c_clock.advance(Duration::from_secs(11));
    assert!(a2.extend().is_err());
    assert_eq!(sem.with_name("bug2-b").unwrap().in_use().unwrap(), 0);
    // B's lease also ended during the advance; the slot is free, and exactly one.
    let d = sem.try_acquire().unwrap().unwrap();
    assert!(sem.try_acquire().unwrap().is_none());
    drop((b, d));
}

/// Bug 3: a holder that never releases (crashed, or `mem::forget`) loses its permits when
/// its lease ends, not before.
#[test]
fn regression_3_a_dead_holder_frees_its_slot_after_the_lease_not_before() {
    let clock = ManualClock::new(0);
    let sem = Semaphore::builder("bug3", 2)
        .clock(clock.clone())
        .lease(Duration::from_secs(30))
        .max_wait(Duration::ZERO)
        .build_on(Arc::new(MemorySemaphoreBackend::new()))
        .unwrap();
    std::mem::forget(sem.acquire_n(2).unwrap()); // dies without releasing
    clock.advance(Duration::from_micros(29_999_999));
    assert!(
        sem.try_acquire().unwrap().is_none(),
        "freed before the lease ended"
    );
    assert_eq!(sem.in_use().unwrap(), 2);
    clock.advance(Duration::from_micros(1));
    assert_eq!(sem.in_use().unwrap(), 0);
    let p = sem.try_acquire_n(2).unwrap();
    assert!(p.is_some(), "capacity lost for good");
}

/// A waiter blocked behind a dead holder gets the slot when the lease ends, without any
/// release to wake it.
#[test]
fn a_waiter_gets_the_slot_of_a_dead_holder_when_its_lease_ends() {
    let clock = ManualClock::new(0);
    let sem = Semaphore::builder("bug3-wait", 1)
        .clock(clock.clone())
        .lease(Duration::from_secs(30))
        .wait_forever()
        .build_on(Arc::new(MemorySemaphoreBackend::new()))
        .unwrap();
    std::mem::forget(sem.acquire().unwrap());
    let sem2 = sem.clone();
    let waiter = std::thread::spawn(move || sem2.acquire().map(|p| p.permits()));
    while sem.status().unwrap().waiting == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    clock.advance(Duration::from_secs(30));
    assert_eq!(waiter.join().unwrap().unwrap(), 1);
}

/// Dropping a permit inside a runtime, with a remote backend, releases it in a spawned task
/// (never blocking the executor).
#[tokio::test(flavor = "current_thread")]
async fn dropping_a_remote_permit_in_a_runtime_releases_it() {
    let remote = SlowRemote::new(Duration::from_millis(2));
    let sem = Semaphore::builder("drop-remote", 1)
        .build_on(remote)
        .unwrap();
    let p = sem.acquire_async().await.unwrap();
    drop(p); // must not block this single-threaded runtime
    let st = settle_until_free(&sem).await;
    assert_eq!(st.in_use, 0);
}
