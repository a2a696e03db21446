//! A store outage is visible and fails fast: `/ready` flips 200 → 503 → 200 with Redis
//! (`/health` stays liveness), the metrics show the store and the breaker, and while Redis is
//! frozen the server answers by its failure policy at once instead of waiting out the store
//! timeout on every call.

mod common;

use common::ServerProcess;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let r = http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn metric(http: &reqwest::Client, server: &ServerProcess, name: &str) -> Option<f64> {
    let text = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `/ready` until it answers `want`, within 10 s.
async fn wait_ready(http: &reqwest::Client, server: &ServerProcess, want: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(http, server.url("/ready")).await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/ready stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ready_flips_with_the_store_and_health_stays_live() {
    let Some(mut redis) = tollgate_testkit::require_redis() else {
        return;
    };
    let url = redis.url();
    let server = ServerProcess::start(&[
        "--store",
        &url,
        "--breaker-cool-down",
        "200ms",
        "--policy",
        "api=5/min",
    ]);
    let http = reqwest::Client::new();
    let (status, body) = get(&http, server.url("/ready")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["breaker"], "closed");
    assert_eq!(metric(&http, &server, "tollgate_store_up").await, Some(1.0));

    redis.stop();
    // the open connection broke ("broken pipe", kind `connection`); then: refused
    let (status, body) = get(&http, server.url("/ready")).await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = get(&http, server.url("/ready")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["error"]["kind"], "connection_refused", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("refused"));
    let (status, body) = get(&http, server.url("/health")).await;
    assert_eq!((status, &body["status"]), (200, &json!("ok")), "liveness");
    assert_eq!(metric(&http, &server, "tollgate_store_up").await, Some(0.0));
    // checks fail (failure policy `error`) with the cause, until the breaker opens
    for _ in 0..6 {
        let r = http
            .post(server.url("/v1/check"))
            .json(&json!({"policy": "api", "key": "k"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 503);
    }
    let (status, body) = get(&http, server.url("/ready")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["breaker"], "open", "{body}");
    assert_eq!(
        metric(
            &http,
            &server,
            "tollgate_circuit_breaker_state{breaker=\"redis\"}"
        )
        .await,
        Some(1.0)
    );

    redis.restart().unwrap();
    let body = wait_ready(&http, &server, 200).await;
    assert_eq!(body["breaker"], "closed", "{body}");
    assert_eq!(metric(&http, &server, "tollgate_store_up").await, Some(1.0));
    assert_eq!(
        metric(
            &http,
            &server,
            "tollgate_circuit_breaker_state{breaker=\"redis\"}"
        )
        .await,
        Some(0.0)
    );
    let body: Value = http
        .post(server.url("/v1/check"))
        .json(&json!({"policy": "api", "key": "k"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["allowed"], true);
    assert_eq!(body["remaining"], 4, "Redis decides again: {body}");
    assert!(body["store_error"].is_null(), "{body}");
}

fn signal(redis: &tollgate_testkit::RedisServer, sig: &str) {
    let pid = redis.pid().expect("redis-server runs").to_string();
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

#[tokio::test]
async fn a_frozen_redis_is_answered_by_the_failure_policy_at_once() {
    let Some(redis) = tollgate_testkit::require_redis() else {
        return;
    };
    let url = redis.url();
    let server = ServerProcess::start(&[
        "--store",
        &url,
        "--failure",
        "open",
        "--store-timeout",
        "300ms",
        "--breaker-failures",
        "3",
        "--breaker-cool-down",
        "300ms",
        "--policy",
        "api=5/min",
    ]);
    let http = reqwest::Client::new();
    let check = || async {
        let started = Instant::now();
        let body: Value = http
            .post(server.url("/v1/check"))
            .json(&json!({"policy": "api", "key": "k"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (started.elapsed(), body)
    };
    assert_eq!(check().await.1["remaining"], 4);
    signal(&redis, "STOP");
    for _ in 0..3 {
        let (took, body) = check().await;
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert_eq!(body["allowed"], true, "fail open: {body}");
        assert!(
            body["store_error"].as_str().unwrap().contains("timed out"),
            "{body}"
        );
    }
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let (took, body) = check().await;
        slowest = slowest.max(took);
        assert_eq!(body["allowed"], true, "{body}");
        assert!(
            body["store_error"]
                .as_str()
                .unwrap()
                .contains("circuit open"),
            "{body}"
        );
    }
    assert!(
        slowest < Duration::from_millis(100),
        "the breaker answers without waiting for Redis (slowest {slowest:?})"
    );
    let (status, body) = get(&http, server.url("/ready")).await;
    assert_eq!(status, 503, "{body}");
    signal(&redis, "CONT");
    wait_ready(&http, &server, 200).await;
    let (_, body) = check().await;
    assert!(body["store_error"].is_null(), "{body}");
}
