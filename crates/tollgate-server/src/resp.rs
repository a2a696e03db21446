//! A small RESP (Redis protocol) request parser and a RESP2/RESP3 reply encoder.
//!
//! Written here rather than taken from a crate because the server needs only the request side
//! of RESP (arrays of bulk strings, plus inline commands) and wants it zero-copy: the parser
//! returns argument *ranges* into the connection's read buffer, so a pipelined batch of
//! commands is decoded without one allocation per argument. It is about 200 lines and fully
//! tested below; the general-purpose crates (`redis-protocol`, `resp`) parse every reply type
//! into owned values, which is the wrong trade-off for a server's hot path.
//!
//! The parser handles partial reads (it reports [`Parsed::Incomplete`] until a whole command
//! is buffered), inline commands (`PING\r\n`, as typed into `telnet`), and rejects malformed
//! or oversized input with a [`ProtocolError`] whose text is sent back as a RESP error.
//!
//! ```
//! use tollgate_server::resp::{parse_command, Parsed, Limits};
//! let buf = b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n*1\r\n$4\r\nPI";
//! let mut args = Vec::new();
//! let Parsed::Command { consumed } = parse_command(buf, &Limits::default(), &mut args).unwrap() else {
//!     panic!("a whole command is buffered");
//! };
//! assert_eq!(consumed, 22);
//! assert_eq!(&buf[args[1].clone()], b"hi");
//! // the second command is not complete yet
//! assert_eq!(parse_command(&buf[consumed..], &Limits::default(), &mut args).unwrap(), Parsed::Incomplete);
//! ```

use bytes::{BufMut, BytesMut};
use std::ops::Range;

/// Size limits the parser enforces on one command.
///
/// ```
/// let l = tollgate_server::resp::Limits::default();
/// assert_eq!(l.max_args, 1024);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most arguments in one command (including the command name).
    pub max_args: usize,
    /// Largest single argument in bytes.
    pub max_arg_bytes: usize,
    /// Largest whole command in bytes (also the longest inline command line).
    pub max_command_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_args: 1024,
            max_arg_bytes: 64 * 1024,
            max_command_bytes: 64 * 1024,
        }
    }
}

/// The outcome of parsing the start of a buffer.
///
/// ```
/// use tollgate_server::resp::{parse_command, Parsed, Limits};
/// let mut args = Vec::new();
/// assert_eq!(parse_command(b"", &Limits::default(), &mut args).unwrap(), Parsed::Incomplete);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A command was parsed: its arguments' ranges are in the `args` vector, and `consumed`
    /// bytes of the buffer belong to it. An empty `args` is an empty command (a blank inline
    /// line or `*0`), which is skipped without reply, as Redis does.
    Command {
        /// Bytes of the buffer used by this command.
        consumed: usize,
    },
}

/// Input that is not valid RESP, or too large. The framing is lost: the server replies with
/// this error and closes the connection, as Redis does.
///
/// ```
/// use tollgate_server::resp::{parse_command, Limits};
/// let mut args = Vec::new();
/// let e = parse_command(b"*1\r\n+PING\r\n", &Limits::default(), &mut args).unwrap_err();
/// assert_eq!(e.to_string(), "Protocol error: expected '$', got '+'");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

/// Parses one command from the start of `buf` into `args` (cleared first).
///
/// ```
/// use tollgate_server::resp::{parse_command, Parsed, Limits};
/// let mut args = Vec::new();
/// let buf = b"CL.THROTTLE user 15 30 60\r\n";
/// assert_eq!(parse_command(buf, &Limits::default(), &mut args).unwrap(), Parsed::Command { consumed: buf.len() });
/// assert_eq!(&buf[args[0].clone()], b"CL.THROTTLE");
/// assert_eq!(args.len(), 5);
/// ```
pub fn parse_command(
    buf: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
) -> Result<Parsed, ProtocolError> {
    args.clear();
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'*') => parse_multibulk(buf, limits, args),
        Some(_) => parse_inline(buf, limits, args),
    }
}

/// Finds `\r\n` starting at `from`; returns the index of `\r`.
#[inline]
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < buf.len() {
        match buf[i + 1..].iter().position(|&b| b == b'\n') {
            None => return None,
            Some(p) => {
                let nl = i + 1 + p;
                if buf[nl - 1] == b'\r' {
                    return Some(nl - 1);
                }
                i = nl;
            }
        }
    }
    None
}

