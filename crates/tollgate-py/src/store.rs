//! `Store`: where state lives, by URL (`memory`, `redis://`, `rediss://`,
//! `redis+cluster://a,b`, `sqlite:///path`, `postgres://`), with namespace, HMAC key
//! hashing and a failure policy, all from the library (`KeyBuilder`, `FailSafeStore`,
//! `FailSafeSemaphore`).

use crate::errors;
use crate::runtime::fork_gen;
use crate::wrap::Keyed;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use std::sync::Arc;
use std::time::Duration;
use tollgate::keys::KeyBuilder;
use tollgate::semaphore::{FailSafeSemaphore, MemorySemaphoreBackend, SemaphoreBackend};
use tollgate::store::failure::{FailSafeStore, FailurePolicy};
use tollgate::store::log::LogBackend;
use tollgate::store::memory::MemoryStore;
use tollgate::store::multi::{DynMultiBackend, MultiBackend};
use tollgate::store::Store;
use tollgate::{Error, Policy};
use tollgate_redis::{RedisSemaphoreBackend, RedisStore, RedisUrl, TimeSource};
use tollgate_sql::{PgStore, SqliteStore};

/// A bound backend of any store: single keys and multi-key all-or-nothing calls.
pub(crate) type DynBackend = Arc<dyn DynMultiBackend>;

/// A bound backend whose sliding log can be read.
pub(crate) type DynLog = Arc<dyn LogBackend>;

/// A store of any kind, bound at run time.
trait AnyStore: Send + Sync {
    fn bind_dyn(&self, policy: &Policy) -> Result<DynBackend, Error>;
    fn bind_log(&self, policy: &Policy) -> Result<DynLog, Error>;
}

impl<S: Store + Send + Sync> AnyStore for S
where
    S::Backend: MultiBackend + LogBackend,
{
    fn bind_dyn(&self, policy: &Policy) -> Result<DynBackend, Error> {
        Ok(Arc::new(self.bind(policy)?))
    }
    fn bind_log(&self, policy: &Policy) -> Result<DynLog, Error> {
        Ok(Arc::new(self.bind(policy)?))
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Memory,
    Redis(RedisUrl),
    Sqlite(String),
    Postgres(String),
}

#[derive(Clone, Debug)]
struct Spec {
    kind: Kind,
    namespace: Option<String>,
    secret: Option<Vec<u8>>,
    failure: Option<FailurePolicy>,
    timeout: Option<Duration>,
    /// Decide at the caller's clock (the limiter's) instead of the Redis/PostgreSQL server's.
    caller_time: bool,
}

/// A built store: what limiters bind to and semaphores run on.
pub(crate) struct Built {
    rate: Box<dyn AnyStore>,
    semaphores: Option<Arc<dyn SemaphoreBackend>>,
}

impl Built {
    /// Binds `policy`.
    pub(crate) fn bind(&self, policy: &Policy) -> Result<DynBackend, Error> {
        self.rate.bind_dyn(policy)
    }
    /// Binds `policy` for log reads (the same state as [`bind`](Self::bind)).
    pub(crate) fn bind_log(&self, policy: &Policy) -> Result<DynLog, Error> {
        self.rate.bind_log(policy)
    }
    /// The semaphore backend, if this store has one.
    pub(crate) fn semaphores(&self) -> Option<Arc<dyn SemaphoreBackend>> {
        self.semaphores.clone()
    }
}

/// The state of a `Store` shared by its limiters and semaphores.
pub(crate) struct StoreShared {
    spec: Spec,
    built: Mutex<(u64, Arc<Built>)>,
}

impl StoreShared {
    /// Whether the state lives in this process (never rebuilt after `fork()`).
    pub(crate) fn is_memory(&self) -> bool {
        matches!(self.spec.kind, Kind::Memory)
    }

    /// The built store of this process (rebuilt after a `fork()`, except in memory).
    pub(crate) fn current(&self) -> Result<Arc<Built>, Error> {
        let gen = fork_gen();
        let mut built = self.built.lock();
        if built.0 != gen && !self.is_memory() {
            let fresh = Arc::new(build(&self.spec)?);
            let stale = std::mem::replace(&mut built.1, fresh);
            // Its threads and connections belong to the parent process.
            std::mem::forget(stale);
        }
        built.0 = gen;
        Ok(Arc::clone(&built.1))
    }

    /// A private in-memory store.
    pub(crate) fn memory() -> Arc<StoreShared> {
        let spec = Spec {
            kind: Kind::Memory,
            namespace: None,
            secret: None,
            failure: None,
            timeout: None,
            caller_time: false,
        };
        let built = build(&spec).expect("the memory store always builds");
        Arc::new(StoreShared {
            spec,
            built: Mutex::new((fork_gen(), Arc::new(built))),
        })
    }
}

fn keyed<S: Store + Send + Sync + 'static>(inner: S, keys: Option<KeyBuilder>) -> Box<dyn AnyStore>
where
    S::Backend: MultiBackend + LogBackend,
{
    match keys {
        Some(keys) => Box::new(Keyed { inner, keys }),
        None => Box::new(inner),
    }
}

fn with_failure<S: Store + Send + Sync + 'static>(
    inner: S,
    failure: Option<FailurePolicy>,
    keys: Option<KeyBuilder>,
) -> Box<dyn AnyStore>
where
    S::Backend: MultiBackend + LogBackend,
{
    match (failure, keys) {
        (Some(p), Some(keys)) => Box::new(FailSafeStore::with_policy(Keyed { inner, keys }, p)),
        (Some(p), None) => Box::new(FailSafeStore::with_policy(inner, p)),
        (None, keys) => keyed(inner, keys),
    }
}

