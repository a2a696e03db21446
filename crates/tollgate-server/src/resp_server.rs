//! The Redis-protocol endpoint: RESP2 and RESP3, `MULTI`/`EXEC`, so today's clients connect
//! on their defaults (redis-py 8 and node-redis 5 send `HELLO 3` first).
//!
//! Commands: `CL.THROTTLE` (redis-cell compatible, see [`crate::cell`]), `TG.CHECK`,
//! `TG.PEEK`, `TG.RESET`, `TG.REFUND`, `TG.POLICIES`, `TG.ACQUIRE`, `TG.RELEASE`,
//! `TG.EXTEND` (semaphores); transactions: `MULTI`, `EXEC`, `DISCARD` (`WATCH` is refused,
//! `UNWATCH` accepted); and what clients send on connect: `HELLO [2|3] [AUTH u p]
//! [SETNAME n]`, `AUTH`, `CLIENT` (`SETINFO`, `SETNAME`, `GETNAME`, `ID`, `INFO`),
//! `SELECT 0`, `PING`, `ECHO`, `QUIT`, `COMMAND` (`COUNT`, `DOCS`, `INFO`, `LIST`: empty),
//! `INFO`, `CONFIG GET` (empty, for `redis-benchmark`).
//!
//! Each connection starts in RESP2 and switches with `HELLO 3` / `HELLO 2`; replies differ
//! only where the protocols do (nulls, maps, verbatim text). Requests on one connection are
//! answered in order; a pipelined batch is answered with one write. A malformed request gets
//! `-ERR Protocol error: …` and the connection is closed (the framing is lost, as in Redis); a
//! bad command gets an error reply and the connection continues.
//!
//! After `MULTI`, commands are checked (known name, number of arguments) and queued
//! (`+QUEUED`); `EXEC` runs them in order and answers every reply in one array, or
//! `-EXECABORT` when one of them failed that check. Each command decides on its own, as it
//! would outside the transaction: other connections' commands may run between them, and a
//! failing command does not undo the others (as in Redis, which has no rollback).

mod commands;
mod connection;

use crate::app::App;
use crate::resp::{parse_command, Limits, Parsed, Protocol, Reply};
use bytes::{Buf, BytesMut};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Close a connection whose started request is not complete this long after its first
    /// byte arrived: the bound is on the whole command, however the client spreads its
    /// bytes (a slow client cannot hold a connection slot by sending a byte now and then).
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

/// The most commands one `MULTI` may queue; one more is refused and aborts the transaction
/// (`EXEC` answers `EXECABORT`), so a client cannot grow the server's memory without bound.
///
/// ```
/// assert_eq!(tollgate_server::resp_server::MAX_QUEUED_COMMANDS, 10_000);
/// ```
pub const MAX_QUEUED_COMMANDS: usize = 10_000;
/// The most bytes of commands one `MULTI` may queue (as [`MAX_QUEUED_COMMANDS`]).
///
/// ```
/// assert_eq!(tollgate_server::resp_server::MAX_QUEUED_BYTES, 8 * 1024 * 1024);
/// ```
pub const MAX_QUEUED_BYTES: usize = 8 << 20;

enum Flow {
    Continue,
    Quit,
}

/// The arguments of one command: ranges into its frame.
pub(crate) struct Args<'a> {
    frame: &'a [u8],
    ranges: &'a [Range<usize>],
}

impl<'a> Args<'a> {
    fn get(&self, i: usize) -> &'a [u8] {
        &self.frame[self.ranges[i].clone()]
    }

    fn len(&self) -> usize {
        self.ranges.len()
    }
}

/// A command queued after `MULTI`.
struct Queued {
    cmd: commands::Cmd,
    frame: Vec<u8>,
    ranges: Vec<Range<usize>>,
}

/// An open `MULTI`.
#[derive(Default)]
struct Transaction {
    queued: Vec<Queued>,
    bytes: usize,
    /// A command failed its check while queuing: `EXEC` answers `EXECABORT`.
    aborted: bool,
}

/// One connection's state.
pub(crate) struct Session {
    proto: Protocol,
    id: u64,
    name: Option<Vec<u8>>,
    lib_name: Vec<u8>,
    lib_ver: Vec<u8>,
    tx: Option<Transaction>,
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

impl Session {
    fn new() -> Session {
        Session {
            proto: Protocol::Resp2,
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            name: None,
            lib_name: Vec::new(),
            lib_ver: Vec::new(),
            tx: None,
        }
    }

