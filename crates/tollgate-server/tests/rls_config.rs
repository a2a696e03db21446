//! The RLS configuration: envoyproxy/ratelimit's YAML format, errors that name the file, the
//! path in it and the problem, reload on change without dropping requests, and a bad change
//! never replacing a good configuration. Also the binary's flags and its per-descriptor
//! metrics on `/metrics`.

mod common;
mod rls_support;

use rls_support::*;
use std::time::{Duration, Instant};
use tollgate_server::app::App;
use tollgate_server::config::Config;
use tollgate_server::rls::load_dir;

fn load_err(text: &str) -> String {
    let dir = Dir::new("err");
    dir.write("bad.yaml", text);
    let app = App::new(&Config::default(), None).unwrap();
    let e = load_dir(&app, dir.path()).expect_err("invalid config");
    let file = dir.path().join("bad.yaml").display().to_string();
    let s = e.to_string();
    assert!(s.starts_with(&format!("{file}: ")), "{s}");
    s[file.len() + 2..].to_string()
}

#[test]
fn errors_name_the_file_the_path_and_the_problem() {
    let cases = [
        ("descriptors: []", "domain: missing"),
        (
            "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: sec, requests_per_unit: 1}",
            "descriptors[0].rate_limit.unit: unknown unit \"sec\" (expected second, minute, hour, day, week, month or year)",
        ),
        (
            "domain: a\ndescriptors:\n  - key: k\n    descriptors:\n      - key: j\n        rate_limit: {unit: second}",
            "descriptors[0].descriptors[0].rate_limit.requests_per_unit: missing",
        ),
        (
            "domain: a\ndescriptors:\n  - key: k\n    ratelimit: {unit: second, requests_per_unit: 1}",
            "descriptors[0].ratelimit: unknown key (expected one of: key, value, rate_limit, descriptors, shadow_mode, detailed_metric, share_threshold)",
        ),
        (
            "domain: a\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v",
            "descriptors[1]: duplicate descriptor (key \"k\", value \"v\") also at descriptors[0]",
        ),
        (
            "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: second}",
            "descriptors[0].rate_limit: unlimited: true takes no unit, requests_per_unit, algorithm or burst",
        ),
        (
            "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 5, algorithm: leaky}",
            "descriptors[0].rate_limit.algorithm: ",
        ),
        (
            "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 5, burst: 9}",
            "descriptors[0].rate_limit: algorithm / burst: ",
        ),
        (
            "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: -1}",
            "descriptors[0].rate_limit.requests_per_unit: expected a whole number from 0 to 4294967295, found -1",
        ),
        ("domain: [", "not valid YAML: "),
        (
            "domain: a\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true",
            "descriptors[0].share_threshold: needs a wildcard value (one ending in *)",
        ),
        (
            "domain: a\ndescriptors:\n  - value: v",
            "descriptors[0].key: missing or empty",
        ),
        (
            "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, replaces: [{}]}",
            "descriptors[0].rate_limit.replaces[0].name: missing or empty",
        ),
    ];
    for (text, want) in cases {
        let got = load_err(text);
        assert!(
            got.starts_with(want),
            "for {text:?}\n got: {got}\nwant: {want}"
        );
    }
}

#[test]
fn a_domain_in_two_files_names_both() {
    let dir = Dir::new("dup-domain");
    dir.write("a.yaml", "domain: edge\n");
    dir.write("b.yml", "domain: edge\n");
    dir.write("notes.txt", "not a config file: ignored");
    let app = App::new(&Config::default(), None).unwrap();
    let e = load_dir(&app, dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("b.yml: domain: domain \"edge\" is also configured in"),
        "{e}"
    );
    assert!(e.contains("a.yaml"), "{e}");
}

const V1: &str = "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: day, requests_per_unit: 1}\n";
const V2: &str = "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: day, requests_per_unit: 50}\n";

