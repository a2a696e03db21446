//! Local leases (`tollgate::store::lease`) over real redis-servers: several OS processes,
//! each with its own `LeaseStore`, hammer ONE key with a frozen quota (10 000 per 28 days):
//! never more admitted than the quota, on a standalone server and on a Cluster; the false
//! denials stay within N × max_batch; expired leases give their units back (seen with a
//! peek); a crashed process loses at most its batch, until the store refills.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tollgate::store::lease::{LeaseConfig, LeaseStore};
use tollgate::store::{Backend, Op, Store};
use tollgate::time::{Clock, SystemClock};
use tollgate::{Policy, Rate};
use tollgate_redis::{RedisStore, TimeSource};
use tollgate_testkit::{RedisCluster, RedisServer};

const CHILD_ENV: &str = "TOLLGATE_LEASE_CHILD";
const PROCESSES: usize = 4;
const TASKS: usize = 16;
const ATTEMPTS: usize = 400;
const QUOTA: u64 = 10_000;
const MAX_BATCH: u64 = 100;

static STANDALONE: OnceLock<Option<RedisServer>> = OnceLock::new();
static CLUSTER: OnceLock<Option<RedisCluster>> = OnceLock::new();

fn standalone() -> Option<&'static RedisServer> {
    STANDALONE
        .get_or_init(tollgate_testkit::require_redis)
        .as_ref()
}

fn cluster() -> Option<&'static RedisCluster> {
    CLUSTER
        .get_or_init(tollgate_testkit::require_redis_cluster)
        .as_ref()
}

fn unique_ns(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("lease{}-{n}-{what}", std::process::id())
}

/// 10 000 per 28 days: one unit comes back every 242 s, so the quota is frozen for a test.
fn policies() -> Vec<Policy> {
    let period = Duration::from_secs(28 * 86_400);
    vec![
        Policy::gcra(Rate::new(QUOTA, period).unwrap()).unwrap(),
        Policy::token_bucket(QUOTA, QUOTA, period).unwrap(),
    ]
}

fn config() -> LeaseConfig {
    LeaseConfig::default()
        .max_batch(MAX_BATCH)
        .min_batch(4)
        .duration(Duration::from_millis(100))
}

/// `"<namespace> standalone <url>"` or `"<namespace> cluster <url> <url> ..."`.
fn store_from_spec(spec: &str, time: TimeSource) -> RedisStore {
    let mut parts = spec.split(' ');
    let ns = parts.next().unwrap();
    let kind = parts.next().unwrap();
    let urls: Vec<String> = parts.map(String::from).collect();
    let builder = RedisStore::builder().namespace(ns).time_source(time);
    let builder = if kind == "cluster" {
        builder.cluster(urls)
    } else {
        builder.url(urls[0].clone())
    };
    builder.build().unwrap()
}

/// Child: TASKS tasks × ATTEMPTS checks of "hot" per policy through a LeaseStore; prints
/// the admitted counts, after giving every batch back.
fn hammer(spec: &str) -> Vec<u64> {
    let store = LeaseStore::new(store_from_spec(spec, TimeSource::Server), config());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    policies()
        .iter()
        .map(|policy| {
            let backend = store.bind(policy).unwrap();
            let admitted = Arc::new(AtomicU64::new(0));
            rt.block_on(async {
                let mut tasks = Vec::new();
                for _ in 0..TASKS {
                    let (backend, admitted) = (backend.clone(), admitted.clone());
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..ATTEMPTS {
                            let now = SystemClock.now();
                            let d = backend.execute_async("hot", Op::Check(1), now).await;
                            if d.unwrap().unwrap().allowed {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                backend.flush_async().await.unwrap();
            });
            admitted.load(Ordering::Relaxed)
        })
        .collect()
}

fn run_children(test: &str, spec: &str) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, spec)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a child test process")
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "child failed: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        })
        .collect()
}

fn field<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.split(name).nth(1))
        .unwrap_or_else(|| panic!("no {name} line in child output: {stdout}"))
}

/// Child mode only; in a normal run it returns at once.
#[test]
fn child_hammer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let admitted: Vec<String> = hammer(&spec).iter().map(u64::to_string).collect();
    println!("\nADMITTED={}", admitted.join(","));
}

