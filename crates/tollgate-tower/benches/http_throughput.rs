//! Requests per second through the rate-limit layer (memory store) next to the bare handler,
//! in the same run: two axum servers on loopback, one in-process load generator (reqwest,
//! `CONNS` concurrent connections), alternating rounds, best round of each reported.
//!
//! ```text
//! cargo bench -p tollgate-tower --bench http_throughput
//! BENCH_SECS=5 BENCH_ROUNDS=3 BENCH_CONNS=32 cargo bench -p tollgate-tower --bench http_throughput
//! ```
//!
//! Every request is admitted (the policy is far above the offered load), so the figure is
//! the layer's overhead: key extraction, one memory-store decision, the IETF fields on the
//! response. Requests spread over 64 keys (an `x-client` header).

use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::{Limiter, Policy, Rate};
use tollgate_tower::key::Header;
use tollgate_tower::{HttpPolicy, RateLimitLayer};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("serve");
    });
    addr
}

/// Runs `conns` concurrent request loops against `addr` for `secs`; returns requests/s.
async fn load(addr: SocketAddr, conns: u64, secs: u64) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conns as usize)
        .build()
        .expect("client");
    let url = format!("http://{addr}/");
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (client, url) = (client.clone(), url.clone());
        let (done, failed, stop) = (Arc::clone(&done), Arc::clone(&failed), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let key = format!("client-{}", c % 64);
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).header("x-client", &key).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed or were limited"
    );
    done.load(Ordering::Relaxed) as f64 / elapsed
}

fn main() {
    let secs = env("BENCH_SECS", 3);
    let rounds = env("BENCH_ROUNDS", 3);
    let conns = env("BENCH_CONNS", 32);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let handler = || Router::new().route("/", get(|| async { "ok" }));
        let limiter = Limiter::memory(Policy::gcra(Rate::per_second(1_000_000).unwrap()).unwrap());
        let layer = RateLimitLayer::new(HttpPolicy::new(
            "bench",
            limiter,
            Header::named("x-client").unwrap(),
        ))
        .expect("layer");
        let bare = serve(handler()).await;
        let limited = serve(handler().layer(layer)).await;
        // Warm-up (connections, allocator).
        load(bare, conns, 1).await;
        load(limited, conns, 1).await;
        let (mut best_bare, mut best_limited) = (0f64, 0f64);
        for round in 1..=rounds {
            let b = load(bare, conns, secs).await;
            let l = load(limited, conns, secs).await;
            println!(
                "round {round}: bare {b:>9.0} req/s   layer {l:>9.0} req/s   ratio {:.3}",
                l / b
            );
            best_bare = best_bare.max(b);
            best_limited = best_limited.max(l);
        }
        println!(
            "best of {rounds} x {secs}s, {conns} connections: bare handler {best_bare:.0} req/s, \
             through RateLimitLayer (memory store) {best_limited:.0} req/s, ratio {:.3} ({:+.1}%)",
            best_limited / best_bare,
            (best_limited / best_bare - 1.0) * 100.0
        );
    });
}
