//! `tollgate-server`: the standalone rate-limit service. See `docs/server.md`.

use clap::Parser;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tollgate_server::app::App;
use tollgate_server::config::{
    load_file, parse_duration, parse_listen, validate_namespace, validate_secret, Config,
    ConfigError, StoreUrl,
};
use tollgate_server::rls::{RlsServer, RlsSettings};
use tollgate_server::server::Server;

/// Gives the memory glibc's malloc keeps after it was freed back to the OS, every
/// `every`: the buffers of closed connections otherwise stay in the process for good (5,000
/// idle HTTP connections opened and closed in waves grew RSS from 14 to 135 MB).
fn trim_freed_memory(every: Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let _ = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                // SAFETY: malloc_trim only releases free memory of the allocator; it takes
                // the allocator's own locks and has no other precondition.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = every;
}

/// The standalone tollgate rate-limit service: HTTP/JSON API, a redis-cell compatible RESP
/// endpoint (CL.THROTTLE) and Prometheus metrics.
///
/// Flags and environment variables override the --config file, which overrides the defaults.
#[derive(Debug, Parser)]
#[command(name = "tollgate-server", version, about, long_about = None)]
struct Cli {
    /// TOML configuration file (see docs/server.md).
    #[arg(short, long, env = "TOLLGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// HTTP/JSON listen address, or "off" [default: 127.0.0.1:8080].
    #[arg(long, env = "TOLLGATE_HTTP_ADDR", value_name = "ADDR")]
    http_addr: Option<String>,
    /// RESP (Redis protocol) listen address, or "off" [default: 127.0.0.1:6380].
    #[arg(long, env = "TOLLGATE_RESP_ADDR", value_name = "ADDR")]
    resp_addr: Option<String>,
    /// Store: "memory", redis://host:port[/db] or redis+cluster://host:port,host:port [default: memory].
    #[arg(long, env = "TOLLGATE_STORE", value_name = "URL")]
    store: Option<String>,
    /// When the store fails: error, open, closed or local [default: error].
    #[arg(long, env = "TOLLGATE_FAILURE", value_name = "POLICY")]
    failure: Option<String>,
    /// Store call timeout, e.g. 250ms.
    #[arg(long, env = "TOLLGATE_STORE_TIMEOUT", value_name = "DURATION")]
    store_timeout: Option<String>,
    /// Consecutive store failures that open the circuit breaker (0: never) [default: 5].
    #[arg(long, env = "TOLLGATE_BREAKER_FAILURES", value_name = "N")]
    breaker_failures: Option<u32>,
    /// How long an open breaker answers by the failure policy before probing, e.g. 1s.
    #[arg(long, env = "TOLLGATE_BREAKER_COOL_DOWN", value_name = "DURATION")]
    breaker_cool_down: Option<String>,
    /// Key prefix in shared stores [default: tollgate].
    #[arg(long, env = "TOLLGATE_NAMESPACE", value_name = "PREFIX")]
    namespace: Option<String>,
    /// Secret for HMAC-SHA256 key hashing (at least 16 bytes): raw keys never reach the store.
    #[arg(
        long,
        env = "TOLLGATE_KEY_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    key_secret: Option<String>,
    /// A named policy: NAME=[ALGORITHM:]RATES, e.g. "api=10/s burst 20" or
    /// "login=fixed_window:5/min". Repeatable.
    #[arg(long = "policy", value_name = "NAME=RATES")]
    policies: Vec<String>,
    /// A named semaphore: NAME=CAPACITY (lease 30 s; set leases in --config). Repeatable.
    #[arg(long = "semaphore", value_name = "NAME=CAPACITY")]
    semaphores: Vec<String>,
    /// Longest key in bytes [default: 512].
    #[arg(long, env = "TOLLGATE_MAX_KEY_LEN", value_name = "BYTES")]
    max_key_len: Option<usize>,
    /// Close connections idle this long, e.g. 300s.
    #[arg(long, env = "TOLLGATE_IDLE_TIMEOUT", value_name = "DURATION")]
    idle_timeout: Option<String>,
    /// Envoy rate-limit service (RLS v3 gRPC): directory of envoyproxy/ratelimit YAML files
    /// (one domain per file, reloaded on change). Without it RLS is off. See docs/rls.md.
    #[arg(long, env = "TOLLGATE_RLS_CONFIG", value_name = "DIR")]
    rls_config: Option<PathBuf>,
    /// RLS gRPC listen address, or "off" [default: 127.0.0.1:8081].
    #[arg(long, env = "TOLLGATE_RLS_ADDR", value_name = "ADDR")]
    rls_addr: Option<String>,
    /// Add the IETF RateLimit / RateLimit-Policy fields to RLS responses.
    #[arg(long, env = "TOLLGATE_RLS_RESPONSE_HEADERS")]
    rls_response_headers: bool,
    /// How often the RLS configuration directory is checked for changes, e.g. 1s.
    #[arg(long, env = "TOLLGATE_RLS_RELOAD_INTERVAL", value_name = "DURATION")]
    rls_reload_interval: Option<String>,
    /// Check the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(
        long,
        env = "TOLLGATE_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    log: String,
}

