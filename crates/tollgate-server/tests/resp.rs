//! The RESP endpoint of the real binary: CL.THROTTLE exact replies (redis-cell's), TG.*
//! commands, pipelining, malformed input, timeouts, real clients (redis-rs, redis-cli).

mod common;

use common::{cmd, error_text, ints, Raw, Resp, ServerProcess};
use std::time::Duration;

#[test]
fn cl_throttle_burst_then_deny_with_redis_cell_replies() {
    let server = ServerProcess::start(&[]);
    let mut c = Raw::connect(server.resp);
    // max_burst 4 -> limit 5; 1 per second. reset_after grows by 1 s per call; the calls take
    // well under a second, and redis-cell rounds any millisecond remainder up.
    for i in 1..=5i64 {
        c.send(&cmd(&["CL.THROTTLE", "seq", "4", "1", "1"]));
        assert_eq!(ints(&c.reply()), vec![0, 5, 5 - i, -1, i], "call {i}");
    }
    c.send(&cmd(&["CL.THROTTLE", "seq", "4", "1", "1"]));
    assert_eq!(
        ints(&c.reply()),
        vec![1, 5, 0, 1, 5],
        "denied: retry in 1 s"
    );
    // quantity 0 peeks: allowed, nothing charged
    c.send(&cmd(&["CL.THROTTLE", "seq", "4", "1", "1", "0"]));
    assert_eq!(ints(&c.reply()), vec![0, 5, 0, -1, 5]);
    // a quantity above the limit can never succeed: limited, retry_after -1
    c.send(&cmd(&["CL.THROTTLE", "fresh", "4", "1", "1", "6"]));
    assert_eq!(ints(&c.reply()), vec![1, 5, 5, -1, 0]);
    // a quantity that fits on a fresh key
    c.send(&cmd(&["CL.THROTTLE", "fresh", "4", "1", "1", "3"]));
    assert_eq!(ints(&c.reply()), vec![0, 5, 2, -1, 3]);
    // redis-cell's README example: 15 burst, 30 per 60 s -> limit 16, emission 2 s
    c.send(&cmd(&["CL.THROTTLE", "user123", "15", "30", "60"]));
    assert_eq!(ints(&c.reply()), vec![0, 16, 15, -1, 2]);
    c.send(&cmd(&["CL.THROTTLE", "user123", "15", "30", "60", "15"]));
    assert_eq!(ints(&c.reply()), vec![0, 16, 0, -1, 32]);
    c.send(&cmd(&["CL.THROTTLE", "user123", "15", "30", "60"]));
    assert_eq!(ints(&c.reply()), vec![1, 16, 0, 2, 32]);
}

#[test]
fn cl_throttle_recovers_after_the_emission_interval() {
    let server = ServerProcess::start(&[]);
    let mut c = Raw::connect(server.resp);
    // max_burst 0 -> limit 1; 10 per second -> one unit every 100 ms.
    c.send(&cmd(&["CL.THROTTLE", "k", "0", "10", "1"]));
    assert_eq!(ints(&c.reply()), vec![0, 1, 0, -1, 1]);
    c.send(&cmd(&["CL.THROTTLE", "k", "0", "10", "1"]));
    let denied = ints(&c.reply());
    assert_eq!(
        denied,
        vec![1, 1, 0, 1, 1],
        "sub-second waits round up to 1 s"
    );
    std::thread::sleep(Duration::from_millis(150));
    c.send(&cmd(&["CL.THROTTLE", "k", "0", "10", "1"]));
    assert_eq!(ints(&c.reply()), vec![0, 1, 0, -1, 1]);
}

