//! `Limiter`: the library's `Limiter` on any store, with sync calls (the GIL released
//! during store I/O and waits) and asyncio awaitables.

use crate::errors;
use crate::lease::{self, Leased, PyLease};
use crate::runtime::{self, fork_gen};
use crate::store::{DynBackend, DynLog, PyStore, StoreShared};
use crate::types::{rates_from, PyDecision, PyManualClock, PyRate};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use pyo3::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tollgate::hooks::Hook;
use tollgate::store::lease::LeaseConfig;
use tollgate::store::log::LogEntry;
use tollgate::time::{Clock, ManualClock, SystemClock};
use tollgate::{Algorithm, Decision, Error, Limiter, Policy};

/// "No timeout": about 136 years, far beyond any horizon a policy can have.
const FOREVER: Duration = Duration::from_secs(u32::MAX as u64);

pub(crate) struct Config {
    pub(crate) policy: Policy,
    pub(crate) store: Arc<StoreShared>,
    clock: Option<ManualClock>,
    hook: Option<Hook>,
    max_key_len: usize,
    lease: Option<LeaseConfig>,
}

/// A limiter bound in this process.
pub(crate) struct Binding {
    /// Single-key calls (through the lease, if any).
    limiter: Limiter<DynBackend>,
    /// The same limiter without the lease, for multi-key calls (which pass through a lease
    /// anyway): so leased and plain limiters of one store combine in `check_all`.
    plain: Limiter<DynBackend>,
    lease: Option<Leased>,
}

pub(crate) struct Shared {
    config: Config,
    bound: RwLock<(u64, Binding)>,
    /// The backend for log reads, bound on first use (per fork generation).
    log: Mutex<Option<(u64, DynLog)>>,
}

impl std::ops::Deref for Shared {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

impl Config {
    fn build(&self, backend: DynBackend) -> Limiter<DynBackend> {
        let mut builder = Limiter::builder(self.policy.clone()).max_key_len(self.max_key_len);
        if let Some(clock) = &self.clock {
            builder = builder.clock(clock.clone());
        }
        if let Some(hook) = &self.hook {
            builder = builder.hook(hook.clone());
        }
        builder.build_on(backend)
    }

    fn bind(&self) -> Result<Binding, Error> {
        let backend = self.store.current()?.bind(&self.policy)?;
        let plain = self.build(backend.clone());
        Ok(match &self.lease {
            None => Binding {
                limiter: plain.clone(),
                plain,
                lease: None,
            },
            Some(config) => {
                let leased = lease::lease(backend, &self.policy, config)?;
                Binding {
                    limiter: self.build(leased.clone()),
                    plain,
                    lease: Some(leased),
                }
            }
        })
    }
}

impl Shared {
    /// The limiter of this process (bound again after a `fork()` for stores that are not
    /// in memory).
    pub(crate) fn limiter(&self) -> Result<Limiter<DynBackend>, Error> {
        self.binding().map(|b| b.1.limiter.clone())
    }

    /// [`limiter`](Self::limiter) without the lease: for multi-key calls.
    pub(crate) fn plain(&self) -> Result<Limiter<DynBackend>, Error> {
        self.binding().map(|b| b.1.plain.clone())
    }

    /// The leased backend of this process, if the limiter has a lease.
    fn leased(&self) -> Result<Option<Leased>, Error> {
        self.binding().map(|b| b.1.lease.clone())
    }

    fn binding(&self) -> Result<RwLockReadGuard<'_, (u64, Binding)>, Error> {
        let gen = fork_gen();
        {
            let bound = self.bound.read();
            if bound.0 == gen || self.store.is_memory() {
                return Ok(bound);
            }
        }
        let mut bound = self.bound.write();
        if bound.0 != gen {
            let fresh = self.bind()?;
            // The parent's: its batches are the parent's to give back, never the child's.
            let stale = std::mem::replace(&mut bound.1, fresh);
            std::mem::forget(stale);
            bound.0 = gen;
        }
        Ok(parking_lot::RwLockWriteGuard::downgrade(bound))
    }

