//! The rate-limit layer over real HTTP: axum servers on loopback sockets, reqwest clients.

mod common;

use axum::routing::get;
use axum::Router;
use common::{client, client_from, header, serve};
use futures_util::future::BoxFuture;
use http::Method;
use std::time::Duration;
use tollgate::store::multi::{KeyCheck, MultiBackend, MultiDecision, MultiOp};
use tollgate::store::{Backend, Op};
use tollgate::time::{ManualClock, Micros};
use tollgate::{Decision, Error, Limiter, Policy, Rate, StoreError};
use tollgate_tower::headers::HeaderOptions;
use tollgate_tower::key::{ClientIp, Global, Header, PeerIp};
use tollgate_tower::layer::MissingKey;
use tollgate_tower::{HttpPolicy, RateLimitLayer};

const T0: Micros = 1_700_000_000_000_000;

fn per_minute(n: u64, clock: &ManualClock) -> Limiter {
    Limiter::builder(Policy::gcra(Rate::per_minute(n).unwrap()).unwrap())
        .clock(clock.clone())
        .build()
}

fn app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/", get(|| async { "root" }))
        .route("/a", get(|| async { "a" }))
        .route("/b", get(|| async { "b" }))
        .route(
            "/login",
            get(|| async { "form" }).post(|| async { "welcome" }),
        )
        .layer(layer)
}

async fn statuses(client: &reqwest::Client, url: &str, n: usize) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        match client.get(url).send().await.unwrap().status().as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, limited)
}

#[tokio::test]
async fn counts_of_200_and_429_match_the_policy() {
    let clock = ManualClock::new(T0);
    let layer = RateLimitLayer::new(HttpPolicy::new(
        "per-ip",
        per_minute(5, &clock),
        PeerIp::new(),
    ))
    .unwrap();
    let base = serve(app(layer)).await;
    assert_eq!(statuses(&client(), &format!("{base}/"), 8).await, (5, 3));
    // Another peer address has its own budget.
    assert_eq!(
        statuses(&client_from([127, 0, 0, 2]), &format!("{base}/"), 6).await,
        (5, 1)
    );
    // One emission interval later (12 s) exactly one more request fits.
    clock.advance(Duration::from_secs(12));
    assert_eq!(statuses(&client(), &format!("{base}/"), 3).await, (1, 2));
}

#[tokio::test]
async fn header_values_are_exact() {
    let clock = ManualClock::new(T0);
    let layer = RateLimitLayer::builder()
        .policy(HttpPolicy::new(
            "per-ip",
            per_minute(10, &clock),
            PeerIp::new(),
        ))
        .headers(HeaderOptions::default().legacy(true))
        .build()
        .unwrap();
    let base = serve(app(layer)).await;
    let c = client();
    // GCRA 10/min: emission interval 6 s, tolerance 60 s.
    let r = c.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit-policy"), "\"per-ip\";q=10;w=60");
    assert_eq!(header(&r, "ratelimit"), "\"per-ip\";r=9;t=6");
    assert_eq!(header(&r, "x-ratelimit-limit"), "10");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "9");
    assert_eq!(header(&r, "x-ratelimit-reset"), "6");
    assert_eq!(header(&r, "retry-after"), "");
    assert_eq!(r.text().await.unwrap(), "root");
    for _ in 0..9 {
        assert_eq!(
            c.get(format!("{base}/")).send().await.unwrap().status(),
            200
        );
    }
    let r = c.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "6");
    assert_eq!(header(&r, "ratelimit"), "\"per-ip\";r=0;t=60");
    assert_eq!(header(&r, "ratelimit-policy"), "\"per-ip\";q=10;w=60");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(body["title"], "Too Many Requests");
    assert_eq!(body["type"], "about:blank");
    assert_eq!(body["policy"], "per-ip");
    assert_eq!(body["retry_after"], 6);

    // 2.5 s later the wait is 3.5 s: Retry-After rounds up.
    clock.advance(Duration::from_millis(2_500));
    let r = c.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "4");
    assert_eq!(header(&r, "ratelimit"), "\"per-ip\";r=0;t=58");
    clock.advance(Duration::from_millis(3_500));
    let r = c.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit"), "\"per-ip\";r=0;t=60");
}

