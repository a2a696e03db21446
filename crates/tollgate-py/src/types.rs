//! `Rate`, `Decision` and `ManualClock`: values the Python API passes around.

use crate::errors;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDelta, PyDeltaAccess, PyString};
use std::time::{Duration, UNIX_EPOCH};
use tollgate::time::ManualClock;

/// `limit` units per `period`, with an optional burst.
#[pyclass(name = "Rate", module = "tollgate", frozen, eq, hash, from_py_object)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct PyRate {
    pub(crate) rate: tollgate::Rate,
}

/// A period given as seconds (int or float), a `datetime.timedelta`, or `period_us`.
pub(crate) fn period_from(
    py: Python<'_>,
    period: Option<&Bound<'_, PyAny>>,
    period_us: Option<u64>,
) -> PyResult<Duration> {
    match (period, period_us) {
        (Some(_), Some(_)) => Err(errors::config(py, "give period or period_us, not both")),
        (None, Some(us)) => Ok(Duration::from_micros(us)),
        (None, None) => Err(errors::config(
            py,
            "a rate needs a period (seconds) or period_us",
        )),
        (Some(p), None) => {
            if let Ok(delta) = p.cast::<PyDelta>() {
                let days = i64::from(delta.get_days());
                if days < 0 {
                    return Err(errors::config(py, "the period must not be negative"));
                }
                let us = (days as u64) * 86_400_000_000
                    + u64::from(delta.get_seconds().unsigned_abs()) * 1_000_000
                    + u64::from(delta.get_microseconds().unsigned_abs());
                return Ok(Duration::from_micros(us));
            }
            if let Ok(n) = p.extract::<u64>() {
                return n
                    .checked_mul(1_000_000)
                    .map(Duration::from_micros)
                    .ok_or_else(|| errors::config(py, "the period is too large"));
            }
            let secs: f64 = p.extract().map_err(|_| {
                PyTypeError::new_err("the period must be seconds (int or float) or a timedelta")
            })?;
            if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
                return Err(errors::config(
                    py,
                    format!(
                        "the period must be a finite, non-negative number of seconds (got {secs})"
                    ),
                ));
            }
            Ok(Duration::from_micros((secs * 1e6).round() as u64))
        }
    }
}

#[pymethods]
impl PyRate {
    /// `Rate(limit, period, *, burst=None, period_us=None)`: `limit` per `period` seconds
    /// (a number or a `timedelta`; or `period_us` microseconds).
    #[new]
    #[pyo3(signature = (limit, period=None, *, burst=None, period_us=None))]
    fn new(
        py: Python<'_>,
        limit: u64,
        period: Option<&Bound<'_, PyAny>>,
        burst: Option<u64>,
        period_us: Option<u64>,
    ) -> PyResult<Self> {
        let period = period_from(py, period, period_us)?;
        let rate = tollgate::Rate::new(limit, period).map_err(|e| errors::quota(py, e))?;
        let rate = match burst {
            Some(b) => rate.with_burst(b).map_err(|e| errors::quota(py, e))?,
            None => rate,
        };
        Ok(PyRate { rate })
    }

    /// Parses one rate: `"10/s"`, `"100 per minute"`, `"500 per 7 days"`, `"10/s burst 20"`.
    #[staticmethod]
    fn parse(py: Python<'_>, text: &str) -> PyResult<Self> {
        tollgate::Rate::parse(text)
            .map(|rate| PyRate { rate })
            .map_err(|e| errors::quota(py, e))
    }

    /// Units per period.
    #[getter]
    fn limit(&self) -> u64 {
        self.rate.limit()
    }

    /// The period in seconds.
    #[getter]
    fn period(&self) -> f64 {
        self.rate.period().as_secs_f64()
    }

    /// The period in microseconds (exact).
    #[getter]
    fn period_us(&self) -> u64 {
        self.rate.period_us()
    }

    /// The burst (the capacity of GCRA and the token bucket; the limit when not given).
    #[getter]
    fn burst(&self) -> u64 {
        self.rate.burst()
    }

    fn __str__(&self) -> String {
        self.rate.to_string()
    }

    fn __repr__(&self) -> String {
        format!("Rate({:?})", self.rate.to_string())
    }
}

/// Rates from a string (`"10/s; 1000/hour"`), a `Rate`, or a list of both.
pub(crate) fn rates_from(
    py: Python<'_>,
    rates: &Bound<'_, PyAny>,
) -> PyResult<Vec<tollgate::Rate>> {
    if let Ok(text) = rates.cast::<PyString>() {
        return tollgate::parse_rates(&text.to_cow()?).map_err(|e| errors::quota(py, e));
    }
    if let Ok(rate) = rates.extract::<PyRate>() {
        return Ok(vec![rate.rate]);
    }
    let mut out = Vec::new();
    for item in rates.try_iter().map_err(|_| {
        PyTypeError::new_err("rates must be a rate string, a Rate, or a list of them")
    })? {
        out.extend(rates_from(py, &item?)?);
    }
    Ok(out)
}

