//! `Semaphore` and `Permit`: the library's leased semaphore (memory or Redis), with blocking
//! calls (the GIL released) and asyncio awaitables.

use crate::errors;
use crate::runtime::{self, fork_gen};
use crate::store::{PyStore, StoreShared};
use crate::types::PyManualClock;
use parking_lot::{Mutex, RwLock};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::sync::Arc;
use std::time::Duration;
use tollgate::semaphore::{Permit, Semaphore, SemaphoreBackend, SemaphoreError};
use tollgate::time::ManualClock;

type DynSemaphore = Semaphore<dyn SemaphoreBackend>;
type DynPermit = Permit<dyn SemaphoreBackend>;

#[derive(Clone)]
struct Config {
    name: String,
    capacity: u64,
    lease: Duration,
    max_wait: Option<Duration>,
    store: Arc<StoreShared>,
    clock: Option<ManualClock>,
}

impl Config {
    fn build(&self) -> Result<DynSemaphore, SemaphoreError> {
        let built = self.store.current().map_err(|e| match e {
            tollgate::Error::Store(s) => SemaphoreError::Store(s),
            other => SemaphoreError::Store(tollgate::StoreError::new("store", other.to_string())),
        })?;
        let Some(backend) = built.semaphores() else {
            return Err(SemaphoreError::Store(tollgate::StoreError::new(
                "store",
                "this store has no semaphores (use memory, redis:// or redis+cluster://)",
            )));
        };
        let mut builder = Semaphore::builder(self.name.clone(), self.capacity).lease(self.lease);
        builder = match self.max_wait {
            Some(d) => builder.max_wait(d),
            None => builder.wait_forever(),
        };
        if let Some(clock) = &self.clock {
            builder = builder.clock(clock.clone());
        }
        builder.build_on(backend)
    }
}

struct Shared {
    config: Config,
    bound: RwLock<(u64, DynSemaphore)>,
}

impl Shared {
    fn semaphore(&self) -> Result<DynSemaphore, SemaphoreError> {
        let gen = fork_gen();
        {
            let bound = self.bound.read();
            if bound.0 == gen || self.config.store.is_memory() {
                return Ok(bound.1.clone());
            }
        }
        let mut bound = self.bound.write();
        if bound.0 != gen {
            let fresh = self.config.build()?;
            std::mem::forget(std::mem::replace(&mut bound.1, fresh));
            bound.0 = gen;
        }
        Ok(bound.1.clone())
    }

    /// The same configuration under another name (the library's `Semaphore::with_name`).
    fn renamed(&self, name: String) -> Result<Shared, SemaphoreError> {
        let sem = self.semaphore()?.with_name(name.clone())?;
        Ok(Shared {
            config: Config {
                name,
                ..self.config.clone()
            },
            bound: RwLock::new((fork_gen(), sem)),
        })
    }
}

/// A permit (or `None`) as a Python object.
fn permit_to_py(py: Python<'_>, p: Option<DynPermit>) -> PyResult<Py<PyAny>> {
    match p {
        Some(p) => Ok(Py::new(py, PyPermit::new(p))?.into_any()),
        None => Ok(py.None()),
    }
}

fn seconds(py: Python<'_>, what: &str, v: f64) -> PyResult<Duration> {
    if v.is_finite() && (0.0..=4e9).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(errors::config(
            py,
            format!("{what} must be a non-negative number of seconds (got {v})"),
        ))
    }
}

fn permits_of(py: Python<'_>, n: i64) -> PyResult<u64> {
    u64::try_from(n).map_err(|_| {
        errors::new_err(
            py,
            "InvalidCost",
            format!("at least 1 permit must be asked for (got {n})"),
            Vec::new(),
        )
    })
}

/// A named counting semaphore with leases, in memory or shared through Redis.
#[pyclass(name = "Semaphore", module = "tollgate", subclass, frozen)]
pub(crate) struct PySemaphore {
    shared: Arc<Shared>,
    /// Permits taken by `with sem:` / `async with sem:`, released by the matching exit.
    entered: Mutex<Vec<Py<PyPermit>>>,
}

