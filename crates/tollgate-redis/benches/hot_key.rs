//! One hot key shared by a fleet, side by side in one run, against a redis-server this
//! binary starts:
//!
//! 1. the ceiling: `redis-benchmark -P 32` running the GCRA script via EVALSHA on ONE key
//!    (50 connections, 32 commands pipelined on each): what one Redis can decide on one key;
//! 2. tollgate-redis without leases: 4 processes × 64 tokio tasks on that key (each process
//!    one `RedisStore`);
//! 3. the same with local leases (`tollgate::store::lease::LeaseStore`, max batch 1000,
//!    lease 100 ms), and the ratios to the ceiling;
//! 4. a frozen quota (1 000 000 per 365 days), 4 processes × 64 tasks making 1.25 × the quota
//!    in calls through leases: admitted vs allowed (never more), the false denials (units
//!    left unused, given back at the end) and what the store holds after every batch was
//!    given back.
//!
//! The processes are this binary re-executed with `HOT_KEY_CHILD` set.
//!
//! Run: `cargo bench -p tollgate-redis --bench hot_key`
//! (env BENCH_SECONDS, default 5: each throughput phase; BENCH_ROUNDS, default 3).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tollgate::store::lease::{LeaseConfig, LeaseStore};
use tollgate::store::{Backend, Op, Store};
use tollgate::time::{Clock, SystemClock};
use tollgate::{Policy, Rate};
use tollgate_redis::RedisStore;
use tollgate_testkit::RedisServer;

const CHILD: &str = "HOT_KEY_CHILD";
const PROCESSES: usize = 4;
const TASKS: usize = 64;
const MAX_BATCH: u64 = 1_000;
const QUOTA: u64 = 1_000_000;

/// What one child does.
struct Job {
    url: String,
    ns: String,
    leased: bool,
    /// Throughput: run this long. Quota: 0.
    seconds: u64,
    /// Quota: calls per task.
    calls: u64,
    /// Start at this wall-clock time (ms since the epoch), so every process starts together.
    start_ms: u64,
}

impl Job {
    fn to_env(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}",
            self.url, self.ns, self.leased, self.seconds, self.calls, self.start_ms
        )
    }
    fn from_env(s: &str) -> Job {
        let p: Vec<&str> = s.split('|').collect();
        Job {
            url: p[0].into(),
            ns: p[1].into(),
            leased: p[2] == "true",
            seconds: p[3].parse().unwrap(),
            calls: p[4].parse().unwrap(),
            start_ms: p[5].parse().unwrap(),
        }
    }
}

/// Throughput policy: GCRA 1 000 000/s with a burst of 10^9, so nothing is denied in a
/// run. Quota policy: QUOTA per 365 days (one unit back every 31.5 s: frozen for a run;
/// the units that do come back during the run are counted as allowed).
fn policy(quota: bool) -> Policy {
    if quota {
        Policy::gcra(Rate::new(QUOTA, Duration::from_secs(365 * 86_400)).unwrap()).unwrap()
    } else {
        let rate = Rate::per_second(1_000_000).unwrap();
        Policy::gcra(rate.with_burst(1_000_000_000).unwrap()).unwrap()
    }
}

fn lease_config() -> LeaseConfig {
    LeaseConfig::default()
        .max_batch(MAX_BATCH)
        .duration(Duration::from_millis(100))
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// What a set of tasks (or processes) saw.
#[derive(Default)]
struct Tally {
    decisions: u64,
    admitted: u64,
    /// The last admission (µs since the epoch).
    last_admit: u64,
    /// Denials per 10 µs (10 µs since the epoch -> count).
    denials: BTreeMap<u64, u64>,
    /// Decisions per second (summed over processes).
    rate: f64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.decisions += other.decisions;
        self.admitted += other.admitted;
        self.last_admit = self.last_admit.max(other.last_admit);
        for (ms, n) in other.denials {
            *self.denials.entry(ms).or_default() += n;
        }
        self.rate += other.rate;
    }
}

/// TASKS tasks on "hot": for `seconds`, or `calls` each.
async fn hammer<B: Backend + Clone>(backend: B, seconds: u64, calls: u64) -> Tally {
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (backend, done) = (backend.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while !done.load(Ordering::Relaxed) && (calls == 0 || t.decisions < calls) {
                let now = SystemClock.now();
                let d = backend.execute_async("hot", Op::Check(1), now).await;
                t.decisions += 1;
                if d.expect("store call").expect("a decision").allowed {
                    t.admitted += 1;
                    t.last_admit = now;
                } else {
                    *t.denials.entry(now / 10).or_default() += 1;
                }
            }
            t
        }));
    }
    if seconds > 0 {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        done.store(true, Ordering::Relaxed);
    }
    let mut total = Tally::default();
    for t in tasks {
        total.add(t.await.unwrap());
    }
    total
}

