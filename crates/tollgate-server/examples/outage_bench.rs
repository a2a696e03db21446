//! Decisions/s and latency while Redis is down, for the library (a fail-open `Limiter` on
//! `FailSafeStore<RedisStore>`, default 1 s store timeout) and for the server (failure policy
//! `open`, default 250 ms store timeout, driven over RESP with `CL.THROTTLE`).
//!
//! ```text
//! cargo build --release -p tollgate-server
//! cargo run --release -p tollgate-server --example outage_bench
//! ```
//!
//! Env: `OUTAGE` = `frozen` (SIGSTOP: connections stay open, every call waits for its
//! timeout), `killed` (SIGKILL: connections are refused) or `both` (default); `SECS` per run
//! (default 5); `THREADS` library caller threads (default 8); `CONNS` server connections
//! (default 32); `BREAKER=off` disables the library's breaker (the server gets
//! `--breaker-failures 0`); `SERVER_BIN` the server binary (default
//! `target/release/tollgate-server`). Each run starts its own redis-server (tollgate-testkit),
//! charges one key while Redis is up, takes Redis down, then measures for `SECS`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::store::failure::{CircuitBreaker, FailSafeStore};
use tollgate::{Limiter, Policy, Rate};
use tollgate_redis::RedisStore;
use tollgate_testkit::RedisServer;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn take_down(server: &mut RedisServer, outage: &str) {
    match outage {
        "killed" => server.stop(),
        _ => {
            let pid = server.pid().expect("running").to_string();
            let ok = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
            assert!(ok.success());
        }
    }
}

fn bring_back(server: &mut RedisServer, outage: &str) {
    if outage != "killed" {
        if let Some(pid) = server.pid() {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

/// Decisions/s, p50, p99, max from per-call latencies (ns) over `elapsed`.
fn report(what: &str, mut lat: Vec<u64>, elapsed: Duration) {
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{what:<44} {:>10.0} decisions/s   p50 {:>10.1} µs   p99 {:>10.1} µs   max {:>10.1} µs   ({} calls)",
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50) as f64 / 1e3,
        pct(0.99) as f64 / 1e3,
        lat.last().copied().unwrap_or(0) as f64 / 1e3,
        lat.len()
    );
}

fn library(outage: &str, secs: u64, threads: usize, breaker: bool) {
    let mut redis = RedisServer::start().expect("redis-server");
    let store = RedisStore::open(&redis.url()).unwrap(); // default timeout: 1 s
    let mut store = FailSafeStore::fail_open(store);
    if !breaker {
        store = store.with_breaker(CircuitBreaker::disabled());
    }
    let policy = Policy::gcra(Rate::per_second(1_000_000).unwrap()).unwrap();
    let limiter = Limiter::builder(policy).build_with(&store).unwrap();
    assert!(limiter.check("warm").unwrap().allowed);
    take_down(&mut redis, outage);
    let limiter = Arc::new(limiter);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let limiter = Arc::clone(&limiter);
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let key = format!("k{t}");
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let d = limiter.check(&key).unwrap();
                    lat.push(t0.elapsed().as_nanos() as u64);
                    assert!(d.allowed, "fail open");
                }
                lat
            })
        })
        .collect();
    let lat: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    bring_back(&mut redis, outage);
    let label = format!(
        "library, Redis {outage}, breaker {}",
        if breaker { "on" } else { "off" }
    );
    report(&label, lat, elapsed);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(outage: &str, secs: u64, conns: usize, breaker: bool, bin: &str) {
    let mut redis = RedisServer::start().expect("redis-server");
    let port = free_port();
    let mut args = vec![
        "--store".to_string(),
        redis.url(),
        "--failure".into(),
        "open".into(),
        "--http-addr".into(),
        format!("127.0.0.1:{}", free_port()),
        "--resp-addr".into(),
        format!("127.0.0.1:{port}"),
    ];
    if !breaker {
        args.extend(["--breaker-failures".into(), "0".into()]);
    }
    let _server = Server(
        Command::new(bin)
            .args(&args)
            .env("TOLLGATE_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}")),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = format!("redis://127.0.0.1:{port}/");
    let (lat, elapsed) = rt.block_on(async {
        let client = redis::Client::open(url.as_str()).unwrap();
        let wait_up = Instant::now() + Duration::from_secs(10);
        let mut first = loop {
            match client.get_multiplexed_async_connection().await {
                Ok(c) => break c,
                Err(_) if Instant::now() < wait_up => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("server did not start: {e}"),
            }
        };
        let _: Vec<i64> = redis::cmd("CL.THROTTLE")
            .arg(&["warm", "1000", "1000000", "1"])
            .query_async(&mut first)
            .await
            .unwrap();
        take_down(&mut redis, outage);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for c in 0..conns {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                let key = format!("k{c}");
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let reply: Vec<i64> = redis::cmd("CL.THROTTLE")
                        .arg(&[key.as_str(), "1000", "1000000", "1"])
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    lat.push(t0.elapsed().as_nanos() as u64);
                    assert_eq!(reply[0], 0, "fail open admits");
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        (lat, started.elapsed())
    });
    bring_back(&mut redis, outage);
    let label = format!(
        "server (RESP), Redis {outage}, breaker {}",
        if breaker { "on" } else { "off" }
    );
    report(&label, lat, elapsed);
}

fn main() {
    let outage = env("OUTAGE", "both");
    let secs: u64 = env("SECS", "5").parse().unwrap();
    let threads: usize = env("THREADS", "8").parse().unwrap();
    let conns: usize = env("CONNS", "32").parse().unwrap();
    let breaker = env("BREAKER", "on") != "off";
    let default_bin = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/release/tollgate-server"
    );
    let bin = env("SERVER_BIN", default_bin);
    let outages: Vec<&str> = match outage.as_str() {
        "both" => vec!["frozen", "killed"],
        one => vec![one],
    };
    let only = env("ONLY", "both");
    for o in outages {
        if only != "server" {
            library(o, secs, threads, breaker);
        }
        if only != "library" {
            server(o, secs, conns, breaker, &bin);
        }
    }
}