#[pymethods]
impl PySemaphore {
    /// `Semaphore(name, capacity, *, lease=30.0, max_wait=None, store=None, clock=None)`.
    /// (`_like=other`: `other`'s configuration under `name`, for `with_name`; the other
    /// arguments are then ignored.)
    #[new]
    #[pyo3(signature = (name, capacity, *, lease=30.0, max_wait=None, store=None, clock=None, _like=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: String,
        capacity: u64,
        lease: f64,
        max_wait: Option<f64>,
        store: Option<&Bound<'_, PyAny>>,
        clock: Option<PyRef<'_, PyManualClock>>,
        _like: Option<PyRef<'_, PySemaphore>>,
    ) -> PyResult<Self> {
        if let Some(like) = _like {
            let shared = like
                .shared
                .renamed(name)
                .map_err(|e| errors::semaphore(py, e))?;
            return Ok(PySemaphore {
                shared: Arc::new(shared),
                entered: Mutex::new(Vec::new()),
            });
        }
        let store = PyStore::shared_of(py, store)?;
        let config = Config {
            name,
            capacity,
            lease: seconds(py, "lease", lease)?,
            max_wait: max_wait.map(|w| seconds(py, "max_wait", w)).transpose()?,
            store,
            clock: clock.map(|c| c.clock.clone()),
        };
        let sem = py
            .detach(|| config.build())
            .map_err(|e| errors::semaphore(py, e))?;
        Ok(PySemaphore {
            shared: Arc::new(Shared {
                config,
                bound: RwLock::new((fork_gen(), sem)),
            }),
            entered: Mutex::new(Vec::new()),
        })
    }

    /// The name.
    #[getter]
    fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The capacity.
    #[getter]
    fn capacity(&self) -> u64 {
        self.shared.config.capacity
    }

    /// True when calls never wait for I/O (the memory store): `try_acquire` and
    /// `Permit.release` return at once, so async code may call them directly.
    #[getter]
    fn is_local(&self) -> bool {
        self.shared.config.store.is_memory()
    }

    /// The lease in seconds: a holder that neither releases nor extends loses its permits
    /// after it.
    #[getter]
    fn lease(&self) -> f64 {
        self.shared.config.lease.as_secs_f64()
    }

    /// Takes `permits` (all or nothing), waiting at most `timeout` seconds (`None`: the
    /// semaphore's `max_wait`). Raises `SemaphoreTimeout` when none came in time.
    #[pyo3(signature = (permits=1, timeout=None))]
    fn acquire(&self, py: Python<'_>, permits: i64, timeout: Option<f64>) -> PyResult<PyPermit> {
        let n = permits_of(py, permits)?;
        let within = match timeout {
            Some(t) => Some(seconds(py, "timeout", t)?),
            None => self.shared.config.max_wait,
        };
        let shared = &self.shared;
        py.detach(|| {
            shared
                .semaphore()
                .and_then(|s| s.acquire_n_within(n, within))
        })
        .map(PyPermit::new)
        .map_err(|e| errors::semaphore(py, e))
    }

    /// Takes `permits` if they are free now; `None` otherwise.
    #[pyo3(signature = (permits=1))]
    fn try_acquire(&self, py: Python<'_>, permits: i64) -> PyResult<Option<PyPermit>> {
        let n = permits_of(py, permits)?;
        let shared = &self.shared;
        py.detach(|| shared.semaphore().and_then(|s| s.try_acquire_n(n)))
            .map(|p| p.map(PyPermit::new))
            .map_err(|e| errors::semaphore(py, e))
    }

    /// Awaitable `acquire`: never blocks the event loop; cancelling it leaks no permit.
    #[pyo3(signature = (permits=1, timeout=None))]
    fn acquire_async<'py>(
        &self,
        py: Python<'py>,
        permits: i64,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let n = permits_of(py, permits)?;
        let within = match timeout {
            Some(t) => Some(seconds(py, "timeout", t)?),
            None => self.shared.config.max_wait,
        };
        let sem = match self.shared.semaphore() {
            Ok(s) => s,
            Err(e) => return runtime::ready(py, Err(errors::semaphore(py, e))),
        };
        runtime::spawn(
            py,
            async move { sem.acquire_n_within_async(n, within).await },
            |py, r| match r {
                Ok(p) => permit_to_py(py, Some(p)),
                Err(e) => Err(errors::semaphore(py, e)),
            },
        )
    }

    /// Awaitable `try_acquire`: the permit, or `None` if they are not free now.
    #[pyo3(signature = (permits=1))]
    fn try_acquire_async<'py>(&self, py: Python<'py>, permits: i64) -> PyResult<Bound<'py, PyAny>> {
        let n = permits_of(py, permits)?;
        let sem = match self.shared.semaphore() {
            Ok(s) => s,
            Err(e) => return runtime::ready(py, Err(errors::semaphore(py, e))),
        };
        if sem.backend().is_local() {
            // Never blocks: decide now, hand back a completed future.
            let r = sem.try_acquire_n(n).map_err(|e| errors::semaphore(py, e));
            return runtime::ready(py, r.and_then(|p| permit_to_py(py, p)));
        }
        runtime::spawn(
            py,
            async move { sem.try_acquire_n_async(n).await },
            |py, r| match r {
                Ok(p) => permit_to_py(py, p),
                Err(e) => Err(errors::semaphore(py, e)),
            },
        )
    }

    /// Permits in use now.
    fn in_use(&self, py: Python<'_>) -> PyResult<u64> {
        let shared = &self.shared;
        py.detach(|| shared.semaphore().and_then(|s| s.in_use()))
            .map_err(|e| errors::semaphore(py, e))
    }

    fn __enter__(slf: &Bound<'_, Self>) -> PyResult<Py<PyPermit>> {
        let py = slf.py();
        let permit = Py::new(py, slf.get().acquire(py, 1, None)?)?;
        slf.get().entered.lock().push(permit.clone_ref(py));
        Ok(permit)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        let permit = self.entered.lock().pop();
        if let Some(p) = permit {
            p.get().release(py)?;
        }
        Ok(false)
    }

    /// Keeps a permit taken by `async with` for the matching `__aexit__` (used by the
    /// Python subclass).
    fn _push_entered(&self, permit: Py<PyPermit>) {
        self.entered.lock().push(permit);
    }
    /// The permit of the innermost `async with`.
    fn _pop_entered(&self) -> Option<Py<PyPermit>> {
        self.entered.lock().pop()
    }

    fn __repr__(&self) -> String {
        format!(
            "Semaphore({:?}, {})",
            self.shared.config.name, self.shared.config.capacity
        )
    }
}

