//! Hostile input against the real binary (issue 15): slowloris on both listeners. A client that
//! sends a command one byte at a time, slower than anything legitimate, is dropped when the
//! *whole* request has taken `request_timeout`, so a handful of them cannot hold every
//! connection slot.

mod common;

use common::{cmd, Raw, Resp, ServerProcess};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const SLOTS: usize = 5;

fn config(name: &str, body: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("tg-hostile-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tollgate.toml");
    std::fs::write(&path, body).unwrap();
    let arg = path.to_str().unwrap().to_string();
    (dir, arg)
}

/// How long a slowloris client keeps going if the server never drops it.
const GIVE_UP: Duration = Duration::from_secs(8);

/// A slowloris client: sends `bytes` one at a time every `every`, until the server closes
/// the connection or [`GIVE_UP`] has passed; returns how long the server let it stay
/// (`None`: it was never dropped).
fn trickle(
    addr: SocketAddr,
    bytes: Vec<u8>,
    every: Duration,
) -> std::thread::JoinHandle<Option<Duration>> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        let started = Instant::now();
        for b in bytes.iter().cycle() {
            if started.elapsed() > GIVE_UP {
                return None;
            }
            if s.write_all(&[*b]).is_err() {
                return Some(started.elapsed());
            }
            let mut buf = [0u8; 256];
            match s.read(&mut buf) {
                Ok(0) => return Some(started.elapsed()),
                Ok(_) => {} // the error reply; EOF follows
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return Some(started.elapsed()),
            }
            std::thread::sleep(every);
        }
        None
    })
}

#[test]
fn resp_slowloris_is_bounded_by_the_whole_command_and_cannot_take_every_slot() {
    let (dir, path) = config(
        "resp",
        &format!("[server]\nrequest_timeout = \"1s\"\nmax_connections = {SLOTS}\n"),
    );
    let server = ServerProcess::start(&["--config", &path]);
    // a command that never ends: one byte every 300 ms (each read used to restart the timer)
    let mut long = b"*3\r\n$4\r\nECHO\r\n$100000\r\n".to_vec();
    long.extend(std::iter::repeat_n(b'x', 1000));
    let attackers: Vec<_> = (0..SLOTS)
        .map(|_| trickle(server.resp, long.clone(), Duration::from_millis(300)))
        .collect();
    std::thread::sleep(Duration::from_millis(200)); // every slot taken
    let started = Instant::now();
    let mut fresh = Raw::connect(server.resp);
    fresh.send(b"PING\r\n");
    assert_eq!(fresh.reply(), Resp::Simple("PONG".into()));
    let waited = started.elapsed();
    let held: Vec<Option<Duration>> = attackers.into_iter().map(|a| a.join().unwrap()).collect();
    assert!(
        waited < Duration::from_secs(3),
        "a legitimate client waited {waited:?} behind {SLOTS} slowloris clients"
    );
    for h in &held {
        let h = h.expect("the server closed every slowloris connection");
        assert!(
            h >= Duration::from_millis(900) && h < Duration::from_millis(2500),
            "dropped after {h:?}; request_timeout is 1 s"
        );
    }
    // a normal pipelined client is unaffected
    let mut c = Raw::connect(server.resp);
    c.send(&cmd(&["CL.THROTTLE", "k", "1", "1", "10"]));
    assert!(matches!(c.reply(), Resp::Array(Some(_))));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn http_slowloris_headers_and_body_are_bounded_by_the_request_timeout() {
    let (dir, path) = config(
        "http",
        &format!("[server]\nrequest_timeout = \"1s\"\nmax_connections = {SLOTS}\n"),
    );
    let server = ServerProcess::start(&["--config", &path]);
    let headers = b"POST /v1/check HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_vec();
    let mut body = b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b' ', 2000));
    let attackers: Vec<_> = (0..SLOTS)
        .map(|i| {
            let bytes = if i % 2 == 0 {
                headers.clone()
            } else {
                body.clone()
            };
            // the body attacker sends its headers at once, then trickles
            let every = Duration::from_millis(300);
            trickle(server.http, bytes, every)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut c = TcpStream::connect(server.http).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    c.read_to_string(&mut response)
        .expect("answered before the read timeout");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let waited = started.elapsed();
    let held: Vec<Option<Duration>> = attackers.into_iter().map(|a| a.join().unwrap()).collect();
    assert!(
        waited < Duration::from_secs(4),
        "a legitimate client waited {waited:?} behind {SLOTS} slowloris clients"
    );
    for h in &held {
        let h = h.expect("the server closed every slowloris connection");
        assert!(h < Duration::from_millis(3000), "dropped after {h:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
