//! The native module `tollgate._tollgate` behind the Python package `tollgate`.
//!
//! Everything here is a thin binding over the Rust crates: the algorithms, stores, failure
//! policies, key building and wait loops are the library's own (see `docs/python.md`).

use pyo3::prelude::*;

mod errors;
mod fields;
mod lease;
mod limiter;
mod multi;
mod runtime;
mod semaphore;
mod store;
mod types;
mod wrap;

/// The module `tollgate._tollgate`.
#[pymodule]
fn _tollgate(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<types::PyRate>()?;
    m.add_class::<types::PyDecision>()?;
    m.add_class::<types::PyManualClock>()?;
    m.add_class::<store::PyStore>()?;
    m.add_class::<limiter::PyLimiter>()?;
    m.add_class::<semaphore::PySemaphore>()?;
    m.add_class::<semaphore::PyPermit>()?;
    m.add_class::<multi::PyMultiDecision>()?;
    m.add_class::<lease::PyLease>()?;
    m.add_function(wrap_pyfunction!(lease::flush_leases, m)?)?;
    m.add_function(wrap_pyfunction!(lease::_flush_leases_at_exit, m)?)?;
    m.add_function(wrap_pyfunction!(multi::check_all, m)?)?;
    m.add_function(wrap_pyfunction!(multi::peek_all, m)?)?;
    m.add_function(wrap_pyfunction!(multi::check_all_future, m)?)?;
    m.add_function(wrap_pyfunction!(multi::peek_all_future, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_quiesce, m)?)?;
    m.add_function(wrap_pyfunction!(fields::ratelimit_fields, m)?)?;
    m.add_function(wrap_pyfunction!(fields::retry_after_field, m)?)?;
    m.add_function(wrap_pyfunction!(fields::check_policy_name, m)?)?;
    Ok(())
}
