//! Regression (issue 15 residual): the Redis semaphore scripts carried no deadline. With
//! redis-server frozen (SIGSTOP) past the store timeout, a timed-out acquire stays queued on
//! the connection and reaches Redis when it resumes; it used to run then and grant permits
//! to a holder that had been told "failed" (they stayed in use until the lease ended), and a
//! timed-out extend renewed a lease its holder believed lost. The scripts now carry a
//! deadline on Redis's clock, like the rate-limit scripts, and refuse to run late.

use std::time::{Duration, Instant};
use tollgate::semaphore::{AcquireRequest, HolderId, SemaphoreBackend};
use tollgate::StoreErrorKind;
use tollgate_redis::{RedisSemaphoreBackend, RedisStore};
use tollgate_testkit::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(300);
/// How long Redis stays frozen: well past the store timeout.
const FROZEN: Duration = Duration::from_millis(1200);
const LEASE_US: u64 = 60_000_000;

fn signal(server: &RedisServer, sig: &str) {
    let pid = server.pid().expect("redis-server runs").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Freezes `server` for [`FROZEN`] while `during` runs, then resumes it and lets Redis drain
/// the queued calls.
fn frozen<T>(server: &RedisServer, during: impl FnOnce() -> T) -> T {
    signal(server, "STOP");
    let started = Instant::now();
    let out = during();
    if let Some(rest) = FROZEN.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    signal(server, "CONT");
    std::thread::sleep(Duration::from_millis(200));
    out
}

fn request(name: &str, holder: HolderId) -> AcquireRequest<'_> {
    AcquireRequest {
        name,
        holder,
        permits: 1,
        capacity: 3,
        lease: LEASE_US,
        queue_ttl: None,
        now: 0,
    }
}

#[test]
fn timed_out_semaphore_calls_change_nothing_when_they_reach_redis_late() {
    let Some(server) = tollgate_testkit::require_redis() else {
        return;
    };
    let store = RedisStore::builder()
        .url(server.url())
        .namespace("sem-late")
        .timeout(TIMEOUT)
        .build()
        .unwrap();
    let backend = RedisSemaphoreBackend::new(&store).unwrap();
    let held = HolderId::random();
    assert!(backend
        .try_acquire(&request("db", held))
        .unwrap()
        .is_granted());
    let before = backend.status("db", 0).unwrap();
    assert_eq!(before.in_use, 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lost = [HolderId::random(), HolderId::random()];
    frozen(&server, || {
        let timed_out = |r: Result<_, tollgate::StoreError>| match r {
            Err(e) => assert_eq!(e.kind, StoreErrorKind::Timeout, "{e}"),
            Ok(o) => panic!("expected a store timeout, got {o:?}"),
        };
        timed_out(backend.try_acquire(&request("db", lost[0])).map(|_| ()));
        let req = request("db", lost[1]);
        timed_out(rt.block_on(backend.try_acquire_async(&req)).map(|_| ()));
        // An extension the holder was told failed does not renew its lease either.
        timed_out(backend.extend("db", held, 3 * LEASE_US, 0).map(|_| ()));
    });
    let after = backend.status("db", 0).unwrap();
    assert_eq!(
        (after.in_use, after.holders),
        (1, 1),
        "the acquires the callers were told failed granted nothing"
    );
    // The lease of `held` was not moved by the late extension: the holders' sorted set
    // still has its first lease end (within the test's duration of it).
    let keys = backend.redis_keys("db").unwrap();
    let score = server
        .command(&["ZSCORE", &keys[0], &held.to_string()])
        .unwrap()
        .as_text()
        .unwrap();
    let ends_in_s = (score.parse::<f64>().unwrap() / 1e6) - now_s(&server);
    assert!(
        ends_in_s <= 60.0,
        "the lease ends in {ends_in_s:.1} s: the late extension ran"
    );
}

/// The server's clock in seconds.
fn now_s(server: &RedisServer) -> f64 {
    let t = server.command(&["TIME"]).unwrap();
    let tollgate_testkit::Resp::Array(Some(parts)) = t else {
        panic!("{t:?}")
    };
    let secs: f64 = parts[0].as_text().unwrap().parse().unwrap();
    let micros: f64 = parts[1].as_text().unwrap().parse().unwrap();
    secs + micros / 1e6
}