/// A duration flag that must be greater than zero.
fn positive_duration(flag: &str, value: &str) -> Result<Duration, ConfigError> {
    match parse_duration(value) {
        Ok(d) if d.is_zero() => Err(ConfigError::new(flag, "must be greater than zero")),
        Ok(d) => Ok(d),
        Err(m) => Err(ConfigError::new(flag, m)),
    }
}

fn build_config(cli: &Cli) -> Result<Config, ConfigError> {
    let mut c = match &cli.config {
        Some(path) => load_file(path)?,
        None => Config::default(),
    };
    if let Some(a) = &cli.http_addr {
        c.http_addr = parse_listen(a).map_err(|m| ConfigError::new("--http-addr", m))?;
    }
    if let Some(a) = &cli.resp_addr {
        c.resp_addr = parse_listen(a).map_err(|m| ConfigError::new("--resp-addr", m))?;
    }
    if let Some(s) = &cli.store {
        c.store = StoreUrl::parse(s).map_err(|m| ConfigError::new("--store", m))?;
    }
    if let Some(f) = &cli.failure {
        c.failure = f
            .parse()
            .map_err(|m: String| ConfigError::new("--failure", m))?;
    }
    if let Some(t) = &cli.store_timeout {
        c.store_timeout = positive_duration("--store-timeout", t)?;
    }
    if let Some(n) = cli.breaker_failures {
        c.breaker_failures = n;
    }
    if let Some(t) = &cli.breaker_cool_down {
        c.breaker_cool_down = positive_duration("--breaker-cool-down", t)?;
    }
    if let Some(t) = &cli.idle_timeout {
        c.idle_timeout = positive_duration("--idle-timeout", t)?;
    }
    if let Some(ns) = &cli.namespace {
        c.namespace = validate_namespace(ns).map_err(|m| ConfigError::new("--namespace", m))?;
    }
    if let Some(secret) = &cli.key_secret {
        c.key_secret =
            Some(validate_secret(secret).map_err(|m| ConfigError::new("--key-secret", m))?);
    }
    if let Some(n) = cli.max_key_len {
        if !(1..=65_536).contains(&n) {
            return Err(ConfigError::new(
                "--max-key-len",
                format!("must be between 1 and 65536 (got {n})"),
            ));
        }
        c.max_key_len = n;
    }
    for spec in &cli.policies {
        let Some((name, rest)) = spec.split_once('=') else {
            return Err(ConfigError::new(
                "--policy",
                format!("{spec:?}: expected NAME=[ALGORITHM:]RATES, e.g. api=10/s"),
            ));
        };
        let name = name.trim();
        let (algorithm, rates) = match rest.split_once(':') {
            Some((a, r)) if a.trim().parse::<tollgate::Algorithm>().is_ok() => (Some(a.trim()), r),
            _ => (None, rest),
        };
        c.add_policy(name, algorithm, rates, None, |f| {
            format!("--policy {name} ({f})")
        })?;
    }
    for spec in &cli.semaphores {
        let parsed = spec
            .split_once('=')
            .and_then(|(n, cap)| cap.trim().parse::<u64>().ok().map(|cap| (n.trim(), cap)));
        let Some((name, capacity)) = parsed else {
            return Err(ConfigError::new(
                "--semaphore",
                format!("{spec:?}: expected NAME=CAPACITY, e.g. db=10"),
            ));
        };
        c.add_semaphore(name, capacity, None, |f| {
            format!("--semaphore {name} ({f})")
        })?;
    }
    if c.http_addr.is_none() && c.resp_addr.is_none() {
        return Err(ConfigError::new(
            "server.http_addr / server.resp_addr",
            "both listeners are off: nothing to serve",
        ));
    }
    Ok(c)
}

