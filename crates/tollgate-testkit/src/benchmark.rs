//! `redis-benchmark` for the side-by-side benches: run it, parse its `--csv` result.

use crate::env::redis_server_path;
use crate::redis::RedisServer;
use std::path::PathBuf;
use std::process::Command;

/// One `redis-benchmark --csv` result line.
///
/// ```
/// let r = tollgate_testkit::RedisBenchmark::parse_csv(
///     "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
///      \"EVALSHA abc 1 k 1,2\",\"51234.50\",\"0.9\",\"0.1\",\"0.8\",\"1.5\",\"2.5\",\"9.0\"\n").unwrap();
/// assert_eq!((r.rps, r.p50_ms, r.p99_ms), (51234.5, 0.8, 2.5));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RedisBenchmark {
    /// Requests per second.
    pub rps: f64,
    /// Median latency in milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile latency in milliseconds.
    pub p99_ms: f64,
}

impl RedisBenchmark {
    /// Parses the last result line of `redis-benchmark --csv` output. The test name (the
    /// command line, which may hold commas) is the first field, so fields are counted from the
    /// end: `rps, avg, min, p50, p95, p99, max`.
    ///
    /// ```
    /// assert!(tollgate_testkit::RedisBenchmark::parse_csv("garbage").is_err());
    /// ```
    pub fn parse_csv(text: &str) -> Result<RedisBenchmark, String> {
        let line = text
            .lines()
            .rfind(|l| l.starts_with('"') && !l.starts_with("\"test\""))
            .ok_or_else(|| format!("no result line in redis-benchmark output:\n{text}"))?;
        let fields: Vec<f64> = line
            .rsplit("\",\"")
            .take(7)
            .map(|f| f.trim_matches('"').parse().unwrap_or(f64::NAN))
            .collect();
        // reversed: max, p99, p95, p50, min, avg, rps
        match fields.as_slice() {
            [_, p99, _, p50, _, _, rps] if rps.is_finite() => Ok(RedisBenchmark {
                rps: *rps,
                p50_ms: *p50,
                p99_ms: *p99,
            }),
            _ => Err(format!("cannot parse redis-benchmark line: {line}")),
        }
    }
}

/// The `redis-benchmark` binary: `TOLLGATE_REDIS_BENCHMARK`, else next to `redis-server`, else
/// from `PATH`.
///
/// ```
/// let p = tollgate_testkit::redis_benchmark_path();
/// assert!(p.to_string_lossy().contains("redis-benchmark"));
/// ```
pub fn redis_benchmark_path() -> PathBuf {
    if let Ok(p) = std::env::var("TOLLGATE_REDIS_BENCHMARK") {
        return PathBuf::from(p);
    }
    if let Ok(server) = redis_server_path() {
        let sibling = server.with_file_name("redis-benchmark");
        if sibling.exists() {
            return sibling;
        }
    }
    PathBuf::from("redis-benchmark")
}

/// Runs `redis-benchmark --csv <args>` and parses its result.
///
/// ```no_run
/// let r = tollgate_testkit::redis_benchmark(&["-p", "6379", "-n", "1000", "PING"]).unwrap();
/// println!("{} req/s", r.rps);
/// ```
pub fn redis_benchmark(args: &[&str]) -> Result<RedisBenchmark, String> {
    // options must precede the command: --csv goes first
    let out = Command::new(redis_benchmark_path())
        .arg("--csv")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run redis-benchmark (it ships with redis-server): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    RedisBenchmark::parse_csv(&String::from_utf8_lossy(&out.stdout))
}

impl RedisServer {
    /// The server's `redis_version` (from `INFO server`), or `"?"`.
    ///
    /// ```no_run
    /// let server = tollgate_testkit::RedisServer::start().unwrap();
    /// println!("redis {}", server.version());
    /// ```
    pub fn version(&self) -> String {
        self.command(&["INFO", "server"])
            .ok()
            .and_then(|r| r.as_text())
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("redis_version:")
                        .map(|v| v.trim().to_string())
                })
            })
            .unwrap_or_else(|| "?".into())
    }
}