    /// The backend of this process for log reads, and the limiter's time now.
    fn log_backend(&self) -> Result<(DynLog, u64), Error> {
        let now = match &self.clock {
            Some(clock) => clock.now(),
            None => SystemClock.now(),
        };
        let gen = fork_gen();
        let mut log = self.log.lock();
        if let Some((g, b)) = log.as_ref() {
            if *g == gen || self.store.is_memory() {
                return Ok((Arc::clone(b), now));
            }
        }
        let fresh = self.store.current()?.bind_log(&self.policy)?;
        if let Some(stale) = log.replace((gen, Arc::clone(&fresh))) {
            std::mem::forget(stale);
        }
        Ok((fresh, now))
    }
}

fn key_ok(key: &str, max: usize) -> Result<(), Error> {
    if key.len() > max {
        return Err(Error::KeyTooLong {
            len: key.len(),
            max,
        });
    }
    Ok(())
}

fn entries_to_py(py: Python<'_>, r: Result<Vec<LogEntry>, Error>) -> PyResult<Py<PyAny>> {
    match r {
        Ok(entries) => Ok(entries_list(&entries)
            .into_pyobject(py)?
            .into_any()
            .unbind()),
        Err(e) => Err(errors::limiter(py, e)),
    }
}

fn entries_list(entries: &[LogEntry]) -> Vec<(u64, u64)> {
    entries.iter().map(|e| (e.at, e.weight)).collect()
}

/// Calls a Python hook with `args`; an exception in it is reported as unraisable and never
/// changes the verdict.
fn call_hook<'py>(py: Python<'py>, f: &Py<PyAny>, args: impl pyo3::call::PyCallArgs<'py>) {
    if let Err(e) = f.call1(py, args) {
        e.write_unraisable(py, Some(f.bind(py)));
    }
}

fn hooks(
    on_allow: Option<Py<PyAny>>,
    on_block: Option<Py<PyAny>>,
    on_error: Option<Py<PyAny>>,
) -> Option<Hook> {
    let mut all: Vec<Hook> = Vec::new();
    if let Some(f) = on_allow {
        all.push(Hook::on_allow(move |key, d| {
            runtime::attach_unless_exiting(|py| call_hook(py, &f, (key, PyDecision::new(*d))))
        }));
    }
    if let Some(f) = on_block {
        all.push(Hook::on_block(move |key, d| {
            runtime::attach_unless_exiting(|py| call_hook(py, &f, (key, PyDecision::new(*d))))
        }));
    }
    if let Some(f) = on_error {
        all.push(Hook::on_error(move |key, err| {
            runtime::attach_unless_exiting(|py| {
                let exc = errors::store(py, err).into_value(py);
                call_hook(py, &f, (key, exc))
            })
        }));
    }
    all.into_iter().reduce(Hook::then)
}

pub(crate) fn cost_of(py: Python<'_>, cost: i64) -> PyResult<u64> {
    u64::try_from(cost).map_err(|_| {
        errors::new_err(
            py,
            "InvalidCost",
            format!("the cost must be at least 1 (got {cost})"),
            Vec::new(),
        )
    })
}

fn timeout_of(py: Python<'_>, timeout: Option<f64>) -> PyResult<Duration> {
    match timeout {
        None => Ok(FOREVER),
        Some(t) if t.is_finite() && t >= 0.0 => {
            Ok(Duration::from_secs_f64(t.min(FOREVER.as_secs_f64())))
        }
        Some(t) => Err(errors::config(
            py,
            format!("timeout must be None or a non-negative number of seconds (got {t})"),
        )),
    }
}

fn decision_to_py(py: Python<'_>, r: Result<Decision, Error>) -> PyResult<Py<PyAny>> {
    match r {
        Ok(d) => Ok(Py::new(py, PyDecision::new(d))?.into_any()),
        Err(e) => Err(errors::limiter(py, e)),
    }
}

