//! Helpers for the RLS tests: a config directory, an in-process RLS listener on a free port,
//! a real tonic client over TCP, and request builders.

#![allow(dead_code)]

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tollgate_server::app::App;
use tollgate_server::config::Config;
use tollgate_server::rls::{RlsServer, RlsSettings};
use tonic::transport::Channel;

pub const OK: i32 = 1;
pub const OVER: i32 = 2;

/// A fresh directory under the system temp dir, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "tollgate-rls-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create the config dir");
        Dir(p)
    }

    pub fn write(&self, name: &str, text: &str) {
        // Write then rename, as config deployers do, so a poll never reads half a file.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.0.join(name)).expect("rename config");
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An in-process RLS server and a connected client.
pub struct Rls {
    pub server: Option<RlsServer>,
    pub client: RateLimitServiceClient<Channel>,
    pub app: Arc<App>,
}

impl Rls {
    pub async fn start(dir: &Dir) -> Rls {
        Self::start_with(dir, Config::default(), |_| {}).await
    }

    pub async fn start_with(
        dir: &Dir,
        config: Config,
        tweak: impl FnOnce(&mut RlsSettings),
    ) -> Rls {
        let app = Arc::new(App::new(&config, None).expect("app"));
        Self::start_on(dir, app, tweak).await
    }

    pub async fn start_on(dir: &Dir, app: Arc<App>, tweak: impl FnOnce(&mut RlsSettings)) -> Rls {
        let mut settings =
            RlsSettings::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
        tweak(&mut settings);
        let server = RlsServer::start(settings, Arc::clone(&app))
            .await
            .expect("start RLS");
        let client = connect(server.addr()).await;
        Rls {
            server: Some(server),
            client,
            app,
        }
    }

    pub async fn call(&mut self, req: RateLimitRequest) -> RateLimitResponse {
        self.client
            .should_rate_limit(req)
            .await
            .expect("ShouldRateLimit")
            .into_inner()
    }

    pub async fn call_err(&mut self, req: RateLimitRequest) -> tonic::Status {
        self.client
            .should_rate_limit(req)
            .await
            .expect_err("ShouldRateLimit should fail")
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
            s.wait().await;
        }
    }
}

pub async fn connect(addr: std::net::SocketAddr) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect the tonic client")
}

/// A descriptor from `(key, value)` entries.
pub fn desc(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

/// The descriptor with its own `hits_addend`.
pub fn with_hits(mut d: RateLimitDescriptor, hits: u64) -> RateLimitDescriptor {
    d.hits_addend = Some(UInt64Value { value: hits });
    d
}

/// The descriptor with a `limit` override (`unit` as the proto number: 1 s, 2 min, 3 h, 4 day).
pub fn with_override(
    mut d: RateLimitDescriptor,
    requests_per_unit: u32,
    unit: i32,
) -> RateLimitDescriptor {
    d.limit = Some(RateLimitOverride {
        requests_per_unit,
        unit,
    });
    d
}

pub fn req(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    }
}

/// The codes of the statuses, in order.
pub fn codes(r: &RateLimitResponse) -> Vec<i32> {
    r.statuses.iter().map(|s| s.code).collect()
}

/// The `limit_remaining` of the statuses, in order.
pub fn remaining(r: &RateLimitResponse) -> Vec<u32> {
    r.statuses.iter().map(|s| s.limit_remaining).collect()
}

/// A response header's value.
pub fn header<'a>(r: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    r.response_headers_to_add
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}
