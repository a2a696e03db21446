//! Free loopback ports.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static SET: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The kernel picks it (bind to port 0), and one process never gets the same
/// port twice, so parallel tests in one binary do not collide. Another process
/// can still take it before you bind it: callers that spawn a server on it
/// must retry with a new port when the spawn fails (as [`crate::RedisServer`]
/// does).
///
/// ```
/// let a = tollgate_testkit::free_port();
/// let b = tollgate_testkit::free_port();
/// assert_ne!(a, b);
/// std::net::TcpListener::bind(("127.0.0.1", a)).unwrap();
/// ```
///
/// # Panics
///
/// If no port can be bound at all (the loopback interface is down).
pub fn free_port() -> u16 {
    free_port_where(|_| true)
}

/// A free port `p` for which `also_free(p)` holds too (e.g. that `p + 10000`,
/// a Redis Cluster bus port, is free as well).
pub(crate) fn free_port_where(also_free: impl Fn(u16) -> bool) -> u16 {
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
        let port = listener
            .local_addr()
            .expect("bound listener has an address")
            .port();
        if !also_free(port) {
            continue;
        }
        let mut set = handed_out().lock().unwrap_or_else(|p| p.into_inner());
        if set.insert(port) {
            return port;
        }
    }
    panic!("no free port found on 127.0.0.1 after 1000 tries")
}

/// Marks `port` as used by this process (so [`free_port`] never returns it).
pub(crate) fn reserve(port: u16) -> bool {
    handed_out()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(port)
}

/// Whether `port` can be bound on 127.0.0.1 right now.
pub(crate) fn is_bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_distinct_ports() {
        let ports: HashSet<u16> = (0..200).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 200);
        assert!(!ports.contains(&0));
    }

    #[test]
    fn constrained_port() {
        let p = free_port_where(|p| p <= 55535 && is_bindable(p + 10000));
        assert!(p <= 55535);
    }
}
