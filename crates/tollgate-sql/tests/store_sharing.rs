//! Which limiters share state (the rule of `tollgate::store::Store`, also run on memory and
//! Redis) on SQLite and PostgreSQL (DATABASE_URL; `scripts/test` provides one, CI fails
//! without it).

use tollgate::conformance::sharing::check_sharing;
use tollgate::store::{Backend, Op, Store};
use tollgate::{Policy, Rate};
use tollgate_sql::{PgStore, SqliteStore};

/// Regression: SQL rows were named `<namespace:><algorithm>:<key>`, so two policies of one
/// algorithm (`1/hour` and `2/hour`) charged one row; now each policy has its own scope.
#[test]
fn the_rule_holds_on_sqlite() {
    let store = SqliteStore::in_memory().unwrap();
    store.ensure_schema().unwrap();
    check_sharing(&store, |name| store.scope(name), 1_700_000_000_000_000, "").unwrap();
    // the namespace stays a prefix of everything
    let ns = store.clone().namespace("tenant");
    check_sharing(&ns, |name| ns.scope(name), 1_700_000_000_000_000, "").unwrap();
}

#[test]
fn sqlite_rows_are_named_by_scope() {
    let path = std::env::temp_dir().join(format!(
        "tollgate-sharing-{}-{}.db",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    let store = SqliteStore::open(&path).unwrap().namespace("ns");
    store.ensure_schema().unwrap();
    let policy = Policy::gcra(Rate::per_hour(1).unwrap()).unwrap();
    let unscoped = store.bind(&policy).unwrap();
    let scoped = store.scope("login").bind(&policy).unwrap();
    assert!(
        unscoped
            .execute("k", Op::Check(1), 5)
            .unwrap()
            .unwrap()
            .allowed
    );
    assert!(
        scoped
            .execute("k", Op::Check(1), 5)
            .unwrap()
            .unwrap()
            .allowed
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut names: Vec<String> = conn
        .prepare("SELECT key FROM tollgate_state ORDER BY key")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(conn);
    drop((unscoped, scoped, store));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    names.sort();
    let mut want = vec![
        format!("ns:{}:k", tollgate::store::default_scope(&policy)),
        "ns:login:k".to_string(),
    ];
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn the_rule_holds_on_postgres() {
    let Some(url) = tollgate_testkit::require_postgres() else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let table = format!("tg_sharing_{}_{nanos}", std::process::id());
    let store = PgStore::builder(&url)
        .table(&table)
        .unwrap()
        .connect()
        .unwrap();
    store.migrate().unwrap();
    let result = check_sharing(&store, |name| store.scope(name), 0, "");
    store.drop_schema().unwrap();
    result.unwrap();
}
