//! The command table (names and arities, checked both when a command runs and when it is
//! queued after `MULTI`) and the rate-limit and semaphore commands: `CL.THROTTLE` and `TG.*`.
//!
//! Every `TG.*` command calls the same [`App`] method as its HTTP twin (`/v1/check`,
//! `/v1/refund`, `/v1/semaphore/extend`, …); this module only parses arguments and encodes
//! replies.

use super::{connection, Args, Session};
use crate::app::{App, AppError, MultiItem, Outcome, PolicyEntry, SemAcquire};
use crate::cell;
use crate::resp::Reply;
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;

/// What a command is, once its name is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cmd {
    ClThrottle,
    TgCheck,
    TgPeek,
    TgCheckAll,
    TgPeekAll,
    TgReset,
    TgRefund,
    TgPolicies,
    TgAcquire,
    TgRelease,
    TgExtend,
    Ping,
    Echo,
    Hello,
    Auth,
    Client,
    Select,
    Info,
    Command,
    Config,
    Unwatch,
}

/// A command's name and its argument count, the name included (`min..=max`).
struct Spec {
    name: &'static str,
    cmd: Cmd,
    min: usize,
    max: usize,
}

const fn spec(name: &'static str, cmd: Cmd, min: usize, max: usize) -> Spec {
    Spec {
        name,
        cmd,
        min,
        max,
    }
}

/// Every command that runs through [`run`]; the transaction commands (`MULTI`, `EXEC`,
/// `DISCARD`, `WATCH`) and `QUIT` are handled by the connection itself. The hot commands
/// come first (the lookup is a linear scan).
const COMMANDS: &[Spec] = &[
    spec("CL.THROTTLE", Cmd::ClThrottle, 5, 6),
    spec("TG.CHECK", Cmd::TgCheck, 3, 4),
    spec("TG.PEEK", Cmd::TgPeek, 3, 4),
    spec("TG.CHECKALL", Cmd::TgCheckAll, 4, usize::MAX),
    spec("TG.PEEKALL", Cmd::TgPeekAll, 4, usize::MAX),
    spec("TG.RESET", Cmd::TgReset, 3, 3),
    spec("TG.REFUND", Cmd::TgRefund, 4, 4),
    spec("TG.ACQUIRE", Cmd::TgAcquire, 2, 4),
    spec("TG.RELEASE", Cmd::TgRelease, 3, 3),
    spec("TG.EXTEND", Cmd::TgExtend, 3, 4),
    spec("TG.POLICIES", Cmd::TgPolicies, 1, 1),
    spec("PING", Cmd::Ping, 1, 2),
    spec("ECHO", Cmd::Echo, 2, 2),
    spec("HELLO", Cmd::Hello, 1, 7),
    spec("AUTH", Cmd::Auth, 2, 3),
    spec("CLIENT", Cmd::Client, 2, 4),
    spec("SELECT", Cmd::Select, 2, 2),
    spec("INFO", Cmd::Info, 1, usize::MAX),
    spec("COMMAND", Cmd::Command, 1, usize::MAX),
    spec("CONFIG", Cmd::Config, 2, usize::MAX),
    spec("UNWATCH", Cmd::Unwatch, 1, 1),
];

/// The command named `args[0]` if it exists and has a valid number of arguments; otherwise
/// the error reply Redis would give (unknown command, wrong number of arguments).
pub(super) fn resolve(args: &Args<'_>) -> Result<Cmd, String> {
    let name = args.get(0);
    let Some(spec) = COMMANDS
        .iter()
        .find(|s| name.eq_ignore_ascii_case(s.name.as_bytes()))
    else {
        return Err(unknown_command(args));
    };
    let argc = args.len();
    if argc < spec.min || argc > spec.max {
        if spec.cmd == Cmd::ClThrottle {
            return Err(
                "ERR Usage: cl.throttle <key> <max_burst> <count per period> <period> [<quantity>]"
                    .into(),
            );
        }
        return Err(wrong_args(spec.name));
    }
    Ok(spec.cmd)
}

pub(super) fn wrong_args(name: &str) -> String {
    format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    )
}

fn unknown_command(args: &Args<'_>) -> String {
    let shown: Vec<String> = (1..args.len())
        .take(8)
        .map(|i| format!("'{}'", lossy(args.get(i), 64)))
        .collect();
    format!(
        "ERR unknown command '{}', with args beginning with: {}",
        lossy(args.get(0), 64),
        shown.join(" ")
    )
}

/// At most `max` characters of `bytes` as text, for error messages.
pub(super) fn lossy(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(bytes).chars().take(max).collect()
}

