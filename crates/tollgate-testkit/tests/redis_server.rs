//! The standalone server guard: start, raw RESP over TCP, restart, drop.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use tollgate_testkit::{must_have, RedisServer, Resp};

/// PING over a plain TCP socket, speaking RESP by hand (no helper involved).
fn raw_ping(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

#[test]
fn start_ping_restart_ping() {
    let Some(mut redis) = must_have("redis-server", RedisServer::start()) else {
        return;
    };
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/"));
    assert_eq!(raw_ping(port).unwrap(), "+PONG\r\n");

    // Data and scripts exist before the restart...
    redis.command(&["SET", "k", "v"]).unwrap();
    let sha = redis
        .command(&["SCRIPT", "LOAD", "return 1"])
        .unwrap()
        .as_text()
        .unwrap();
    let pid_before = redis.pid().unwrap();

    redis.restart().unwrap();

    // ...same port, new process, and both are gone after it.
    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid().unwrap(), pid_before);
    assert_eq!(raw_ping(port).unwrap(), "+PONG\r\n");
    assert_eq!(redis.command(&["EXISTS", "k"]).unwrap(), Resp::Integer(0));
    let reply = redis.command(&["EVALSHA", &sha, "0"]).unwrap();
    assert!(
        matches!(&reply, Resp::Error(e) if e.starts_with("NOSCRIPT")),
        "{reply:?}"
    );
}

#[test]
fn stop_then_restart() {
    let Some(mut redis) = must_have("redis-server", RedisServer::start()) else {
        return;
    };
    let port = redis.port();
    redis.stop();
    assert!(redis.pid().is_none());
    assert!(raw_ping(port).is_err(), "stopped server still answers");
    redis.stop(); // idempotent
    redis.restart().unwrap();
    assert_eq!(raw_ping(port).unwrap(), "+PONG\r\n");
}

#[test]
fn drop_kills_the_server_and_removes_its_dir() {
    let Some(redis) = must_have("redis-server", RedisServer::start()) else {
        return;
    };
    let port = redis.port();
    let dir = redis.dir().to_path_buf();
    assert!(dir.is_dir());
    drop(redis);
    assert!(raw_ping(port).is_err(), "dropped server still answers");
    assert!(!dir.exists(), "{dir:?} left behind");
}

#[test]
fn panicking_test_leaves_no_server() {
    if must_have("redis-server", tollgate_testkit::redis_server_path()).is_none() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let redis = RedisServer::start().unwrap();
        tx.send(redis.port()).unwrap();
        panic!("test failure while the server runs");
    })
    .join();
    assert!(result.is_err());
    let port = rx.recv().unwrap();
    assert!(raw_ping(port).is_err(), "server survived the panic");
}

#[test]
fn parallel_starts_get_distinct_ports() {
    if must_have("redis-server", tollgate_testkit::redis_server_path()).is_none() {
        return;
    }
    let servers: Vec<RedisServer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(RedisServer::start)).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
    for s in &servers {
        // Each port is served by its own process.
        let info = s.command(&["INFO", "server"]).unwrap().as_text().unwrap();
        assert!(info.contains(&format!("process_id:{}", s.pid().unwrap())));
    }
}

#[test]
fn start_survives_a_taken_port() {
    // Another redis-server already on the port the guard would pick is
    // detected (by pid), not mistaken for ours; a server of our own is then
    // started elsewhere. Simulate by occupying ports with servers and
    // starting more: none may report another's pid.
    let Some(a) = must_have("redis-server", RedisServer::start()) else {
        return;
    };
    let b = RedisServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.pid(), b.pid());
}

#[test]
fn extra_args_and_debug_command() {
    let Some(redis) = must_have(
        "redis-server",
        RedisServer::start_with_args(&["--requirepass", "s3cret"]),
    ) else {
        return;
    };
    let reply = redis.command(&["GET", "x"]).unwrap();
    assert!(
        matches!(&reply, Resp::Error(e) if e.starts_with("NOAUTH")),
        "{reply:?}"
    );
    let mut conn = tollgate_testkit::RespClient::connect(redis.port()).unwrap();
    assert_eq!(
        conn.call(&["AUTH", "s3cret"]).unwrap(),
        Resp::Simple("OK".into())
    );
    // DEBUG is enabled for local connections (Redis >= 7), for slow-store tests.
    let version = conn.call(&["INFO", "server"]).unwrap().as_text().unwrap();
    if version.contains("redis_version:7") || version.contains("redis_version:8") {
        assert_eq!(
            conn.call(&["DEBUG", "SLEEP", "0"]).unwrap(),
            Resp::Simple("OK".into())
        );
    }
}

#[test]
fn bad_arguments_fail_fast_with_the_servers_output() {
    if must_have("redis-server", tollgate_testkit::redis_server_path()).is_none() {
        return;
    }
    let started = std::time::Instant::now();
    let err = RedisServer::start_with_args(&["--no-such-option", "1"]).unwrap_err();
    assert!(err.contains("exited at start-up"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
