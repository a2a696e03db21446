//! Side-by-side benchmark: tollgate-server's `POST /v1/check` next to throttlecrab-server's
//! `POST /throttle`, both in memory, same machine, same load.
//!
//! ```text
//! cargo bench -p tollgate-server --bench vs_throttlecrab
//! THROTTLECRAB_BIN=/work/tools/bin/throttlecrab-server BENCH_ROUNDS=10 cargo bench -p tollgate-server --bench vs_throttlecrab
//! ```
//!
//! Both servers get the same quota: tollgate's named GCRA policy `1000/s burst 100` and
//! throttlecrab's `max_burst 100, count_per_period 1000, period 1` (a burst of 100, then
//! 1000 per second), the same random keys (`BENCH_KEYS`, default 100,000, drawn by the wrk
//! script for each request) and the same `wrk` (`-c BENCH_CONNS`, default 50, `-t
//! BENCH_WRK_THREADS`, `--latency`). On a machine with at least 2 CPUs and `taskset`, each
//! server process is pinned to CPU 0 and wrk to CPU 1 (`BENCH_PIN=0` turns that off), so both
//! runtimes see one CPU and the load generator does not compete with them. Rounds of
//! `BENCH_SECS` (default 5) alternate between the servers (and which goes first) for
//! `BENCH_ROUNDS` rounds (default 6); each round prints req/s, p99 and the server's CPU time
//! per request (from `/proc/<pid>/task/*/schedstat`). The summary gives the median of each
//! and the median of the per-round ratios (each pair of rounds ran under the same load).
//!
//! throttlecrab-server is found through `THROTTLECRAB_BIN`, then the `PATH`, then
//! `~/.cargo/bin`; wrk on the `PATH`. When either is missing the bench says how to install it
//! and exits 0 (a benchmark, not a test).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

fn throttlecrab_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("THROTTLECRAB_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    find_on_path("throttlecrab-server").or_else(|| {
        let home = std::env::var_os("HOME")?;
        Some(Path::new(&home).join(".cargo/bin/throttlecrab-server")).filter(|p| p.is_file())
    })
}

/// `program` under `taskset -c cpu` when pinning, else as is.
fn command(program: &Path, cpu: Option<&str>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn start_tollgate(cpu: Option<&str>) -> (Proc, SocketAddr) {
    let mut child = command(Path::new(env!("CARGO_BIN_EXE_tollgate-server")), cpu)
        .args(["--http-addr", "127.0.0.1:0", "--resp-addr", "off"])
        .args(["--policy", "bench=1000/s burst 100", "--log", "warn"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tollgate-server");
    let mut banner = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut banner)
        .expect("banner");
    let start = banner
        .find("http://")
        .expect("an HTTP address in the banner")
        + 7;
    let end = start + banner[start..].find(' ').expect("space");
    (Proc(child), banner[start..end].parse().expect("address"))
}

fn start_throttlecrab(bin: &Path, cpu: Option<&str>) -> (Proc, SocketAddr) {
    let port = tollgate_testkit::free_port();
    let child = command(bin, cpu)
        .args(["--http", "--http-host", "127.0.0.1", "--http-port"])
        .arg(port.to_string())
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start throttlecrab-server");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "throttlecrab-server did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), addr)
}

