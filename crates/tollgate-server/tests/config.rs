//! Configuration: defaults, file + flags + environment, and errors that name the field with
//! a non-zero exit code.

mod common;

use common::{run_to_exit, write_config, ServerProcess};

#[test]
fn bad_configs_exit_non_zero_naming_the_field() {
    let cases: [(&str, &str, &str); 6] = [
        (
            "unknown-field",
            "[server]\nhtp_addr = \"127.0.0.1:1\"\n",
            "htp_addr",
        ),
        (
            "bad-rates",
            "[policies.api]\nrates = \"0/s\"\n",
            "policies.api.rates",
        ),
        (
            "bad-algo",
            "[policies.api]\nalgorithm = \"magic\"\nrates = \"1/s\"\n",
            "policies.api.algorithm",
        ),
        (
            "bad-addr",
            "[server]\nhttp_addr = \"localhost\"\n",
            "server.http_addr",
        ),
        ("bad-store", "[store]\nurl = \"mysql://db\"\n", "store.url"),
        (
            "bad-failure",
            "[store]\nfailure = \"sometimes\"\n",
            "store.failure",
        ),
    ];
    for (name, text, field) in cases {
        let (_dir, path) = write_config(name, text);
        let (status, _, stderr) = run_to_exit(&["--config", path.to_str().unwrap()], &[]);
        assert_eq!(status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains("invalid configuration"), "{name}: {stderr}");
        assert!(stderr.contains(field), "{name}: {stderr}");
    }
    let (status, _, stderr) = run_to_exit(&["--http-addr", "nowhere"], &[]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--http-addr"), "{stderr}");
    let (status, _, stderr) = run_to_exit(&["--check-config"], &[("TOLLGATE_RESP_ADDR", "1.2.3")]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--resp-addr"), "{stderr}");
    let (status, _, stderr) = run_to_exit(&["--policy", "api=fast"], &[]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--policy api (rates)"), "{stderr}");
    let (status, _, stderr) = run_to_exit(&["--config", "/nonexistent/tollgate.toml"], &[]);
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("--config") && stderr.contains("cannot read"),
        "{stderr}"
    );
    let (status, _, stderr) = run_to_exit(&["--key-secret", "short"], &[]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--key-secret"), "{stderr}");
}

#[test]
fn check_config_prints_the_defaults() {
    let (status, stdout, stderr) = run_to_exit(&["--check-config"], &[]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("http 127.0.0.1:8080"), "{stdout}");
    assert!(stdout.contains("resp 127.0.0.1:6380"), "{stdout}");
    assert!(stdout.contains("store memory"), "{stdout}");
}

#[test]
fn file_flags_and_environment_combine() {
    let (_dir, path) = write_config(
        "combine",
        "[server]\nhttp_addr = \"127.0.0.1:1\"\n[policies.api]\nrates = \"10/s burst 20\"\n[keys]\nnamespace = \"t1\"\n",
    );
    // the flag (port 0) overrides the file's http_addr; env adds the store timeout
    let server = ServerProcess::start_env(
        &[
            "--config",
            path.to_str().unwrap(),
            "--policy",
            "extra=fixed_window:5/min",
        ],
        &[("TOLLGATE_STORE_TIMEOUT", "100ms")],
    );
    assert_ne!(server.http.port(), 1);
    assert!(
        server
            .banner
            .starts_with("tollgate-server listening: http://127.0.0.1:"),
        "{}",
        server.banner
    );
    assert!(
        server.banner.contains("(HTTP/JSON), redis://127.0.0.1:"),
        "{}",
        server.banner
    );
    assert!(
        server.banner.ends_with("(RESP); store: memory"),
        "{}",
        server.banner
    );
    let policies = server
        .more_stdout(std::time::Duration::from_secs(5))
        .join("\n");
    assert!(policies.contains("api (gcra:10/1s burst 20)"), "{policies}");
    assert!(policies.contains("extra (fixed_window:5/1m)"), "{policies}");
}

#[test]
fn a_listen_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, _, stderr) = run_to_exit(&["--http-addr", &addr, "--resp-addr", "off"], &[]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains(&format!("cannot listen for HTTP on {addr}")),
        "{stderr}"
    );
}
