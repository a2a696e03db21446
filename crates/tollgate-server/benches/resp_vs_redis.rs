//! Side-by-side benchmark: `CL.THROTTLE` against tollgate-server (memory store) next to
//! `EVALSHA` of an equivalent GCRA Lua script (`benches/gcra.lua`) against a redis-server on
//! the same machine, both driven by `redis-benchmark` with the same concurrency, pipelining
//! and key space; then the HTTP endpoint's requests/s with `wrk` (or, when wrk is not
//! installed, an in-process reqwest load loop — the output says which).
//!
//! Run: `cargo bench -p tollgate-server --bench resp_vs_redis`
//! Knobs (environment): `BENCH_CLIENTS` (50), `BENCH_REQUESTS` (300000), `BENCH_KEYS`
//! (100000), `BENCH_HTTP_SECONDS` (10).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = include_str!("gcra.lua");

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

fn start_server() -> (Proc, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate-server"))
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--resp-addr",
            "127.0.0.1:0",
            "--policy",
            "bench=1000/s burst 100",
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
    let http = addr("http://");
    let resp = addr("redis://");
    (Proc(child), http, resp)
}

/// Runs redis-benchmark and returns requests per second.
fn redis_benchmark(port: u16, pipeline: u64, command: &[&str]) -> f64 {
    let clients = env_num("BENCH_CLIENTS", 50).to_string();
    let requests = env_num("BENCH_REQUESTS", 300_000).to_string();
    let keys = env_num("BENCH_KEYS", 100_000).to_string();
    let (port, pipeline) = (port.to_string(), pipeline.to_string());
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-c",
        &clients,
        "-n",
        &requests,
    ];
    args.extend(["-r", &keys, "-P", &pipeline]);
    args.extend(command);
    tollgate_testkit::redis_benchmark(&args)
        .unwrap_or_else(|e| panic!("{e}"))
        .rps
}

fn wrk_path() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("wrk"))
            .find(|p| p.exists())
    })
}

/// HTTP requests/s on POST /v1/check with `wrk` (connections = BENCH_CLIENTS).
fn http_with_wrk(wrk: &PathBuf, http: SocketAddr, seconds: u64) -> f64 {
    let dir = std::env::temp_dir().join(format!("tg-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = dir.join("check.lua");
    std::fs::write(
        &script,
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/check", nil, '{"policy":"bench","key":"k' .. (n % 100000) .. '"}')
end
"#,
    )
    .expect("write wrk script");
    let out = Command::new(wrk)
        .args(["-t", "2", "-c", &env_num("BENCH_CLIENTS", 50).to_string()])
        .args(["-d", &format!("{seconds}s"), "-s"])
        .arg(&script)
        .arg(format!("http://{http}/v1/check"))
        .output()
        .expect("run wrk");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{}", text.trim_end());
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output: {text}"))
}

/// HTTP requests/s with an in-process reqwest loop (when wrk is missing).
fn http_in_process(http: SocketAddr, seconds: u64) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let url = format!("http://{http}/v1/check");
        let mut tasks = Vec::new();
        for t in 0..env_num("BENCH_CLIENTS", 50) {
            let client = client.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let body = format!("{{\"policy\":\"bench\",\"key\":\"k{t}-{}\"}}", done % 2000);
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .expect("request");
                    let _ = r.bytes().await;
                    done += 1;
                }
                done
            }));
        }
        let started = Instant::now();
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("task");
        }
        total as f64 / started.elapsed().as_secs_f64()
    })
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful: only run
    // the (slow) measurement under cargo bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("resp_vs_redis: run with `cargo bench -p tollgate-server --bench resp_vs_redis`");
        return;
    }
    let redis = tollgate_testkit::RedisServer::start().expect("start redis-server");
    let sha = redis
        .command(&["SCRIPT", "LOAD", SCRIPT])
        .expect("SCRIPT LOAD")
        .as_text()
        .expect("a sha");
    let (_server, http, resp) = start_server();
    let redis_port: u16 = redis
        .url()
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("redis port");

    // Same reply on both sides (a fresh key, 100 burst, 1000/s).
    let check =
        tollgate_testkit::redis_command(resp.port(), &["CL.THROTTLE", "probe", "100", "1000", "1"]);
    let lua = tollgate_testkit::redis_command(
        redis_port,
        &["EVALSHA", &sha, "1", "probe", "100", "1000", "1"],
    );
    println!("first reply: tollgate CL.THROTTLE {check:?}");
    println!("first reply: redis EVALSHA gcra.lua {lua:?}");

    println!(
        "\nredis-benchmark: {} clients, {} requests, {} random keys, same machine ({} cores)",
        env_num("BENCH_CLIENTS", 50),
        env_num("BENCH_REQUESTS", 300_000),
        env_num("BENCH_KEYS", 100_000),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<10} {:>26} {:>28} {:>8}",
        "pipeline", "tollgate CL.THROTTLE req/s", "redis EVALSHA gcra.lua req/s", "ratio"
    );
    for pipeline in [1u64, 16] {
        let ours = redis_benchmark(
            resp.port(),
            pipeline,
            &["CL.THROTTLE", "key:__rand_int__", "100", "1000", "1"],
        );
        let theirs = redis_benchmark(
            redis_port,
            pipeline,
            &["EVALSHA", &sha, "1", "key:__rand_int__", "100", "1000", "1"],
        );
        println!(
            "{:<10} {:>26.0} {:>28.0} {:>7.2}x",
            format!("-P {pipeline}"),
            ours,
            theirs,
            ours / theirs
        );
    }

    let seconds = env_num("BENCH_HTTP_SECONDS", 10);
    println!("\nHTTP POST /v1/check (named GCRA policy, 100k keys), {seconds} s:");
    let rps = match wrk_path() {
        Some(wrk) => {
            let rps = http_with_wrk(&wrk, http, seconds);
            println!("HTTP (wrk, 2 threads): {rps:.0} requests/s");
            rps
        }
        None => {
            let rps = http_in_process(http, seconds);
            println!("HTTP (in-process reqwest client, wrk not installed): {rps:.0} requests/s");
            rps
        }
    };
    assert!(rps > 0.0);
}
