//! The semaphore on a real redis-server (and a real Cluster): capacity across tasks and OS
//! processes (tracked outside the scheme with INCR/DECR), a holder killed with SIGKILL, the
//! three known bugs, cancellation, TTLs on every key.
//!
//! Child processes are this test binary re-run on one test with `TOLLGATE_SEM_CHILD` set.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tollgate::semaphore::{Semaphore, SemaphoreBackend, SemaphoreError};
use tollgate_redis::{RedisSemaphoreBackend, RedisStore};
use tollgate_testkit::{RedisCluster, RedisServer, RespClient};

static STANDALONE: OnceLock<Option<RedisServer>> = OnceLock::new();
static CLUSTER: OnceLock<Option<RedisCluster>> = OnceLock::new();

fn standalone() -> Option<&'static RedisServer> {
    STANDALONE
        .get_or_init(tollgate_testkit::require_redis)
        .as_ref()
}

fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "s{}-{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn backend_for(url: &str, ns: &str) -> Arc<RedisSemaphoreBackend> {
    let store = RedisStore::builder()
        .url(url)
        .namespace(ns)
        .build()
        .unwrap();
    RedisSemaphoreBackend::new(&store).unwrap().into_arc()
}

fn sem(
    url: &str,
    ns: &str,
    name: &str,
    capacity: u64,
    lease: Duration,
) -> Semaphore<RedisSemaphoreBackend> {
    Semaphore::builder(name, capacity)
        .lease(lease)
        .max_wait(Duration::from_secs(20))
        .build_on(backend_for(url, ns))
        .unwrap()
}

/// Records one more holder inside, atomically tracking the peak (outside the scheme).
const ENTER: &str = "local v = redis.call('INCR', KEYS[1]) \
    if v > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], v) end \
    redis.call('PEXPIRE', KEYS[1], 600000) redis.call('PEXPIRE', KEYS[2], 600000) return v";

fn enter(client: &mut RespClient, ns: &str) -> i64 {
    let inside = format!("{ns}:occ:inside");
    let peak = format!("{ns}:occ:peak");
    client
        .call(&["EVAL", ENTER, "2", &inside, &peak])
        .unwrap()
        .as_int()
        .unwrap()
}

fn leave(client: &mut RespClient, ns: &str) {
    client.call(&["DECR", &format!("{ns}:occ:inside")]).unwrap();
}

