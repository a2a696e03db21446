//! The Cluster connection, rebuilt when calls keep failing.
//!
//! The redis crate's cluster client learns a new topology only from the replies it processes:
//! a `MOVED`, or a node it cannot reach. After a master is killed and its replica promoted,
//! its slots stay mapped to the dead address; each call for them goes to a random node, and
//! only a `MOVED` reply refreshes the map. A `CLUSTERDOWN` or `TRYAGAIN` reply (from a node
//! that has not seen the promotion yet) is retried after a sleep of at least 1.28 s — past
//! the store's call timeout — and triggers nothing; and a reply that arrives after the caller
//! gave up is dropped with its hint. On a loaded machine the map could stay stale long after
//! the cluster was whole again, every call for those slots timing out.
//!
//! So the store watches its calls: when calls keep failing with timeouts or connection
//! errors ([`FAILURES_TO_REBUILD`] since the last build, the last one within
//! [`ClusterConn::interval`]), it builds a fresh connection in the background — which reads
//! the current slot map from a live node — and swaps it in. At most one build runs at a time
//! and builds are at least one interval apart; a build that fails keeps the old connection.

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::{Error, StoreErrorKind};

/// Failed calls since the last build (none of them older than one interval) that make the
/// store rebuild its Cluster connection.
pub(crate) const FAILURES_TO_REBUILD: u32 = 2;

/// The Cluster client and its current connection.
pub(crate) struct ClusterConn {
    client: ClusterClient,
    current: parking_lot::Mutex<Option<ClusterConnection>>,
    /// Held while the first connection is opened (one attempt at a time).
    first: tokio::sync::Mutex<()>,
    health: parking_lot::Mutex<Health>,
    interval: Duration,
    build_timeout: Duration,
}

/// The recent failures of the store's calls.
#[derive(Default)]
struct Health {
    /// Failed calls since the last build, or since the last quiet interval.
    failures: u32,
    last_failure: Option<Instant>,
    /// When the current connection was built, or the last rebuild started.
    last_build: Option<Instant>,
    rebuilding: bool,
    rebuilds: u64,
}

impl ClusterConn {
    /// `timeout` is the store's call timeout: builds are at least `max(2 × timeout, 1 s)` apart.
    pub(crate) fn new(client: ClusterClient, timeout: Duration) -> ClusterConn {
        ClusterConn {
            client,
            current: parking_lot::Mutex::new(None),
            first: tokio::sync::Mutex::new(()),
            health: parking_lot::Mutex::new(Health::default()),
            interval: (timeout * 2).max(Duration::from_secs(1)),
            build_timeout: (timeout * 4).max(Duration::from_secs(2)),
        }
    }

    /// The least time between two builds of the connection.
    #[cfg(test)]
    fn interval(&self) -> Duration {
        self.interval
    }

    /// How many times the connection was rebuilt after failures.
    #[cfg(test)]
    fn rebuilds(&self) -> u64 {
        self.health.lock().rebuilds
    }

    /// The current connection, opened on first use.
    pub(crate) async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        if let Some(conn) = self.current.lock().clone() {
            return Ok(conn);
        }
        let _first = self.first.lock().await;
        if let Some(conn) = self.current.lock().clone() {
            return Ok(conn);
        }
        let conn = self.client.get_async_connection().await?;
        *self.current.lock() = Some(conn.clone());
        self.health.lock().last_build = Some(Instant::now());
        Ok(conn)
    }

    /// Records the outcome of a call; true when the caller should start [`ClusterConn::rebuild`]
    /// (the rebuild is then counted as started).
    pub(crate) fn observe<T>(&self, result: &Result<T, Error>) -> bool {
        if !is_failure(result) {
            return false;
        }
        // Only a built connection is rebuilt: the first one is opened by the calls themselves.
        let built = self.current.lock().is_some();
        self.health
            .lock()
            .failed(Instant::now(), self.interval, built)
    }

    /// Builds a fresh connection (its slot map read from a live node) and swaps it in; on
    /// failure the current one stays. Calls in flight finish on the connection they hold.
    pub(crate) async fn rebuild(self: Arc<Self>) {
        let built =
            tokio::time::timeout(self.build_timeout, self.client.get_async_connection()).await;
        match built {
            Ok(Ok(conn)) => {
                tracing::warn!("Redis Cluster calls kept failing: connection rebuilt");
                *self.current.lock() = Some(conn);
            }
            Ok(Err(e)) => tracing::warn!("Redis Cluster connection rebuild failed: {e}"),
            Err(_) => tracing::warn!(
                "Redis Cluster connection rebuild timed out after {:?}",
                self.build_timeout
            ),
        }
        let mut h = self.health.lock();
        h.rebuilding = false;
        h.last_build = Some(Instant::now());
    }
}