#[tokio::test]
async fn fields_on_allowed_responses_can_be_turned_off() {
    let clock = ManualClock::new(T0);
    let layer = RateLimitLayer::builder()
        .policy(HttpPolicy::new("p", per_minute(1, &clock), PeerIp::new()))
        .headers(HeaderOptions::default().on_allowed(false))
        .build()
        .unwrap();
    let base = serve(app(layer)).await;
    let r = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit"), "");
    let r = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "ratelimit"), "\"p\";r=0;t=60");
    assert_eq!(header(&r, "retry-after"), "60");
}

#[tokio::test]
async fn clones_for_every_route_share_one_limiter() {
    let clock = ManualClock::new(T0);
    let layer =
        RateLimitLayer::new(HttpPolicy::new("global", per_minute(3, &clock), Global)).unwrap();
    let base = serve(app(layer)).await;
    let c = client();
    let mut got = Vec::new();
    for path in ["/a", "/b", "/", "/a", "/b"] {
        got.push(
            c.get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(got, [200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let clock = ManualClock::new(T0);
    let extractor = ClientIp::new(["10.0.0.0/8"]).unwrap();
    let layer =
        RateLimitLayer::new(HttpPolicy::new("client", per_minute(2, &clock), extractor)).unwrap();
    let base = serve(app(layer)).await;
    let c = client();
    let mut got = Vec::new();
    for i in 0..4 {
        let r = c
            .get(format!("{base}/"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .send()
            .await
            .unwrap();
        got.push(r.status().as_u16());
    }
    // Every request counts against the real peer 127.0.0.1.
    assert_eq!(got, [200, 200, 429, 429]);
}

#[tokio::test]
async fn trusted_proxy_chains_resolve_the_right_client() {
    let clock = ManualClock::new(T0);
    // 127.0.0.1 is our load balancer; 10/8 are internal proxies. 127.0.0.2 is a stranger.
    let extractor = ClientIp::new(["127.0.0.1/32", "10.0.0.0/8"]).unwrap();
    let layer =
        RateLimitLayer::new(HttpPolicy::new("client", per_minute(1, &clock), extractor)).unwrap();
    let base = serve(app(layer)).await;
    let via_proxy = client();
    let send = |c: reqwest::Client, xff: &'static str| {
        let url = format!("{base}/");
        async move {
            c.get(url)
                .header("x-forwarded-for", xff)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // The client is 203.0.113.5: the first entry from the right that is not a trusted proxy.
    assert_eq!(
        send(via_proxy.clone(), "6.6.6.6, 203.0.113.5, 10.0.0.9").await,
        200
    );
    // Same client, a different spoofed leftmost entry and another internal hop: same key.
    assert_eq!(
        send(via_proxy.clone(), "7.7.7.7, 203.0.113.5, 10.1.1.1").await,
        429
    );
    assert_eq!(send(via_proxy.clone(), "203.0.113.5").await, 429);
    // Another client behind the proxy has its own budget, whatever it puts on the left.
    assert_eq!(
        send(via_proxy.clone(), "203.0.113.5, 203.0.113.6").await,
        200
    );
    // A stranger connecting directly is keyed by its own address, not by what it claims.
    let stranger = client_from([127, 0, 0, 2]);
    assert_eq!(send(stranger.clone(), "203.0.113.7").await, 200);
    assert_eq!(send(stranger.clone(), "203.0.113.8").await, 429);
    // ... and cannot use someone else's budget up: 203.0.113.7 via the proxy is still fresh.
    assert_eq!(send(via_proxy, "203.0.113.7").await, 200);
}

#[tokio::test]
async fn rfc7239_forwarded_through_a_trusted_proxy() {
    let clock = ManualClock::new(T0);
    let extractor = ClientIp::new(["127.0.0.1/32"])
        .unwrap()
        .header(tollgate_tower::key::ForwardedHeader::Forwarded)
        .ipv6_prefix(64);
    let layer =
        RateLimitLayer::new(HttpPolicy::new("client", per_minute(1, &clock), extractor)).unwrap();
    let base = serve(app(layer)).await;
    let c = client();
    let send = |fwd: &'static str| {
        let req = c.get(format!("{base}/")).header("forwarded", fwd);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send("for=\"[2001:db8:1:2::1]:443\";proto=https").await, 200);
    // Same /64: same key.
    assert_eq!(send("for=\"[2001:db8:1:2::ffff]\"").await, 429);
    assert_eq!(send("for=\"[2001:db8:1:3::1]\"").await, 200);
    // An obfuscated identifier from the trusted proxy cannot be keyed: 400, not a pass.
    assert_eq!(send("for=_hidden").await, 400);
}

#[tokio::test]
async fn shadow_mode_never_blocks() {
    let clock = ManualClock::new(T0);
    let limiter = per_minute(2, &clock);
    let layer = RateLimitLayer::builder()
        .policy(HttpPolicy::new("shadowed", limiter.clone(), PeerIp::new()))
        .shadow(true)
        .build()
        .unwrap();
    let base = serve(app(layer)).await;
    let c = client();
    let mut remaining = Vec::new();
    for _ in 0..6 {
        let r = c.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "retry-after"), "");
        remaining.push(header(&r, "ratelimit"));
        assert_eq!(r.text().await.unwrap(), "root");
    }
    assert_eq!(remaining[0], "\"shadowed\";r=1;t=30");
    assert_eq!(remaining[1], "\"shadowed\";r=0;t=60");
    // The decisions are real: the would-be denials say so.
    assert_eq!(remaining[5], "\"shadowed\";r=0;t=60");
    // Denied requests were not charged: the key is exactly at its limit.
    let d = limiter.peek("127.0.0.1", 1).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    assert_eq!(d.reset_after, Duration::from_secs(60));
}

#[tokio::test]
async fn shadow_mode_passes_requests_without_a_key() {
    let clock = ManualClock::new(T0);
    let layer = RateLimitLayer::builder()
        .policy(HttpPolicy::new(
            "api-key",
            per_minute(1, &clock),
            Header::named("x-api-key").unwrap(),
        ))
        .shadow(true)
        .build()
        .unwrap();
    let base = serve(app(layer)).await;
    let r = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_request_without_a_key_gets_the_configured_response() {
    let clock = ManualClock::new(T0);
    let layer = RateLimitLayer::new(
        HttpPolicy::new(
            "api-key",
            per_minute(2, &clock),
            Header::named("x-api-key").unwrap(),
        )
        .on_missing_key(MissingKey::Reject(http::StatusCode::UNAUTHORIZED)),
    )
    .unwrap();
    let base = serve(app(layer)).await;
    let c = client();
    let r = c.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], 401);
    assert_eq!(body["policy"], "api-key");
    assert!(
        body["detail"].as_str().unwrap().contains("x-api-key"),
        "{body}"
    );
    let r = c
        .get(format!("{base}/"))
        .header("x-api-key", "k1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit"), "\"api-key\";r=1;t=30");

    // The default is 400.
    let layer = RateLimitLayer::new(HttpPolicy::new(
        "api-key",
        per_minute(2, &clock),
        Header::named("x-api-key").unwrap(),
    ))
    .unwrap();
    let base = serve(app(layer)).await;
    assert_eq!(
        c.get(format!("{base}/")).send().await.unwrap().status(),
        400
    );
}

#[tokio::test]
async fn missing_key_fallback_and_skip() {
    let clock = ManualClock::new(T0);
    // Anonymous callers share one key; callers with a key have their own.
    let layer = RateLimitLayer::new(
        HttpPolicy::new(
            "api-key",
            per_minute(1, &clock),
            Header::named("x-api-key").unwrap(),
        )
        .on_missing_key(MissingKey::Fallback("anonymous".into())),
    )
    .unwrap();
    let base = serve(app(layer)).await;
    let c = client();
    assert_eq!(statuses(&c, &format!("{base}/"), 2).await, (1, 1));
    let r = c
        .get(format!("{base}/"))
        .header("x-api-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Skip: the policy does not apply to requests without the header.
    let layer = RateLimitLayer::new(
        HttpPolicy::new(
            "api-key",
            per_minute(1, &clock),
            Header::named("x-api-key").unwrap(),
        )
        .on_missing_key(MissingKey::Skip),
    )
    .unwrap();
    let base = serve(app(layer)).await;
    assert_eq!(statuses(&c, &format!("{base}/"), 3).await, (3, 0));
}

#[tokio::test]
async fn several_policies_are_all_or_nothing() {
    let clock = ManualClock::new(T0);
    let per_user = per_minute(3, &clock);
    let global = per_minute(4, &clock);
    let layer = RateLimitLayer::builder()
        .policy(HttpPolicy::new(
            "per-user",
            per_user.clone(),
            Header::named("x-user").unwrap(),
        ))
        .policy(HttpPolicy::new("global", global.clone(), Global))
        .build()
        .unwrap();
    let base = serve(app(layer)).await;
    let c = client();
    let send = |user: &'static str| {
        let req = c.get(format!("{base}/")).header("x-user", user);
        async move { req.send().await.unwrap() }
    };
    for expected_r in [2, 1, 0] {
        let r = send("alice").await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "ratelimit-policy"),
            "\"per-user\";q=3;w=60, \"global\";q=4;w=60"
        );
        assert!(header(&r, "ratelimit").starts_with(&format!("\"per-user\";r={expected_r};")));
    }
    // Denied by per-user: the global limiter is not charged.
    let r = send("alice").await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "ratelimit"), "\"per-user\";r=0;t=60");
    assert_eq!(global.peek("global", 1).unwrap().remaining, 0);
    // bob takes the last global unit...
    let r = send("bob").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "ratelimit"),
        "\"per-user\";r=2;t=20, \"global\";r=0;t=60"
    );
    // ... and is then denied by the global policy, with nothing charged on his own key.
    let r = send("bob").await;
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["policy"], "global");
    assert_eq!(per_user.peek("bob", 1).unwrap().remaining, 1);
    assert_eq!(per_user.peek("carol", 1).unwrap().remaining, 2);
}