/// Parses a decimal integer (optionally negative) from a RESP header line.
#[inline]
fn parse_int(line: &[u8]) -> Option<i64> {
    let (neg, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if neg { -n } else { n })
}

fn parse_multibulk(
    buf: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
) -> Result<Parsed, ProtocolError> {
    let Some(end) = find_crlf(buf, 1) else {
        if buf.len() > 32 {
            return Err(ProtocolError("too big mbulk count string".into()));
        }
        return Ok(Parsed::Incomplete);
    };
    let count =
        parse_int(&buf[1..end]).ok_or_else(|| ProtocolError("invalid multibulk length".into()))?;
    let mut pos = end + 2;
    if count <= 0 {
        return Ok(Parsed::Command { consumed: pos });
    }
    if count as u64 > limits.max_args as u64 {
        return Err(ProtocolError(format!(
            "invalid multibulk length (at most {} arguments)",
            limits.max_args
        )));
    }
    for _ in 0..count {
        if pos >= buf.len() {
            return Ok(Parsed::Incomplete);
        }
        if buf[pos] != b'$' {
            return Err(ProtocolError(format!(
                "expected '$', got '{}'",
                (buf[pos] as char).escape_default()
            )));
        }
        let Some(end) = find_crlf(buf, pos + 1) else {
            if buf.len() - pos > 32 {
                return Err(ProtocolError("too big bulk count string".into()));
            }
            return Ok(Parsed::Incomplete);
        };
        let len = parse_int(&buf[pos + 1..end])
            .filter(|&n| n >= 0)
            .ok_or_else(|| ProtocolError("invalid bulk length".into()))? as u64;
        if len > limits.max_arg_bytes as u64 {
            return Err(ProtocolError(format!(
                "invalid bulk length (an argument is at most {} bytes)",
                limits.max_arg_bytes
            )));
        }
        let start = end + 2;
        let stop = start + len as usize;
        if stop > limits.max_command_bytes {
            return Err(ProtocolError(format!(
                "command too large (at most {} bytes)",
                limits.max_command_bytes
            )));
        }
        if buf.len() < stop + 2 {
            return Ok(Parsed::Incomplete);
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return Err(ProtocolError("bulk string not terminated by CRLF".into()));
        }
        args.push(start..stop);
        pos = stop + 2;
    }
    Ok(Parsed::Command { consumed: pos })
}

fn parse_inline(
    buf: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
) -> Result<Parsed, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_command_bytes {
            return Err(ProtocolError("too big inline request".into()));
        }
        return Ok(Parsed::Incomplete);
    };
    if nl > limits.max_command_bytes {
        return Err(ProtocolError("too big inline request".into()));
    }
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let mut i = 0;
    while i < line_end {
        while i < line_end && buf[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < line_end && !buf[i].is_ascii_whitespace() {
            i += 1;
        }
        if i > start {
            if args.len() == limits.max_args {
                return Err(ProtocolError("too many arguments in inline request".into()));
            }
            args.push(start..i);
        }
    }
    Ok(Parsed::Command { consumed: nl + 1 })
}

/// The reply protocol of a connection: RESP2 until the client sends `HELLO 3`.
///
/// Most replies are encoded the same in both; they differ for nulls (`$-1` / `_`), maps
/// (a flat array of pairs / `%`) and verbatim text (`$` / `=`).
///
/// ```
/// use tollgate_server::resp::{Protocol, Reply};
/// let mut out = bytes::BytesMut::new();
/// Reply::nil(&mut out, Protocol::Resp3);
/// Reply::nil(&mut out, Protocol::Resp2);
/// assert_eq!(&out[..], b"_\r\n$-1\r\n");
/// assert_eq!(Protocol::from_version(3), Some(Protocol::Resp3));
/// assert_eq!(Protocol::from_version(4), None);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2, every connection's protocol at start.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

impl Protocol {
    /// The protocol for a `HELLO` version number (2 or 3), `None` for any other.
    ///
    /// ```
    /// use tollgate_server::resp::Protocol;
    /// assert_eq!(Protocol::from_version(2), Some(Protocol::Resp2));
    /// ```
    #[must_use]
    pub fn from_version(version: i64) -> Option<Protocol> {
        match version {
            2 => Some(Protocol::Resp2),
            3 => Some(Protocol::Resp3),
            _ => None,
        }
    }