/// The outcome of a check: truthy when allowed.
#[pyclass(name = "Decision", module = "tollgate", frozen)]
pub(crate) struct PyDecision {
    pub(crate) d: tollgate::Decision,
}

impl PyDecision {
    pub(crate) fn new(d: tollgate::Decision) -> Self {
        PyDecision { d }
    }
}

#[pymethods]
impl PyDecision {
    /// Whether the cost was admitted (and, for `check`, charged).
    #[getter]
    fn allowed(&self) -> bool {
        self.d.allowed
    }
    /// The binding rate's capacity.
    #[getter]
    fn limit(&self) -> u64 {
        self.d.limit
    }
    /// What is left of that capacity.
    #[getter]
    fn remaining(&self) -> u64 {
        self.d.remaining
    }
    /// Seconds to wait before the same cost would be admitted (0.0 when allowed).
    #[getter]
    fn retry_after(&self) -> f64 {
        self.d.retry_after.as_secs_f64()
    }
    /// `retry_after` in whole microseconds (exact).
    #[getter]
    fn retry_after_us(&self) -> u64 {
        self.d.retry_after.as_micros() as u64
    }
    /// Seconds until the key is back to completely fresh.
    #[getter]
    fn reset_after(&self) -> f64 {
        self.d.reset_after.as_secs_f64()
    }
    /// `reset_after` in whole microseconds (exact).
    #[getter]
    fn reset_after_us(&self) -> u64 {
        self.d.reset_after.as_micros() as u64
    }
    /// When the key is back to fresh, as a UNIX timestamp (seconds, of the limiter's clock).
    #[getter]
    fn reset_at(&self) -> f64 {
        self.d
            .reset_at()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
    /// `None` when allowed; else the index (in the limiter's rates) of the rate that denied.
    #[getter]
    fn denied_by(&self) -> Option<usize> {
        self.d.denied_by
    }
    fn __bool__(&self) -> bool {
        self.d.allowed
    }
    fn __repr__(&self) -> String {
        format!(
            "Decision(allowed={}, limit={}, remaining={}, retry_after={:?}, reset_after={:?}, denied_by={})",
            if self.d.allowed { "True" } else { "False" },
            self.d.limit,
            self.d.remaining,
            self.d.retry_after.as_secs_f64(),
            self.d.reset_after.as_secs_f64(),
            self.d.denied_by.map_or("None".to_string(), |i| i.to_string()),
        )
    }
}

/// A clock that moves only when told: for tests, including the waits of `acquire`.
#[pyclass(name = "ManualClock", module = "tollgate", frozen)]
pub(crate) struct PyManualClock {
    pub(crate) clock: ManualClock,
}

#[pymethods]
impl PyManualClock {
    /// `ManualClock(start_us=0, *, auto_advance=False)`; with `auto_advance`, every wait
    /// advances the clock at once instead of sleeping.
    #[new]
    #[pyo3(signature = (start_us=0, *, auto_advance=false))]
    fn new(start_us: u64, auto_advance: bool) -> Self {
        let clock = if auto_advance {
            ManualClock::auto_advance(start_us)
        } else {
            ManualClock::new(start_us)
        };
        PyManualClock { clock }
    }
    /// The time in microseconds.
    #[getter]
    fn now_us(&self) -> u64 {
        self.clock.now()
    }
    /// The time in seconds.
    #[getter]
    fn now(&self) -> f64 {
        self.clock.now() as f64 / 1e6
    }
    /// Moves the clock forward by `seconds` (wakes waits that are due).
    fn advance(&self, py: Python<'_>, seconds: f64) -> PyResult<()> {
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(errors::config(
                py,
                "advance() takes a finite, non-negative number of seconds",
            ));
        }
        self.clock
            .advance(Duration::from_micros((seconds * 1e6).round() as u64));
        Ok(())
    }
    /// Moves the clock forward by `us` microseconds.
    fn advance_us(&self, us: u64) {
        self.clock.advance(Duration::from_micros(us));
    }
    /// Sets the time to `t_us` (never backwards).
    fn set_us(&self, t_us: u64) {
        self.clock.set(t_us);
    }
    fn __repr__(&self) -> String {
        format!("ManualClock(now_us={})", self.clock.now())
    }
}
