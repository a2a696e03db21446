//! A throwaway three-master Redis Cluster.

use std::fs::File;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::env::redis_cli_path;
use crate::resp::Resp;
use crate::RedisServer;

/// How many masters [`RedisCluster::start`] creates.
const MASTERS: usize = 3;
/// How long `redis-cli --cluster create` may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the nodes may take to agree that the cluster is up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A Redis Cluster of three masters (no replicas) on free ports of
/// 127.0.0.1, each a [`RedisServer`] with `--cluster-enabled yes` and its own
/// `--cluster-config-file <dir>/nodes-<port>.conf`.
///
/// [`RedisCluster::start`] returns once `redis-cli --cluster create` has
/// assigned all 16384 slots and every node reports `cluster_state:ok` and
/// knows all three nodes. All nodes are killed when the guard is dropped.
///
/// Hash tags keep a policy's keys in one slot; any node redirects
/// (`MOVED`) to the owner of a slot, so clients may start from any URL.
///
/// ```no_run
/// use tollgate_testkit::{must_have, RedisCluster};
///
/// let Some(cluster) = must_have("Redis Cluster", RedisCluster::start()) else { return };
/// let urls = cluster.urls(); // ["redis://127.0.0.1:P1/", ...]: seed nodes for a cluster client
/// assert_eq!(urls.len(), 3);
/// let info = cluster.nodes()[0].command(&["CLUSTER", "INFO"]).unwrap();
/// assert!(info.as_text().unwrap().contains("cluster_state:ok"));
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them with
    /// `redis-cli --cluster create 127.0.0.1:P1 127.0.0.1:P2 127.0.0.1:P3
    /// --cluster-replicas 0 --cluster-yes`, and waits until every node says
    /// `cluster_state:ok`.
    ///
    /// `Err` says why not (binaries missing, start-up or create failure with
    /// the relevant output); pass it to [`crate::must_have`].
    pub fn start() -> Result<RedisCluster, String> {
        Self::start_inner(0, &[])
    }

    /// Three masters, each with one replica (six nodes; the first three of
    /// [`nodes`](RedisCluster::nodes) are the masters), and a short
    /// `cluster-node-timeout` (1 s) so a killed master's replica is promoted
    /// within seconds: for failover tests.
    ///
    /// ```no_run
    /// let Some(cluster) = tollgate_testkit::must_have("Redis Cluster", tollgate_testkit::RedisCluster::start_with_replicas()) else { return };
    /// assert_eq!(cluster.nodes().len(), 6);
    /// ```
    pub fn start_with_replicas() -> Result<RedisCluster, String> {
        Self::start_inner(1, &["--cluster-node-timeout", "1000"])
    }

    fn start_inner(replicas: usize, extra: &[&str]) -> Result<RedisCluster, String> {
        let cli = redis_cli_path()?;
        let nodes = (0..MASTERS * (1 + replicas))
            .map(|_| RedisServer::start_cluster_node(extra))
            .collect::<Result<Vec<_>, String>>()?;
        let cluster = RedisCluster { nodes };

        let log_path = cluster.nodes[0].dir().join("cluster-create.log");
        let log =
            File::create(&log_path).map_err(|e| format!("cannot create {log_path:?}: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot clone a file handle: {e}"))?;
        let mut cmd = Command::new(&cli);
        cmd.arg("--cluster").arg("create");
        for port in cluster.ports() {
            cmd.arg(format!("127.0.0.1:{port}"));
        }
        let replicas = replicas.to_string();
        cmd.args(["--cluster-replicas", &replicas, "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let mut child = crate::process::spawn_bound(cmd)
            .map_err(|e| format!("cannot run {}: {e}", cli.display()))?;
        let deadline = Instant::now() + CREATE_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "redis-cli --cluster create did not finish within {CREATE_TIMEOUT:?}; \
                         its output:\n{}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    ));
                }
                Err(e) => return Err(format!("cannot wait for redis-cli: {e}")),
            }
        };
        if !status.success() {
            return Err(format!(
                "redis-cli --cluster create failed ({status}); its output:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            ));
        }
        cluster.wait_until_ok(READY_TIMEOUT)?;
        Ok(cluster)
    }

    /// The nodes' URLs, `redis://127.0.0.1:<port>/`, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes' ports, in node order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The nodes, e.g. to send one a command or read its log.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, mutably: [`RedisServer::stop`] and
    /// [`RedisServer::restart`] one to test a node failure (a restarted node
    /// keeps its `nodes-<port>.conf`, so it rejoins with its slots but no
    /// data; call [`RedisCluster::wait_until_ok`] afterwards).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Waits until every node answers `CLUSTER INFO` with `cluster_state:ok`
    /// and knows every other node.
    pub fn wait_until_ok(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let problems: Vec<String> = self
                .nodes
                .iter()
                .filter_map(|n| self.node_problem(n))
                .collect();
            if problems.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the Redis Cluster on ports {:?} is not ready after {timeout:?}: {}",
                    self.ports(),
                    problems.join("; ")
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn node_problem(&self, node: &RedisServer) -> Option<String> {
        let port = node.port();
        let info = match node.command(&["CLUSTER", "INFO"]) {
            Ok(Resp::Bulk(Some(info))) => String::from_utf8_lossy(&info).into_owned(),
            Ok(other) => return Some(format!("{port}: CLUSTER INFO answered {other:?}")),
            Err(e) => return Some(format!("{port}: {e}")),
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .unwrap_or("?")
                .to_string()
        };
        let state = field("cluster_state");
        let known = field("cluster_known_nodes");
        if state == "ok" && known == self.nodes.len().to_string() {
            None
        } else {
            Some(format!(
                "{port}: cluster_state:{state} cluster_known_nodes:{known}"
            ))
        }
    }
}