/// Held permits: released by `release()`, by leaving `with`, or when garbage-collected.
#[pyclass(name = "Permit", module = "tollgate", frozen)]
pub(crate) struct PyPermit {
    permit: Mutex<Option<DynPermit>>,
    holder: String,
    permits: u64,
}

impl PyPermit {
    fn new(p: DynPermit) -> Self {
        PyPermit {
            holder: p.holder_id().to_string(),
            permits: p.permits(),
            permit: Mutex::new(Some(p)),
        }
    }
}

#[pymethods]
impl PyPermit {
    /// The holder id of this lease.
    #[getter]
    fn holder_id(&self) -> &str {
        &self.holder
    }

    /// How many permits are held.
    #[getter]
    fn permits(&self) -> u64 {
        self.permits
    }

    /// Whether the permits are still held (not released, lease not known to be lost).
    #[getter]
    fn held(&self) -> bool {
        self.permit.lock().as_ref().is_some_and(|p| !p.lease_lost())
    }

    /// Gives the permits back. Raises `LeaseExpired` if the lease had already ended (then it
    /// held nothing any more and nothing is changed). Releasing twice is a no-op.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let permit = self.permit.lock().take();
        match permit {
            None => Ok(()),
            Some(p) => py
                .detach(|| p.release())
                .map_err(|e| errors::semaphore(py, e)),
        }
    }

    /// Renews the lease: for `lease` seconds from now (`None`: the semaphore's lease).
    #[pyo3(signature = (lease=None))]
    fn extend(&self, py: Python<'_>, lease: Option<f64>) -> PyResult<()> {
        let lease = lease.map(|l| seconds(py, "lease", l)).transpose()?;
        let guard = self.permit.lock();
        let Some(p) = guard.as_ref() else {
            return Err(errors::new_err(
                py,
                "LeaseExpired",
                "the permit was already released".into(),
                Vec::new(),
            ));
        };
        let r = match lease {
            Some(l) => p.extend_by(l),
            None => p.extend(),
        };
        r.map_err(|e| errors::semaphore(py, e))
    }

    /// Awaitable `release`.
    fn release_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.permit.lock().take() {
            None => runtime::ready(py, Ok(py.None())),
            Some(p) if p.semaphore().backend().is_local() => {
                // Never blocks: release now, hand back a completed future.
                let r = p.release().map_err(|e| errors::semaphore(py, e));
                runtime::ready(py, r.map(|()| py.None()))
            }
            Some(p) => runtime::spawn(py, async move { p.release_async().await }, |py, r| {
                r.map(|()| py.None()).map_err(|e| errors::semaphore(py, e))
            }),
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        runtime::ready(py, Ok(slf.into_any().unbind()))
    }

    #[pyo3(signature = (*_exc))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _exc: &Bound<'_, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.release_async(py)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.release(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "Permit(holder_id={:?}, permits={}, held={})",
            self.holder,
            self.permits,
            if self.held() { "True" } else { "False" }
        )
    }
}
