//! RESP3 and RESP2 on one server, MULTI/EXEC/DISCARD, TG.REFUND and TG.EXTEND, byte-level
//! over real sockets to the real binary. Regression tests for issue 10 §2: `HELLO 3` used to
//! answer `-NOPROTO` (redis-py 8 gave up), `MULTI` was an unknown command (redis-py's default
//! pipeline failed), and RESP had no refund or extend.

mod common;

use common::{Raw, ServerProcess, R3};

fn server() -> ServerProcess {
    ServerProcess::start(&["--policy", "api=2/min", "--semaphore", "jobs=1"])
}

fn ok() -> R3 {
    R3::Simple("OK".into())
}

fn err(r: &R3) -> String {
    match r {
        R3::Error(e) => e.clone(),
        other => panic!("not an error: {other:?}"),
    }
}

#[test]
fn hello_3_switches_this_connection_to_resp3_with_the_server_map() {
    let server = server();
    let mut c = Raw::connect(server.resp);
    let mut other = Raw::connect(server.resp);
    // HELLO without a version: the current protocol (RESP2), as a flat array of pairs.
    let hello = c.call(&["HELLO"]);
    assert!(matches!(hello, R3::Array(_)), "{hello:?}");
    assert_eq!(hello.pairs()[2], ("proto".into(), R3::Int(2)));
    // HELLO 3: a RESP3 map with the fields Redis sends, in Redis's order.
    let hello = c.call(&["HELLO", "3"]);
    let R3::Map(_) = &hello else {
        panic!("HELLO 3 answers a map: {hello:?}")
    };
    let pairs = hello.pairs();
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["server", "version", "proto", "id", "mode", "role", "modules"]
    );
    assert_eq!(pairs[0].1, R3::Bulk(b"tollgate-server".to_vec()));
    assert_eq!(pairs[2].1, R3::Int(3));
    assert_eq!(pairs[4].1, R3::Bulk(b"standalone".to_vec()));
    assert_eq!(pairs[6].1, R3::Array(vec![]));
    let R3::Int(id) = pairs[3].1 else { panic!() };
    assert_eq!(c.call(&["CLIENT", "ID"]), R3::Int(id));
    // RESP3 nulls on this connection, RESP2 nulls on the other one (state per connection).
    assert_eq!(c.call(&["CLIENT", "GETNAME"]), R3::Null);
    assert_eq!(other.call(&["CLIENT", "GETNAME"]), R3::NullBulk);
    assert_ne!(other.call(&["CLIENT", "ID"]), R3::Int(id));
    // Unsupported versions and bad options change nothing.
    let e = err(&c.call(&["HELLO", "4"]));
    assert!(e.starts_with("NOPROTO "), "{e}");
    assert!(err(&c.call(&["HELLO", "x"])).contains("not an integer"));
    assert!(
        err(&c.call(&["HELLO", "2", "SETNAME"])).contains("Syntax error in HELLO option 'SETNAME'")
    );
    assert_eq!(c.call(&["CLIENT", "GETNAME"]), R3::Null, "still RESP3");
    // AUTH: no authentication here, as a Redis without requirepass: `default` + any password.
    let e = err(&c.call(&["HELLO", "3", "AUTH", "bob", "pw"]));
    assert!(e.starts_with("WRONGPASS"), "{e}");
    let hello = c.call(&["HELLO", "2", "AUTH", "default", "pw", "SETNAME", "billing"]);
    assert_eq!(hello.pairs()[2].1, R3::Int(2));
    assert_eq!(
        c.call(&["CLIENT", "GETNAME"]),
        R3::Bulk(b"billing".to_vec())
    );
    assert_eq!(c.call(&["AUTH", "default", "x"]), ok());
    assert!(err(&c.call(&["AUTH", "x"])).contains("without any password configured"));
    // Back in RESP2: `$-1` nulls again.
    assert_eq!(c.call(&["CLIENT", "SETNAME", ""]), ok());
    assert_eq!(c.call(&["CLIENT", "GETNAME"]), R3::NullBulk);
}

