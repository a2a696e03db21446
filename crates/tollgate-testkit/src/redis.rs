//! A private, throwaway `redis-server`.

use std::ffi::OsString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::env::redis_server_path;
use crate::ports::{free_port, free_port_where, is_bindable, reserve};
use crate::process::spawn_bound;
use crate::resp::{Resp, RespClient};
use crate::tempdir::TempDir;

/// How many ports a start tries before giving up (each failure being a lost
/// port race, not a broken server).
const START_ATTEMPTS: usize = 8;
/// How long a freshly spawned server may take to answer. Generous: CI
/// machines are small and busy.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`RedisServer::restart`] waits for its port to be bindable again.
const RESTART_PORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` process of the test's own, on a free port of 127.0.0.1.
///
/// Started with `--port P --bind 127.0.0.1 --save "" --appendonly no --dir
/// <private temp dir> --daemonize no` (plus `--enable-debug-command local` on
/// Redis ≥ 7, so tests may use `DEBUG SLEEP` to simulate a slow store). It
/// keeps nothing on disk: after [`restart`](RedisServer::restart) the data
/// set and the script cache are empty.
///
/// The process is killed, and its directory removed, when the guard is
/// dropped, including when the test panics.
///
/// ```
/// use tollgate_testkit::{must_have, RedisServer, Resp};
///
/// let Some(mut redis) = must_have("redis-server", RedisServer::start()) else { return };
/// assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));
///
/// // Fault injection: the server goes away...
/// redis.stop();
/// assert!(redis.command(&["PING"]).is_err());
/// // ...and comes back on the same port, empty (no keys, no scripts).
/// redis.restart().unwrap();
/// assert_eq!(redis.command(&["PING"]).unwrap(), Resp::Simple("PONG".into()));
/// assert_eq!(redis.command(&["DBSIZE"]).unwrap(), Resp::Integer(0));
/// ```
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    dir: TempDir,
    port: u16,
    cluster: bool,
    extra: Vec<String>,
    child: Option<Child>,
}

enum LaunchError {
    /// Someone else has the port: try another one.
    PortTaken(String),
    /// The server cannot start at all.
    Fatal(String),
}

impl RedisServer {
    /// Starts a standalone server on a free port and waits until it answers.
    ///
    /// `Err` says why not (binary missing, start-up failure with the server's
    /// log, ...); pass it to [`crate::must_have`] to skip or fail.
    pub fn start() -> Result<RedisServer, String> {
        RedisServer::start_with_args(&[])
    }

    /// [`RedisServer::start`] with extra command-line arguments appended,
    /// e.g. `&["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]` or
    /// `&["--requirepass", "secret"]` (the readiness probe authenticates with
    /// that password; [`RedisServer::command`] does not, so send `AUTH` over a
    /// [`crate::RespClient`] yourself).
    ///
    /// ```
    /// use tollgate_testkit::{must_have, RedisServer, Resp};
    ///
    /// let Some(redis) = must_have("redis-server", RedisServer::start_with_args(&["--maxmemory", "10mb"]))
    /// else { return };
    /// let Resp::Array(Some(pair)) = redis.command(&["CONFIG", "GET", "maxmemory"]).unwrap() else {
    ///     panic!("CONFIG GET answers an array");
    /// };
    /// assert_eq!(pair[1].as_text().as_deref(), Some("10485760"));
    /// ```
    pub fn start_with_args(extra: &[&str]) -> Result<RedisServer, String> {
        RedisServer::start_inner(false, extra, free_port)
    }

    /// A Redis Cluster node (not yet part of a cluster): its bus port
    /// (`port + 10000`) must be free as well.
    pub(crate) fn start_cluster_node(extra: &[&str]) -> Result<RedisServer, String> {
        RedisServer::start_inner(true, extra, || {
            let port = free_port_where(|p| p <= u16::MAX - 10_000 && is_bindable(p + 10_000));
            reserve(port + 10_000);
            port
        })
    }

    fn start_inner(
        cluster: bool,
        extra: &[&str],
        pick_port: impl Fn() -> u16,
    ) -> Result<RedisServer, String> {
        let binary = redis_server_path()?;
        let dir = TempDir::new(if cluster { "redis-node" } else { "redis" })?;
        let mut server = RedisServer {
            binary,
            dir,
            port: 0,
            cluster,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        let mut races = Vec::new();
        for _ in 0..START_ATTEMPTS {
            server.port = pick_port();
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(LaunchError::PortTaken(e)) => races.push(e),
                Err(LaunchError::Fatal(e)) => return Err(e),
            }
        }
        Err(format!(
            "redis-server lost the race for a free port {START_ATTEMPTS} times: {}",
            races.join("; ")
        ))
    }

