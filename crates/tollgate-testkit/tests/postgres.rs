//! The PostgreSQL that scripts/test provides (DATABASE_URL) accepts queries.

use std::process::Command;

use tollgate_testkit::{must_have, require_postgres};

#[test]
fn database_url_accepts_a_query() {
    let Some(url) = require_postgres() else {
        return;
    };
    // No Postgres client library here: psql, which scripts/test installs
    // together with the server, is enough to prove the URL works.
    let psql = Command::new("psql").arg("--version").output();
    let Some(_) = must_have(
        "psql",
        psql.map_err(|e| format!("cannot run psql: {e}"))
            .and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(format!("{o:?}"))
                }
            }),
    ) else {
        return;
    };
    let out = Command::new("psql")
        .args([url.as_str(), "-XAtqc", "select 40 + 2"])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    assert!(out.status.success(), "psql {url}: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}
