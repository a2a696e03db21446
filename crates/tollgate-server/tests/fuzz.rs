//! Bounded mutation fuzzing on stable Rust, run by CI with the other tests (issue 15): the
//! RESP parser, rate strings, the config file, and HTTP request bodies against the real
//! binary. Each target starts from the seed corpus in `fuzz/corpus/<target>/` (kept in the
//! repo), mutates it (bit flips, byte edits, splices, duplicated chunks, interesting numbers)
//! with a deterministic generator, and checks that nothing panics or crashes and that
//! answers keep their contract. Every input that fails is written to
//! `target/fuzz-failures/<target>-<n>` and printed in hex: add it to the corpus and write a
//! regression test for it.
//!
//! Environment: `TOLLGATE_FUZZ_ITERS` (default 20,000 per in-process target; a tenth for the
//! config file, a quarter for HTTP) and `TOLLGATE_FUZZ_SEED` (default 1).

mod common;

use common::ServerProcess;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;
use tollgate_server::resp::{parse_command, Limits, Parsed};

/// xorshift64*: deterministic, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"0",
    b"-1",
    b"18446744073709551615",
    b"9223372036854775808",
    b"999999999999999999999",
    b"\r\n",
    b"\0",
    b"\xff\xfe",
    b"*",
    b"$",
    b"/",
    b";",
    b" per ",
    b"ms",
    b"e9",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b"=",
    b"\n[policies.z]\nrates = \"",
    b"NaN",
    b"\xe2\x82\xac",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below(len - i) + 1;
                input.drain(i..i + n.min(8));
            }
            4 => {
                let i = rng.below(len + 1);
                let word = INTERESTING[rng.below(INTERESTING.len())];
                input.splice(i..i, word.iter().copied());
            }
            5 if len > 0 => {
                // duplicate a chunk
                let i = rng.below(len);
                let n = (rng.below(len - i) + 1).min(64);
                let chunk: Vec<u8> = input[i..i + n].to_vec();
                let at = rng.below(input.len() + 1);
                input.splice(at..at, chunk);
            }
            6 => {
                // splice with another corpus entry
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(input.len() + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            _ if len > 1 => {
                let n = rng.below(len);
                input.truncate(n.max(1));
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(64 * 1024);
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let out: Vec<Vec<u8>> = entries.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!out.is_empty(), "empty corpus {}", dir.display());
    out
}

fn iterations(scale: usize) -> usize {
    let n = std::env::var("TOLLGATE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000usize);
    (n / scale).max(1)
}

fn seed() -> u64 {
    std::env::var("TOLLGATE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1u64)
        | 1
}

/// Runs `check` on every corpus entry and then on `iters` mutants; a panic or a returned
/// error saves the input and fails the test.
fn fuzz(target: &str, iters: usize, mut check: impl FnMut(&[u8]) -> Result<(), String>) {
    let corpus = corpus(target);
    let mut rng = Rng(seed() ^ (target.len() as u64 * 0x9E37_79B9));
    let mut failures = Vec::new();
    let mut run = |input: &[u8], failures: &mut Vec<(Vec<u8>, String)>| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(input)));
        let why = match r {
            Ok(Ok(())) => return,
            Ok(Err(why)) => why,
            Err(p) => format!(
                "panic: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ),
        };
        failures.push((input.to_vec(), why));
    };
    for entry in &corpus {
        run(entry, &mut failures);
    }
    for _ in 0..iters {
        let mut input = corpus[rng.below(corpus.len())].clone();
        mutate(&mut rng, &corpus, &mut input);
        run(&input, &mut failures);
        if failures.len() >= 5 {
            break;
        }
    }
    if !failures.is_empty() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let mut report = String::new();
        for (i, (input, why)) in failures.iter().enumerate() {
            let _ = std::fs::write(dir.join(format!("{target}-{i}")), input);
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            report.push_str(&format!("\n{why}\n  input (hex): {hex}"));
        }
        panic!(
            "{target}: {} failing inputs (saved in {}):{report}",
            failures.len(),
            dir.display()
        );
    }
}

