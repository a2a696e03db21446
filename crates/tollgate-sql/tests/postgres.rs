//! The PostgreSQL store against a real server (DATABASE_URL; `scripts/test` provides one, and
//! CI fails when it is missing): golden vectors, database clock, restart, expiry, errors.

use tollgate::conformance::{load_vectors, run_case, run_case_async, vectors_dir};
use tollgate::store::{Backend, Op, Store};
use tollgate::{Algorithm, Limiter, Policy, Rate};
use tollgate_sql::{PgStore, PgStoreBuilder};

/// A table unique to this test and this run, dropped (with its functions) on drop.
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
        let name = format!("tg_{test}_{}_{nanos}", std::process::id());
        Some(Table { url, name })
    }

    fn builder(&self) -> PgStoreBuilder {
        PgStore::builder(&self.url)
            .table(&self.name)
            .unwrap()
            .max_connections(8)
    }

    fn store(&self, caller_time: bool) -> PgStore {
        let store = self.builder().caller_time(caller_time).connect().unwrap();
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

fn vector_files() -> Vec<tollgate::conformance::VectorFile> {
    let files = load_vectors(&vectors_dir()).unwrap();
    assert!(files.len() >= 5, "golden vectors missing");
    files
}

#[test]
fn golden_vectors_sync() {
    let Some(table) = Table::new("vec_sync") else {
        return;
    };
    let store = table.store(true);
    let mut cases = 0;
    for file in vector_files() {
        for (n, case) in file.cases.iter().enumerate() {
            let backend = store.bind(&case.policy().unwrap()).unwrap();
            run_case(&backend, case, &format!("{}-{n}-", file.algorithm))
                .unwrap_or_else(|e| panic!("{}: {e}", file.path.display()));
            cases += 1;
        }
    }
    assert!(cases > 20, "only {cases} cases");
}

#[tokio::test(flavor = "current_thread")]
async fn golden_vectors_async() {
    let Some(table) = Table::new("vec_async") else {
        return;
    };
    let store = table
        .builder()
        .caller_time(true)
        .connect_async()
        .await
        .unwrap();
    store.migrate_async().await.unwrap();
    for file in vector_files() {
        for (n, case) in file.cases.iter().enumerate() {
            let backend = store.bind(&case.policy().unwrap()).unwrap();
            run_case_async(&backend, case, &format!("{}-{n}-", file.algorithm))
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.path.display()));
        }
    }
}

#[test]
fn database_clock_by_default() {
    let Some(table) = Table::new("dbclock") else {
        return;
    };
    let store = table.store(false);
    let policy = Policy::gcra(Rate::per_hour(3).unwrap()).unwrap();
    let row_key = format!("{}:k", tollgate::store::default_scope(&policy));
    let limiter = Limiter::builder(policy).build_with(&store).unwrap();
    // The caller's clock is ignored: a limiter whose clock says 1970 still gets decisions
    // relative to the database's time, and reset_after is an hour at most.
    for left in (0..3).rev() {
        let d = limiter.check("k").unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, left);
        assert!(d.reset_after.as_secs() <= 3600);
    }
    let d = limiter.check("k").unwrap();
    assert!(!d.allowed);
    let retry = d.retry_after.as_micros();
    assert!(retry > 1_100_000_000 && retry <= 1_200_000_000, "{retry}");
    // The row's horizon is in database time (now + about an hour).
    let expires = row_expires_at(&table, &row_key);
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    assert!(
        (expires - now_us - 3_600_000_000).abs() < 120_000_000,
        "{expires} vs {now_us}"
    );
}

fn row_expires_at(table: &Table, key: &str) -> i64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&table.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let row = client
            .query_one(
                &format!("SELECT expires_at FROM \"{}\" WHERE key = $1", table.name),
                &[&key],
            )
            .await
            .unwrap();
        row.get(0)
    })
}