/// One `POST` over a fresh connection; the whole response as text.
fn post(addr: SocketAddr, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// Seconds the process has spent on a CPU (all its threads).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

fn wrk_script(dir: &Path, name: &str, path: &str, body: &str, keys: u64) -> PathBuf {
    let file = dir.join(name);
    let script = format!(
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
init = function(args) math.randomseed(os.time() + math.floor(os.clock() * 1e6)) end
request = function()
  local k = "k" .. math.random(0, {})
  return wrk.format(nil, "{path}", nil, string.format('{body}', k))
end
"#,
        keys - 1
    );
    std::fs::write(&file, script).expect("write the wrk script");
    file
}

struct Sample {
    rps: f64,
    p99_ms: f64,
    cpu_us: f64,
}

fn parse_ms(v: &str) -> Option<f64> {
    let v = v.trim();
    let (n, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    n.parse::<f64>().ok().map(|n| n * scale)
}

fn run_wrk(wrk: &Path, pin: bool, server: &Proc, addr: SocketAddr, script: &Path) -> Sample {
    let secs = env_num("BENCH_SECS", 5);
    let conns = env_num("BENCH_CONNS", 50);
    let threads = env_num("BENCH_WRK_THREADS", if pin { 1 } else { 2 });
    let pid = server.0.id();
    let cpu_before = cpu_secs(pid);
    let out = command(wrk, pin.then_some("1"))
        .args(["-t", &threads.to_string(), "-c", &conns.to_string()])
        .args(["-d", &format!("{secs}s"), "--latency", "-s"])
        .arg(script)
        .arg(format!("http://{addr}/"))
        .output()
        .expect("run wrk");
    let cpu = cpu_secs(pid) - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
    };
    if let Some(n) = field("Non-2xx or 3xx responses:") {
        panic!("{n} error responses: the comparison would not be fair\n{text}");
    }
    let rps: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output: {text}"));
    let p99_ms = field("99%").and_then(parse_ms).unwrap_or(f64::NAN);
    let requests = rps * secs as f64;
    Sample {
        rps,
        p99_ms,
        cpu_us: cpu * 1e6 / requests,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: measure only then.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "vs_throttlecrab: run with `cargo bench -p tollgate-server --bench vs_throttlecrab`"
        );
        return;
    }
    let Some(wrk) = find_on_path("wrk") else {
        println!(
            "vs_throttlecrab: wrk is not installed (Debian: `apt-get install -y wrk`); skipped"
        );
        return;
    };
    let Some(tc_bin) = throttlecrab_bin() else {
        println!(
            "vs_throttlecrab: throttlecrab-server not found (set THROTTLECRAB_BIN or put it on the PATH); \
             install it outside this repository with\n  apt-get install -y protobuf-compiler\n  \
             cargo install throttlecrab-server --root /some/dir   # then THROTTLECRAB_BIN=/some/dir/bin/throttlecrab-server"
        );
        return;
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = env_num("BENCH_PIN", 1) == 1 && cpus >= 2 && find_on_path("taskset").is_some();
    let server_cpu = pin.then_some("0");
    let keys = env_num("BENCH_KEYS", 100_000).max(1);
    let rounds = env_num("BENCH_ROUNDS", 6).max(1);

    let (tollgate, tg_addr) = start_tollgate(server_cpu);
    let (crab, tc_addr) = start_throttlecrab(&tc_bin, server_cpu);
    let tg_body = r#"{"policy":"bench","key":"probe"}"#;
    let tc_body = r#"{"key":"probe","max_burst":100,"count_per_period":1000,"period":1}"#;
    println!(
        "first reply, tollgate POST /v1/check:\n{}\n",
        post(tg_addr, "/v1/check", tg_body).trim_end()
    );
    println!(
        "first reply, throttlecrab POST /throttle:\n{}\n",
        post(tc_addr, "/throttle", tc_body).trim_end()
    );

    let dir = std::env::temp_dir().join(format!("tg-vs-crab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let tg_script = wrk_script(
        &dir,
        "tollgate.lua",
        "/v1/check",
        r#"{"policy":"bench","key":"%s"}"#,
        keys,
    );
    let tc_script = wrk_script(
        &dir,
        "throttlecrab.lua",
        "/throttle",
        r#"{"key":"%s","max_burst":100,"count_per_period":1000,"period":1}"#,
        keys,
    );
    println!(
        "setup: wrk -t{} -c{} -d{}s --latency, {} random keys, {} alternating rounds; {}; {} CPUs; \
         throttlecrab-server: {}",
        env_num("BENCH_WRK_THREADS", if pin { 1 } else { 2 }),
        env_num("BENCH_CONNS", 50),
        env_num("BENCH_SECS", 5),
        keys,
        rounds,
        if pin { "each server pinned to CPU 0, wrk to CPU 1" } else { "not pinned" },
        cpus,
        tc_bin.display()
    );
    let (mut tg, mut tc, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut pair = [None, None];
        for side in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            pair[side] = Some(if side == 0 {
                run_wrk(&wrk, pin, &tollgate, tg_addr, &tg_script)
            } else {
                run_wrk(&wrk, pin, &crab, tc_addr, &tc_script)
            });
        }
        let [Some(a), Some(b)] = pair else {
            unreachable!("both sides ran")
        };
        println!(
            "round {:>2}: tollgate {:>8.0} req/s p99 {:>6.2} ms {:>5.1} us CPU/req | throttlecrab {:>8.0} req/s p99 {:>6.2} ms {:>5.1} us CPU/req | ratio {:.2}x",
            round + 1, a.rps, a.p99_ms, a.cpu_us, b.rps, b.p99_ms, b.cpu_us, a.rps / b.rps
        );
        ratios.push(a.rps / b.rps);
        tg.push(a);
        tc.push(b);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let med =
        |v: &[Sample], f: fn(&Sample) -> f64| median(&mut v.iter().map(f).collect::<Vec<_>>());
    println!(
        "median: tollgate POST /v1/check {:.0} req/s, p99 {:.2} ms, {:.1} us CPU/req; \
         throttlecrab POST /throttle {:.0} req/s, p99 {:.2} ms, {:.1} us CPU/req",
        med(&tg, |s| s.rps),
        med(&tg, |s| s.p99_ms),
        med(&tg, |s| s.cpu_us),
        med(&tc, |s| s.rps),
        med(&tc, |s| s.p99_ms),
        med(&tc, |s| s.cpu_us),
    );
    println!(
        "median of the per-round ratios (tollgate / throttlecrab req/s): {:.2}x",
        median(&mut ratios)
    );
}