fn app_error(out: &mut BytesMut, e: &AppError) {
    match e {
        AppError::StoreUnavailable(_) => Reply::error(out, &format!("STOREERR {e}")),
        _ => Reply::error(out, &format!("ERR {e}")),
    }
}

fn utf8<'a>(out: &mut BytesMut, what: &str, bytes: &'a [u8]) -> Option<&'a str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Some(s),
        Err(_) => {
            Reply::error(out, &format!("ERR the {what} must be valid UTF-8"));
            None
        }
    }
}

/// A positive integer argument; `None` after writing the error reply.
fn positive(out: &mut BytesMut, arg: &[u8], what: &str) -> Option<u64> {
    match cell::parse_i64(arg) {
        Ok(n) if n >= 1 => Some(n as u64),
        Ok(_) => {
            Reply::error(out, &format!("ERR {what} must be at least 1"));
            None
        }
        Err(e) => {
            Reply::error(out, &e);
            None
        }
    }
}

/// `<policy> <key> [<number>]` at `args[i..]`: the named policy, the key and the positive
/// number (`default` when given: the number is optional there and `default` stands for an
/// absent one); `None` after writing the error reply.
fn policy_key_number<'a>(
    app: &App,
    args: &Args<'a>,
    i: usize,
    out: &mut BytesMut,
    what: &str,
    default: Option<u64>,
) -> Option<(Arc<PolicyEntry>, &'a str, u64)> {
    let entry = app
        .named(&String::from_utf8_lossy(args.get(i)))
        .map_err(|e| app_error(out, &e))
        .ok()?;
    let key = utf8(out, "key", args.get(i + 1))?;
    let number = match default {
        Some(n) => n,
        None => positive(out, args.get(i + 2), what)?,
    };
    Some((entry, key, number))
}

fn ceil_millis(d: Duration) -> i64 {
    d.as_micros().div_ceil(1000) as i64
}

/// Runs a resolved command and appends its reply.
pub(super) async fn run(
    cmd: Cmd,
    app: &App,
    session: &mut Session,
    args: &Args<'_>,
    out: &mut BytesMut,
) {
    match cmd {
        Cmd::ClThrottle => throttle(app, args, out).await,
        Cmd::TgCheck | Cmd::TgPeek => decide(app, args, out, cmd == Cmd::TgCheck).await,
        Cmd::TgCheckAll | Cmd::TgPeekAll => {
            decide_all(app, args, out, cmd == Cmd::TgCheckAll).await
        }
        Cmd::TgReset | Cmd::TgRefund => reset_or_refund(app, args, out, cmd).await,
        Cmd::TgPolicies => {
            let policies: Vec<_> = app.policies().collect();
            Reply::array(out, policies.len());
            for p in policies {
                Reply::array(out, 2);
                Reply::bulk(out, p.name().as_bytes());
                Reply::bulk(out, p.policy().to_string().as_bytes());
            }
        }
        Cmd::TgAcquire => acquire(app, args, out).await,
        Cmd::TgRelease => {
            let sem = String::from_utf8_lossy(args.get(1));
            let id = String::from_utf8_lossy(args.get(2));
            match app.sem_release(&sem, &id).await {
                Ok(released) => Reply::integer(out, i64::from(released)),
                Err(e) => app_error(out, &e),
            }
        }
        Cmd::TgExtend => extend(app, session, args, out).await,
        _ => connection::run(cmd, app, session, args, out),
    }
}

