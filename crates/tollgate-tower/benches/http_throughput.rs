//! Requests per second through the rate-limit layer (memory store) next to the bare handler,
//! in the same run.
//!
//! ```text
//! cargo bench -p tollgate-tower --bench http_throughput
//! BENCH_SECS=5 BENCH_ROUNDS=7 BENCH_CONNS=32 cargo bench -p tollgate-tower --bench http_throughput
//! ```
//!
//! The bench binary starts two axum servers on loopback in one tokio runtime with
//! `BENCH_SERVER_THREADS` worker threads (default 1): the bare handler, and the same handler
//! behind `RateLimitLayer` with one memory-store GCRA policy (1,000,000/s, far above the
//! offered load, so every request is admitted and the figure is the layer's overhead: key
//! extraction, one decision, the IETF fields on every response). Requests spread over 64 keys
//! (an `x-client` header set by a wrk Lua script that cycles through 64 prebuilt requests; the
//! bare server gets the same requests).
//!
//! The load comes from `wrk` (an external process, `-t1` by default, `BENCH_CONNS`
//! connections), so the load generator does not run inside the measured process. On a
//! machine with at least 2 CPUs and `taskset` available the server process is pinned to CPU 0
//! and wrk to CPU 1 (`BENCH_PIN=0` turns that off). Rounds alternate between the two servers
//! (and alternate which goes first); each round reports req/s, the server's CPU time per
//! request (from `/proc/self/task/*/schedstat`) and how busy the server was (100% = one
//! CPU). The summary gives the best and the median of each, their ratios, the median of the
//! per-round ratios, and the same over the rounds in which both servers had at least
//! `BENCH_MIN_BUSY` % (default 90) of a CPU: on a machine shared with other work, rounds in
//! which the server did not get its CPU measure the machine's load, not the server.
//!
//! Without `wrk` on the `PATH` (or with `BENCH_LOADGEN=inprocess`) the bench falls back to an
//! in-process reqwest load generator sharing the runtime with the servers, and says so: those
//! figures understate the ratio (the client also parses the extra response fields and competes
//! with the servers for CPU).
//!
//! `BENCH_LAYER=noop` measures a pass-through tower layer in place of the rate limiter: the
//! part of the overhead any axum layer has; `BENCH_LAYER=noop-body` the same layer wrapping
//! the body in `ResponseBody` (what axum's re-boxing of a foreign body costs).
//! `BENCH_LAYER=no-fields` measures the rate limiter without the IETF fields on allowed
//! responses (`HeaderOptions::on_allowed(false)`). `BENCH_LAYER=tower-governor` puts
//! tower_governor's `GovernorLayer` there instead (the same quota and key header), and
//! `BENCH_LAYER=tower-governor-headers` the same with its `x-ratelimit-*` fields: the layer
//! axum users reach for today, measured the same way. `BENCH_LAYER=fields-only` is the
//! pass-through layer adding the same two IETF fields to every response, built per request
//! the way the rate layer builds them (a preformatted `RateLimit-Policy` value cloned, a
//! `RateLimit` value formatted with two numbers) without limiting anything: what sending
//! the fields costs any layer.
//!
//! Profiling: `BENCH_ONLY=layer` (or `bare`) loads only one server, e.g.
//! `BENCH_ONLY=layer perf record -g <bench binary>`; `BENCH_SERVICE_ONLY=1` stops after the
//! figure without the network, e.g. `BENCH_SERVICE_ONLY=1 BENCH_SERVICE_RUNS=1
//! valgrind --tool=callgrind <bench binary>` for instruction counts.

