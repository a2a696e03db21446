//! Every HTTP error answers the documented JSON body `{"error": "…"}` with
//! `Content-Type: application/json` — one test per status. Regression for issue 10 §4:
//! `GET /v1/check` answered 405 with an empty body; and the semaphore `wait_ms` above the
//! maximum was silently shortened instead of refused.

mod common;

use common::ServerProcess;
use serde_json::{json, Value};
use std::io::{Read, Write};

/// Asserts a JSON error body and returns its message.
async fn json_error(r: reqwest::Response, status: u16) -> String {
    assert_eq!(r.status().as_u16(), status);
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(ct.as_deref(), Some("application/json"), "status {status}");
    let v: Value = r.json().await.expect("a JSON body");
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    v["error"].as_str().expect("an error message").to_string()
}

#[tokio::test]
async fn wrong_method_is_405_with_a_json_body_and_allow() {
    let server = ServerProcess::start(&[]);
    let http = reqwest::Client::new();
    let r = http.get(server.url("/v1/check")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    let msg = json_error(r, 405).await;
    assert_eq!(
        msg,
        "method GET is not allowed on /v1/check (allowed: POST)"
    );
    let r = http.delete(server.url("/health")).send().await.unwrap();
    assert!(json_error(r, 405).await.contains("allowed: GET"));
}

#[tokio::test]
async fn unknown_path_is_404_with_a_json_body() {
    let server = ServerProcess::start(&[]);
    let r = reqwest::get(server.url("/v2/nothing")).await.unwrap();
    assert!(json_error(r, 404).await.contains("no such endpoint"));
}

#[tokio::test]
async fn bad_input_is_400_and_too_large_is_413_with_json_bodies() {
    let server = ServerProcess::start(&[]);
    let http = reqwest::Client::new();
    let r = http
        .post(server.url("/v1/check"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert!(json_error(r, 400).await.contains("invalid JSON body"));
    let r = http
        .post(server.url("/v1/check"))
        .body(format!("{{\"key\":\"{}\"}}", "k".repeat(100 * 1024)))
        .send()
        .await
        .unwrap();
    assert!(json_error(r, 413).await.contains("larger than 65536 bytes"));
}

#[test]
fn a_body_not_received_in_time_is_408_with_a_json_body() {
    let dir = std::env::temp_dir().join(format!("tg-http-408-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tollgate.toml");
    std::fs::write(&path, "[server]\nrequest_timeout = \"300ms\"\n").unwrap();
    let server = ServerProcess::start(&["--config", path.to_str().unwrap()]);
    let mut s = std::net::TcpStream::connect(server.http).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // The head promises 20 bytes of body; only 2 arrive.
    s.write_all(b"POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\n\r\n{\"")
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("content-type: application/json"),
        "{answer}"
    );
    assert!(
        answer.ends_with(r#"{"error":"the request body was not received in time"}"#),
        "{answer}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// axum's own extractor rejections (415 without a JSON content type, 422 for JSON of the
/// wrong shape) are plain text by default; through `json_errors` they are JSON too. The
/// server's routes read their bodies themselves (the content type is not required, a bad
/// body is a 400), so this serves a route that uses axum's `Json` extractor, over a real
/// socket.
#[tokio::test]
async fn axum_rejections_415_and_422_become_json() {
    use axum::{routing::post, Json, Router};
    let app = Router::new()
        .route(
            "/x",
            post(|Json(v): Json<Vec<u32>>| async move { v.len().to_string() }),
        )
        .layer(axum::middleware::from_fn(
            tollgate_server::http::json_errors,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/x");
    let r = http.post(&url).body("[1]").send().await.unwrap();
    assert!(json_error(r, 415).await.contains("Content-Type"));
    let r = http.post(&url).json(&json!({"a": 1})).send().await.unwrap();
    assert!(json_error(r, 422).await.contains("invalid type"));
    let r = http.post(&url).json(&json!([1, 2])).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "2", "successes pass unchanged");
}

#[tokio::test]
async fn semaphore_wait_above_the_maximum_is_400_not_clamped() {
    let server = ServerProcess::start(&["--semaphore", "db=1"]);
    let http = reqwest::Client::new();
    let acquire = |wait: u64| {
        http.post(server.url("/v1/semaphore/acquire"))
            .json(&json!({"name": "db", "wait_ms": wait}))
            .send()
    };
    let msg = json_error(acquire(60_001).await.unwrap(), 400).await;
    assert_eq!(msg, "wait_ms must be at most 60000 (got 60001)");
    let msg = json_error(acquire(u64::MAX / 2).await.unwrap(), 400).await;
    assert!(msg.contains("at most 60000"), "{msg}");
    // the maximum itself is accepted (free semaphore: granted at once)
    let ok: Value = acquire(60_000).await.unwrap().json().await.unwrap();
    assert_eq!(ok["acquired"], true, "{ok}");
}