fn count_to_py(py: Python<'_>, r: Result<u64, Error>) -> PyResult<Py<PyAny>> {
    match r {
        Ok(n) => Ok(n.into_pyobject(py)?.into_any().unbind()),
        Err(e) => Err(errors::limiter(py, e)),
    }
}

fn unit_to_py(py: Python<'_>, r: Result<(), Error>) -> PyResult<Py<PyAny>> {
    match r {
        Ok(()) => Ok(py.None()),
        Err(e) => Err(errors::limiter(py, e)),
    }
}

/// A keyed rate limiter (see the `tollgate` package docs).
#[pyclass(name = "Limiter", module = "tollgate", subclass, frozen)]
pub(crate) struct PyLimiter {
    pub(crate) shared: Arc<Shared>,
}

impl PyLimiter {
    /// Runs `f` on this process's limiter: inline for the memory store (never blocks), with
    /// the GIL released otherwise.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Limiter<DynBackend>) -> Result<T, Error> + Send,
    ) -> PyResult<T> {
        let shared = &self.shared;
        let result = if shared.store.is_memory() {
            shared.limiter().and_then(|l| f(&l))
        } else {
            py.detach(|| shared.limiter().and_then(|l| f(&l)))
        };
        result.map_err(|e| errors::limiter(py, e))
    }

    /// An awaitable of the running loop running `f` on this process's limiter.
    fn spawn<'py, T, Fut>(
        &self,
        py: Python<'py>,
        convert: fn(Python<'_>, Result<T, Error>) -> PyResult<Py<PyAny>>,
        f: impl FnOnce(Limiter<DynBackend>) -> Fut,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        Fut: std::future::Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        match self.shared.limiter() {
            Ok(limiter) => runtime::spawn(py, f(limiter), convert),
            Err(e) => runtime::ready(py, Err(errors::limiter(py, e))),
        }
    }

    /// [`Self::spawn`] for an operation of `n` units (a cost or a refund), checked first.
    fn spawn_n<'py, T, Fut>(
        &self,
        py: Python<'py>,
        n: i64,
        convert: fn(Python<'_>, Result<T, Error>) -> PyResult<Py<PyAny>>,
        f: impl FnOnce(Limiter<DynBackend>, u64) -> Fut,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        Fut: std::future::Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        let n = cost_of(py, n)?;
        self.spawn(py, convert, move |l| f(l, n))
    }
}

