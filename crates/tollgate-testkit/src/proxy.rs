//! [`FaultProxy`]: a TCP proxy on a loopback port that forwards to a server and injects
//! network faults on demand — latency, black-holed packets, connection resets — so tests can
//! check timeouts, circuit breakers and failure policies against a real server (Redis,
//! PostgreSQL) without root or network namespaces. Thread-per-connection, std only.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to the traffic now.
///
/// ```
/// assert_eq!(tollgate_testkit::Fault::default(), tollgate_testkit::Fault::None);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything at once.
    #[default]
    None,
    /// Hold every chunk this long before forwarding it (each direction).
    Latency(Duration),
    /// Forward nothing while it lasts (connections stay open, nothing is refused or
    /// answered): a partitioned network or a silent firewall. As with TCP over a real
    /// partition, what was sent meanwhile is delivered once the fault is lifted (a real
    /// stack retransmits it), so the byte streams stay intact.
    BlackHole,
    /// Drop every open connection at once and close every new one on arrival: the client
    /// sees its connection end mid-call (stable Rust has no `SO_LINGER` to send an RST, so
    /// the close is a FIN from both sides).
    Reset,
}

struct Shared {
    fault: Mutex<Fault>,
    conns: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A fault-injecting TCP proxy to `target`, on a free loopback port; stops when dropped.
///
/// ```
/// use std::io::{Read, Write};
/// use tollgate_testkit::{Fault, FaultProxy};
/// // an echo server to proxy to
/// let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let target = echo.local_addr().unwrap();
/// std::thread::spawn(move || {
///     for s in echo.incoming() {
///         let mut s = s.unwrap();
///         std::thread::spawn(move || {
///             let mut b = [0u8; 64];
///             while let Ok(n) = s.read(&mut b) {
///                 if n == 0 || s.write_all(&b[..n]).is_err() { break; }
///             }
///         });
///     }
/// });
/// let proxy = FaultProxy::start(target).unwrap();
/// let mut c = std::net::TcpStream::connect(proxy.addr()).unwrap();
/// c.write_all(b"hi").unwrap();
/// let mut b = [0u8; 2];
/// c.read_exact(&mut b).unwrap();
/// assert_eq!(&b, b"hi");
/// proxy.set(Fault::Reset);
/// assert!(c.write_all(b"x").and_then(|_| c.read(&mut b)).map_or(true, |n| n == 0));
/// ```
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Starts the proxy to `target` (nothing is connected until a client connects).
    pub fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::None),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || accept_loop(listener, target, s))?;
        Ok(FaultProxy { addr, shared })
    }

    /// The proxy's address: hand it to the client instead of the server's.
    ///
    /// ```no_run
    /// # let p = tollgate_testkit::FaultProxy::start("127.0.0.1:6379".parse().unwrap()).unwrap();
    /// let url = format!("redis://{}/", p.addr());
    /// # let _ = url;
    /// ```
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the fault; [`Fault::Reset`] drops every open connection at once.
    ///
    /// ```no_run
    /// # let p = tollgate_testkit::FaultProxy::start("127.0.0.1:6379".parse().unwrap()).unwrap();
    /// p.set(tollgate_testkit::Fault::Latency(std::time::Duration::from_millis(50)));
    /// p.set(tollgate_testkit::Fault::None);
    /// ```
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
        if fault == Fault::Reset {
            let conns =
                std::mem::take(&mut *self.shared.conns.lock().unwrap_or_else(|p| p.into_inner()));
            for c in conns {
                reset(&c);
            }
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // wake the accept loop
        let _ = TcpStream::connect(self.addr);
        for c in self
            .shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Ends a connection in both directions.
fn reset(s: &TcpStream) {
    let _ = s.shutdown(Shutdown::Both);
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.fault() == Fault::Reset {
            reset(&client);
            continue;
        }
        let Ok(server) = TcpStream::connect(target) else {
            reset(&client);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        {
            let mut conns = shared.conns.lock().unwrap_or_else(|p| p.into_inner());
            for s in [&client, &server] {
                if let Ok(c) = s.try_clone() {
                    conns.push(c);
                }
            }
        }
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            let shared = Arc::clone(&shared);
            let _ = std::thread::Builder::new()
                .name("fault-proxy-pump".into())
                .spawn(move || pump(from, to, &shared));
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut fault = shared.fault();
        while fault == Fault::BlackHole && !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
            fault = shared.fault();
        }
        match fault {
            Fault::Latency(d) => std::thread::sleep(d),
            Fault::Reset => break,
            Fault::None | Fault::BlackHole => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