#[tokio::test]
async fn a_denial_after_the_peek_refunds_the_earlier_charges() {
    // The second limiter denies at check time although its peek admitted (a racing request
    // took the unit in between): the first limiter's charge is refunded.
    let clock = ManualClock::new(T0);
    let first = per_minute(5, &clock);
    let racy = Limiter::builder(Policy::gcra(Rate::per_minute(5).unwrap()).unwrap())
        .clock(clock.clone())
        .build_on(DenyOnCheck);
    let layer = RateLimitLayer::builder()
        .policy(HttpPolicy::new("first", first.clone(), Global))
        .policy(HttpPolicy::new("racy", racy, Global))
        .build()
        .unwrap();
    let base = serve(app(layer)).await;
    let r = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(first.peek("global", 1).unwrap().remaining, 4);
}

/// Admits every peek, denies every check.
struct DenyOnCheck;

impl Backend for DenyOnCheck {
    fn execute(&self, _key: &str, op: Op, _now: Micros) -> Result<Option<Decision>, Error> {
        Ok(match op {
            Op::Peek(_) => Some(Decision::from_parts(true, 5, 4, 0, 12_000_000, None)),
            Op::Check(_) => Some(Decision::from_parts(
                false,
                5,
                0,
                1_000_000,
                60_000_000,
                Some(0),
            )),
            _ => None,
        })
    }
    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(async move { self.execute(key, op, now) })
    }
}

