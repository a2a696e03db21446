"""tollgate.clients.AiohttpThrottle / throttled_session against a real aiohttp server on
loopback: waits before sending (in one process and across processes through Redis) and honours
a 429/503 Retry-After once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import tollgate
from conftest import free_port
from webutil import need, sent_within_quota


class AiohttpRemote:
    """An aiohttp web server in a background thread: records arrivals, answers the queued
    ``(status, retry_after)`` first, then 200."""

    def __init__(self):
        from aiohttp import web

        self.arrivals: list[float] = []
        self.script: list[tuple[int, str | None]] = []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def handle(request):
            self.arrivals.append(time.monotonic())
            status, retry = self.script.pop(0) if self.script else (200, None)
            headers = {"Retry-After": retry} if retry is not None else {}
            return web.Response(status=status, text="ok", headers=headers)

        async def serve():
            app = web.Application()
            app.router.add_get("/{tail:.*}", handle)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
            started.set()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(serve())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10), "the aiohttp server did not start"
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def remote():
    need("aiohttp")
    r = AiohttpRemote()
    yield r
    r.stop()


def test_session_waits_before_sending(remote):
    from tollgate.clients import throttled_session

    async def main():
        limiter = tollgate.Limiter("4/s", algorithm="sliding_log")
        start = time.monotonic()
        async with throttled_session(limiter) as session:

            async def get():
                async with session.get(remote.url) as r:
                    return r.status

            codes = await asyncio.gather(*(get() for _ in range(10)))
        assert codes == [200] * 10
        assert time.monotonic() - start >= 2.0  # 10 at 4 per second: the 9th waits 2 s
        assert sent_within_quota(remote.arrivals, 4, 1.0)
        assert limiter.peek("127.0.0.1").remaining < 4  # the key is the host

    asyncio.run(main())


def test_retry_after_is_honoured_once_and_bounded(remote):
    import aiohttp
    from tollgate.clients import AiohttpThrottle

    async def main():
        throttle = AiohttpThrottle(tollgate.Limiter("100/s"), key="api", max_retry_wait=5)
        async with aiohttp.ClientSession(middlewares=(throttle,)) as session:
            remote.script += [(503, "1"), (429, "1"), (429, "1")]
            t0 = time.monotonic()
            async with session.get(remote.url) as r:
                assert r.status == 429  # 503 waited out and retried once; that answered 429
            assert len(remote.arrivals) == 2 and time.monotonic() - t0 >= 0.95
            assert remote.arrivals[1] - remote.arrivals[0] >= 0.95
            remote.arrivals.clear()
            async with session.get(remote.url) as r:  # the queued 429, then the retry: 200
                assert r.status == 200 and await r.text() == "ok"
            assert len(remote.arrivals) == 2
            remote.arrivals.clear()
            remote.script.append((429, "3600"))  # beyond max_retry_wait: returned as it is
            async with session.get(remote.url) as r:
                assert r.status == 429 and r.headers["Retry-After"] == "3600"
            assert len(remote.arrivals) == 1

    asyncio.run(main())


def test_a_wait_longer_than_timeout_sends_nothing(remote):
    from tollgate.clients import throttled_session

    async def main():
        limiter = tollgate.Limiter("1/minute")
        async with throttled_session(limiter, key=lambda req: req.url.path, timeout=0.1) as s:
            async with s.get(remote.url) as r:
                assert r.status == 200
            with pytest.raises(tollgate.RateLimitExceeded):
                await s.get(remote.url)
        assert len(remote.arrivals) == 1

    asyncio.run(main())


WORKER = textwrap.dedent("""
    import asyncio, sys, tollgate
    from tollgate.clients import throttled_session

    async def main(url, redis_url, ns):
        limiter = tollgate.Limiter("4/s", algorithm="sliding_log",
                                   store=tollgate.Store(redis_url, namespace=ns))
        async with throttled_session(limiter, key="shared-quota") as session:
            for _ in range(5):
                async with session.get(url) as r:
                    assert r.status == 200

    asyncio.run(main(*sys.argv[1:]))
""")


def test_two_processes_share_one_quota_through_redis(remote, redis_server, unique, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, str(script), remote.url, redis_server.url, unique],
                              env=dict(os.environ)) for _ in range(2)]
    assert [p.wait(60) for p in procs] == [0, 0]
    assert len(remote.arrivals) == 10
    assert time.monotonic() - start >= 2.0  # 10 at 4 per second, whichever process sent them
    assert sent_within_quota(remote.arrivals, 4, 1.0)
