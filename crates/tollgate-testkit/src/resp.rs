//! A minimal RESP2 client: enough to probe, inspect and poke test servers
//! without a Redis client library (readiness checks, `SCRIPT FLUSH`,
//! `CLUSTER INFO`, `TTL` checks in tests, ...).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`: the server refused the command. The text is the whole
    /// error line, e.g. `NOSCRIPT No matching script. ...`.
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$n` bulk string; `None` is the nil bulk string (`$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*n` array; `None` is the nil array (`*-1`).
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text: simple strings, bulk strings (lossy UTF-8) and
    /// integers; `None` for nil, errors and arrays.
    ///
    /// ```
    /// use tollgate_testkit::Resp;
    /// assert_eq!(Resp::Simple("PONG".into()).as_text().as_deref(), Some("PONG"));
    /// assert_eq!(Resp::Bulk(Some(b"v".to_vec())).as_text().as_deref(), Some("v"));
    /// assert_eq!(Resp::Bulk(None).as_text(), None);
    /// ```
    pub fn as_text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Resp::Integer(i) => Some(i.to_string()),
            _ => None,
        }
    }

    /// The reply as an integer (`:n`, or a bulk/simple string holding one).
    ///
    /// ```
    /// use tollgate_testkit::Resp;
    /// assert_eq!(Resp::Integer(7).as_int(), Some(7));
    /// assert_eq!(Resp::Bulk(Some(b"-3".to_vec())).as_int(), Some(-3));
    /// ```
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Resp::Integer(i) => Some(*i),
            Resp::Simple(_) | Resp::Bulk(Some(_)) => self.as_text()?.trim().parse().ok(),
            _ => None,
        }
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Resp::Error(_))
    }

    /// `Err(text)` for an error reply, `Ok(self)` otherwise.
    ///
    /// ```
    /// use tollgate_testkit::Resp;
    /// assert!(Resp::Error("ERR nope".into()).into_result().is_err());
    /// assert!(Resp::Integer(1).into_result().is_ok());
    /// ```
    pub fn into_result(self) -> Result<Resp, String> {
        match self {
            Resp::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub(crate) fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut buf = Vec::new();
    let n = r.read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed by the server",
        ));
    }
    if !buf.ends_with(b"\r\n") {
        return Err(bad("RESP line not terminated by CRLF"));
    }
    buf.truncate(buf.len() - 2);
    String::from_utf8(buf).map_err(|_| bad("RESP line is not UTF-8"))
}

/// Reads one RESP2 reply.
pub(crate) fn read(r: &mut impl BufRead) -> io::Result<Resp> {
    read_depth(r, 0)
}

fn read_depth(r: &mut impl BufRead, depth: usize) -> io::Result<Resp> {
    if depth > 64 {
        return Err(bad("RESP reply nested too deeply"));
    }
    let line = read_line(r)?;
    let Some(&kind) = line.as_bytes().first().filter(|b| b.is_ascii()) else {
        return Err(bad(format!("unexpected RESP reply line {line:?}")));
    };
    let rest = &line[1..];
    let int = |s: &str| -> io::Result<i64> {
        s.parse()
            .map_err(|_| bad(format!("bad RESP integer {s:?}")))
    };
    match kind {
        b'+' => Ok(Resp::Simple(rest.to_string())),
        b'-' => Ok(Resp::Error(rest.to_string())),
        b':' => Ok(Resp::Integer(int(rest)?)),
        b'$' => {
            let n = int(rest)?;
            if n < 0 {
                return Ok(Resp::Bulk(None));
            }
            if n > 512 * 1024 * 1024 {
                return Err(bad(format!("bulk string of {n} bytes is too long")));
            }
            let mut data = vec![0; n as usize + 2];
            r.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(bad("bulk string not terminated by CRLF"));
            }
            data.truncate(n as usize);
            Ok(Resp::Bulk(Some(data)))
        }
        b'*' => {
            let n = int(rest)?;
            if n < 0 {
                return Ok(Resp::Array(None));
            }
            if n > 1 << 24 {
                return Err(bad(format!("array of {n} items is too long")));
            }
            let items = (0..n)
                .map(|_| read_depth(r, depth + 1))
                .collect::<io::Result<Vec<_>>>()?;
            Ok(Resp::Array(Some(items)))
        }
        _ => Err(bad(format!("unexpected RESP reply line {line:?}"))),
    }
}

