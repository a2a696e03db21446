//! Envoy's rate-limit service (RLS v3, `envoy.service.ratelimit.v3.RateLimitService`) over
//! gRPC: tollgate-server as a drop-in for envoyproxy/ratelimit, with its YAML configuration
//! format, every tollgate algorithm, and truly all-or-nothing decisions (if any descriptor
//! is over its limit, nothing is charged anywhere: one multi-key call, one round trip on
//! Redis). See `docs/rls.md`.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use tollgate_server::{app::App, config::Config, rls::{RlsServer, RlsSettings}};
//! let dir = std::env::temp_dir().join(format!("tollgate-rls-mod-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! std::fs::write(dir.join("edge.yaml"), "domain: edge\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: minute, requests_per_unit: 10}\n").unwrap();
//! let app = Arc::new(App::new(&Config::default(), None).unwrap());
//! let settings = RlsSettings::new("127.0.0.1:0".parse().unwrap(), dir.clone());
//! let server = RlsServer::start(settings, app).await.unwrap();
//! println!("RLS on {}", server.addr());
//! server.shutdown();
//! server.wait().await;
//! std::fs::remove_dir_all(&dir).unwrap();
//! # });
//! ```

mod decide;
mod reload;
pub(crate) mod rules;
mod stats;
pub mod yaml;

pub use reload::load_dir;
pub use rules::{store_key, Rules};
pub use yaml::RlsConfigError;

use crate::app::App;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use parking_lot::{Mutex, RwLock};
use rules::Limit;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

/// The default RLS listen address (loopback only; the reference server's gRPC port).
///
/// ```
/// let addr: std::net::SocketAddr = tollgate_server::rls::DEFAULT_RLS_ADDR.parse().unwrap();
/// assert!(addr.ip().is_loopback());
/// ```
pub const DEFAULT_RLS_ADDR: &str = "127.0.0.1:8081";

/// How the RLS listener runs.
///
/// ```
/// let s = tollgate_server::rls::RlsSettings::new("127.0.0.1:8081".parse().unwrap(), "/etc/ratelimit".into());
/// assert!(!s.response_headers);
/// assert_eq!(s.reload_interval, std::time::Duration::from_secs(1));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RlsSettings {
    /// The gRPC listen address (port 0 picks a free port).
    pub addr: SocketAddr,
    /// The directory of envoyproxy/ratelimit YAML files (one domain per file).
    pub config_dir: PathBuf,
    /// Add the IETF `RateLimit` / `RateLimit-Policy` fields to `response_headers_to_add`.
    pub response_headers: bool,
    /// How often the directory is checked for changes (default 1 s).
    pub reload_interval: Duration,
}

impl RlsSettings {
    /// Settings with the defaults: no response fields, reload checked every second.
    ///
    /// ```
    /// let s = tollgate_server::rls::RlsSettings::new("127.0.0.1:0".parse().unwrap(), "conf".into());
    /// assert_eq!(s.config_dir, std::path::PathBuf::from("conf"));
    /// ```
    pub fn new(addr: SocketAddr, config_dir: PathBuf) -> Self {
        RlsSettings {
            addr,
            config_dir,
            response_headers: false,
            reload_interval: Duration::from_secs(1),
        }
    }
}

/// Most distinct request `limit` overrides kept bound (beyond that they are bound per call).
const MAX_OVERRIDES: usize = 1024;

/// Limits built from requests' `limit` overrides, kept across calls and reloads.
#[derive(Default)]
pub(crate) struct OverrideCache {
    map: Mutex<HashMap<(String, i32, u32), Arc<Limit>>>,
}

impl OverrideCache {
    pub(crate) fn get(
        &self,
        app: &App,
        domain: &str,
        entries: &[(&str, &str)],
        o: &RateLimitOverride,
    ) -> Result<rules::Match, Status> {
        let unit = yaml::Unit::from_proto(o.unit).ok_or_else(|| {
            Status::invalid_argument(format!("limit override: unknown unit {}", o.unit))
        })?;
        let mut stat_key = domain.to_string();
        for (k, _) in entries {
            stat_key.push('.');
            stat_key.push_str(k);
        }
        stat_key.push_str("_override");
        let id = (stat_key.clone(), o.unit, o.requests_per_unit);
        let cached = self.map.lock().get(&id).cloned();
        let limit = match cached {
            Some(l) => l,
            None => {
                let l = Arc::new(
                    Limit::from_override(app, domain, unit, o.requests_per_unit, stat_key)
                        .map_err(|m| Status::invalid_argument(format!("limit override: {m}")))?,
                );
                let mut map = self.map.lock();
                if map.len() < MAX_OVERRIDES {
                    map.insert(id, Arc::clone(&l));
                }
                l
            }
        };
        Ok(rules::Match {
            limit,
            store_key: store_key(domain, entries),
        })
    }
}