fn processes_never_over_admit(spec: &str) {
    let ns = spec.split(' ').next().unwrap();
    let mut totals = vec![0u64; policies().len()];
    for out in run_children("child_hammer", spec) {
        for (i, n) in field(&out, "ADMITTED=").split(',').enumerate() {
            totals[i] += n.parse::<u64>().unwrap();
        }
    }
    let attempts = (PROCESSES * TASKS * ATTEMPTS) as u64;
    assert!(attempts > 2 * QUOTA);
    let plain = store_from_spec(spec, TimeSource::Server);
    for (policy, admitted) in policies().iter().zip(&totals) {
        let false_denials = QUOTA.saturating_sub(*admitted);
        eprintln!(
            "{ns} {policy}: {PROCESSES} processes x {TASKS} tasks, {attempts} calls: admitted \
             {admitted} of {QUOTA} allowed; false denials {false_denials} ({:.2} % of the quota; \
             bound N x B = {})",
            100.0 * false_denials as f64 / QUOTA as f64,
            PROCESSES as u64 * MAX_BATCH
        );
        assert!(*admitted <= QUOTA, "{policy}: over-admitted {admitted}");
        assert!(
            false_denials <= PROCESSES as u64 * MAX_BATCH,
            "{policy}: {false_denials} false denials"
        );
        // Every child gave its batches back: the store has exactly the unused units.
        let d = plain
            .bind(policy)
            .unwrap()
            .execute("hot", Op::Peek(1), 0)
            .unwrap()
            .unwrap();
        let free = if d.allowed { d.remaining + 1 } else { 0 };
        assert_eq!(free, QUOTA - admitted, "{policy}");
    }
}

#[test]
fn processes_with_leases_never_over_admit_standalone() {
    let Some(server) = standalone() else { return };
    let ns = unique_ns("procs");
    processes_never_over_admit(&format!("{ns} standalone {}", server.url()));
}

#[test]
fn processes_with_leases_never_over_admit_cluster() {
    let Some(cluster) = cluster() else { return };
    let ns = unique_ns("procs");
    processes_never_over_admit(&format!("{ns} cluster {}", cluster.urls().join(" ")));
}

#[test]
fn expired_leases_give_their_units_back() {
    let Some(server) = standalone() else { return };
    let spec = format!("{} standalone {}", unique_ns("expiry"), server.url());
    let policy = &policies()[0];
    let plain = store_from_spec(&spec, TimeSource::Server)
        .bind(policy)
        .unwrap();
    let leased = LeaseStore::new(store_from_spec(&spec, TimeSource::Server), config())
        .bind(policy)
        .unwrap();
    for _ in 0..300 {
        let now = SystemClock.now();
        assert!(
            leased
                .execute("k", Op::Check(1), now)
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    let held = leased.held();
    assert!(held > 0, "a hot key holds a batch");
    let free = |d: tollgate::Decision| d.remaining + 1;
    let peek = || free(plain.execute("k", Op::Peek(1), 0).unwrap().unwrap());
    assert_eq!(peek(), QUOTA - 300 - held);
    // The background sweep gives the batch back one lease duration after the last reserve.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while leased.held() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(leased.held(), 0);
    assert_eq!(peek(), QUOTA - 300);
}

/// Child mode only: takes a batch at a frozen caller time, prints it, and dies without
/// giving it back.
#[test]
fn child_crash() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let policy = Policy::gcra(Rate::per_second(1_000).unwrap()).unwrap();
    let leased = LeaseStore::new(store_from_spec(&spec, TimeSource::Caller), config())
        .bind(&policy)
        .unwrap();
    for _ in 0..200 {
        assert!(
            leased
                .execute("k", Op::Check(1), 1_000_000)
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    println!("\nHELD={}", leased.held());
    std::process::exit(0); // no flush, no destructor: a crash
}

#[test]
fn a_crashed_process_loses_at_most_its_batch_until_the_store_refills() {
    let Some(server) = standalone() else { return };
    let spec = format!("{} standalone {}", unique_ns("crash"), server.url());
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(&exe)
        .args(["child_crash", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &spec)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let held: u64 = field(&stdout, "HELD=").trim().parse().unwrap();
    assert!(held > 0 && held <= MAX_BATCH, "held {held}");
    let policy = Policy::gcra(Rate::per_second(1_000).unwrap()).unwrap();
    let plain = store_from_spec(&spec, TimeSource::Caller)
        .bind(&policy)
        .unwrap();
    let free = |now| {
        plain
            .execute("k", Op::Peek(1), now)
            .unwrap()
            .unwrap()
            .remaining
            + 1
    };
    // Lost: the 200 admitted and the batch the process died with...
    assert_eq!(free(1_000_000), 1_000 - 200 - held);
    // ...until the store's refill brings them back (1000/s: fresh one second later).
    assert_eq!(free(2_000_000), 1_000);
}
