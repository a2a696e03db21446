//! What the environment provides, and the skip-or-fail rule.

use std::env;
use std::path::{Path, PathBuf};

use crate::{RedisCluster, RedisServer};

/// True when running in CI: the env var `CI` is set to anything but the empty
/// string, `0` or `false` (case-insensitive).
///
/// In CI, missing infrastructure is a hard failure (see [`must_have`]).
///
/// ```
/// // CI runs `bash .ci/run` with CI=true; locally it is usually unset.
/// let _strict: bool = tollgate_testkit::in_ci();
/// ```
pub fn in_ci() -> bool {
    ci_value_means_ci(env::var_os("CI").as_deref().and_then(|v| v.to_str()))
}

fn ci_value_means_ci(value: Option<&str>) -> bool {
    match value {
        None => false,
        Some(v) => {
            let v = v.trim();
            !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false"))
        }
    }
}

/// Unwraps a piece of test infrastructure, or decides what to do without it.
///
/// - `Ok(v)`: returns `Some(v)`.
/// - `Err(reason)` outside CI: prints `SKIP: <what>: <reason>` to stderr
///   (uncaptured, so it shows in a plain `cargo test` run) and returns
///   `None`; the test should return early. It then counts as passed, so that
///   line is the only trace of the skip.
/// - `Err(reason)` in CI ([`in_ci`]): panics with a clear message. CI must
///   never pass by skipping the store tests.
///
/// ```
/// use tollgate_testkit::must_have;
///
/// let got = must_have("a thing", Ok::<_, String>(42));
/// assert_eq!(got, Some(42));
///
/// // In a test:
/// let Some(_redis) = must_have("redis-server", tollgate_testkit::RedisServer::start()) else {
///     return; // skipped, with a SKIP: line on stderr
/// };
/// ```
pub fn must_have<T>(what: &str, r: Result<T, String>) -> Option<T> {
    match decide(in_ci(), what, r) {
        Ok(v) => Some(v),
        Err(skip) => {
            // Straight to the process's stderr, not `eprintln!`: the test
            // harness captures the latter and shows it only for failing
            // tests, which would hide every skip.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{skip}");
            None
        }
    }
}

/// `Ok(v)`, or the `SKIP:` line to print; panics in CI.
fn decide<T>(ci: bool, what: &str, r: Result<T, String>) -> Result<T, String> {
    match r {
        Ok(v) => Ok(v),
        Err(reason) if ci => panic!(
            "{what} is required in CI (env CI is set) but is unavailable: {reason}\n\
             (scripts/test installs and starts what the tests need; run the tests through it)"
        ),
        Err(reason) => Err(format!("SKIP: {what}: {reason}")),
    }
}

/// The PostgreSQL connection URL to test against: `DATABASE_URL`, if set and
/// not empty.
///
/// `scripts/test` always exports one: an existing server (`DATABASE_URL`, or
/// `127.0.0.1:5432` with trust auth) or a private throwaway cluster. The
/// database is shared by every test of a run: use unique table names or key
/// prefixes per test.
///
/// ```
/// if let Some(url) = tollgate_testkit::postgres_url() {
///     assert!(!url.is_empty());
/// }
/// ```
pub fn postgres_url() -> Option<String> {
    env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
}

/// [`postgres_url`] under the [`must_have`] rule: `None` (with a `SKIP:` line)
/// outside CI when `DATABASE_URL` is unset; a panic in CI.
///
/// ```
/// let Some(url) = tollgate_testkit::require_postgres() else { return };
/// assert!(url.starts_with("postgres"));
/// ```
pub fn require_postgres() -> Option<String> {
    must_have(
        "PostgreSQL",
        postgres_url().ok_or_else(|| {
            "DATABASE_URL is not set (scripts/test provides a PostgreSQL and sets it)".to_string()
        }),
    )
}

