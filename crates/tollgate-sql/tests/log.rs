//! Reading a sliding log (`tollgate::store::log::LogBackend`) on SQLite and on a real
//! PostgreSQL (DATABASE_URL; required in CI).

use tollgate::conformance::log::check_log_rules;
use tollgate_sql::{PgStore, SqliteStore};

const T0: u64 = 1_800_000_000_000_000;

#[test]
fn sqlite_log_rules() {
    let dir = std::env::temp_dir().join(format!("tollgate-sql-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteStore::open(dir.join("limits.db")).unwrap();
    store.ensure_schema().unwrap();
    check_log_rules(&store, T0, "").unwrap();
    let memory = SqliteStore::in_memory().unwrap();
    memory.ensure_schema().unwrap();
    check_log_rules(&memory, T0, "").unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn postgres_log_rules() {
    let Some(url) = tollgate_testkit::require_postgres() else {
        return;
    };
    let table = format!("tg_log_{}", std::process::id());
    let store = PgStore::builder(&url)
        .table(&table)
        .unwrap()
        .max_connections(2)
        .caller_time(true)
        .connect()
        .unwrap();
    store.migrate().unwrap();
    let result = check_log_rules(&store, T0, "");
    store.drop_schema().unwrap();
    result.unwrap();
}
