//! Starts the real `tollgate-server` binary on free ports and talks to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
pub use tollgate_testkit::Resp;
use tollgate_testkit::TempDir;

/// Writes `text` as `tollgate.toml` in a fresh temporary directory: the directory (removed
/// when the guard drops) and the file's path.
pub fn write_config(name: &str, text: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(&format!("server-config-{name}")).expect("temporary directory");
    let path = dir.path().join("tollgate.toml");
    std::fs::write(&path, text).expect("write the config file");
    (dir, path)
}

/// A running server process; killed on drop.
pub struct ServerProcess {
    pub child: Child,
    pub http: SocketAddr,
    pub resp: SocketAddr,
    pub banner: String,
    stdout_rest: mpsc::Receiver<String>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate-server")
}

impl ServerProcess {
    /// Starts the binary with `args` plus loopback port-0 listeners (the server prints the
    /// ports it bound, so there is no port race).
    pub fn start(args: &[&str]) -> ServerProcess {
        Self::start_env(args, &[])
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let mut cmd = Command::new(bin());
        cmd.args(["--http-addr", "127.0.0.1:0", "--resp-addr", "127.0.0.1:0"])
            .args(args)
            .env_remove("TOLLGATE_CONFIG")
            .env_remove("TOLLGATE_STORE")
            .env("TOLLGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tollgate-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let banner = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server prints where it listens");
        let http = parse_addr(&banner, "http://");
        let resp = parse_addr(&banner, "redis://");
        ServerProcess {
            child,
            http,
            resp,
            banner,
            stdout_rest: rx,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.resp)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for exit (at most `within`).
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Further stdout lines printed so far (waits up to `wait` for the first).
    pub fn more_stdout(&self, wait: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        if let Ok(l) = self.stdout_rest.recv_timeout(wait) {
            lines.push(l);
        }
        while let Ok(l) = self.stdout_rest.try_recv() {
            lines.push(l);
        }
        lines
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_addr(banner: &str, scheme: &str) -> SocketAddr {
    let start = banner
        .find(scheme)
        .unwrap_or_else(|| panic!("{scheme} in banner {banner:?}"))
        + scheme.len();
    let end = banner[start..]
        .find(' ')
        .map_or(banner.len(), |e| start + e);
    banner[start..end].parse().expect("an address")
}

/// Runs the binary to completion with `args` (no listeners are started when config fails).
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("TOLLGATE_CONFIG")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tollgate-server");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A raw TCP connection for byte-level RESP tests.
pub struct Raw {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Raw { stream, reader }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one reply (a small RESP2 reader over the buffered stream: it never reads past
    /// the reply, so pipelined replies are read one by one).
    pub fn reply(&mut self) -> Resp {
        read_value(&mut self.reader)
    }

    /// True when the server closed the connection (EOF) within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }
}

fn read_value(r: &mut BufReader<TcpStream>) -> Resp {
    let mut line = String::new();
    r.read_line(&mut line).expect("read a reply line");
    let line = line
        .strip_suffix("\r\n")
        .unwrap_or_else(|| panic!("a CRLF-terminated line, got {line:?}"));
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Integer(rest.parse().expect("an integer")),
        "$" => {
            let n: i64 = rest.parse().expect("a bulk length");
            if n < 0 {
                return Resp::Bulk(None);
            }
            let mut data = vec![0u8; n as usize + 2];
            r.read_exact(&mut data).expect("bulk data");
            data.truncate(n as usize);
            Resp::Bulk(Some(data))
        }
        "*" => {
            let n: i64 = rest.parse().expect("an array length");
            if n < 0 {
                return Resp::Array(None);
            }
            Resp::Array(Some((0..n).map(|_| read_value(r)).collect()))
        }
        other => panic!("unexpected reply type {other:?}"),
    }
}

/// A RESP command as bytes.
pub fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// The integers of an array reply.
pub fn ints(v: &Resp) -> Vec<i64> {
    match v {
        Resp::Array(Some(items)) => items
            .iter()
            .map(|i| match i {
                Resp::Integer(n) => *n,
                other => panic!("not an integer: {other:?}"),
            })
            .collect(),
        other => panic!("not an array: {other:?}"),
    }
}

/// The text of an error reply.
pub fn error_text(v: &Resp) -> String {
    match v {
        Resp::Error(e) => e.clone(),
        other => panic!("not an error: {other:?}"),
    }
}

/// A reply in either protocol, with RESP3's types kept apart (for tests that check which
/// type the server chose).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum R3 {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// RESP2 `$-1`
    NullBulk,
    /// RESP2 `*-1`
    NullArray,
    /// RESP3 `_`
    Null,
    Array(Vec<R3>),
    /// RESP3 `%`
    Map(Vec<(R3, R3)>),
    /// RESP3 `=`: format and text
    Verbatim(String, String),
}

impl R3 {
    pub fn text(&self) -> String {
        match self {
            R3::Simple(s) | R3::Error(s) => s.clone(),
            R3::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            R3::Int(i) => i.to_string(),
            R3::Verbatim(_, t) => t.clone(),
            other => panic!("no text in {other:?}"),
        }
    }

    pub fn ints(&self) -> Vec<i64> {
        match self {
            R3::Array(items) => items
                .iter()
                .map(|i| match i {
                    R3::Int(n) => *n,
                    other => panic!("not an integer: {other:?}"),
                })
                .collect(),
            other => panic!("not an array: {other:?}"),
        }
    }

    /// The pairs of a RESP3 map or of a RESP2 flat array of pairs, keys as text.
    pub fn pairs(&self) -> Vec<(String, R3)> {
        match self {
            R3::Map(p) => p.iter().map(|(k, v)| (k.text(), v.clone())).collect(),
            R3::Array(items) => {
                assert!(items.len() % 2 == 0, "odd flat map {items:?}");
                items
                    .chunks(2)
                    .map(|c| (c[0].text(), c[1].clone()))
                    .collect()
            }
            other => panic!("not a map: {other:?}"),
        }
    }
}

impl Raw {
    /// Reads one reply of either protocol.
    pub fn reply3(&mut self) -> R3 {
        read_value3(&mut self.reader)
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&str]) -> R3 {
        self.send(&cmd(args));
        self.reply3()
    }
}

fn read_value3(r: &mut BufReader<TcpStream>) -> R3 {
    let mut line = String::new();
    r.read_line(&mut line).expect("read a reply line");
    let line = line
        .strip_suffix("\r\n")
        .unwrap_or_else(|| panic!("a CRLF-terminated line, got {line:?}"));
    let (kind, rest) = line.split_at(1);
    let len = || rest.parse::<i64>().expect("a length");
    let mut data = |n: i64| {
        let mut d = vec![0u8; n as usize + 2];
        r.read_exact(&mut d).expect("bulk data");
        assert_eq!(&d[n as usize..], b"\r\n");
        d.truncate(n as usize);
        d
    };
    match kind {
        "+" => R3::Simple(rest.to_string()),
        "-" => R3::Error(rest.to_string()),
        ":" => R3::Int(rest.parse().expect("an integer")),
        "_" => R3::Null,
        "$" if len() < 0 => R3::NullBulk,
        "$" => R3::Bulk(data(len())),
        "=" => {
            let d = String::from_utf8(data(len())).expect("UTF-8 verbatim text");
            let (format, text) = d.split_at(4);
            R3::Verbatim(format.trim_end_matches(':').to_string(), text.to_string())
        }
        "*" if len() < 0 => R3::NullArray,
        "*" => R3::Array((0..len()).map(|_| read_value3(r)).collect()),
        "%" => R3::Map(
            (0..len())
                .map(|_| (read_value3(r), read_value3(r)))
                .collect(),
        ),
        other => panic!("unexpected reply type {other:?}"),
    }
}