fn sem_with_failure<B: SemaphoreBackend>(
    backend: B,
    failure: Option<FailurePolicy>,
) -> Arc<dyn SemaphoreBackend> {
    match failure {
        Some(p) => Arc::new(FailSafeSemaphore::with_policy(backend, p)),
        None => Arc::new(backend),
    }
}

fn key_builder(spec: &Spec) -> Result<Option<KeyBuilder>, Error> {
    if spec.namespace.is_none() && spec.secret.is_none() {
        return Ok(None);
    }
    let bad = |e: tollgate::keys::KeyConfigError| Error::InvalidKey {
        reason: e.to_string(),
    };
    let mut keys = KeyBuilder::new(spec.namespace.clone().unwrap_or_default()).map_err(bad)?;
    if let Some(secret) = &spec.secret {
        keys = keys.hmac_secret(secret).map_err(bad)?;
    }
    Ok(Some(keys))
}

fn build(spec: &Spec) -> Result<Built, Error> {
    let failure = spec.failure;
    Ok(match &spec.kind {
        Kind::Memory => Built {
            rate: keyed(MemoryStore::new(), key_builder(spec)?),
            semaphores: Some(Arc::new(MemorySemaphoreBackend::new())),
        },
        Kind::Redis(url) => {
            let mut builder = url.clone().apply(RedisStore::builder());
            if let Some(ns) = &spec.namespace {
                builder = builder.namespace(ns.clone());
            }
            if let Some(secret) = &spec.secret {
                builder = builder.hmac_secret(secret);
            }
            if let Some(t) = spec.timeout {
                builder = builder.timeout(t);
            }
            if spec.caller_time {
                builder = builder.time_source(TimeSource::Caller);
            }
            let store = builder.build()?;
            let semaphores = RedisSemaphoreBackend::new(&store)?;
            Built {
                semaphores: Some(sem_with_failure(semaphores, failure)),
                rate: with_failure(store, failure, None),
            }
        }
        Kind::Sqlite(path) => {
            let store = if path == ":memory:" {
                SqliteStore::in_memory()?
            } else {
                SqliteStore::open(path)?
            };
            let store = match spec.timeout {
                Some(t) => store.busy_timeout(t),
                None => store,
            };
            store.ensure_schema()?;
            Built {
                rate: with_failure(store, failure, key_builder(spec)?),
                semaphores: None,
            }
        }
        Kind::Postgres(url) => {
            let mut builder = PgStore::builder(url);
            if let Some(t) = spec.timeout {
                builder = builder.call_timeout(t).connect_timeout(t);
            }
            builder = builder.caller_time(spec.caller_time);
            let store = if failure.is_some() {
                let store = builder.connect_lazy()?;
                // A database that is down now is the failure policy's to answer.
                let _ = store.migrate();
                store
            } else {
                let store = builder.connect()?;
                store.migrate()?;
                store
            };
            Built {
                rate: with_failure(store, failure, key_builder(spec)?),
                semaphores: None,
            }
        }
    })
}

fn parse_kind(py: Python<'_>, url: &str) -> PyResult<Kind> {
    let trimmed = url.trim();
    if trimmed.eq_ignore_ascii_case("memory") || trimmed == "memory://" {
        return Ok(Kind::Memory);
    }
    if RedisUrl::is_redis_url(trimmed) {
        return RedisUrl::parse(trimmed)
            .map(Kind::Redis)
            .map_err(|e| errors::config(py, e));
    }
    if let Some(path) = trimmed.strip_prefix("sqlite://") {
        // sqlite:///abs/path, sqlite://relative/path, sqlite://:memory:
        if path.is_empty() {
            return Err(errors::config(
                py,
                "sqlite:// needs a path: sqlite:///path/to/file.db",
            ));
        }
        return Ok(Kind::Sqlite(path.to_string()));
    }
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        return Ok(Kind::Postgres(trimmed.to_string()));
    }
    Err(errors::config(
        py,
        format!(
            "unknown store URL {trimmed:?}: expected \"memory\", redis://, rediss://, \
             redis+cluster://host:port,host:port, sqlite:///path or postgres://"
        ),
    ))
}

