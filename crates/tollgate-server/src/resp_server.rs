//! The Redis-protocol (RESP2) endpoint.
//!
//! Commands: `CL.THROTTLE` (redis-cell compatible, see [`crate::cell`]), `TG.CHECK`,
//! `TG.PEEK`, `TG.RESET`, `TG.POLICIES`, `TG.ACQUIRE`, `TG.RELEASE` (semaphores), and what common clients send on connect: `PING`,
//! `ECHO`, `QUIT`, `HELLO` (protocol 2 only; `HELLO 3` answers `NOPROTO`, and clients fall
//! back to RESP2), `COMMAND` (`COUNT`, `DOCS`, `INFO`: empty), `CLIENT` (`SETNAME`, `SETINFO`,
//! `GETNAME`, `ID`), `SELECT 0`, `INFO`, `CONFIG GET` (empty, for `redis-benchmark`).
//!
//! Requests on one connection are answered in order; a pipelined batch is answered with one
//! write. A malformed request gets `-ERR Protocol error: …` and the connection is closed (the
//! framing is lost, as in Redis); a bad command gets an error reply and the connection
//! continues.

use crate::app::{App, AppError, Outcome};
use crate::cell;
use crate::resp::{parse_command, Limits, Parsed, Reply};
use bytes::{Buf, BytesMut};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Per-connection settings.
///
/// ```
/// let s = tollgate_server::resp_server::ConnSettings::default();
/// assert!(s.idle_timeout > s.request_timeout);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ConnSettings {
    /// Parser limits.
    pub limits: Limits,
    /// Close a connection with no pending request after this long.
    pub idle_timeout: Duration,
    /// Close a connection whose started request is not complete after this long.
    pub request_timeout: Duration,
}

impl Default for ConnSettings {
    fn default() -> Self {
        ConnSettings {
            limits: Limits::default(),
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
        }
    }
}

enum Flow {
    Continue,
    Quit,
}

/// Serves one RESP connection until the client quits, errs, times out, or `shutdown` fires
/// while the connection is between requests.
pub async fn serve_connection(
    mut stream: TcpStream,
    app: Arc<App>,
    settings: ConnSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut args: Vec<Range<usize>> = Vec::with_capacity(8);
    loop {
        // Answer every complete command in the buffer, in order.
        let mut pos = 0;
        let mut quit = false;
        loop {
            match parse_command(&buf[pos..], &settings.limits, &mut args) {
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Command { consumed }) => {
                    let frame = &buf[pos..pos + consumed];
                    if !args.is_empty() {
                        if let Flow::Quit = execute(&app, frame, &args, &mut out).await {
                            quit = true;
                            pos += consumed;
                            break;
                        }
                    }
                    pos += consumed;
                }
                Err(e) => {
                    Reply::error(&mut out, &format!("ERR {e}"));
                    let _ = stream.write_all(&out).await;
                    return;
                }
            }
        }
        buf.advance(pos);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if quit || *shutdown.borrow() && buf.is_empty() {
            return;
        }
        let wait = if buf.is_empty() {
            settings.idle_timeout
        } else {
            settings.request_timeout
        };
        buf.reserve(16 * 1024);
        tokio::select! {
            read = tokio::time::timeout(wait, stream.read_buf(&mut buf)) => match read {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => {
                    if !buf.is_empty() {
                        Reply::error(&mut out, "ERR request not completed in time; closing the connection");
                        let _ = stream.write_all(&out).await;
                    }
                    return;
                }
            },
            _ = shutdown.changed(), if buf.is_empty() => return,
        }
    }
}

fn upper_eq(arg: &[u8], name: &str) -> bool {
    arg.eq_ignore_ascii_case(name.as_bytes())
}

fn wrong_args(out: &mut BytesMut, name: &str) {
    Reply::error(
        out,
        &format!(
            "ERR wrong number of arguments for '{}' command",
            name.to_ascii_lowercase()
        ),
    );
}

fn app_error(out: &mut BytesMut, e: &AppError) {
    match e {
        AppError::StoreUnavailable(_) => Reply::error(out, &format!("STOREERR {e}")),
        _ => Reply::error(out, &format!("ERR {e}")),
    }
}

fn utf8_key<'a>(out: &mut BytesMut, key: &'a [u8]) -> Option<&'a str> {
    match std::str::from_utf8(key) {
        Ok(k) => Some(k),
        Err(_) => {
            Reply::error(out, "ERR the key must be valid UTF-8");
            None
        }
    }
}

