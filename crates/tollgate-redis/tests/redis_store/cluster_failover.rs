//! Redis Cluster under load while it changes (issue 15): a graceful `CLUSTER FAILOVER`, a
//! master SIGKILLed with its replica promoted, and slots migrated between masters (`MOVED`
//! and `ASK` redirections) — no panic, errors bounded to the change, correct decisions after.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::{Limiter, Policy, Rate};
use tollgate_redis::{RedisBackend, RedisStore};
use tollgate_testkit::{RedisCluster, RedisServer, Resp};

/// The node's role (`master` or `slave`) from `ROLE`.
fn role(node: &RedisServer) -> Option<String> {
    match node.command(&["ROLE"]).ok()? {
        Resp::Array(Some(parts)) => parts.first()?.as_text(),
        _ => None,
    }
}

/// The node's id.
fn node_id(node: &RedisServer) -> String {
    node.command(&["CLUSTER", "MYID"])
        .unwrap()
        .as_text()
        .unwrap()
}

/// Runs `threads` checkers over 64 hash-tagged keys until stopped; counts (ok, errors).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(limiter: &Arc<Limiter<RedisBackend>>, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let handles = (0..threads)
            .map(|t| {
                let (limiter, stop, ok, errors) = (
                    Arc::clone(limiter),
                    Arc::clone(&stop),
                    Arc::clone(&ok),
                    Arc::clone(&errors),
                );
                std::thread::spawn(move || {
                    let mut i = t;
                    while !stop.load(Ordering::SeqCst) {
                        i = (i + 7) % 64;
                        match limiter.check(&format!("{{t{i}}}:user")) {
                            Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                            Err(_) => errors.fetch_add(1, Ordering::SeqCst),
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            errors,
            handles,
        }
    }

    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            h.join().expect("no panic under cluster changes");
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.errors.load(Ordering::SeqCst),
        )
    }
}

/// Fresh keys are decided exactly (3 admitted, the 4th denied) on every slot owner.
fn assert_decides(limiter: &Limiter<RedisBackend>, tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..16 {
        let key = format!("{{fresh-{tag}-{i}}}:k");
        let first = loop {
            match limiter.check(&key) {
                Ok(d) => break d,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{tag}: no recovery: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        assert_eq!(first.remaining, 2, "{tag} {key}");
        assert_eq!(limiter.check(&key).unwrap().remaining, 1, "{tag} {key}");
        assert_eq!(limiter.check(&key).unwrap().remaining, 0, "{tag} {key}");
        assert!(!limiter.check(&key).unwrap().allowed, "{tag} {key}");
    }
}

#[test]
fn failover_kill_and_slot_migration_under_load() {
    let Some(mut cluster) = tollgate_testkit::must_have(
        "Redis Cluster with replicas",
        RedisCluster::start_with_replicas(),
    ) else {
        return;
    };
    let store = RedisStore::builder()
        .cluster(cluster.urls())
        .namespace("failover")
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let limiter = Arc::new(
        Limiter::builder(Policy::gcra(Rate::per_hour(3).unwrap()).unwrap())
            .build_with(&store)
            .unwrap(),
    );
    assert_decides(&limiter, "start");
    let mut report = Vec::new();

    // 1. graceful failover: a replica takes over its master
    let load = Load::start(&limiter, 2);
    std::thread::sleep(Duration::from_millis(300));
    let replica = cluster
        .nodes()
        .iter()
        .position(|n| role(n).as_deref() == Some("slave"))
        .expect("a replica");
    let reply = cluster.nodes()[replica]
        .command(&["CLUSTER", "FAILOVER"])
        .unwrap();
    assert_eq!(reply, Resp::Simple("OK".into()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while role(&cluster.nodes()[replica]).as_deref() != Some("master") {
        assert!(Instant::now() < deadline, "the failover did not happen");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (ok, errors) = load.stop();
    report.push(format!("CLUSTER FAILOVER: {ok} ok, {errors} errors"));
    assert!(ok > 0);
    assert!(errors <= ok / 10 + 50, "{}", report.last().unwrap());
    assert_decides(&limiter, "failover");

    // 2. a master SIGKILLed: its replica is promoted after the node timeout (1 s)
    let load = Load::start(&limiter, 2);
    std::thread::sleep(Duration::from_millis(300));
    let master = cluster
        .nodes()
        .iter()
        .position(|n| role(n).as_deref() == Some("master"))
        .expect("a master");
    let killed_id = node_id(&cluster.nodes()[master]);
    let killed_at = Instant::now();
    cluster.nodes_mut()[master].stop();
    // wait until the survivors mark it failed and serve every slot again (its replica
    // promoted)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok_nodes = cluster
            .nodes()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != master)
            .all(|(_, n)| {
                let failed = n
                    .command(&["CLUSTER", "NODES"])
                    .ok()
                    .and_then(|r| r.as_text())
                    .is_some_and(|t| {
                        t.lines()
                            .any(|l| l.starts_with(&killed_id) && l.contains("fail"))
                    });
                failed
                    && n.command(&["CLUSTER", "INFO"])
                        .ok()
                        .and_then(|r| r.as_text())
                        .is_some_and(|t| t.contains("cluster_state:ok"))
            });
        if ok_nodes {
            break;
        }
        assert!(Instant::now() < deadline, "no replica was promoted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let promoted_after = killed_at.elapsed();
    std::thread::sleep(Duration::from_millis(1000));
    let (ok, errors) = load.stop();
    report.push(format!(
        "master SIGKILLed: replica promoted after {promoted_after:?}; {ok} ok, {errors} errors"
    ));
    assert!(ok > 0, "{}", report.last().unwrap());
    // each thread fails at most once per timeout while the slots are orphaned, plus the
    // calls that meet the broken connections and the redirections
    let bound = 2 * (promoted_after.as_millis() as u64 / 500 + 20);
    assert!(
        errors <= bound,
        "{} (bound {bound})",
        report.last().unwrap()
    );
    assert_decides(&limiter, "killed");

    // 3. slots migrated between two live masters during load (MOVED / ASK)
    let masters: Vec<usize> = (0..cluster.nodes().len())
        .filter(|&i| i != master && role(&cluster.nodes()[i]).as_deref() == Some("master"))
        .collect();
    assert!(masters.len() >= 2, "two live masters");
    let (from, to) = (&cluster.nodes()[masters[0]], &cluster.nodes()[masters[1]]);
    let load = Load::start(&limiter, 2);
    std::thread::sleep(Duration::from_millis(300));
    let cli = tollgate_testkit::redis_cli_path().unwrap();
    let out = std::process::Command::new(cli)
        .args([
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{}", from.port()),
            "--cluster-from",
            &node_id(from),
            "--cluster-to",
            &node_id(to),
            "--cluster-slots",
            "2000",
            "--cluster-yes",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reshard failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::thread::sleep(Duration::from_millis(300));
    let (ok, errors) = load.stop();
    report.push(format!("2000 slots resharded: {ok} ok, {errors} errors"));
    assert!(ok > 0);
    assert!(errors <= ok / 10 + 50, "{}", report.last().unwrap());
    assert_decides(&limiter, "resharded");
    eprintln!("{}", report.join("\n"));
}