fn parse_failure(py: Python<'_>, failure: Option<&str>) -> PyResult<Option<FailurePolicy>> {
    Ok(match failure.map(|f| f.trim().to_ascii_lowercase().replace('-', "_")) {
        None => None,
        Some(f) => Some(match f.as_str() {
            "open" | "fail_open" => FailurePolicy::FailOpen,
            "closed" | "fail_closed" => FailurePolicy::FailClosed,
            "local" | "fallback" | "memory" => FailurePolicy::Fallback,
            other => {
                return Err(errors::config(
                    py,
                    format!("unknown failure policy {other:?}: expected \"open\", \"closed\" or \"local\""),
                ))
            }
        }),
    })
}

/// Where limiters and semaphores keep their state.
#[pyclass(name = "Store", module = "tollgate", frozen)]
pub(crate) struct PyStore {
    pub(crate) shared: Arc<StoreShared>,
}

impl PyStore {
    /// The store at `url` with the default options.
    pub(crate) fn from_url(py: Python<'_>, url: &str) -> PyResult<PyStore> {
        PyStore::new(py, url, None, None, None, None, "server")
    }

    /// The state behind a `store=` argument: a `Store`, a store URL, or `None` (a private
    /// in-memory store).
    pub(crate) fn shared_of(
        py: Python<'_>,
        store: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Arc<StoreShared>> {
        let Some(s) = store else {
            return Ok(StoreShared::memory());
        };
        if let Ok(s) = s.cast::<PyStore>() {
            Ok(Arc::clone(&s.get().shared))
        } else if let Ok(url) = s.cast::<PyString>() {
            Ok(PyStore::from_url(py, &url.to_cow()?)?.shared)
        } else {
            Err(pyo3::exceptions::PyTypeError::new_err(
                "store must be a tollgate.Store, a store URL, or None (memory)",
            ))
        }
    }
}

#[pymethods]
impl PyStore {
    /// `Store(url="memory", *, namespace=None, hmac_secret=None, failure=None, timeout=None,
    /// time="server")`; `time="caller"` decides Redis/PostgreSQL calls at the limiter's clock
    /// instead of the server's (every host's clock must then agree).
    #[new]
    #[pyo3(signature = (url="memory", *, namespace=None, hmac_secret=None, failure=None, timeout=None, time="server"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        url: &str,
        namespace: Option<String>,
        hmac_secret: Option<&Bound<'_, PyAny>>,
        failure: Option<&str>,
        timeout: Option<f64>,
        time: &str,
    ) -> PyResult<Self> {
        let caller_time = match time {
            "server" => false,
            "caller" => true,
            other => {
                return Err(errors::config(
                    py,
                    format!("time must be \"server\" or \"caller\" (got {other:?})"),
                ))
            }
        };
        let kind = parse_kind(py, url)?;
        let secret = match hmac_secret {
            None => None,
            Some(s) => Some(if let Ok(b) = s.cast::<PyBytes>() {
                b.as_bytes().to_vec()
            } else if let Ok(text) = s.cast::<PyString>() {
                text.to_cow()?.as_bytes().to_vec()
            } else {
                return Err(pyo3::exceptions::PyTypeError::new_err(
                    "hmac_secret must be str or bytes",
                ));
            }),
        };
        if secret.as_ref().is_some_and(Vec::is_empty) {
            return Err(errors::config(py, "hmac_secret must not be empty"));
        }
        if let Some(ns) = &namespace {
            if ns.contains(['{', '}']) {
                return Err(errors::config(
                    py,
                    "the namespace must not contain '{' or '}'",
                ));
            }
        }
        let timeout = match timeout {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 && t < 86_400.0 => Some(Duration::from_secs_f64(t)),
            Some(t) => {
                return Err(errors::config(
                    py,
                    format!("timeout must be a positive number of seconds under a day (got {t})"),
                ))
            }
        };
        let spec = Spec {
            kind,
            namespace,
            secret,
            failure: parse_failure(py, failure)?,
            timeout,
            caller_time,
        };
        let built = py
            .detach(|| build(&spec))
            .map_err(|e| errors::limiter(py, e))?;
        Ok(PyStore {
            shared: Arc::new(StoreShared {
                spec,
                built: Mutex::new((fork_gen(), Arc::new(built))),
            }),
        })
    }

    /// `"memory"`, `"redis"`, `"redis-cluster"`, `"sqlite"` or `"postgres"`.
    #[getter]
    fn kind(&self) -> &'static str {
        match &self.shared.spec.kind {
            Kind::Memory => "memory",
            Kind::Redis(RedisUrl::Standalone(_)) => "redis",
            Kind::Redis(RedisUrl::Cluster(_)) => "redis-cluster",
            Kind::Sqlite(_) => "sqlite",
            Kind::Postgres(_) => "postgres",
            #[allow(unreachable_patterns)]
            _ => "other",
        }
    }

    /// The failure policy: `None`, `"open"`, `"closed"` or `"local"`.
    #[getter]
    fn failure(&self) -> Option<&'static str> {
        self.shared.spec.failure.map(|p| match p {
            FailurePolicy::FailOpen => "open",
            FailurePolicy::FailClosed => "closed",
            _ => "local",
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Store(kind={:?}, failure={:?})",
            self.kind(),
            self.failure()
        )
    }
}
