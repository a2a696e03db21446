//! The SQL that [`PgStore::migrate`](super::PgStore::migrate) runs: the table, its index and
//! the PL/pgSQL functions, generated from the files in `sql/` (one section per algorithm,
//! shared by the single-key functions and `<table>_check_all`).

use crate::table::TableName;
use std::time::Duration;

/// The function names and bodies, one per algorithm.
const ALGORITHMS: [(&str, &str); 5] = [
    ("gcra", include_str!("sql/gcra.sql")),
    ("token_bucket", include_str!("sql/token_bucket.sql")),
    ("fixed_window", include_str!("sql/fixed_window.sql")),
    ("sliding_window", include_str!("sql/sliding_window.sql")),
    ("sliding_log", include_str!("sql/sliding_log.sql")),
];

/// The name suffix of the multi-key function (`<table>_check_all`).
pub(super) const CHECK_ALL: &str = "_check_all";

/// The argument types of the multi-key function (for `DROP FUNCTION`), without the last one
/// (`p_deadline bigint`), which versions before it did not take.
const CHECK_ALL_ARGS: &str =
    "bigint, integer, text[], text[], bigint[], integer[], bigint[], bigint[], bigint[], bigint[], integer";

/// The argument types of a single-key function (for `DROP FUNCTION`), without the last one
/// (`p_deadline bigint`).
const SINGLE_ARGS: &str =
    "text, bigint, integer, bigint, bigint[], bigint[], bigint[], bigint[], integer";

/// The placeholders every generated function shares.
fn common(sql: &str, table: &TableName, function: &str) -> String {
    sql.replace("{{DECLARE}}", include_str!("sql/declare.sql"))
        .replace("{{LOCK}}", include_str!("sql/lock.sql"))
        .replace("{{DEADLINE}}", include_str!("sql/deadline.sql"))
        .replace("{{SWEEP}}", include_str!("sql/sweep.sql"))
        .replace("{{FUNCTION}}", &table.quoted(function))
        .replace("{{TABLE}}", &table.quoted(""))
}

/// The `CREATE OR REPLACE FUNCTION` statement of one algorithm for `table`: lock the key's
/// row, the algorithm's section (every rate's verdict, charged and settled states), the
/// all-or-nothing combination across rates, then the write.
fn function_sql(table: &TableName, algorithm: &str, body: &str) -> String {
    let (eval, horizon) = body.split_once("-- @horizon\n").unwrap_or((body, ""));
    let head = include_str!("sql/head.sql");
    let combine = include_str!("sql/combine.sql");
    let tail = include_str!("sql/tail.sql");
    let sql = format!("{head}{eval}{combine}{tail}")
        .replace("{{HORIZON}}", horizon)
        .replace("{{ALGORITHM}}", algorithm);
    common(&sql, table, &format!("_{algorithm}"))
}

/// The `CREATE OR REPLACE FUNCTION` statement of the multi-key function: every algorithm's
/// section, chosen per key, between the same declarations and combination as the
/// single-key functions.
fn check_all_sql(table: &TableName) -> String {
    let mut evaluate = String::new();
    for (n, (algorithm, body)) in ALGORITHMS.iter().enumerate() {
        let (eval, horizon) = body.split_once("-- @horizon\n").unwrap_or((body, ""));
        let keyword = if n == 0 { "IF" } else { "ELSIF" };
        evaluate.push_str(&format!(
            "        {keyword} m_algorithms[k] = '{algorithm}' THEN\n{eval}\
             \x20       IF p_op = 0 THEN\n\
             \x20           v_next := v_cand; v_horizon := 0;\n{horizon}\
             \x20           r_h_cand[k] := v_horizon;\n\
             \x20           v_next := v_settle; v_horizon := 0;\n{horizon}\
             \x20           r_h_settle[k] := v_horizon;\n\
             \x20       END IF;\n"
        ));
    }
    evaluate.push_str(
        "        ELSE\n            RAISE EXCEPTION 'tollgate: unknown algorithm %', m_algorithms[k];\n        END IF;",
    );
    let sql = include_str!("sql/check_all.sql")
        .replace("{{EVALUATE}}", &evaluate)
        .replace("{{COMBINE}}", include_str!("sql/combine.sql"));
    common(&sql, table, CHECK_ALL)
}

/// A stable 64-bit id of the table, for the migration's advisory lock.
fn lock_id(table: &TableName) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("tollgate-sql migrate {table}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// The table, its index and every function (see `PgStore::schema_sql`).
pub(super) fn schema_sql(table: &TableName) -> String {
    let t = table.quoted("");
    let index = table.quoted_local("_expires_at");
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {t} (\n    key text PRIMARY KEY,\n    state bigint[] NOT NULL,\n    expires_at bigint NOT NULL\n);\nCREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at);\n"
    );
    for (name, body) in ALGORITHMS {
        sql.push_str(&function_sql(table, name, body));
        sql.push('\n');
    }
    sql.push_str(&check_all_sql(table));
    sql.push('\n');
    sql
}

/// `DROP FUNCTION` of every function, in this version's signature (`deadline`: with the
/// `p_deadline` argument) or the previous one.
fn drop_functions(table: &TableName, deadline: bool) -> String {
    let last = if deadline { ", bigint" } else { "" };
    let mut sql = String::new();
    for (name, _) in ALGORITHMS {
        sql.push_str(&format!(
            "DROP FUNCTION IF EXISTS {}({SINGLE_ARGS}{last});\n",
            table.quoted(&format!("_{name}"))
        ));
    }
    sql.push_str(&format!(
        "DROP FUNCTION IF EXISTS {}({CHECK_ALL_ARGS}{last});\n",
        table.quoted(CHECK_ALL)
    ));
    sql
}

/// The migration: [`schema_sql`] in one transaction, serialised by an advisory lock. The
/// functions of the previous signature (without a deadline) stay, so processes of the
/// previous version keep working during a rolling upgrade; `drop_schema` removes both.
pub(super) fn migrate_sql(table: &TableName, timeout: Duration) -> String {
    locked(table, timeout, &schema_sql(table))
}

/// Drops the table and every function, in one transaction under the migration's lock.
pub(super) fn drop_sql(table: &TableName, timeout: Duration) -> String {
    let sql = format!(
        "DROP TABLE IF EXISTS {};\n{}{}",
        table.quoted(""),
        drop_functions(table, true),
        drop_functions(table, false)
    );
    locked(table, timeout, &sql)
}

/// `body` in one transaction under the migration's advisory lock; its statements may take
/// `timeout` each (a session's own limit is half the call timeout, for decisions).
fn locked(table: &TableName, timeout: Duration, body: &str) -> String {
    format!(
        "BEGIN;\nSET LOCAL statement_timeout = {};\nSELECT pg_advisory_xact_lock({});\n{body}COMMIT;",
        timeout.as_millis().max(1),
        lock_id(table)
    )
}
