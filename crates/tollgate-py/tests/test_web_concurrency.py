"""ConcurrencyLimitMiddleware (tollgate.asgi and tollgate.wsgi) on real uvicorn and werkzeug
servers: exactly `capacity` requests in flight per key, released after the last body chunk,
a client disconnect or an exception; fleet-wide through Redis across two uvicorn processes."""

from __future__ import annotations

import asyncio
import os
import socket
import textwrap
import threading
import time

import pytest
import tollgate
from conftest import free_port
from webutil import UvicornThread, WerkzeugThread, need, uvicorn_processes

from tollgate._inflight import ConcurrencyGate
from tollgate._web import RequestInfo


@pytest.fixture(autouse=True)
def _packages():
    need("fastapi", "uvicorn", "httpx", "werkzeug")


def eventually(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Gate:
    """Holds the slow handlers until the test opens it (a threading.Event, polled from the
    event loop so uvicorn's loop never blocks)."""

    def __init__(self):
        self.open = threading.Event()
        self.entered = 0
        self.lock = threading.Lock()

    def enter(self):
        with self.lock:
            self.entered += 1

    async def wait_async(self):
        self.enter()
        while not self.open.is_set():
            await asyncio.sleep(0.01)


def asgi_app(gate, policies, **kw):
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from tollgate.asgi import ConcurrencyLimitMiddleware

    app = FastAPI()

    @app.get("/slow")
    async def slow():
        await gate.wait_async()
        return {"ok": True}

    @app.get("/stream")
    async def stream():
        async def body():
            yield b"first\n"
            await gate.wait_async()
            yield b"last\n"

        return StreamingResponse(body())

    @app.get("/endless")
    async def endless():
        async def body():
            while True:
                yield b"x" * 4096
                await asyncio.sleep(0.02)

        return StreamingResponse(body())

    @app.get("/boom")
    async def boom():
        raise RuntimeError("handler failed")

    app.add_middleware(ConcurrencyLimitMiddleware, policies=policies, **kw)
    return app


@pytest.fixture
def served():
    servers = []

    def start(server):
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


def concurrent_gets(url, n, headers, gate, refused):
    """``n`` concurrent GETs; opens ``gate`` once ``refused`` of them were answered (those
    are the ones over the limit); returns the responses."""
    import httpx

    async def main():
        async with httpx.AsyncClient(timeout=30) as c:
            tasks = [asyncio.create_task(c.get(url, headers=headers)) for _ in range(n)]
            deadline = time.monotonic() + 20
            while sum(t.done() for t in tasks) < refused and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # a wrongly admitted extra would have entered by now
            entered = gate.entered
            gate.open.set()
            return await asyncio.gather(*tasks), entered

    return asyncio.run(main())


def test_asgi_admits_exactly_capacity_per_key_and_releases(served):
    from tollgate.asgi import ConcurrencyPolicy, header

    base = tollgate.Semaphore("api", 3)
    gate = Gate()
    s = served(UvicornThread(asgi_app(gate, [ConcurrencyPolicy("in-flight", base,
                                                                header("x-user"))])))
    rs, entered = concurrent_gets(s.url + "/slow", 10, {"x-user": "a"}, gate, refused=7)
    codes = sorted(r.status_code for r in rs)
    assert codes == [200] * 3 + [429] * 7 and entered == 3
    denied = next(r for r in rs if r.status_code == 429)
    assert denied.headers["retry-after"] == "1"
    assert denied.headers["content-type"] == "application/problem+json"
    body = denied.json()
    assert body["status"] == 429 and body["policy"] == "in-flight" and body["limit"] == 3
    assert eventually(lambda: base.with_name("api:a").in_use() == 0)

    import httpx

    # another key is counted apart; a request without the key is a 400
    assert httpx.get(s.url + "/slow", headers={"x-user": "b"}).status_code == 200
    assert httpx.get(s.url + "/slow").status_code == 400


def test_asgi_streaming_body_holds_its_permit_to_the_last_chunk(served):
    import httpx
    from tollgate.asgi import ConcurrencyPolicy, global_key

    base = tollgate.Semaphore("stream", 1)
    gate = Gate()
    s = served(UvicornThread(asgi_app(gate, [("in-flight", base, global_key)],
                                      when_full=503, retry_after=2)))
    sem = base.with_name("stream:global")
    with httpx.Client(base_url=s.url, timeout=30) as c:
        with c.stream("GET", "/stream") as r:
            chunks = r.iter_bytes()
            assert next(chunks).startswith(b"first")
            assert sem.in_use() == 1  # the handler returned; the body is still streaming
            full = c.get("/slow")
            assert full.status_code == 503 and full.headers["retry-after"] == "2"
            gate.open.set()
            assert b"".join(chunks).endswith(b"last\n")
        assert eventually(lambda: sem.in_use() == 0)
        assert c.get("/slow").status_code == 200
    assert ConcurrencyPolicy  # the tuple form above is the same policy


def test_asgi_client_disconnect_and_exceptions_release(served):
    import httpx
    from tollgate.asgi import ConcurrencyPolicy, global_key

    base = tollgate.Semaphore("drop", 1)
    s = served(UvicornThread(asgi_app(Gate(), [ConcurrencyPolicy("c", base, global_key)])))
    sem = base.with_name("drop:global")
    for _ in range(3):  # a leaked permit would make the next round a 429
        with httpx.Client(base_url=s.url, timeout=30) as c:
            with c.stream("GET", "/endless") as r:
                chunks = r.iter_raw()  # (a dropped iterator would close the response)
                assert len(next(chunks)) > 0
                time.sleep(0.2)
                assert sem.in_use() == 1
        # the connection is closed: the app sees the disconnect and returns
        assert eventually(lambda: sem.in_use() == 0), "permit leaked after a client disconnect"
    for _ in range(3):  # (the server closes the connection after an unhandled exception)
        assert httpx.get(s.url + "/boom", timeout=30).status_code == 500
        assert eventually(lambda: sem.in_use() == 0)


def test_asgi_wait_and_store_failure(served):
    import httpx
    from tollgate.asgi import ConcurrencyPolicy, global_key

    base = tollgate.Semaphore("w", 1)
    gate = Gate()
    s = served(UvicornThread(asgi_app(gate, [ConcurrencyPolicy("w", base, global_key)],
                                      wait=5.0)))

    def open_later():
        time.sleep(0.5)
        gate.open.set()

    threading.Thread(target=open_later).start()
    rs, _ = concurrent_gets(s.url + "/slow", 2, {}, gate, refused=0)
    assert [r.status_code for r in rs] == [200, 200]  # the second waited for the first

    dead = tollgate.Store(f"redis://127.0.0.1:{free_port()}", timeout=0.5)
    failing = tollgate.Semaphore("dead", 1, store=dead)
    s2 = served(UvicornThread(asgi_app(Gate(), [ConcurrencyPolicy("dead", failing, global_key)])))
    r = httpx.get(s2.url + "/slow", timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["store_error"] in ("connection_refused", "connection", "timeout")


def test_policies_are_all_or_nothing_and_checked():
    from tollgate.asgi import ConcurrencyPolicy, global_key, header

    per_user = tollgate.Semaphore("u", 2)
    everyone = tollgate.Semaphore("all", 1)
    gate = ConcurrencyGate([ConcurrencyPolicy("user", per_user, header("x-user")),
                            ConcurrencyPolicy("all", everyone, global_key, methods=["POST"])])
    post = RequestInfo("POST", "/", None, {"x-user": "a"})
    held, out = gate.enter(post)
    assert out is None and len(held) == 2
    held2, out2 = gate.enter(post)
    assert out2 is not None and out2.status == 429 and held2 == []
    assert per_user.with_name("u:a").in_use() == 1  # the refused request holds nothing
    get_held, out3 = gate.enter(RequestInfo("GET", "/", None, {"x-user": "a"}))
    assert out3 is None and len(get_held) == 1  # POST-only policy does not apply
    gate.leave(held + get_held)
    assert per_user.with_name("u:a").in_use() == 0 and everyone.with_name("all:global").in_use() == 0
    with pytest.raises(tollgate.ConfigError):
        ConcurrencyGate([ConcurrencyPolicy("c", per_user)], when_full=500)
    with pytest.raises(tollgate.ConfigError):
        ConcurrencyPolicy("c", per_user, permits=3)
    with pytest.raises(tollgate.ConfigError):
        ConcurrencyGate([ConcurrencyPolicy('bad "name"', per_user)])


# --------------------------------------------------------------------------------- WSGI ----


def wsgi_app(gate):
    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/boom":
            raise RuntimeError("handler failed")
        start_response("200 OK", [("content-type", "text/plain")])
        if path == "/slow":
            gate.enter()
            gate.open.wait(30)
            return [b"ok"]
        if path == "/stream":
            def body():
                yield b"first\n"
                gate.enter()
                gate.open.wait(30)
                yield b"last\n"
            return body()
        if path == "/endless":
            def endless():
                while True:
                    yield b"x" * 65536
                    time.sleep(0.01)
            return endless()
        return [b"?"]

    return app


def threaded_gets(url, n, headers, gate, refused):
    import requests

    results = [None] * n

    def get(i):
        results[i] = requests.get(url, headers=headers, timeout=30)

    threads = [threading.Thread(target=get, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    eventually(lambda: sum(r is not None for r in results) >= refused, 20)
    time.sleep(0.2)
    entered = gate.entered
    gate.open.set()
    for t in threads:
        t.join(30)
    return results, entered


def test_wsgi_admits_exactly_capacity_and_releases_on_close(served):
    import requests
    from tollgate.wsgi import ConcurrencyLimitMiddleware, ConcurrencyPolicy, client_ip

    base = tollgate.Semaphore("wsgi", 3)
    gate = Gate()
    app = ConcurrencyLimitMiddleware(wsgi_app(gate), [ConcurrencyPolicy("ip", base, client_ip())])
    s = served(WerkzeugThread(app))
    rs, entered = threaded_gets(s.url + "/slow", 10, {"x-forwarded-for": "6.6.6.6"}, gate, 7)
    assert sorted(r.status_code for r in rs) == [200] * 3 + [429] * 7 and entered == 3
    denied = next(r for r in rs if r.status_code == 429)
    assert denied.headers["Retry-After"] == "1" and denied.json()["limit"] == 3
    sem = base.with_name("wsgi:127.0.0.1")  # the spoofed X-Forwarded-For is not the key
    assert eventually(lambda: sem.in_use() == 0)

    gate2 = Gate()
    app2 = ConcurrencyLimitMiddleware(wsgi_app(gate2), [ConcurrencyPolicy("ip", base)])
    s2 = served(WerkzeugThread(app2))
    with requests.get(s2.url + "/stream", stream=True, timeout=30) as r:
        chunks = r.iter_content(chunk_size=None)
        assert next(chunks).startswith(b"first")
        assert sem.in_use() == 1
        gate2.open.set()
        assert b"".join(chunks).endswith(b"last\n")
    assert eventually(lambda: sem.in_use() == 0)

    for _ in range(3):  # exceptions and client disconnects leak nothing
        assert requests.get(s2.url + "/boom", timeout=30).status_code == 500
        assert sem.in_use() == 0
        with socket.create_connection(("127.0.0.1", s2.port)) as raw:
            raw.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
            assert raw.recv(4096)
            assert sem.in_use() == 1
        assert eventually(lambda: sem.in_use() == 0), "permit leaked after a client disconnect"


# ------------------------------------------------------------- two processes, one Redis ----

FLEET = textwrap.dedent("""
    import asyncio
    import os
    import pathlib
    import tollgate
    from fastapi import FastAPI
    from tollgate.asgi import ConcurrencyLimitMiddleware, ConcurrencyPolicy, global_key

    app = FastAPI()
    OPEN = pathlib.Path(os.environ["GATE"])

    @app.get("/")
    async def root():
        while not OPEN.exists():
            await asyncio.sleep(0.02)
        return {"pid": os.getpid()}

    store = tollgate.Store(os.environ["REDIS_URL"], namespace=os.environ["NS"])
    app.add_middleware(ConcurrencyLimitMiddleware, policies=[
        ConcurrencyPolicy("fleet", tollgate.Semaphore("fleet", 2, store=store), global_key)])
""")


def test_two_uvicorn_processes_share_one_redis_semaphore(redis_server, unique, tmp_path):
    import httpx

    (tmp_path / "fleet_app.py").write_text(FLEET)
    gate_file = tmp_path / "open"
    env = dict(os.environ, REDIS_URL=redis_server.url, NS=unique, GATE=str(gate_file))
    store = tollgate.Store(redis_server.url, namespace=unique)
    sem = tollgate.Semaphore("fleet", 2, store=store).with_name("fleet:global")
    for a, b in uvicorn_processes("fleet_app:app", 2, env, str(tmp_path)):

        async def main():
            async with httpx.AsyncClient(timeout=30) as c:
                tasks = [asyncio.create_task(c.get(a if i % 2 else b)) for i in range(8)]
                deadline = time.monotonic() + 20
                while sum(t.done() for t in tasks) < 6 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.2)
                held = sem.in_use()
                gate_file.write_text("")
                return await asyncio.gather(*tasks), held

        rs, held = asyncio.run(main())
        assert sorted(r.status_code for r in rs) == [200] * 2 + [429] * 6 and held == 2
        assert eventually(lambda: sem.in_use() == 0)