async fn throttle(app: &App, args: &Args<'_>, out: &mut BytesMut) {
    let parsed = (|| {
        Ok::<_, String>((
            cell::parse_i64(args.get(2))?,
            cell::parse_i64(args.get(3))?,
            cell::parse_i64(args.get(4))?,
            if args.len() == 6 {
                cell::parse_i64(args.get(5))?
            } else {
                1
            },
        ))
    })();
    let (max_burst, count, period, quantity) = match parsed {
        Ok(p) => p,
        Err(e) => return Reply::error(out, &e),
    };
    let Some(key) = utf8(out, "key", args.get(1)) else {
        return;
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
}

/// `TG.CHECK` / `TG.PEEK <policy> <key> [cost]`.
async fn decide(app: &App, args: &Args<'_>, out: &mut BytesMut, charge: bool) {
    let default = (args.len() < 4).then_some(1);
    let Some((entry, key, cost)) = policy_key_number(app, args, 1, out, "the cost", default) else {
        return;
    };
    let result = if charge {
        app.check(&entry, key, cost).await
    } else {
        app.peek(&entry, key, cost).await
    };
    match result {
        Ok(Outcome { decision: d, .. }) => decision_reply(out, &d),
        Err(e) => app_error(out, &e),
    }
}

/// One decision as `TG.CHECK` replies: `[limited (0/1), limit, remaining, retry_after_ms
/// (-1 when allowed), reset_after_ms]`.
fn decision_reply(out: &mut BytesMut, d: &tollgate::Decision) {
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

/// `TG.CHECKALL` / `TG.PEEKALL <policy> <key> <cost> [<policy> <key> <cost> ...]`: every
/// item decided all-or-nothing in one store call (the same [`App::decide_all`] as
/// `POST /v1/check` with `"checks"`). Reply: `[limited (0/1), the item to wait for (0-based;
/// -1 when allowed), [each item's TG.CHECK reply]...]`.
async fn decide_all(app: &App, args: &Args<'_>, out: &mut BytesMut, charge: bool) {
    let name = if charge { "TG.CHECKALL" } else { "TG.PEEKALL" };
    if (args.len() - 1) % 3 != 0 {
        return Reply::error(
            out,
            &format!("ERR Usage: {name} <policy> <key> <cost> [<policy> <key> <cost> ...]"),
        );
    }
    let mut items = Vec::with_capacity((args.len() - 1) / 3);
    for i in (1..args.len()).step_by(3) {
        let Some((entry, key, cost)) = policy_key_number(app, args, i, out, "the cost", None)
        else {
            return;
        };
        items.push(MultiItem {
            entry,
            key: key.to_string(),
            cost,
        });
    }
    match app.decide_all(&items, charge).await {
        Ok(o) => {
            let d = &o.decision;
            Reply::array(out, 2 + d.decisions.len());
            Reply::integer(out, i64::from(!d.allowed));
            Reply::integer(out, d.binding().map_or(-1, |(i, _)| i as i64));
            for dec in &d.decisions {
                decision_reply(out, dec);
            }
        }
        Err(e) => app_error(out, &e),
    }
}

/// `TG.RESET <policy> <key>` and `TG.REFUND <policy> <key> <amount>` (the same
/// [`App::reset`] / [`App::refund`] as `POST /v1/reset` and `/v1/refund`).
async fn reset_or_refund(app: &App, args: &Args<'_>, out: &mut BytesMut, cmd: Cmd) {
    let default = (cmd != Cmd::TgRefund).then_some(0);
    let Some((entry, key, amount)) = policy_key_number(app, args, 1, out, "the amount", default)
    else {
        return;
    };
    if cmd == Cmd::TgRefund {
        match app.refund(&entry, key, amount).await {
            Ok(refunded) => Reply::integer(out, i64::try_from(refunded).unwrap_or(i64::MAX)),
            Err(e) => app_error(out, &e),
        }
    } else {
        match app.reset(&entry, key).await {
            Ok(()) => Reply::simple(out, "OK"),
            Err(e) => app_error(out, &e),
        }
    }
}

/// `TG.ACQUIRE <semaphore> [permits] [lease_ms]` (never waits).
async fn acquire(app: &App, args: &Args<'_>, out: &mut BytesMut) {
    let mut nums = [1u64, 0];
    for (i, slot) in nums.iter_mut().enumerate() {
        if args.len() > i + 2 {
            match positive(out, args.get(i + 2), "permits and lease_ms") {
                Some(n) => *slot = n,
                None => return,
            }
        }
    }
    let sem = String::from_utf8_lossy(args.get(1));
    let lease = (nums[1] > 0).then(|| Duration::from_millis(nums[1]));
    match app.sem_acquire(&sem, nums[0], lease, Duration::ZERO).await {
        Ok(SemAcquire::Granted {
            lease_id,
            expires_in_us,
        }) => {
            Reply::array(out, 3);
            Reply::integer(out, 1);
            Reply::bulk(out, lease_id.as_bytes());
            Reply::integer(out, expires_in_us.div_ceil(1000) as i64);
        }
        Ok(SemAcquire::Busy {
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
}

/// `TG.EXTEND <semaphore> <lease_id> [lease_ms]`: the milliseconds the lease now has left,
/// or null when it is not held (the same [`App::sem_extend`] as `/v1/semaphore/extend`).
async fn extend(app: &App, session: &Session, args: &Args<'_>, out: &mut BytesMut) {
    let lease = if args.len() == 4 {
        match positive(out, args.get(3), "lease_ms") {
            Some(ms) => Some(Duration::from_millis(ms)),
            None => return,
        }
    } else {
        None
    };
    let sem = String::from_utf8_lossy(args.get(1));
    let id = String::from_utf8_lossy(args.get(2));
    match app.sem_extend(&sem, &id, lease).await {
        Ok(Some(us)) => Reply::integer(out, us.div_ceil(1000) as i64),
        Ok(None) => Reply::nil(out, session.proto),
        Err(e) => app_error(out, &e),
    }
}