/// The gRPC service: `ShouldRateLimit` decided on the server's store with the rules in use.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor::Entry};
/// use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, rate_limit_service_server::RateLimitService};
/// use tollgate_server::{app::App, config::Config, rls::{RlsService, yaml::parse_domain, Rules}};
/// let app = Arc::new(App::new(&Config::default(), None).unwrap());
/// let spec = parse_domain("a.yaml", "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1}\n").unwrap();
/// let service = RlsService::new(Arc::clone(&app), Rules::compile(&app, vec![spec]).unwrap(), false);
/// let req = RateLimitRequest { domain: "a".into(), descriptors: vec![RateLimitDescriptor {
///     entries: vec![Entry { key: "k".into(), value: "v".into() }], ..Default::default() }], hits_addend: 0 };
/// let first = service.should_rate_limit(tonic::Request::new(req.clone())).await.unwrap().into_inner();
/// let second = service.should_rate_limit(tonic::Request::new(req)).await.unwrap().into_inner();
/// assert_eq!((first.overall_code, second.overall_code), (1, 2)); // OK, then OVER_LIMIT
/// # });
/// ```
#[derive(Clone)]
pub struct RlsService {
    app: Arc<App>,
    current: reload::Current,
    overrides: Arc<OverrideCache>,
    response_headers: bool,
}

impl std::fmt::Debug for RlsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RlsService")
            .field("rules", &*self.current.read())
            .finish_non_exhaustive()
    }
}

impl RlsService {
    /// A service deciding with `rules` on `app`'s store; `response_headers` adds the IETF
    /// fields to every response.
    ///
    /// ```
    /// let app = std::sync::Arc::new(tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap());
    /// let s = tollgate_server::rls::RlsService::new(app, tollgate_server::rls::Rules::default(), true);
    /// # let _ = s;
    /// ```
    pub fn new(app: Arc<App>, rules: Rules, response_headers: bool) -> Self {
        RlsService {
            app,
            current: Arc::new(RwLock::new(Arc::new(rules))),
            overrides: Arc::new(OverrideCache::default()),
            response_headers,
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let rules = Arc::clone(&*self.current.read());
        let req = request.into_inner();
        decide::should_rate_limit(
            &self.app,
            &rules,
            &self.overrides,
            &req,
            self.response_headers,
        )
        .await
        .map(Response::new)
    }
}

pub(crate) fn now_us() -> u64 {
    use tollgate::time::Clock;
    tollgate::time::SystemClock.now()
}

/// A running RLS listener and its configuration watcher.
#[derive(Debug)]
pub struct RlsServer {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Why the RLS listener could not start.
///
/// ```
/// let e = tollgate_server::rls::RlsStartError::Config(tollgate_server::rls::RlsConfigError::new("a.yaml", "domain", "missing"));
/// assert_eq!(e.to_string(), "RLS configuration: a.yaml: domain: missing");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RlsStartError {
    /// The configuration directory is invalid.
    #[error("RLS configuration: {0}")]
    Config(#[from] RlsConfigError),
    /// The address cannot be bound.
    #[error("cannot listen for RLS (gRPC) on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

impl RlsServer {
    /// Loads the configuration directory (an invalid one is an error: nothing starts),
    /// binds the listener and starts serving and watching the directory.
    ///
    /// ```no_run
    /// # async fn demo(app: std::sync::Arc<tollgate_server::app::App>) -> Result<(), Box<dyn std::error::Error>> {
    /// use tollgate_server::rls::{RlsServer, RlsSettings};
    /// let server = RlsServer::start(RlsSettings::new("127.0.0.1:0".parse()?, "ratelimit".into()), app).await?;
    /// println!("RLS on grpc://{}", server.addr());
    /// server.shutdown();
    /// server.wait().await;
    /// # Ok(()) }
    /// ```
    pub async fn start(settings: RlsSettings, app: Arc<App>) -> Result<RlsServer, RlsStartError> {
        let (rules, fp) = reload::initial_load(&app, &settings.config_dir)?;
        let listener = tokio::net::TcpListener::bind(settings.addr)
            .await
            .map_err(|source| RlsStartError::Bind {
                addr: settings.addr,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| RlsStartError::Bind {
                addr: settings.addr,
                source,
            })?;
        let service = RlsService::new(Arc::clone(&app), rules, settings.response_headers);
        let current = Arc::clone(&service.current);
        let (tx, rx) = watch::channel(false);
        let mut stop = rx.clone();
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let serve = tonic::transport::Server::builder()
            .add_service(RateLimitServiceServer::new(service))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            });
        let mut tasks = vec![tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!("RLS listener stopped: {e}");
            }
        })];
        tasks.push(tokio::spawn(reload::watch_dir(
            app,
            settings.config_dir,
            settings.reload_interval,
            current,
            fp,
            rx,
        )));
        Ok(RlsServer {
            addr,
            shutdown: tx,
            tasks,
        })
    }

    /// The bound address (see [`start`](Self::start)).
    ///
    /// ```no_run
    /// # fn demo(server: &tollgate_server::rls::RlsServer) {
    /// assert_ne!(server.addr().port(), 0);
    /// # }
    /// ```
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting calls; calls in flight finish (see [`start`](Self::start)).
    ///
    /// ```no_run
    /// # fn demo(server: &tollgate_server::rls::RlsServer) {
    /// server.shutdown();
    /// # }
    /// ```
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until the listener and the watcher have stopped (see [`start`](Self::start)).
    ///
    /// ```no_run
    /// # async fn demo(server: tollgate_server::rls::RlsServer) {
    /// server.shutdown();
    /// server.wait().await;
    /// # }
    /// ```
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