    /// Handles one command: transaction control, queuing inside `MULTI`, or running it.
    async fn handle(&mut self, app: &App, args: &Args<'_>, out: &mut BytesMut) -> Flow {
        let name = args.get(0);
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("QUIT") {
            Reply::simple(out, "OK");
            return Flow::Quit;
        }
        if is("MULTI") {
            if args.len() != 1 {
                self.fail_in_tx(out, &commands::wrong_args("MULTI"));
            } else if self.tx.is_some() {
                Reply::error(out, "ERR MULTI calls can not be nested");
            } else {
                self.tx = Some(Transaction::default());
                Reply::simple(out, "OK");
            }
            return Flow::Continue;
        }
        if is("EXEC") || is("DISCARD") {
            let exec = is("EXEC");
            let Some(tx) = self.tx.take() else {
                let n = if exec { "EXEC" } else { "DISCARD" };
                Reply::error(out, &format!("ERR {n} without MULTI"));
                return Flow::Continue;
            };
            if !exec {
                Reply::simple(out, "OK");
            } else if tx.aborted {
                Reply::error(
                    out,
                    "EXECABORT Transaction discarded because of previous errors.",
                );
            } else {
                Reply::array(out, tx.queued.len());
                for q in &tx.queued {
                    let args = Args {
                        frame: &q.frame,
                        ranges: &q.ranges,
                    };
                    commands::run(q.cmd, app, self, &args, out).await;
                }
            }
            return Flow::Continue;
        }
        if is("WATCH") {
            if self.tx.is_some() {
                self.fail_in_tx(out, "ERR WATCH inside MULTI is not allowed");
            } else {
                Reply::error(
                    out,
                    "ERR WATCH is not supported: tollgate-server has no keys a client can watch (MULTI/EXEC without WATCH works)",
                );
            }
            return Flow::Continue;
        }
        let cmd = match commands::resolve(args) {
            Ok(cmd) => cmd,
            Err(e) => {
                self.fail_in_tx(out, &e);
                return Flow::Continue;
            }
        };
        if let Some(tx) = &mut self.tx {
            let size = args.frame.len();
            if tx.queued.len() >= MAX_QUEUED_COMMANDS || tx.bytes + size > MAX_QUEUED_BYTES {
                tx.aborted = true;
                Reply::error(
                    out,
                    &format!("ERR too many commands in one transaction (at most {MAX_QUEUED_COMMANDS} commands and {MAX_QUEUED_BYTES} bytes)"),
                );
            } else {
                tx.bytes += size;
                tx.queued.push(Queued {
                    cmd,
                    frame: args.frame.to_vec(),
                    ranges: args.ranges.to_vec(),
                });
                Reply::simple(out, "QUEUED");
            }
            return Flow::Continue;
        }
        commands::run(cmd, app, self, args, out).await;
        Flow::Continue
    }

    /// An error reply; inside `MULTI` it also makes `EXEC` answer `EXECABORT`.
    fn fail_in_tx(&mut self, out: &mut BytesMut, message: &str) {
        if let Some(tx) = &mut self.tx {
            tx.aborted = true;
        }
        Reply::error(out, message);
    }
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
    let mut ranges: Vec<Range<usize>> = Vec::with_capacity(8);
    let mut session = Session::new();
    // When the first byte of the incomplete command in `buf` arrived.
    let mut started: Option<tokio::time::Instant> = None;
    loop {
        // Answer every complete command in the buffer, in order.
        let mut pos = 0;
        let mut quit = false;
        loop {
            match parse_command(&buf[pos..], &settings.limits, &mut ranges) {
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Command { consumed }) => {
                    if !ranges.is_empty() {
                        let args = Args {
                            frame: &buf[pos..pos + consumed],
                            ranges: &ranges,
                        };
                        if let Flow::Quit = session.handle(&app, &args, &mut out).await {
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
        if pos > 0 || buf.is_empty() {
            started = None; // a command completed: what is left began with the last read
        }
        if !buf.is_empty() && started.is_none() {
            started = Some(tokio::time::Instant::now());
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if quit || *shutdown.borrow() && buf.is_empty() {
            return;
        }
        let wait = match started {
            None => settings.idle_timeout,
            Some(at) => settings.request_timeout.saturating_sub(at.elapsed()),
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
