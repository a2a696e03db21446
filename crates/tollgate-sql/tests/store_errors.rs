//! Store errors name their real cause: a refused PostgreSQL connection is "refused" (not a
//! timeout), a SQLite file that cannot be opened is a connection failure.

use std::time::{Duration, Instant};
use tollgate::{Error, Limiter, Policy, Rate, StoreErrorKind};
use tollgate_sql::{PgStore, SqliteStore};

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_refused_postgres_connection_is_reported_as_refused() {
    let url = format!("postgres://tollgate@127.0.0.1:{}/tollgate", closed_port());
    let store = PgStore::builder(&url)
        .connect_timeout(Duration::from_secs(2))
        .call_timeout(Duration::from_secs(2))
        .connect_lazy()
        .unwrap();
    let limiter = Limiter::builder(Policy::gcra(Rate::per_second(5).unwrap()).unwrap())
        .build_with(&store)
        .unwrap();
    let started = Instant::now();
    match limiter.check("k") {
        Err(Error::Store(e)) => {
            assert_eq!(e.kind, StoreErrorKind::ConnectionRefused, "{e}");
            assert!(!e.timeout, "{e}");
        }
        other => panic!("expected a store error, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_sqlite_file_that_cannot_be_opened_is_a_connection_failure() {
    let path = std::env::temp_dir()
        .join(format!("tollgate-no-such-dir-{}", std::process::id()))
        .join("db.sqlite");
    match SqliteStore::open(&path) {
        Err(Error::Store(e)) => assert_eq!(e.kind, StoreErrorKind::Connection, "{e}"),
        other => panic!("expected a store error, got {other:?}"),
    }
}