/// One connection to a Redis server speaking RESP2, with read/write timeouts.
///
/// ```
/// use tollgate_testkit::{must_have, RedisServer, RespClient, Resp};
///
/// let Some(redis) = must_have("redis-server", RedisServer::start()) else { return };
/// let mut conn = RespClient::connect(redis.port()).unwrap();
/// assert_eq!(conn.call(&["PING"]).unwrap(), Resp::Simple("PONG".into()));
/// conn.call(&["SET", "n", "1"]).unwrap();
/// assert_eq!(conn.call(&["INCR", "n"]).unwrap(), Resp::Integer(2));
/// ```
pub struct RespClient {
    reader: BufReader<TcpStream>,
}

impl RespClient {
    /// Connects to `127.0.0.1:port` with a 5 s timeout for connecting and for
    /// each read and write.
    pub fn connect(port: u16) -> Result<RespClient, String> {
        RespClient::connect_timeout(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(5),
        )
    }

    /// Connects to `addr`, with `timeout` for connecting and for each read
    /// and write.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> Result<RespClient, String> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| format!("cannot configure the connection to {addr}: {e}"))?;
        Ok(RespClient {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one command and reads its reply. An error reply is `Ok`
    /// ([`Resp::Error`]); `Err` means the connection failed.
    pub fn call(&mut self, args: &[&str]) -> Result<Resp, String> {
        let raw: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.call_bytes(&raw)
    }

    /// [`RespClient::call`] with binary-safe arguments.
    pub fn call_bytes(&mut self, args: &[&[u8]]) -> Result<Resp, String> {
        let name = args
            .first()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default();
        self.reader
            .get_mut()
            .write_all(&encode(args))
            .map_err(|e| format!("cannot send {name}: {e}"))?;
        read(&mut self.reader).map_err(|e| format!("no reply to {name}: {e}"))
    }
}

/// Sends one command to the Redis server on `127.0.0.1:port` over a fresh
/// connection and returns its reply (see [`RespClient`]).
///
/// ```
/// use tollgate_testkit::{must_have, redis_command, RedisServer, Resp};
///
/// let Some(redis) = must_have("redis-server", RedisServer::start()) else { return };
/// assert_eq!(redis_command(redis.port(), &["PING"]).unwrap(), Resp::Simple("PONG".into()));
/// ```
pub fn redis_command(port: u16, args: &[&str]) -> Result<Resp, String> {
    RespClient::connect(port)?.call(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<Resp> {
        read(&mut io::Cursor::new(bytes.to_vec()))
    }

    #[test]
    fn encodes_commands() {
        assert_eq!(
            encode(&[b"SET", b"k", b""]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn parses_replies() {
        assert_eq!(parse(b"+PONG\r\n").unwrap(), Resp::Simple("PONG".into()));
        assert_eq!(
            parse(b"-NOSCRIPT No matching script\r\n").unwrap(),
            Resp::Error("NOSCRIPT No matching script".into())
        );
        assert_eq!(parse(b":-12\r\n").unwrap(), Resp::Integer(-12));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Resp::Bulk(None));
        assert_eq!(
            parse(b"$4\r\na\r\nb\r\n").unwrap(),
            Resp::Bulk(Some(b"a\r\nb".to_vec()))
        );
        assert_eq!(parse(b"*-1\r\n").unwrap(), Resp::Array(None));
        assert_eq!(
            parse(b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n").unwrap(),
            Resp::Array(Some(vec![
                Resp::Integer(1),
                Resp::Array(Some(vec![Resp::Bulk(Some(b"x".to_vec()))]))
            ]))
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"").is_err());
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b":abc\r\n").is_err());
        assert!(parse(b"$3\r\nab").is_err());
        assert!(parse(b"+no crlf\n").is_err());
    }
}