use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::{Limiter, Policy, Rate};
use tollgate_tower::headers::HeaderOptions;
use tollgate_tower::key::Header;
use tollgate_tower::{HttpPolicy, RateLimitLayer};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_str(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The handler both servers run; the second one behind the layer.
/// What the second server runs: `BENCH_LAYER=noop` puts a pass-through tower layer there
/// instead of the rate limiter (what any layer costs in axum: the per-request clone of the
/// layered route, the wrappers `Router::layer` adds).
fn noop_layer() -> bool {
    matches!(
        env_str("BENCH_LAYER").as_deref(),
        Some("noop" | "noop-body")
    )
}

/// `BENCH_LAYER=fields-only`: the pass-through layer adding the two IETF fields, with the
/// values (and byte lengths) the rate layer sends in this bench, assembled the same way (a
/// stack buffer, one allocation for the value), and no rate limiting.
fn fields_only_layer() -> bool {
    env_str("BENCH_LAYER").as_deref() == Some("fields-only")
}

/// `BENCH_LAYER=noop-body`: the pass-through layer, but wrapping the body the way the rate
/// limiter's response does (`ResponseBody::inner`): what axum's re-boxing of a body type
/// that is not its own costs.
fn noop_wraps_body() -> bool {
    env_str("BENCH_LAYER").as_deref() == Some("noop-body")
}

/// `BENCH_LAYER=no-fields`: the rate limiter without the IETF fields on allowed responses
/// (`HeaderOptions::default().on_allowed(false)`).
fn fields_on_allowed() -> bool {
    env_str("BENCH_LAYER").as_deref() != Some("no-fields")
}

/// `BENCH_LAYER=tower-governor` (or `tower-governor-headers`): tower_governor's
/// `GovernorLayer` (governor's GCRA, keyed by the same `x-client` header, the same quota) in
/// place of tollgate's layer; `-headers` with its `x-ratelimit-*` fields on every response.
fn tower_governor_layer() -> Option<bool> {
    match env_str("BENCH_LAYER").as_deref() {
        Some("tower-governor") => Some(false),
        Some("tower-governor-headers") => Some(true),
        _ => None,
    }
}

/// tower_governor's key: the `x-client` header (its extractors return owned keys).
#[derive(Clone)]
struct XClient;

impl tower_governor::key_extractor::KeyExtractor for XClient {
    type Key = String;

    fn extract<T>(&self, req: &http::Request<T>) -> Result<String, tower_governor::GovernorError> {
        req.headers()
            .get("x-client")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

fn layer_name() -> &'static str {
    if let Some(headers) = tower_governor_layer() {
        return if headers {
            "tower_governor 0.8 GovernorLayer (x-ratelimit headers)"
        } else {
            "tower_governor 0.8 GovernorLayer"
        };
    }
    if fields_only_layer() {
        "a no-op tower layer adding the two IETF fields"
    } else if noop_wraps_body() {
        "a no-op tower layer wrapping the body"
    } else if noop_layer() {
        "a no-op tower layer"
    } else if fields_on_allowed() {
        "RateLimitLayer (memory store)"
    } else {
        "RateLimitLayer (memory store, no fields on allowed responses)"
    }
}

fn apps() -> (Router, Router) {
    let handler = || Router::new().route("/", get(|| async { "ok" }));
    if let Some(headers) = tower_governor_layer() {
        use tower_governor::governor::GovernorConfigBuilder;
        let mut config = GovernorConfigBuilder::default().key_extractor(XClient);
        // 1,000,000 per second, as tollgate's policy below: every request is admitted.
        config.per_nanosecond(1_000).burst_size(1_000_000);
        if headers {
            let config = config.use_headers().finish().expect("governor config");
            let layer = tower_governor::GovernorLayer::new(config);
            return (handler(), handler().layer(layer));
        }
        let layer = tower_governor::GovernorLayer::new(config.finish().expect("governor config"));
        return (handler(), handler().layer(layer));
    }
    if noop_wraps_body() {
        let wrap: fn(
            axum::response::Response,
        ) -> http::Response<tollgate_tower::ResponseBody<axum::body::Body>> =
            |r| r.map(tollgate_tower::ResponseBody::inner);
        let layer = tower::util::MapResponseLayer::new(wrap);
        return (handler(), handler().layer(layer));
    }
    if fields_only_layer() {
        let policy = http::HeaderValue::from_static("\"bench\";q=1000000;w=1");
        let served = Arc::new(AtomicU64::new(0));
        let add_fields = move |mut response: axum::response::Response| {
            // What the rate layer's `RateLimit` value looks like here: `r` a little under
            // the burst, `t` one second; two numbers formatted, one allocation.
            let n = served.fetch_add(1, Ordering::Relaxed);
            let mut remaining = itoa::Buffer::new();
            let mut secs = itoa::Buffer::new();
            let parts: [&[u8]; 4] = [
                b"\"bench\";r=",
                remaining.format(999_999 - n % 1_000).as_bytes(),
                b";t=",
                secs.format(1u64).as_bytes(),
            ];
            let mut buf = [0u8; 64];
            let mut len = 0;
            for part in parts {
                buf[len..len + part.len()].copy_from_slice(part);
                len += part.len();
            }
            let headers = response.headers_mut();
            headers.insert(tollgate_tower::headers::RATELIMIT_POLICY, policy.clone());
            if let Ok(v) = http::HeaderValue::from_bytes(&buf[..len]) {
                headers.insert(tollgate_tower::headers::RATELIMIT, v);
            }
            response
        };
        let layer = tower::util::MapResponseLayer::new(add_fields);
        return (handler(), handler().layer(layer));
    }
    if noop_layer() {
        let identity: fn(axum::response::Response) -> axum::response::Response = |r| r;
        let layer = tower::util::MapResponseLayer::new(identity);
        return (handler(), handler().layer(layer));
    }
    let limiter = Limiter::memory(Policy::gcra(Rate::per_second(1_000_000).unwrap()).unwrap());
    let layer = RateLimitLayer::builder()
        .policy(HttpPolicy::new(
            "bench",
            limiter,
            Header::named("x-client").unwrap(),
        ))
        .headers(HeaderOptions::default().on_allowed(fields_on_allowed()))
        .build()
        .expect("layer");
    (handler(), handler().layer(layer))
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("serve");
    });
    addr
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// CPU time this process's threads have been running so far, in seconds: the sum of
/// `/proc/self/task/*/schedstat` (nanoseconds on a CPU; exact, unlike tick-sampled
/// utime/stime), else `/proc/self/stat` utime + stime.
fn process_cpu_secs() -> Option<f64> {
    let from_schedstat = || -> Option<f64> {
        let mut total_ns = 0u64;
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let path = task.ok()?.path().join("schedstat");
            // A thread that ended between read_dir and here counts nothing.
            let Ok(stat) = std::fs::read_to_string(path) else {
                continue;
            };
            total_ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(total_ns as f64 / 1e9)
    };
    from_schedstat().or_else(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / ticks_per_sec())
    })
}

