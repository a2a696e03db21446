//! The one tokio runtime behind every awaitable, the asyncio bridge, and fork handling.
//!
//! An awaitable is an `asyncio.Future` created on the caller's running loop; the library's
//! async call runs as a task on this runtime (no thread per call) and completes the future
//! through `loop.call_soon_threadsafe`. Cancelling the future aborts the task, which drops
//! the library's future: the library guarantees that a dropped `acquire_async` charges
//! nothing.
//!
//! After `fork()`, the child has none of the parent's threads: `after_fork_in_child`
//! (registered with `os.register_at_fork`) bumps [`FORK_GEN`], and every object that owns
//! threads or connections (this runtime, Redis/SQL stores) is rebuilt on its next use in the
//! child; the parent's copies are leaked, never dropped (dropping would join threads that do
//! not exist in the child).

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::runtime::Runtime;
use tokio::task::AbortHandle;

/// Incremented in the child after every `fork()`.
pub(crate) static FORK_GEN: AtomicU64 = AtomicU64::new(0);

static RUNTIME: Mutex<Option<(u64, Arc<Runtime>)>> = Mutex::new(None);

/// The fork generation of this process.
pub(crate) fn fork_gen() -> u64 {
    FORK_GEN.load(Ordering::Acquire)
}

/// Set by [`_quiesce`] (at interpreter exit): runtime threads no longer enter Python.
static EXITING: AtomicBool = AtomicBool::new(false);
/// Runtime threads inside [`attach_unless_exiting`] now.
static IN_PYTHON: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` with the GIL from a runtime thread, unless the interpreter is exiting.
///
/// A thread that waits for the GIL once Python is finalizing is ended by `pthread_exit`,
/// which aborts the process when it unwinds through Rust frames. That happened when a
/// program's last await was a tollgate call: the loop saw the result (queued by
/// `call_soon_threadsafe`) and Python began to exit while this thread was still inside
/// `call_soon_threadsafe`, writing to the loop's wake-up socket with the GIL released.
/// [`_quiesce`] (an `atexit` callback, run before finalization) waits for such threads.
pub(crate) fn attach_unless_exiting(f: impl for<'py> FnOnce(Python<'py>)) {
    IN_PYTHON.fetch_add(1, Ordering::SeqCst);
    if !EXITING.load(Ordering::SeqCst) {
        Python::attach(f);
    }
    IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
}

/// Called at interpreter exit (`atexit`): stops runtime threads from entering Python and
/// waits (at most 2 s, the GIL released) for those inside it to leave.
#[pyfunction]
pub(crate) fn _quiesce(py: Python<'_>) {
    EXITING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while IN_PYTHON.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    });
}

/// Called in the child after `fork()` (from `os.register_at_fork`).
#[pyfunction]
pub(crate) fn _after_fork_in_child() {
    FORK_GEN.fetch_add(1, Ordering::AcqRel);
}

/// The runtime of this process (built on first use, and again in a forked child).
pub(crate) fn runtime() -> PyResult<Arc<Runtime>> {
    let gen = fork_gen();
    let mut slot = RUNTIME.lock();
    if let Some((g, rt)) = slot.as_ref() {
        if *g == gen {
            return Ok(Arc::clone(rt));
        }
    }
    if let Some((_, stale)) = slot.take() {
        // The parent's runtime: its threads do not exist here.
        std::mem::forget(stale);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tollgate-py")
        .enable_all()
        .build()
        .map_err(|e| {
            pyo3::exceptions::PyRuntimeError::new_err(format!("cannot start a runtime: {e}"))
        })?;
    let rt = Arc::new(rt);
    *slot = Some((gen, Arc::clone(&rt)));
    Ok(rt)
}

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static RESOLVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Cancels the task of an awaitable when its future is cancelled (a done callback).
#[pyclass(frozen)]
struct Canceller {
    handle: AbortHandle,
}

#[pymethods]
impl Canceller {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.handle.abort();
        }
        Ok(())
    }
}

/// A future of the running asyncio loop, completed with `convert(fut.await)`.
pub(crate) fn spawn<'py, F, T>(
    py: Python<'py>,
    fut: F,
    convert: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let get_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?;
    let event_loop = get_loop.call0()?;
    let py_future = event_loop.call_method0("create_future")?;
    let future_ref = py_future.clone().unbind();
    let loop_ref = event_loop.unbind();
    let rt = runtime()?;
    let task = rt.spawn(async move {
        let out = fut.await;
        attach_unless_exiting(|py| {
            let (ok, value) = match convert(py, out) {
                Ok(v) => (true, v),
                Err(e) => (false, e.into_value(py).into_any()),
            };
            let done = RESOLVE
                .import(py, "tollgate._aio", "resolve")
                .and_then(|resolve| {
                    loop_ref.call_method1(
                        py,
                        "call_soon_threadsafe",
                        (resolve, future_ref, ok, value),
                    )
                });
            // A closed loop cannot be told; nobody is waiting any more.
            drop(done);
        });
    });
    let canceller = Canceller {
        handle: task.abort_handle(),
    };
    py_future.call_method1("add_done_callback", (canceller,))?;
    Ok(py_future)
}

/// A future of the running loop that is already complete.
pub(crate) fn ready<'py>(
    py: Python<'py>,
    value: PyResult<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let get_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?;
    let py_future = get_loop.call0()?.call_method0("create_future")?;
    match value {
        Ok(v) => py_future.call_method1("set_result", (v,))?,
        Err(e) => py_future.call_method1("set_exception", (e.into_value(py),))?,
    };
    Ok(py_future)
}
