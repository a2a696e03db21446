//! Faults injected into a private redis-server while 4 threads check one key, for each
//! failure policy: `SIGSTOP`/`SIGCONT`, `SCRIPT FLUSH`, `CLIENT KILL`, `SIGKILL` + restart.
//! Invariants after each run:
//! - no over-admission: the admissions Redis decided never exceed the limit;
//! - no charge for failed calls: the key's state in Redis equals exactly the admissions Redis
//!   reported (a call that failed, or that the failure policy answered, charged nothing) —
//!   except where the fault breaks a connection after the script ran (see the test);
//! - recovery by itself: Redis decides again within seconds, without a restart of the client.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::store::failure::{FailSafe, FailSafeStore, FailurePolicy};
use tollgate::{Limiter, Policy, Rate};
use tollgate_redis::{RedisBackend, RedisStore};
use tollgate_testkit::RedisServer;

/// Per year (one unit refills every 31.5 s): nothing refills during a run, so every charge
/// shows in the final state.
const LIMIT: u64 = 1_000_000;
/// Threads checking the key at once.
const THREADS: u64 = 4;

thread_local! {
    /// Set by the failure hook on the thread whose call the policy answered.
    static FAILED: Cell<bool> = const { Cell::new(false) };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Freeze,
    ScriptFlush,
    ClientKill,
    KillRestart,
}

fn limiter(url: &str, ns: &str, policy: FailurePolicy) -> Limiter<FailSafe<RedisBackend>> {
    let store = RedisStore::builder()
        .url(url)
        .namespace(ns)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let guarded = FailSafeStore::with_policy(store, policy).on_failure(|_, _| {
        FAILED.with(|f| f.set(true));
    });
    Limiter::builder(
        Policy::gcra(Rate::new(LIMIT, Duration::from_secs(365 * 86_400)).unwrap()).unwrap(),
    )
    .build_with(&guarded)
    .unwrap()
}

fn signal(server: &RedisServer, sig: &str) {
    let pid = server.pid().expect("redis-server runs").to_string();
    assert!(std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .unwrap()
        .success());
}

fn inject(server: &mut RedisServer, fault: Fault) {
    match fault {
        Fault::Freeze => {
            signal(server, "STOP");
            std::thread::sleep(Duration::from_millis(700));
            signal(server, "CONT");
        }
        Fault::ScriptFlush => {
            for _ in 0..5 {
                server.command(&["SCRIPT", "FLUSH"]).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Fault::ClientKill => {
            for _ in 0..5 {
                server
                    .command(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
                    .unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Fault::KillRestart => {
            server.stop();
            std::thread::sleep(Duration::from_millis(300));
            server.restart().unwrap();
        }
    }
}

struct Run {
    redis_admitted: u64,
    answered_by_policy: u64,
    errors: u64,
    state_charged: u64,
}

fn run(server: &mut RedisServer, fault: Fault, policy: FailurePolicy) -> Run {
    let ns = format!("load-{fault:?}-{}", policy.as_str());
    let limiter = Arc::new(limiter(&server.url(), &ns, policy));
    assert!(limiter.check("warm").unwrap().allowed);
    let stop = Arc::new(AtomicBool::new(false));
    let redis_admitted = Arc::new(AtomicU64::new(0));
    let by_policy = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (limiter, stop) = (Arc::clone(&limiter), Arc::clone(&stop));
            let (admitted, by_policy, errors) = (
                Arc::clone(&redis_admitted),
                Arc::clone(&by_policy),
                Arc::clone(&errors),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    FAILED.with(|f| f.set(false));
                    let r = limiter.check("k");
                    let failed = FAILED.with(Cell::get);
                    match r {
                        Ok(d) if failed => {
                            let _ = d;
                            by_policy.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(d) => {
                            if d.allowed {
                                admitted.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    inject(server, fault);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    // recovery by itself: Redis decides again
    let deadline = Instant::now() + Duration::from_secs(15);
    let remaining = loop {
        FAILED.with(|f| f.set(false));
        let d = limiter.peek("k", 1);
        if !FAILED.with(Cell::get) {
            if let Ok(d) = d {
                break d.remaining;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{fault:?}/{policy:?}: no recovery"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // a peek of cost 1 leaves LIMIT - charged - 1
    let state_charged = LIMIT - 1 - remaining;
    Run {
        redis_admitted: redis_admitted.load(Ordering::SeqCst),
        answered_by_policy: by_policy.load(Ordering::SeqCst),
        errors: errors.load(Ordering::SeqCst),
        state_charged,
    }
}

#[test]
fn faults_under_load_for_each_failure_policy() {
    let Some(mut server) = tollgate_testkit::require_redis() else {
        return;
    };
    let mut table = Vec::new();
    for fault in [
        Fault::Freeze,
        Fault::ScriptFlush,
        Fault::ClientKill,
        Fault::KillRestart,
    ] {
        for policy in [
            FailurePolicy::FailOpen,
            FailurePolicy::FailClosed,
            FailurePolicy::Fallback,
        ] {
            let r = run(&mut server, fault, policy);
            table.push(format!(
                "{fault:?}/{}: {} admitted by Redis, {} answered by the policy, {} errors, \
                 {} charged in Redis",
                policy.as_str(),
                r.redis_admitted,
                r.answered_by_policy,
                r.errors,
                r.state_charged
            ));
            assert!(r.redis_admitted > 0, "{fault:?}/{policy:?}: no load");
            assert!(r.redis_admitted <= LIMIT, "over-admission");
            // Calls reported failed that charged: a script that ran in time but whose reply
            // the fault delayed past the timeout (a freeze right after it ran) or lost (a
            // killed connection). At most one per call in flight when the fault struck.
            let in_flight = match fault {
                Fault::Freeze => THREADS,
                Fault::ClientKill => 5 * THREADS, // 5 kills
                Fault::ScriptFlush => 0,
                // the state is lost with the process: nothing to compare with
                Fault::KillRestart => u64::MAX,
            };
            if fault == Fault::KillRestart {
                assert!(
                    r.state_charged <= r.redis_admitted,
                    "{}",
                    table.last().unwrap()
                );
            } else {
                assert!(
                    r.state_charged >= r.redis_admitted
                        && r.state_charged - r.redis_admitted <= in_flight,
                    "{}",
                    table.last().unwrap()
                );
            }
        }
    }
    eprintln!("{}", table.join("\n"));
}