fn ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One measured round against one server.
#[derive(Clone, Copy, Debug)]
struct Sample {
    req_per_sec: f64,
    /// Server CPU time per request, in microseconds (`NaN` when unknown).
    cpu_us_per_req: f64,
    /// Server CPU utilisation during the round (1.0 = one CPU busy).
    cpu_busy: f64,
}

/// The Lua script: 64 prebuilt requests with `x-client: client-0..63`, sent in turn.
const WRK_SCRIPT: &str = r#"
local reqs = {}
local n = 0
init = function(args)
  for i = 0, 63 do
    reqs[i + 1] = wrk.format("GET", "/", { ["x-client"] = "client-" .. i })
  end
end
request = function()
  n = n % 64 + 1
  return reqs[n]
end
"#;

struct Wrk {
    program: PathBuf,
    script: PathBuf,
    threads: u64,
    conns: u64,
    pin: bool,
}

impl Wrk {
    fn run(&self, addr: SocketAddr, secs: u64) -> Sample {
        let mut cmd = if self.pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "1"]).arg(&self.program);
            c
        } else {
            Command::new(&self.program)
        };
        cmd.arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.conns))
            .arg(format!("-d{secs}s"))
            .arg("--timeout")
            .arg("5s")
            .arg("-s")
            .arg(&self.script)
            .arg(format!("http://{addr}/"));
        let cpu_before = process_cpu_secs();
        let started = Instant::now();
        let output = cmd.output().expect("run wrk");
        let wall = started.elapsed().as_secs_f64();
        let cpu_after = process_cpu_secs();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "wrk failed: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !text.contains("Non-2xx or 3xx responses"),
            "some requests were not answered 200:\n{text}"
        );
        if text.contains("Socket errors") {
            eprintln!("note: wrk reported socket errors:\n{text}");
        }
        let req_per_sec: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"));
        let requests: f64 = text
            .lines()
            .find_map(|l| {
                let l = l.trim();
                let (n, rest) = l.split_once(' ')?;
                rest.starts_with("requests in").then(|| n.parse().ok())?
            })
            .unwrap_or(req_per_sec * secs as f64);
        let (cpu_us_per_req, cpu_busy) = match (cpu_before, cpu_after) {
            (Some(a), Some(b)) if requests > 0.0 => {
                ((b - a) * 1e6 / requests, (b - a) / wall.max(1e-9))
            }
            _ => (f64::NAN, f64::NAN),
        };
        Sample {
            req_per_sec,
            cpu_us_per_req,
            cpu_busy,
        }
    }
}

