//! Listeners, connection limits and graceful shutdown.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use tollgate_server::{app::App, config::Config, server::Server};
//! let config = Config::default();
//! let app = Arc::new(App::new(&config, None).expect("valid config"));
//! let server = Server::start(&config, app).await?;
//! println!("HTTP on {:?}", server.http_addr());
//! server.shutdown();
//! server.wait().await;
//! # Ok(()) }
//! ```

use crate::app::App;
use crate::config::Config;
use crate::http::{ConnIo, ConnService, ConnTimer, Dispatch, HttpState};
use crate::resp::Limits;
use crate::resp_server::{serve_connection, ConnSettings};
use hyper::service::service_fn;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// A running server: its bound addresses and a handle to stop it.
#[derive(Debug)]
pub struct Server {
    http_addr: Option<SocketAddr>,
    resp_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds the configured listeners (port 0 picks a free port) and starts serving.
    pub async fn start(config: &Config, app: Arc<App>) -> std::io::Result<Server> {
        let (tx, rx) = watch::channel(false);
        let grace = config.shutdown_grace;
        let mut tasks = Vec::new();
        let mut http_addr = None;
        let mut resp_addr = None;
        if let Some(addr) = config.http_addr {
            let listener = bind(addr, "HTTP").await?;
            http_addr = Some(listener.local_addr()?);
            let state = HttpState {
                app: Arc::clone(&app),
                max_body: config.max_request_bytes,
                request_timeout: config.request_timeout,
            };
            tasks.push(tokio::spawn(http_loop(
                listener,
                state,
                config.max_connections,
                config.request_timeout,
                grace,
                rx.clone(),
            )));
        }
        if let Some(addr) = config.resp_addr {
            let listener = bind(addr, "RESP").await?;
            resp_addr = Some(listener.local_addr()?);
            let settings = ConnSettings {
                limits: Limits {
                    max_args: 1024,
                    max_arg_bytes: config.max_request_bytes,
                    max_command_bytes: config.max_request_bytes,
                },
                idle_timeout: config.idle_timeout,
                request_timeout: config.request_timeout,
            };
            tasks.push(tokio::spawn(resp_loop(
                listener,
                Arc::clone(&app),
                settings,
                config.max_connections,
                grace,
                rx.clone(),
            )));
        }
        Ok(Server {
            http_addr,
            resp_addr,
            shutdown: tx,
            tasks,
        })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The bound RESP address.
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp_addr
    }

    /// Stops accepting connections; in-flight requests finish, idle connections close.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until every listener and connection has finished (or the grace period ran out).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen for {what} on {addr}: {e}"))
    })
}

async fn accept_error_pause(e: std::io::Error) {
    // Out of file descriptors and similar: pause instead of spinning.
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The next accepted connection with its connection slot (waiting for a free slot first);
/// `None` once shutdown is requested.
async fn next_connection(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    let permit = tokio::select! {
        p = Arc::clone(slots).acquire_owned() => p.ok()?,
        _ = shutdown.changed() => return None,
    };
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => return Some((s, permit)),
                Err(e) => accept_error_pause(e).await,
            },
            _ = shutdown.changed() => return None,
        }
    }
}

async fn http_loop(
    listener: TcpListener,
    state: HttpState,
    max_connections: usize,
    request_timeout: Duration,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    // The request head must fit in `max_request_bytes` (hyper's own limit is ~400 KB per
    // connection: with every slot taken that is gigabytes); hyper needs at least 8 KiB.
    let max_head = state.max_body.max(8192);
    let dispatch = Arc::new(Dispatch::new(state));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    while let Some((stream, permit)) = next_connection(&listener, &slots, &mut shutdown).await {
        let _ = stream.set_nodelay(true);
        let io = match ConnIo::new(stream) {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!("could not take over an accepted connection: {e}");
                continue;
            }
        };
        let conn_service = Arc::new(ConnService::new(Arc::clone(&dispatch), io.hang_up()));
        let service = service_fn(move |req| Arc::clone(&conn_service).call(req));
        let conn = hyper::server::conn::http1::Builder::new()
            // One tokio timer per connection for the header-read timeout, not one per
            // request (see `http::ConnTimer`).
            .timer(ConnTimer::default())
            .header_read_timeout(request_timeout)
            .max_buf_size(max_head)
            .keep_alive(true)
            // No read while a request is in flight to notice a hang-up: that read takes a
            // fresh 8 KiB buffer per request (the body still points into the old one). The
            // waits that need to notice a hang-up watch the socket (`http::HangUp`).
            .half_close(true)
            // Responses are small: one buffer (head and body copied together) and one
            // `write` cost less than building an iovec list per response (callgrind, `cargo
            // bench -p tollgate-server --bench vs_throttlecrab`: −1.2 % per check).
            .writev(false)
            .serve_connection(io, service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

async fn resp_loop(
    listener: TcpListener,
    app: Arc<App>,
    settings: ConnSettings,
    max_connections: usize,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    while let Some((stream, permit)) = next_connection(&listener, &slots, &mut shutdown).await {
        let app = Arc::clone(&app);
        let rx = shutdown.clone();
        tokio::spawn(async move {
            serve_connection(stream, app, settings, rx).await;
            drop(permit);
        });
    }
    drop(listener);
    // Every connection holds a slot: holding them all means every connection has finished.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace, slots.acquire_many(all)).await;
}