    /// The version number (2 or 3).
    ///
    /// ```
    /// assert_eq!(tollgate_server::resp::Protocol::Resp3.version(), 3);
    /// ```
    #[must_use]
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// Appends RESP2 and RESP3 replies to an output buffer (the methods without a [`Protocol`]
/// argument encode the same in both).
///
/// ```
/// use tollgate_server::resp::Reply;
/// let mut out = bytes::BytesMut::new();
/// Reply::array(&mut out, 2);
/// Reply::integer(&mut out, -1);
/// Reply::bulk(&mut out, b"ok");
/// assert_eq!(&out[..], b"*2\r\n:-1\r\n$2\r\nok\r\n");
/// ```
#[derive(Debug)]
pub struct Reply;

impl Reply {
    /// `+text` (must not contain CR or LF).
    ///
    /// ```
    /// let mut out = bytes::BytesMut::new();
    /// tollgate_server::resp::Reply::simple(&mut out, "PONG");
    /// assert_eq!(&out[..], b"+PONG\r\n");
    /// ```
    pub fn simple(out: &mut BytesMut, text: &str) {
        out.reserve(text.len() + 3);
        out.put_u8(b'+');
        out.put_slice(text.as_bytes());
        out.put_slice(b"\r\n");
    }

    /// `-message`; CR and LF in the message are replaced by spaces.
    ///
    /// ```
    /// let mut out = bytes::BytesMut::new();
    /// tollgate_server::resp::Reply::error(&mut out, "ERR bad\r\nthing");
    /// assert_eq!(&out[..], b"-ERR bad  thing\r\n");
    /// ```
    pub fn error(out: &mut BytesMut, message: &str) {
        out.reserve(message.len() + 3);
        out.put_u8(b'-');
        for &b in message.as_bytes() {
            out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
        out.put_slice(b"\r\n");
    }

    /// `:n`.
    ///
    /// ```
    /// let mut out = bytes::BytesMut::new();
    /// tollgate_server::resp::Reply::integer(&mut out, 42);
    /// assert_eq!(&out[..], b":42\r\n");
    /// ```
    pub fn integer(out: &mut BytesMut, n: i64) {
        out.put_u8(b':');
        put_decimal(out, n);
        out.put_slice(b"\r\n");
    }

    /// `*n` (the header of an array of `n` elements).
    ///
    /// ```
    /// let mut out = bytes::BytesMut::new();
    /// tollgate_server::resp::Reply::array(&mut out, 0);
    /// assert_eq!(&out[..], b"*0\r\n");
    /// ```
    pub fn array(out: &mut BytesMut, n: usize) {
        out.put_u8(b'*');
        put_decimal(out, n as i64);
        out.put_slice(b"\r\n");
    }

    /// `$len\r\nbytes`.
    ///
    /// ```
    /// let mut out = bytes::BytesMut::new();
    /// tollgate_server::resp::Reply::bulk(&mut out, b"");
    /// assert_eq!(&out[..], b"$0\r\n\r\n");
    /// ```
    pub fn bulk(out: &mut BytesMut, data: &[u8]) {
        out.put_u8(b'$');
        put_decimal(out, data.len() as i64);
        out.put_slice(b"\r\n");
        out.put_slice(data);
        out.put_slice(b"\r\n");
    }

    /// The RESP2 null bulk string `$-1`.
    ///
    /// ```
    /// let mut out = bytes::BytesMut::new();
    /// tollgate_server::resp::Reply::null(&mut out);
    /// assert_eq!(&out[..], b"$-1\r\n");
    /// ```
    pub fn null(out: &mut BytesMut) {
        out.put_slice(b"$-1\r\n");
    }

    /// A null in the connection's protocol: `$-1` in RESP2, `_` in RESP3.
    ///
    /// ```
    /// use tollgate_server::resp::{Protocol, Reply};
    /// let mut out = bytes::BytesMut::new();
    /// Reply::nil(&mut out, Protocol::Resp3);
    /// assert_eq!(&out[..], b"_\r\n");
    /// ```
    pub fn nil(out: &mut BytesMut, proto: Protocol) {
        match proto {
            Protocol::Resp2 => Self::null(out),
            Protocol::Resp3 => out.put_slice(b"_\r\n"),
        }
    }

    /// The header of a map of `pairs` key/value pairs: `%pairs` in RESP3, an array of
    /// `2 × pairs` elements in RESP2. Append each key, then its value.
    ///
    /// ```
    /// use tollgate_server::resp::{Protocol, Reply};
    /// let mut out = bytes::BytesMut::new();
    /// Reply::map(&mut out, 1, Protocol::Resp3);
    /// Reply::map(&mut out, 1, Protocol::Resp2);
    /// assert_eq!(&out[..], b"%1\r\n*2\r\n");
    /// ```
    pub fn map(out: &mut BytesMut, pairs: usize, proto: Protocol) {
        match proto {
            Protocol::Resp2 => Self::array(out, pairs.saturating_mul(2)),
            Protocol::Resp3 => {
                out.put_u8(b'%');
                put_decimal(out, pairs as i64);
                out.put_slice(b"\r\n");
            }
        }
    }

    /// Text for humans (`INFO`): a verbatim string `=len\r\ntxt:…` in RESP3, a bulk string in
    /// RESP2.
    ///
    /// ```
    /// use tollgate_server::resp::{Protocol, Reply};
    /// let mut out = bytes::BytesMut::new();
    /// Reply::verbatim(&mut out, b"a", Protocol::Resp3);
    /// assert_eq!(&out[..], b"=5\r\ntxt:a\r\n");
    /// ```
    pub fn verbatim(out: &mut BytesMut, text: &[u8], proto: Protocol) {
        match proto {
            Protocol::Resp2 => Self::bulk(out, text),
            Protocol::Resp3 => {
                out.put_u8(b'=');
                put_decimal(out, text.len() as i64 + 4);
                out.put_slice(b"\r\ntxt:");
                out.put_slice(text);
                out.put_slice(b"\r\n");
            }
        }
    }
}

/// Writes `n` in decimal without allocating.
fn put_decimal(out: &mut BytesMut, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(buf: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut out = Vec::new();
        let mut args = Vec::new();
        let mut pos = 0;
        loop {
            match parse_command(&buf[pos..], &Limits::default(), &mut args)? {
                Parsed::Incomplete => return Ok(out),
                Parsed::Command { consumed } => {
                    out.push(
                        args.iter()
                            .map(|r| buf[pos..][r.clone()].to_vec())
                            .collect(),
                    );
                    pos += consumed;
                }
            }
        }
    }

    #[test]
    fn every_split_point_of_a_pipeline_parses_the_same() {
        let input =
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nl\r\nPING\r\n*0\r\n*1\r\n$4\r\nQUIT\r\n";
        let whole = parse_all(input).unwrap();
        assert_eq!(whole.len(), 4);
        assert_eq!(whole[0][2], b"va\r\nl");
        assert_eq!(whole[1], vec![b"PING".to_vec()]);
        assert!(whole[2].is_empty());
        // Feed the input in two pieces at every split point: the first piece yields a prefix
        // of the commands, and the rest follows once the remainder arrives.
        // Parses the complete commands in `buf` from `pos` on, into `got`; moves `pos` past them.
        let drain = |buf: &[u8], pos: &mut usize, got: &mut Vec<Vec<Vec<u8>>>| {
            let mut args = Vec::new();
            while let Parsed::Command { consumed } =
                parse_command(&buf[*pos..], &Limits::default(), &mut args).unwrap()
            {
                got.push(
                    args.iter()
                        .map(|r| buf[*pos..][r.clone()].to_vec())
                        .collect(),
                );
                *pos += consumed;
            }
        };
        for split in 0..input.len() {
            let mut buf = input[..split].to_vec();
            let (mut got, mut pos) = (Vec::new(), 0);
            drain(&buf, &mut pos, &mut got);
            buf.extend_from_slice(&input[split..]);
            drain(&buf, &mut pos, &mut got);
            assert_eq!(got, whole, "split at {split}");
        }
    }

    #[test]
    fn inline_commands_split_on_whitespace() {
        let got = parse_all(b"  CL.THROTTLE  k 1\t2 3\n\r\n").unwrap();
        assert_eq!(got[0].len(), 5);
        assert_eq!(got[0][4], b"3");
        assert!(got[1].is_empty());
    }

    #[test]
    fn malformed_input_is_a_protocol_error() {
        for bad in [
            &b"*x\r\n"[..],
            b"*1\r\n:1\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$3\r\nabcde\r\n",
            b"*99999999\r\n",
            b"*1\r\n$99999999\r\n",
        ] {
            assert!(
                parse_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn oversized_inline_line_is_rejected() {
        let line = vec![b'a'; 70 * 1024];
        assert!(parse_all(&line).is_err());
    }

    #[test]
    fn integers_encode() {
        let mut out = BytesMut::new();
        Reply::integer(&mut out, i64::MIN);
        assert_eq!(&out[..], format!(":{}\r\n", i64::MIN).as_bytes());
    }
}
