//! The kinds of configuration envoyproxy/ratelimit's README documents, written here as our
//! own equivalents (units lengthened to days/hours so no window edge falls inside a test),
//! load and behave as that README describes.

mod rls_support;

use rls_support::*;

#[tokio::test]
async fn per_value_limits_on_one_key() {
    // Two values of one key, each with its own limit; another value is not limited.
    let dir = Dir::new("ref-values");
    dir.write("db.yaml", "domain: db_cps\ndescriptors:\n  - key: database\n    value: users\n    rate_limit: {unit: day, requests_per_unit: 3}\n  - key: database\n    value: default\n    rate_limit: {unit: day, requests_per_unit: 2}\n");
    let mut rls = Rls::start(&dir).await;
    let db = |v: &str| req("db_cps", vec![desc(&[("database", v)])]);
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(rls.call(db("users")).await.overall_code);
    }
    assert_eq!(users, [OK, OK, OK, OVER]);
    let mut default = Vec::new();
    for _ in 0..3 {
        default.push(rls.call(db("default")).await.overall_code);
    }
    assert_eq!(default, [OK, OK, OVER]);
    for _ in 0..5 {
        assert_eq!(rls.call(db("logs")).await.overall_code, OK);
    }
}

#[tokio::test]
async fn nested_marketing_limit_and_a_general_per_number_limit() {
    // Marketing messages: 2 per number per day; any message: 4 per number per day. Envoy
    // sends both descriptors; both apply.
    let dir = Dir::new("ref-messaging");
    dir.write("messaging.yaml", "domain: messaging\ndescriptors:\n  - key: message_type\n    value: marketing\n    descriptors:\n      - key: to_number\n        rate_limit: {unit: day, requests_per_unit: 2}\n  - key: to_number\n    rate_limit: {unit: day, requests_per_unit: 4}\n");
    let mut rls = Rls::start(&dir).await;
    let n = ("to_number", "2061234567");
    let marketing = || {
        req(
            "messaging",
            vec![desc(&[("message_type", "marketing"), n]), desc(&[n])],
        )
    };
    let other = || {
        req(
            "messaging",
            vec![desc(&[("message_type", "alert"), n]), desc(&[n])],
        )
    };
    assert_eq!(rls.call(marketing()).await.overall_code, OK);
    assert_eq!(rls.call(marketing()).await.overall_code, OK);
    let r = rls.call(marketing()).await;
    assert_eq!((r.overall_code, codes(&r)), (OVER, vec![OVER, OK]));
    // Non-marketing messages only meet the general limit: 2 left of 4 (the denied call
    // charged nothing).
    assert_eq!(remaining(&rls.call(other()).await), [0, 1]);
    assert_eq!(rls.call(other()).await.overall_code, OK);
    assert_eq!(rls.call(other()).await.overall_code, OVER);
}

#[tokio::test]
async fn per_address_limit_with_a_blocked_address() {
    // requests_per_unit: 0 blocks an address; every other address gets its own 3.
    let dir = Dir::new("ref-ip");
    dir.write("ip.yaml", "domain: edge_proxy_per_ip\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: hour, requests_per_unit: 3}\n  - key: remote_address\n    value: 50.0.0.5\n    rate_limit: {unit: hour, requests_per_unit: 0}\n");
    let mut rls = Rls::start(&dir).await;
    let ip = |a: &str| req("edge_proxy_per_ip", vec![desc(&[("remote_address", a)])]);
    let blocked = rls.call(ip("50.0.0.5")).await;
    assert_eq!((blocked.overall_code, remaining(&blocked)), (OVER, vec![0]));
    assert_eq!(
        blocked.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        0
    );
    for a in ["10.0.0.1", "10.0.0.2"] {
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(rls.call(ip(a)).await.overall_code);
        }
        assert_eq!(got, [OK, OK, OK, OVER], "{a}");
    }
}

#[tokio::test]
async fn two_level_key_only_descriptors_limit_each_pair() {
    let dir = Dir::new("ref-pairs");
    dir.write("pairs.yaml", "domain: pairs\ndescriptors:\n  - key: key\n    descriptors:\n      - key: subkey\n        rate_limit: {unit: day, requests_per_unit: 2}\n");
    let mut rls = Rls::start(&dir).await;
    let pair = |k: &str, s: &str| req("pairs", vec![desc(&[("key", k), ("subkey", s)])]);
    for (k, s) in [("a", "x"), ("a", "y"), ("b", "x")] {
        assert_eq!(rls.call(pair(k, s)).await.overall_code, OK);
        assert_eq!(rls.call(pair(k, s)).await.overall_code, OK);
        assert_eq!(rls.call(pair(k, s)).await.overall_code, OVER, "{k}/{s}");
    }
    // The first level alone has no limit.
    let top = rls.call(req("pairs", vec![desc(&[("key", "a")])])).await;
    assert!(top.statuses[0].current_limit.is_none());
}

#[tokio::test]
async fn shadow_mode_unlimited_replaces_and_wildcards() {
    let dir = Dir::new("ref-misc");
    dir.write(
        "misc.yaml",
        "\
domain: misc
descriptors:
  - key: tenant
    value: trial
    shadow_mode: true
    rate_limit: {unit: day, requests_per_unit: 1}
  - key: source
    value: ldap
    rate_limit: {unlimited: true}
  - key: source
    value: azure
    rate_limit: {unit: day, requests_per_unit: 2}
  - key: user
    rate_limit: {unit: day, requests_per_unit: 1, name: per-user}
  - key: vip
    rate_limit: {unit: day, requests_per_unit: 3, replaces: [{name: per-user}]}
  - key: client_id
    value: foo
    descriptors:
      - key: uri
        value: /foo/bar
        rate_limit: {unit: day, requests_per_unit: 1}
      - key: uri
        value: /foo/*
        rate_limit: {unit: day, requests_per_unit: 2}
",
    );
    let mut rls = Rls::start(&dir).await;
    // Shadow mode: over the limit, still OK.
    for _ in 0..3 {
        assert_eq!(
            rls.call(req("misc", vec![desc(&[("tenant", "trial")])]))
                .await
                .overall_code,
            OK
        );
    }
    // unlimited next to a limited value of the same key.
    for _ in 0..5 {
        assert_eq!(
            rls.call(req("misc", vec![desc(&[("source", "ldap")])]))
                .await
                .overall_code,
            OK
        );
    }
    let azure: Vec<i32> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                rls.call(req("misc", vec![desc(&[("source", "azure")])]))
                    .await
                    .overall_code,
            );
        }
        v
    };
    assert_eq!(azure, [OK, OK, OVER]);
    // replaces: a VIP request is limited by the vip limit only.
    let vip = || req("misc", vec![desc(&[("user", "u")]), desc(&[("vip", "u")])]);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(rls.call(vip()).await.overall_code);
    }
    assert_eq!(got, [OK, OK, OK, OVER]);
    // The exact value wins over the wildcard; other values under the prefix use it.
    let uri = |u: &str| req("misc", vec![desc(&[("client_id", "foo"), ("uri", u)])]);
    assert_eq!(
        rls.call(uri("/foo/bar")).await.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        1
    );
    assert_eq!(rls.call(uri("/foo/bar")).await.overall_code, OVER);
    assert_eq!(
        rls.call(uri("/foo/baz")).await.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        2
    );
    assert!(rls.call(uri("/other")).await.statuses[0]
        .current_limit
        .is_none());
}