/// Executes one command and appends its reply.
async fn execute(app: &App, frame: &[u8], args: &[Range<usize>], out: &mut BytesMut) -> Flow {
    let arg = |i: usize| &frame[args[i].clone()];
    let name = arg(0);
    let argc = args.len();
    if upper_eq(name, "CL.THROTTLE") {
        if argc != 5 && argc != 6 {
            Reply::error(
                out,
                "ERR Usage: cl.throttle <key> <max_burst> <count per period> <period> [<quantity>]",
            );
            return Flow::Continue;
        }
        let parsed = (|| {
            Ok::<_, String>((
                cell::parse_i64(arg(2))?,
                cell::parse_i64(arg(3))?,
                cell::parse_i64(arg(4))?,
                if argc == 6 {
                    cell::parse_i64(arg(5))?
                } else {
                    1
                },
            ))
        })();
        let (max_burst, count, period, quantity) = match parsed {
            Ok(p) => p,
            Err(e) => {
                Reply::error(out, &e);
                return Flow::Continue;
            }
        };
        let Some(key) = utf8_key(out, arg(1)) else {
            return Flow::Continue;
        };
        match cell::throttle(app, key, max_burst, count, period, quantity).await {
            Ok(r) => {
                Reply::array(out, 5);
                for v in r.to_array() {
                    Reply::integer(out, v);
                }
            }
            Err(e) => app_error(out, &e),
        }
        return Flow::Continue;
    }
    if upper_eq(name, "TG.CHECK") || upper_eq(name, "TG.PEEK") {
        let charge = upper_eq(name, "TG.CHECK");
        let cmd = if charge { "TG.CHECK" } else { "TG.PEEK" };
        if argc != 3 && argc != 4 {
            wrong_args(out, cmd);
            return Flow::Continue;
        }
        let cost = if argc == 4 {
            match cell::parse_i64(arg(3)) {
                Ok(c) if c >= 1 => c as u64,
                Ok(_) => {
                    Reply::error(out, "ERR the cost must be at least 1");
                    return Flow::Continue;
                }
                Err(e) => {
                    Reply::error(out, &e);
                    return Flow::Continue;
                }
            }
        } else {
            1
        };
        let policy = String::from_utf8_lossy(arg(1));
        let entry = match app.named(&policy) {
            Ok(e) => e,
            Err(e) => {
                app_error(out, &e);
                return Flow::Continue;
            }
        };
        let Some(key) = utf8_key(out, arg(2)) else {
            return Flow::Continue;
        };
        let result = if charge {
            app.check(&entry, key, cost).await
        } else {
            app.peek(&entry, key, cost).await
        };
        match result {
            Ok(Outcome { decision: d, .. }) => {
                Reply::array(out, 5);
                Reply::integer(out, i64::from(!d.allowed));
                Reply::integer(out, d.limit as i64);
                Reply::integer(out, d.remaining as i64);
                Reply::integer(
                    out,
                    if d.allowed {
                        -1
                    } else {
                        ceil_millis(d.retry_after)
                    },
                );
                Reply::integer(out, ceil_millis(d.reset_after));
            }
            Err(e) => app_error(out, &e),
        }
        return Flow::Continue;
    }
    if upper_eq(name, "TG.RESET") {
        if argc != 3 {
            wrong_args(out, "TG.RESET");
            return Flow::Continue;
        }
        let policy = String::from_utf8_lossy(arg(1));
        let Some(key) = utf8_key(out, arg(2)) else {
            return Flow::Continue;
        };
        match app.named(&policy) {
            Ok(entry) => match app.reset(&entry, key).await {
                Ok(()) => Reply::simple(out, "OK"),
                Err(e) => app_error(out, &e),
            },
            Err(e) => app_error(out, &e),
        }
        return Flow::Continue;
    }
    if upper_eq(name, "TG.ACQUIRE") {
        // TG.ACQUIRE <semaphore> [permits] [lease_ms]
        if !(2..=4).contains(&argc) {
            wrong_args(out, "TG.ACQUIRE");
            return Flow::Continue;
        }
        let mut nums = [1i64, 0];
        for (i, slot) in nums.iter_mut().enumerate() {
            if argc > i + 2 {
                match cell::parse_i64(arg(i + 2)) {
                    Ok(n) if n >= 1 => *slot = n,
                    Ok(_) => {
                        Reply::error(out, "ERR permits and lease_ms must be at least 1");
                        return Flow::Continue;
                    }
                    Err(e) => {
                        Reply::error(out, &e);
                        return Flow::Continue;
                    }
                }
            }
        }
        let sem = String::from_utf8_lossy(arg(1));
        let lease = (nums[1] > 0).then(|| Duration::from_millis(nums[1] as u64));
        match app
            .sem_acquire(&sem, nums[0] as u64, lease, Duration::ZERO)
            .await
        {
            Ok(crate::app::SemAcquire::Granted {
                lease_id,
                expires_in_us,
            }) => {
                Reply::array(out, 3);
                Reply::integer(out, 1);
                Reply::bulk(out, lease_id.as_bytes());
                Reply::integer(out, expires_in_us.div_ceil(1000) as i64);
            }
            Ok(crate::app::SemAcquire::Busy {
                in_use,
                retry_after_us,
            }) => {
                Reply::array(out, 3);
                Reply::integer(out, 0);
                Reply::integer(out, in_use as i64);
                Reply::integer(out, retry_after_us.map_or(-1, |u| u.div_ceil(1000) as i64));
            }
            Err(e) => app_error(out, &e),
        }
        return Flow::Continue;
    }
    if upper_eq(name, "TG.RELEASE") {
        if argc != 3 {
            wrong_args(out, "TG.RELEASE");
            return Flow::Continue;
        }
        let sem = String::from_utf8_lossy(arg(1));
        let id = String::from_utf8_lossy(arg(2));
        match app.sem_release(&sem, &id).await {
            Ok(released) => Reply::integer(out, i64::from(released)),
            Err(e) => app_error(out, &e),
        }
        return Flow::Continue;
    }
    if upper_eq(name, "TG.POLICIES") {
        let policies: Vec<_> = app.policies().collect();
        Reply::array(out, policies.len());
        for p in policies {
            Reply::array(out, 2);
            Reply::bulk(out, p.name().as_bytes());
            Reply::bulk(out, p.policy().to_string().as_bytes());
        }
        return Flow::Continue;
    }
    if upper_eq(name, "PING") {
        match argc {
            1 => Reply::simple(out, "PONG"),
            2 => Reply::bulk(out, arg(1)),
            _ => wrong_args(out, "PING"),
        }
        return Flow::Continue;
    }
    if upper_eq(name, "ECHO") {
        if argc == 2 {
            Reply::bulk(out, arg(1));
        } else {
            wrong_args(out, "ECHO");
        }
        return Flow::Continue;
    }
    if upper_eq(name, "QUIT") {
        Reply::simple(out, "OK");
        return Flow::Quit;
    }
    if upper_eq(name, "HELLO") {
        if argc >= 2 && arg(1) != b"2" {
            Reply::error(
                out,
                "NOPROTO unsupported protocol version (tollgate-server speaks RESP2)",
            );
            return Flow::Continue;
        }
        let fields: [(&str, HelloValue); 7] = [
            ("server", HelloValue::Str("tollgate-server")),
            ("version", HelloValue::Str(env!("CARGO_PKG_VERSION"))),
            ("proto", HelloValue::Int(2)),
            ("id", HelloValue::Int(1)),
            ("mode", HelloValue::Str("standalone")),
            ("role", HelloValue::Str("master")),
            ("modules", HelloValue::EmptyArray),
        ];
        Reply::array(out, fields.len() * 2);
        for (k, v) in fields {
            Reply::bulk(out, k.as_bytes());
            match v {
                HelloValue::Str(s) => Reply::bulk(out, s.as_bytes()),
                HelloValue::Int(n) => Reply::integer(out, n),
                HelloValue::EmptyArray => Reply::array(out, 0),
            }
        }
        return Flow::Continue;
    }
    if upper_eq(name, "COMMAND") {
        if argc >= 2 && upper_eq(arg(1), "COUNT") {
            Reply::integer(out, 0);
        } else {
            Reply::array(out, 0);
        }
        return Flow::Continue;
    }
    if upper_eq(name, "CLIENT") {
        if argc >= 2 && upper_eq(arg(1), "GETNAME") {
            Reply::null(out);
        } else if argc >= 2 && upper_eq(arg(1), "ID") {
            Reply::integer(out, 1);
        } else {
            Reply::simple(out, "OK");
        }
        return Flow::Continue;
    }
    if upper_eq(name, "SELECT") {
        if argc == 2 && arg(1) == b"0" {
            Reply::simple(out, "OK");
        } else {
            Reply::error(
                out,
                "ERR DB index is out of range (tollgate-server has only 0)",
            );
        }
        return Flow::Continue;
    }
    if upper_eq(name, "INFO") {
        let info = format!(
            "# Server\r\nredis_version:7.0.0\r\ntollgate_version:{}\r\nredis_mode:standalone\r\ntollgate_store:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            app.store_description()
        );
        Reply::bulk(out, info.as_bytes());
        return Flow::Continue;
    }
    if upper_eq(name, "CONFIG") {
        Reply::array(out, 0);
        return Flow::Continue;
    }
    let shown: Vec<String> = args[1..]
        .iter()
        .take(8)
        .map(|r| {
            format!(
                "'{}'",
                String::from_utf8_lossy(&frame[r.clone()])
                    .chars()
                    .take(64)
                    .collect::<String>()
            )
        })
        .collect();
    Reply::error(
        out,
        &format!(
            "ERR unknown command '{}', with args beginning with: {}",
            String::from_utf8_lossy(name)
                .chars()
                .take(64)
                .collect::<String>(),
            shown.join(" ")
        ),
    );
    Flow::Continue
}

enum HelloValue {
    Str(&'static str),
    Int(i64),
    EmptyArray,
}

fn ceil_millis(d: Duration) -> i64 {
    d.as_micros().div_ceil(1000) as i64
}
