//! A call that times out charges nothing and leaves nothing running in PostgreSQL (issue 16,
//! the residual of issue 15): another connection holds the key's row locked (`SELECT … FOR
//! UPDATE` in an open transaction) while a call runs with a short timeout. The call must
//! fail as a timeout within about the timeout, `pg_stat_activity` must show no statement of
//! ours afterwards, and once the blocker lets go the key must show no charge from the
//! timed-out call. And the functions themselves write nothing once past their deadline
//! (`p_deadline`, the server's clock). Real PostgreSQL (DATABASE_URL; CI fails when it is
//! missing).

use std::time::{Duration, Instant};
use tollgate::store::multi::{KeyCheck, MultiBackend, MultiOp};
use tollgate::store::{Backend, Op, Store};
use tollgate::{Error, Policy, Rate, StoreErrorKind};
use tollgate_sql::{PgBackend, PgStore};

const T0: u64 = 1_800_000_000_000_000;

/// A table unique to this test and run, dropped (with its functions) on drop.
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
        let name = format!("tg_to_{test}_{}_{nanos}", std::process::id());
        let table = Table { url, name };
        table.store(Duration::from_secs(5)).migrate().unwrap();
        Some(table)
    }

    /// A store with caller time (so peeks at `T0` are exact) and `timeout` per call.
    fn store(&self, timeout: Duration) -> PgStore {
        PgStore::builder(&self.url)
            .table(&self.name)
            .unwrap()
            .caller_time(true)
            .call_timeout(timeout)
            .max_connections(4)
            .connect()
            .unwrap()
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let _ = self.store(Duration::from_secs(5)).drop_schema();
    }
}

/// Two connections of the test's own: one holds rows locked, the other watches
/// `pg_stat_activity` (from outside that transaction: a transaction sees one snapshot of the
/// statistics views).
struct Blocker {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    watcher: tokio_postgres::Client,
}

impl Blocker {
    fn connect(url: &str) -> Blocker {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let connect = || {
            let (client, connection) = rt
                .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
                .unwrap();
            rt.spawn(connection);
            client
        };
        let (client, watcher) = (connect(), connect());
        Blocker {
            rt,
            client,
            watcher,
        }
    }

    /// Opens a transaction that locks the rows of `keys` (stored keys) until
    /// [`release`](Self::release).
    fn lock(&self, table: &str, keys: &[&str]) {
        self.rt.block_on(async {
            self.client.batch_execute("BEGIN").await.unwrap();
            for key in keys {
                let rows = self
                    .client
                    .query(
                        &format!("SELECT state FROM \"{table}\" WHERE key = $1 FOR UPDATE"),
                        &[key],
                    )
                    .await
                    .unwrap();
                assert_eq!(rows.len(), 1, "the row of {key} exists");
            }
        });
    }

    fn release(&self) {
        self.rt
            .block_on(self.client.batch_execute("COMMIT"))
            .unwrap();
    }

