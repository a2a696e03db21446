//! Decisions per second of the SQL stores, printed next to the ceiling of the same server.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo bench -p tollgate-sql --bench sql_throughput
//! ```
//!
//! - PostgreSQL: 16 concurrent tasks (async API) and 16 threads (sync API) running `check` on
//!   10,000 keys for `BENCH_SECONDS` (default 5) s each, next to `pgbench -n -M prepared
//!   -f <the same statement> -c 16 -j 2 -T <same>` on the same server: the ratio is what the
//!   store keeps of what the server can do with that statement.
//! - SQLite: one file, one process × 1 thread, then 4 processes × 1 thread.
//! - Multi-key: one `check_all` over 3 keys (per-user GCRA on 10,000 keys, per-IP token
//!   bucket on 1,000, per-tenant sliding window on 100) next to the same 3 keys checked one
//!   by one (3 calls): PostgreSQL with 16 threads (sync API), SQLite with 1 thread.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::store::multi::{MultiBackend, MultiOp};
use tollgate::store::{Backend, Op, Store};
use tollgate::{Policy, Rate};
use tollgate_sql::{KeyCheck, PgBackend, PgStore, SqliteBackend, SqliteStore};

const CHILD: &str = "TOLLGATE_SQL_BENCH_CHILD";
const KEYS: u64 = 10_000;
const TASKS: usize = 16;

fn seconds() -> u64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

fn policy() -> Policy {
    Policy::gcra(Rate::per_second(1000).unwrap()).unwrap()
}

