"""tollgate.clients: httpx transports (sync and async) and the requests adapter against a real
local werkzeug server: they wait before sending and honour 429/503 Retry-After once."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import tollgate
from webutil import WerkzeugThread, need, sent_within_quota


class Remote:
    """A WSGI API that records when each request arrived and answers the queued statuses
    first (``(status, retry_after)``), then 200."""

    def __init__(self):
        self.arrivals = []
        self.script = []
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            self.arrivals.append(time.monotonic())
            status, retry = self.script.pop(0) if self.script else (200, None)
        headers = [("content-type", "text/plain")]
        if retry is not None:
            headers.append(("retry-after", retry))
        start_response(f"{status} X", headers)
        return [b"ok"]


@pytest.fixture
def remote():
    need("werkzeug", "httpx", "requests")
    app = Remote()
    s = WerkzeugThread(app)
    app.url = s.url  # type: ignore[attr-defined]
    yield app
    s.stop()


def test_httpx_sync_transport_waits_before_sending(remote):
    import httpx
    from tollgate.clients import ThrottledTransport

    limiter = tollgate.Limiter("4/s", algorithm="sliding_log")
    start = time.monotonic()
    with httpx.Client(transport=ThrottledTransport(limiter)) as c:
        codes = [c.get(remote.url).status_code for _ in range(10)]
    assert codes == [200] * 10
    assert time.monotonic() - start >= 2.0  # 10 at 4 per second: the 9th waits 2 s
    assert sent_within_quota(remote.arrivals, 4, 1.0)


def test_httpx_async_transport_waits_and_honours_retry_after(remote):
    import httpx
    from tollgate.clients import AsyncThrottledTransport

    async def main():
        limiter = tollgate.Limiter("4/s", algorithm="sliding_log")
        async with httpx.AsyncClient(transport=AsyncThrottledTransport(limiter, key="api")) as c:
            codes = [r.status_code for r in await asyncio.gather(*(c.get(remote.url) for _ in range(8)))]
            assert codes == [200] * 8
            assert sent_within_quota(remote.arrivals, 4, 1.0)
            remote.arrivals.clear()
            remote.script.append((503, "1"))
            t0 = time.monotonic()
            r = await c.get(remote.url)
            assert r.status_code == 200 and len(remote.arrivals) == 2
            assert remote.arrivals[1] - remote.arrivals[0] >= 0.95
            assert time.monotonic() - t0 >= 0.95

    asyncio.run(main())


def test_requests_adapter_waits_retries_once_and_bounds_the_wait(remote):
    import requests
    from tollgate.clients import ThrottledAdapter

    limiter = tollgate.Limiter("4/s", algorithm="sliding_log")
    session = requests.Session()
    session.mount("http://", ThrottledAdapter(limiter, max_retry_wait=5))
    assert [session.get(remote.url, timeout=10).status_code for _ in range(8)] == [200] * 8
    assert sent_within_quota(remote.arrivals, 4, 1.0)

    remote.arrivals.clear()
    remote.script += [(429, "1"), (429, "1")]
    r = session.get(remote.url, timeout=10)
    assert r.status_code == 429 and len(remote.arrivals) == 2  # retried once, not twice
    assert remote.arrivals[1] - remote.arrivals[0] >= 0.95

    remote.arrivals.clear()
    remote.script.append((429, "3600"))  # beyond max_retry_wait: returned as it is
    r = session.get(remote.url, timeout=10)
    assert r.status_code == 429 and len(remote.arrivals) == 1


def test_retry_after_parsing():
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    from tollgate.clients import retry_after_seconds

    assert retry_after_seconds("0") == 0.0 and retry_after_seconds("-1") is None
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after_seconds(when) <= 30  # type: ignore[operator]


@pytest.mark.parametrize("name", ["_web", "_inflight", "asgi", "wsgi", "clients"])
def test_module_doctests(name):
    import doctest
    import importlib

    need("httpx", "requests", "aiohttp")
    result = doctest.testmod(importlib.import_module(f"tollgate.{name}"))
    assert result.attempted > 0 and result.failed == 0
