//! Rust errors to the Python exceptions of `tollgate._errors` (one base class,
//! `TollgateError`; bad input is also a `ValueError`).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;
use tollgate::{Error, QuotaError, SemaphoreError, StoreError};

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// An instance of the exception class `class` of `tollgate._errors`, with attributes.
pub(crate) fn new_err(
    py: Python<'_>,
    class: &str,
    message: String,
    attrs: Vec<(&'static str, Bound<'_, PyAny>)>,
) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let module = ERRORS.get_or_try_init(py, || {
            PyModule::import(py, "tollgate._errors").map(Bound::unbind)
        })?;
        let exc = module.bind(py).getattr(class)?.call1((message,))?;
        for (name, value) in attrs {
            exc.setattr(name, value)?;
        }
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|e| e)
}

/// `ConfigError(message)`.
pub(crate) fn config(py: Python<'_>, message: impl Into<String>) -> PyErr {
    new_err(py, "ConfigError", message.into(), Vec::new())
}

/// `InvalidRate(message)` for a rejected quota or policy.
pub(crate) fn quota(py: Python<'_>, e: QuotaError) -> PyErr {
    new_err(py, "InvalidRate", e.to_string(), Vec::new())
}

/// The Python exception for a store failure, with `kind` and `store`.
pub(crate) fn store(py: Python<'_>, e: &StoreError) -> PyErr {
    let attrs = vec![
        (
            "kind",
            pyo3::types::PyString::new(py, e.kind.as_str()).into_any(),
        ),
        ("store", pyo3::types::PyString::new(py, e.store).into_any()),
    ];
    new_err(py, "StoreError", e.to_string(), attrs)
}

/// The Python exception for a failed limiter call.
pub(crate) fn limiter(py: Python<'_>, e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::CostExceedsCapacity { cost, capacity } => {
            let attrs = vec![("cost", int(py, cost)), ("capacity", int(py, capacity))];
            new_err(py, "CostExceedsCapacity", message, attrs)
        }
        Error::InvalidCost => new_err(py, "InvalidCost", message, Vec::new()),
        Error::KeyTooLong { .. } | Error::InvalidKey { .. } => {
            new_err(py, "InvalidKey", message, Vec::new())
        }
        Error::WaitTimeout { retry_after } => {
            let secs = pyo3::types::PyFloat::new(py, retry_after.as_secs_f64()).into_any();
            new_err(
                py,
                "RateLimitExceeded",
                message,
                vec![("retry_after", secs)],
            )
        }
        Error::Store(s) => store(py, &s),
        _ => new_err(py, "TollgateError", message, Vec::new()),
    }
}

/// The Python exception for a failed semaphore call.
pub(crate) fn semaphore(py: Python<'_>, e: SemaphoreError) -> PyErr {
    let message = e.to_string();
    match e {
        SemaphoreError::WaitTimeout {
            in_use, capacity, ..
        } => {
            let attrs = vec![("in_use", int(py, in_use)), ("capacity", int(py, capacity))];
            new_err(py, "SemaphoreTimeout", message, attrs)
        }
        SemaphoreError::LeaseExpired { .. } => new_err(py, "LeaseExpired", message, Vec::new()),
        SemaphoreError::Store(s) => store(py, &s),
        SemaphoreError::ZeroPermits => new_err(py, "InvalidCost", message, Vec::new()),
        SemaphoreError::PermitsExceedCapacity { permits, capacity } => {
            let attrs = vec![("cost", int(py, permits)), ("capacity", int(py, capacity))];
            new_err(py, "CostExceedsCapacity", message, attrs)
        }
        SemaphoreError::ZeroCapacity
        | SemaphoreError::LeaseTooShort(_)
        | SemaphoreError::EmptyName
        | SemaphoreError::NameTooLong { .. } => new_err(py, "ConfigError", message, Vec::new()),
        _ => new_err(py, "SemaphoreError", message, Vec::new()),
    }
}

fn int(py: Python<'_>, v: u64) -> Bound<'_, PyAny> {
    pyo3::types::PyInt::new(py, v).into_any()
}
