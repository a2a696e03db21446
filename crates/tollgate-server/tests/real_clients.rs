//! Today's Redis clients, unmodified and on their defaults, against the real binary:
//! redis-py 8 (sync, asyncio, default MULTI/EXEC pipeline; RESP3 default and protocol=2),
//! node-redis 5 (RESP2 default and RESP3), redis-rs (RESP2 and RESP3) and redis-cli (RESP2
//! and `-3`). Regression for issue 10 §2: redis-py 8 could not connect (`HELLO 3` answered
//! `-NOPROTO`) and its default pipeline failed (no `MULTI`).
//!
//! The Python and Node clients live in `tests/clients/`; `scripts/test` installs them
//! (a venv at `.venv-test/` with `redis>=8` and pytest, `npm ci` in `tests/clients/`) and
//! exports `TOLLGATE_TEST_PYTHON` and `TOLLGATE_TEST_NODE_DIR`. When `CI` is set, a missing
//! client is a failure (testkit's `must_have`), never a skip.

mod common;

use common::ServerProcess;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_testkit::must_have;

const SERVER_ARGS: [&str; 4] = ["--policy", "api=5/min", "--semaphore", "jobs=2"];

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cmd` to completion (at most `limit`), returning success and the combined output.
fn run(mut cmd: Command, limit: Duration) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!(
        "tg-real-client-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("out.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Some(s) => (s.success(), out),
        None => (false, format!("{out}\n(killed after {limit:?})")),
    }
}

/// The Python with redis-py >= 8 and pytest: `TOLLGATE_TEST_PYTHON`, else `.venv-test/`.
fn python() -> Result<PathBuf, String> {
    let python = match std::env::var_os("TOLLGATE_TEST_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join(".venv-test/bin/python"),
    };
    let mut cmd = Command::new(&python);
    cmd.args([
        "-c",
        "import sys, redis, pytest; sys.exit(0 if int(redis.__version__.split('.')[0]) >= 8 else 3)",
    ]);
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(python),
        Ok(o) => Err(format!(
            "{} lacks redis>=8 or pytest: {}",
            python.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!(
            "{}: {e} (scripts/test creates .venv-test; or set TOLLGATE_TEST_PYTHON)",
            python.display()
        )),
    }
}

/// `node` and the directory holding `node_modules/redis` (`TOLLGATE_TEST_NODE_DIR`, else
/// `tests/clients`).
fn node() -> Result<(PathBuf, PathBuf), String> {
    let node = std::env::var_os("TOLLGATE_TEST_NODE")
        .filter(|n| !n.is_empty())
        .map_or_else(|| PathBuf::from("node"), PathBuf::from);
    let dir = std::env::var_os("TOLLGATE_TEST_NODE_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(clients_dir, PathBuf::from);
    match Command::new(&node).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Err(format!("{} does not run", node.display())),
    }
    if !dir.join("node_modules/redis/package.json").is_file() {
        return Err(format!(
            "no node_modules/redis in {} (scripts/test runs npm ci there)",
            dir.display()
        ));
    }
    Ok((node, dir))
}

#[test]
fn redis_py_8_sync_asyncio_and_pipelines_on_its_defaults() {
    let Some(python) = must_have("python3 with redis>=8 and pytest", python()) else {
        return;
    };
    let server = ServerProcess::start(&SERVER_ARGS);
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(clients_dir().join("test_redis_py.py"))
        .env("TOLLGATE_RESP_HOST", server.resp.ip().to_string())
        .env("TOLLGATE_RESP_PORT", server.resp.port().to_string());
    let (ok, out) = run(cmd, Duration::from_secs(120));
    assert!(ok, "redis-py tests failed:\n{out}");
    assert!(out.contains(" passed"), "{out}");
    assert!(!out.contains("skipped"), "{out}");
}

#[test]
fn node_redis_5_default_and_resp3() {
    let Some((node, dir)) = must_have("node with the npm package redis", node()) else {
        return;
    };
    let server = ServerProcess::start(&SERVER_ARGS);
    let mut cmd = Command::new(node);
    cmd.arg("--test")
        .arg(clients_dir().join("node_redis.test.mjs"))
        .env("TOLLGATE_TEST_NODE_DIR", dir)
        .env("TOLLGATE_RESP_HOST", server.resp.ip().to_string())
        .env("TOLLGATE_RESP_PORT", server.resp.port().to_string());
    let (ok, out) = run(cmd, Duration::from_secs(120));
    assert!(ok, "node-redis tests failed:\n{out}");
    assert!(
        out.contains("# pass 3") && out.contains("# fail 0"),
        "{out}"
    );
}

#[test]
fn redis_cli_resp2_and_resp3() {
    let Some(cli) = must_have("redis-cli", tollgate_testkit::redis_cli_path()) else {
        return;
    };
    let server = ServerProcess::start(&SERVER_ARGS);
    let port = server.resp.port().to_string();
    for proto in ["2", "3"] {
        let cli_run = |args: &[&str], stdin: Option<&str>| {
            let mut cmd = Command::new(&cli);
            cmd.args(["-h", "127.0.0.1", "-p", &port]);
            if proto == "3" {
                cmd.arg("-3");
            }
            cmd.args(args);
            let out = match stdin {
                None => cmd.output().expect("run redis-cli"),
                Some(input) => {
                    use std::io::Write;
                    let mut child = cmd
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn()
                        .unwrap();
                    child
                        .stdin
                        .take()
                        .unwrap()
                        .write_all(input.as_bytes())
                        .unwrap();
                    child.wait_with_output().unwrap()
                }
            };
            assert!(out.status.success());
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let info = cli_run(&["CLIENT", "INFO"], None);
        assert!(info.contains(&format!("resp={proto}")), "{info}");
        let hello = cli_run(&["HELLO"], None);
        assert!(hello.contains("tollgate-server"), "{hello}");
        let key = format!("cli{proto}");
        let lines = cli_run(&["CL.THROTTLE", &key, "15", "30", "60"], None);
        assert_eq!(
            lines.lines().map(str::trim).collect::<Vec<_>>(),
            ["0", "16", "15", "-1", "2"]
        );
        // MULTI/EXEC typed into redis-cli (commands read from stdin).
        let tx = cli_run(
            &[],
            Some(&format!(
                "MULTI\nTG.CHECK api {key}\nTG.REFUND api {key} 1\nPING\nEXEC\n"
            )),
        );
        let tx: Vec<&str> = tx.lines().map(str::trim).collect();
        assert_eq!(
            tx,
            ["OK", "QUEUED", "QUEUED", "QUEUED", "0", "5", "4", "-1", "12000", "1", "PONG"]
        );
        // a null (not held) prints as an empty line in both protocols
        let nil = cli_run(&["TG.EXTEND", "jobs", &"0".repeat(32)], None);
        assert_eq!(nil, "\n");
    }
}

async fn redis_rs(url: String, resp: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        info.contains(&format!("resp={resp} lib-name=redis-rs")),
        "{info}"
    );
    let key = format!("rs{resp}");
    let reply: Vec<i64> = redis::cmd("CL.THROTTLE")
        .arg(&key)
        .arg(15)
        .arg(30)
        .arg(60)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(reply, [0, 16, 15, -1, 2]);
    // an atomic pipeline: MULTI ... EXEC
    let mut pipe = redis::pipe();
    pipe.atomic();
    for _ in 0..6 {
        pipe.cmd("TG.CHECK").arg("api").arg(&key);
    }
    pipe.cmd("TG.REFUND").arg("api").arg(&key).arg(1);
    let (checks, refunded): (Vec<Vec<i64>>, i64) = {
        let mut all: Vec<redis::Value> = pipe.query_async(&mut con).await.unwrap();
        let refunded = redis::from_redis_value(&all.pop().unwrap()).unwrap();
        let checks = all
            .iter()
            .map(|v| redis::from_redis_value(v).unwrap())
            .collect();
        (checks, refunded)
    };
    let limited: Vec<i64> = checks.iter().map(|c| c[0]).collect();
    assert_eq!(limited, [0, 0, 0, 0, 0, 1]);
    assert_eq!(refunded, 1);
    let (granted, lease, _): (i64, String, i64) = redis::cmd("TG.ACQUIRE")
        .arg("jobs")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(granted, 1);
    let left: Option<i64> = redis::cmd("TG.EXTEND")
        .arg("jobs")
        .arg(&lease)
        .arg(60_000)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(left.is_some_and(|l| l > 59_000), "{left:?}");
    let released: bool = redis::cmd("TG.RELEASE")
        .arg("jobs")
        .arg(&lease)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(released);
    let left: Option<i64> = redis::cmd("TG.EXTEND")
        .arg("jobs")
        .arg(&lease)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(left, None);
    let name: Option<String> = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(name, None);
    // the synchronous connection too
    let mut sync = client.get_connection().unwrap();
    let pong: String = redis::cmd("PING").query(&mut sync).unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test]
async fn redis_rs_resp2_and_resp3() {
    let server = ServerProcess::start(&SERVER_ARGS);
    redis_rs(format!("redis://{}/", server.resp), "2").await;
    redis_rs(format!("redis://{}/?protocol=resp3", server.resp), "3").await;
}