#[test]
fn state_survives_a_reconnect() {
    let Some(table) = Table::new("restart") else {
        return;
    };
    let policy = Policy::token_bucket(5, 1, std::time::Duration::from_secs(60)).unwrap();
    let t = 1_000_000_000_000;
    {
        let store = table.store(true);
        let b = store.bind(&policy).unwrap();
        for _ in 0..3 {
            assert!(b.execute("k", Op::Check(1), t).unwrap().unwrap().allowed);
        }
        store.reconnect();
        let d = b.execute("k", Op::Check(1), t).unwrap().unwrap();
        assert_eq!(d.remaining, 1);
    }
    // A brand-new pool (a restarted process) sees the same state.
    let store = table.builder().caller_time(true).connect().unwrap();
    store.migrate().unwrap();
    let b = store.bind(&policy).unwrap();
    let d = b.execute("k", Op::Check(1), t + 1).unwrap().unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    let d = b.execute("k", Op::Check(1), t + 2).unwrap().unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after.as_micros(), 60_000_000 - 2);
}

#[test]
fn expired_rows_are_removed_by_the_store() {
    let Some(table) = Table::new("expiry") else {
        return;
    };
    let store = table
        .builder()
        .caller_time(true)
        .sweep_every(10)
        .sweep_batch(1000)
        .connect()
        .unwrap();
    store.migrate().unwrap();
    let policy = Policy::sliding_window(Rate::per_second(10).unwrap()).unwrap();
    let b = store.bind(&policy).unwrap();
    let t0 = 5_000_000_000;
    for i in 0..200 {
        assert!(
            b.execute(&format!("c{i}"), Op::Check(1), t0)
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    assert_eq!(store.row_count().unwrap(), 200);
    for i in 0..20 {
        let _ = b
            .execute(&format!("late{i}"), Op::Check(1), t0 + 3_600_000_000)
            .unwrap();
    }
    assert_eq!(store.row_count().unwrap(), 20, "expired rows were kept");
    assert_eq!(store.purge_expired(t0 + 7_200_000_000).unwrap(), 20);
    assert_eq!(store.row_count().unwrap(), 0);
    // A peek, a denied check that changes nothing, and a refund of an unknown key leave no row.
    let b = store
        .bind(&Policy::gcra(Rate::per_second(1).unwrap()).unwrap())
        .unwrap();
    let _ = b.execute("p", Op::Peek(1), t0).unwrap();
    b.execute("r", Op::Refund(1), t0).unwrap();
    assert_eq!(store.row_count().unwrap(), 0);
}

#[test]
fn peek_reset_refund_and_multi_rate() {
    let Some(table) = Table::new("ops") else {
        return;
    };
    let store = table.store(true);
    let policy = Policy::parse(Algorithm::FixedWindow, "2/s;3/min").unwrap();
    let b = store.bind(&policy).unwrap();
    let t = 600_000_000;
    assert!(b.execute("k", Op::Check(2), t).unwrap().unwrap().allowed);
    // Denied by the 2/s rate: nothing charged, so the minute rate still has 1.
    let d = b.execute("k", Op::Check(1), t).unwrap().unwrap();
    assert!(!d.allowed);
    assert_eq!(d.denied_by, Some(0));
    let d = b
        .execute("k", Op::Check(1), t + 1_000_000)
        .unwrap()
        .unwrap();
    assert!(d.allowed);
    assert_eq!((d.limit, d.remaining), (3, 0));
    let d = b.execute("k", Op::Peek(1), t + 2_000_000).unwrap().unwrap();
    assert_eq!(d.denied_by, Some(1));
    b.execute("k", Op::Refund(1), t + 2_000_000).unwrap();
    assert!(
        b.execute("k", Op::Peek(1), t + 2_000_000)
            .unwrap()
            .unwrap()
            .allowed
    );
    b.execute("k", Op::Reset, t).unwrap();
    assert_eq!(store.row_count().unwrap(), 0);
}

#[test]
fn errors_are_clear() {
    let Some(table) = Table::new("errors") else {
        return;
    };
    let err = PgStore::connect("http://example").unwrap_err().to_string();
    assert!(err.contains("invalid PostgreSQL URL"), "{err}");
    let err = PgStore::builder("postgres://postgres@127.0.0.1:1/postgres")
        .connect_timeout(std::time::Duration::from_secs(2))
        .connect()
        .unwrap_err()
        .to_string();
    // The cause is named (a refused connection is not a timeout).
    assert!(
        err.contains("postgres: connection refused: cannot connect"),
        "{err}"
    );
    // Not migrated: the first call says what to do.
    let store = table.builder().connect().unwrap();
    let b = store
        .bind(&Policy::gcra(Rate::per_second(1).unwrap()).unwrap())
        .unwrap();
    let err = b.execute("k", Op::Check(1), 0).unwrap_err();
    assert!(matches!(err, tollgate::Error::Store(_)));
    assert!(err.to_string().contains("migrate()"), "{err}");
    // Usage errors never reach the database.
    assert!(matches!(
        b.execute("k", Op::Check(2), 0),
        Err(tollgate::Error::CostExceedsCapacity {
            cost: 2,
            capacity: 1
        })
    ));
    assert!(PgStore::builder(&table.url).table("a;b").is_err());
}

#[test]
fn permission_errors_are_store_errors() {
    let Some(table) = Table::new("perm") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let role = table.name.clone();
    let config: tokio_postgres::Config = table.url.parse().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&table.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "CREATE ROLE \"{role}\" LOGIN; CREATE SCHEMA \"{role}\"; REVOKE ALL ON SCHEMA \"{role}\" FROM PUBLIC"
            ))
            .await
            .unwrap();
    });
    let mut limited = config.clone();
    limited.user(&role);
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => "127.0.0.1".to_string(),
    };
    let url = format!(
        "host={host} port={} dbname={} user={role}",
        config.get_ports().first().copied().unwrap_or(5432),
        config.get_dbname().unwrap_or("postgres")
    );
    let result = PgStore::builder(&url)
        .table(&format!("{role}.limits"))
        .unwrap()
        .connect()
        .and_then(|store| store.migrate());
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&table.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "DROP SCHEMA \"{role}\" CASCADE; DROP ROLE \"{role}\""
            ))
            .await
            .unwrap();
    });
    let err = result.unwrap_err().to_string();
    // With trust authentication the role connects and lacks CREATE on the schema; with
    // password authentication it cannot log in: either way a clear store error.
    assert!(
        err.contains("permission denied") || err.contains("authentication"),
        "{err}"
    );
}

