//! The RLS v3 gRPC service through a real tonic client over TCP, on the memory store: the
//! protocol fields, matching, all-or-nothing decisions, hits, overrides, unlimited,
//! replaces, shadow mode, the IETF fields, tollgate's algorithm extension.
//!
//! Counting tests use `unit: day` (fixed windows aligned to UTC midnight) so a window edge
//! cannot fall inside a test except at midnight.

mod rls_support;

use rls_support::*;

const EDGE: &str = "\
domain: edge
descriptors:
  - key: user
    rate_limit: {unit: day, requests_per_unit: 3, name: per-user}
  - key: global
    value: all
    rate_limit: {unit: day, requests_per_unit: 2}
  - key: remote_address
    rate_limit: {unit: day, requests_per_unit: 100}
    descriptors:
      - key: path
        value: /login
        rate_limit: {unit: day, requests_per_unit: 1}
      - key: path
        value: /api/*
        rate_limit: {unit: day, requests_per_unit: 2}
      - key: path
        value: /static/*
        share_threshold: true
        rate_limit: {unit: day, requests_per_unit: 2}
  - key: header
    value: trusted
    rate_limit: {unlimited: true}
";

#[tokio::test]
async fn limit_exactly_then_over_limit_with_every_status_field() {
    let dir = Dir::new("basic");
    dir.write("edge.yaml", EDGE);
    let mut rls = Rls::start(&dir).await;
    let r = || req("edge", vec![desc(&[("user", "alice")])]);
    for left in [2u32, 1, 0] {
        let resp = rls.call(r()).await;
        assert_eq!(resp.overall_code, OK);
        assert_eq!(codes(&resp), [OK]);
        let st = &resp.statuses[0];
        assert_eq!(st.limit_remaining, left);
        let cl = st.current_limit.as_ref().expect("current_limit");
        assert_eq!(
            (cl.requests_per_unit, cl.unit, cl.name.as_str()),
            (3, 4, "per-user")
        );
        let reset = st
            .duration_until_reset
            .as_ref()
            .expect("duration_until_reset");
        assert!(reset.seconds >= 0 && reset.seconds <= 86_400, "{reset:?}");
    }
    let resp = rls.call(r()).await;
    assert_eq!(resp.overall_code, OVER);
    assert_eq!(codes(&resp), [OVER]);
    assert_eq!(remaining(&resp), [0]);
    // Another value of the key-only descriptor has its own counter.
    assert_eq!(
        rls.call(req("edge", vec![desc(&[("user", "bob")])]))
            .await
            .overall_code,
        OK
    );
    rls.stop().await;
}

#[tokio::test]
async fn a_denial_charges_nothing_anywhere() {
    let dir = Dir::new("all-or-nothing");
    dir.write("edge.yaml", EDGE);
    let mut rls = Rls::start(&dir).await;
    let both = |u: &str| {
        req(
            "edge",
            vec![desc(&[("user", u)]), desc(&[("global", "all")])],
        )
    };
    assert_eq!(rls.call(both("alice")).await.overall_code, OK);
    assert_eq!(rls.call(both("bob")).await.overall_code, OK);
    // global (2/day) is spent: carol is denied, and carol's own key is not charged.
    for _ in 0..5 {
        let resp = rls.call(both("carol")).await;
        assert_eq!(resp.overall_code, OVER);
        assert_eq!(codes(&resp), [OK, OVER]);
        assert_eq!(
            remaining(&resp),
            [3, 0],
            "carol's key reports where it stands, uncharged"
        );
    }
    let alone = rls
        .call(req("edge", vec![desc(&[("user", "carol")])]))
        .await;
    assert_eq!(
        remaining(&alone),
        [2],
        "five denied calls charged carol nothing"
    );
    rls.stop().await;
}

#[tokio::test]
async fn nested_wildcard_depth_unknown_domain_and_unlimited() {
    let dir = Dir::new("matching");
    dir.write("edge.yaml", EDGE);
    let mut rls = Rls::start(&dir).await;
    let ip = ("remote_address", "203.0.113.7");
    // Exact nested value: 1/day.
    let login = || req("edge", vec![desc(&[ip, ("path", "/login")])]);
    assert_eq!(rls.call(login()).await.overall_code, OK);
    assert_eq!(rls.call(login()).await.overall_code, OVER);
    // Wildcard prefix: /api/* 2/day; as in the reference server each value matched by the
    // wildcard has its own counter.
    let api = |p: &str| req("edge", vec![desc(&[ip, ("path", p)])]);
    assert_eq!(
        rls.call(api("/api/a")).await.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        2
    );
    let resp = rls.call(api("/api/a")).await;
    assert_eq!((resp.overall_code, remaining(&resp)), (OK, vec![0]));
    assert_eq!(rls.call(api("/api/a")).await.overall_code, OVER);
    assert_eq!(remaining(&rls.call(api("/api/b")).await), [1]);
    // share_threshold: every value under /static/* shares one counter.
    assert_eq!(rls.call(api("/static/a.css")).await.overall_code, OK);
    assert_eq!(rls.call(api("/static/b.js")).await.overall_code, OK);
    assert_eq!(rls.call(api("/static/c.png")).await.overall_code, OVER);
    // A path with no config below remote_address: the request is deeper than the limit.
    let other = rls.call(api("/other")).await;
    assert_eq!(other.overall_code, OK);
    assert!(other.statuses[0].current_limit.is_none(), "{other:?}");
    // The address alone matches the 100/day limit.
    let alone = rls.call(req("edge", vec![desc(&[ip])])).await;
    assert_eq!(
        alone.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        100
    );
    // Unknown domain and unknown keys: not limited.
    let unknown = rls.call(req("nope", vec![desc(&[("user", "x")])])).await;
    assert_eq!((unknown.overall_code, codes(&unknown)), (OK, vec![OK]));
    // unlimited: never limited, reported without a counter.
    for _ in 0..5 {
        let r = rls
            .call(req("edge", vec![desc(&[("header", "trusted")])]))
            .await;
        assert_eq!(r.overall_code, OK);
    }
    rls.stop().await;
}

#[tokio::test]
async fn hits_addend_request_and_descriptor_level_and_zero_checks_only() {
    let dir = Dir::new("hits");
    dir.write("edge.yaml", EDGE);
    let mut rls = Rls::start(&dir).await;
    let alice = || desc(&[("user", "alice")]);
    // Request-level hits_addend 2.
    let mut r = req("edge", vec![alice()]);
    r.hits_addend = 2;
    assert_eq!(remaining(&rls.call(r.clone()).await), [1]);
    // Descriptor hits_addend 0: check only, nothing charged (twice).
    for _ in 0..2 {
        let resp = rls.call(req("edge", vec![with_hits(alice(), 0)])).await;
        assert_eq!((resp.overall_code, remaining(&resp)), (OK, vec![1]));
    }
    // The descriptor's own hits_addend overrides the request's: 1 instead of 2.
    r.descriptors = vec![with_hits(alice(), 1)];
    assert_eq!(remaining(&rls.call(r).await), [0]);
    // Now a check-only call says over limit, and charges nothing.
    let resp = rls.call(req("edge", vec![with_hits(alice(), 0)])).await;
    assert_eq!(resp.overall_code, OVER);
    // More hits than the limit can ever admit: over limit, nothing charged elsewhere.
    let mut big = req(
        "edge",
        vec![desc(&[("user", "dave")]), desc(&[("global", "all")])],
    );
    big.hits_addend = 4;
    let resp = rls.call(big).await;
    assert_eq!((resp.overall_code, codes(&resp)), (OVER, vec![OVER, OVER]));
    let g = rls
        .call(req("edge", vec![desc(&[("global", "all")])]))
        .await;
    assert_eq!(
        remaining(&g),
        [1],
        "the global key was not charged by the denied call"
    );
    rls.stop().await;
}

#[tokio::test]
async fn request_limit_override_replaces_and_shadow_mode() {
    let dir = Dir::new("override");
    dir.write(
        "api.yaml",
        "\
domain: api
descriptors:
  - key: plan
    value: free
    rate_limit: {unit: day, requests_per_unit: 1, name: free}
  - key: promo
    value: launch
    rate_limit: {unit: day, requests_per_unit: 5, name: launch, replaces: [{name: free}]}
  - key: experiment
    shadow_mode: true
    rate_limit: {unit: day, requests_per_unit: 1}
",
    );
    let mut rls = Rls::start(&dir).await;
    // Override: 2 per day instead of the configured 1.
    let o = || req("api", vec![with_override(desc(&[("plan", "free")]), 2, 4)]);
    assert_eq!(rls.call(o()).await.overall_code, OK);
    let second = rls.call(o()).await;
    assert_eq!(second.overall_code, OK);
    assert_eq!(
        second.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        2
    );
    assert_eq!(rls.call(o()).await.overall_code, OVER);
    // replaces: with the launch promo matched, the free plan's limit is not applied.
    let both = || {
        req(
            "api",
            vec![desc(&[("plan", "free")]), desc(&[("promo", "launch")])],
        )
    };
    let plain = rls.call(req("api", vec![desc(&[("plan", "free")])])).await;
    assert_eq!(plain.overall_code, OK);
    assert_eq!(
        rls.call(req("api", vec![desc(&[("plan", "free")])]))
            .await
            .overall_code,
        OVER
    );
    for i in 0..5 {
        let r = rls.call(both()).await;
        assert_eq!(r.overall_code, OK, "call {i}: {r:?}");
    }
    assert_eq!(
        rls.call(both()).await.overall_code,
        OVER,
        "the replacing limit applies"
    );
    // Shadow mode: decided, never denies.
    for _ in 0..4 {
        let r = rls
            .call(req("api", vec![desc(&[("experiment", "x")])]))
            .await;
        assert_eq!((r.overall_code, codes(&r)), (OK, vec![OK]));
    }
    rls.stop().await;
}

#[tokio::test]
async fn ietf_fields_and_tollgate_algorithms() {
    let dir = Dir::new("fields");
    dir.write(
        "api.yaml",
        "\
domain: api
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 10, algorithm: gcra, burst: 20, name: per-user}
  - key: org
    rate_limit: {unit: hour, requests_per_unit: 1000, algorithm: sliding_log}
",
    );
    let mut rls = Rls::start_with(&dir, Default::default(), |s| s.response_headers = true).await;
    let r = rls
        .call(req(
            "api",
            vec![desc(&[("user", "u1")]), desc(&[("org", "o1")])],
        ))
        .await;
    assert_eq!(r.overall_code, OK);
    assert_eq!(remaining(&r), [19, 999]);
    assert_eq!(
        header(&r, "RateLimit-Policy"),
        Some("\"per-user\";q=20;w=2, \"api.org\";q=1000;w=3600")
    );
    let rl = header(&r, "RateLimit").expect("RateLimit");
    assert!(rl.starts_with("\"per-user\";r=19;t="), "{rl}");
    // GCRA burst 20: exactly 20 at once, then over limit.
    for _ in 0..19 {
        assert_eq!(
            rls.call(req("api", vec![desc(&[("user", "u1")])]))
                .await
                .overall_code,
            OK
        );
    }
    let over = rls.call(req("api", vec![desc(&[("user", "u1")])])).await;
    assert_eq!(over.overall_code, OVER);
    assert!(header(&over, "RateLimit")
        .unwrap()
        .starts_with("\"per-user\";r=0;t="));
    rls.stop().await;
}

#[tokio::test]
async fn invalid_requests_are_invalid_argument() {
    let dir = Dir::new("invalid");
    dir.write("edge.yaml", EDGE);
    let mut rls = Rls::start(&dir).await;
    let e = rls.call_err(req("", vec![desc(&[("user", "a")])])).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("domain"), "{e:?}");
    let e = rls.call_err(req("edge", vec![])).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = rls.call_err(req("edge", vec![desc(&[])])).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = rls
        .call_err(req(
            "edge",
            vec![with_override(desc(&[("user", "a")]), 5, 0)],
        ))
        .await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let long = "x".repeat(600);
    let e = rls
        .call_err(req("edge", vec![desc(&[("user", long.as_str())])]))
        .await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    rls.stop().await;
}

#[tokio::test]
async fn the_same_descriptor_twice_is_charged_once_with_both_hits() {
    let dir = Dir::new("dup");
    dir.write("edge.yaml", EDGE);
    let mut rls = Rls::start(&dir).await;
    let d = || desc(&[("user", "erin")]);
    let r = rls.call(req("edge", vec![d(), d()])).await;
    assert_eq!((r.overall_code, remaining(&r)), (OK, vec![1, 1]));
    let r = rls.call(req("edge", vec![d(), d()])).await;
    assert_eq!(r.overall_code, OVER, "2 more do not fit in the 1 left");
    assert_eq!(remaining(&rls.call(req("edge", vec![d()])).await), [0]);
    rls.stop().await;
}

#[tokio::test]
async fn negative_hits_give_units_back() {
    let dir = Dir::new("refund");
    dir.write("edge.yaml", EDGE);
    let mut rls = Rls::start(&dir).await;
    let d = || desc(&[("user", "fay")]);
    let mut three = req("edge", vec![d()]);
    three.hits_addend = 3;
    assert_eq!(remaining(&rls.call(three).await), [0]);
    assert_eq!(rls.call(req("edge", vec![d()])).await.overall_code, OVER);
    let mut back = with_hits(d(), 2);
    back.is_negative_hits = true;
    let r = rls.call(req("edge", vec![back])).await;
    assert_eq!((r.overall_code, codes(&r)), (OK, vec![OK]));
    let after = rls.call(req("edge", vec![d()])).await;
    assert_eq!((after.overall_code, remaining(&after)), (OK, vec![1]));
    rls.stop().await;
}