/// Test backends decide a multi-key call key by key (not atomic: they are fakes).
macro_rules! key_by_key_multi {
    ($backend:ty) => {
        impl MultiBackend for $backend {
            fn execute_all(
                items: &[KeyCheck<'_, Self>],
                op: MultiOp,
                now: Micros,
            ) -> Result<MultiDecision, Error> {
                let mut decisions = Vec::new();
                for item in items {
                    let single = match op {
                        MultiOp::Check => Op::Check(item.cost()),
                        _ => Op::Peek(item.cost()),
                    };
                    let d = item.backend().execute(item.key(), single, now)?;
                    decisions.push(d.expect("check and peek decide"));
                }
                Ok(MultiDecision::from_decisions(decisions))
            }
            fn execute_all_async<'a>(
                items: &'a [KeyCheck<'a, Self>],
                op: MultiOp,
                now: Micros,
            ) -> BoxFuture<'a, Result<MultiDecision, Error>> {
                Box::pin(async move { Self::execute_all(items, op, now) })
            }
        }
    };
}
key_by_key_multi!(DenyOnCheck);
key_by_key_multi!(DownStore);

/// A store that is down.
struct DownStore;

impl Backend for DownStore {
    fn execute(&self, _key: &str, _op: Op, _now: Micros) -> Result<Option<Decision>, Error> {
        Err(Error::Store(StoreError::new("redis", "connection refused")))
    }
    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(async move { self.execute(key, op, now) })
    }
}