/// Runs `conns` concurrent request loops against `addr` for `secs`; returns requests/s.
async fn load_in_process(addr: SocketAddr, conns: u64, secs: u64) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conns as usize)
        .build()
        .expect("client");
    let url = format!("http://{addr}/");
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (client, url) = (client.clone(), url.clone());
        let (done, failed, stop) = (Arc::clone(&done), Arc::clone(&failed), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let key = format!("client-{}", c % 64);
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).header("x-client", &key).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed or were limited"
    );
    done.load(Ordering::Relaxed) as f64 / elapsed
}

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn best(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

fn pct(ratio: f64) -> String {
    format!("{:+.1}%", (ratio - 1.0) * 100.0)
}

/// The layer's own CPU cost without the network: `Router::call` in a loop on one thread
/// (routing, handler, response, and for the second router the layer), best of `runs`
/// alternating runs of `iters` requests each, in nanoseconds per request.
fn service_cost_ns(runs: u64, iters: u64) -> (f64, f64) {
    use tower::{Service, ServiceExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (bare, limited) = apps();
        let mut best = [f64::INFINITY; 2];
        for _ in 0..runs {
            for (slot, app) in [&bare, &limited].into_iter().enumerate() {
                let mut app = app.clone();
                let started = Instant::now();
                for n in 0..iters {
                    let req = http::Request::get("/")
                        .header("x-client", CLIENT_KEYS[(n % 64) as usize])
                        .body(axum::body::Body::empty())
                        .expect("request");
                    let ready = ServiceExt::<http::Request<axum::body::Body>>::ready(&mut app)
                        .await
                        .expect("ready");
                    let response = ready.call(req).await.expect("response");
                    assert_eq!(response.status(), 200);
                }
                let ns = started.elapsed().as_nanos() as f64 / iters as f64;
                best[slot] = best[slot].min(ns);
            }
        }
        // The second server sends what it is said to: the IETF fields exactly in the modes
        // that write them on allowed responses.
        let req = http::Request::get("/")
            .header("x-client", CLIENT_KEYS[0])
            .body(axum::body::Body::empty())
            .expect("request");
        let response = limited.clone().oneshot(req).await.expect("response");
        let expects_fields = fields_only_layer()
            || (fields_on_allowed() && !noop_layer() && tower_governor_layer().is_none());
        assert_eq!(
            response.headers().contains_key("ratelimit"),
            expects_fields,
            "{}: RateLimit field on an allowed response",
            layer_name()
        );
        (best[0], best[1])
    })
}

/// `client-0` .. `client-63`, as the wrk script sends them.
const CLIENT_KEYS: [&str; 64] = [
    "client-0",
    "client-1",
    "client-2",
    "client-3",
    "client-4",
    "client-5",
    "client-6",
    "client-7",
    "client-8",
    "client-9",
    "client-10",
    "client-11",
    "client-12",
    "client-13",
    "client-14",
    "client-15",
    "client-16",
    "client-17",
    "client-18",
    "client-19",
    "client-20",
    "client-21",
    "client-22",
    "client-23",
    "client-24",
    "client-25",
    "client-26",
    "client-27",
    "client-28",
    "client-29",
    "client-30",
    "client-31",
    "client-32",
    "client-33",
    "client-34",
    "client-35",
    "client-36",
    "client-37",
    "client-38",
    "client-39",
    "client-40",
    "client-41",
    "client-42",
    "client-43",
    "client-44",
    "client-45",
    "client-46",
    "client-47",
    "client-48",
    "client-49",
    "client-50",
    "client-51",
    "client-52",
    "client-53",
    "client-54",
    "client-55",
    "client-56",
    "client-57",
    "client-58",
    "client-59",
    "client-60",
    "client-61",
    "client-62",
    "client-63",
];

