//! The server's semaphore waits are the library's (`tollgate::semaphore::Semaphore`): a
//! waiter behind a lease that is never released gets the permit when that lease ends, not
//! when its own `wait_ms` runs out (regression: the server's own wait loop slept the whole
//! wait on the memory store), and a request that gives up leaves nothing queued.

mod common;

use common::ServerProcess;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_waiter_gets_the_permit_when_the_holders_lease_ends() {
    let server = ServerProcess::start(&["--semaphore", "db=1"]);
    let http = reqwest::Client::new();
    let acquire = |body: Value| {
        let req = http.post(server.url("/v1/semaphore/acquire")).json(&body);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    // A holder that never releases, with a 1 s lease.
    let held = acquire(json!({"name": "db", "lease_ms": 1000})).await;
    assert_eq!(held["acquired"], true, "{held}");
    let started = Instant::now();
    let waiter = acquire(json!({"name": "db", "wait_ms": 8000})).await;
    let waited = started.elapsed();
    assert_eq!(waiter["acquired"], true, "{waiter}");
    assert!(
        waited < Duration::from_millis(2500),
        "granted after {waited:?}: the holder's lease ended after 1 s"
    );
    // A request that gives up answers busy with the time until the earliest lease ends.
    let busy = acquire(json!({"name": "db", "wait_ms": 50})).await;
    assert_eq!(busy["acquired"], false, "{busy}");
    assert!(busy["retry_after_ms"].as_u64().is_some(), "{busy}");
    let list: Value = http
        .get(server.url("/v1/semaphores"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["semaphores"][0]["waiting"], 0, "{list}");
}