impl Health {
    /// Counts a failed call at `now`; true when a rebuild is due (and marks it started).
    fn failed(&mut self, now: Instant, interval: Duration, built: bool) -> bool {
        if self.last_failure.is_some_and(|t| now - t > interval) {
            self.failures = 0; // a quiet interval: an old failure says nothing about now
        }
        self.failures += 1;
        self.last_failure = Some(now);
        let due = self.last_build.is_none_or(|t| now - t >= interval);
        if !built || self.rebuilding || !due || self.failures < FAILURES_TO_REBUILD {
            return false;
        }
        self.rebuilding = true;
        self.failures = 0;
        self.last_build = Some(now);
        self.rebuilds += 1;
        true
    }
}

/// A failure that a stale or broken Cluster connection can cause: a timeout or a connection
/// error (not a refused key, a script error or an authentication failure).
fn is_failure<T>(result: &Result<T, Error>) -> bool {
    matches!(
        result,
        Err(Error::Store(e)) if matches!(
            e.kind,
            StoreErrorKind::Timeout | StoreErrorKind::Connection | StoreErrorKind::ConnectionRefused
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::StoreError;

    fn timeout() -> Result<(), Error> {
        Err(Error::Store(StoreError::timeout(
            "redis",
            Duration::from_millis(500),
        )))
    }

    #[test]
    fn a_rebuild_follows_repeated_failures_at_most_once_per_interval() {
        let second = Duration::from_secs(1);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut h = Health {
            last_build: Some(t0),
            ..Health::default()
        };
        // not before one interval after the build, however many failures
        assert!(!h.failed(at(100), second, true));
        assert!(!h.failed(at(600), second, true));
        assert!(h.failed(at(1100), second, true));
        assert_eq!(h.rebuilds, 1);
        // it ends (`rebuild` sets the build time again)
        h.rebuilding = false;
        h.last_build = Some(at(1200));
        // due again one interval after that, after 2 more failures
        assert!(!h.failed(at(1300), second, true));
        assert!(h.failed(at(2300), second, true));
        // one at a time: while it runs, failures do not start another
        assert!(!h.failed(at(3400), second, true));
        assert!(!h.failed(at(3500), second, true));
        h.rebuilding = false;
        h.last_build = Some(at(3600));
        // failures separated by a quiet interval do not add up
        assert!(!h.failed(at(5000), second, true));
        assert!(!h.failed(at(6100), second, true));
        assert!(h.failed(at(6200), second, true));
        assert_eq!(h.rebuilds, 3);
        // never before the first connection is built
        let mut fresh = Health::default();
        for ms in 0..5 {
            assert!(!fresh.failed(at(ms * 100), second, false));
        }
    }

    #[test]
    fn the_interval_follows_the_timeout() {
        let client = ClusterClient::new(vec!["redis://127.0.0.1:1/"]).unwrap();
        let c = ClusterConn::new(client.clone(), Duration::from_millis(100));
        assert_eq!(c.interval(), Duration::from_secs(1));
        let c = ClusterConn::new(client, Duration::from_secs(2));
        assert_eq!(c.interval(), Duration::from_secs(4));
        assert_eq!(c.rebuilds(), 0);
    }

    #[test]
    fn successes_and_other_errors_are_not_failures() {
        assert!(!is_failure(&Ok::<(), Error>(())));
        assert!(!is_failure(&Err::<(), Error>(Error::InvalidCost)));
        let other = Error::Store(StoreError::new("redis", "NOSCRIPT"));
        assert!(!is_failure(&Err::<(), Error>(other)));
        assert!(is_failure(&timeout()));
        let refused = Error::Store(StoreError::with_kind(
            "redis",
            StoreErrorKind::ConnectionRefused,
            "refused",
        ));
        assert!(is_failure(&Err::<(), Error>(refused)));
    }
}
