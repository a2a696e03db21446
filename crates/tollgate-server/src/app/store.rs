//! Where the server keeps state: the store (memory, or Redis behind the failure policy and
//! its breaker), how user keys become store keys, and what `/ready` reports.

use super::*;
use std::collections::BTreeMap;
use tollgate::store::lease::{LeaseBackend, LeaseConfig};

/// How user keys are turned into store keys. The Redis store applies the namespace, the
/// policy scope and the optional HMAC itself (`tollgate::keys`); for the in-memory store the
/// key is used as given, or HMAC-hashed with the same `tollgate::keys` rule when a secret is
/// configured.
#[derive(Clone)]
pub(super) struct KeyMapper {
    pub(super) hasher: Option<KeyBuilder>,
}

impl KeyMapper {
    #[inline]
    pub(super) fn map<'a>(&self, key: &'a str) -> Result<Cow<'a, str>, AppError> {
        match &self.hasher {
            None => Ok(Cow::Borrowed(key)),
            Some(keys) => keys
                .build(key)
                .map(Cow::Owned)
                .map_err(|e| AppError::BadRequest(e.to_string())),
        }
    }
}

/// Binds policies to the configured store.
pub(super) enum StoreFactory {
    Memory(MemoryStore),
    Redis(Box<RedisFactory>),
}

/// A Redis store behind the library's failure policy and one shared circuit breaker.
pub(super) struct RedisFactory {
    pub(super) store: RedisStore,
    pub(super) breaker: Arc<CircuitBreaker>,
    pub(super) failure: FailurePolicy,
    pub(super) hook: Hook,
    /// The in-memory store of the `local` failure policy: one, so its `max_keys` is one
    /// budget for every policy's fallback (not one per policy).
    pub(super) fallback: MemoryStore,
    /// Local leases of named policies (by scope = policy name): the lease wraps the failure
    /// policy, so batches already reserved are still spent while Redis is down.
    pub(super) leases: BTreeMap<String, LeaseConfig>,
}

impl StoreFactory {
    /// [`bind`](Self::bind) for multi-key calls (the RLS service): the same backend, with
    /// the same store, key scope, failure policy and breaker (`FailSafe` decides multi-key
    /// calls too).
    pub(super) fn bind_multi(
        &self,
        scope: Option<&str>,
        policy: &Policy,
    ) -> Result<Arc<dyn DynMultiBackend>, Error> {
        self.bind(scope, policy)
    }
}

impl StoreFactory {
    /// Binds `policy`; `scope` names its keys in a shared store (`None`: the store derives a
    /// scope from the policy, so different policies never share state).
    pub(super) fn bind(
        &self,
        scope: Option<&str>,
        policy: &Policy,
    ) -> Result<Arc<dyn DynMultiBackend>, Error> {
        let f = match self {
            StoreFactory::Memory(store) => {
                return Ok(Arc::new(match scope {
                    Some(s) => store.scope(s).bind(policy)?,
                    None => store.bind(policy)?,
                }))
            }
            StoreFactory::Redis(f) => f,
        };
        let primary = match scope {
            Some(s) => f.store.scope(s).bind(policy)?,
            None => f.store.bind(policy)?,
        };
        // error and closed both get the store error (closed turns it into a denial in
        // `App::decide`); open admits; local falls back to an in-memory limiter.
        let guarded = match f.failure {
            FailurePolicy::Open => FailSafe::fail_open(primary, policy),
            FailurePolicy::Local => {
                // A table of its own per binding (as before), in the one fallback store.
                use std::sync::atomic::{AtomicU64, Ordering};
                static TABLE: AtomicU64 = AtomicU64::new(0);
                let table = format!("fallback-{}", TABLE.fetch_add(1, Ordering::Relaxed));
                FailSafe::fallback(primary, f.fallback.scope(table).bind(policy)?)
            }
            FailurePolicy::Error | FailurePolicy::Closed => FailSafe::fail_closed(primary),
        };
        let guarded = guarded
            .with_breaker(Arc::clone(&f.breaker))
            .hook(f.hook.clone());
        match scope.and_then(|s| f.leases.get(s)) {
            Some(lease) => Ok(Arc::new(LeaseBackend::new(guarded, policy, lease.clone())?)),
            None => Ok(Arc::new(guarded)),
        }
    }
}

/// What `/ready` reports: whether the store answers now.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
/// let r = app.readiness().await;
/// assert!(r.ready && r.breaker.is_none() && r.cause.is_none());
/// # });
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Readiness {
    /// The store answered (or needs no answer: the memory store).
    pub ready: bool,
    /// The store, without credentials.
    pub store: String,
    /// The store's circuit breaker (`None` for the memory store).
    pub breaker: Option<BreakerState>,
    /// Why it is not ready.
    pub cause: Option<StoreError>,
}