fn child(job: Job) {
    let store = RedisStore::builder()
        .url(job.url.clone())
        .namespace(job.ns.clone())
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let policy = policy(job.seconds == 0);
    let wait = || {
        let now = epoch_ms();
        if job.start_ms > now {
            std::thread::sleep(Duration::from_millis(job.start_ms - now));
        }
    };
    let (t, elapsed) = if job.leased {
        let backend = LeaseStore::new(store, lease_config())
            .bind(&policy)
            .unwrap();
        let _ = backend
            .execute("warmup", Op::Peek(1), SystemClock.now())
            .unwrap();
        wait();
        let t0 = Instant::now();
        let t = rt.block_on(hammer(backend.clone(), job.seconds, job.calls));
        let elapsed = t0.elapsed();
        rt.block_on(backend.flush_async()).unwrap();
        (t, elapsed)
    } else {
        let backend = store.bind(&policy).unwrap();
        let _ = backend.execute("warmup", Op::Peek(1), 0).unwrap();
        wait();
        let t0 = Instant::now();
        let t = rt.block_on(hammer(backend, job.seconds, job.calls));
        (t, t0.elapsed())
    };
    let denials: Vec<String> = t
        .denials
        .iter()
        .map(|(ms, n)| format!("{ms}:{n}"))
        .collect();
    println!(
        "\nRESULT {} {} {:.6} {}\nDENIALS {}",
        t.decisions,
        t.admitted,
        elapsed.as_secs_f64(),
        t.last_admit,
        denials.join(",")
    );
}

