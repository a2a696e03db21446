"""Every store by URL: Redis standalone and Cluster, SQLite, PostgreSQL; namespace, HMAC,
failure policies and the error hook against a store that is down."""

from __future__ import annotations

import asyncio
import threading

import pytest

import tollgate
from conftest import free_port, resp
from tollgate import Limiter, Store


@pytest.fixture(params=["redis", "cluster", "sqlite", "postgres"])
def store_url(request, tmp_path, unique):
    if request.param == "redis":
        return request.getfixturevalue("redis_server").url
    if request.param == "cluster":
        return request.getfixturevalue("redis_cluster")
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/limits.db"
    return request.getfixturevalue("database_url")


@pytest.mark.parametrize("algorithm", ["gcra", "token_bucket", "sliding_log", "sliding_window", "fixed_window"])
def test_every_store_decides_and_shares_state(store_url, unique, algorithm):
    a = Limiter("3/minute", algorithm=algorithm, store=Store(store_url, namespace=unique))
    b = Limiter("3/minute", algorithm=algorithm, store=Store(store_url, namespace=unique))
    assert [a.check("k").allowed for _ in range(2)] == [True, True]
    d = b.check("k")  # another Store object on the same database: the same state
    assert d.allowed and d.remaining == 0
    denied = a.check("k")
    assert not denied.allowed and denied.retry_after > 0 and denied.denied_by == 0
    assert b.peek("k").allowed is False
    a.refund("k", 1)
    assert b.check("k").allowed
    a.reset("k")
    assert b.check("k", 3).allowed


def test_every_store_async(store_url, unique):
    async def main():
        limiter = Limiter("5/minute", store=Store(store_url, namespace=unique))
        results = await asyncio.gather(*(limiter.check_async("k") for _ in range(12)))
        assert sum(d.allowed for d in results) == 5
        assert (await limiter.peek_async("k")).allowed is False
        await limiter.reset_async("k")
        assert (await limiter.acquire_async("k", 5, 1.0)).remaining == 0

    asyncio.run(main())


def test_every_store_threads_never_over_admit(store_url, unique):
    limiter = Limiter("40/minute", algorithm="sliding_log", store=Store(store_url, namespace=unique))
    counts = []
    lock = threading.Lock()

    def worker():
        n = sum(limiter.check("shared").allowed for _ in range(20))
        with lock:
            counts.append(n)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 40


def test_limiter_takes_a_url_string(redis_server):
    limiter = Limiter("1/minute", store=redis_server.url)
    assert limiter.check("url-string-key").allowed


def test_redis_namespace_and_hmac(redis_server, unique):
    port = redis_server.port
    plain = Limiter("5/s", store=Store(redis_server.url, namespace=unique))
    plain.check("alice@example.com")
    keys = resp(port, "KEYS", f"{unique}:*")
    assert b"alice@example.com" in keys
    ns = unique + "h"
    hashed = Limiter("5/s", store=Store(redis_server.url, namespace=ns, hmac_secret="s3cret"))
    hashed.check("alice@example.com")
    keys = resp(port, "KEYS", f"{ns}:*")
    assert keys.count(b"\r\n") >= 2 and b"alice" not in keys  # stored, but never the raw key
    assert b":h:" in keys


def test_sqlite_hmac_keeps_raw_keys_out(tmp_path):
    import sqlite3

    path = tmp_path / "hmac.db"
    limiter = Limiter("5/s", store=Store(f"sqlite://{path}", namespace="app", hmac_secret=b"k"))
    assert limiter.check("203.0.113.7").allowed
    dump = "\n".join(sqlite3.connect(path).iterdump())
    assert "app:h:" in dump and "203.0.113.7" not in dump


def test_sqlite_in_memory_and_bad_path():
    assert Limiter("1/s", store="sqlite://:memory:").check("k").allowed
    with pytest.raises(tollgate.StoreError):
        Store("sqlite:///nonexistent-dir/x/limits.db")


def test_semaphores_need_memory_or_redis(tmp_path):
    with pytest.raises(tollgate.StoreError):
        tollgate.Semaphore("s", 1, store=f"sqlite://{tmp_path}/s.db")


# ------------------------------------------------------------------ outages ----


def down_url() -> str:
    return f"redis://127.0.0.1:{free_port()}"  # nothing listens there


def test_store_down_fails_closed_by_default_and_charges_nothing():
    errors = []
    limiter = Limiter("5/s", store=Store(down_url(), timeout=0.2),
                      on_error=lambda key, e: errors.append((key, e.kind)))
    with pytest.raises(tollgate.StoreError) as e:
        limiter.check("k")
    assert isinstance(e.value, tollgate.TollgateError)
    assert e.value.kind in ("connection_refused", "connection", "timeout", "circuit_open")
    assert errors and errors[0][0] == "k"


def test_failure_policies_while_the_store_is_down():
    errors = []
    open_ = Limiter("2/s", store=Store(down_url(), failure="open", timeout=0.2),
                    on_error=lambda key, e: errors.append(e.kind))
    assert all(open_.check("k").allowed for _ in range(5))  # fail open admits
    assert errors  # and the hook saw every absorbed error

    closed = Limiter("2/s", store=Store(down_url(), failure="closed", timeout=0.2))
    with pytest.raises(tollgate.StoreError):
        closed.check("k")

    local = Limiter("2/s", store=Store(down_url(), failure="local", timeout=0.2))
    assert [local.check("k").allowed for _ in range(3)] == [True, True, False]  # a local limiter decides


def test_failure_policy_on_a_postgres_that_is_down():
    url = f"postgres://postgres@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(tollgate.StoreError):
        Store(url, timeout=0.5)  # without a policy the outage is reported at once
    limiter = Limiter("1/s", store=Store(url, failure="open", timeout=0.5))
    assert limiter.check("k").allowed


def test_redis_restart_is_survived(unique):
    from conftest import RedisServer

    server = RedisServer()
    limiter = Limiter("2/minute", store=Store(server.url, namespace=unique, timeout=0.5))
    assert limiter.check("k").allowed
    resp(server.port, "SCRIPT", "FLUSH")  # NOSCRIPT: the scripts are loaded again
    assert limiter.check("k").allowed
    assert not limiter.check("k").allowed
    server.stop()
