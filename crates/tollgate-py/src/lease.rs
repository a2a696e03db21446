//! `Lease`: local leases for hot keys on a limiter of a shared store, composed from the
//! library's `tollgate::store::lease::LeaseBackend` (see `docs/python.md`, "Local leases for
//! hot keys", and `docs/semantics.md` for the guarantee).
//!
//! Every leased backend of this process is registered here (weakly, with its fork
//! generation), so `flush_leases()` and the exit hooks of the package give back every unused
//! unit at exit. A forked child never gives back its parent's batches: those are the
//! parent's to give back (the child rebinds its limiters and forgets the parent's copies).

use crate::errors;
use crate::runtime::fork_gen;
use crate::store::DynBackend;
use parking_lot::Mutex;
use pyo3::prelude::*;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tollgate::store::lease::{LeaseBackend, LeaseConfig};
use tollgate::{Error, Policy, Rate};

/// A leased backend of this process.
pub(crate) type Leased = Arc<LeaseBackend<DynBackend>>;

/// Every leased backend bound in this process (and, after a fork, the parent's: skipped by
/// their generation).
static LIVE: Mutex<Vec<(u64, Weak<LeaseBackend<DynBackend>>)>> = Mutex::new(Vec::new());

/// The longest lease accepted (a day; batches held longer only withhold units).
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// How long the exit hook waits for the store to take the units back.
const EXIT_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Leases `inner` as `config` says and registers it for the exit flush.
pub(crate) fn lease(
    inner: DynBackend,
    policy: &Policy,
    config: &LeaseConfig,
) -> Result<Leased, Error> {
    let leased = Arc::new(LeaseBackend::new(inner, policy, config.clone())?);
    let mut live = LIVE.lock();
    live.retain(|(_, w)| w.strong_count() > 0);
    live.push((fork_gen(), Arc::downgrade(&leased)));
    Ok(leased)
}

/// The leased backends of this process that are still alive.
fn live() -> Vec<Leased> {
    let gen = fork_gen();
    LIVE.lock()
        .iter()
        .filter(|(g, _)| *g == gen)
        .filter_map(|(_, w)| w.upgrade())
        .collect()
}

/// Flushes each backend; the units given back, or the first error after trying them all.
fn flush_each(backends: &[Leased]) -> Result<u64, Error> {
    let mut given = 0;
    let mut first_err = None;
    for b in backends {
        match b.flush() {
            Ok(n) => given += n,
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(given), Err)
}

/// Gives back the unused units of every leased limiter of this process (e.g. before a
/// worker ends with `os._exit`, which skips the exit hooks); returns the units given back.
/// Raises `StoreError` (after trying every limiter) when a store refused them: those units
/// come back by the store's own refill.
#[pyfunction]
pub(crate) fn flush_leases(py: Python<'_>) -> PyResult<u64> {
    py.detach(|| flush_each(&live()))
        .map_err(|e| errors::limiter(py, e))
}

/// The exit hook: [`flush_leases`] from a plain thread, waiting at most a few seconds (a
/// store that is down must not hold the exit up), never raising.
#[pyfunction]
pub(crate) fn _flush_leases_at_exit(py: Python<'_>) -> u64 {
    let backends = live();
    if backends.is_empty() {
        return 0;
    }
    py.detach(move || {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("tollgate-lease-exit".into())
            .spawn(move || {
                let _ = tx.send(flush_each(&backends));
            });
        match spawned {
            Ok(_) => rx
                .recv_timeout(EXIT_FLUSH_WAIT)
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0),
            Err(_) => 0,
        }
    })
}

/// A whole number of at least 0 for `name`, as a `ConfigError` otherwise.
fn count(py: Python<'_>, name: &str, value: i64) -> PyResult<u64> {
    u64::try_from(value)
        .map_err(|_| errors::config(py, format!("lease {name} must be at least 0 (got {value})")))
}

