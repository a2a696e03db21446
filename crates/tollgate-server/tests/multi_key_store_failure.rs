//! Regression (issue 11): a multi-key `POST /v1/check` answered by the failure policy while
//! Redis is down (open, local) reported no `store_error`, where the single-key check does.
//! Each item's decision now carries it, and the server counts the error.

mod common;

use common::ServerProcess;
use serde_json::{json, Value};

#[tokio::test]
async fn a_multi_key_check_answered_without_the_store_shows_the_store_error() {
    let Some(mut redis) = tollgate_testkit::require_redis() else {
        return;
    };
    let store = redis.url();
    let start = |failure: &str| {
        ServerProcess::start(&[
            "--store",
            &store,
            "--policy",
            "user=5/min",
            "--policy",
            "global=1/min",
            "--failure",
            failure,
            "--store-timeout",
            "200ms",
        ])
    };
    let open = start("open");
    let local = start("local");
    let http = reqwest::Client::new();
    let checks = json!({"checks": [
        {"policy": "user", "key": "alice"},
        {"policy": "global", "key": "all"},
    ]});
    let check = |s: &ServerProcess| http.post(s.url("/v1/check")).json(&checks).send();
    // While Redis answers: no store error.
    let body: Value = check(&open).await.unwrap().json().await.unwrap();
    assert_eq!(body["allowed"], true, "{body}");
    assert!(body["decisions"][0]["store_error"].is_null(), "{body}");
    redis.stop();
    for server in [&open, &local] {
        let body: Value = check(server).await.unwrap().json().await.unwrap();
        assert_eq!(body["allowed"], true, "{body}");
        for d in body["decisions"].as_array().unwrap() {
            assert!(d["store_error"].is_string(), "{body}");
        }
    }
    // The local fallback enforces the policies (global 1/min is spent) and still says why.
    let body: Value = check(&local).await.unwrap().json().await.unwrap();
    assert_eq!(
        (body["allowed"].as_bool(), body["denied_by_item"].as_u64()),
        (Some(false), Some(1)),
        "{body}"
    );
    assert!(body["decisions"][1]["store_error"].is_string(), "{body}");
    let metrics = http
        .get(open.url("/metrics"))
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
    assert!(errors >= 1.0, "{metrics}");
}
