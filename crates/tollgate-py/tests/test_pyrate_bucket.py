"""tollgate.pyrate.TollgateBucket (PyrateLimiter 4.5's AbstractBucket on tollgate's stores) and
Limiter.log, the sliding-log read it is built on. PyrateLimiter's own suite runs against the
bucket in scripts/test (tests/pyrate_suite/run_pyrate_suite.py)."""

from __future__ import annotations

import asyncio

import pytest

import tollgate
from tollgate import Limiter, ManualClock, Store

pyrate_limiter = pytest.importorskip("pyrate_limiter")
from pyrate_limiter import Duration, Rate, RateItem  # noqa: E402

from tollgate.pyrate import TollgateBucket  # noqa: E402


@pytest.fixture(params=["memory", "redis", "cluster", "sqlite", "postgres"])
def store(request, tmp_path, unique):
    if request.param == "memory":
        return Store()
    if request.param == "redis":
        return Store(request.getfixturevalue("redis_server").url, namespace=unique, time="caller")
    if request.param == "cluster":
        return Store(request.getfixturevalue("redis_cluster"), namespace=unique, time="caller")
    if request.param == "sqlite":
        return Store(f"sqlite://{tmp_path}/pyrate.db")
    return Store(request.getfixturevalue("database_url"), namespace=unique, time="caller")


def test_log_reads_the_sliding_log(store):
    clock = ManualClock(1_800_000_000_000_000)
    limiter = Limiter("5/s; 8/2s", algorithm="sliding_log", store=store, clock=clock)
    assert limiter.log("k") == []
    t0 = clock.now_us
    assert limiter.check("k", 2) and limiter.check("k", 1)
    clock.advance(0.5)
    assert limiter.check("k", 2)
    assert not limiter.check("k", 1)  # a denial adds nothing
    assert limiter.log("k") == [(t0, 3), (t0 + 500_000, 2)]
    clock.advance(1.5)  # t0 + 2 s: the first entry has left every window
    assert limiter.log("k") == [(t0 + 500_000, 2)]
    assert asyncio.run(limiter.log_async("k")) == [(t0 + 500_000, 2)]
    limiter.reset("k")
    assert limiter.log("k") == []


def test_log_needs_a_sliding_log(tmp_path):
    with pytest.raises(tollgate.InvalidKey, match="sliding_log"):
        Limiter("5/s").log("k")
    with pytest.raises(tollgate.InvalidKey):
        Limiter("5/s", algorithm="sliding_log").log("x" * 5000)
    # Through a failure policy the log is read from the store itself.
    safe = Limiter("5/s", algorithm="sliding_log", store=Store(f"sqlite://{tmp_path}/f.db", failure="open"))
    assert safe.check("k", 2) and [w for _, w in safe.log("k")] == [2]
    with pytest.raises(tollgate.ConfigError, match="time"):
        Store("memory", time="local")


def test_bucket_under_pyrate_limiter(store):
    bucket = TollgateBucket([Rate(3, Duration.SECOND), Rate(5, 2 * Duration.SECOND)], store)
    limiter = pyrate_limiter.Limiter(bucket)
    assert [limiter.try_acquire("job", blocking=False) for _ in range(4)] == [True] * 3 + [False]
    assert bucket.count() == 3
    assert bucket.failing_rate == bucket.rates[0]
    newest = bucket.peek(0)
    assert newest is not None and bucket.peek(3) is None
    assert 0 < bucket.waiting(RateItem("job", bucket.now())) <= 1001
    bucket.flush()
    assert bucket.count() == 0 and bucket.failing_rate is None


def test_bucket_decides_like_pyrate_at_item_timestamps():
    """Closed windows and PyrateLimiter's waits, at the items' own (millisecond) times."""
    rates = [Rate(3, 1000)]
    ours = TollgateBucket(rates)
    theirs = pyrate_limiter.InMemoryBucket(rates)
    t = ours.now()
    for offset, weight in [(0, 1), (10, 1), (20, 1), (30, 1), (1000, 1), (1001, 1), (1010, 2),
                           (2009, 1), (2010, 3), (2020, 1), (3100, 4)]:
        item = RateItem("x", t + offset, weight)
        assert ours.put(item) == theirs.put(RateItem("x", t + offset, weight)), offset
        assert ours.failing_rate == theirs.failing_rate, offset
        if ours.failing_rate is not None and weight <= 3:
            assert ours.waiting(item) == theirs.waiting(item), offset
