//! The connection commands clients send on connect or for housekeeping: `HELLO` (RESP2 and
//! RESP3), `AUTH`, `CLIENT`, `SELECT`, `PING`, `ECHO`, `INFO`, `COMMAND`, `CONFIG GET`,
//! `UNWATCH`. Replies follow Redis 7, in the connection's protocol.

use super::commands::{lossy, wrong_args, Cmd};
use super::{Args, Session};
use crate::app::App;
use crate::cell;
use crate::resp::{Protocol, Reply};
use bytes::BytesMut;

/// Runs a connection command (anything [`super::commands::run`] does not handle itself).
pub(super) fn run(cmd: Cmd, app: &App, session: &mut Session, args: &Args<'_>, out: &mut BytesMut) {
    match cmd {
        Cmd::Ping => match args.len() {
            1 => Reply::simple(out, "PONG"),
            _ => Reply::bulk(out, args.get(1)),
        },
        Cmd::Echo => Reply::bulk(out, args.get(1)),
        Cmd::Hello => hello(session, args, out),
        Cmd::Auth => match auth(args.get(1), (args.len() == 3).then(|| args.get(2))) {
            Ok(()) => Reply::simple(out, "OK"),
            Err(e) => Reply::error(out, &e),
        },
        Cmd::Client => client(session, args, out),
        Cmd::Select => match cell::parse_i64(args.get(1)) {
            Ok(0) => Reply::simple(out, "OK"),
            Ok(_) => Reply::error(
                out,
                "ERR DB index is out of range (tollgate-server has only 0)",
            ),
            Err(_) => Reply::error(out, "ERR value is not an integer or out of range"),
        },
        Cmd::Info => {
            let info = format!(
                "# Server\r\nredis_version:7.0.0\r\ntollgate_version:{}\r\nredis_mode:standalone\r\ntollgate_store:{}\r\n",
                env!("CARGO_PKG_VERSION"),
                app.store_description()
            );
            Reply::verbatim(out, info.as_bytes(), session.proto);
        }
        Cmd::Command => command(session, args, out),
        Cmd::Config => {
            if args.get(1).eq_ignore_ascii_case(b"GET") && args.len() >= 3 {
                // No Redis configuration here (redis-benchmark asks for `save` and
                // `appendonly`): the empty answer Redis gives for unknown parameters.
                Reply::map(out, 0, session.proto);
            } else if args.get(1).eq_ignore_ascii_case(b"GET") {
                Reply::error(out, &wrong_args("config|get"));
            } else {
                Reply::error(
                    out,
                    &format!(
                        "ERR unknown subcommand '{}'. tollgate-server supports CONFIG GET only.",
                        lossy(args.get(1), 64)
                    ),
                );
            }
        }
        // Nothing can be watched (see WATCH), so nothing is to unwatch.
        Cmd::Unwatch => Reply::simple(out, "OK"),
        _ => Reply::error(
            out,
            "ERR internal error: command routed to the wrong module",
        ),
    }
}

/// `AUTH [username] password`. The server has no authentication of its own (it answers like
/// a Redis without `requirepass`): the `default` user is accepted with any password, the
/// one-argument form is an error as in Redis, and other users do not exist.
fn auth(first: &[u8], password: Option<&[u8]>) -> Result<(), String> {
    match password {
        None => Err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?".into()),
        Some(_) if first == b"default" => Ok(()),
        Some(_) => Err("WRONGPASS invalid username-password pair or user is disabled.".into()),
    }
}

