//! Exact IETF `RateLimit` / `RateLimit-Policy` values from the real binary, and named
//! policies keeping their own state on the memory store.

mod common;

use common::ServerProcess;
use serde_json::{json, Value};
use std::time::Duration;

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn check(server: &ServerProcess, body: Value) -> (bool, String, String) {
    let r = reqwest::Client::new()
        .post(server.url("/v1/check"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let policy = header(&r, "ratelimit-policy");
    let ratelimit = header(&r, "ratelimit");
    let body: Value = r.json().await.unwrap();
    (body["allowed"].as_bool().unwrap(), policy, ratelimit)
}

/// Regression: `3/s` was advertised with `w=2` (the emission interval rounded up in µs,
/// times the burst, rounded up again); a policy of n per period advertises the period.
#[tokio::test]
async fn three_per_second_advertises_one_second() {
    let server = ServerProcess::start(&["--policy", "api=3/s"]);
    let (allowed, policy, _) = check(&server, json!({"policy": "api", "key": "k"})).await;
    assert!(allowed);
    assert_eq!(policy, "\"api\";q=3;w=1");
    let (_, policy, _) = check(&server, json!({"rates": "7/s", "key": "k"})).await;
    assert_eq!(policy, "\"inline\";q=7;w=1");
}

/// Regression: on a multi-rate policy the `RateLimit` item was named `"multi"` while
/// `RateLimit-Policy` listed `"multi-0"` and `"multi-1"`; it now names the binding rate.
#[tokio::test]
async fn multi_rate_ratelimit_names_the_binding_rate() {
    // rate 0: 10/s, burst 2; rate 1: 30/min (one unit every 2 s), burst 3.
    let server = ServerProcess::start(&["--policy", "multi=gcra:10/s burst 2; 30/min burst 3"]);
    let req = json!({"policy": "multi", "key": "k"});
    let listing = "\"multi-0\";q=2;w=1, \"multi-1\";q=3;w=6";

    // 1 of 2 left on rate 0, 2 of 3 on rate 1: rate 0 binds.
    let (allowed, policy, ratelimit) = check(&server, req.clone()).await;
    assert!(allowed);
    assert_eq!(policy, listing);
    assert!(ratelimit.starts_with("\"multi-0\";r=1;t="), "{ratelimit}");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (allowed, _, ratelimit) = check(&server, req.clone()).await;
    assert!(allowed);
    assert!(ratelimit.starts_with("\"multi-0\";r=1;t="), "{ratelimit}");
    tokio::time::sleep(Duration::from_millis(250)).await;
    // rate 0 is full again (1 left after this one), rate 1 has nothing left: rate 1 binds.
    let (allowed, policy, ratelimit) = check(&server, req.clone()).await;
    assert!(allowed);
    assert_eq!(policy, listing);
    assert_eq!(ratelimit, "\"multi-1\";r=0;t=6");
    // denied by rate 1: its item, t = the retry time (2 s minus the ~0.5 s elapsed, rounded up)
    let (allowed, _, ratelimit) = check(&server, req).await;
    assert!(!allowed);
    assert_eq!(ratelimit, "\"multi-1\";r=0;t=2");
}

/// Two named policies with the same rates keep separate state on the memory store (each
/// is bound under its name as the scope), as on Redis.
#[tokio::test]
async fn named_policies_with_equal_rates_do_not_share_state() {
    let server = ServerProcess::start(&["--policy", "a=1/hour", "--policy", "b=1/hour"]);
    assert!(check(&server, json!({"policy": "a", "key": "k"})).await.0);
    assert!(!check(&server, json!({"policy": "a", "key": "k"})).await.0);
    assert!(check(&server, json!({"policy": "b", "key": "k"})).await.0);
    // inline rates equal to a named policy's are another policy too
    assert!(
        check(&server, json!({"rates": "1/hour", "key": "k"}))
            .await
            .0
    );
}