struct Rng(u64);
impl Rng {
    fn next_key(&mut self) -> String {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        format!("bench-{}", self.0 % KEYS + 1)
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn postgres(url: &str) {
    let table = "tg_bench";
    let store = PgStore::builder(url)
        .table(table)
        .unwrap()
        .max_connections(TASKS)
        .connect()
        .expect("connect");
    store.migrate().expect("migrate");
    let backend = Arc::new(store.bind(&policy()).unwrap());
    let secs = seconds();

    // Async: 16 tasks on a 2-thread runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut handles = Vec::new();
        for t in 0..TASKS {
            let backend = backend.clone();
            let count = count.clone();
            let errors = errors.clone();
            handles.push(tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
                while tokio::time::Instant::now() < deadline {
                    match backend
                        .execute_async(&rng.next_key(), Op::Check(1), 0)
                        .await
                    {
                        Ok(_) => count.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
    let async_dps = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

    // Sync: 16 OS threads.
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..TASKS {
            let backend = backend.clone();
            let count = count.clone();
            let errors = errors.clone();
            let stop = stop.clone();
            s.spawn(move || {
                let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ (t as u64 + 1));
                while !stop.load(Ordering::Relaxed) {
                    match backend.execute(&rng.next_key(), Op::Check(1), 0) {
                        Ok(_) => count.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
    });
    let sync_dps = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

    // The server's ceiling for the same statement: pgbench, same client count. (The key is
    // built with chr(58) because pgbench -M prepared takes any `:name`, even inside a string
    // literal, for a variable.)
    let script = std::env::temp_dir().join(format!("tollgate-bench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "\\set k random(1, {KEYS})\nSELECT * FROM \"{table}_gcra\"('gcra' || chr(58) || 'bench-' || (:k)::text, NULL, 0, 1, '{{1000}}', '{{1000000}}', '{{1000}}', '{{}}', 0, NULL);\n"
        ),
    )
    .unwrap();
    let args = [
        "-n".to_string(),
        "-M".into(),
        "prepared".into(),
        "-f".into(),
        script.display().to_string(),
        "-c".into(),
        TASKS.to_string(),
        "-j".into(),
        "2".into(),
        "-T".into(),
        secs.to_string(),
        url.to_string(),
    ];
    let out = Command::new("pgbench").args(&args).output();
    let _ = std::fs::remove_file(&script);
    let pgbench_tps = match out {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let tps = text
                .lines()
                .find(|l| l.starts_with("tps = "))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|v| v.parse::<f64>().ok());
            if tps.is_none() {
                println!(
                    "pgbench gave no tps: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            tps
        }
        Err(e) => {
            println!("pgbench not runnable: {e}");
            None
        }
    };
    println!("\nPostgreSQL, GCRA check on {KEYS} random keys, database clock, {secs} s each");
    println!("  tollgate-sql async, {TASKS} tasks : {async_dps:>10.0} decisions/s");
    println!("  tollgate-sql sync, {TASKS} threads: {sync_dps:>10.0} decisions/s");
    if let Some(tps) = pgbench_tps {
        println!(
            "  pgbench -n -M prepared -c {TASKS} -j 2 -T {secs} (same statement): {tps:>10.0} tps"
        );
        println!(
            "  ratio async/pgbench = {:.2}, sync/pgbench = {:.2}",
            async_dps / tps,
            sync_dps / tps
        );
    }
    println!("  errors: {}", errors.load(Ordering::Relaxed));
    let _ = store.drop_schema();
}

/// One SQLite worker: checks random keys for `secs` seconds; returns the count.
fn sqlite_worker(path: &str, secs: u64, seed: u64) -> u64 {
    let store = SqliteStore::open(path).unwrap();
    let backend = store.bind(&policy()).unwrap();
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut n = 0;
    while Instant::now() < deadline {
        backend
            .execute(&rng.next_key(), Op::Check(1), now_us())
            .expect("sqlite check");
        n += 1;
    }
    n
}

fn sqlite() {
    let dir = std::env::temp_dir().join(format!("tollgate-sql-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bench.db").display().to_string();
    SqliteStore::open(&path).unwrap().ensure_schema().unwrap();
    let secs = seconds();
    let single = sqlite_worker(&path, secs, 7) as f64 / secs as f64;
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|i| {
            Command::new(&exe)
                .env(CHILD, format!("{path}|{secs}|{}", i + 11))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let total: u64 = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .sum();
    println!("\nSQLite (WAL, synchronous=NORMAL), GCRA check on {KEYS} random keys, {secs} s each");
    println!("  1 process  x 1 thread : {single:>10.0} decisions/s");
    println!(
        "  4 processes x 1 thread: {:>10.0} decisions/s in total",
        total as f64 / secs as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The 3 policies of the multi-key comparison (high limits: nearly every call admits).
fn multi_policies() -> [Policy; 3] {
    [
        Policy::gcra(Rate::per_second(1000).unwrap()).unwrap(),
        Policy::token_bucket(1000, 1000, Duration::from_secs(1)).unwrap(),
        Policy::sliding_window(Rate::per_second(100_000).unwrap()).unwrap(),
    ]
}

fn multi_keys(rng: &mut Rng) -> [String; 3] {
    let n = rng.next_key();
    let n: u64 = n.trim_start_matches("bench-").parse().unwrap_or(1);
    [
        format!("user-{n}"),
        format!("ip-{}", n % 1000),
        format!("tenant-{}", n % 100),
    ]
}

/// Runs `threads` threads for `secs` s, each repeating `call` (one request); returns
/// (requests per second, errors).
fn run_threads(
    threads: usize,
    secs: u64,
    call: impl Fn(&mut Rng) -> Result<(), tollgate::Error> + Sync,
) -> (f64, u64) {
    let count = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (count, errors, stop, call) = (&count, &errors, &stop, &call);
            s.spawn(move || {
                let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ (t as u64 + 1));
                while !stop.load(Ordering::Relaxed) {
                    match call(&mut rng) {
                        Ok(()) => count.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
    });
    (
        count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed),
    )
}

fn postgres_multi(url: &str) {
    let store = PgStore::builder(url)
        .table("tg_bench_multi")
        .unwrap()
        .max_connections(TASKS)
        .connect()
        .expect("connect");
    store.migrate().expect("migrate");
    let backends = multi_policies().map(|p| store.bind(&p).unwrap());
    let secs = seconds();
    let (multi, multi_errors) = run_threads(TASKS, secs, |rng| {
        let keys = multi_keys(rng);
        let checks: Vec<_> = (0..3)
            .map(|i| KeyCheck::new(&backends[i], keys[i].as_str(), 1))
            .collect();
        PgBackend::execute_all(&checks, MultiOp::Check, 0).map(drop)
    });
    let (single, single_errors) = run_threads(TASKS, secs, |rng| {
        let keys = multi_keys(rng);
        for (b, k) in backends.iter().zip(&keys) {
            b.execute(k, Op::Check(1), 0)?;
        }
        Ok(())
    });
    println!("\nPostgreSQL multi-key, 3 keys per request, {TASKS} threads, database clock, {secs} s each");
    println!("  check_all (1 round trip)      : {multi:>10.0} requests/s");
    println!("  3 single-key checks (3 trips) : {single:>10.0} requests/s");
    println!(
        "  ratio check_all / 3 singles = {:.2}; errors: {}",
        multi / single,
        multi_errors + single_errors
    );
    let _ = store.drop_schema();
}

fn sqlite_multi() {
    let dir = std::env::temp_dir().join(format!("tollgate-sql-bench-m-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteStore::open(dir.join("bench.db")).unwrap();
    store.ensure_schema().unwrap();
    let backends = multi_policies().map(|p| store.bind(&p).unwrap());
    let secs = seconds();
    let (multi, multi_errors) = run_threads(1, secs, |rng| {
        let keys = multi_keys(rng);
        let checks: Vec<_> = (0..3)
            .map(|i| KeyCheck::new(&backends[i], keys[i].as_str(), 1))
            .collect();
        SqliteBackend::execute_all(&checks, MultiOp::Check, now_us()).map(drop)
    });
    let (single, single_errors) = run_threads(1, secs, |rng| {
        let keys = multi_keys(rng);
        for (b, k) in backends.iter().zip(&keys) {
            b.execute(k, Op::Check(1), now_us())?;
        }
        Ok(())
    });
    println!("\nSQLite multi-key, 3 keys per request, 1 thread, {secs} s each");
    println!("  check_all (1 transaction)         : {multi:>10.0} requests/s");
    println!("  3 single-key checks (3 transactions): {single:>10.0} requests/s");
    println!(
        "  ratio check_all / 3 singles = {:.2}; errors: {}",
        multi / single,
        multi_errors + single_errors
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    if let Ok(job) = std::env::var(CHILD) {
        let p: Vec<&str> = job.split('|').collect();
        let n = sqlite_worker(p[0], p[1].parse().unwrap(), p[2].parse().unwrap());
        println!("{n}");
        return;
    }
    // `cargo test --benches` runs this binary with --bench absent: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("sql_throughput: run with `cargo bench -p tollgate-sql --bench sql_throughput`");
        return;
    }
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            postgres(&url);
            postgres_multi(&url);
        }
        Err(_) => println!("DATABASE_URL not set: PostgreSQL skipped"),
    }
    sqlite();
    sqlite_multi();
}