/// The RLS listener's settings from the flags (`None`: RLS is off).
fn rls_settings(cli: &Cli) -> Result<Option<RlsSettings>, ConfigError> {
    let addr = match &cli.rls_addr {
        Some(a) => parse_listen(a).map_err(|m| ConfigError::new("--rls-addr", m))?,
        None => Some(
            tollgate_server::rls::DEFAULT_RLS_ADDR
                .parse()
                .expect("valid default"),
        ),
    };
    let (Some(dir), Some(addr)) = (&cli.rls_config, addr) else {
        return Ok(None);
    };
    let mut s = RlsSettings::new(addr, dir.clone());
    s.response_headers = cli.rls_response_headers;
    if let Some(t) = &cli.rls_reload_interval {
        s.reload_interval = positive_duration("--rls-reload-interval", t)?;
    }
    Ok(Some(s))
}

/// `--check-config` for the RLS directory: parses and compiles it (bound to a memory store,
/// so no store is contacted).
fn check_rls(config: &Config, s: &RlsSettings) -> Result<String, String> {
    let mut check = config.clone();
    check.store = StoreUrl::Memory;
    let app = App::new(&check, None).map_err(|e| e.to_string())?;
    let rules = tollgate_server::rls::load_dir(&app, &s.config_dir).map_err(|e| e.to_string())?;
    Ok(format!(
        "{} ({}, {} files)",
        s.addr,
        s.config_dir.display(),
        rules.files().len()
    ))
}

fn describe_policies(config: &Config) -> String {
    if config.policies.is_empty() {
        return "none configured (inline \"rates\" and CL.THROTTLE work; add --policy NAME=10/s or [policies.NAME] in --config)".into();
    }
    config
        .policies
        .iter()
        .map(|(n, p)| format!("{n} ({p})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Registers the SIGTERM and SIGINT handlers now and returns the future that completes on
/// the first of them. Registering before the listeners start matters: a signal that arrived
/// between the start and the first poll of a lazily registering future would kill the
/// process with the default action instead of shutting it down gracefully.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, interrupt) {
                (Some(mut term), Some(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Some(mut one), None) | (None, Some(mut one)) => {
                    one.recv().await;
                }
                (None, None) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match build_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate-server: {e}");
            return ExitCode::from(2);
        }
    };
    let rls = match rls_settings(&cli) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate-server: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    if cli.check_config {
        let rls_line = match &rls {
            None => "off".to_string(),
            Some(s) => match check_rls(&config, s) {
                Ok(line) => line,
                Err(e) => {
                    eprintln!("tollgate-server: RLS configuration: {e}");
                    return ExitCode::from(2);
                }
            },
        };
        println!(
            "configuration OK: http {}, resp {}, rls {}, store {}, failure {}, policies: {}",
            config.http_addr.map_or("off".into(), |a| a.to_string()),
            config.resp_addr.map_or("off".into(), |a| a.to_string()),
            rls_line,
            config.store.describe(),
            config.failure.name(),
            describe_policies(&config)
        );
        return ExitCode::SUCCESS;
    }
    trim_freed_memory(Duration::from_secs(5));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, rls))
}

async fn run(config: Config, rls: Option<RlsSettings>) -> ExitCode {
    let buckets = [
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
        0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &buckets)
        .and_then(|b| b.install_recorder());
    let handle = match handle {
        Ok(h) => {
            let upkeep = h.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    upkeep.run_upkeep();
                }
            });
            Some(h)
        }
        Err(e) => {
            tracing::warn!("metrics disabled: {e}");
            None
        }
    };
    let shutdown = shutdown_signal();
    let app = match App::new(&config, handle) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("tollgate-server: cannot open the store: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::start(&config, Arc::clone(&app)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tollgate-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rls = match rls {
        Some(settings) => match RlsServer::start(settings, Arc::clone(&app)).await {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("tollgate-server: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let mut listening = Vec::new();
    if let Some(a) = server.http_addr() {
        listening.push(format!("http://{a} (HTTP/JSON)"));
    }
    if let Some(a) = server.resp_addr() {
        listening.push(format!("redis://{a} (RESP)"));
    }
    if let Some(r) = &rls {
        listening.push(format!("grpc://{} (RLS)", r.addr()));
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "tollgate-server listening: {}; store: {}",
        listening.join(", "),
        app.store_description()
    );
    let _ = writeln!(stdout, "policies: {}", describe_policies(&config));
    let _ = stdout.flush();
    shutdown.await;
    let _ = writeln!(
        stdout,
        "tollgate-server: shutting down (finishing in-flight requests, up to {:?})",
        config.shutdown_grace
    );
    let _ = stdout.flush();
    server.shutdown();
    if let Some(r) = &rls {
        r.shutdown();
    }
    server.wait().await;
    if let Some(r) = rls {
        r.wait().await;
    }
    let _ = writeln!(stdout, "tollgate-server: stopped");
    let _ = stdout.flush();
    ExitCode::SUCCESS
}
