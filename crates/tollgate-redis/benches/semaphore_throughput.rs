//! Semaphore acquire + release pairs per second on Redis, side by side, one run, against a
//! redis-server this binary starts:
//!
//! 1. the ceiling: `redis-benchmark -P 32 -c 50` running EVALSHA of the acquire script, then
//!    of the release script, with the arguments `RedisSemaphoreBackend` sends (the same seven
//!    keys, capacity, lease, queue TTL, server time, TTL margin); holder ids are drawn from
//!    64 values (`-r 64`), so at most 64 holders exist, as with 64 tasks. Each pair is two
//!    script calls, so the pair ceiling is `1 / (1/acquire_rate + 1/release_rate)`;
//! 2. tollgate-redis through `Semaphore<RedisSemaphoreBackend>` (`acquire_async` +
//!    `release_async`), 1 task and 64 tasks, capacity 1,000,000 (never blocks);
//! 3. the same 64 tasks calling the backend directly (`try_acquire_async` + `release_async`),
//!    which separates the `Semaphore` layer from the store calls.
//!
//! Rounds alternate the sides so a change of machine load hits both; medians are reported.
//!
//! Run: `cargo bench -p tollgate-redis --bench semaphore_throughput`
//! (env BENCH_SECONDS, default 5: how long each of our phases runs).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::semaphore::{AcquireRequest, HolderId, Semaphore, SemaphoreBackend};
use tollgate_redis::{RedisSemaphoreBackend, RedisStore};
use tollgate_testkit::RedisServer;

const NAME: &str = "bench-sem";
const CAPACITY: u64 = 1_000_000;
const LEASE: Duration = Duration::from_secs(60);
const QUEUE_TTL_US: u64 = 2_000_000;
const MARGIN: Duration = Duration::from_secs(1);
const ROUNDS: usize = 3;

#[derive(Clone, Copy)]
enum Via {
    Semaphore,
    Backend,
}

struct Counters {
    done: AtomicBool,
    pairs: AtomicU64,
    errors: AtomicU64,
}

/// One acquire + release pair; false on any error or refusal.
async fn one_pair(
    via: Via,
    sem: &Semaphore<RedisSemaphoreBackend>,
    backend: &RedisSemaphoreBackend,
) -> bool {
    match via {
        Via::Semaphore => match sem.acquire_async().await {
            Ok(permit) => permit.release_async().await.is_ok(),
            Err(_) => false,
        },
        Via::Backend => {
            let holder = HolderId::random();
            let req = AcquireRequest {
                name: NAME,
                holder,
                permits: 1,
                capacity: CAPACITY,
                lease: LEASE.as_micros() as u64,
                queue_ttl: Some(QUEUE_TTL_US),
                now: 0,
            };
            match backend.try_acquire_async(&req).await {
                Ok(o) if o.is_granted() => backend.release_async(NAME, holder, 0).await.is_ok(),
                _ => false,
            }
        }
    }
}

