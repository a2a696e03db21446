//! Network faults between the PostgreSQL store and the server, through tollgate-testkit's
//! `FaultProxy`: latency below and above the call timeout, black-holed packets, dropped
//! connections, under each failure policy. What holds: the policy answers while the network
//! is bad, the circuit breaker opens and closes by itself, the database never admits more
//! than the limit, the store decides again afterwards, and **a call reported failed charged
//! nothing**: a statement that reaches the server after its call's deadline (delayed or
//! black-holed, then delivered when the network heals) writes nothing, so the state holds
//! exactly the charges of the calls reported admitted (docs/sql.md).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::store::failure::{CircuitBreaker, FailSafe, FailSafeStore, FailurePolicy};
use tollgate::{Limiter, Policy, Rate};
use tollgate_sql::{PgBackend, PgStore};
use tollgate_testkit::{Fault, FaultProxy};

const TIMEOUT: Duration = Duration::from_millis(300);
const LIMIT: u64 = 1000;

/// The server's address in a `postgres://user@host:port/db` URL, and the URL with
/// `host:port` replaced by `via`.
fn through(url: &str, via: SocketAddr) -> (SocketAddr, String) {
    let rest = url.split_once("://").expect("a URL").1;
    let authority = rest.split('/').next().unwrap();
    let hostport = authority.rsplit('@').next().unwrap();
    let hostport_full = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5432")
    };
    let addr = hostport_full
        .to_socket_addrs()
        .expect("resolvable")
        .next()
        .unwrap();
    (addr, url.replacen(hostport, &via.to_string(), 1))
}

struct Guarded {
    limiter: Limiter<FailSafe<PgBackend>>,
    failures: Arc<AtomicUsize>,
    table: String,
    url: String,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Ok(Ok(store)) = PgStore::builder(&self.url)
            .table(&self.table)
            .map(|b| b.connect())
        {
            let _ = store.drop_schema();
        }
    }
}

fn guarded(url: &str, proxy: &FaultProxy, policy: FailurePolicy, tag: &str) -> Guarded {
    let (_, via) = through(url, proxy.addr());
    let table = format!("tg_net_{tag}_{}", std::process::id());
    let direct = PgStore::builder(url)
        .table(&table)
        .unwrap()
        .connect()
        .unwrap();
    direct.migrate().unwrap();
    let store = PgStore::builder(&via)
        .table(&table)
        .unwrap()
        .call_timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .max_connections(4)
        .connect_lazy()
        .unwrap();
    let failures = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&failures);
    let breaker = CircuitBreaker::builder("postgres")
        .failures(3)
        .cool_down(Duration::from_millis(300))
        .build();
    let store = FailSafeStore::with_policy(store, policy)
        .with_breaker(breaker)
        .on_failure(move |_, _| {
            seen.fetch_add(1, Ordering::SeqCst);
        });
    let rate = Rate::new(LIMIT, Duration::from_secs(365 * 86_400)).unwrap();
    Guarded {
        limiter: Limiter::builder(Policy::gcra(rate).unwrap())
            .build_with(&store)
            .unwrap(),
        failures,
        table,
        url: url.to_string(),
    }
}

impl Guarded {
    /// `Some(allowed)` when the database decided, `None` when the failure policy answered.
    fn check(&self, key: &str) -> Option<bool> {
        let before = self.failures.load(Ordering::SeqCst);
        let r = self.limiter.check(key);
        (self.failures.load(Ordering::SeqCst) == before).then(|| r.unwrap().allowed)
    }

    /// Waits until the database decides again; the units charged on `key` there.
    fn charged(&self, key: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let before = self.failures.load(Ordering::SeqCst);
            let d = self.limiter.peek(key, 1);
            if self.failures.load(Ordering::SeqCst) == before {
                if let Ok(d) = d {
                    return LIMIT - 1 - d.remaining;
                }
            }
            assert!(Instant::now() < deadline, "no recovery");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn postgres_through_latency_black_hole_and_dropped_connections() {
    let Some(url) = tollgate_testkit::require_postgres() else {
        return;
    };
    let (server, _) = through(&url, "127.0.0.1:1".parse().unwrap());
    for policy in [
        FailurePolicy::FailOpen,
        FailurePolicy::FailClosed,
        FailurePolicy::Fallback,
    ] {
        for (i, fault) in [
            Fault::Latency(Duration::from_millis(30)),
            Fault::Latency(Duration::from_millis(600)),
            Fault::BlackHole,
            Fault::Reset,
        ]
        .into_iter()
        .enumerate()
        {
            let proxy = FaultProxy::start(server).unwrap();
            let g = guarded(&url, &proxy, policy, &format!("{}_{i}", policy.as_str()));
            let mut admitted = 0;
            for _ in 0..3 {
                assert_eq!(g.check("k"), Some(true), "{policy:?}/{fault:?}");
                admitted += 1;
            }
            proxy.set(fault);
            let mut answered_by_policy = 0;
            let started = Instant::now();
            for _ in 0..10 {
                match g.check("k") {
                    Some(true) => admitted += 1,
                    Some(false) => panic!("{policy:?}/{fault:?}: denied below the limit"),
                    None => answered_by_policy += 1,
                }
            }
            let took = started.elapsed();
            if fault == Fault::Latency(Duration::from_millis(30)) {
                assert_eq!(answered_by_policy, 0, "30 ms is well inside the timeout");
            } else {
                assert!(answered_by_policy > 0, "{policy:?}/{fault:?}");
                // the breaker opened: 10 calls did not each wait a timeout
                assert!(took < 10 * TIMEOUT, "{policy:?}/{fault:?}: {took:?}");
            }
            proxy.set(Fault::None);
            let charged = g.charged("k");
            assert_eq!(
                charged, admitted,
                "{policy:?}/{fault:?}: {admitted} admitted, {answered_by_policy} by the \
                 policy, {charged} charged (a call reported failed charged)"
            );
            eprintln!(
                "{policy:?}/{fault:?}: {admitted} admitted by PostgreSQL, {answered_by_policy} \
                 answered by the policy in {took:?}, {charged} charged"
            );
        }
    }
}
