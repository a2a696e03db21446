"""Local leases for hot keys (``Limiter(..., lease=Lease(...))``) in one process: quiet keys
are untouched, hot keys are decided from batches that flush gives back, bad options are
ConfigErrors, and the async API works with leases too."""

from __future__ import annotations

import asyncio
import math
import os

import pytest

import tollgate
from procutil import free_units, in_child
from tollgate import ConfigError, Lease, Limiter, Store


def test_lease_options_and_defaults():
    lease = Lease()
    assert (lease.max_batch, lease.min_batch, lease.duration, lease.max_keys) == (
        1000,
        16,
        0.1,
        10000,
    )
    assert Lease(max_batch=8).min_batch == 8  # a small max_batch lowers the default min_batch
    custom = Lease(max_batch=200, min_batch=4, duration=0.25, max_keys=50)
    assert (custom.max_batch, custom.min_batch, custom.duration, custom.max_keys) == (
        200,
        4,
        0.25,
        50,
    )
    assert custom == Lease(max_batch=200, min_batch=4, duration=0.25, max_keys=50) != lease
    assert len({custom, Lease(max_batch=200, min_batch=4, duration=0.25, max_keys=50)}) == 1
    assert repr(custom) == "Lease(max_batch=200, min_batch=4, duration=0.25, max_keys=50)"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch": 1},
        {"max_batch": 0},
        {"max_batch": -5},
        {"min_batch": 1},
        {"min_batch": -1},
        {"max_batch": 100, "min_batch": 500},
        {"duration": 0},
        {"duration": 0.0001},
        {"duration": -1},
        {"duration": math.nan},
        {"duration": math.inf},
        {"duration": 1e300},
        {"duration": 86_401},
        {"max_keys": 0},
        {"max_keys": -1},
    ],
)
def test_bad_lease_values_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        Lease(**kwargs)


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "sliding_log"])
def test_window_algorithms_refuse_leases(redis_server, unique, algorithm):
    with pytest.raises(ConfigError, match=algorithm):
        Limiter(
            "100/s",
            algorithm=algorithm,
            store=Store(redis_server.url, namespace=unique),
            lease=Lease(),
        )
    with pytest.raises(ConfigError):
        Limiter("100/s", algorithm=algorithm, store=redis_server.url, lease=True)


def test_the_memory_store_refuses_leases():
    with pytest.raises(ConfigError, match="shared store"):
        Limiter("100/s", lease=Lease())
    with pytest.raises(ConfigError, match="shared store"):
        Limiter("100/s", store="memory", lease=True)


def test_lease_argument_types(redis_server, unique):
    store = Store(redis_server.url, namespace=unique)
    assert Limiter("10/s", store=store, lease=True).lease == Lease()
    assert Limiter("10/s", store=store, lease=False).lease is None
    assert Limiter("10/s", store=store).lease is None
    with pytest.raises(TypeError):
        Limiter("10/s", store=store, lease="yes")
    with pytest.raises(TypeError):
        Limiter("10/s", store=store, lease={"max_batch": 10})


@pytest.mark.parametrize("algorithm", ["gcra", "token_bucket"])
def test_a_quiet_key_behaves_exactly_as_without_a_lease(redis_server, unique, algorithm):
    store = Store(redis_server.url, namespace=unique)
    leased = Limiter("1000/hour", algorithm=algorithm, store=store, lease=Lease())
    plain = Limiter("1000/hour", algorithm=algorithm, store=store)
    for i in range(10):  # a demand of 10 < min_batch 16: never leased
        a, b = leased.check("quiet-a"), plain.check("quiet-b")
        assert (
            (a.allowed, a.remaining, a.limit)
            == (b.allowed, b.remaining, b.limit)
            == (True, 999 - i, 1000)
        )
        assert free_units(redis_server.url, unique, "1000/hour", "quiet-a", algorithm) == 999 - i
    assert leased.lease_held == 0


def test_a_hot_key_of_a_small_quota_is_never_leased(redis_server, unique):
    # Capacity 5 < min_batch 16: every call goes to the store and gets its decision.
    store = Store(redis_server.url, namespace=unique)
    leased, plain = Limiter("5/minute", store=store, lease=True), Limiter("5/minute", store=store)
    got = [(d.allowed, d.remaining) for d in (leased.check("a") for _ in range(8))]
    want = [(d.allowed, d.remaining) for d in (plain.check("b") for _ in range(8))]
    assert got == want == [(True, 4), (True, 3), (True, 2), (True, 1), (True, 0)] + [(False, 0)] * 3
    assert leased.lease_held == 0