#[test]
fn cl_throttle_bad_arguments_get_error_replies_and_the_connection_survives() {
    let server = ServerProcess::start(&[]);
    let mut c = Raw::connect(server.resp);
    c.send(&cmd(&["CL.THROTTLE", "k", "1", "2"]));
    assert!(error_text(&c.reply()).contains("Usage: cl.throttle"));
    c.send(&cmd(&["CL.THROTTLE", "k", "x", "1", "1"]));
    assert!(error_text(&c.reply()).contains("Couldn't parse as integer: x"));
    c.send(&cmd(&["CL.THROTTLE", "k", "1", "0", "1"]));
    assert!(error_text(&c.reply()).contains("count per period must be at least 1"));
    c.send(&cmd(&["CL.THROTTLE", "k", "-1", "1", "1"]));
    assert!(error_text(&c.reply()).contains("max_burst"));
    c.send(&cmd(&["CL.THROTTLE", &"k".repeat(600), "1", "1", "1"]));
    assert!(error_text(&c.reply()).contains("maximum is 512"));
    c.send(&cmd(&["NOPE", "a"]));
    assert!(error_text(&c.reply()).contains("unknown command 'NOPE'"));
    c.send(&cmd(&["PING"]));
    assert_eq!(c.reply(), Resp::Simple("PONG".into()));
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let server = ServerProcess::start(&["--policy", "api=3/min"]);
    let mut c = Raw::connect(server.resp);
    let mut batch = Vec::new();
    for i in 0..200 {
        match i % 3 {
            0 => batch.extend(cmd(&["ECHO", &format!("m{i}")])),
            1 => batch.extend(cmd(&["CL.THROTTLE", "pipe", "99", "1", "60"])),
            _ => batch.extend(cmd(&["TG.CHECK", "api", "p"])),
        }
    }
    // one write holding 200 commands, the last one cut in two writes
    batch.extend(b"*1\r\n$4\r\nPI");
    c.send(&batch);
    std::thread::sleep(Duration::from_millis(50));
    c.send(b"NG\r\n");
    let mut throttles = 0i64;
    let mut checks = 0;
    for i in 0..200 {
        let r = c.reply();
        match i % 3 {
            0 => assert_eq!(r, Resp::Bulk(Some(format!("m{i}").into_bytes()))),
            1 => {
                throttles += 1;
                let v = ints(&r);
                assert_eq!(v[..3], [0, 100, 100 - throttles], "reply {i}");
            }
            _ => {
                checks += 1;
                let v = ints(&r);
                assert_eq!(v[0], i64::from(checks > 3), "reply {i}: {v:?}");
            }
        }
    }
    assert_eq!(c.reply(), Resp::Simple("PONG".into()));
}