#[test]
fn fuzz_resp_parser() {
    let limits = Limits::default();
    let mut args = Vec::new();
    fuzz("resp", iterations(1), |input| {
        let mut pos = 0;
        // every command in the buffer, as a connection would
        while pos < input.len() {
            match parse_command(&input[pos..], &limits, &mut args) {
                Ok(Parsed::Incomplete) | Err(_) => return Ok(()),
                Ok(Parsed::Command { consumed }) => {
                    if consumed == 0 || pos + consumed > input.len() {
                        return Err(format!("consumed {consumed} at {pos} of {}", input.len()));
                    }
                    if let Some(r) = args.iter().find(|r| r.start > r.end || r.end > consumed) {
                        return Err(format!("argument {r:?} outside the frame of {consumed}"));
                    }
                    pos += consumed;
                }
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_rate_strings() {
    use tollgate::{Algorithm, Policy};
    fuzz("rates", iterations(1), |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            return Ok(());
        };
        if let Ok(rates) = tollgate::parse_rates(text) {
            if rates.is_empty() || rates.iter().any(|r| r.limit() == 0 || r.period_us() == 0) {
                return Err(format!("parse_rates({text:?}) accepted {rates:?}"));
            }
        }
        for algorithm in [
            Algorithm::Gcra,
            Algorithm::TokenBucket,
            Algorithm::SlidingLog,
            Algorithm::SlidingWindow,
            Algorithm::FixedWindow,
        ] {
            if let Ok(policy) = Policy::parse(algorithm, text) {
                // an accepted policy decides
                let limiter = tollgate::Limiter::memory(policy);
                let _ = limiter
                    .check("k")
                    .map_err(|e| format!("{algorithm:?} {text:?}: {e}"))?;
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_config_file() {
    let dir = std::env::temp_dir().join(format!("tg-fuzz-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tollgate.toml");
    fuzz("config", iterations(10), |input| {
        std::fs::write(&path, input).unwrap();
        match tollgate_server::config::load_file(&path) {
            Ok(_) => Ok(()),
            Err(e) if e.field.is_empty() => Err(format!("an error that names no field: {e}")),
            Err(_) => Ok(()),
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HTTP exchange on a keep-alive connection: the status code.
fn post(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: std::net::SocketAddr,
    path: &str,
    body: &[u8],
) -> Result<u16, String> {
    if conn.is_none() {
        let s = TcpStream::connect(addr).map_err(|e| format!("server gone: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        *conn = Some(BufReader::new(s));
    }
    let reader = conn.as_mut().unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    // one write: head and body in two would wait on Nagle and delayed ACKs (40 ms each)
    if reader.get_mut().write_all(&request).is_err() {
        *conn = None;
        return Ok(0);
    }
    let mut status = String::new();
    if reader.read_line(&mut status).unwrap_or(0) == 0 {
        *conn = None;
        return Err("the server closed the connection without an answer".into());
    }
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status:?}"))?;
    let mut length = 0usize;
    let mut close = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if l == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    if code >= 400 && !body.starts_with(b"{\"error\"") {
        return Err(format!(
            "{code} without a JSON error body: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    if close {
        *conn = None;
    }
    Ok(code)
}

#[test]
fn fuzz_http_bodies_against_the_binary() {
    let server = ServerProcess::start(&["--policy", "api=10/s", "--semaphore", "db=1000000"]);
    let mut conn = None;
    let paths = [
        "/v1/check",
        "/v1/peek",
        "/v1/reset",
        "/v1/refund",
        "/v1/semaphore/acquire",
        "/v1/semaphore/release",
    ];
    let mut i = 0usize;
    fuzz("http", iterations(4), |body| {
        i += 1;
        let path = paths[i % paths.len()];
        let code = post(&mut conn, server.http, path, body)?;
        if code >= 500 && code != 503 {
            return Err(format!("{path}: {code}"));
        }
        Ok(())
    });
    // still alive and deciding
    let mut conn = None;
    assert_eq!(
        post(
            &mut conn,
            server.http,
            "/v1/check",
            br#"{"policy":"api","key":"after"}"#
        ),
        Ok(200)
    );
}
