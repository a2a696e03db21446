"""Multi-key all-or-nothing from Python: tollgate.check_all / peek_all (sync and asyncio) on
memory, Redis (standalone and Cluster), SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading

import pytest

import tollgate
from conftest import free_port
from tollgate import Limiter, ManualClock, Store


class Multi:
    """A store and the key spelling every key of one call needs on it (on a Redis Cluster,
    one hash tag, so every key is in one slot)."""

    def __init__(self, store: Store, tag: str = ""):
        self.store = store
        self.tag = tag

    def __call__(self, key: str) -> str:
        return f"{self.tag}{key}"


@pytest.fixture(params=["memory", "redis", "cluster", "sqlite", "postgres"])
def m(request, tmp_path, unique):
    if request.param == "memory":
        return Multi(Store())
    if request.param == "redis":
        return Multi(Store(request.getfixturevalue("redis_server").url, namespace=unique))
    if request.param == "cluster":
        return Multi(Store(request.getfixturevalue("redis_cluster"), namespace=unique), "{t}:")
    if request.param == "sqlite":
        return Multi(Store(f"sqlite://{tmp_path}/multi.db", namespace=unique))
    return Multi(Store(request.getfixturevalue("database_url"), namespace=unique))


def test_all_or_nothing_on_every_store(m):
    per_user = Limiter("3/minute", store=m.store)
    per_ip = Limiter("10/minute", algorithm="sliding_log", store=m.store)
    global_ = Limiter("4/minute", algorithm="fixed_window", store=m.store)

    def call(user, ip="ip1"):
        return tollgate.check_all([(per_user, m(user)), (per_ip, m(ip), 1), (global_, m("all"), 1)])

    for _ in range(3):
        d = call("alice")
        assert d and d.allowed and d.binding is None and len(d.decisions) == 3
    d = call("alice")  # alice's own limit is spent
    assert not d.allowed and d.binding == 0 and d.decisions[0].denied_by == 0
    assert d.retry_after > 0
    # Nothing was charged for the denied call: the global limit still has one unit left
    # (a peek's `remaining` is what would be left after it).
    g = global_.peek(m("all"))
    assert g.allowed and g.remaining == 0
    assert per_ip.peek(m("ip1")).remaining == 6
    assert call("bob").allowed  # the last global unit
    d = call("carol")
    assert not d.allowed and d.binding == 2
    assert per_user.peek(m("carol")).remaining == 2  # carol was not charged
    # The per-key decisions are what each key alone decides.
    assert d.decisions[0].allowed and not d.decisions[2].allowed
    assert d.tightest == 2


def test_peek_all_charges_nothing(m):
    a = Limiter("2/minute", store=m.store)
    b = Limiter("5/minute", algorithm="token_bucket", store=m.store)
    for _ in range(5):
        assert tollgate.peek_all([(a, m("k"), 2), (b, m("k"), 5)]).allowed
    assert tollgate.check_all([(a, m("k"), 2), (b, m("k"), 5)]).allowed
    d = tollgate.peek_all([(a, m("k")), (b, m("k"))])
    assert not d.allowed and d.binding in (0, 1)


def test_async_on_every_store(m):
    a = Limiter("5/minute", store=m.store)
    g = Limiter("6/minute", store=m.store)

    async def main():
        results = await asyncio.gather(
            *(tollgate.check_all_async([(a, m(f"u{i % 2}")), (g, m("all"))]) for i in range(12))
        )
        # u0 and u1 have 5 each, the global 6: exactly 6 calls pass.
        assert sum(r.allowed for r in results) == 6
        assert (await tollgate.peek_all_async([(g, m("all"))])).allowed is False
        return results

    asyncio.run(main())
    assert g.peek(m("all")).remaining == 0


def test_threads_never_over_admit(m):
    per_user = Limiter("15/minute", algorithm="sliding_log", store=m.store)
    global_ = Limiter("20/minute", store=m.store)
    admitted = []
    denials = []
    lock = threading.Lock()

    def worker(user):
        n = 0
        for _ in range(12):
            d = tollgate.check_all([(per_user, m(user)), (global_, m("all"))])
            if d.allowed:
                n += 1
            else:
                with lock:
                    denials.append((user, d.binding, [(x.allowed, x.remaining) for x in d.decisions]))
        with lock:
            admitted.append((user, n))

    threads = [threading.Thread(target=worker, args=(f"u{i % 2}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(n for _, n in admitted)
    assert total == 20, (admitted, denials)  # 72 attempts, the global limit binds exactly
    for user in ("u0", "u1"):
        assert sum(n for u, n in admitted if u == user) <= 15
    # Every admitted call charged both keys, every denied call neither.
    used = sum(weight for u in ("u0", "u1") for _, weight in per_user.log(m(u)))
    assert used == total


def test_any_memory_limiters_combine_and_clock_of_first_item():
    clock = ManualClock(1_000_000)
    a = Limiter("1/s", clock=clock)
    b = Limiter("2/s", clock=clock)  # another private memory store
    assert tollgate.check_all([(a, "k"), (b, "k")]).allowed
    assert not tollgate.check_all([(a, "k"), (b, "k")]).allowed
    assert b.peek("k").remaining == 0  # one of two charged, not two
    clock.advance(1.0)
    assert tollgate.check_all([(a, "k"), (b, "k")]).allowed


def test_hooks_see_multi_key_calls():
    blocked = []
    a = Limiter("1/minute", on_block=lambda key, d: blocked.append(key))
    b = Limiter("5/minute")
    assert tollgate.check_all([(a, "x"), (b, "y")]).allowed
    assert not tollgate.check_all([(a, "x"), (b, "y")]).allowed
    assert blocked == ["x"]


def test_bad_input(tmp_path, unique):
    a = Limiter("5/s")
    with pytest.raises(tollgate.InvalidKey):
        tollgate.check_all([])
    with pytest.raises(tollgate.InvalidKey, match="twice"):
        tollgate.check_all([(a, "k"), (a, "k")])
    with pytest.raises(tollgate.InvalidCost):
        tollgate.check_all([(a, "k", 0)])
    with pytest.raises(tollgate.InvalidCost):
        tollgate.check_all([(a, "k", -1)])
    with pytest.raises(tollgate.CostExceedsCapacity):
        tollgate.check_all([(a, "k", 6)])
    with pytest.raises(TypeError):
        tollgate.check_all([(a,)])
    with pytest.raises(TypeError):
        tollgate.check_all([("not a limiter", "k")])
    with pytest.raises(TypeError):
        tollgate.check_all(5)
    with pytest.raises(tollgate.InvalidKey):
        tollgate.check_all([(a, "x" * 2000)])
    # Two different stores cannot decide together.
    sqlite = Limiter("5/s", store=Store(f"sqlite://{tmp_path}/a.db"))
    with pytest.raises(tollgate.InvalidKey, match="one store"):
        tollgate.check_all([(a, "k"), (sqlite, "k")])
    # Two Store objects are two stores, even on one database file.
    other = Limiter("5/s", store=Store(f"sqlite://{tmp_path}/a.db"))
    with pytest.raises(tollgate.InvalidKey, match="store"):
        tollgate.check_all([(sqlite, "k"), (other, "j")])
    # Nothing of a refused call was charged.
    assert a.peek("k").remaining == 4 and sqlite.peek("k").remaining == 4

    async def bad_async():
        with pytest.raises(tollgate.InvalidKey):
            await tollgate.check_all_async([(a, "k"), (a, "k")])
        with pytest.raises(TypeError):
            await tollgate.peek_all_async([(a,)])

    asyncio.run(bad_async())


@pytest.mark.parametrize("policy", ["open", "closed", "local"])
def test_failure_policy_answers_multi_key_calls(redis_server, unique, policy):
    # Up: the store decides, through the policy's wrapper.
    up = Store(redis_server.url, namespace=unique, failure=policy)
    a, b = Limiter("2/minute", store=up), Limiter("5/minute", store=up)
    assert [tollgate.check_all([(a, "k"), (b, "k")]).allowed for _ in range(3)] == [True, True, False]
    # Down: the policy answers for every item together.
    down = Store(f"redis://127.0.0.1:{free_port()}", failure=policy, timeout=0.2)
    a, b = Limiter("2/minute", store=down), Limiter("5/minute", store=down)
    if policy == "closed":
        with pytest.raises(tollgate.StoreError):
            tollgate.check_all([(a, "k"), (b, "k")])
        return
    results = [tollgate.check_all([(a, "k"), (b, "k")]) for _ in range(3)]
    if policy == "open":
        assert all(d.allowed for d in results)
    else:  # local: an in-memory limiter of each policy decides
        assert [d.allowed for d in results] == [True, True, False] and results[2].binding == 0
