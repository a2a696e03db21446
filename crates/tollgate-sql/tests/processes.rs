//! Concurrency across OS processes: several processes × many tasks on ONE key, against a
//! real SQLite file and a real PostgreSQL. Never more admitted than the policy allows (with
//! a frozen caller time: exactly the capacity), and no call fails for any reason other than
//! the policy (no lock-contention error, no SQLITE_BUSY).
//!
//! This binary has its own `main` (harness = false): run with `TOLLGATE_SQL_CHILD` set it is
//! a child that hammers the key and prints what it saw; otherwise it is the parent that runs
//! the scenarios below by re-executing itself.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate::store::multi::{MultiBackend, MultiOp};
use tollgate::store::{Backend, Op, Store};
use tollgate::{Algorithm, Policy};
use tollgate_sql::{KeyCheck, MultiDecision, PgBackend, PgStore, SqliteBackend, SqliteStore};

const CHILD: &str = "TOLLGATE_SQL_CHILD";

/// What one child does, passed through the environment.
#[derive(Clone, Debug)]
struct Job {
    store: String, // "sqlite" or "postgres"
    target: String,
    table: String,
    algorithm: String,
    rates: String,
    tasks: usize,
    attempts: usize,
    /// Caller time in µs, or 0 for the database clock (PostgreSQL only).
    now: u64,
}

impl Job {
    fn to_env(&self) -> String {
        [
            self.store.as_str(),
            &self.target,
            &self.table,
            &self.algorithm,
            &self.rates,
            &self.tasks.to_string(),
            &self.attempts.to_string(),
            &self.now.to_string(),
        ]
        .join("|")
    }

    fn from_env(s: &str) -> Job {
        let p: Vec<&str> = s.split('|').collect();
        Job {
            store: p[0].into(),
            target: p[1].into(),
            table: p[2].into(),
            algorithm: p[3].into(),
            rates: p[4].into(),
            tasks: p[5].parse().unwrap(),
            attempts: p[6].parse().unwrap(),
            now: p[7].parse().unwrap(),
        }
    }

    fn policy(&self) -> Policy {
        Policy::parse(self.algorithm.parse::<Algorithm>().unwrap(), &self.rates).unwrap()
    }
}