#[test]
fn every_command_replies_correctly_in_both_protocols() {
    let server = server();
    for proto in ["2", "3"] {
        let resp3 = proto == "3";
        let mut c = Raw::connect(server.resp);
        let _ = c.call(&["HELLO", proto]);
        let key = format!("both-{proto}");
        let null = if resp3 { R3::Null } else { R3::NullBulk };
        assert_eq!(
            c.call(&["CL.THROTTLE", &key, "1", "1", "10"]).ints(),
            [0, 2, 1, -1, 10]
        );
        assert_eq!(
            c.call(&["TG.CHECK", "api", &key]).ints(),
            [0, 2, 1, -1, 30_000]
        );
        assert_eq!(c.call(&["TG.PEEK", "api", &key]).ints()[..3], [0, 2, 0]);
        assert_eq!(c.call(&["TG.REFUND", "api", &key, "1"]), R3::Int(1));
        assert_eq!(
            c.call(&["TG.PEEK", "api", &key, "2"]).ints()[..3],
            [0, 2, 0]
        );
        assert_eq!(c.call(&["TG.RESET", "api", &key]), ok());
        assert_eq!(
            c.call(&["TG.POLICIES"]),
            R3::Array(vec![R3::Array(vec![
                R3::Bulk(b"api".to_vec()),
                R3::Bulk(b"gcra:2/1m".to_vec())
            ])])
        );
        let R3::Array(granted) = c.call(&["TG.ACQUIRE", "jobs", "1", "60000"]) else {
            panic!()
        };
        assert_eq!(granted[0], R3::Int(1));
        let lease = granted[1].text();
        let R3::Int(left) = c.call(&["TG.EXTEND", "jobs", &lease, "90000"]) else {
            panic!()
        };
        assert!((89_000..=90_000).contains(&left), "{left}");
        assert_eq!(c.call(&["TG.RELEASE", "jobs", &lease]), R3::Int(1));
        assert_eq!(c.call(&["TG.EXTEND", "jobs", &lease]), null, "not held");
        assert_eq!(c.call(&["PING"]), R3::Simple("PONG".into()));
        assert_eq!(c.call(&["PING", "hi"]), R3::Bulk(b"hi".to_vec()));
        assert_eq!(c.call(&["ECHO", "e"]), R3::Bulk(b"e".to_vec()));
        assert_eq!(c.call(&["SELECT", "0"]), ok());
        assert!(err(&c.call(&["SELECT", "1"])).contains("out of range"));
        assert_eq!(c.call(&["CLIENT", "SETINFO", "LIB-NAME", "raw"]), ok());
        assert_eq!(c.call(&["CLIENT", "SETINFO", "lib-ver", "1.2"]), ok());
        assert!(err(&c.call(&["CLIENT", "SETINFO", "LIB-X", "1"])).contains("Unrecognized option"));
        assert!(err(&c.call(&["CLIENT", "TRACKING", "on"])).contains("unknown subcommand"));
        let info = c.call(&["CLIENT", "INFO"]);
        assert!(matches!(info, R3::Verbatim(..)) == resp3, "{info:?}");
        let info = info.text();
        assert!(
            info.contains(&format!("resp={proto} lib-name=raw lib-ver=1.2")),
            "{info}"
        );
        assert_eq!(c.call(&["COMMAND"]), R3::Array(vec![]));
        assert_eq!(c.call(&["COMMAND", "COUNT"]), R3::Int(0));
        let docs = c.call(&["COMMAND", "DOCS"]);
        assert_eq!(
            docs,
            if resp3 {
                R3::Map(vec![])
            } else {
                R3::Array(vec![])
            }
        );
        let config = c.call(&["CONFIG", "GET", "save"]);
        assert_eq!(
            config,
            if resp3 {
                R3::Map(vec![])
            } else {
                R3::Array(vec![])
            }
        );
        let info = c.call(&["INFO"]);
        assert!(
            matches!(info, R3::Verbatim(ref f, _) if f == "txt") == resp3,
            "{info:?}"
        );
        assert!(info.text().contains("tollgate_store:memory"));
        assert!(err(&c.call(&["TG.CHECK", "nope", "k"])).contains("unknown policy"));
        assert_eq!(c.call(&["QUIT"]), ok());
        assert!(c.closed());
    }
}

