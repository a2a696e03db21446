"""redis-py 8, unmodified and on its defaults, against a real tollgate-server.

Started by crates/tollgate-server/tests/real_clients.rs, which runs the server with
``--policy api=5/min --semaphore jobs=2`` and passes its RESP address in
TOLLGATE_RESP_HOST / TOLLGATE_RESP_PORT. Run by hand:

    TOLLGATE_RESP_PORT=6380 .venv-test/bin/python -m pytest -q crates/tollgate-server/tests/clients

redis-py 8 speaks RESP3 by default: it opens every connection with ``HELLO 3`` and its
default ``pipeline()`` is a MULTI/EXEC transaction. Every test runs on the default protocol
and on ``protocol=2``.
"""

import asyncio
import os
import uuid

import pytest
import redis
import redis.asyncio

HOST = os.environ.get("TOLLGATE_RESP_HOST", "127.0.0.1")
PORT = int(os.environ["TOLLGATE_RESP_PORT"])


def test_this_is_redis_py_8():
    assert int(redis.__version__.split(".")[0]) >= 8, redis.__version__


@pytest.fixture(params=[None, 2], ids=["default", "protocol2"])
def r(request):
    kwargs = {} if request.param is None else {"protocol": request.param}
    client = redis.Redis(host=HOST, port=PORT, **kwargs)
    yield client
    client.close()


def key():
    return "py-" + uuid.uuid4().hex


def expected_resp(client):
    return "2" if client.connection_pool.connection_kwargs.get("protocol") == 2 else "3"


def test_connects_and_negotiates_the_protocol(r):
    assert r.ping() is True
    info = r.client_info()
    assert info["resp"] == expected_resp(r)
    assert info["lib-name"].startswith("redis-py")
    assert info["lib-ver"] == redis.__version__
    assert r.client_getname() is None
    assert isinstance(r.client_id(), int)
    assert r.echo("hi") == b"hi"
    assert r.info()["tollgate_store"] == "memory"


def test_cl_throttle_through_execute_command(r):
    k = key()
    assert r.execute_command("CL.THROTTLE", k, 15, 30, 60) == [0, 16, 15, -1, 2]
    assert r.execute_command("CL.THROTTLE", k, 15, 30, 60, 15) == [0, 16, 0, -1, 32]
    assert r.execute_command("CL.THROTTLE", k, 15, 30, 60) == [1, 16, 0, 2, 32]


def test_tg_commands(r):
    k = key()
    assert r.execute_command("TG.CHECK", "api", k, 5)[:3] == [0, 5, 0]
    denied = r.execute_command("TG.CHECK", "api", k)
    assert denied[:3] == [1, 5, 0] and 0 < denied[3] <= 12_000
    assert r.execute_command("TG.REFUND", "api", k, 2) == 2
    assert r.execute_command("TG.PEEK", "api", k, 2)[:3] == [0, 5, 0]
    assert r.execute_command("TG.CHECK", "api", k)[:3] == [0, 5, 1]
    assert r.execute_command("TG.RESET", "api", k) in (True, b"OK", "OK")
    assert r.execute_command("TG.PEEK", "api", k, 5)[0] == 0
    assert [b"api", b"gcra:5/1m"] in r.execute_command("TG.POLICIES")
    granted, lease, expires = r.execute_command("TG.ACQUIRE", "jobs", 1, 1000)
    assert granted == 1 and len(lease) == 32 and 900 <= expires <= 1000
    left = r.execute_command("TG.EXTEND", "jobs", lease, 60000)
    assert 59_000 <= left <= 60_000
    assert r.execute_command("TG.RELEASE", "jobs", lease) == 1
    assert r.execute_command("TG.EXTEND", "jobs", lease) is None
    with pytest.raises(redis.ResponseError, match="unknown policy"):
        r.execute_command("TG.CHECK", "nope", k)
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("TG.REFUND", "api", k)


