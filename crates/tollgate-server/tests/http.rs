//! The HTTP/JSON API of the real binary, with reqwest.

mod common;

use common::ServerProcess;
use serde_json::{json, Value};

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn check_returns_decisions_and_ietf_headers() {
    let server = ServerProcess::start(&["--policy", "api=3/min"]);
    let http = reqwest::Client::new();
    let check = |key: &str| {
        http.post(server.url("/v1/check"))
            .json(&json!({"policy": "api", "key": key}))
            .send()
    };
    // GCRA 3/min: one unit every 20 s, burst 3.
    let r = check("alice").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit-policy").unwrap(), "\"api\";q=3;w=60");
    assert_eq!(header(&r, "ratelimit").unwrap(), "\"api\";r=2;t=20");
    assert_eq!(header(&r, "retry-after"), None);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["allowed"], true);
    assert_eq!(body["limit"], 3);
    assert_eq!(body["remaining"], 2);
    assert_eq!(body["retry_after_ms"], 0);
    assert_eq!(body["reset_after_ms"], 20_000);
    assert_eq!(body["denied_by"], Value::Null);
    assert_eq!(body["policy"], "api");

    for remaining in [1, 0] {
        let body: Value = check("alice").await.unwrap().json().await.unwrap();
        assert_eq!(body["remaining"], remaining);
    }
    let r = check("alice").await.unwrap();
    assert_eq!(r.status(), 200, "a denial is a decision, not an HTTP error");
    assert_eq!(header(&r, "retry-after").unwrap(), "20");
    assert_eq!(header(&r, "ratelimit").unwrap(), "\"api\";r=0;t=20");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["allowed"], false);
    assert_eq!(body["denied_by"], 0);
    let retry = body["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 19_000 && retry <= 20_000, "{retry}");

    // other keys are independent
    let body: Value = check("bob").await.unwrap().json().await.unwrap();
    assert_eq!(body["allowed"], true);
}