#[pymethods]
impl PyLimiter {
    #[new]
    #[pyo3(signature = (rates, algorithm="gcra", store=None, *, clock=None, initial_tokens=None, on_allow=None, on_block=None, on_error=None, max_key_len=1024, lease=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        rates: &Bound<'_, PyAny>,
        algorithm: &str,
        store: Option<&Bound<'_, PyAny>>,
        clock: Option<PyRef<'_, PyManualClock>>,
        initial_tokens: Option<u64>,
        on_allow: Option<Py<PyAny>>,
        on_block: Option<Py<PyAny>>,
        on_error: Option<Py<PyAny>>,
        max_key_len: usize,
        lease: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let algorithm: Algorithm = algorithm.parse().map_err(|e| errors::quota(py, e))?;
        let rates = rates_from(py, rates)?;
        let mut policy = Policy::new(algorithm, rates).map_err(|e| errors::quota(py, e))?;
        if let Some(n) = initial_tokens {
            policy = policy
                .with_initial_tokens(n)
                .map_err(|e| errors::quota(py, e))?;
        }
        let store = PyStore::shared_of(py, store)?;
        let lease = lease::lease_of(lease)?;
        if let Some(lease) = &lease {
            if store.is_memory() {
                return Err(errors::config(
                    py,
                    "lease= needs a shared store (Redis, PostgreSQL, SQLite): a memory store \
                     already decides every call in this process",
                ));
            }
            lease
                .validate(&policy)
                .map_err(|e| errors::config(py, e.to_string()))?;
        }
        let config = Config {
            policy,
            store,
            clock: clock.map(|c| c.clock.clone()),
            hook: hooks(on_allow, on_block, on_error),
            max_key_len,
            lease,
        };
        let limiter = py
            .detach(|| config.bind())
            .map_err(|e| errors::limiter(py, e))?;
        Ok(PyLimiter {
            shared: Arc::new(Shared {
                config,
                bound: RwLock::new((fork_gen(), limiter)),
                log: Mutex::new(None),
            }),
        })
    }

    /// True when calls never wait for I/O (the memory store): `check` returns at once, so
    /// async code may call it directly and skip the awaitable.
    #[getter]
    fn is_local(&self) -> bool {
        self.shared.store.is_memory()
    }

    /// The lease of this limiter (`None` without one).
    #[getter]
    fn lease(&self) -> Option<PyLease> {
        let config = self.shared.lease.clone()?;
        Some(PyLease { config })
    }

    /// Units charged in the store and held unused in this process's batches now (0 without
    /// a lease).
    #[getter]
    fn lease_held(&self, py: Python<'_>) -> PyResult<u64> {
        let leased = self.shared.leased().map_err(|e| errors::limiter(py, e))?;
        Ok(leased.map_or(0, |l| l.held()))
    }

    /// Gives back the unused units of this limiter's batches now (the GIL released); returns
    /// how many. A no-op (0) without a lease. Raises `StoreError` when the store refused
    /// them (they come back by the store's own refill).
    fn flush(&self, py: Python<'_>) -> PyResult<u64> {
        let shared = &self.shared;
        py.detach(|| match shared.leased()? {
            Some(l) => l.flush(),
            None => Ok(0),
        })
        .map_err(|e| errors::limiter(py, e))
    }

    /// Awaitable `flush`.
    fn flush_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.shared.leased() {
            Ok(Some(l)) => runtime::spawn(py, async move { l.flush_async().await }, count_to_py),
            Ok(None) => runtime::ready(py, count_to_py(py, Ok(0))),
            Err(e) => runtime::ready(py, Err(errors::limiter(py, e))),
        }
    }

    /// The algorithm's name.
    #[getter]
    fn algorithm(&self) -> &'static str {
        self.shared.policy.algorithm().name()
    }

    /// The rates, in order (`Decision.denied_by` indexes this list).
    #[getter]
    fn rates(&self) -> Vec<PyRate> {
        self.shared
            .policy
            .rates()
            .iter()
            .map(|r| PyRate { rate: *r })
            .collect()
    }

    /// The largest cost one call can ever be admitted.
    #[getter]
    fn max_cost(&self) -> u64 {
        self.shared.policy.max_cost()
    }

    /// Decides `cost` on `key` and charges it when admitted; a denial charges nothing.
    #[pyo3(signature = (key, cost=1))]
    fn check(&self, py: Python<'_>, key: &str, cost: i64) -> PyResult<PyDecision> {
        let cost = cost_of(py, cost)?;
        self.run(py, |l| l.check_n(key, cost)).map(PyDecision::new)
    }

    /// Decides `cost` on `key` without charging.
    #[pyo3(signature = (key, cost=1))]
    fn peek(&self, py: Python<'_>, key: &str, cost: i64) -> PyResult<PyDecision> {
        let cost = cost_of(py, cost)?;
        self.run(py, |l| l.peek(key, cost)).map(PyDecision::new)
    }

    /// Forgets `key`: it is fresh again.
    fn reset(&self, py: Python<'_>, key: &str) -> PyResult<()> {
        self.run(py, |l| l.reset(key))
    }

    /// Gives back `amount` unused units on `key` (never beyond fresh).
    #[pyo3(signature = (key, amount=1))]
    fn refund(&self, py: Python<'_>, key: &str, amount: i64) -> PyResult<()> {
        let amount = cost_of(py, amount)?;
        self.run(py, |l| l.refund(key, amount))
    }

    /// Waits (the GIL released) until `cost` is admitted on `key`, at most `timeout`
    /// seconds (`None`: as long as it takes). Raises `RateLimitExceeded` when the wait
    /// needed is longer than the time left, at once rather than after sleeping in vain.
    #[pyo3(signature = (key, cost=1, timeout=None))]
    fn acquire(
        &self,
        py: Python<'_>,
        key: &str,
        cost: i64,
        timeout: Option<f64>,
    ) -> PyResult<PyDecision> {
        let cost = cost_of(py, cost)?;
        let max_wait = timeout_of(py, timeout)?;
        let shared = &self.shared;
        py.detach(|| {
            shared
                .limiter()
                .and_then(|l| l.acquire(key, cost, max_wait))
        })
        .map(PyDecision::new)
        .map_err(|e| errors::limiter(py, e))
    }

    /// Awaitable `check`.
    #[pyo3(signature = (key, cost=1))]
    fn check_async<'py>(
        &self,
        py: Python<'py>,
        key: String,
        cost: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        if self.shared.store.is_memory() {
            // Never blocks: decide now, hand back a completed future.
            let cost = cost_of(py, cost)?;
            let r = self.shared.limiter().and_then(|l| l.check_n(&key, cost));
            return runtime::ready(py, decision_to_py(py, r));
        }
        self.spawn_n(py, cost, decision_to_py, move |l, n| async move {
            l.check_n_async(&key, n).await
        })
    }

    /// Awaitable `peek`.
    #[pyo3(signature = (key, cost=1))]
    fn peek_async<'py>(
        &self,
        py: Python<'py>,
        key: String,
        cost: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.spawn_n(py, cost, decision_to_py, move |l, n| async move {
            l.peek_async(&key, n).await
        })
    }

    /// Awaitable `reset`.
    fn reset_async<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        self.spawn(
            py,
            unit_to_py,
            move |l| async move { l.reset_async(&key).await },
        )
    }

    /// Awaitable `refund`.
    #[pyo3(signature = (key, amount=1))]
    fn refund_async<'py>(
        &self,
        py: Python<'py>,
        key: String,
        amount: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.spawn_n(py, amount, unit_to_py, move |l, n| async move {
            l.refund_async(&key, n).await
        })
    }

    /// Awaitable `acquire`: waits without blocking the event loop (a wait on one key never
    /// delays another); cancelling it charges nothing.
    #[pyo3(signature = (key, cost=1, timeout=None))]
    fn acquire_async<'py>(
        &self,
        py: Python<'py>,
        key: String,
        cost: i64,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let max_wait = timeout_of(py, timeout)?;
        self.spawn_n(py, cost, decision_to_py, move |l, n| async move {
            l.acquire_async(&key, n, max_wait).await
        })
    }

    /// The entries of `key`'s sliding log that a window still sees: `[(at_us, weight),
    /// ...]`, oldest first (`at_us` on the store's clock; entries admitted at one instant are
    /// merged). Only for `algorithm="sliding_log"`; read-only.
    fn log(&self, py: Python<'_>, key: &str) -> PyResult<Vec<(u64, u64)>> {
        let shared = &self.shared;
        let read = || -> Result<Vec<LogEntry>, Error> {
            key_ok(key, shared.max_key_len)?;
            let (backend, now) = shared.log_backend()?;
            backend.log_entries(key, now)
        };
        let result = if shared.store.is_memory() {
            read()
        } else {
            py.detach(read)
        };
        result
            .map(|e| entries_list(&e))
            .map_err(|e| errors::limiter(py, e))
    }

    /// Awaitable `log`.
    fn log_async<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let prepared =
            key_ok(&key, self.shared.max_key_len).and_then(|()| self.shared.log_backend());
        match prepared {
            Ok((backend, now)) => runtime::spawn(
                py,
                async move { backend.log_entries_async(&key, now).await },
                entries_to_py,
            ),
            Err(e) => runtime::ready(py, Err(errors::limiter(py, e))),
        }
    }

    fn __repr__(&self) -> String {
        format!("Limiter({:?})", self.shared.policy.to_string())
    }
}
