//! Several (policy, key, cost) items decided all-or-nothing in one call: `POST /v1/check` with
//! `"checks"` and `TG.CHECKALL` / `TG.PEEKALL`, on the memory store and on Redis (two server
//! instances on one redis-server, concurrent requests: exact admissions, nothing charged by a
//! denial).

mod common;

use common::{cmd, ints, Raw, Resp, ServerProcess};
use serde_json::{json, Value};

fn checks(user: &str) -> Value {
    json!({"checks": [
        {"policy": "per-user", "key": user},
        {"policy": "global", "key": "all", "cost": 1},
    ]})
}

#[tokio::test]
async fn http_multi_key_is_all_or_nothing() {
    let server = ServerProcess::start(&["--policy", "per-user=3/h", "--policy", "global=4/h"]);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| http.post(server.url(path)).json(&body).send();
    for user in ["alice", "alice", "alice"] {
        let r = post("/v1/check", checks(user)).await.unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["allowed"], true, "{body}");
    }
    // alice's own limit denies: nothing charged on the global key.
    let r = post("/v1/check", checks("alice")).await.unwrap();
    assert!(r.headers().get("retry-after").is_some());
    let fields = r.headers()["ratelimit"].to_str().unwrap().to_string();
    assert!(fields.starts_with("\"per-user\";r=0;"), "{fields}");
    assert!(
        !fields.contains("global"),
        "only the denying policy: {fields}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["allowed"].clone(), body["denied_by_item"].clone()),
        (json!(false), json!(0))
    );
    let peek: Value = post("/v1/peek", json!({"policy": "global", "key": "all"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        peek["remaining"], 0,
        "global: 4 - 3 charged - this peek's 1"
    );
    // bob takes the last global unit; carol is then denied by the global item, uncharged.
    let body: Value = post("/v1/check", checks("bob"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["allowed"], true);
    let body: Value = post("/v1/check", checks("carol"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["denied_by_item"], 1);
    assert_eq!(body["decisions"][1]["policy"], "global");
    let carol: Value = post("/v1/peek", json!({"policy": "per-user", "key": "carol"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(carol["remaining"], 2, "carol was not charged");
    // Bad requests get the JSON error body.
    for bad in [
        json!({"checks": []}),
        json!({"checks": [{"policy": "nope", "key": "k"}]}),
        json!({"key": "x", "checks": [{"policy": "global", "key": "k"}]}),
        json!({"checks": [{"policy": "global", "key": "k", "cost": 0}]}),
    ] {
        let r = post("/v1/check", bad.clone()).await.unwrap();
        assert!(r.status().is_client_error(), "{bad}: {}", r.status());
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
}

fn int(v: &Resp) -> i64 {
    match v {
        Resp::Integer(n) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

#[test]
fn resp_checkall_and_peekall() {
    let server = ServerProcess::start(&["--policy", "per-user=2/h", "--policy", "global=3/h"]);
    let mut c = Raw::connect(server.resp);
    let all = |user: &str| cmd(&["TG.CHECKALL", "per-user", user, "1", "global", "all", "1"]);
    c.send(&all("u1"));
    let reply = c.reply();
    let Resp::Array(Some(parts)) = &reply else {
        panic!("{reply:?}")
    };
    assert_eq!((int(&parts[0]), int(&parts[1])), (0, -1));
    assert_eq!(ints(&parts[2])[..3], [0, 2, 1]);
    assert_eq!(ints(&parts[3])[..3], [0, 3, 2]);
    c.send(&all("u1"));
    let _ = c.reply();
    // u1 is spent: limited by item 0, and the global key keeps its last unit.
    c.send(&all("u1"));
    let Resp::Array(Some(parts)) = c.reply() else {
        panic!()
    };
    assert_eq!((int(&parts[0]), int(&parts[1])), (1, 0));
    c.send(&cmd(&["TG.PEEKALL", "global", "all", "1"]));
    let Resp::Array(Some(parts)) = c.reply() else {
        panic!()
    };
    assert_eq!(ints(&parts[2])[..3], [0, 3, 0], "one global unit left");
    // Wrong arity and bad costs are errors.
    c.send(&cmd(&["TG.CHECKALL", "global", "all"]));
    assert!(matches!(c.reply(), Resp::Error(_)));
    c.send(&cmd(&["TG.CHECKALL", "global", "all", "0"]));
    assert!(matches!(c.reply(), Resp::Error(_)));
}

#[tokio::test]
async fn two_instances_on_one_redis_decide_multi_key_calls_atomically() {
    let Some(redis) = tollgate_testkit::require_redis() else {
        return;
    };
    let store = redis.url();
    let args = [
        "--store",
        store.as_str(),
        "--policy",
        "per-user=4/h",
        "--policy",
        "global=10/h",
    ];
    let a = ServerProcess::start(&args);
    let b = ServerProcess::start(&args);
    let http = reqwest::Client::new();
    let mut calls = Vec::new();
    for i in 0..40 {
        let base = if i % 2 == 0 { &a } else { &b };
        let req = http
            .post(base.url("/v1/check"))
            .json(&checks(&format!("u{}", i % 5)));
        calls.push(tokio::spawn(async move {
            let body: Value = req.send().await.unwrap().json().await.unwrap();
            body["allowed"] == true
        }));
    }
    let mut admitted = 0;
    for c in calls {
        if c.await.unwrap() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10, "exactly the global limit");
    // The users were charged exactly the admitted calls (denials charged nothing).
    let mut charged = 0;
    for u in 0..5 {
        let body: Value = http
            .post(a.url("/v1/peek"))
            .json(&json!({"policy": "per-user", "key": format!("u{u}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let left = if body["allowed"] == true {
            body["remaining"].as_u64().unwrap() + 1
        } else {
            0
        };
        charged += 4 - left;
    }
    assert_eq!(charged, 10);
}
