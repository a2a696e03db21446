//! Side by side, one run, against a redis-server this binary starts:
//!
//! 1. the ceiling: `redis-benchmark -P 32` running the same GCRA script via EVALSHA on
//!    random keys (50 connections, 32 commands pipelined on each);
//! 2. tollgate-redis: decisions per second through ONE store (one multiplexed connection)
//!    with 64 concurrent tasks on random keys; and the ratio to the ceiling;
//! 3. latency at low load (one caller, one call at a time): p50/p99 of a decision next to a
//!    bare PING through the same client library, and redis-benchmark's own PING.
//!
//! Run: `cargo bench -p tollgate-redis --bench redis_throughput`
//! (env BENCH_SECONDS, default 5: how long the throughput phase runs).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::store::{Backend, Op, Store};
use tollgate::{Policy, Rate};
use tollgate_redis::RedisStore;
use tollgate_testkit::RedisServer;

const TASKS: usize = 64;
const KEYS: u64 = 100_000;
const ROUNDS: usize = 3;

/// Decisions per second of `TASKS` tasks on random keys for `seconds`, and the errors.
fn ours_throughput(
    rt: &tokio::runtime::Runtime,
    backend: &tollgate_redis::RedisBackend,
    seconds: u64,
) -> (f64, u64) {
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let backend = backend.clone();
            let (done, count, errors) = (done.clone(), count.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (task as u64 + 1);
                let mut key = String::with_capacity(16);
                while !done.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    key.clear();
                    use std::fmt::Write;
                    let _ = write!(key, "{}", rng % KEYS);
                    match backend.execute_async(&key, Op::Check(1), 0).await {
                        Ok(_) => count.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        done.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    });
    let rate = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    (rate, errors.load(Ordering::Relaxed))
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
    let threads: usize = std::env::var("BENCH_STORE_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let policy = Policy::gcra(Rate::per_second(1_000).unwrap().with_burst(100).unwrap()).unwrap();
    let store = RedisStore::builder()
        .url(server.url())
        .namespace("bench")
        .runtime_threads(threads)
        .build()
        .unwrap();
    let backend = store.scope("gcra").bind(&policy).unwrap();
    // Load the script (the first call does) and learn its SHA1 for redis-benchmark.
    let _ = backend.execute("warmup", Op::Check(1), 0).unwrap();
    let source = tollgate_redis::script_source(tollgate::Algorithm::Gcra);
    let sha = redis::Script::new(source).get_hash().to_string();

    // 1. the ceiling
    let params = tollgate::algorithm::gcra::Params::new(&policy.rates()[0]);
    let (t, tau, burst) = (
        params.emission_interval.to_string(),
        params.tolerance.to_string(),
        params.burst.to_string(),
    );
    let n = (seconds * 60_000).to_string();
    let port = server.port().to_string();
    let ceiling_args = [
        "-p",
        &port,
        "-P",
        "32",
        "-n",
        &n,
        "-r",
        "100000",
        "EVALSHA",
        &sha,
        "1",
        "bench:gcra:__rand_int__",
        "c",
        "",
        "1",
        "0",
        "",
        "1",
        &t,
        &tau,
        &burst,
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Rounds alternate the two sides, so a machine whose load changes during the run
    // (other processes) affects both alike; the median ratio is reported.
    let mut rounds = Vec::new();
    let mut errors_total = 0;
    for _ in 0..ROUNDS {
        let ceiling = tollgate_testkit::redis_benchmark(&ceiling_args)
            .expect("redis-benchmark")
            .rps;
        let (ours, errors) = ours_throughput(&rt, &backend, seconds);
        errors_total += errors;
        rounds.push((ceiling, ours));
    }
    // 3. latency at low load
    let mut decision_lat = Vec::new();
    for i in 0..5_000u64 {
        let key = (i % 1000).to_string();
        let t0 = Instant::now();
        let _ = backend.execute(&key, Op::Check(1), 0).unwrap();
        decision_lat.push(t0.elapsed());
    }
    let ping_lat = rt.block_on(async {
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut lat = Vec::new();
        for _ in 0..5_000 {
            let t0 = Instant::now();
            let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
            lat.push(t0.elapsed());
        }
        lat
    });
    let ping_args = ["-p", &port, "-c", "1", "-n", "20000", "PING"];
    let bench_ping = tollgate_testkit::redis_benchmark(&ping_args).expect("redis-benchmark");

    println!();
    println!(
        "tollgate-redis benchmark (redis-server {}, 1 server, loopback)",
        server.version()
    );
    println!("{:-<92}", "");
    println!(
        "{:<8} {:>22} {:>26} {:>8}",
        "round", "ceiling (decisions/s)", "ours, 64 tasks (decisions/s)", "ratio"
    );
    let mut ratios = Vec::new();
    for (i, (ceiling, ours)) in rounds.iter().enumerate() {
        println!(
            "{:<8} {:>22.0} {:>26.0} {:>7.2}x",
            i + 1,
            ceiling,
            ours,
            ours / ceiling
        );
        ratios.push(ours / ceiling);
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    println!(
        "median ratio ours / ceiling: {:.2}x (target >= 0.8x); {errors_total} errors",
        ratios[ratios.len() / 2]
    );
    println!("ceiling = redis-benchmark -P 32 -c 50 -r 100000 EVALSHA <gcra sha> (random keys)");
    println!(
        "ours    = one RedisStore (one multiplexed connection), {TASKS} tokio tasks, random keys"
    );
    println!("(store runtime threads: {threads}; caller runtime: 1 worker thread; 2-core machine shared with redis-server)");
    println!("{:-<92}", "");
    let (p50, p99) = percentiles(&mut decision_lat);
    let (q50, q99) = percentiles(&mut ping_lat.clone());
    println!("latency at low load (1 caller, sequential):");
    println!(
        "  decision (sync check, GCRA)   p50 {:>7.1} µs   p99 {:>7.1} µs",
        p50, p99
    );
    println!(
        "  bare PING (redis crate)       p50 {:>7.1} µs   p99 {:>7.1} µs",
        q50, q99
    );
    println!(
        "  bare PING (redis-benchmark -c 1)  p50 {:>7.1} µs   p99 {:>7.1} µs",
        bench_ping.p50_ms * 1000.0,
        bench_ping.p99_ms * 1000.0
    );
    println!("  decision p50 / PING p50 (same client): {:.2}x", p50 / q50);
}

fn percentiles(lat: &mut [Duration]) -> (f64, f64) {
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}
