//! The layer decides memory-store limiters inside `Service::call` (no I/O, no boxed future)
//! and every other store in the response future. Both paths must answer identically: same
//! statuses, same fields, same problem+json bodies, same metrics. These tests run the same
//! request sequence over real HTTP against a memory-store layer (the synchronous path) and
//! against the same policies on the same memory backend behind `Arc<dyn DynMultiBackend>` (a type the
//! layer cannot see through, so it takes the asynchronous path).

mod common;

use axum::routing::get;
use axum::Router;
use common::{client, serve};
use metrics::{Counter, CounterFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate::store::memory::MemoryStore;
use tollgate::store::multi::DynMultiBackend;
use tollgate::store::Store;
use tollgate::time::{ManualClock, Micros};
use tollgate::{Limiter, Policy, Rate};
use tollgate_tower::headers::HeaderOptions;
use tollgate_tower::key::{Global, Header};
use tollgate_tower::{HttpPolicy, RateLimitLayer};

const T0: Micros = 1_700_000_000_000_000;

/// Which decision path a layer is built for.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// `Limiter<MemoryBackend>`: decided in `call`.
    InCall,
    /// The same backend as `Arc<dyn DynMultiBackend>`: decided in the response future.
    InFuture,
}

/// The memory backend behind `Arc<dyn DynMultiBackend>`: decided in the response future.
fn dyn_limiter(
    policy: Policy,
    clock: &ManualClock,
    max_key_len: usize,
) -> Limiter<Arc<dyn DynMultiBackend>> {
    let backend: Arc<dyn DynMultiBackend> = Arc::new(MemoryStore::new().bind(&policy).unwrap());
    Limiter::builder(policy)
        .clock(clock.clone())
        .max_key_len(max_key_len)
        .build_on(backend)
}

fn memory_limiter(policy: Policy, clock: &ManualClock, max_key_len: usize) -> Limiter {
    Limiter::builder(policy)
        .clock(clock.clone())
        .max_key_len(max_key_len)
        .build()
}

/// Two policies (per user, GCRA 3/min; global, fixed window 5/min), legacy fields on.
fn layer(clock: &ManualClock, path: Path, shadow: bool) -> RateLimitLayer {
    let per_user = Policy::gcra(Rate::per_minute(3).unwrap()).unwrap();
    let global = Policy::fixed_window(Rate::per_minute(5).unwrap()).unwrap();
    let (per_user, global) = match path {
        Path::InCall => (
            HttpPolicy::new(
                "per-user",
                memory_limiter(per_user, clock, 8),
                Header::named("x-user").unwrap(),
            ),
            HttpPolicy::new("global", memory_limiter(global, clock, 8), Global),
        ),
        Path::InFuture => (
            HttpPolicy::new(
                "per-user",
                dyn_limiter(per_user, clock, 8),
                Header::named("x-user").unwrap(),
            ),
            HttpPolicy::new("global", dyn_limiter(global, clock, 8), Global),
        ),
    };
    RateLimitLayer::builder()
        .policy(per_user)
        .policy(global)
        .headers(HeaderOptions::default().legacy(true))
        .shadow(shadow)
        .build()
        .unwrap()
}

fn app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/", get(|| async { "root" }))
        .layer(layer)
}

/// What a response shows of the layer: status, rate-limit fields, body.
async fn observe(base: &str, user: Option<&str>) -> String {
    let mut req = client().get(format!("{base}/"));
    if let Some(user) = user {
        req = req.header("x-user", user);
    }
    let r = req.send().await.unwrap();
    let mut seen = format!("{}", r.status().as_u16());
    for name in [
        "retry-after",
        "ratelimit-policy",
        "ratelimit",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "content-type",
    ] {
        let value = r.headers().get(name).map_or("-", |v| v.to_str().unwrap());
        seen.push_str(&format!(" | {name}: {value}"));
    }
    seen.push_str(&format!(" | body: {}", r.text().await.unwrap()));
    seen
}

/// The request sequence: admitted, denied per user, denied globally, a missing key, a key
/// the limiter refuses (longer than 8 bytes), time passing.
async fn play(base: &str, clock: &ManualClock) -> Vec<String> {
    let mut seen = Vec::new();
    for user in ["alice", "alice", "alice", "alice", "bob", "bob", "carol"] {
        seen.push(observe(base, Some(user)).await);
    }
    seen.push(observe(base, None).await);
    seen.push(observe(base, Some("a-very-long-user-name")).await);
    clock.advance(Duration::from_secs(20));
    seen.push(observe(base, Some("alice")).await);
    clock.advance(Duration::from_secs(41));
    seen.push(observe(base, Some("dave")).await);
    seen
}

