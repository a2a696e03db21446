//! Several server instances on one Redis act as one: one limit, one semaphore.

mod common;

use common::{cmd, ints, Raw, Resp, ServerProcess};
use serde_json::{json, Value};

#[tokio::test]
async fn two_instances_on_one_redis_enforce_one_limit() {
    let Some(redis) = tollgate_testkit::require_redis() else {
        return;
    };
    let store = redis.url();
    let args = [
        "--store",
        store.as_str(),
        "--policy",
        "api=5/min",
        "--semaphore",
        "db=1",
    ];
    let a = ServerProcess::start(&args);
    let b = ServerProcess::start(&args);
    assert!(
        a.banner.contains("store: redis (127.0.0.1:"),
        "{}",
        a.banner
    );
    let http = reqwest::Client::new();
    let mut allowed = 0;
    for i in 0..10 {
        let server = if i % 2 == 0 { &a } else { &b };
        let body: Value = http
            .post(server.url("/v1/check"))
            .json(&json!({"policy": "api", "key": "shared"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["allowed"] == true {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5, "5/min across both instances");
    // CL.THROTTLE state is shared too
    let mut ra = Raw::connect(a.resp);
    let mut rb = Raw::connect(b.resp);
    ra.send(&cmd(&["CL.THROTTLE", "cell", "1", "1", "60"]));
    assert_eq!(ints(&ra.reply())[..3], [0, 2, 1]);
    rb.send(&cmd(&["CL.THROTTLE", "cell", "1", "1", "60"]));
    assert_eq!(ints(&rb.reply())[..3], [0, 2, 0]);
    ra.send(&cmd(&["CL.THROTTLE", "cell", "1", "1", "60"]));
    let denied = ints(&ra.reply());
    assert_eq!(denied[..4], [1, 2, 0, 60], "{denied:?}");
    // the keys are namespaced in Redis and carry a TTL
    let keys = redis.command(&["KEYS", "tollgate:*"]).unwrap();
    let Resp::Array(Some(keys)) = keys else {
        panic!("{keys:?}")
    };
    assert!(!keys.is_empty());
    for k in keys {
        let k = k.as_text().unwrap();
        let ttl = redis.command(&["PTTL", &k]).unwrap().as_int().unwrap();
        assert!(ttl > 0, "{k} has a TTL");
    }
    // one semaphore across both instances
    let acquire = |s: &ServerProcess| {
        http.post(s.url("/v1/semaphore/acquire"))
            .json(&json!({"name": "db", "lease_ms": 30000}))
            .send()
    };
    let first: Value = acquire(&a).await.unwrap().json().await.unwrap();
    assert_eq!(first["acquired"], true, "{first}");
    let second: Value = acquire(&b).await.unwrap().json().await.unwrap();
    assert_eq!(second["acquired"], false, "{second}");
    assert_eq!(second["in_use"], 1);
    let released: Value = http
        .post(b.url("/v1/semaphore/release"))
        .json(&json!({"name": "db", "lease_id": first["lease_id"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(released["released"], true);
    let third: Value = acquire(&b).await.unwrap().json().await.unwrap();
    assert_eq!(third["acquired"], true, "{third}");
}

#[tokio::test]
async fn a_redis_outage_follows_the_failure_policy() {
    let Some(mut redis) = tollgate_testkit::require_redis() else {
        return;
    };
    let store = redis.url();
    let strict = ServerProcess::start(&[
        "--store",
        &store,
        "--policy",
        "api=5/min",
        "--store-timeout",
        "200ms",
    ]);
    let open = ServerProcess::start(&[
        "--store",
        &store,
        "--policy",
        "api=5/min",
        "--failure",
        "open",
        "--store-timeout",
        "200ms",
    ]);
    let local = ServerProcess::start(&[
        "--store",
        &store,
        "--policy",
        "api=1/min",
        "--failure",
        "local",
        "--store-timeout",
        "200ms",
    ]);
    redis.stop();
    let http = reqwest::Client::new();
    let check = |s: &ServerProcess| {
        http.post(s.url("/v1/check"))
            .json(&json!({"policy": "api", "key": "down"}))
            .send()
    };
    let r = check(&strict).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("store unavailable"));
    let body: Value = check(&open).await.unwrap().json().await.unwrap();
    assert_eq!(body["allowed"], true);
    assert!(body["store_error"].is_string(), "{body}");
    let first: Value = check(&local).await.unwrap().json().await.unwrap();
    let second: Value = check(&local).await.unwrap().json().await.unwrap();
    assert_eq!(
        (first["allowed"].as_bool(), second["allowed"].as_bool()),
        (Some(true), Some(false))
    );
    // RESP reports the store error distinctly
    let mut c = Raw::connect(strict.resp);
    c.send(&cmd(&["TG.CHECK", "api", "down"]));
    let e = common::error_text(&c.reply());
    assert!(e.starts_with("STOREERR"), "{e}");
    let metrics = http
        .get(strict.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors: f64 = metrics
        .lines()
        .find(|l| l.starts_with("tollgate_server_store_errors_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(errors >= 2.0, "{metrics}");
}