fn main() {
    let secs = env("BENCH_SECS", 5);
    let rounds = env("BENCH_ROUNDS", 7).max(1);
    let conns = env("BENCH_CONNS", 32);
    let server_threads = env("BENCH_SERVER_THREADS", 1).max(1) as usize;
    let only = env_str("BENCH_ONLY");
    let forced_in_process = env_str("BENCH_LOADGEN").as_deref() == Some("inprocess");
    let wrk_program = if forced_in_process {
        None
    } else {
        find_on_path("wrk")
    };

    let Some(wrk_program) = wrk_program else {
        if forced_in_process {
            println!("BENCH_LOADGEN=inprocess: using the in-process reqwest load generator.");
        } else {
            println!(
                "wrk NOT FOUND on PATH (install it: apt-get install -y wrk): falling back to the \
                 in-process reqwest load generator. These figures are NOT the benchmark's \
                 method: the client shares the runtime and CPUs with the servers and parses the \
                 extra response fields, which understates the ratio."
            );
        }
        run_in_process(secs, rounds, conns);
        return;
    };

    let service_iters = env("BENCH_SERVICE_ITERS", 50_000);
    let service_runs = env("BENCH_SERVICE_RUNS", 21).max(1);
    if service_iters > 0 && only.is_none() {
        let (bare_ns, layer_ns) = service_cost_ns(service_runs, service_iters);
        println!(
            "without the network (Router::call in a loop on one thread, best of \
             {service_runs} alternating runs x {service_iters}): bare handler {bare_ns:.0} \
             ns/request, through {} {layer_ns:.0} ns/request (+{:.0} ns)",
            layer_name(),
            layer_ns - bare_ns
        );
    }
    if env_str("BENCH_SERVICE_ONLY").is_some() {
        return;
    }

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = env("BENCH_PIN", 1) == 1 && cpus >= 2 && find_on_path("taskset").is_some();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .enable_all()
        .build()
        .expect("runtime");
    let (bare, limited) = runtime.block_on(async {
        let (bare_app, limited_app) = apps();
        (serve(bare_app).await, serve(limited_app).await)
    });
    if pin {
        // Every thread of this process (the runtime's workers included) on CPU 0.
        let pinned = Command::new("taskset")
            .args(["-a", "-p", "-c", "0"])
            .arg(std::process::id().to_string())
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(pinned, "taskset could not pin the server process");
    }
    let script =
        std::env::temp_dir().join(format!("tollgate-http-bench-{}.lua", std::process::id()));
    std::fs::write(&script, WRK_SCRIPT).expect("write the wrk script");
    let wrk = Wrk {
        program: wrk_program,
        script: script.clone(),
        threads: env("BENCH_WRK_THREADS", 1).max(1),
        conns,
        pin,
    };
    println!(
        "setup: wrk -t{} -c{conns} -d{secs}s (external process{}), server: 1 process, tokio \
         runtime with {server_threads} worker thread(s){}; {cpus} CPUs; 64 keys via x-client; \
         {rounds} alternating rounds; second server: {}",
        wrk.threads,
        if pin { ", pinned to CPU 1" } else { "" },
        if pin { ", pinned to CPU 0" } else { "" },
        layer_name(),
    );

    // Warm-up (connections, allocator, the limiter's keys).
    wrk.run(bare, 1);
    wrk.run(limited, 1);

    let mut bare_samples = Vec::new();
    let mut layer_samples = Vec::new();
    for round in 1..=rounds {
        let (b, l) = match only.as_deref() {
            Some("layer") => (None, Some(wrk.run(limited, secs))),
            Some("bare") => (Some(wrk.run(bare, secs)), None),
            _ if round % 2 == 1 => {
                let b = wrk.run(bare, secs);
                (Some(b), Some(wrk.run(limited, secs)))
            }
            _ => {
                let l = wrk.run(limited, secs);
                (Some(wrk.run(bare, secs)), Some(l))
            }
        };
        let show = |s: Option<Sample>| {
            s.map_or_else(
                || format!("{:>31}", "-"),
                |s| {
                    format!(
                        "{:>8.0} req/s {:>5.1} us/req {:>3.0}%",
                        s.req_per_sec,
                        s.cpu_us_per_req,
                        s.cpu_busy * 100.0
                    )
                },
            )
        };
        let ratio = match (b, l) {
            (Some(b), Some(l)) => format!("ratio {:.3}", l.req_per_sec / b.req_per_sec),
            _ => String::new(),
        };
        println!(
            "round {round}: bare {}   layer {}   {ratio}",
            show(b),
            show(l)
        );
        bare_samples.extend(b);
        layer_samples.extend(l);
    }
    let _ = std::fs::remove_file(&script);

    if bare_samples.is_empty() || layer_samples.is_empty() {
        return;
    }
    let rps = |s: &[Sample]| s.iter().map(|x| x.req_per_sec).collect::<Vec<_>>();
    let cpu = |s: &[Sample]| s.iter().map(|x| x.cpu_us_per_req).collect::<Vec<_>>();
    let (b_rps, l_rps) = (rps(&bare_samples), rps(&layer_samples));
    let paired: Vec<f64> = l_rps.iter().zip(&b_rps).map(|(l, b)| l / b).collect();
    let (best_b, best_l) = (best(&b_rps), best(&l_rps));
    let (med_b, med_l) = (median(&b_rps), median(&l_rps));
    let (cpu_b, cpu_l) = (median(&cpu(&bare_samples)), median(&cpu(&layer_samples)));
    println!(
        "best of {rounds}:   bare handler {best_b:.0} req/s, through {} {best_l:.0} req/s, \
         ratio {:.3} ({})",
        layer_name(),
        best_l / best_b,
        pct(best_l / best_b)
    );
    println!(
        "median of {rounds}: bare handler {med_b:.0} req/s, through {} {med_l:.0} req/s, \
         ratio {:.3} ({})",
        layer_name(),
        med_l / med_b,
        pct(med_l / med_b)
    );
    println!(
        "median of the per-round ratios: {:.3} ({}); server CPU per request (median): bare \
         {cpu_b:.1} us, layer {cpu_l:.1} us (+{:.1} us)",
        median(&paired),
        pct(median(&paired)),
        cpu_l - cpu_b
    );
    // Other processes on the machine take CPU from the server in some rounds; a round in
    // which either server had less than `BENCH_MIN_BUSY` percent of a CPU measured the
    // machine's load, not the server. The rounds where both were saturated:
    let min_busy = env("BENCH_MIN_BUSY", 90) as f64 / 100.0;
    let saturated: Vec<(Sample, Sample)> = bare_samples
        .iter()
        .zip(&layer_samples)
        .filter(|(b, l)| b.cpu_busy >= min_busy && l.cpu_busy >= min_busy)
        .map(|(b, l)| (*b, *l))
        .collect();
    if saturated.is_empty() {
        println!(
            "no round had both servers at >= {:.0}% of a CPU (the machine was busy): no \
             saturated-server figure",
            min_busy * 100.0
        );
    } else {
        let ratios: Vec<f64> = saturated
            .iter()
            .map(|(b, l)| l.req_per_sec / b.req_per_sec)
            .collect();
        let b_rps: Vec<f64> = saturated.iter().map(|(b, _)| b.req_per_sec).collect();
        let l_rps: Vec<f64> = saturated.iter().map(|(_, l)| l.req_per_sec).collect();
        let b_cpu: Vec<f64> = saturated.iter().map(|(b, _)| b.cpu_us_per_req).collect();
        let l_cpu: Vec<f64> = saturated.iter().map(|(_, l)| l.cpu_us_per_req).collect();
        println!(
            "rounds with both servers at >= {:.0}% of a CPU: {} of {rounds}; median bare {:.0} \
             req/s, layer {:.0} req/s; median per-round ratio {:.3} ({}); CPU per request \
             (median): bare {:.2} us, layer {:.2} us",
            min_busy * 100.0,
            saturated.len(),
            median(&b_rps),
            median(&l_rps),
            median(&ratios),
            pct(median(&ratios)),
            median(&b_cpu),
            median(&l_cpu),
        );
    }
}

fn run_in_process(secs: u64, rounds: u64, conns: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (bare_app, limited_app) = apps();
        let bare = serve(bare_app).await;
        let limited = serve(limited_app).await;
        load_in_process(bare, conns, 1).await;
        load_in_process(limited, conns, 1).await;
        let (mut bare_all, mut layer_all) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let b = load_in_process(bare, conns, secs).await;
            let l = load_in_process(limited, conns, secs).await;
            println!(
                "round {round}: bare {b:>9.0} req/s   layer {l:>9.0} req/s   ratio {:.3}",
                l / b
            );
            bare_all.push(b);
            layer_all.push(l);
        }
        let (best_b, best_l) = (best(&bare_all), best(&layer_all));
        let (med_b, med_l) = (median(&bare_all), median(&layer_all));
        println!(
            "in-process load generator, {conns} connections, {rounds} x {secs}s: best bare \
             {best_b:.0} req/s, layer {best_l:.0} req/s, ratio {:.3} ({}); median bare \
             {med_b:.0} req/s, layer {med_l:.0} req/s, ratio {:.3} ({})",
            best_l / best_b,
            pct(best_l / best_b),
            med_l / med_b,
            pct(med_l / med_b)
        );
    });
}