/// Pairs per second of `tasks` tasks for `seconds`, and the errors.
fn ours(
    rt: &tokio::runtime::Runtime,
    sem: &Semaphore<RedisSemaphoreBackend>,
    via: Via,
    tasks: usize,
    seconds: u64,
) -> (f64, u64) {
    let counters = Arc::new(Counters {
        done: AtomicBool::new(false),
        pairs: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let started = Instant::now();
    rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let sem = sem.clone();
            let counters = Arc::clone(&counters);
            handles.push(tokio::spawn(async move {
                let backend = Arc::clone(sem.backend());
                while !counters.done.load(Ordering::Relaxed) {
                    if one_pair(via, &sem, &backend).await {
                        counters.pairs.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        counters.done.store(true, Ordering::Relaxed);
        for h in handles {
            h.await.unwrap();
        }
    });
    let rate = counters.pairs.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    (rate, counters.errors.load(Ordering::Relaxed))
}

fn main() {
    let server = match RedisServer::start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start redis-server: {e}");
            std::process::exit(1);
        }
    };
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let store = RedisStore::builder()
        .url(server.url())
        .namespace("bench")
        .expiry_margin(MARGIN)
        .build()
        .unwrap();
    let backend = RedisSemaphoreBackend::new(&store).unwrap().into_arc();
    let sem = Semaphore::builder(NAME, CAPACITY)
        .lease(LEASE)
        .build_on(Arc::clone(&backend))
        .unwrap();
    // Loads both scripts (the first calls do) and checks the setup.
    sem.acquire().unwrap().release().unwrap();

    let keys = backend.redis_keys(NAME).unwrap();
    let sha = |op: &str| {
        let source = tollgate_redis::semaphore_script_source(op).unwrap();
        redis::Script::new(source).get_hash().to_string()
    };
    let (acquire_sha, release_sha) = (sha("acquire"), sha("release"));
    let port = server.port().to_string();
    let n = (seconds * 40_000).to_string();
    let (capacity, lease, queue_ttl, margin) = (
        CAPACITY.to_string(),
        LEASE.as_micros().to_string(),
        QUEUE_TTL_US.to_string(),
        MARGIN.as_millis().to_string(),
    );
    let common = ["-p", &port, "-P", "32", "-c", "50", "-n", &n, "-r", "64"];
    let mut acquire_args: Vec<&str> = common.to_vec();
    acquire_args.extend(["EVALSHA", &acquire_sha, "7"]);
    acquire_args.extend(keys.iter().map(String::as_str));
    // holder, permits, capacity, lease, queue TTL, now ('' = server TIME), margin, deadline
    // ('' = none)
    acquire_args.extend([
        "__rand_int__",
        "1",
        &capacity,
        &lease,
        &queue_ttl,
        "",
        &margin,
        "",
    ]);
    let mut release_args: Vec<&str> = common.to_vec();
    release_args.extend(["EVALSHA", &release_sha, "7"]);
    release_args.extend(keys.iter().map(String::as_str));
    // holder, now, margin, deadline ('' = none)
    release_args.extend(["__rand_int__", "", &margin, ""]);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut rounds = Vec::new();
    let mut errors = 0;
    for _ in 0..ROUNDS {
        let acquire_rps = tollgate_testkit::redis_benchmark(&acquire_args)
            .expect("redis-benchmark")
            .rps;
        let release_rps = tollgate_testkit::redis_benchmark(&release_args)
            .expect("redis-benchmark")
            .rps;
        let ceiling = 1.0 / (1.0 / acquire_rps + 1.0 / release_rps);
        let (one, e1) = ours(&rt, &sem, Via::Semaphore, 1, seconds);
        let (many, e2) = ours(&rt, &sem, Via::Semaphore, 64, seconds);
        let (direct, e3) = ours(&rt, &sem, Via::Backend, 64, seconds);
        errors += e1 + e2 + e3;
        rounds.push([acquire_rps, release_rps, ceiling, one, many, direct]);
    }
    let left = sem.status().unwrap();

    println!();
    println!(
        "tollgate-redis semaphore benchmark (redis-server {}, 1 server, loopback)",
        server.version()
    );
    println!("{:-<104}", "");
    println!(
        "{:<6} {:>12} {:>12} {:>14} {:>12} {:>14} {:>16}",
        "round",
        "acquire/s",
        "release/s",
        "ceiling pair/s",
        "1 task",
        "64 tasks",
        "64 tasks direct"
    );
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "{:<6} {:>12.0} {:>12.0} {:>14.0} {:>12.0} {:>14.0} {:>16.0}",
            i + 1,
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5]
        );
    }
    let median = |col: usize| {
        let mut v: Vec<f64> = rounds.iter().map(|r| r[col]).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let ratio = |col: usize| {
        let mut v: Vec<f64> = rounds.iter().map(|r| r[col] / r[2]).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!("{:-<104}", "");
    println!(
        "median pairs/s: ceiling {:.0} | Semaphore 1 task {:.0} ({:.2}x) | Semaphore 64 tasks {:.0} ({:.2}x) | backend 64 tasks {:.0} ({:.2}x)",
        median(2),
        median(3),
        ratio(3),
        median(4),
        ratio(4),
        median(5),
        ratio(5)
    );
    println!(
        "(ratios = ours / ceiling, median of per-round ratios); {errors} errors; left in use afterwards: {}",
        left.in_use
    );
    println!(
        "ceiling = redis-benchmark {} EVALSHA <acquire sha> 7 <keys> __rand_int__ 1 {capacity} {lease} {queue_ttl} '' {margin} ''",
        common.join(" ").replace(&port, "<port>")
    );
    println!(
        "          then the same with EVALSHA <release sha> 7 <keys> __rand_int__ '' {margin} ''; pair = 1/(1/acquire + 1/release)"
    );
    println!(
        "ours    = one RedisStore (one multiplexed connection, 1 store runtime thread); caller runtime 1 worker thread; 2-core machine shared with redis-server"
    );
}