    /// The URL to connect to: `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TCP port (on 127.0.0.1). It stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>` as a socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The process id while the server runs ([`stop`](RedisServer::stop)
    /// clears it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's private working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the server printed since its last (re)start: handy in a failing
    /// test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Sends one command over a fresh connection (see [`crate::RespClient`]);
    /// an error reply is `Ok(Resp::Error(..))`.
    pub fn command(&self, args: &[&str]) -> Result<Resp, String> {
        RespClient::connect(self.port)?.call(args)
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit.
    /// The guard keeps its port and directory, so
    /// [`restart`](RedisServer::restart) can bring it back. Does nothing if
    /// it is already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts a new one on the same port
    /// and waits until it answers. The new server has no keys and no loaded
    /// scripts (`EVALSHA` answers `NOSCRIPT`); a cluster node keeps its
    /// cluster configuration (`nodes-<port>.conf`) and rejoins.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let deadline = Instant::now() + RESTART_PORT_TIMEOUT;
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(LaunchError::Fatal(e)) => return Err(e),
                Err(LaunchError::PortTaken(e)) if Instant::now() >= deadline => {
                    return Err(format!(
                        "cannot restart redis-server on port {}: {e}",
                        self.port
                    ))
                }
                Err(LaunchError::PortTaken(_)) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn password(&self) -> Option<&str> {
        self.extra
            .windows(2)
            .rev()
            .find(|w| w[0] == "--requirepass")
            .map(|w| w[1].as_str())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--port".into(),
            self.port.to_string().into(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            self.dir.path().into(),
            "--daemonize".into(),
            "no".into(),
        ];
        if server_major_version(&self.binary).is_some_and(|v| v >= 7) {
            args.extend(["--enable-debug-command".into(), "local".into()]);
        }
        if self.cluster {
            args.extend([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                self.dir
                    .path()
                    .join(format!("nodes-{}.conf", self.port))
                    .into(),
                "--cluster-node-timeout".into(),
                "5000".into(),
            ]);
        }
        args.extend(self.extra.iter().map(OsString::from));
        args
    }

    fn launch(&mut self) -> Result<(), LaunchError> {
        debug_assert!(self.child.is_none());
        let log = File::create(self.log_path())
            .map_err(|e| LaunchError::Fatal(format!("cannot create the redis log file: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| LaunchError::Fatal(format!("cannot clone the log file handle: {e}")))?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.args())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = spawn_bound(cmd).map_err(|e| {
            LaunchError::Fatal(format!("cannot run {}: {e}", self.binary.display()))
        })?;
        self.child = Some(child);
        let ready = self.wait_ready();
        if ready.is_err() {
            self.stop();
        }
        ready
    }

    fn wait_ready(&mut self) -> Result<(), LaunchError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("launched");
            let pid = child.id();
            if let Ok(Some(status)) = child.try_wait() {
                let log = self.log_tail();
                return Err(
                    if log.contains("Address already in use")
                        || log.contains("Could not create server TCP listening socket")
                    {
                        LaunchError::PortTaken(format!("port {} is in use", self.port))
                    } else {
                        LaunchError::Fatal(format!(
                            "redis-server ({}) exited at start-up ({status}); its output:\n{log}",
                            self.binary.display()
                        ))
                    },
                );
            }
            let last = match probe_pid(self.port, self.password()) {
                Ok(answering) if answering == pid => return Ok(()),
                Ok(other) => {
                    return Err(LaunchError::PortTaken(format!(
                        "port {} is served by another redis-server (pid {other})",
                        self.port
                    )))
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(LaunchError::Fatal(format!(
                    "redis-server on port {} did not answer within {READY_TIMEOUT:?} \
                     (last: {last}); its output:\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The pid of the redis-server answering on `port` (from `INFO server`).
fn probe_pid(port: u16, password: Option<&str>) -> Result<u32, String> {
    let mut conn = RespClient::connect_timeout(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(2),
    )?;
    if let Some(password) = password {
        // An error reply (e.g. from a foreign server without a password) is
        // fine: INFO below tells whose server this is.
        conn.call(&["AUTH", password])?;
    }
    match conn.call(&["INFO", "server"])? {
        Resp::Bulk(Some(info)) => {
            let info = String::from_utf8_lossy(&info);
            info.lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| "INFO server has no process_id".to_string())
        }
        other => Err(format!("INFO server answered {other:?}")),
    }
}

/// The major version of the server binary (`redis-server --version` prints
/// `Redis server v=7.0.15 ...`; Valkey prints `Valkey server v=8.0.1 ...`).
fn server_major_version(binary: &Path) -> Option<u32> {
    static VERSION: OnceLock<(PathBuf, Option<u32>)> = OnceLock::new();
    let (cached_for, version) = VERSION.get_or_init(|| (binary.to_path_buf(), query_major(binary)));
    if cached_for == binary {
        *version
    } else {
        query_major(binary)
    }
}

fn query_major(binary: &Path) -> Option<u32> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().find_map(|w| w.strip_prefix("v="))?;
    v.split('.').next()?.parse().ok()
}