#[test]
fn multi_queues_and_exec_answers_every_reply_in_order() {
    let server = server();
    for proto in ["2", "3"] {
        let mut c = Raw::connect(server.resp);
        let mut watcher = Raw::connect(server.resp);
        let _ = c.call(&["HELLO", proto]);
        let key = format!("tx-{proto}");
        assert_eq!(c.call(&["MULTI"]), ok());
        for args in [
            &["TG.CHECK", "api", &key][..],
            &["PING"],
            &["TG.CHECK", "api", &key],
            &["TG.CHECK", "api", &key],
            &["TG.CHECK", "nope", &key],
            &["CLIENT", "GETNAME"],
        ] {
            assert_eq!(c.call(args), R3::Simple("QUEUED".into()), "{args:?}");
        }
        // Queued, not run: nothing is charged before EXEC.
        assert_eq!(watcher.call(&["TG.PEEK", "api", &key, "2"]).ints()[0], 0);
        // A nested MULTI is an error that does not abort the transaction (as in Redis).
        assert!(err(&c.call(&["MULTI"])).contains("can not be nested"));
        let R3::Array(replies) = c.call(&["EXEC"]) else {
            panic!("EXEC answers an array")
        };
        assert_eq!(replies.len(), 6);
        assert_eq!(replies[0].ints()[..3], [0, 2, 1]);
        assert_eq!(replies[1], R3::Simple("PONG".into()));
        assert_eq!(replies[2].ints()[..3], [0, 2, 0]);
        assert_eq!(
            replies[3].ints()[..3],
            [1, 2, 0],
            "the third check is denied"
        );
        assert!(
            err(&replies[4]).contains("unknown policy"),
            "a run-time error is one element"
        );
        assert_eq!(
            replies[5],
            if proto == "3" { R3::Null } else { R3::NullBulk }
        );
        // EXEC and DISCARD without MULTI.
        assert_eq!(err(&c.call(&["EXEC"])), "ERR EXEC without MULTI");
        assert_eq!(err(&c.call(&["DISCARD"])), "ERR DISCARD without MULTI");
        // An empty transaction.
        assert_eq!(c.call(&["MULTI"]), ok());
        assert_eq!(c.call(&["EXEC"]), R3::Array(vec![]));
    }
}

#[test]
fn discard_and_queuing_errors_run_nothing() {
    let server = server();
    let mut c = Raw::connect(server.resp);
    // DISCARD drops the queue: nothing charged.
    assert_eq!(c.call(&["MULTI"]), ok());
    assert_eq!(
        c.call(&["TG.CHECK", "api", "d", "2"]),
        R3::Simple("QUEUED".into())
    );
    assert_eq!(c.call(&["DISCARD"]), ok());
    assert_eq!(c.call(&["TG.PEEK", "api", "d", "2"]).ints()[0], 0);
    // A syntax error while queuing (unknown command, wrong number of arguments) makes EXEC
    // answer EXECABORT, and none of the queued commands runs.
    for bad in [
        &["NOPE", "x"][..],
        &["TG.CHECK", "api"],
        &["CL.THROTTLE", "k"],
    ] {
        assert_eq!(c.call(&["MULTI"]), ok());
        assert_eq!(
            c.call(&["TG.CHECK", "api", "d", "2"]),
            R3::Simple("QUEUED".into())
        );
        let e = err(&c.call(bad));
        assert!(e.starts_with("ERR "), "{e}");
        assert_eq!(
            c.call(&["TG.CHECK", "api", "d"]),
            R3::Simple("QUEUED".into())
        );
        assert_eq!(
            err(&c.call(&["EXEC"])),
            "EXECABORT Transaction discarded because of previous errors."
        );
        assert_eq!(
            c.call(&["TG.PEEK", "api", "d", "2"]).ints()[0],
            0,
            "{bad:?}"
        );
    }
    // WATCH: refused (there are no keys a client could watch); inside MULTI it aborts.
    assert!(err(&c.call(&["WATCH", "k"])).contains("WATCH is not supported"));
    assert_eq!(c.call(&["UNWATCH"]), ok());
    assert_eq!(c.call(&["MULTI"]), ok());
    assert!(err(&c.call(&["WATCH", "k"])).contains("inside MULTI is not allowed"));
    assert!(err(&c.call(&["EXEC"])).starts_with("EXECABORT"));
    // QUIT inside MULTI quits at once.
    assert_eq!(c.call(&["MULTI"]), ok());
    assert_eq!(
        c.call(&["TG.CHECK", "api", "d", "2"]),
        R3::Simple("QUEUED".into())
    );
    assert_eq!(c.call(&["QUIT"]), ok());
    assert!(c.closed());
    let mut fresh = Raw::connect(server.resp);
    assert_eq!(fresh.call(&["TG.PEEK", "api", "d", "2"]).ints()[0], 0);
}