/// Runs PROCESSES children at once and adds up what they saw.
fn run(server: &RedisServer, ns: &str, leased: bool, seconds: u64, calls: u64) -> Tally {
    let exe = std::env::current_exe().unwrap();
    let start_ms = epoch_ms() + 1_500;
    let job = Job {
        url: server.url(),
        ns: ns.into(),
        leased,
        seconds,
        calls,
        start_ms,
    };
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .env(CHILD, job.to_env())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn a child")
        })
        .collect();
    let mut total = Tally::default();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {stdout}");
        let line = |prefix: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix} line: {stdout}"))
                .to_owned()
        };
        let result = line("RESULT ");
        let f: Vec<&str> = result.split(' ').collect();
        let seconds: f64 = f[2].parse().unwrap();
        let mut t = Tally {
            decisions: f[0].parse().unwrap(),
            admitted: f[1].parse().unwrap(),
            last_admit: f[3].parse().unwrap(),
            ..Tally::default()
        };
        t.rate = t.decisions as f64 / seconds;
        for pair in line("DENIALS").split(',').filter(|p| !p.trim().is_empty()) {
            let (ms, n) = pair.trim().split_once(':').unwrap();
            t.denials.insert(ms.parse().unwrap(), n.parse().unwrap());
        }
        total.add(t);
    }
    total
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let Ok(job) = std::env::var(CHILD) {
        child(Job::from_env(&job));
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let server = RedisServer::start().unwrap_or_else(|e| {
        eprintln!("cannot start redis-server: {e}");
        std::process::exit(1);
    });
    let seconds = env_u64("BENCH_SECONDS", 5);
    let rounds = env_u64("BENCH_ROUNDS", 3);

    // The script's SHA1 (loaded with SCRIPT LOAD) and its arguments for the hot key.
    let source = tollgate_redis::script_source(tollgate::Algorithm::Gcra);
    let sha = server
        .command(&["SCRIPT", "LOAD", source])
        .expect("SCRIPT LOAD")
        .as_text()
        .expect("a SHA1");
    let throughput = policy(false);
    let params = tollgate::algorithm::gcra::Params::new(&throughput.rates()[0]);
    let (t, tau, burst) = (
        params.emission_interval.to_string(),
        params.tolerance.to_string(),
        params.burst.to_string(),
    );
    let port = server.port().to_string();
    let n = (seconds * 150_000).to_string();
    let ceiling_args = [
        "-p",
        &port,
        "-P",
        "32",
        "-n",
        &n,
        "EVALSHA",
        &sha,
        "1",
        "ceiling:gcra:hot",
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

    let mut rows = Vec::new();
    for round in 0..rounds {
        let ceiling = tollgate_testkit::redis_benchmark(&ceiling_args)
            .expect("redis-benchmark")
            .rps;
        let plain = run(&server, &format!("plain{round}"), false, seconds, 0).rate;
        let leased = run(&server, &format!("leased{round}"), true, seconds, 0).rate;
        rows.push((ceiling, plain, leased));
    }

    // The frozen quota, through leases.
    let calls = QUOTA * 5 / 4 / (PROCESSES * TASKS) as u64 + 1;
    let t0 = Instant::now();
    let quota = run(&server, "quota", true, 0, calls);
    let (attempts, admitted) = (quota.decisions, quota.admitted);
    // A denial is false when the fleet admitted a call after it: units existed somewhere
    // (in another process's batch) while it was denied. Counted per 10 µs, strictly before
    // the 10 µs of the last admission.
    let in_flight_denials: u64 = quota
        .denials
        .range(..quota.last_admit / 10)
        .map(|(_, n)| n)
        .sum();
    let quota_secs = t0.elapsed().as_secs_f64();
    let quota_policy = policy(true);
    let plain = RedisStore::builder()
        .url(server.url())
        .namespace("quota")
        .build()
        .unwrap()
        .bind(&quota_policy)
        .unwrap();
    let peek = plain.execute("hot", Op::Peek(1), 0).unwrap().unwrap();
    let free_after = if peek.allowed { peek.remaining + 1 } else { 0 };

    println!();
    println!(
        "hot key: {PROCESSES} processes x {TASKS} tasks on ONE key (redis-server {}, loopback, \
         {seconds} s per phase)",
        server.version()
    );
    println!("{:-<100}", "");
    println!(
        "{:<6} {:>20} {:>22} {:>22} {:>12} {:>12}",
        "round", "ceiling (dec/s)", "no leases (dec/s)", "leases (dec/s)", "no leases", "leases"
    );
    let mut ratios = Vec::new();
    for (i, (ceiling, plain, leased)) in rows.iter().enumerate() {
        println!(
            "{:<6} {:>20.0} {:>22.0} {:>22.0} {:>11.2}x {:>11.2}x",
            i + 1,
            ceiling,
            plain,
            leased,
            plain / ceiling,
            leased / ceiling
        );
        ratios.push(leased / ceiling);
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    println!(
        "median leases / ceiling: {:.2}x (goal >= 5x)",
        ratios[(ratios.len() - 1) / 2]
    );
    println!(
        "ceiling = redis-benchmark -P 32 -c 50 -n {n} EVALSHA <gcra sha> 1 <one key> ... \
         (the same script tollgate-redis runs)"
    );
    println!(
        "leases  = LeaseStore(RedisStore), max_batch {MAX_BATCH}, lease 100 ms, adaptive batch; \
         GCRA 1e6/s burst 1e9 (nothing denied)"
    );
    println!("{:-<100}", "");
    // GCRA lets one more unit in every T after the first charge.
    let t_us = tollgate::algorithm::gcra::Params::new(&quota_policy.rates()[0]).emission_interval;
    let allowed = QUOTA + (quota_secs * 1e6) as u64 / t_us;
    let unused = allowed.saturating_sub(admitted);
    let denied = attempts - admitted;
    println!(
        "frozen quota {QUOTA} per 365 days, {attempts} calls through leases in {quota_secs:.1} s: \
         admitted {admitted} of {allowed} allowed ({})",
        if admitted <= allowed {
            "never over-admitted"
        } else {
            "OVER-ADMITTED"
        }
    );
    println!(
        "false denials (denied while units sat in another process's batch, i.e. before the \
         fleet's last admission): {in_flight_denials} = {:.3} % of the {denied} denials, {:.3} % \
         of all calls",
        100.0 * in_flight_denials as f64 / denied.max(1) as f64,
        100.0 * in_flight_denials as f64 / attempts.max(1) as f64,
    );
    println!(
        "units never admitted (allowed - admitted): {unused}; bound on units held in batches at \
         any instant: N x max_batch = {}",
        PROCESSES as u64 * MAX_BATCH
    );
    println!(
        "store after every batch was given back: {free_after} free (allowed - admitted = {}: \
         every unused unit came back)",
        allowed - admitted.min(allowed)
    );
    println!(
        "(allowed = the quota + the units GCRA drips back during the run: {} us each)",
        t_us
    );
    assert!(admitted <= allowed, "over-admitted: {admitted} > {allowed}");
}