#[tokio::test]
async fn peek_reset_refund_inline_rates_and_policies() {
    let server = ServerProcess::start(&[
        "--policy",
        "api=2/min",
        "--policy",
        "login=sliding_log:5/min;20/hour",
    ]);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| http.post(server.url(path)).json(&body).send();

    let body: Value = post("/v1/peek", json!({"policy": "api", "key": "k"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (body["allowed"].as_bool(), body["remaining"].as_u64()),
        (Some(true), Some(1))
    );
    let body: Value = post("/v1/check", json!({"policy": "api", "key": "k", "cost": 2}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["remaining"], 0);
    let body: Value = post("/v1/peek", json!({"policy": "api", "key": "k"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["allowed"], false);
    let r = post(
        "/v1/refund",
        json!({"policy": "api", "key": "k", "amount": 1}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = post("/v1/peek", json!({"policy": "api", "key": "k"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["allowed"], true);
    let r = post("/v1/reset", json!({"policy": "api", "key": "k"}))
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"reset": true}));
    let body: Value = post("/v1/check", json!({"policy": "api", "key": "k", "cost": 2}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["allowed"], true);

    // inline rates, with an algorithm
    let inline = json!({"rates": "1/hour", "algorithm": "fixed_window", "key": "x"});
    let body: Value = post("/v1/check", inline.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (body["allowed"].as_bool(), body["policy"].as_str()),
        (Some(true), Some("inline"))
    );
    let r = post("/v1/check", inline).await.unwrap();
    assert_eq!(
        header(&r, "ratelimit-policy").unwrap(),
        "\"inline\";q=1;w=3600"
    );
    assert_eq!(r.json::<Value>().await.unwrap()["allowed"], false);

    // multi-rate policy: one RateLimit-Policy item per rate
    let r = post("/v1/check", json!({"policy": "login", "key": "u"}))
        .await
        .unwrap();
    assert_eq!(
        header(&r, "ratelimit-policy").unwrap(),
        "\"login-0\";q=5;w=60, \"login-1\";q=20;w=3600"
    );

    let list: Value = http
        .get(server.url("/v1/policies"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "login"]);
    assert_eq!(list["policies"][1]["algorithm"], "sliding_log");
    assert_eq!(list["policies"][1]["rates"][1]["period_ms"], 3_600_000);

    let health: Value = http
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["store"], "memory");
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_server_stays_up() {
    let server = ServerProcess::start(&["--policy", "api=2/min"]);
    let http = reqwest::Client::new();
    let raw = |body: &'static str| {
        http.post(server.url("/v1/check"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: [(&str, u16, &str); 9] = [
        ("{not json", 400, "invalid JSON body"),
        (r#"{"key": "k"}"#, 400, "missing \"policy\""),
        (r#"{"policy": "nope", "key": "k"}"#, 404, "unknown policy"),
        (r#"{"policy": "api", "key": ""}"#, 400, "must not be empty"),
        (
            r#"{"policy": "api", "key": "k", "cost": 0}"#,
            400,
            "at least 1",
        ),
        (
            r#"{"policy": "api", "key": "k", "cost": 3}"#,
            400,
            "capacity",
        ),
        (r#"{"rates": "ten per second", "key": "k"}"#, 400, "rates"),
        (
            r#"{"policy": "api", "rates": "1/s", "key": "k"}"#,
            400,
            "not both",
        ),
        (
            r#"{"policy": "api", "key": "k", "colour": 1}"#,
            400,
            "unknown field",
        ),
    ];
    for (body, status, needle) in cases {
        let r = raw(body).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        let v: Value = r.json().await.unwrap();
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    // key too long
    let long = "k".repeat(513);
    let r = http
        .post(server.url("/v1/check"))
        .json(&json!({"policy": "api", "key": long}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("maximum is 512"));
    // body too large
    let big = format!(
        "{{\"policy\":\"api\",\"key\":\"{}\"}}",
        "k".repeat(100 * 1024)
    );
    let r = http
        .post(server.url("/v1/check"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // the unread rest of the body ends the connection, and the client is told so (regression:
    // reqwest reused it and the next request failed with IncompleteMessage, 1 run in 40)
    assert_eq!(r.headers()["connection"], "close");
    // unknown endpoint
    let r = http.get(server.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // still serving
    let r = http
        .post(server.url("/v1/check"))
        .json(&json!({"policy": "api", "key": "k"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["allowed"], true);
}

#[tokio::test]
async fn metrics_count_decisions_by_policy_and_outcome() {
    let server = ServerProcess::start(&["--policy", "api=1/min"]);
    let http = reqwest::Client::new();
    for _ in 0..3 {
        http.post(server.url("/v1/check"))
            .json(&json!({"policy": "api", "key": "m"}))
            .send()
            .await
            .unwrap();
    }
    let text = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(
        line("tollgate_server_decisions_total{policy=\"api\",outcome=\"allowed\"}"),
        1.0
    );
    assert_eq!(
        line("tollgate_server_decisions_total{policy=\"api\",outcome=\"denied\"}"),
        2.0
    );
    assert_eq!(
        line("tollgate_server_decision_duration_seconds_count{policy=\"api\"}"),
        3.0
    );
    assert!(text
        .contains("tollgate_server_decision_duration_seconds_bucket{policy=\"api\",le=\"0.001\"}"));
    assert_eq!(line("tollgate_server_store_errors_total"), 0.0);
}

#[tokio::test]
async fn semaphore_acquire_release_extend_with_lease_ids() {
    let server = ServerProcess::start(&["--semaphore", "db=2"]);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| http.post(server.url(path)).json(&body).send();
    let a: Value = post("/v1/semaphore/acquire", json!({"name": "db"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["acquired"], true);
    assert_eq!(a["lease_id"].as_str().unwrap().len(), 32);
    assert!(a["expires_in_ms"].as_u64().unwrap() > 29_000);
    let b: Value = post(
        "/v1/semaphore/acquire",
        json!({"name": "db", "lease_ms": 500}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(b["acquired"], true);
    let r = post("/v1/semaphore/acquire", json!({"name": "db"}))
        .await
        .unwrap();
    assert_eq!(header(&r, "retry-after").as_deref(), Some("1"));
    let busy: Value = r.json().await.unwrap();
    assert_eq!(
        (busy["acquired"].as_bool(), busy["in_use"].as_u64()),
        (Some(false), Some(2))
    );
    // waiting: b's 500 ms lease expires and the waiter gets its permit
    let waited: Value = post(
        "/v1/semaphore/acquire",
        json!({"name": "db", "wait_ms": 3000}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(waited["acquired"], true, "{waited}");
    let ext: Value = post(
        "/v1/semaphore/extend",
        json!({"name": "db", "lease_id": a["lease_id"], "lease_ms": 60000}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(ext["extended"], true);
    assert!(ext["expires_in_ms"].as_u64().unwrap() > 59_000);
    let rel: Value = post(
        "/v1/semaphore/release",
        json!({"name": "db", "lease_id": a["lease_id"]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(rel["released"], true);
    let again: Value = post(
        "/v1/semaphore/release",
        json!({"name": "db", "lease_id": a["lease_id"]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(again["released"], false);
    let list: Value = http
        .get(server.url("/v1/semaphores"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["semaphores"][0]["capacity"], 2);
    assert_eq!(list["semaphores"][0]["in_use"], 1);
    let r = post("/v1/semaphore/acquire", json!({"name": "nope"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = post(
        "/v1/semaphore/release",
        json!({"name": "db", "lease_id": "xyz"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    let mut server = ServerProcess::start(&["--semaphore", "db=1"]);
    let http = reqwest::Client::new();
    let first: Value = http
        .post(server.url("/v1/semaphore/acquire"))
        .json(&json!({"name": "db", "lease_ms": 800}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["acquired"], true);
    // This request waits for the first lease to expire (~800 ms): it is in flight when the
    // server is told to stop.
    let waiting = tokio::spawn(
        http.post(server.url("/v1/semaphore/acquire"))
            .json(&json!({"name": "db", "wait_ms": 5000}))
            .send(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    server.terminate();
    let r = waiting.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["acquired"], true, "{body}");
    let status = server.wait_exit(std::time::Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

/// A client that sends its request and then closes its sending side (`shutdown(SHUT_WR)`, as
/// `nc -N` or a script piping into a socket does) still gets the answer: the server does not
/// take the end of the request stream for a hang-up while the request is in flight.
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = ServerProcess::start(&["--policy", "api=5/s"]);
    let body = r#"{"policy":"api","key":"half-closed"}"#;
    let mut stream = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let request = format!(
        "POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_string(&mut answer),
    )
    .await
    .expect("the server closes the connection after answering")
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"allowed\":true"), "{answer}");
}