    /// Statements of the store's on `table` that are running (or waiting) right now.
    fn running(&self, table: &str) -> i64 {
        let row = self
            .rt
            .block_on(self.watcher.query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND state = 'active' AND position($1 IN query) > 0",
                &[&table],
            ))
            .unwrap();
        row.get(0)
    }

    /// Waits up to `within` until nothing of ours runs on `table`; how long that took.
    fn until_idle(&self, table: &str, within: Duration) -> Duration {
        let started = Instant::now();
        while self.running(table) > 0 {
            assert!(
                started.elapsed() < within,
                "a statement of the store still runs {within:?} after the call gave up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        started.elapsed()
    }
}

fn policy() -> Policy {
    Policy::gcra(Rate::per_hour(10).unwrap()).unwrap()
}

fn timed_out(r: Result<impl std::fmt::Debug, Error>) -> String {
    match r {
        Err(Error::Store(e)) => {
            assert!(e.timeout, "{e}");
            assert_eq!(e.kind, StoreErrorKind::Timeout, "{e}");
            e.to_string()
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

fn remaining(backend: &PgBackend, key: &str) -> u64 {
    backend
        .execute(key, Op::Peek(1), T0)
        .unwrap()
        .unwrap()
        .remaining
}

#[test]
fn a_check_that_times_out_on_a_locked_row_charges_nothing() {
    let Some(table) = Table::new("single") else {
        return;
    };
    let timeout = Duration::from_millis(1000);
    let store = table.store(timeout).scope("t");
    let backend = store.bind(&policy()).unwrap();
    // one unit charged, so the row exists: 10 - 1 - a peek's 1
    assert!(
        backend
            .execute("k", Op::Check(1), T0)
            .unwrap()
            .unwrap()
            .allowed
    );
    assert_eq!(remaining(&backend, "k"), 8);

    let blocker = Blocker::connect(&table.url);
    blocker.lock(&table.name, &["t:k"]);
    let started = Instant::now();
    let message = timed_out(backend.execute("k", Op::Check(1), T0));
    let took = started.elapsed();
    // the database cancels the statement at half the timeout, while it waits for the row
    assert!(
        took >= timeout / 2 - Duration::from_millis(50) && took < timeout,
        "{took:?}: {message}"
    );
    assert!(message.contains("57014"), "{message}");
    // nothing of ours runs on (the statistics view lags the reply by a moment)
    blocker.until_idle(&table.name, Duration::from_millis(300));
    // a peek takes no lock: it answers while the row is held
    assert_eq!(remaining(&backend, "k"), 8);
    blocker.release();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(remaining(&backend, "k"), 8, "the timed-out call charged");
    // and the store decides as before
    assert!(
        backend
            .execute("k", Op::Check(1), T0)
            .unwrap()
            .unwrap()
            .allowed
    );
    assert_eq!(remaining(&backend, "k"), 7);
}

#[test]
fn a_multi_key_check_that_times_out_on_a_locked_row_charges_no_key() {
    let Some(table) = Table::new("multi") else {
        return;
    };
    let timeout = Duration::from_millis(600);
    let store = table.store(timeout);
    let user = store.scope("u").bind(&policy()).unwrap();
    let global = store.scope("g").bind(&policy()).unwrap();
    let items = [
        KeyCheck::new(&user, "alice", 1),
        KeyCheck::new(&global, "all", 1),
    ];
    assert!(
        PgBackend::execute_all(&items, MultiOp::Check, T0)
            .unwrap()
            .allowed
    );

    let blocker = Blocker::connect(&table.url);
    // the second key in lock order: the call holds the first key's row while it waits
    blocker.lock(&table.name, &["u:alice"]);
    let started = Instant::now();
    let message = timed_out(PgBackend::execute_all(&items, MultiOp::Check, T0));
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
    eprintln!("{message}");
    blocker.until_idle(&table.name, Duration::from_millis(300));
    blocker.release();
    std::thread::sleep(Duration::from_millis(200));
    let peek = PgBackend::execute_all(&items, MultiOp::Peek, T0).unwrap();
    let left: Vec<u64> = peek.decisions.iter().map(|d| d.remaining).collect();
    assert_eq!(left, [8, 8], "the timed-out call charged");
}

#[test]
fn an_async_call_given_up_by_its_caller_is_cancelled_in_the_database() {
    let Some(table) = Table::new("dropped") else {
        return;
    };
    // a long call timeout: only the caller giving up stops the call
    let store = table.store(Duration::from_secs(20)).scope("t");
    let backend = store.bind(&policy()).unwrap();
    assert!(
        backend
            .execute("k", Op::Check(1), T0)
            .unwrap()
            .unwrap()
            .allowed
    );
    let blocker = Blocker::connect(&table.url);
    blocker.lock(&table.name, &["t:k"]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gave_up = rt.block_on(async {
        let call = backend.execute_async("k", Op::Check(1), T0);
        tokio::time::timeout(Duration::from_millis(300), call).await
    });
    assert!(gave_up.is_err(), "the call should still wait for the row");
    // the dropped call sent a cancel request: the statement stops long before the 10 s
    // server-side limit (half the call timeout) would have stopped it
    let took = blocker.until_idle(&table.name, Duration::from_secs(3));
    eprintln!("statement gone {took:?} after the caller gave up");
    blocker.release();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(remaining(&backend, "k"), 8, "the abandoned call charged");
    // the connection it ran on was retired; the pool's others decide as before
    for _ in 0..4 {
        assert!(
            backend
                .execute("k", Op::Check(1), T0)
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    assert_eq!(remaining(&backend, "k"), 4);
}

#[test]
fn a_statement_past_its_deadline_writes_nothing() {
    let Some(table) = Table::new("late") else {
        return;
    };
    let blocker = Blocker::connect(&table.url);
    let t = &table.name;
    // gcra 10/hour: limit, period, burst; the last argument is the deadline (µs, server clock)
    let single = |deadline: &str| {
        format!(
            "SELECT * FROM \"{t}_gcra\"('k', NULL, 0, 1, '{{10}}', '{{3600000000}}', '{{10}}', \
             '{{}}', 0, {deadline})"
        )
    };
    let multi = |deadline: &str| {
        format!(
            "SELECT * FROM \"{t}_check_all\"(NULL, 0, ARRAY['a','b'], ARRAY['gcra','gcra'], \
             ARRAY[1,1]::bigint[], ARRAY[1,1], ARRAY[10,10]::bigint[], \
             ARRAY[3600000000,3600000000]::bigint[], ARRAY[10,10]::bigint[], \
             ARRAY[0,0]::bigint[], 0, {deadline})"
        )
    };
    let rows = |blocker: &Blocker| -> i64 {
        blocker
            .rt
            .block_on(
                blocker
                    .watcher
                    .query_one(&format!("SELECT count(*) FROM \"{t}\""), &[]),
            )
            .unwrap()
            .get(0)
    };
    for sql in [single("1"), multi("1")] {
        let err = blocker
            .rt
            .block_on(blocker.watcher.batch_execute(&sql))
            .unwrap_err();
        let code = err.code().map(|c| c.code().to_string());
        assert_eq!(code.as_deref(), Some("57014"), "{err:?}");
        assert_eq!(rows(&blocker), 0, "a late call wrote");
    }
    // in time (a deadline an hour ahead) and without one, the same calls write
    let ahead = "floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint + 3600000000";
    for sql in [single(ahead), multi("NULL")] {
        blocker
            .rt
            .block_on(blocker.watcher.batch_execute(&sql))
            .unwrap();
    }
    assert_eq!(rows(&blocker), 3);
}
