"""The Limiter on the memory store: every algorithm, every operation, every bad input."""

from __future__ import annotations

import datetime
import sys
import threading
import time

import pytest

import tollgate
from tollgate import Limiter, ManualClock, Rate

ALGORITHMS = ["gcra", "token_bucket", "sliding_log", "sliding_window", "fixed_window"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_admits_the_limit_then_denies(algorithm):
    clock = ManualClock(1_000_000_000_000)
    limiter = Limiter("3/s", algorithm=algorithm, clock=clock)
    decisions = [limiter.check("k") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    denied = decisions[3]
    assert denied.limit == 3 and denied.denied_by == 0
    assert 0 < denied.retry_after <= 2.0  # the sliding window weighs the previous window
    assert denied.retry_after_us > 0
    assert not denied and decisions[0]
    assert limiter.algorithm == algorithm


def test_decision_fields():
    clock = ManualClock(1_700_000_000_000_000)
    limiter = Limiter("2/s", clock=clock)
    d = limiter.check("a")
    assert (d.allowed, d.limit, d.remaining, d.retry_after, d.denied_by) == (True, 2, 1, 0.0, None)
    assert d.reset_after == pytest.approx(0.5)
    assert d.reset_at == pytest.approx(1_700_000_000.5)
    assert "allowed=True" in repr(d)


def test_rate_strings_and_objects():
    assert Limiter("10/s; 1000/hour").rates == [Rate.parse("10/s"), Rate(1000, 3600)]
    assert Limiter([Rate(5, 1), "100/minute"]).rates[1].limit == 100
    assert Rate(10, datetime.timedelta(minutes=1)).period_us == 60_000_000
    assert Rate(1, 0.25).period == 0.25
    assert Rate(10, 1, burst=20).burst == 20
    assert str(Rate.parse("500 per 7 days")) == str(Rate(500, datetime.timedelta(days=7)))
    # PyrateLimiter's headline example and the long quotas people write.
    assert len(Limiter("500/hour; 1000/day; 10000 per 4 weeks", algorithm="sliding_log").rates) == 3
    for quota in ["100000/day", "1500000/hour", "10000 per 28 days", "1000000000 per 365 days"]:
        Limiter(quota).check("k")


@pytest.mark.parametrize(
    "rates, kwargs",
    [
        ("0/s", {}),
        ("10/0s", {}),
        ("ten per second", {}),
        ("", {}),
        ("5/s; 1000/min", {"algorithm": "sliding_log"}),
        ("10/s burst 20", {"algorithm": "fixed_window"}),
        ("10/s", {"algorithm": "leaky"}),
        ("10/s", {"algorithm": "token_bucket", "initial_tokens": 11}),
    ],
)
def test_bad_policies_raise_invalid_rate(rates, kwargs):
    with pytest.raises(tollgate.InvalidRate) as e:
        Limiter(rates, **kwargs)
    assert isinstance(e.value, tollgate.TollgateError) and isinstance(e.value, ValueError)
    assert str(e.value)


def test_bad_rate_arguments():
    with pytest.raises(tollgate.InvalidRate):
        Rate(0, 1)
    with pytest.raises(tollgate.ConfigError):
        Rate(1, -1.0)
    with pytest.raises(tollgate.ConfigError):
        Rate(1, float("nan"))
    with pytest.raises(tollgate.ConfigError):
        Rate(1)
    with pytest.raises(TypeError):
        Rate(1, "soon")
    with pytest.raises(TypeError):
        Limiter(42)
    with pytest.raises(OverflowError):
        Rate(-1, 1)


def test_bad_calls_never_charge():
    limiter = Limiter("5/s", clock=ManualClock(10**12))
    with pytest.raises(tollgate.CostExceedsCapacity) as e:
        limiter.check("k", 6)
    assert (e.value.cost, e.value.capacity) == (6, 5)
    with pytest.raises(tollgate.InvalidCost):
        limiter.check("k", 0)
    with pytest.raises(tollgate.InvalidCost):
        limiter.check("k", -3)
    with pytest.raises(tollgate.InvalidCost):
        limiter.refund("k", 0)
    with pytest.raises(tollgate.InvalidKey):
        limiter.check("x" * 2000)
    with pytest.raises(tollgate.CostExceedsCapacity):
        limiter.acquire("k", 6, timeout=None)  # never an endless wait
    assert limiter.peek("k").remaining == 4  # nothing was charged
    with pytest.raises(TypeError):
        limiter.check(None)


def test_peek_reset_refund():
    limiter = Limiter("3/s", clock=ManualClock(10**12))
    assert limiter.peek("k", 3).allowed and limiter.peek("k").remaining == 2
    limiter.check("k", 3)
    assert not limiter.peek("k").allowed
    limiter.refund("k", 2)
    assert limiter.check("k", 2).allowed
    limiter.reset("k")
    assert limiter.check("k", 3).remaining == 0


def test_multi_rate_is_all_or_nothing():
    clock = ManualClock(10**12)
    limiter = Limiter("2/s; 3/minute", algorithm="sliding_log", clock=clock)
    assert limiter.check("k", 2).allowed
    clock.advance(1.0)
    denied = limiter.check("k", 2)  # 2/s admits it, 3/minute does not
    assert not denied.allowed and denied.denied_by == 1
    assert limiter.check("k", 1).remaining == 0  # the denial charged nothing


def test_acquire_waits_on_the_clock_and_times_out():
    clock = ManualClock(10**12, auto_advance=True)
    limiter = Limiter("1/s", clock=clock)
    limiter.acquire("k")
    start = clock.now_us
    assert limiter.acquire("k", timeout=5).allowed
    assert clock.now_us - start == 1_000_000  # slept exactly the retry_after
    with pytest.raises(tollgate.RateLimitExceeded) as e:
        limiter.acquire("k", timeout=0.5)
    assert e.value.retry_after == pytest.approx(1.0)
    with pytest.raises(tollgate.ConfigError):
        limiter.acquire("k", timeout=-1)


def test_acquire_releases_the_gil_while_waiting():
    limiter = Limiter("1/s burst 1")
    limiter.check("k")
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    t = threading.Thread(target=ticker)
    t.start()
    started = time.monotonic()
    limiter.acquire("k", timeout=2)
    stop.set()
    t.join()
    assert time.monotonic() - started > 0.8
    assert len(ticks) > 30  # the other thread ran during the wait


def test_limit_context_manager_and_decorators():
    clock = ManualClock(10**12)
    limiter = Limiter("3/s", clock=clock)
    with limiter.limit("ctx", cost=2) as d:
        assert d.remaining == 1
    with pytest.raises(tollgate.RateLimitExceeded):
        with limiter.limit("ctx", cost=2, timeout=0):
            pytest.fail("must not run")

    calls = []

    @limiter.decorate(key=lambda user, n=1: f"user:{user}", cost=lambda user, n=1: n, timeout=0)
    def fetch(user, n=1):
        calls.append((user, n))
        return n * 10

    assert fetch("a", n=2) == 20
    assert fetch("a") == 10
    with pytest.raises(tollgate.RateLimitExceeded):
        fetch("a")
    assert fetch("b", n=3) == 30
    assert calls == [("a", 2), ("a", 1), ("b", 3)]
    assert fetch.__name__ == "fetch"

    @limiter.decorate(timeout=0)
    def plain():
        return "ok"

    assert [plain() for _ in range(3)] == ["ok"] * 3
    with pytest.raises(tollgate.RateLimitExceeded):
        plain()


def test_hooks_observe_and_never_change_the_verdict(monkeypatch):
    seen = []
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(u.exc_value))

    def on_allow(key, d):
        seen.append(("allow", key, d.remaining))

    def on_block(key, d):
        seen.append(("block", key, d.retry_after > 0))
        raise RuntimeError("a broken hook")  # reported as unraisable, verdict unchanged

    limiter = Limiter("1/s", on_allow=on_allow, on_block=on_block, clock=ManualClock(10**12))
    assert limiter.check("k").allowed
    assert not limiter.check("k").allowed
    assert seen == [("allow", "k", 0), ("block", "k", True)]
    assert [str(e) for e in unraisable] == ["a broken hook"]


def test_threads_never_over_admit():
    limiter = Limiter("100/minute", algorithm="sliding_log")
    admitted = []
    lock = threading.Lock()

    def worker():
        n = sum(limiter.check("shared").allowed for _ in range(50))
        with lock:
            admitted.append(n)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 100


def test_limiters_on_one_store_share_state():
    store = tollgate.Store("memory")
    a = Limiter("2/s", store=store)
    b = Limiter("2/s", store=store)
    c = Limiter("2/s")  # its own private store
    assert a.check("k", 2).allowed
    assert not b.check("k").allowed
    assert c.check("k").allowed


def test_namespace_and_hmac_on_memory():
    store = tollgate.Store("memory", namespace="app", hmac_secret=b"s3cret")
    limiter = Limiter("1/s", store=store)
    assert limiter.check("203.0.113.7").allowed
    assert not limiter.check("203.0.113.7").allowed
    with pytest.raises(tollgate.ConfigError):
        tollgate.Store("memory", hmac_secret="")
    with pytest.raises(tollgate.ConfigError):
        tollgate.Store("memory", namespace="a{b}")


@pytest.mark.parametrize(
    "url",
    ["mysql://x", "redis+cluster://", "sqlite://", "", "http://127.0.0.1"],
)
def test_bad_store_urls(url):
    with pytest.raises(tollgate.ConfigError):
        tollgate.Store(url)


def test_bad_store_options():
    with pytest.raises(tollgate.ConfigError):
        tollgate.Store("memory", failure="sometimes")
    with pytest.raises(tollgate.ConfigError):
        tollgate.Store("memory", timeout=0)
    with pytest.raises(TypeError):
        tollgate.Store("memory", hmac_secret=3)
    with pytest.raises(TypeError):
        Limiter("1/s", store=3)
