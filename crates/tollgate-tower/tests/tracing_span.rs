//! The `tollgate.http.ratelimit` span: there when a tracing subscriber takes DEBUG (the layer
//! skips building it otherwise, see `layer/service.rs`), with the decision inside it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tollgate::{Limiter, Policy, Rate};
use tollgate_tower::{key::Global, HttpPolicy, RateLimitLayer};
use tower::{Service, ServiceExt};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records the names of the spans created at or above `level`.
struct Spans {
    level: tracing::Level,
    names: Arc<Mutex<Vec<String>>>,
    next: AtomicU64,
}

impl Subscriber for Spans {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.level
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(self.level.into())
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.names
            .lock()
            .unwrap()
            .push(span.metadata().name().to_string());
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// The span names recorded while one request goes through the layer (memory store).
fn spans_of_one_request(level: tracing::Level) -> Vec<String> {
    let names = Arc::new(Mutex::new(Vec::new()));
    let subscriber = Spans {
        level,
        names: Arc::clone(&names),
        next: AtomicU64::new(0),
    };
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let limiter = Limiter::memory(Policy::gcra(Rate::per_second(10).unwrap()).unwrap());
            let layer = RateLimitLayer::new(HttpPolicy::new("g", limiter, Global)).unwrap();
            let handler = tower::service_fn(|_req: http::Request<String>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::from("ok")))
            });
            let mut svc = tower_layer::Layer::layer(&layer, handler);
            let response = svc
                .ready()
                .await
                .unwrap()
                .call(http::Request::new(String::new()))
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["ratelimit"], "\"g\";r=9;t=1");
        });
    });
    let names = names.lock().unwrap().clone();
    names
}

#[test]
fn a_debug_subscriber_sees_the_decision_span() {
    let names = spans_of_one_request(tracing::Level::DEBUG);
    assert!(
        names.iter().any(|n| n == "tollgate.http.ratelimit"),
        "{names:?}"
    );
}

#[test]
fn an_info_subscriber_gets_no_span_and_the_same_decision() {
    let names = spans_of_one_request(tracing::Level::INFO);
    assert!(
        !names.iter().any(|n| n == "tollgate.http.ratelimit"),
        "{names:?}"
    );
}