def test_default_pipeline_is_a_multi_exec_transaction(r):
    k = key()
    pipe = r.pipeline()
    assert pipe.transaction is True
    for _ in range(6):
        pipe.execute_command("TG.CHECK", "api", k)
    pipe.execute_command("CL.THROTTLE", k, 0, 1, 60)
    pipe.ping()
    replies = pipe.execute()
    assert [x[0] for x in replies[:6]] == [0, 0, 0, 0, 0, 1]
    assert replies[6] == [0, 1, 0, -1, 60]
    assert replies[7] is True


def test_transaction_errors(r):
    k = key()
    # A run-time error is one reply of EXEC; the other commands ran.
    pipe = r.pipeline()
    pipe.execute_command("TG.CHECK", "nope", k)
    pipe.execute_command("TG.CHECK", "api", k)
    replies = pipe.execute(raise_on_error=False)
    assert isinstance(replies[0], redis.ResponseError)
    assert replies[1][:3] == [0, 5, 4]
    # A syntax error while queuing aborts the whole transaction: nothing is charged.
    pipe = r.pipeline()
    pipe.execute_command("TG.CHECK", "api", k, 4)
    pipe.execute_command("TG.CHECK", "api")
    with pytest.raises(redis.ResponseError):
        pipe.execute()
    assert r.execute_command("TG.PEEK", "api", k, 4)[0] == 0
    # WATCH is refused (documented): tollgate has no keys a client can watch.
    with pytest.raises(redis.ResponseError, match="WATCH is not supported"):
        with r.pipeline() as p:
            p.watch(k)


def test_non_transaction_pipeline(r):
    k = key()
    pipe = r.pipeline(transaction=False)
    for _ in range(3):
        pipe.execute_command("CL.THROTTLE", k, 1, 1, 60)
    assert [x[0] for x in pipe.execute()] == [0, 0, 1]


def test_client_name_and_password_on_connect():
    # client_name: CLIENT SETNAME on connect; a password goes in HELLO 3 AUTH default <pw>
    # (the server has no authentication: like a Redis without requirepass, it accepts it).
    c = redis.Redis(host=HOST, port=PORT, client_name="billing", password="any")
    assert c.client_getname() == "billing"
    assert c.client_info()["resp"] == "3"
    c.close()


def test_asyncio_client_on_its_defaults():
    async def main():
        c = redis.asyncio.Redis(host=HOST, port=PORT)
        try:
            k = key()
            assert await c.ping() is True
            assert (await c.client_info())["resp"] == "3"
            assert await c.execute_command("CL.THROTTLE", k, 1, 1, 60) == [0, 2, 1, -1, 60]
            async with c.pipeline() as pipe:  # transaction=True
                for _ in range(3):
                    pipe.execute_command("TG.CHECK", "api", k)
                replies = await pipe.execute()
            assert [x[2] for x in replies] == [4, 3, 2]
            async with c.pipeline(transaction=False) as pipe:
                pipe.execute_command("TG.REFUND", "api", k, 3)
                pipe.execute_command("TG.PEEK", "api", k)
                refunded, peek = await pipe.execute()
            assert refunded == 3 and peek[2] == 4
            assert await c.execute_command("TG.EXTEND", "jobs", "0" * 32) is None
            # many concurrent commands over the pool
            rs = await asyncio.gather(
                *[c.execute_command("TG.CHECK", "api", key()) for _ in range(50)]
            )
            assert all(x[0] == 0 for x in rs)
        finally:
            await c.aclose()

    asyncio.run(main())


def test_asyncio_client_protocol_2():
    async def main():
        c = redis.asyncio.Redis(host=HOST, port=PORT, protocol=2)
        try:
            assert (await c.client_info())["resp"] == "2"
            async with c.pipeline() as pipe:
                pipe.execute_command("CL.THROTTLE", key(), 0, 1, 60)
                pipe.execute_command("TG.EXTEND", "jobs", "0" * 32)
                throttle, extend = await pipe.execute()
            assert throttle == [0, 1, 0, -1, 60] and extend is None
        finally:
            await c.aclose()

    asyncio.run(main())
