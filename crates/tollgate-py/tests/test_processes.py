"""Several processes on one key never over-admit; a store created before fork() works in
the child (pre-fork servers such as gunicorn)."""

from __future__ import annotations

import asyncio
import multiprocessing

import pytest

from procutil import in_child
from tollgate import Limiter, Semaphore, Store


def _hammer(url: str, namespace: str, n: int, queue) -> None:
    limiter = Limiter("25/minute", algorithm="sliding_log", store=Store(url, namespace=namespace))
    queue.put(sum(limiter.check("shared").allowed for _ in range(n)))


@pytest.fixture(params=["redis", "sqlite", "postgres"])
def shared_url(request, tmp_path):
    if request.param == "redis":
        return request.getfixturevalue("redis_server").url
    if request.param == "postgres":
        return request.getfixturevalue("database_url")
    return f"sqlite://{tmp_path}/procs.db"


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_processes_on_one_key_never_over_admit(shared_url, unique, method):
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(shared_url, unique, 15, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    admitted = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sum(admitted) == 25


def test_redis_store_created_before_fork_works_in_the_child(redis_server, unique):
    limiter = Limiter("3/minute", store=Store(redis_server.url, namespace=unique))
    assert limiter.check("k").allowed  # connected and used in the parent

    def child():
        sync = limiter.check("k").remaining
        d = asyncio.run(limiter.check_async("k"))  # a new runtime in the child too
        return [sync, d.remaining]

    assert in_child(child) == {"ok": [1, 0]}
    assert not limiter.check("k").allowed  # the child's charges are in Redis, seen by all
    assert limiter.check("other").allowed  # the parent's connection still works


def test_sqlite_and_postgres_stores_created_before_fork(tmp_path, database_url, unique):
    for url in (f"sqlite://{tmp_path}/fork.db", database_url):
        limiter = Limiter("2/minute", store=Store(url, namespace=unique))
        assert limiter.check("k").allowed
        assert in_child(lambda: limiter.check("k").remaining) == {"ok": 0}
        assert not limiter.check("k").allowed


def test_memory_state_is_copied_at_fork_and_then_per_process():
    limiter = Limiter("3/minute")
    limiter.check("k")

    def child():
        return [limiter.check("k").remaining, limiter.check("k").remaining]

    assert in_child(child) == {"ok": [1, 0]}  # the child starts from the parent's state
    assert limiter.check("k").remaining == 1  # the child's charges stayed in the child


def test_redis_semaphore_created_before_fork(redis_server, unique):
    sem = Semaphore(unique, 1, max_wait=0, store=Store(redis_server.url, namespace=unique))
    held = sem.acquire()

    def child():
        return sem.try_acquire() is None

    assert in_child(child) == {"ok": True}  # the parent's permit is seen from the child
    held.release()


EXIT_RIGHT_AFTER_AWAITS = """
import asyncio, sys, tollgate

async def main():
    limiter = tollgate.Limiter("1000000/s", store=tollgate.Store(sys.argv[1], namespace=sys.argv[2]))
    await asyncio.gather(*(limiter.check_async(f"k{i}") for i in range(300)))

asyncio.run(main())  # and exit at once, while runtime threads may still be waking the loop
"""


def test_exit_right_after_awaits_never_aborts(redis_server, unique, tmp_path):
    # Regression: a runtime thread inside call_soon_threadsafe when Python began to exit was
    # ended by pthread_exit while running Rust code: SIGABRT (about 1 exit in 20 or 30).
    import subprocess
    import sys

    script = tmp_path / "exit_after_awaits.py"
    script.write_text(EXIT_RIGHT_AFTER_AWAITS)
    codes = []
    for _ in range(4):
        procs = [subprocess.Popen([sys.executable, str(script), redis_server.url, unique])
                 for _ in range(6)]
        codes += [p.wait(60) for p in procs]
    assert codes == [0] * len(codes)