/// Client names and library names: printable ASCII without spaces, as in Redis.
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`: switches the
/// connection's protocol and answers the server's description as a map (a RESP3 map after
/// `HELLO 3`, a flat array of pairs in RESP2). Nothing changes when any part is invalid.
fn hello(session: &mut Session, args: &Args<'_>, out: &mut BytesMut) {
    let mut proto = session.proto;
    if args.len() >= 2 {
        let Ok(version) = cell::parse_i64(args.get(1)) else {
            return Reply::error(
                out,
                "ERR Protocol version is not an integer or out of range",
            );
        };
        match Protocol::from_version(version) {
            Some(p) => proto = p,
            None => {
                return Reply::error(
                    out,
                    &format!("NOPROTO unsupported protocol version {version} (tollgate-server speaks RESP2 and RESP3)"),
                )
            }
        }
    }
    let mut name = None;
    let mut i = 2;
    while i < args.len() {
        let opt = args.get(i);
        if opt.eq_ignore_ascii_case(b"AUTH") && i + 2 < args.len() {
            if let Err(e) = auth(args.get(i + 1), Some(args.get(i + 2))) {
                return Reply::error(out, &e);
            }
            i += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && i + 1 < args.len() {
            if !valid_name(args.get(i + 1)) {
                return Reply::error(
                    out,
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            name = Some(args.get(i + 1).to_vec());
            i += 2;
        } else {
            return Reply::error(
                out,
                &format!("ERR Syntax error in HELLO option '{}'", lossy(opt, 64)),
            );
        }
    }
    session.proto = proto;
    if let Some(n) = name {
        session.name = (!n.is_empty()).then_some(n);
    }
    Reply::map(out, 7, proto);
    Reply::bulk(out, b"server");
    Reply::bulk(out, b"tollgate-server");
    Reply::bulk(out, b"version");
    Reply::bulk(out, env!("CARGO_PKG_VERSION").as_bytes());
    Reply::bulk(out, b"proto");
    Reply::integer(out, proto.version());
    Reply::bulk(out, b"id");
    Reply::integer(out, session.id as i64);
    Reply::bulk(out, b"mode");
    Reply::bulk(out, b"standalone");
    Reply::bulk(out, b"role");
    Reply::bulk(out, b"master");
    Reply::bulk(out, b"modules");
    Reply::array(out, 0);
}

/// `CLIENT ID | GETNAME | SETNAME name | SETINFO LIB-NAME|LIB-VER value | INFO`.
fn client(session: &mut Session, args: &Args<'_>, out: &mut BytesMut) {
    let sub = args.get(1);
    let argc = args.len();
    let is = |name: &str| sub.eq_ignore_ascii_case(name.as_bytes());
    let arity = |n: usize, name: &str, out: &mut BytesMut| {
        if argc == n {
            true
        } else {
            Reply::error(out, &wrong_args(&format!("client|{name}")));
            false
        }
    };
    if is("ID") {
        if arity(2, "id", out) {
            Reply::integer(out, session.id as i64);
        }
    } else if is("GETNAME") {
        if arity(2, "getname", out) {
            match &session.name {
                Some(n) => Reply::bulk(out, n),
                None => Reply::nil(out, session.proto),
            }
        }
    } else if is("SETNAME") {
        if arity(3, "setname", out) {
            let name = args.get(2);
            if valid_name(name) {
                session.name = (!name.is_empty()).then(|| name.to_vec());
                Reply::simple(out, "OK");
            } else {
                Reply::error(
                    out,
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
        }
    } else if is("SETINFO") {
        if arity(4, "setinfo", out) {
            let value = args.get(3);
            let slot = if args.get(2).eq_ignore_ascii_case(b"LIB-NAME") {
                &mut session.lib_name
            } else if args.get(2).eq_ignore_ascii_case(b"LIB-VER") {
                &mut session.lib_ver
            } else {
                return Reply::error(
                    out,
                    &format!("ERR Unrecognized option '{}'", lossy(args.get(2), 64)),
                );
            };
            if valid_name(value) {
                *slot = value.to_vec();
                Reply::simple(out, "OK");
            } else {
                Reply::error(
                    out,
                    "ERR lib-name and lib-ver cannot contain spaces, newlines or special characters.",
                );
            }
        }
    } else if is("INFO") {
        if arity(2, "info", out) {
            let line = format!(
                "id={} name={} resp={} lib-name={} lib-ver={}\n",
                session.id,
                String::from_utf8_lossy(session.name.as_deref().unwrap_or_default()),
                session.proto.version(),
                String::from_utf8_lossy(&session.lib_name),
                String::from_utf8_lossy(&session.lib_ver),
            );
            Reply::verbatim(out, line.as_bytes(), session.proto);
        }
    } else {
        Reply::error(
            out,
            &format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                lossy(sub, 64)
            ),
        );
    }
}

/// `COMMAND [COUNT | DOCS | INFO | LIST]`: the server does not describe its commands (the
/// answers are empty), which clients accept.
fn command(session: &Session, args: &Args<'_>, out: &mut BytesMut) {
    if args.len() == 1 {
        return Reply::array(out, 0);
    }
    let sub = args.get(1);
    if sub.eq_ignore_ascii_case(b"COUNT") {
        Reply::integer(out, 0);
    } else if sub.eq_ignore_ascii_case(b"DOCS") {
        Reply::map(out, 0, session.proto);
    } else if sub.eq_ignore_ascii_case(b"INFO") {
        // One null per name asked for: "no such command described".
        Reply::array(out, args.len() - 2);
        for _ in 2..args.len() {
            Reply::nil(out, session.proto);
        }
    } else if sub.eq_ignore_ascii_case(b"LIST") {
        Reply::array(out, 0);
    } else {
        Reply::error(
            out,
            &format!(
                "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                lossy(sub, 64)
            ),
        );
    }
}