fn read_int(client: &mut RespClient, key: &str) -> i64 {
    client
        .call(&["GET", key])
        .unwrap()
        .as_text()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

fn server_time_us(client: &mut RespClient) -> u64 {
    match client.call(&["TIME"]).unwrap() {
        tollgate_testkit::Resp::Array(Some(items)) => {
            let s: u64 = items[0].as_text().unwrap().parse().unwrap();
            let us: u64 = items[1].as_text().unwrap().parse().unwrap();
            s * 1_000_000 + us
        }
        other => panic!("TIME: {other:?}"),
    }
}

fn child_env() -> Option<(String, String, String, String)> {
    let role = std::env::var("TOLLGATE_SEM_CHILD").ok()?;
    Some((
        role,
        std::env::var("TOLLGATE_SEM_URL").unwrap(),
        std::env::var("TOLLGATE_SEM_NS").unwrap(),
        std::env::var("TOLLGATE_SEM_PORT").unwrap(),
    ))
}

fn spawn_child(test: &str, role: &str, server: &RedisServer, ns: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("TOLLGATE_SEM_CHILD", role)
        .env("TOLLGATE_SEM_URL", server.url())
        .env("TOLLGATE_SEM_NS", ns)
        .env("TOLLGATE_SEM_PORT", server.port().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

const CAPACITY: u64 = 3;

/// One worker (thread or process): `rounds` acquire → enter → hold → leave → release.
fn worker(url: &str, ns: &str, port: u16, rounds: usize) {
    let s = sem(url, ns, "fleet", CAPACITY, Duration::from_secs(10));
    let mut client = RespClient::connect(port).unwrap();
    for _ in 0..rounds {
        let permit = s.acquire().unwrap();
        let inside = enter(&mut client, ns);
        assert!(inside <= CAPACITY as i64, "{inside} holders inside");
        std::thread::sleep(Duration::from_millis(2));
        leave(&mut client, ns);
        permit.release().unwrap();
    }
}

#[test]
fn processes_and_tasks_never_exceed_capacity() {
    if let Some((role, url, ns, port)) = child_env() {
        assert_eq!(role, "worker");
        worker(&url, &ns, port.parse().unwrap(), 40);
        return;
    }
    let Some(server) = standalone() else { return };
    let ns = unique("fleet");
    let children: Vec<_> = (0..3)
        .map(|_| {
            spawn_child(
                "processes_and_tasks_never_exceed_capacity",
                "worker",
                server,
                &ns,
            )
        })
        .collect();
    // This process joins with threads and async tasks at the same time.
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (url, ns, port) = (server.url(), ns.clone(), server.port());
            std::thread::spawn(move || worker(&url, &ns, port, 40))
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = sem(
        &server.url(),
        &ns,
        "fleet",
        CAPACITY,
        Duration::from_secs(10),
    );
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (s, ns, port) = (s.clone(), ns.clone(), server.port());
            tasks.push(tokio::spawn(async move {
                let mut client = RespClient::connect(port).unwrap();
                for _ in 0..15 {
                    let permit = s.acquire_async().await.unwrap();
                    let inside = enter(&mut client, &ns);
                    assert!(inside <= CAPACITY as i64, "{inside} holders inside");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    leave(&mut client, &ns);
                    drop(permit);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    for t in threads {
        t.join().unwrap();
    }
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a worker process failed");
    }
    let mut client = RespClient::connect(server.port()).unwrap();
    let peak = read_int(&mut client, &format!("{ns}:occ:peak"));
    assert!(peak <= CAPACITY as i64, "peak {peak}");
    assert!(peak >= 2, "never concurrent (peak {peak})");
    let st = s.status().unwrap();
    assert_eq!((st.in_use, st.holders, st.waiting), (0, 0, 0));
}

#[test]
fn a_holder_killed_with_sigkill_frees_its_slot_after_the_lease_not_before() {
    let lease = Duration::from_millis(1500);
    if let Some((role, url, ns, _)) = child_env() {
        assert_eq!(role, "holder");
        let s = sem(&url, &ns, "killed", 2, lease);
        let permit = s.acquire_n(2).unwrap();
        println!("HELD {}", permit.expires_at());
        std::mem::forget(permit);
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let Some(server) = standalone() else { return };
    let ns = unique("kill");
    let mut child = spawn_child(
        "a_holder_killed_with_sigkill_frees_its_slot_after_the_lease_not_before",
        "holder",
        server,
        &ns,
    );
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let expires_at: u64 = loop {
        let line = lines.next().expect("the holder exited early").unwrap();
        // libtest prints "test <name> ... " on the same line before the child's output.
        if let Some((_, rest)) = line.split_once("HELD ") {
            break rest.trim().parse().unwrap();
        }
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let s = Semaphore::builder("killed", 2)
        .lease(lease)
        .max_wait(Duration::from_secs(10))
        .build_on(backend_for(&server.url(), &ns))
        .unwrap();
    assert_eq!(
        s.in_use().unwrap(),
        2,
        "the dead holder's slots are still leased"
    );
    assert!(s.try_acquire().unwrap().is_none());
    // Wait for a slot: it must come back, and not before the lease end (server clock).
    let permit = s.acquire().unwrap();
    let mut client = RespClient::connect(server.port()).unwrap();
    let granted_at = server_time_us(&mut client);
    assert!(
        granted_at >= expires_at,
        "granted at {granted_at}, before the dead holder's lease end {expires_at}"
    );
    assert!(
        permit.expires_at() >= expires_at + 1_500_000,
        "the new lease starts at or after the old lease end"
    );
    let second = s.try_acquire().unwrap();
    assert!(
        second.is_some(),
        "both of the dead holder's permits came back"
    );
}

#[test]
fn regression_2_holding_past_the_expiry_never_inflates_capacity() {
    let Some(server) = standalone() else { return };
    let ns = unique("bug2");
    let s = sem(&server.url(), &ns, "bug2", 1, Duration::from_millis(200));
    let a = s.acquire().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let b = s
        .try_acquire()
        .unwrap()
        .expect("the expired holder's slot is free");
    assert!(matches!(
        a.extend(),
        Err(SemaphoreError::LeaseExpired { .. })
    ));
    assert!(matches!(
        a.release(),
        Err(SemaphoreError::LeaseExpired { .. })
    ));
    assert_eq!(s.in_use().unwrap(), 1);
    assert!(s.try_acquire().unwrap().is_none(), "capacity inflated");
    b.release().unwrap();
    assert_eq!(s.in_use().unwrap(), 0);
}

#[test]
fn regression_3_a_dead_holder_frees_its_slot_after_the_lease() {
    let Some(server) = standalone() else { return };
    let ns = unique("bug3");
    let s = sem(&server.url(), &ns, "bug3", 1, Duration::from_millis(300));
    std::mem::forget(s.acquire().unwrap());
    assert!(s.try_acquire().unwrap().is_none());
    let waited = s.acquire().unwrap(); // the waiter gets it when the lease ends
    waited.release().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_1_cancellation_and_timeouts_leak_nothing() {
    let Some(server) = standalone() else { return };
    let ns = unique("cancel");
    let s = Semaphore::builder("cancel", 2)
        .lease(Duration::from_secs(30))
        .max_wait(Duration::from_millis(40))
        .build_on(backend_for(&server.url(), &ns))
        .unwrap();
    let blocker = s.acquire_async().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            // Cut at every moment: before the call, while the script runs, while the reply
            // is on its way, while waiting, and after the grant.
            let cut = Duration::from_micros(150 * i);
            let _ = tokio::time::timeout(cut, async {
                if let Ok(p) = s.acquire_async().await {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    drop(p);
                }
            })
            .await;
        }));
    }
    // Waiters that run out of their own maximum wait (40 ms).
    let timeouts: Vec<_> = (0..5)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.acquire_n_async(2).await.map(|_| ()) })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for t in timeouts {
        assert!(matches!(
            t.await.unwrap(),
            Err(SemaphoreError::WaitTimeout { .. })
        ));
    }
    drop(blocker);
    let mut last = None;
    for _ in 0..200 {
        let st = s.status_async().await.unwrap();
        if (st.in_use, st.holders, st.waiting) == (0, 0, 0) {
            last = None;
            break;
        }
        last = Some(st);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(last, None, "permits or queue places leaked");
}

#[test]
fn every_key_has_a_ttl_and_nothing_outlives_the_last_holder() {
    let Some(server) = standalone() else { return };
    let ns = unique("ttl");
    let backend = backend_for(&server.url(), &ns);
    let s = Semaphore::builder("ttl", 1)
        .lease(Duration::from_secs(20))
        .max_wait(Duration::from_secs(5))
        .build_on(backend.clone())
        .unwrap();
    let keys = backend.redis_keys("ttl").unwrap();
    let held = s.acquire().unwrap();
    // a waiter queues (creating the queue keys) while `held` is held
    let s2 = s.clone();
    let waiter = std::thread::spawn(move || s2.acquire().map(|p| p.release()));
    while s.status().unwrap().waiting == 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut client = RespClient::connect(server.port()).unwrap();
    let mut seen = 0;
    for k in &keys {
        let pttl = client.call(&["PTTL", k]).unwrap().as_int().unwrap();
        if pttl == -2 {
            continue; // not present
        }
        seen += 1;
        assert!(pttl > 0 && pttl <= 20_000, "{k}: PTTL {pttl}");
    }
    assert_eq!(
        seen, 7,
        "holders, permits, queue, places, wanted, tickets, in use"
    );
    drop(held);
    waiter.join().unwrap().unwrap().unwrap();
    for k in &keys {
        assert_eq!(
            client.call(&["EXISTS", k]).unwrap().as_int(),
            Some(0),
            "{k} outlived the last holder"
        );
    }
}

#[test]
fn fifo_and_no_starvation_on_redis() {
    let Some(server) = standalone() else { return };
    let ns = unique("fifo");
    let s = sem(&server.url(), &ns, "fifo", 2, Duration::from_secs(10));
    let one = s.acquire().unwrap();
    let s2 = s.clone();
    let big = std::thread::spawn(move || s2.acquire_n(2).map(|p| p.permits()));
    while s.status().unwrap().waiting == 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        s.try_acquire().unwrap().is_none(),
        "a newcomer overtook the waiter for 2"
    );
    drop(one);
    assert_eq!(big.join().unwrap().unwrap(), 2);
}

#[test]
fn extend_and_auto_renew_on_redis() {
    let Some(server) = standalone() else { return };
    let ns = unique("renew");
    let s = Semaphore::builder("renew", 1)
        .lease(Duration::from_millis(150))
        .auto_renew(true)
        .build_on(backend_for(&server.url(), &ns))
        .unwrap();
    let p = s.acquire().unwrap();
    let first = p.expires_at();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.in_use().unwrap(), 1, "auto-renewed lease lost");
    assert!(p.expires_at() > first);
    p.extend_by(Duration::from_secs(5)).unwrap();
    p.release().unwrap();
    assert_eq!(s.in_use().unwrap(), 0);
}

#[test]
fn a_store_that_is_down_is_a_store_error_not_a_busy_semaphore() {
    let port = tollgate_testkit::free_port();
    let store = RedisStore::builder()
        .url(format!("redis://127.0.0.1:{port}/"))
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let backend = RedisSemaphoreBackend::new(&store).unwrap().into_arc();
    assert!(!backend.is_local());
    let s = Semaphore::builder("down", 1).build_on(backend).unwrap();
    assert!(matches!(s.try_acquire(), Err(SemaphoreError::Store(_))));
}

#[test]
fn works_on_a_cluster() {
    let Some(cluster) = CLUSTER
        .get_or_init(tollgate_testkit::require_redis_cluster)
        .as_ref()
    else {
        return;
    };
    let store = RedisStore::builder()
        .cluster(cluster.urls())
        .namespace(unique("cluster"))
        .build()
        .unwrap();
    let backend = RedisSemaphoreBackend::new(&store).unwrap().into_arc();
    let occupancy = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    for name in ["alpha", "beta", "gamma"] {
        let s = Semaphore::builder(name, 2)
            .lease(Duration::from_secs(10))
            .build_on(backend.clone())
            .unwrap();
        let handles: Vec<_> = (0..5)
            .map(|_| {
                let (s, occ, peak) = (s.clone(), occupancy.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        let p = s.acquire().unwrap();
                        let now = occ.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1));
                        occ.fetch_sub(1, Ordering::SeqCst);
                        drop(p);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(s.in_use().unwrap(), 0);
    }
    assert!(peak.load(Ordering::SeqCst) <= 2);
}
