//! Local leases (`tollgate::store::lease`) over a real PostgreSQL (DATABASE_URL; CI fails
//! when it is missing): four independent `LeaseStore`s (one per simulated instance, each
//! with its own connection pool) × 4 threads on ONE key with a frozen quota never admit
//! more than the quota, and the table holds exactly the unused units once every batch is
//! given back; an ended lease gives its units back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;
use tollgate::store::lease::{LeaseConfig, LeaseStore};
use tollgate::store::{Backend, Op, Store};
use tollgate::time::{Clock, SystemClock};
use tollgate::{Policy, Rate};
use tollgate_sql::PgStore;

const QUOTA: u64 = 2_000;

/// A table unique to this test and run, dropped on drop.
struct Table {
    url: String,
    name: String,
}

impl Table {
    fn new(test: &str) -> Option<Table> {
        let url = tollgate_testkit::require_postgres()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("tg_lease_{test}_{}_{nanos}", std::process::id());
        Some(Table { url, name })
    }

    fn store(&self) -> PgStore {
        let store = PgStore::builder(&self.url)
            .table(&self.name)
            .unwrap()
            .max_connections(4)
            .connect()
            .unwrap();
        store.migrate().unwrap();
        store
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if let Ok(Ok(store)) = PgStore::builder(&self.url)
            .table(&self.name)
            .map(|b| b.connect())
        {
            let _ = store.drop_schema();
        }
    }
}

fn config() -> LeaseConfig {
    LeaseConfig::default()
        .max_batch(50)
        .min_batch(4)
        .duration(Duration::from_millis(100))
}

/// Units free for `key` (a peek of 1 reports what would remain after it).
fn free(b: &impl Backend, key: &str) -> u64 {
    let d = b.execute(key, Op::Peek(1), 0).unwrap().unwrap();
    if d.allowed {
        d.remaining + 1
    } else {
        0
    }
}

#[test]
fn instances_with_leases_never_over_admit_on_postgres() {
    let Some(table) = Table::new("procs") else {
        return;
    };
    let period = Duration::from_secs(28 * 86_400);
    for policy in [
        Policy::gcra(Rate::new(QUOTA, period).unwrap()).unwrap(),
        Policy::token_bucket(QUOTA, QUOTA, period).unwrap(),
    ] {
        const INSTANCES: usize = 4;
        const THREADS: usize = 4;
        const CALLS: u64 = 300;
        let admitted = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(INSTANCES * THREADS));
        let mut instances = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..INSTANCES {
            let leased = LeaseStore::new(table.store(), config())
                .bind(&policy)
                .unwrap();
            for _ in 0..THREADS {
                let (leased, admitted, start) = (leased.clone(), admitted.clone(), start.clone());
                handles.push(std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..CALLS {
                        let d = leased.execute("hot", Op::Check(1), SystemClock.now());
                        if d.unwrap().unwrap().allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            instances.push(leased);
        }
        for h in handles {
            h.join().unwrap();
        }
        let admitted = admitted.load(Ordering::Relaxed);
        let held: u64 = instances.iter().map(|l| l.held()).sum();
        assert!(
            admitted <= QUOTA,
            "{policy}: {admitted} admitted of {QUOTA}"
        );
        assert!(held <= INSTANCES as u64 * 50);
        for l in &instances {
            l.flush().unwrap();
        }
        let plain = table.store().bind(&policy).unwrap();
        assert_eq!(free(&plain, "hot"), QUOTA - admitted, "{policy}");
        // 4800 calls for 2000 units: the quota is used up, but for what sat in batches.
        assert_eq!(admitted + held, QUOTA, "{policy}");
        plain.execute("hot", Op::Reset, 0).unwrap();
    }
}

#[test]
fn an_ended_lease_gives_its_units_back_on_postgres() {
    let Some(table) = Table::new("expiry") else {
        return;
    };
    let policy = Policy::gcra(Rate::new(QUOTA, Duration::from_secs(28 * 86_400)).unwrap()).unwrap();
    let leased = LeaseStore::new(table.store(), config().background_sweep(false))
        .bind(&policy)
        .unwrap();
    let plain = table.store().bind(&policy).unwrap();
    let t0 = SystemClock.now();
    for _ in 0..100 {
        assert!(
            leased
                .execute("k", Op::Check(1), t0)
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    let held = leased.held();
    assert!(held > 0);
    assert_eq!(free(&plain, "k"), QUOTA - 100 - held);
    assert_eq!(leased.sweep(t0 + 50_000).unwrap(), 0, "not ended yet");
    assert_eq!(leased.sweep(t0 + 100_000).unwrap(), held);
    assert_eq!(free(&plain, "k"), QUOTA - 100);
}
