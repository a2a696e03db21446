//! `check_all` / `peek_all` (and their awaitables): several `(limiter, key, cost)` items
//! decided all-or-nothing by the library's `Limiter::check_all` (one store call: one round
//! trip on Redis and PostgreSQL, one transaction on SQLite, atomic across keys in memory).

use crate::errors;
use crate::limiter::{cost_of, PyLimiter};
use crate::runtime;
use crate::store::DynBackend;
use crate::types::PyDecision;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use tollgate::store::multi::MultiDecision;
use tollgate::{Error, Limiter};

/// The outcome of a multi-key call: truthy when every item was admitted.
#[pyclass(name = "MultiDecision", module = "tollgate", frozen)]
pub(crate) struct PyMultiDecision {
    d: MultiDecision,
}

#[pymethods]
impl PyMultiDecision {
    /// Every item admitted its cost (for `check_all`: every item was charged). When false,
    /// nothing was charged anywhere.
    #[getter]
    fn allowed(&self) -> bool {
        self.d.allowed
    }
    /// Each item's own decision, in call order.
    #[getter]
    fn decisions(&self) -> Vec<PyDecision> {
        self.d
            .decisions
            .iter()
            .map(|d| PyDecision::new(*d))
            .collect()
    }
    /// `None` when allowed; else the index of the item that denied (the longest wait among
    /// the items that denied).
    #[getter]
    fn binding(&self) -> Option<usize> {
        self.d.binding().map(|(i, _)| i)
    }
    /// The index of the item to report: the least `remaining` when allowed, else `binding`.
    #[getter]
    fn tightest(&self) -> Option<usize> {
        self.d.tightest().map(|(i, _)| i)
    }
    /// Seconds to wait before the whole call could be admitted (0.0 when allowed).
    #[getter]
    fn retry_after(&self) -> f64 {
        self.d
            .binding()
            .map_or(0.0, |(_, d)| d.retry_after.as_secs_f64())
    }
    fn __bool__(&self) -> bool {
        self.d.allowed
    }
    fn __len__(&self) -> usize {
        self.d.decisions.len()
    }
    fn __repr__(&self) -> String {
        format!(
            "MultiDecision(allowed={}, binding={}, decisions={})",
            if self.d.allowed { "True" } else { "False" },
            self.binding().map_or("None".to_string(), |i| i.to_string()),
            self.d.decisions.len()
        )
    }
}

/// One item, resolved: this process's limiter, the key and the cost.
type Item = (Limiter<DynBackend>, String, u64);

/// Reads `[(limiter, key), (limiter, key, cost), ...]`; says whether every limiter keeps
/// its state in memory (then the call never blocks).
fn items_of(py: Python<'_>, items: &Bound<'_, PyAny>) -> PyResult<(Vec<Item>, bool)> {
    let mut out = Vec::new();
    let mut memory = true;
    let bad = || {
        pyo3::exceptions::PyTypeError::new_err(
            "items must be (limiter, key) or (limiter, key, cost) tuples",
        )
    };
    for item in items.try_iter().map_err(|_| bad())? {
        let item = item?;
        let tuple = item.cast::<PyTuple>().map_err(|_| bad())?;
        if !(2..=3).contains(&tuple.len()) {
            return Err(bad());
        }
        let limiter = tuple.get_item(0)?;
        let limiter = limiter.cast::<PyLimiter>().map_err(|_| bad())?;
        let key: String = tuple.get_item(1)?.extract().map_err(|_| bad())?;
        let cost = match tuple.len() {
            3 => cost_of(py, tuple.get_item(2)?.extract()?)?,
            _ => 1,
        };
        let shared = &limiter.get().shared;
        memory &= shared.store.is_memory();
        // Multi-key calls pass through a lease: the plain limiter lets leased and plain
        // limiters of one store combine.
        let l = shared.plain().map_err(|e| errors::limiter(py, e))?;
        out.push((l, key, cost));
    }
    Ok((out, memory))
}

fn run(items: &[Item], check: bool) -> Result<MultiDecision, Error> {
    let checks: Vec<_> = items.iter().map(|(l, k, c)| l.item(k, *c)).collect();
    if check {
        Limiter::check_all(&checks)
    } else {
        Limiter::peek_all(&checks)
    }
}

fn decide(py: Python<'_>, items: &Bound<'_, PyAny>, check: bool) -> PyResult<PyMultiDecision> {
    let (items, memory) = items_of(py, items)?;
    let result = if memory {
        run(&items, check)
    } else {
        py.detach(|| run(&items, check))
    };
    result
        .map(|d| PyMultiDecision { d })
        .map_err(|e| errors::limiter(py, e))
}

fn to_py(py: Python<'_>, r: Result<MultiDecision, Error>) -> PyResult<Py<PyAny>> {
    match r {
        Ok(d) => Ok(Py::new(py, PyMultiDecision { d })?.into_any()),
        Err(e) => Err(errors::limiter(py, e)),
    }
}

fn decide_async<'py>(
    py: Python<'py>,
    items: &Bound<'_, PyAny>,
    check: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let (items, memory) = match items_of(py, items) {
        Ok(v) => v,
        Err(e) => return runtime::ready(py, Err(e)),
    };
    if memory {
        // Never blocks: decide now, hand back a completed future.
        return runtime::ready(py, to_py(py, run(&items, check)));
    }
    runtime::spawn(
        py,
        async move {
            let checks: Vec<_> = items.iter().map(|(l, k, c)| l.item(k, *c)).collect();
            if check {
                Limiter::check_all_async(&checks).await
            } else {
                Limiter::peek_all_async(&checks).await
            }
        },
        to_py,
    )
}

/// `check_all(items)`: decides every `(limiter, key[, cost])` item together and charges all
/// of them or none.
#[pyfunction]
pub(crate) fn check_all(py: Python<'_>, items: &Bound<'_, PyAny>) -> PyResult<PyMultiDecision> {
    decide(py, items, true)
}

/// `peek_all(items)`: what `check_all` would decide now, charging nothing.
#[pyfunction]
pub(crate) fn peek_all(py: Python<'_>, items: &Bound<'_, PyAny>) -> PyResult<PyMultiDecision> {
    decide(py, items, false)
}

/// A future of the running loop completed with `check_all(items)`.
#[pyfunction]
pub(crate) fn check_all_future<'py>(
    py: Python<'py>,
    items: &Bound<'_, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    decide_async(py, items, true)
}

/// A future of the running loop completed with `peek_all(items)`.
#[pyfunction]
pub(crate) fn peek_all_future<'py>(
    py: Python<'py>,
    items: &Bound<'_, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    decide_async(py, items, false)
}