async fn wait_for_limit(rls: &mut Rls, user: &str, want: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = rls
            .call(req("edge", vec![with_hits(desc(&[("user", user)]), 0)]))
            .await;
        let got = r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the limit did not become {want} (still {got:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_good_changes_keeps_the_last_good_one_and_drops_no_request() {
    let dir = Dir::new("reload");
    dir.write("edge.yaml", V1);
    let mut rls = Rls::start_with(&dir, Config::default(), |s| {
        s.reload_interval = Duration::from_millis(50)
    })
    .await;
    // A client hammering the service during every reload: not one call may fail.
    let mut hammer = rls.client.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = std::sync::Arc::clone(&stop);
    let load = tokio::spawn(async move {
        let mut calls = 0u32;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let r = hammer
                .should_rate_limit(req("edge", vec![desc(&[("user", "hammer")])]))
                .await;
            assert!(r.is_ok(), "a call failed during reload: {r:?}");
            calls += 1;
        }
        calls
    });
    wait_for_limit(&mut rls, "u", 1).await;
    dir.write("edge.yaml", V2);
    wait_for_limit(&mut rls, "u", 50).await;
    // A bad change is not applied: the 50/day rules stay.
    dir.write("edge.yaml", "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: fortnight, requests_per_unit: 2}\n");
    tokio::time::sleep(Duration::from_millis(400)).await;
    wait_for_limit(&mut rls, "u", 50).await;
    // A new file with a second domain joins; then fixing the bad file applies it.
    dir.write("api.yaml", "domain: api\ndescriptors:\n  - key: k\n    rate_limit: {unit: day, requests_per_unit: 7}\n");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = rls.call(req("api", vec![desc(&[("k", "v")])])).await;
    assert!(
        r.statuses[0].current_limit.is_none(),
        "the set with a bad file is not applied"
    );
    dir.write("edge.yaml", "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: day, requests_per_unit: 2}\n");
    wait_for_limit(&mut rls, "u", 2).await;
    let r = rls.call(req("api", vec![desc(&[("k", "v")])])).await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        7
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls = load.await.expect("the hammer task");
    assert!(calls > 10, "only {calls} calls during the reloads");
    rls.stop().await;
}

#[test]
fn the_binary_serves_rls_counts_per_descriptor_metrics_and_rejects_a_bad_config() {
    let dir = Dir::new("binary");
    dir.write("edge.yaml", "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: day, requests_per_unit: 2}\n  - key: shadow\n    shadow_mode: true\n    rate_limit: {unit: day, requests_per_unit: 1}\n  - key: detail\n    detailed_metric: true\n    rate_limit: {unit: day, requests_per_unit: 5}\n");
    let dir_s = dir.path().display().to_string();
    let server =
        common::ServerProcess::start(&["--rls-addr", "127.0.0.1:0", "--rls-config", &dir_s]);
    let addr: std::net::SocketAddr = server
        .banner
        .split("grpc://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the banner names the RLS address: {}", server.banner));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = connect(addr).await;
        let mut codes = Vec::new();
        for _ in 0..3 {
            let r = client
                .should_rate_limit(req(
                    "edge",
                    vec![
                        desc(&[("user", "m")]),
                        desc(&[("shadow", "s")]),
                        desc(&[("detail", "v1")]),
                    ],
                ))
                .await
                .unwrap()
                .into_inner();
            codes.push(r.overall_code);
        }
        assert_eq!(codes, [OK, OK, OVER]);
    });
    let metrics = http_get::get(&server.url("/metrics"));
    let line = |name: &str, desc: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("descriptor=\"{desc}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} for {desc} in:\n{metrics}"))
    };
    assert_eq!(line("tollgate_rls_total_hits", "edge.user"), 3);
    assert_eq!(line("tollgate_rls_within_limit", "edge.user"), 2);
    assert_eq!(line("tollgate_rls_over_limit", "edge.user"), 1);
    assert_eq!(line("tollgate_rls_near_limit", "edge.user"), 1);
    // The shadow limit (1/day) would have denied the second and third calls: counted,
    // never denied.
    assert_eq!(line("tollgate_rls_shadow_mode", "edge.shadow"), 2);
    // detailed_metric: the series is named after the request's value.
    assert_eq!(line("tollgate_rls_total_hits", "edge.detail_v1"), 3);
    drop(server);

    // A bad configuration: exit status 2, the message names the file and the path.
    dir.write(
        "edge.yaml",
        "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: day}\n",
    );
    let (status, _out, err) = common::run_to_exit(
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--resp-addr",
            "127.0.0.1:0",
            "--rls-addr",
            "127.0.0.1:0",
            "--rls-config",
            &dir_s,
        ],
        &[],
    );
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("edge.yaml: descriptors[0].rate_limit.requests_per_unit: missing"),
        "{err}"
    );
    // --check-config validates the RLS directory too.
    let (status, _out, err) = common::run_to_exit(&["--check-config", "--rls-config", &dir_s], &[]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("RLS configuration: ") && err.contains("requests_per_unit: missing"),
        "{err}"
    );
    dir.write("edge.yaml", "domain: edge\n");
    let (status, out, err) = common::run_to_exit(&["--check-config", "--rls-config", &dir_s], &[]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains("rls 127.0.0.1:8081 (") && out.contains("1 files)"),
        "{out}"
    );
}

mod http_get {
    /// GET over a plain TCP socket (HTTP/1.0), returning the body.
    pub fn get(url: &str) -> String {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").expect("http url");
        let (host, path) = rest.split_once('/').expect("path");
        let mut s = std::net::TcpStream::connect(host).expect("connect");
        write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }
}