#[tokio::test]
async fn a_store_failure_answers_503_never_500() {
    let limiter =
        Limiter::builder(Policy::gcra(Rate::per_minute(5).unwrap()).unwrap()).build_on(DownStore);
    let layer = RateLimitLayer::new(HttpPolicy::new("ip", limiter.clone(), PeerIp::new())).unwrap();
    let base = serve(app(layer)).await;
    let r = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], 503);
    assert_eq!(body["policy"], "ip");

    // In shadow mode a store failure never blocks either.
    let layer = RateLimitLayer::builder()
        .policy(HttpPolicy::new("ip", limiter, PeerIp::new()))
        .shadow(true)
        .build()
        .unwrap();
    let base = serve(app(layer)).await;
    let r = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn per_route_and_per_method_policies() {
    let clock = ManualClock::new(T0);
    let layer = RateLimitLayer::builder()
        .policy(
            HttpPolicy::new("login", per_minute(1, &clock), PeerIp::new())
                .path("/login")
                .method(Method::POST),
        )
        .policy(HttpPolicy::new("reads", per_minute(2, &clock), PeerIp::new()).path_prefix("/a"))
        .build()
        .unwrap();
    let base = serve(app(layer)).await;
    let c = client();
    let post = || c.post(format!("{base}/login")).send();
    assert_eq!(post().await.unwrap().status(), 200);
    let r = post().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "ratelimit-policy"), "\"login\";q=1;w=60");
    // GET /login and / are not limited (and carry no fields).
    for _ in 0..3 {
        let r = c.get(format!("{base}/login")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "ratelimit"), "");
    }
    assert_eq!(statuses(&c, &format!("{base}/"), 3).await, (3, 0));
    assert_eq!(statuses(&c, &format!("{base}/a"), 3).await, (2, 1));
}

#[tokio::test]
async fn invalid_configurations_are_rejected_at_build() {
    let clock = ManualClock::new(T0);
    let bad_name = RateLimitLayer::new(HttpPolicy::new("has space", per_minute(1, &clock), Global));
    assert!(matches!(
        bad_name,
        Err(tollgate_tower::LayerError::InvalidPolicyName(_))
    ));
    let zero_cost =
        RateLimitLayer::new(HttpPolicy::new("z", per_minute(1, &clock), Global).cost(0));
    assert!(zero_cost.is_err());
}

#[tokio::test]
async fn cost_per_request() {
    let clock = ManualClock::new(T0);
    let layer =
        RateLimitLayer::new(HttpPolicy::new("export", per_minute(10, &clock), Global).cost(4))
            .unwrap();
    let base = serve(app(layer)).await;
    assert_eq!(statuses(&client(), &format!("{base}/"), 3).await, (2, 1));
}
