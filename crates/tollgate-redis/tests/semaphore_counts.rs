//! The Redis semaphore keeps a running count of permits in use (`…:c`) instead of summing every
//! holder on each acquire (which made an acquire O(holders): milliseconds at ~15k holders).
//! These tests pin that the count stays exact through grants, releases and lease expiry, that
//! it is rebuilt when missing (state written before the count existed), and that the wait
//! queue still counts as used after the walk that stops at the free room. The caller's clock
//! drives time, so every expiry is exact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tollgate::semaphore::{
    AcquireOutcome, AcquireRequest, HolderId, ReleaseOutcome, SemaphoreBackend,
};
use tollgate_redis::{RedisSemaphoreBackend, RedisStore, TimeSource};
use tollgate_testkit::{RedisServer, RespClient};

static SERVER: OnceLock<Option<RedisServer>> = OnceLock::new();

fn server() -> Option<&'static RedisServer> {
    SERVER.get_or_init(tollgate_testkit::require_redis).as_ref()
}

fn backend(server: &RedisServer) -> (RedisSemaphoreBackend, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let ns = format!(
        "c{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let store = RedisStore::builder()
        .url(server.url())
        .namespace(&ns)
        .time_source(TimeSource::Caller)
        .build()
        .unwrap();
    (RedisSemaphoreBackend::new(&store).unwrap(), ns)
}

const T0: u64 = 1_780_000_000_000_000;

fn acquire(
    b: &RedisSemaphoreBackend,
    holder: HolderId,
    permits: u64,
    lease: u64,
    queue: bool,
    now: u64,
) -> AcquireOutcome {
    b.try_acquire(&AcquireRequest {
        name: "db",
        holder,
        permits,
        capacity: 5,
        lease,
        queue_ttl: queue.then_some(10_000_000),
        now,
    })
    .unwrap()
}

fn count_key(client: &mut RespClient, key: &str) -> Option<i64> {
    client
        .call(&["GET", key])
        .unwrap()
        .as_text()
        .map(|t| t.parse().unwrap())
}

#[test]
fn the_running_count_follows_grants_releases_and_expiry() {
    let Some(server) = server() else { return };
    let (b, _) = backend(server);
    let c = b.redis_keys("db").unwrap()[6].clone();
    let mut client = RespClient::connect(server.port()).unwrap();
    let (a, bb, cc, d) = (
        HolderId::random(),
        HolderId::random(),
        HolderId::random(),
        HolderId::random(),
    );
    assert!(acquire(&b, a, 2, 100, false, T0).is_granted());
    assert!(acquire(&b, bb, 1, 1_000, false, T0).is_granted());
    assert_eq!(count_key(&mut client, &c), Some(3));
    assert_eq!(b.status("db", T0 + 50).unwrap().in_use, 3);
    // a's lease ended at T0 + 100: purged, and its 2 permits leave the count
    assert_eq!(b.status("db", T0 + 150).unwrap().in_use, 1);
    assert!(acquire(&b, cc, 4, 1_000, false, T0 + 150).is_granted());
    assert!(!acquire(&b, d, 1, 1_000, false, T0 + 150).is_granted());
    assert_eq!(count_key(&mut client, &c), Some(5));
    // a late release of the expired holder frees nothing
    assert_eq!(
        b.release("db", a, T0 + 160).unwrap(),
        ReleaseOutcome::NotHeld
    );
    assert_eq!(b.status("db", T0 + 160).unwrap().in_use, 5);
    assert_eq!(
        b.release("db", bb, T0 + 170).unwrap(),
        ReleaseOutcome::Released
    );
    assert_eq!(count_key(&mut client, &c), Some(4));
    assert_eq!(
        b.release("db", cc, T0 + 180).unwrap(),
        ReleaseOutcome::Released
    );
    // at zero the count key is gone, like every other key of an idle semaphore
    assert_eq!(count_key(&mut client, &c), None);
    assert_eq!(b.status("db", T0 + 190).unwrap().in_use, 0);
}

#[test]
fn a_missing_count_is_rebuilt_from_the_holders_and_never_over_admits() {
    let Some(server) = server() else { return };
    let (b, _) = backend(server);
    let c = b.redis_keys("db").unwrap()[6].clone();
    let mut client = RespClient::connect(server.port()).unwrap();
    for _ in 0..4 {
        assert!(acquire(&b, HolderId::random(), 1, 1_000_000, false, T0).is_granted());
    }
    // State as an older version wrote it: no running count.
    client.call(&["DEL", &c]).unwrap();
    assert_eq!(b.status("db", T0 + 1).unwrap().in_use, 4);
    assert!(!acquire(&b, HolderId::random(), 2, 1_000_000, false, T0 + 2).is_granted());
    assert!(acquire(&b, HolderId::random(), 1, 1_000_000, false, T0 + 3).is_granted());
    assert_eq!(count_key(&mut client, &c), Some(5));
    assert!(!acquire(&b, HolderId::random(), 1, 1_000_000, false, T0 + 4).is_granted());
}

#[test]
fn queued_waiters_still_count_as_used_ahead_of_later_callers() {
    let Some(server) = server() else { return };
    let (b, _) = backend(server);
    let holder = HolderId::random();
    assert!(acquire(&b, holder, 4, 1_000, false, T0).is_granted());
    // Two waiters queue (3 and 2 permits) while 4 of 5 are in use.
    let (w1, w2) = (HolderId::random(), HolderId::random());
    assert!(!acquire(&b, w1, 3, 1_000_000, true, T0 + 1).is_granted());
    assert!(!acquire(&b, w2, 2, 1_000_000, true, T0 + 2).is_granted());
    assert_eq!(b.status("db", T0 + 3).unwrap().waiting, 2);
    // The holder expires: 5 free. A newcomer for 1 sees 3 + 2 queued ahead: refused.
    assert!(!acquire(&b, HolderId::random(), 1, 1_000_000, false, T0 + 2_000).is_granted());
    // The second waiter sees only the first ahead (3): 3 + 2 <= 5, granted in FIFO room.
    assert!(acquire(&b, w2, 2, 1_000_000, true, T0 + 2_001).is_granted());
    // The first waiter is granted too; then the semaphore is full.
    assert!(acquire(&b, w1, 3, 1_000_000, true, T0 + 2_002).is_granted());
    assert_eq!(b.status("db", T0 + 2_003).unwrap().in_use, 5);
    assert_eq!(b.status("db", T0 + 2_003).unwrap().waiting, 0);
}