#[test]
fn a_pipelined_transaction_is_answered_in_one_batch() {
    // What redis-py's default pipeline sends: MULTI, the commands and EXEC in one write.
    let server = server();
    let mut c = Raw::connect(server.resp);
    let mut batch = common::cmd(&["MULTI"]);
    for _ in 0..3 {
        batch.extend(common::cmd(&["CL.THROTTLE", "p", "1", "1", "60"]));
    }
    batch.extend(common::cmd(&["EXEC"]));
    c.send(&batch);
    assert_eq!(c.reply3(), ok());
    for _ in 0..3 {
        assert_eq!(c.reply3(), R3::Simple("QUEUED".into()));
    }
    let R3::Array(replies) = c.reply3() else {
        panic!()
    };
    let limited: Vec<i64> = replies.iter().map(|r| r.ints()[0]).collect();
    assert_eq!(limited, [0, 0, 1]);
}

#[test]
fn tg_refund_gives_back_units_and_validates_its_arguments() {
    let server = server();
    let mut c = Raw::connect(server.resp);
    assert_eq!(
        c.call(&["TG.CHECK", "api", "r", "2"]).ints()[..3],
        [0, 2, 0]
    );
    assert_eq!(c.call(&["TG.CHECK", "api", "r"]).ints()[0], 1);
    assert_eq!(c.call(&["TG.REFUND", "api", "r", "1"]), R3::Int(1));
    assert_eq!(c.call(&["TG.CHECK", "api", "r"]).ints()[..3], [0, 2, 0]);
    assert!(err(&c.call(&["TG.REFUND", "api", "r", "0"])).contains("at least 1"));
    assert!(err(&c.call(&["TG.REFUND", "api", "r", "x"])).contains("Couldn't parse as integer"));
    assert!(err(&c.call(&["TG.REFUND", "api", "r"])).contains("wrong number of arguments"));
    assert!(err(&c.call(&["TG.REFUND", "nope", "r", "1"])).contains("unknown policy"));
}

#[test]
fn tg_extend_keeps_a_lease_alive_past_its_first_expiry() {
    let server = server();
    let mut c = Raw::connect(server.resp);
    let R3::Array(granted) = c.call(&["TG.ACQUIRE", "jobs", "1", "300"]) else {
        panic!()
    };
    let lease = granted[1].text();
    let R3::Int(left) = c.call(&["TG.EXTEND", "jobs", &lease, "5000"]) else {
        panic!("extended: the milliseconds left")
    };
    assert!((4_900..=5_000).contains(&left), "{left}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Past the first 300 ms: still held, so a second acquire is busy.
    assert_eq!(c.call(&["TG.ACQUIRE", "jobs"]).ints()[..2], [0, 1]);
    assert_eq!(c.call(&["TG.RELEASE", "jobs", &lease]), R3::Int(1));
    assert!(err(&c.call(&["TG.EXTEND", "jobs", "not-a-lease"])).contains("not a lease id"));
    assert!(err(&c.call(&["TG.EXTEND", "nope", &lease])).contains("unknown semaphore \"nope\""));
    assert!(err(&c.call(&["TG.EXTEND", "jobs", &lease, "0"])).contains("at least 1"));
    assert!(err(&c.call(&["TG.EXTEND", "jobs"])).contains("wrong number of arguments"));
}

#[test]
fn a_transaction_queues_at_most_10000_commands() {
    let server = server();
    let mut c = Raw::connect(server.resp);
    let mut batch = common::cmd(&["MULTI"]);
    for _ in 0..10_001 {
        batch.extend(common::cmd(&["PING"]));
    }
    batch.extend(common::cmd(&["EXEC"]));
    c.send(&batch);
    assert_eq!(c.reply3(), ok());
    for _ in 0..10_000 {
        assert_eq!(c.reply3(), R3::Simple("QUEUED".into()));
    }
    assert!(err(&c.reply3()).contains("at most 10000 commands"));
    assert!(err(&c.reply3()).starts_with("EXECABORT"));
    // the connection goes on
    assert_eq!(c.call(&["PING"]), R3::Simple("PONG".into()));
}