#[tokio::test]
async fn both_decision_paths_answer_identically() {
    for shadow in [false, true] {
        let mut answers = Vec::new();
        for path in [Path::InCall, Path::InFuture] {
            let clock = ManualClock::new(T0);
            let base = serve(app(layer(&clock, path, shadow))).await;
            answers.push(play(&base, &clock).await);
        }
        assert_eq!(answers[0], answers[1], "shadow = {shadow}");
        // The sequence exercised what it is meant to.
        let all = answers[0].join("\n");
        if shadow {
            assert!(answers[0].iter().all(|a| a.starts_with("200")), "{all}");
        } else {
            for status in ["200", "429", "400"] {
                assert!(
                    answers[0].iter().any(|a| a.starts_with(status)),
                    "no {status} in\n{all}"
                );
            }
        }
        assert!(
            all.contains("\"per-user\";q=3;w=60, \"global\";q=5;w=60"),
            "{all}"
        );
    }
}

#[tokio::test]
async fn the_memory_store_is_decided_in_call() {
    // Calling the service (without polling its future) already charged the memory limiter;
    // behind `Arc<dyn DynMultiBackend>` nothing is charged until the future runs.
    use tower::Service;
    let clock = ManualClock::new(T0);
    let gcra = || Policy::gcra(Rate::per_minute(3).unwrap()).unwrap();
    let in_call = memory_limiter(gcra(), &clock, 64);
    let in_future = dyn_limiter(gcra(), &clock, 64);
    let remaining = |path: Path| match path {
        Path::InCall => in_call.peek("global", 1).unwrap().remaining,
        Path::InFuture => in_future.peek("global", 1).unwrap().remaining,
    };
    for path in [Path::InCall, Path::InFuture] {
        let policy = match path {
            Path::InCall => HttpPolicy::new("g", in_call.clone(), Global),
            Path::InFuture => HttpPolicy::new("g", in_future.clone(), Global),
        };
        let layer = RateLimitLayer::new(policy).unwrap();
        let handler = tower::service_fn(|_req: http::Request<String>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::from("ok")))
        });
        let mut svc = tower_layer::Layer::layer(&layer, handler);
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        let future = svc.call(http::Request::new(String::new()));
        // `peek` reports what would remain after one more unit: 3 - 1 charged - 1.
        let expected = match path {
            Path::InCall => 1,
            Path::InFuture => 2,
        };
        assert_eq!(remaining(path), expected, "{path:?} before the future ran");
        let response = future.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit"], "\"g\";r=2;t=20");
        assert_eq!(remaining(path), 1, "{path:?} after the future ran");
    }
}

/// A recorder that keeps every counter by name and sorted labels.
#[derive(Default, Clone)]
struct CountingRecorder {
    counters: Arc<Mutex<BTreeMap<String, Arc<AtomicU64>>>>,
}

struct SharedCounter(Arc<AtomicU64>);

impl CounterFn for SharedCounter {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl CountingRecorder {
    fn name(key: &Key) -> String {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counters
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        assert_eq!(metadata.target(), "tollgate_tower::layer");
        let counter = Arc::clone(
            self.counters
                .lock()
                .unwrap()
                .entry(Self::name(key))
                .or_default(),
        );
        Counter::from_arc(Arc::new(SharedCounter(counter)))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

// A current-thread runtime: the servers, the clients and the local recorder share a thread.
#[tokio::test(flavor = "current_thread")]
async fn both_decision_paths_count_the_same_metrics() {
    let mut snapshots = Vec::new();
    for path in [Path::InCall, Path::InFuture] {
        let recorder = CountingRecorder::default();
        let guard = metrics::set_default_local_recorder(&recorder);
        for shadow in [false, true] {
            let clock = ManualClock::new(T0);
            let base = serve(app(layer(&clock, path, shadow))).await;
            play(&base, &clock).await;
        }
        drop(guard);
        snapshots.push(recorder.snapshot());
    }
    assert_eq!(snapshots[0], snapshots[1]);
    // See `play`: enforce mode admits alice x3, bob x2 and dave; denies alice (per user),
    // carol and alice after 20 s (global); refuses the missing key and the too-long key.
    // Shadow mode decides the same, and a request without a key is still decided by the
    // global policy (denied: the window is used up).
    let expected: BTreeMap<String, u64> = [
        ("mode=enforce,outcome=allowed,policy=global", 6),
        ("mode=enforce,outcome=allowed,policy=per-user", 6),
        ("mode=enforce,outcome=denied,policy=global", 2),
        ("mode=enforce,outcome=denied,policy=per-user", 1),
        ("mode=enforce,outcome=error,policy=per-user", 1),
        ("mode=enforce,outcome=no_key,policy=per-user", 1),
        ("mode=shadow,outcome=allowed,policy=global", 6),
        ("mode=shadow,outcome=allowed,policy=per-user", 6),
        ("mode=shadow,outcome=denied,policy=global", 3),
        ("mode=shadow,outcome=denied,policy=per-user", 1),
        ("mode=shadow,outcome=error,policy=per-user", 1),
        ("mode=shadow,outcome=no_key,policy=per-user", 1),
    ]
    .into_iter()
    .map(|(labels, n)| (format!("tollgate_http_requests_total{{{labels}}}"), n))
    .collect();
    assert_eq!(snapshots[0], expected);
}
