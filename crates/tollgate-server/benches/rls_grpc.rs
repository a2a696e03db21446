//! `ShouldRateLimit` over gRPC next to the same decision over RESP (`TG.CHECK`) and HTTP
//! (`POST /v1/check`) on the same tollgate-server in the same run, on the memory store and on
//! a redis-server started for the run (tollgate-testkit). A Rust load generator keeps
//! `BENCH_CONCURRENCY` calls in flight per protocol for `BENCH_SECONDS` and reports
//! decisions/s and p50/p99 latency.
//!
//! The decision is the same on every surface: a fixed window of 10^9 per day (never denies)
//! on one of `BENCH_KEYS` random keys. gRPC uses 4 HTTP/2 channels (tonic), RESP 4
//! multiplexed connections (redis-rs, commands pipelined by the client), HTTP a reqwest pool
//! (HTTP/1.1, one connection per call in flight). Server and load generator share the
//! machine's cores.
//!
//! Run: `cargo bench -p tollgate-server --bench rls_grpc`
//! Knobs: `BENCH_SECONDS` (5), `BENCH_CONCURRENCY` (64), `BENCH_KEYS` (10000).

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Server {
    _proc: Proc,
    http: SocketAddr,
    resp: SocketAddr,
    grpc: SocketAddr,
}

fn start_server(dir: &std::path::Path, store: &str) -> Server {
    let d = dir.display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate-server"))
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--resp-addr",
            "127.0.0.1:0",
            "--rls-addr",
            "127.0.0.1:0",
            "--rls-config",
            &d,
            "--store",
            store,
            "--policy",
            "bench=fixed_window:1000000000/day",
            "--log",
            "warn",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tollgate-server");
    let stdout = child.stdout.take().expect("stdout");
    let mut banner = String::new();
    BufReader::new(stdout)
        .read_line(&mut banner)
        .expect("banner");
    let addr = |scheme: &str| -> SocketAddr {
        let start = banner.find(scheme).expect("scheme") + scheme.len();
        let end = start + banner[start..].find(' ').expect("space");
        banner[start..end].parse().expect("address")
    };
    Server {
        http: addr("http://"),
        resp: addr("redis://"),
        grpc: addr("grpc://"),
        _proc: Proc(child),
    }
}

struct Figures {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

/// Runs `concurrency` loops of `call(i)` for `secs`; every call must return true.
async fn load<F, Fut>(concurrency: u64, secs: u64, call: F) -> Figures
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let call = Arc::clone(&call);
        let errors = Arc::clone(&errors);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut i = t.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            while Instant::now() < end {
                i = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let t0 = Instant::now();
                if !call(i >> 33).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Figures {
        per_sec: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

fn rls_request(key: u64) -> RateLimitRequest {
    RateLimitRequest {
        domain: "bench".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "user".into(),
                value: format!("k{key}"),
            }],
            ..Default::default()
        }],
        hits_addend: 0,
    }
}

async fn run_all(store_name: &str, server: &Server, secs: u64, conc: u64, keys: u64) {
    // gRPC: 4 channels.
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(
            RateLimitServiceClient::connect(format!("http://{}", server.grpc))
                .await
                .expect("gRPC connect"),
        );
    }
    let grpc = load(conc, secs, move |i| {
        let mut c = channels[(i % 4) as usize].clone();
        async move {
            matches!(c.should_rate_limit(rls_request(i % keys)).await, Ok(r) if r.get_ref().overall_code == 1)
        }
    })
    .await;
    // RESP: 4 multiplexed connections.
    let client = redis::Client::open(format!("redis://{}/", server.resp)).expect("client");
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(
            client
                .get_multiplexed_async_connection()
                .await
                .expect("RESP connect"),
        );
    }
    let resp = load(conc, secs, move |i| {
        let mut c = conns[(i % 4) as usize].clone();
        async move {
            let r: redis::RedisResult<Vec<i64>> = redis::cmd("TG.CHECK")
                .arg("bench")
                .arg(format!("k{}", i % keys))
                .query_async(&mut c)
                .await;
            matches!(r, Ok(v) if v.first() == Some(&0))
        }
    })
    .await;
    // HTTP: a reqwest pool.
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/check", server.http);
    let http = load(conc, secs, move |i| {
        let req = http
            .post(&url)
            .json(&serde_json::json!({"policy": "bench", "key": format!("k{}", i % keys)}))
            .send();
        async move { matches!(req.await, Ok(r) if r.status().is_success()) }
    })
    .await;
    println!("\nstore: {store_name} ({conc} calls in flight, {secs} s each, {keys} keys)");
    println!(
        "{:<28} {:>14} {:>10} {:>10} {:>8}",
        "surface", "decisions/s", "p50", "p99", "errors"
    );
    for (name, f) in [
        ("gRPC ShouldRateLimit (RLS)", &grpc),
        ("RESP TG.CHECK", &resp),
        ("HTTP POST /v1/check", &http),
    ] {
        println!(
            "{:<28} {:>14.0} {:>10.1?} {:>10.1?} {:>8}",
            name, f.per_sec, f.p50, f.p99, f.errors
        );
    }
    println!(
        "gRPC / RESP: {:.2}x, gRPC / HTTP: {:.2}x",
        grpc.per_sec / resp.per_sec,
        grpc.per_sec / http.per_sec
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run only for
    // `cargo bench`, so test runs stay short.
    if !std::env::args().any(|a| a == "--bench") {
        println!("rls_grpc: run with `cargo bench -p tollgate-server --bench rls_grpc`");
        return;
    }
    let secs = env_num("BENCH_SECONDS", 5);
    let conc = env_num("BENCH_CONCURRENCY", 64);
    let keys = env_num("BENCH_KEYS", 10_000).max(1);
    let dir = std::env::temp_dir().join(format!("tollgate-rls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("config dir");
    std::fs::write(
        dir.join("bench.yaml"),
        "domain: bench\ndescriptors:\n  - key: user\n    rate_limit: {unit: day, requests_per_unit: 1000000000}\n",
    )
    .expect("config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let memory = start_server(&dir, "memory");
    rt.block_on(run_all("memory", &memory, secs, conc, keys));
    drop(memory);
    match tollgate_testkit::RedisServer::start() {
        Ok(redis) => {
            let server = start_server(&dir, &redis.url());
            rt.block_on(run_all(
                &format!("redis ({})", redis.url()),
                &server,
                secs,
                conc,
                keys,
            ));
        }
        Err(e) => println!("\nstore: redis skipped: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