#[derive(Default)]
struct Tally {
    admitted: AtomicU64,
    denied: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn record(&self, r: Result<Option<tollgate::Decision>, tollgate::Error>) {
        match r {
            Ok(Some(d)) if d.allowed => self.admitted.fetch_add(1, Ordering::Relaxed),
            Ok(_) => self.denied.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                self.first_error
                    .lock()
                    .unwrap()
                    .get_or_insert(e.to_string());
                self.errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

fn child(job: Job) {
    if job.algorithm == MULTI {
        multi_child(job);
        return;
    }
    let tally = Arc::new(Tally::default());
    let policy = job.policy();
    match job.store.as_str() {
        "sqlite" => {
            let store = SqliteStore::open(&job.target)
                .unwrap()
                .table(&job.table)
                .unwrap();
            let backend = store.bind(&policy).unwrap();
            std::thread::scope(|s| {
                for _ in 0..job.tasks {
                    s.spawn(|| {
                        for _ in 0..job.attempts {
                            tally.record(backend.execute("hot", Op::Check(1), job.now));
                        }
                    });
                }
            });
        }
        _ => {
            let store = PgStore::builder(&job.target)
                .table(&job.table)
                .unwrap()
                .caller_time(job.now != 0)
                .max_connections(job.tasks)
                // 64 callers queue on one row lock: give each statement the 5 s the whole
                // call had before statements got half the call timeout (docs/sql.md)
                .call_timeout(Duration::from_secs(10))
                .connect()
                .unwrap();
            let backend = Arc::new(store.bind(&policy).unwrap());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut handles = Vec::new();
                for task in 0..job.tasks {
                    let backend = backend.clone();
                    let tally = tally.clone();
                    let job = job.clone();
                    handles.push(tokio::spawn(async move {
                        for _ in 0..job.attempts {
                            // Half the tasks use the async API, half the sync one.
                            let r = if task % 2 == 0 {
                                backend.execute_async("hot", Op::Check(1), job.now).await
                            } else {
                                let b = backend.clone();
                                let now = job.now;
                                tokio::task::spawn_blocking(move || {
                                    b.execute("hot", Op::Check(1), now)
                                })
                                .await
                                .unwrap()
                            };
                            tally.record(r);
                        }
                    }));
                }
                for h in handles {
                    h.await.unwrap();
                }
            });
        }
    }
    println!(
        "admitted={} denied={} errors={} first_error={}",
        tally.admitted.load(Ordering::Relaxed),
        tally.denied.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally
            .first_error
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_default()
            .replace('\n', " ")
    );
}

/// Runs `processes` children on `job`; returns (admitted, denied, elapsed).
fn run_children(job: &Job, processes: usize) -> Result<(u64, u64, Duration), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let children: Vec<_> = (0..processes)
        .map(|_| {
            Command::new(&exe)
                .env(CHILD, job.to_env())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let (mut admitted, mut denied) = (0, 0);
    for c in children {
        let out = c.wait_with_output().map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "child failed: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let line = stdout
            .lines()
            .find(|l| l.starts_with("admitted="))
            .ok_or_else(|| format!("no report from a child: {stdout}"))?;
        let field = |name: &str| -> u64 {
            line.split(' ')
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX)
        };
        if field("errors") != 0 {
            return Err(format!(
                "a call failed for a reason other than the policy: {line}"
            ));
        }
        admitted += field("admitted");
        denied += field("denied");
    }
    let total = (processes * job.tasks * job.attempts) as u64;
    if admitted + denied != total {
        return Err(format!("{admitted} + {denied} != {total} calls"));
    }
    Ok((admitted, denied, started.elapsed()))
}

fn unique(name: &str) -> String {
    format!(
        "tgp_{name}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

const FROZEN: u64 = 1_800_000_000_000_000;

fn sqlite_frozen(algorithm: &str, rates: &str, capacity: u64) -> Result<(), String> {
    let dir = std::env::temp_dir().join(unique("sqlite"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("shared.db");
    let table = "limits";
    let store = SqliteStore::open(&path)
        .and_then(|s| s.table(table))
        .map_err(|e| e.to_string())?;
    store.ensure_schema().map_err(|e| e.to_string())?;
    let job = Job {
        store: "sqlite".into(),
        target: path.display().to_string(),
        table: table.into(),
        algorithm: algorithm.into(),
        rates: rates.into(),
        tasks: 8,
        attempts: 25,
        now: FROZEN,
    };
    let result = run_children(&job, 4);
    let _ = std::fs::remove_dir_all(&dir);
    let (admitted, denied, _) = result?;
    if admitted != capacity {
        return Err(format!(
            "admitted {admitted} (denied {denied}), expected exactly {capacity}"
        ));
    }
    Ok(())
}

/// A PostgreSQL table for one scenario, dropped afterwards.
fn with_pg_table(
    name: &str,
    f: impl FnOnce(&str, &str) -> Result<(), String>,
) -> Result<(), String> {
    let Some(url) = tollgate_testkit::require_postgres() else {
        return Ok(());
    };
    let table = unique(name);
    let store = PgStore::builder(&url)
        .table(&table)
        .and_then(|b| b.connect())
        .map_err(|e| e.to_string())?;
    store.migrate().map_err(|e| e.to_string())?;
    let result = f(&url, &table);
    let _ = store.drop_schema();
    result
}

fn pg_frozen(algorithm: &str, rates: &str, capacity: u64) -> Result<(), String> {
    with_pg_table(algorithm, |url, table| {
        let job = Job {
            store: "postgres".into(),
            target: url.into(),
            table: table.into(),
            algorithm: algorithm.into(),
            rates: rates.into(),
            tasks: 16,
            attempts: 20,
            now: FROZEN,
        };
        let (admitted, denied, _) = run_children(&job, 4)?;
        if admitted != capacity {
            return Err(format!(
                "admitted {admitted} (denied {denied}), expected exactly {capacity}"
            ));
        }
        Ok(())
    })
}

fn pg_database_clock() -> Result<(), String> {
    with_pg_table("dbclock", |url, table| {
        // 20/s with a burst of 5, on the database clock.
        let job = Job {
            store: "postgres".into(),
            target: url.into(),
            table: table.into(),
            algorithm: "gcra".into(),
            rates: "20/s burst 5".into(),
            tasks: 16,
            attempts: 25,
            now: 0,
        };
        let (admitted, denied, elapsed) = run_children(&job, 4)?;
        // At most the burst plus one unit per 50 ms of the run (plus one for a tick
        // in progress); the elapsed time measured here includes process start-up, so this
        // bound is generous but never below what the policy allows.
        let bound = 5 + elapsed.as_micros() as u64 / 50_000 + 1;
        if admitted > bound || admitted < 5 {
            return Err(format!(
                "admitted {admitted} (denied {denied}) in {elapsed:?}; allowed at most {bound}"
            ));
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Multi-key all-or-nothing: every call checks 5 keys, one per algorithm, on overlapping key
// sets (4 users, 2 IPs of 2 users each, one tenant, one route, one global key), in a call
// order that changes from call to call.

/// `Job::algorithm` of a multi-key job.
const MULTI: &str = "multi";

/// The multi-key policies: (name, algorithm, rates, capacity at a frozen time).
const MULTI_POLICIES: [(&str, &str, &str, u64); 5] = [
    ("user", "gcra", "10/hour", 10),
    ("ip", "token_bucket", "1/hour burst 15", 15),
    ("global", "sliding_log", "25/hour", 25),
    ("tenant", "sliding_window", "40/hour", 40),
    ("route", "fixed_window", "30/hour", 30),
];

/// The keys task `task` checks, one per policy in MULTI_POLICIES order.
fn multi_keys(task: usize) -> [String; 5] {
    let user = task % 4;
    [
        format!("user:{user}"),
        format!("ip:{}", user / 2),
        "global".to_string(),
        "tenant".to_string(),
        "route".to_string(),
    ]
}

/// Every key of the scenario with its policy index.
fn multi_all_keys() -> Vec<(usize, String)> {
    let mut keys: Vec<(usize, String)> = (0..4).map(|u| (0, format!("user:{u}"))).collect();
    keys.extend((0..2).map(|i| (1, format!("ip:{i}"))));
    keys.extend([
        (2, "global".into()),
        (3, "tenant".into()),
        (4, "route".into()),
    ]);
    keys
}

fn multi_policies() -> Vec<Policy> {
    MULTI_POLICIES
        .iter()
        .map(|(_, a, r, _)| Policy::parse(a.parse::<Algorithm>().unwrap(), r).unwrap())
        .collect()
}

/// The order of the 5 checks in attempt `attempt` of task `task`: rotated, and reversed
/// every other time, so concurrent calls ask for the same rows in many orders.
fn multi_order(task: usize, attempt: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..5).map(|i| (i + task + attempt) % 5).collect();
    if (task + attempt) % 2 == 1 {
        order.reverse();
    }
    order
}

/// Per-user admissions of a multi-key child, one counter per user.
#[derive(Default)]
struct MultiTally {
    per_user: [AtomicU64; 4],
    denied: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl MultiTally {
    fn record(&self, task: usize, r: Result<MultiDecision, tollgate::Error>) {
        match r {
            Ok(d) if d.allowed => self.per_user[task % 4].fetch_add(1, Ordering::Relaxed),
            Ok(_) => self.denied.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                self.first_error
                    .lock()
                    .unwrap()
                    .get_or_insert(e.to_string());
                self.errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

fn multi_child(job: Job) {
    let tally = Arc::new(MultiTally::default());
    let policies = multi_policies();
    match job.store.as_str() {
        "sqlite" => {
            let store = SqliteStore::open(&job.target)
                .unwrap()
                .table(&job.table)
                .unwrap();
            let backends: Vec<_> = policies.iter().map(|p| store.bind(p).unwrap()).collect();
            std::thread::scope(|s| {
                for task in 0..job.tasks {
                    let (backends, tally) = (&backends, &tally);
                    s.spawn(move || {
                        let keys = multi_keys(task);
                        for attempt in 0..job.attempts {
                            let checks: Vec<_> = multi_order(task, attempt)
                                .into_iter()
                                .map(|i| KeyCheck::new(&backends[i], keys[i].as_str(), 1))
                                .collect();
                            tally.record(
                                task,
                                SqliteBackend::execute_all(&checks, MultiOp::Check, job.now),
                            );
                        }
                    });
                }
            });
        }
        _ => {
            let store = PgStore::builder(&job.target)
                .table(&job.table)
                .unwrap()
                .caller_time(job.now != 0)
                .max_connections(job.tasks)
                // 64 callers queue on one row lock: give each statement the 5 s the whole
                // call had before statements got half the call timeout (docs/sql.md)
                .call_timeout(Duration::from_secs(10))
                .connect()
                .unwrap();
            let backends: Arc<Vec<_>> =
                Arc::new(policies.iter().map(|p| store.bind(p).unwrap()).collect());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut handles = Vec::new();
                for task in 0..job.tasks {
                    let (backends, tally) = (backends.clone(), tally.clone());
                    let job = job.clone();
                    handles.push(tokio::spawn(async move {
                        let keys = multi_keys(task);
                        for attempt in 0..job.attempts {
                            let order = multi_order(task, attempt);
                            // Half the tasks use the async API, half the sync one.
                            let r = if task % 2 == 0 {
                                let checks: Vec<_> = order
                                    .iter()
                                    .map(|&i| KeyCheck::new(&backends[i], keys[i].as_str(), 1))
                                    .collect();
                                PgBackend::execute_all_async(&checks, MultiOp::Check, job.now).await
                            } else {
                                let (backends, keys) = (backends.clone(), keys.clone());
                                let now = job.now;
                                tokio::task::spawn_blocking(move || {
                                    let checks: Vec<_> = order
                                        .iter()
                                        .map(|&i| KeyCheck::new(&backends[i], keys[i].as_str(), 1))
                                        .collect();
                                    PgBackend::execute_all(&checks, MultiOp::Check, now)
                                })
                                .await
                                .unwrap()
                            };
                            tally.record(task, r);
                        }
                    }));
                }
                for h in handles {
                    h.await.unwrap();
                }
            });
        }
    }
    let per_user: Vec<String> = tally
        .per_user
        .iter()
        .map(|a| a.load(Ordering::Relaxed).to_string())
        .collect();
    println!(
        "multi per_user={} denied={} errors={} first_error={}",
        per_user.join(","),
        tally.denied.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally
            .first_error
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_default()
            .replace('\n', " ")
    );
}

/// Runs `processes` multi-key children; returns the admissions per user.
fn run_multi_children(job: &Job, processes: usize) -> Result<[u64; 4], String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let children: Vec<_> = (0..processes)
        .map(|_| {
            Command::new(&exe)
                .env(CHILD, job.to_env())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let mut per_user = [0u64; 4];
    let mut denied = 0;
    for c in children {
        let out = c.wait_with_output().map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "child failed: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let line = stdout
            .lines()
            .find(|l| l.starts_with("multi "))
            .ok_or_else(|| format!("no report from a child: {stdout}"))?;
        let field = |name: &str| -> &str {
            line.split(' ')
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .unwrap_or("")
        };
        if field("errors") != "0" {
            return Err(format!(
                "a call failed for a reason other than the policy (a deadlock?): {line}"
            ));
        }
        for (sum, v) in per_user.iter_mut().zip(field("per_user").split(',')) {
            *sum += v.parse::<u64>().map_err(|e| format!("{line}: {e}"))?;
        }
        denied += field("denied").parse::<u64>().map_err(|e| e.to_string())?;
    }
    let total = (processes * job.tasks * job.attempts) as u64;
    if per_user.iter().sum::<u64>() + denied != total {
        return Err(format!("{per_user:?} + {denied} != {total} calls"));
    }
    Ok(per_user)
}

/// Checks a multi-key run at a frozen time: the global key binds, so exactly its capacity
/// is admitted; no key admitted more than its capacity; and each key's stored charge (read
/// back with a single-key peek) equals the admissions that included it — nothing charged
/// by a denied call, nothing lost from an admitted one.
fn check_multi_run<B: Backend>(per_user: [u64; 4], backends: &[B]) -> Result<String, String> {
    let admitted_on = |policy: usize, key: &str| -> u64 {
        match (policy, key) {
            (0, k) => per_user[k.trim_start_matches("user:").parse::<usize>().unwrap()],
            (1, "ip:0") => per_user[0] + per_user[1],
            (1, _) => per_user[2] + per_user[3],
            _ => per_user.iter().sum(),
        }
    };
    let total: u64 = per_user.iter().sum();
    let global_capacity = MULTI_POLICIES[2].3;
    if total != global_capacity {
        return Err(format!(
            "admitted {total} ({per_user:?}), expected exactly the global capacity {global_capacity}"
        ));
    }
    let mut report = Vec::new();
    for (policy, key) in multi_all_keys() {
        let capacity = MULTI_POLICIES[policy].3;
        let admitted = admitted_on(policy, &key);
        if admitted > capacity {
            return Err(format!("{key}: admitted {admitted} > capacity {capacity}"));
        }
        let peek = backends[policy]
            .execute(&key, Op::Peek(1), FROZEN)
            .map_err(|e| e.to_string())?
            .ok_or("no decision")?;
        let charged = capacity - peek.remaining - u64::from(peek.allowed);
        if charged != admitted {
            return Err(format!(
                "{key}: charged {charged} but {admitted} admitted calls included it"
            ));
        }
        report.push(format!("{key}={admitted}/{capacity}"));
    }
    Ok(report.join(" "))
}

fn sqlite_multi() -> Result<(), String> {
    let dir = std::env::temp_dir().join(unique("sqlite_multi"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("shared.db");
    let result = (|| {
        let store = SqliteStore::open(&path)
            .and_then(|s| s.table("limits"))
            .map_err(|e| e.to_string())?;
        store.ensure_schema().map_err(|e| e.to_string())?;
        let job = Job {
            store: "sqlite".into(),
            target: path.display().to_string(),
            table: "limits".into(),
            algorithm: MULTI.into(),
            rates: String::new(),
            tasks: 8,
            attempts: 20,
            now: FROZEN,
        };
        let per_user = run_multi_children(&job, 4)?;
        let backends: Vec<_> = multi_policies()
            .iter()
            .map(|p| store.bind(p).unwrap())
            .collect();
        let report = check_multi_run(per_user, &backends)?;
        println!("    sqlite multi-key, 4 processes x 8 threads x 20 calls: {report}");
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn pg_multi() -> Result<(), String> {
    with_pg_table("multi", |url, table| {
        let job = Job {
            store: "postgres".into(),
            target: url.into(),
            table: table.into(),
            algorithm: MULTI.into(),
            rates: String::new(),
            tasks: 16,
            attempts: 20,
            now: FROZEN,
        };
        let per_user = run_multi_children(&job, 4)?;
        let store = PgStore::builder(url)
            .table(table)
            .and_then(|b| b.caller_time(true).connect())
            .map_err(|e| e.to_string())?;
        let backends: Vec<_> = multi_policies()
            .iter()
            .map(|p| store.bind(p).unwrap())
            .collect();
        let report = check_multi_run(per_user, &backends)?;
        println!("    postgres multi-key, 4 processes x 16 tasks x 20 calls: {report}");
        Ok(())
    })
}

fn main() {
    if let Ok(job) = std::env::var(CHILD) {
        child(Job::from_env(&job));
        return;
    }
    type Scenario = (&'static str, fn() -> Result<(), String>);
    let scenarios: [Scenario; 8] = [
        ("sqlite_gcra_4_processes_x_8_threads", || {
            sqlite_frozen("gcra", "50/hour", 50)
        }),
        ("sqlite_sliding_log_4_processes_x_8_threads", || {
            sqlite_frozen("sliding_log", "10/min;30/hour", 10)
        }),
        ("postgres_gcra_4_processes_x_16_tasks", || {
            pg_frozen("gcra", "60/hour burst 40", 40)
        }),
        ("postgres_token_bucket_4_processes_x_16_tasks", || {
            pg_frozen("token_bucket", "1/min burst 30", 30)
        }),
        ("postgres_sliding_log_4_processes_x_16_tasks", || {
            pg_frozen("sliding_log", "25/min;100/hour", 25)
        }),
        (
            "postgres_database_clock_4_processes_x_16_tasks",
            pg_database_clock,
        ),
        ("sqlite_multi_key_4_processes_x_8_threads", sqlite_multi),
        ("postgres_multi_key_4_processes_x_16_tasks", pg_multi),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    println!("\nrunning {} tests", scenarios.len());
    for (name, run) in scenarios {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        match run() {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(e) => {
                println!("test {name} ... FAILED\n    {e}");
                failed += 1;
            }
        }
    }
    let status = if failed == 0 { "ok" } else { "FAILED" };
    println!("\ntest result: {status}. {passed} passed; {failed} failed; 0 ignored\n");
    if failed > 0 {
        std::process::exit(1);
    }
}