#[test]
fn tg_commands_use_named_policies() {
    let server = ServerProcess::start(&[
        "--policy",
        "api=2/min",
        "--policy",
        "login=fixed_window:1/h",
    ]);
    let mut c = Raw::connect(server.resp);
    c.send(&cmd(&["TG.CHECK", "api", "alice"]));
    assert_eq!(ints(&c.reply()), vec![0, 2, 1, -1, 30_000]);
    c.send(&cmd(&["TG.PEEK", "api", "alice", "1"]));
    assert_eq!(ints(&c.reply())[..3], [0, 2, 0]);
    c.send(&cmd(&["TG.CHECK", "api", "alice", "2"]));
    let denied = ints(&c.reply());
    assert_eq!(denied[..3], [1, 2, 1]);
    assert!(denied[3] > 29_000 && denied[3] <= 30_000, "{denied:?}");
    c.send(&cmd(&["TG.RESET", "api", "alice"]));
    assert_eq!(c.reply(), Resp::Simple("OK".into()));
    c.send(&cmd(&["TG.CHECK", "api", "alice", "2"]));
    assert_eq!(ints(&c.reply())[..3], [0, 2, 0]);
    c.send(&cmd(&["TG.CHECK", "nope", "alice"]));
    assert!(error_text(&c.reply()).contains("unknown policy"));
    c.send(&cmd(&["TG.CHECK", "api", "alice", "3"]));
    assert!(error_text(&c.reply()).contains("capacity"));
    c.send(&cmd(&["TG.POLICIES"]));
    match c.reply() {
        Resp::Array(Some(items)) => assert_eq!(items.len(), 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_resp_gets_an_error_and_the_server_stays_up() {
    let server = ServerProcess::start(&[]);
    for bad in [
        &b"*1\r\n+PING\r\n"[..],
        b"*x\r\n",
        b"*1\r\n$-7\r\n",
        b"*1\r\n$3\r\nabcdef\r\n",
        b"*99999999\r\n",
        b"*1\r\n$999999999\r\n",
    ] {
        let mut c = Raw::connect(server.resp);
        c.send(bad);
        let e = error_text(&c.reply());
        assert!(e.contains("Protocol error"), "{e}");
        assert!(
            c.closed(),
            "the connection is closed after a protocol error"
        );
    }
    // an oversized inline line
    let mut c = Raw::connect(server.resp);
    c.send(&vec![b'A'; 70 * 1024]);
    assert!(error_text(&c.reply()).contains("too big inline request"));
    // the server still answers
    let mut c = Raw::connect(server.resp);
    c.send(b"PING\r\n");
    assert_eq!(c.reply(), Resp::Simple("PONG".into()));
}

#[test]
fn inline_commands_and_byte_by_byte_writes_work() {
    let server = ServerProcess::start(&[]);
    let mut c = Raw::connect(server.resp);
    c.send(b"CL.THROTTLE inline 1 1 10\r\n");
    assert_eq!(ints(&c.reply()), vec![0, 2, 1, -1, 10]);
    for b in cmd(&["CL.THROTTLE", "slow", "1", "1", "10"]) {
        c.send(&[b]);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(ints(&c.reply()), vec![0, 2, 1, -1, 10]);
}

#[test]
fn idle_and_slow_clients_are_disconnected() {
    let dir = std::env::temp_dir().join(format!("tg-server-timeouts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tollgate.toml");
    std::fs::write(
        &path,
        "[server]\nidle_timeout = \"1s\"\nrequest_timeout = \"500ms\"\n",
    )
    .unwrap();
    let server = ServerProcess::start(&["--config", path.to_str().unwrap()]);
    // idle
    let mut idle = Raw::connect(server.resp);
    idle.send(b"PING\r\n");
    assert_eq!(idle.reply(), Resp::Simple("PONG".into()));
    let started = std::time::Instant::now();
    assert!(idle.closed());
    assert!(started.elapsed() >= Duration::from_millis(900));
    // slow: half a command, then nothing
    let mut slow = Raw::connect(server.resp);
    slow.send(b"*2\r\n$4\r\nECHO\r\n$5\r\nab");
    assert!(error_text(&slow.reply()).contains("not completed in time"));
    assert!(slow.closed());
    let mut fresh = Raw::connect(server.resp);
    fresh.send(b"PING\r\n");
    assert_eq!(fresh.reply(), Resp::Simple("PONG".into()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_redis_crate_connects_and_pipelines() {
    let server = ServerProcess::start(&[]);
    let client = redis::Client::open(server.redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
    let reply: Vec<i64> = redis::cmd("CL.THROTTLE")
        .arg("rs")
        .arg(2)
        .arg(3)
        .arg(3)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(reply, vec![0, 3, 2, -1, 1]);
    let mut pipe = redis::pipe();
    for _ in 0..3 {
        pipe.cmd("CL.THROTTLE").arg("rs").arg(2).arg(3).arg(3);
    }
    let replies: Vec<Vec<i64>> = pipe.query_async(&mut con).await.unwrap();
    assert_eq!(replies[0][..3], [0, 3, 1]);
    assert_eq!(replies[1][..3], [0, 3, 0]);
    assert_eq!(replies[2][..4], [1, 3, 0, 1]);
    let err = redis::cmd("CL.THROTTLE")
        .arg("rs")
        .query_async::<Vec<i64>>(&mut con)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Usage"), "{err}");
    // the connection is still usable after an error reply
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn redis_cli_talks_to_the_server() {
    let Some(cli) = tollgate_testkit::must_have("redis-cli", tollgate_testkit::redis_cli_path())
    else {
        return;
    };
    let server = ServerProcess::start(&[]);
    let port = server.resp.port().to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&cli)
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(run(&["PING"]).trim(), "PONG");
    let out = run(&["CL.THROTTLE", "cli", "15", "30", "60"]);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, ["0", "16", "15", "-1", "2"]);
    let out = run(&["CL.THROTTLE", "cli"]);
    assert!(out.contains("Usage"), "{out}");
}

#[test]
fn sigterm_shuts_down_gracefully() {
    let mut server = ServerProcess::start(&[]);
    let mut c = Raw::connect(server.resp);
    c.send(b"PING\r\n");
    assert_eq!(c.reply(), Resp::Simple("PONG".into()));
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    let out = server.more_stdout(Duration::from_millis(100)).join("\n");
    assert!(out.contains("shutting down"), "{out}");
    assert!(out.contains("stopped"), "{out}");
    // the idle connection was closed, not left hanging
    assert!(c.closed());
}

#[test]
fn tg_acquire_and_release_semaphore_leases() {
    let server = ServerProcess::start(&["--semaphore", "jobs=1"]);
    let mut c = Raw::connect(server.resp);
    c.send(&cmd(&["TG.ACQUIRE", "jobs"]));
    let Resp::Array(Some(granted)) = c.reply() else {
        panic!()
    };
    assert_eq!(granted[0], Resp::Integer(1));
    let lease = granted[1].as_text().unwrap();
    c.send(&cmd(&["TG.ACQUIRE", "jobs", "1", "1000"]));
    let Resp::Array(Some(busy)) = c.reply() else {
        panic!()
    };
    assert_eq!(busy[..2], [Resp::Integer(0), Resp::Integer(1)]);
    c.send(&cmd(&["TG.RELEASE", "jobs", &lease]));
    assert_eq!(c.reply(), Resp::Integer(1));
    c.send(&cmd(&["TG.RELEASE", "jobs", &lease]));
    assert_eq!(c.reply(), Resp::Integer(0));
}