/// Local leases for hot keys: `Lease(max_batch=1000, min_batch=16, duration=0.1,
/// max_keys=10000)` (`duration` in seconds); pass it as `Limiter(..., lease=...)`.
#[pyclass(name = "Lease", module = "tollgate", frozen)]
#[derive(Clone)]
pub(crate) struct PyLease {
    pub(crate) config: LeaseConfig,
}

#[pymethods]
impl PyLease {
    #[new]
    #[pyo3(signature = (max_batch=None, min_batch=None, duration=None, max_keys=None))]
    fn new(
        py: Python<'_>,
        max_batch: Option<i64>,
        min_batch: Option<i64>,
        duration: Option<f64>,
        max_keys: Option<i64>,
    ) -> PyResult<Self> {
        let mut config = LeaseConfig::default();
        if let Some(n) = max_batch {
            config = config.max_batch(count(py, "max_batch", n)?);
        }
        config = match min_batch {
            Some(n) => config.min_batch(count(py, "min_batch", n)?),
            // A small max_batch lowers the default min_batch with it.
            None => {
                let min = config.get_min_batch().min(config.get_max_batch());
                config.min_batch(min)
            }
        };
        if let Some(secs) = duration {
            let d = Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| *d <= MAX_DURATION)
                .ok_or_else(|| {
                    errors::config(
                        py,
                        format!(
                            "lease duration must be between 0.001 and 86400 seconds (got {secs})"
                        ),
                    )
                })?;
            config = config.duration(d);
        }
        if let Some(n) = max_keys {
            let n = usize::try_from(count(py, "max_keys", n)?).unwrap_or(usize::MAX);
            config = config.max_keys(n);
        }
        // Every check but the algorithm's, which the limiter makes against its own policy.
        let probe = Rate::per_second(1)
            .and_then(Policy::gcra)
            .map_err(|e| errors::quota(py, e))?;
        config
            .validate(&probe)
            .map_err(|e| errors::config(py, e.to_string()))?;
        Ok(PyLease { config })
    }

    /// The most units one reserve takes (also capped by the policy's capacity).
    #[getter]
    fn max_batch(&self) -> u64 {
        self.config.get_max_batch()
    }

    /// The smallest batch worth reserving: quieter keys are not leased.
    #[getter]
    fn min_batch(&self) -> u64 {
        self.config.get_min_batch()
    }

    /// Seconds a batch is kept before its unused units are given back.
    #[getter]
    fn duration(&self) -> f64 {
        self.config.get_duration().as_secs_f64()
    }

    /// The most keys tracked per limiter.
    #[getter]
    fn max_keys(&self) -> usize {
        self.config.get_max_keys()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyLease>()
            .is_ok_and(|o| o.get().config == self.config)
    }

    fn __hash__(&self) -> u64 {
        let c = &self.config;
        let d = c.get_duration().as_micros() as u64;
        (c.get_max_batch() ^ c.get_min_batch().rotate_left(16) ^ d.rotate_left(32))
            ^ (c.get_max_keys() as u64).rotate_left(48)
    }

    fn __repr__(&self) -> String {
        format!(
            "Lease(max_batch={}, min_batch={}, duration={}, max_keys={})",
            self.max_batch(),
            self.min_batch(),
            self.duration(),
            self.max_keys()
        )
    }
}

/// The lease of a `lease=` argument: `None`/`False` (none), `True` (the defaults) or a
/// `Lease`.
pub(crate) fn lease_of(lease: Option<&Bound<'_, PyAny>>) -> PyResult<Option<LeaseConfig>> {
    let Some(lease) = lease else {
        return Ok(None);
    };
    if let Ok(l) = lease.cast::<PyLease>() {
        return Ok(Some(l.get().config.clone()));
    }
    if let Ok(b) = lease.cast::<pyo3::types::PyBool>() {
        return Ok(b.is_true().then(LeaseConfig::default));
    }
    Err(pyo3::exceptions::PyTypeError::new_err(
        "lease must be a tollgate.Lease, True (the defaults), or None",
    ))
}
