//! The SQLite store against real database files: golden vectors, restart, expiry, errors.

use std::path::PathBuf;
use tollgate::conformance::{load_vectors, run_case, run_case_async, vectors_dir};
use tollgate::store::{Backend, Op, Store};
use tollgate::{Algorithm, Limiter, Policy, Rate};
use tollgate_sql::SqliteStore;

/// A fresh directory for one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-sql-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn vector_files() -> Vec<tollgate::conformance::VectorFile> {
    let files = load_vectors(&vectors_dir()).unwrap();
    assert!(files.len() >= 5, "golden vectors missing");
    files
}

#[test]
fn golden_vectors_in_memory() {
    let store = SqliteStore::in_memory().unwrap();
    store.ensure_schema().unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_vectors_on_a_file_async() {
    let dir = TempDir::new("vectors");
    let store = SqliteStore::open(dir.file("v.db"))
        .unwrap()
        .table("vectors_async")
        .unwrap();
    store.ensure_schema().unwrap();
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
fn state_survives_closing_and_reopening_the_file() {
    let dir = TempDir::new("restart");
    let path = dir.file("limits.db");
    let policy = Policy::parse(Algorithm::SlidingLog, "5/s;10/min").unwrap();
    let now = 1_700_000_000_000_000;
    {
        let store = SqliteStore::open(&path).unwrap();
        store.ensure_schema().unwrap();
        let backend = store.bind(&policy).unwrap();
        for left in (2..5).rev() {
            let d = backend.execute("k", Op::Check(1), now).unwrap().unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
    }
    let store = SqliteStore::open(&path).unwrap();
    store.ensure_schema().unwrap();
    let backend = store.bind(&policy).unwrap();
    let d = backend
        .execute("k", Op::Check(2), now + 10)
        .unwrap()
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    let d = backend
        .execute("k", Op::Check(1), now + 20)
        .unwrap()
        .unwrap();
    assert!(!d.allowed, "the reopened file forgot the charges: {d:?}");
    assert_eq!(d.denied_by, Some(0));
}

#[test]
fn expired_rows_are_removed_by_the_store() {
    let dir = TempDir::new("expiry");
    let store = SqliteStore::open(dir.file("e.db"))
        .unwrap()
        .sweep_every(10)
        .sweep_batch(1000);
    store.ensure_schema().unwrap();
    let policy = Policy::gcra(Rate::per_second(10).unwrap()).unwrap();
    let backend = store.bind(&policy).unwrap();
    let t0 = 1_000_000_000;
    for i in 0..200 {
        assert!(
            backend
                .execute(&format!("client-{i}"), Op::Check(1), t0)
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    assert_eq!(store.row_count().unwrap(), 200);
    // An hour later every key is back to fresh: the next writes sweep them.
    for i in 0..20 {
        let _ = backend
            .execute(&format!("late-{i}"), Op::Check(1), t0 + 3_600_000_000)
            .unwrap();
    }
    assert_eq!(store.row_count().unwrap(), 20, "expired rows were kept");
    // A key back to fresh is deleted by its own next call (refund to full).
    backend
        .execute("late-0", Op::Refund(1), t0 + 3_600_000_000)
        .unwrap();
    assert_eq!(store.row_count().unwrap(), 19);
    assert_eq!(store.purge_expired(t0 + 7_200_000_000).unwrap(), 19);
    assert_eq!(store.row_count().unwrap(), 0);
}

#[test]
fn peek_reset_and_refund() {
    let store = SqliteStore::in_memory().unwrap();
    store.ensure_schema().unwrap();
    let policy = Policy::fixed_window(Rate::per_minute(3).unwrap()).unwrap();
    let b = store.bind(&policy).unwrap();
    let t = 60_000_000 * 1000;
    assert_eq!(
        b.execute("k", Op::Peek(1), t).unwrap().unwrap().remaining,
        2
    );
    assert_eq!(store.row_count().unwrap(), 0, "a peek stored something");
    b.execute("k", Op::Check(3), t).unwrap();
    assert!(!b.execute("k", Op::Peek(1), t).unwrap().unwrap().allowed);
    b.execute("k", Op::Refund(2), t).unwrap();
    assert_eq!(
        b.execute("k", Op::Peek(1), t).unwrap().unwrap().remaining,
        1
    );
    b.execute("k", Op::Reset, t).unwrap();
    assert_eq!(store.row_count().unwrap(), 0);
    assert_eq!(
        b.execute("k", Op::Check(1), t).unwrap().unwrap().remaining,
        2
    );
}

#[test]
fn namespaces_and_algorithms_do_not_share_state() {
    let store = SqliteStore::in_memory().unwrap();
    store.ensure_schema().unwrap();
    let gcra = Policy::gcra(Rate::per_hour(1).unwrap()).unwrap();
    let window = Policy::fixed_window(Rate::per_hour(1).unwrap()).unwrap();
    let a = store.clone().namespace("a").bind(&gcra).unwrap();
    let b = store.clone().namespace("b").bind(&gcra).unwrap();
    let c = store.bind(&window).unwrap();
    for backend in [&a, &b] {
        assert!(
            backend
                .execute("k", Op::Check(1), 1)
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    assert!(c.execute("k", Op::Check(1), 1).unwrap().unwrap().allowed);
    assert!(!a.execute("k", Op::Check(1), 1).unwrap().unwrap().allowed);
}

#[test]
fn errors_are_clear() {
    let dir = TempDir::new("errors");
    // A parent that is a file, not a directory.
    std::fs::write(dir.file("plain"), b"x").unwrap();
    let bad = dir.file("plain").join("limits.db");
    let err = SqliteStore::open(&bad).unwrap_err().to_string();
    assert!(
        err.contains("sqlite: connection failed: cannot open"),
        "{err}"
    );
    assert!(err.contains("limits.db"), "{err}");
    // A file that is not a database.
    std::fs::write(dir.file("junk.db"), vec![7u8; 4096]).unwrap();
    let err = SqliteStore::open(dir.file("junk.db"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a database"), "{err}");
    // A missing table.
    let store = SqliteStore::open(dir.file("ok.db")).unwrap();
    let policy = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
    let err = store.bind(&policy).unwrap_err().to_string();
    assert!(err.contains("ensure_schema"), "{err}");
    // An invalid table name.
    let err = store
        .table("t\"; DROP TABLE x; --")
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid table name"), "{err}");
    // A cost above capacity never reaches the database.
    let store = SqliteStore::in_memory().unwrap();
    store.ensure_schema().unwrap();
    let limiter = Limiter::builder(policy).build_with(&store).unwrap();
    assert!(matches!(
        limiter.check_n("k", 2),
        Err(tollgate::Error::CostExceedsCapacity {
            cost: 2,
            capacity: 1
        })
    ));
    assert!(matches!(
        limiter.check_n("k", 0),
        Err(tollgate::Error::InvalidCost)
    ));
}

#[test]
fn a_locked_database_is_a_store_error_not_a_denial() {
    let dir = TempDir::new("locked");
    let path = dir.file("locked.db");
    let store = SqliteStore::open(&path)
        .unwrap()
        .busy_timeout(std::time::Duration::from_millis(50));
    store.ensure_schema().unwrap();
    let policy = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
    let backend = store.bind(&policy).unwrap();
    // Another process holds the write lock for longer than the busy timeout.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let err = backend.execute("k", Op::Check(1), 1).unwrap_err();
    assert!(matches!(err, tollgate::Error::Store(_)), "{err}");
    assert!(err.to_string().contains("locked"), "{err}");
    blocker.execute_batch("COMMIT").unwrap();
    assert!(
        backend
            .execute("k", Op::Check(1), 1)
            .unwrap()
            .unwrap()
            .allowed
    );
}
