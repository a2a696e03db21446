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

/// A client that hangs up while its acquire waits is not granted the permit later: the server
/// notices the closed connection and drops the wait, so the permit goes to the next live
/// caller instead of sitting in a lease nobody will release. hyper's own end-of-file check
/// while a request is in flight is off (`half_close`: it cost a read buffer per request); the
/// acquire watches the socket itself (`http::HangUp`). Fails when that watch is skipped.
#[tokio::test]
async fn a_waiter_that_hangs_up_is_not_granted_the_permit() {
    use tokio::io::AsyncWriteExt;
    let server = ServerProcess::start(&["--semaphore", "db=1"]);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let req = http.post(server.url(path)).json(&body);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let held = post(
        "/v1/semaphore/acquire",
        json!({"name": "db", "lease_ms": 60_000}),
    )
    .await;
    assert_eq!(held["acquired"], true, "{held}");

    let body = json!({"name": "db", "wait_ms": 10_000, "lease_ms": 60_000}).to_string();
    let mut gone = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let request = format!(
        "POST /v1/semaphore/acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    gone.write_all(request.as_bytes()).await.unwrap();
    let waiting = |http: reqwest::Client, url: String| async move {
        let list: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        list["semaphores"][0]["waiting"].as_u64().unwrap()
    };
    let list_url = server.url("/v1/semaphores");
    let deadline = Instant::now() + Duration::from_secs(5);
    while waiting(http.clone(), list_url.clone()).await != 1 {
        assert!(
            Instant::now() < deadline,
            "the acquire never started waiting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(gone);
    let deadline = Instant::now() + Duration::from_secs(5);
    while waiting(http.clone(), list_url.clone()).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the hung-up client still waits 5 s after closing its connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let released = post(
        "/v1/semaphore/release",
        json!({"name": "db", "lease_id": held["lease_id"]}),
    )
    .await;
    assert_eq!(released["released"], true, "{released}");
    let next = post(
        "/v1/semaphore/acquire",
        json!({"name": "db", "wait_ms": 1000}),
    )
    .await;
    assert_eq!(
        next["acquired"], true,
        "the permit went to the client that hung up: {next}"
    );
}
