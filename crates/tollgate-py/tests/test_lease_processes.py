"""Local leases across OS processes (real redis-server, Redis Cluster, PostgreSQL, SQLite): a
frozen quota is admitted exactly, never more, and every process gives its unused units back
when it exits (atexit, and the exit finalizers of multiprocessing children)."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import textwrap
import time

import pytest

from procutil import free_units
from tollgate import Lease, Limiter, Store

QUOTA = 2000
RATE = f"{QUOTA} per 28 days"  # one unit every ~20 minutes: frozen for the test's length
PROCESSES = 4

# A worker process: WORKERS threads (or asyncio tasks) on one key of one leased limiter.
# Mode "drain": every worker calls until it is denied; "fixed": CALLS calls each. Prints one
# JSON line, waits for a line on stdin, then exits normally (the exit hook flushes).
WORKER = textwrap.dedent(
    """
    import asyncio, ctypes, json, sys, threading
    from tollgate import Lease, Limiter, Store

    url, ns, algorithm, api, mode, workers, calls, duration = sys.argv[1:9]
    workers, calls, duration = int(workers), int(calls), float(duration)
    # A generous store timeout: 16 callers on one row of a loaded machine's database.
    store = Store(url, namespace=ns, timeout=30)
    limiter = Limiter(RATE, algorithm=algorithm, store=store,
                      lease=Lease(max_batch=50, min_batch=4, duration=duration))
    counts = [0] * workers
    # Keep the limiter alive through interpreter finalization (as a module-level object may
    # be): only the package's exit hook gives its batches back then, not its drop.
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(limiter))

    def thread(i):
        while mode == "drain" or counts[i] < calls:
            d = limiter.check("hot")
            if not d.allowed:
                assert mode == "drain", d
                break
            counts[i] += 1

    async def task(i):
        while mode == "drain" or counts[i] < calls:
            d = await limiter.check_async("hot")
            if not d.allowed:
                assert mode == "drain", d
                break
            counts[i] += 1

    async def tasks():
        await asyncio.gather(*(task(i) for i in range(workers)))

    if api == "async":
        asyncio.run(tasks())
    else:
        ts = [threading.Thread(target=thread, args=(i,)) for i in range(workers)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    print(json.dumps({"admitted": sum(counts), "held": limiter.lease_held}), flush=True)
    sys.stdin.readline()
    """
).replace("RATE", repr(RATE))


@pytest.fixture(params=["redis", "cluster", "postgres", "sqlite"])
def shared_url(request, tmp_path):
    if request.param == "redis":
        return request.getfixturevalue("redis_server").url
    if request.param == "cluster":
        return request.getfixturevalue("redis_cluster")
    if request.param == "postgres":
        return request.getfixturevalue("database_url")
    return f"sqlite://{tmp_path}/lease.db"


def run_fleet(
    url: str,
    ns: str,
    algorithm: str,
    api: str,
    mode: str,
    workers: int,
    calls: int,
    duration: float,
):
    """Starts the processes, waits for their reports, returns (reports, free units while
    they are alive, free units after they exited)."""
    args = [url, ns, algorithm, api, mode, str(workers), str(calls), str(duration)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        reports = [json.loads(p.stdout.readline()) for p in procs]
        alive = free_units(url, ns, RATE, algorithm=algorithm)
        for p in procs:
            p.stdin.write("\n")
            p.stdin.flush()
        for p in procs:
            assert p.wait(60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return reports, alive, free_units(url, ns, RATE, algorithm=algorithm)


@pytest.mark.parametrize("algorithm", ["gcra", "token_bucket"])
@pytest.mark.parametrize("api", ["threads", "async"])
def test_a_frozen_quota_is_admitted_exactly(shared_url, unique, algorithm, api):
    reports, _, after = run_fleet(shared_url, unique, algorithm, api, "drain", 4, 0, 0.05)
    admitted = sum(r["admitted"] for r in reports)
    # Every worker called until denied: the units held in batches were all spent by their
    # owners, so the fleet admitted the whole quota, and never more.
    assert admitted == QUOTA
    assert after == 0
    assert all(r["held"] == 0 for r in reports)


@pytest.mark.parametrize("algorithm", ["gcra", "token_bucket"])
def test_unused_units_go_back_when_the_processes_exit(shared_url, unique, algorithm):
    calls = 60  # 4 processes x 4 threads x 60 = 960 of 2000
    # Leases of 60 s: no batch ends (and is given back by the sweep) before the exit.
    reports, alive, after = run_fleet(
        shared_url, unique, algorithm, "threads", "fixed", 4, calls, 60
    )
    admitted = sum(r["admitted"] for r in reports)
    held = sum(r["held"] for r in reports)
    assert admitted == PROCESSES * 4 * calls
    # While they live, the batches they hold are charged in the store...
    assert held > 0
    assert alive == QUOTA - admitted - held
    # ...and at exit every process gave its batches back: exactly the admitted calls remain
    # charged.
    assert after == QUOTA - admitted


def _mp_worker(url: str, ns: str, queue) -> None:
    import ctypes

    lease = Lease(max_batch=50, min_batch=4, duration=60)
    limiter = Limiter(RATE, store=Store(url, namespace=ns, timeout=30), lease=lease)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(limiter))  # alive at exit, as above
    admitted = sum(limiter.check("hot").allowed for _ in range(100))
    queue.put((admitted, limiter.lease_held))
    # No flush here: the child ends with os._exit, the package's exit finalizer gives back.


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_children_give_back_at_exit(redis_server, unique, method):
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_mp_worker, args=(redis_server.url, unique, queue))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(a for a, _ in results) == PROCESSES * 100
    assert sum(h for _, h in results) > 0  # they held batches when they finished
    assert free_units(redis_server.url, unique, RATE) == QUOTA - PROCESSES * 100


EXIT_RIGHT_AFTER_LEASED_AWAITS = """
import asyncio, sys, tollgate

LEASE = tollgate.Lease(max_batch=100, min_batch=4)
limiter = tollgate.Limiter("2000 per 28 days", store=tollgate.Store(sys.argv[1], namespace=sys.argv[2], timeout=30),
                           lease=LEASE)

async def main():
    await asyncio.gather(*(limiter.check_async("hot") for i in range(100)))

asyncio.run(main())  # and exit at once: the exit hook gives the batch back, then quiesces
"""


def test_exit_right_after_leased_awaits_never_crashes(redis_server, unique, tmp_path):
    script = tmp_path / "exit_after_leased_awaits.py"
    script.write_text(EXIT_RIGHT_AFTER_LEASED_AWAITS)
    runs = []
    for _ in range(3):
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), redis_server.url, unique],
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        runs += [(p.wait(60), p.stderr.read()) for p in procs]
    assert runs == [(0, "")] * len(runs)
    # 12 processes x 100 calls, every batch given back at exit.
    assert free_units(redis_server.url, unique, RATE) == QUOTA - 12 * 100


STORE_DOWN_AT_EXIT = """
import sys, tollgate

limiter = tollgate.Limiter("1000 per 28 days", store=tollgate.Store(sys.argv[1], timeout=0.5),
                           lease=tollgate.Lease(max_batch=100, min_batch=4, duration=60))
assert all(limiter.check("hot") for _ in range(50))
print(limiter.lease_held, flush=True)
sys.stdin.readline()  # the parent stops Redis now
"""


def test_a_store_down_at_exit_neither_hangs_nor_raises(tmp_path):
    from conftest import RedisServer

    server = RedisServer()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", STORE_DOWN_AT_EXIT, server.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert int(proc.stdout.readline()) > 0
    finally:
        server.stop()
    start = time.monotonic()
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(30) == 0
    assert time.monotonic() - start < 10  # the exit hook waits at most 5 s for the store
    assert proc.stderr.read() == ""
