//! The native module `tollgate._tollgate` behind the Python package `tollgate`.
//!
//! Everything here is a thin binding over the Rust crates: the algorithms, stores, failure
//! policies, key building and wait loops are the library's own (see `docs/python.md`).

use pyo3::prelude::*;

/// The module `tollgate._tollgate`.
#[pymodule]
fn _tollgate(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