#[test]
fn failure_policies_apply_when_the_database_is_down() {
    use tollgate::store::failure::FailSafeStore;
    let Some(table) = Table::new("failsafe") else {
        return;
    };
    let policy = Policy::gcra(Rate::per_second(2).unwrap()).unwrap();
    let down = || {
        PgStore::builder("postgres://postgres@127.0.0.1:1/postgres")
            .connect_timeout(std::time::Duration::from_millis(500))
            .connect_lazy()
            .unwrap()
    };
    // Fail closed: the store error comes back, never a denial.
    let closed = Limiter::builder(policy.clone())
        .build_with(&FailSafeStore::fail_closed(down()))
        .unwrap();
    assert!(matches!(closed.check("k"), Err(tollgate::Error::Store(_))));
    // Fail open: admitted.
    let open = Limiter::builder(policy.clone())
        .build_with(&FailSafeStore::fail_open(down()))
        .unwrap();
    assert!(open.check("k").unwrap().allowed);
    // Fall back to memory: the rate is still enforced, locally.
    let fallback = Limiter::builder(policy.clone())
        .build_with(&FailSafeStore::fallback_to_memory(down()))
        .unwrap();
    assert!(fallback.check("k").unwrap().allowed);
    assert!(fallback.check("k").unwrap().allowed);
    assert!(!fallback.check("k").unwrap().allowed);
    // A healthy store behind the same wrapper decides as usual.
    let healthy = Limiter::builder(policy)
        .build_with(&FailSafeStore::fail_open(table.store(false)))
        .unwrap();
    assert!(healthy.check("k").unwrap().allowed);
    assert!(healthy.check("k").unwrap().allowed);
    assert!(!healthy.check("k").unwrap().allowed);
}