/// [`RedisServer::start`] under the [`must_have`] rule.
///
/// ```
/// let Some(redis) = tollgate_testkit::require_redis() else { return };
/// assert!(redis.port() > 0);
/// ```
pub fn require_redis() -> Option<RedisServer> {
    must_have("redis-server", RedisServer::start())
}

/// [`RedisCluster::start`] under the [`must_have`] rule.
///
/// ```no_run
/// let Some(cluster) = tollgate_testkit::require_redis_cluster() else { return };
/// assert_eq!(cluster.urls().len(), 3);
/// ```
pub fn require_redis_cluster() -> Option<RedisCluster> {
    must_have("Redis Cluster", RedisCluster::start())
}

/// The `redis-server` binary to run: `TOLLGATE_REDIS_SERVER` if set (it must
/// exist), else `redis-server` or `valkey-server` on `PATH` (then in
/// `/usr/bin`, `/usr/local/bin`, `/usr/sbin`).
///
/// ```
/// match tollgate_testkit::redis_server_path() {
///     Ok(path) => assert!(path.is_file()),
///     Err(reason) => eprintln!("no redis-server: {reason}"),
/// }
/// ```
pub fn redis_server_path() -> Result<PathBuf, String> {
    find_binary(
        "TOLLGATE_REDIS_SERVER",
        &["redis-server", "valkey-server"],
        "install redis-server (apt-get install redis-server), or run scripts/test",
    )
}

/// The `redis-cli` binary to run: `TOLLGATE_REDIS_CLI` if set (it must
/// exist), else `redis-cli` or `valkey-cli` on `PATH` (then in `/usr/bin`,
/// `/usr/local/bin`).
///
/// ```
/// if let Ok(cli) = tollgate_testkit::redis_cli_path() {
///     assert!(cli.is_file());
/// }
/// ```
pub fn redis_cli_path() -> Result<PathBuf, String> {
    find_binary(
        "TOLLGATE_REDIS_CLI",
        &["redis-cli", "valkey-cli"],
        "install redis-tools (apt-get install redis-tools), or run scripts/test",
    )
}

fn find_binary(var: &str, names: &[&str], hint: &str) -> Result<PathBuf, String> {
    if let Some(v) = env::var_os(var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&v);
        if is_executable(&p) {
            return Ok(p);
        }
        // A bare name in the override is looked up on PATH.
        if p.components().count() == 1 {
            if let Some(found) = search_path(&p.to_string_lossy()) {
                return Ok(found);
            }
        }
        return Err(format!("{var}={} is not an executable file", p.display()));
    }
    for name in names {
        if let Some(found) = search_path(name) {
            return Ok(found);
        }
    }
    Err(format!(
        "{} not found on PATH (nor {var} set); {hint}",
        names.join(" / ")
    ))
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(
            ["/usr/bin", "/usr/local/bin", "/usr/sbin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_values() {
        assert!(!ci_value_means_ci(None));
        assert!(!ci_value_means_ci(Some("")));
        assert!(!ci_value_means_ci(Some("0")));
        assert!(!ci_value_means_ci(Some("FALSE")));
        assert!(ci_value_means_ci(Some("true")));
        assert!(ci_value_means_ci(Some("1")));
        assert!(ci_value_means_ci(Some("yes")));
    }

    #[test]
    fn decide_outside_ci_skips() {
        assert_eq!(decide(false, "x", Ok::<_, String>(1)), Ok(1));
        assert_eq!(
            decide::<u8>(false, "redis-server", Err("not installed".into())),
            Err("SKIP: redis-server: not installed".into())
        );
    }

    #[test]
    #[should_panic(expected = "redis-server is required in CI")]
    fn decide_in_ci_panics() {
        let _ = decide::<u8>(true, "redis-server", Err("not installed".into()));
    }

    #[test]
    fn decide_in_ci_passes_values_through() {
        assert_eq!(decide(true, "x", Ok::<_, String>("v")), Ok("v"));
    }

    #[test]
    fn finds_sh() {
        assert!(search_path("sh").is_some());
        assert!(search_path("surely-no-such-binary-here").is_none());
    }
}