@pytest.mark.parametrize("algorithm", ["gcra", "token_bucket"])
def test_a_hot_key_is_decided_from_a_batch_and_flush_gives_it_back(redis_server, unique, algorithm):
    rate = "1000 per 28 days"
    store = Store(redis_server.url, namespace=unique)
    limiter = Limiter(
        rate, algorithm=algorithm, store=store, lease=Lease(max_batch=100, min_batch=4)
    )
    assert all(limiter.check("hot") for _ in range(200))
    held = limiter.lease_held
    assert 0 < held <= 100
    assert free_units(redis_server.url, unique, rate, algorithm=algorithm) == 1000 - 200 - held
    assert limiter.flush() == held
    assert limiter.lease_held == 0 and limiter.flush() == 0
    assert free_units(redis_server.url, unique, rate, algorithm=algorithm) == 1000 - 200


def test_flush_without_a_lease_is_a_no_op(redis_server, unique):
    limiter = Limiter("10/s", store=Store(redis_server.url, namespace=unique))
    assert limiter.check("k") and limiter.flush() == 0 and limiter.lease_held == 0


def test_flush_leases_gives_back_every_leased_limiter(redis_server, database_url, unique):
    rate = "1000 per 28 days"
    a = Limiter(rate, store=Store(redis_server.url, namespace=unique), lease=Lease(min_batch=4))
    b = Limiter(rate, store=Store(database_url, namespace=unique), lease=Lease(min_batch=4))
    for limiter in (a, b):
        assert all(limiter.check("hot") for _ in range(50))
    held = a.lease_held + b.lease_held
    assert a.lease_held > 0 and b.lease_held > 0
    assert tollgate.flush_leases() >= held  # other tests' live limiters may add theirs
    assert a.lease_held == b.lease_held == 0
    assert (
        free_units(redis_server.url, unique, rate) == free_units(database_url, unique, rate) == 950
    )


def test_reset_empties_the_batch(redis_server, unique):
    limiter = Limiter(
        "1000/hour", store=Store(redis_server.url, namespace=unique), lease=Lease(min_batch=4)
    )
    assert all(limiter.check("hot") for _ in range(50))
    assert limiter.lease_held > 0
    limiter.reset("hot")
    assert limiter.lease_held == 0
    assert free_units(redis_server.url, unique, "1000/hour") == 1000


def test_check_all_combines_leased_and_plain_limiters(redis_server, unique):
    store = Store(redis_server.url, namespace=unique)
    leased = Limiter("1000/hour", store=store, lease=Lease(min_batch=4))
    per_user = Limiter("2/hour", store=store)
    assert tollgate.check_all([(leased, "all"), (per_user, "alice")]).allowed
    assert tollgate.check_all([(leased, "all"), (per_user, "alice")]).allowed
    d = tollgate.check_all([(leased, "all"), (per_user, "alice")])
    assert not d.allowed and d.binding == 1
    assert leased.peek("all").remaining == 1000 - 2 - 1  # nothing charged by the denial


def test_async_api_with_leases(redis_server, unique):
    rate = "1000 per 28 days"
    store = Store(redis_server.url, namespace=unique)
    limiter = Limiter(rate, store=store, lease=Lease(max_batch=50, min_batch=4))

    async def main():
        decisions = await asyncio.gather(*(limiter.check_async("hot") for _ in range(300)))
        assert all(decisions)
        assert (await limiter.acquire_async("hot", timeout=0)).allowed
        assert (await limiter.peek_async("hot")).allowed
        held = limiter.lease_held
        assert held > 0
        assert await limiter.flush_async() == held
        assert await limiter.flush_async() == 0

    asyncio.run(main())
    assert free_units(redis_server.url, unique, rate) == 1000 - 301


def test_async_drain_admits_the_quota_exactly(redis_server, unique):
    rate = "500 per 28 days"
    limiter = Limiter(
        rate,
        store=Store(redis_server.url, namespace=unique),
        lease=Lease(max_batch=40, min_batch=4),
    )

    async def worker() -> int:
        n = 0
        while (await limiter.check_async("hot")).allowed:
            n += 1
        return n

    async def main() -> int:
        return sum(await asyncio.gather(*(worker() for _ in range(16))))

    assert asyncio.run(main()) == 500
    assert limiter.lease_held == 0 and free_units(redis_server.url, unique, rate) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_a_forked_child_never_gives_back_its_parents_batches(redis_server, unique):
    rate = "1000 per 28 days"
    limiter = Limiter(
        rate, store=Store(redis_server.url, namespace=unique), lease=Lease(min_batch=4, duration=30)
    )
    assert all(limiter.check("hot") for _ in range(100))
    parent_held = limiter.lease_held
    assert parent_held > 0

    def child():
        before = tollgate.flush_leases()  # the parent's batch is not the child's
        admitted = sum(limiter.check("hot").allowed for _ in range(50))
        held = limiter.lease_held
        return [before, admitted, held, tollgate.flush_leases()]

    before, admitted, held, given = in_child(child)["ok"]
    assert (before, admitted) == (0, 50) and held > 0 and given == held
    assert limiter.lease_held == parent_held
    assert limiter.flush() == parent_held
    assert free_units(redis_server.url, unique, rate) == 1000 - 150
