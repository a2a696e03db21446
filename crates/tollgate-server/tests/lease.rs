//! Local leases of a named policy (`[policies.<name>] lease = { ... }`) over a real Redis,
//! through the real server over HTTP: a hot key is charged in Redis in batches, the unused
//! units come back when the lease ends, and a lease on a window algorithm is a config error.

mod common;

use common::{run_to_exit, write_config, ServerProcess};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate::store::{Backend, Op, Store};
use tollgate::Policy;
use tollgate_redis::RedisStore;

#[tokio::test]
async fn a_leased_policy_charges_redis_in_batches_and_gives_back() {
    let Some(redis) = tollgate_testkit::require_redis() else {
        return;
    };
    let (_dir, path) = write_config(
        "hot",
        &format!(
            "[store]\nurl = \"{}\"\n[policies.api]\nrates = \"1000/day\"\n\
             lease = {{ max_batch = 50, min_batch = 4, duration = \"300ms\" }}\n",
            redis.url()
        ),
    );
    let server = ServerProcess::start(&["--config", path.to_str().unwrap()]);
    let http = reqwest::Client::new();
    for i in 0..100 {
        let body: Value = http
            .post(server.url("/v1/check"))
            .json(&json!({"policy": "api", "key": "hot"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["allowed"], true, "call {i}: {body}");
    }
    // What Redis holds for the key: the server's scope is the policy name.
    let policy = Policy::parse(tollgate::Algorithm::Gcra, "1000/day").unwrap();
    let store = RedisStore::builder().url(redis.url()).build().unwrap();
    let backend = store.scope("api").bind(&policy).unwrap();
    let free = || {
        let d = backend.execute("hot", Op::Peek(1), 0).unwrap().unwrap();
        d.remaining + 1
    };
    // Charged in batches: more than the 100 admitted calls are taken while a batch is held.
    let held = 1_000 - 100 - free();
    assert!(held > 0 && held <= 50, "held {held}");
    // The lease ends 300 ms after the last reserve: the unused units come back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while free() != 900 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(free(), 900, "exactly the 100 admitted calls stay charged");
}

#[test]
fn a_lease_on_a_window_algorithm_is_a_config_error() {
    let (_dir, path) = write_config(
        "window",
        "[policies.api]\nalgorithm = \"fixed_window\"\nrates = \"5/s\"\nlease = { max_batch = 10 }\n",
    );
    let (status, _, stderr) = run_to_exit(&["--config", path.to_str().unwrap()], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("policies.api.lease") && stderr.contains("fixed_window"),
        "{stderr}"
    );
}
