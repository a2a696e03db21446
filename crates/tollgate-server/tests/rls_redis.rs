//! RLS on the Redis store (a private redis-server from tollgate-testkit): two server
//! instances enforce one limit, a request is one script call (one round trip) whatever its
//! number of descriptors, a denial charges nothing on Redis either, and a store failure is
//! gRPC `UNAVAILABLE` (Envoy's `failure_mode_deny` decides) unless the failure policy
//! decides (`closed`: over limit, `open`: OK, `local`: an in-memory limiter).

mod rls_support;

use rls_support::*;
use std::sync::Arc;
use tollgate_server::app::App;
use tollgate_server::config::{Config, FailurePolicy, StoreUrl};
use tollgate_testkit::{must_have, redis_command, RedisServer, Resp};

const CONFIG: &str = "\
domain: fleet
descriptors:
  - key: user
    rate_limit: {unit: day, requests_per_unit: 4}
  - key: global
    rate_limit: {unit: day, requests_per_unit: 6}
";

fn config(url: &str, failure: FailurePolicy) -> Config {
    let mut c = Config::default();
    c.store = StoreUrl::Redis(url.to_string());
    c.failure = failure;
    c.breaker_failures = 0;
    // Generous, so a loaded test machine does not turn slow calls into failures.
    c.store_timeout = std::time::Duration::from_secs(2);
    c
}

fn script_calls(port: u16) -> u64 {
    let Ok(Resp::Bulk(Some(info))) = redis_command(port, &["INFO", "commandstats"]) else {
        panic!("INFO commandstats");
    };
    let info = String::from_utf8_lossy(&info).into_owned();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_one_limit_one_round_trip_and_nothing_charged_on_denial() {
    let Some(redis) = must_have("redis-server", RedisServer::start()) else {
        return;
    };
    let dir = Dir::new("redis");
    dir.write("fleet.yaml", CONFIG);
    let mut a = Rls::start_with(&dir, config(&redis.url(), FailurePolicy::Error), |_| {}).await;
    let mut b = Rls::start_with(&dir, config(&redis.url(), FailurePolicy::Error), |_| {}).await;
    let both = |u: &str| {
        req(
            "fleet",
            vec![desc(&[("user", u)]), desc(&[("global", "all")])],
        )
    };
    // Warm up (script load), then count the script calls of 4 two-descriptor requests.
    let _ = a.call(req("fleet", vec![desc(&[("user", "warm")])])).await;
    let _ = b.call(req("fleet", vec![desc(&[("user", "warm")])])).await;
    let before = script_calls(redis.port());
    let mut codes = Vec::new();
    for (i, u) in ["u1", "u1", "u2", "u2"].iter().enumerate() {
        let rls = if i % 2 == 0 { &mut a } else { &mut b };
        codes.push(rls.call(both(u)).await.overall_code);
    }
    assert_eq!(
        script_calls(redis.port()) - before,
        4,
        "one script call per request"
    );
    assert_eq!(codes, [OK, OK, OK, OK]);
    // global is at 4 of 6; user u1 at 2 of 4. Two more pass (one per server), then the
    // global limit denies on both servers and charges nothing.
    assert_eq!(a.call(both("u3")).await.overall_code, OK);
    assert_eq!(b.call(both("u3")).await.overall_code, OK);
    for rls in [&mut a, &mut b] {
        let r = rls.call(both("u1")).await;
        assert_eq!((r.overall_code, codes_of(&r)), (OVER, vec![OK, OVER]));
        assert_eq!(remaining(&r), [2, 0]);
    }
    let alone = b.call(req("fleet", vec![desc(&[("user", "u1")])])).await;
    assert_eq!(
        remaining(&alone),
        [1],
        "the two denied calls charged u1 nothing"
    );
    a.stop().await;
    b.stop().await;
}

fn codes_of(r: &envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse) -> Vec<i32> {
    codes(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_is_unavailable_unless_the_failure_policy_decides() {
    let Some(mut redis) = must_have("redis-server", RedisServer::start()) else {
        return;
    };
    let dir = Dir::new("redis-down");
    dir.write("fleet.yaml", CONFIG);
    let mut servers = Vec::new();
    for policy in [
        FailurePolicy::Error,
        FailurePolicy::Closed,
        FailurePolicy::Open,
        FailurePolicy::Local,
    ] {
        let app = Arc::new(App::new(&config(&redis.url(), policy), None).unwrap());
        servers.push(Rls::start_on(&dir, app, |_| {}).await);
    }
    for s in &mut servers {
        assert_eq!(
            s.call(req("fleet", vec![desc(&[("user", "x")])]))
                .await
                .overall_code,
            OK
        );
    }
    redis.stop();
    let r = || req("fleet", vec![desc(&[("user", "x")])]);
    let e = servers[0].call_err(r()).await;
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("store unavailable"), "{e:?}");
    assert_eq!(
        servers[1].call(r()).await.overall_code,
        OVER,
        "failure closed"
    );
    assert_eq!(servers[2].call(r()).await.overall_code, OK, "failure open");
    // local: an in-memory limiter of the same policy decides (4/day: 4 admitted, then over).
    let mut local = Vec::new();
    for _ in 0..5 {
        local.push(servers[3].call(r()).await.overall_code);
    }
    assert_eq!(local, [OK, OK, OK, OK, OVER], "failure local");
    // Redis back: decisions from the store again (a new server has no keys).
    redis.restart().expect("restart redis");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let back = loop {
        match servers[0].client.should_rate_limit(r()).await {
            Ok(resp) => break resp.into_inner(),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "the store did not come back: {e:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!((back.overall_code, remaining(&back)), (OK, vec![3]));
    for s in &mut servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_one_request_is_one_slot() {
    let Some(cluster) = must_have("redis cluster", tollgate_testkit::RedisCluster::start()) else {
        return;
    };
    let dir = Dir::new("cluster");
    dir.write("fleet.yaml", CONFIG);
    let mut c = Config::default();
    c.store = StoreUrl::RedisCluster(cluster.urls());
    c.store_timeout = std::time::Duration::from_secs(2);
    let mut rls = Rls::start_with(&dir, c, |_| {}).await;
    // Keys of one request share the domain's hash tag, so they live in one slot.
    let both = |u: &str| {
        req(
            "fleet",
            vec![desc(&[("user", u)]), desc(&[("global", "all")])],
        )
    };
    let mut codes = Vec::new();
    for u in ["a", "b", "c", "d", "e", "f", "g"] {
        codes.push(rls.call(both(u)).await.overall_code);
    }
    assert_eq!(codes, [OK, OK, OK, OK, OK, OK, OVER]);
    rls.stop().await;
}
