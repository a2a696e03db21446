"""Client-side throttles: stay under a remote API's quota by waiting *before* sending.

- :class:`ThrottledTransport` / :class:`AsyncThrottledTransport`: ``httpx`` transports;
- :class:`ThrottledAdapter`: a ``requests`` ``HTTPAdapter``.

Each one waits (``Limiter.acquire`` / ``acquire_async``) for ``cost`` on the request's key
(default: the URL's host) before sending; with a Redis-backed limiter the quota is shared by
every process. A ``429`` or ``503`` answer with a ``Retry-After`` of at most
``max_retry_wait`` seconds is waited out and the request sent once more (through the limiter
again); a longer or missing ``Retry-After`` returns the answer as it is.

>>> import httpx, tollgate
>>> from tollgate.clients import ThrottledTransport
>>> client = httpx.Client(transport=ThrottledTransport(tollgate.Limiter("10/s")))
>>> client.close()
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from datetime import datetime, timezone
from typing import Any, Callable, Union

from typing_extensions import Self

from . import Limiter

RETRY_STATUSES = (429, 503)

KeyFn = Union[str, Callable[[Any], str], None]


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` value in seconds (delta-seconds or an HTTP-date), ``None`` if absent
    or malformed.

    >>> retry_after_seconds("3"), retry_after_seconds(None), retry_after_seconds("soon")
    (3.0, None, None)
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class _Throttle:
    def __init__(self, limiter: Limiter, key: KeyFn, cost: int, timeout: float | None,
                 max_retry_wait: float):
        self.limiter = limiter
        self.key = key
        self.cost = cost
        self.timeout = timeout
        self.max_retry_wait = max_retry_wait

    def key_of(self, request: Any, host: str) -> str:
        if self.key is None:
            return host
        return self.key(request) if callable(self.key) else self.key

    def retry_wait(self, status: int, retry_after: str | None) -> float | None:
        """Seconds to wait before the one retry, or ``None`` for no retry."""
        if status not in RETRY_STATUSES:
            return None
        wait = retry_after_seconds(retry_after)
        return wait if wait is not None and wait <= self.max_retry_wait else None


def _httpx() -> Any:
    import httpx

    return httpx


class ThrottledTransport(_Throttle):
    """``ThrottledTransport(limiter, key=None, *, transport=None, cost=1, timeout=None,
    max_retry_wait=60.0)``: an ``httpx.BaseTransport`` that waits on ``limiter`` before each
    request. ``key`` is a string, a function of the ``httpx.Request``, or ``None`` (the host);
    ``transport`` is the wrapped transport (default ``httpx.HTTPTransport()``); ``timeout``
    bounds each wait (``RateLimitExceeded`` beyond it, nothing sent).

    >>> import httpx, tollgate
    >>> t = ThrottledTransport(tollgate.Limiter("5/s"), key="partner-api")
    >>> httpx.Client(transport=t).close()
    """

    def __init__(self, limiter: Limiter, key: KeyFn = None, *, transport: Any = None,
                 cost: int = 1, timeout: float | None = None, max_retry_wait: float = 60.0):
        super().__init__(limiter, key, cost, timeout, max_retry_wait)
        self.transport = transport if transport is not None else _httpx().HTTPTransport()

    def handle_request(self, request: Any) -> Any:
        key = self.key_of(request, request.url.host)
        self.limiter.acquire(key, self.cost, self.timeout)
        response = self.transport.handle_request(request)
        wait = self.retry_wait(response.status_code, response.headers.get("retry-after"))
        if wait is None:
            return response
        response.close()
        time.sleep(wait)
        self.limiter.acquire(key, self.cost, self.timeout)
        return self.transport.handle_request(request)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncThrottledTransport(_Throttle):
    """The ``httpx.AsyncBaseTransport`` twin of :class:`ThrottledTransport`: waits never
    block the event loop (``acquire_async``, ``asyncio.sleep``).

    >>> import httpx, tollgate
    >>> t = AsyncThrottledTransport(tollgate.Limiter("5/s"))
    >>> client = httpx.AsyncClient(transport=t)
    """

    def __init__(self, limiter: Limiter, key: KeyFn = None, *, transport: Any = None,
                 cost: int = 1, timeout: float | None = None, max_retry_wait: float = 60.0):
        super().__init__(limiter, key, cost, timeout, max_retry_wait)
        self.transport = transport if transport is not None else _httpx().AsyncHTTPTransport()

    async def handle_async_request(self, request: Any) -> Any:
        key = self.key_of(request, request.url.host)
        await self.limiter.acquire_async(key, self.cost, self.timeout)
        response = await self.transport.handle_async_request(request)
        wait = self.retry_wait(response.status_code, response.headers.get("retry-after"))
        if wait is None:
            return response
        await response.aclose()
        await asyncio.sleep(wait)
        await self.limiter.acquire_async(key, self.cost, self.timeout)
        return await self.transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _adapter_base() -> Any:
    try:
        from requests.adapters import HTTPAdapter
    except ImportError:  # requests not installed: the adapter is unavailable
        return object
    return HTTPAdapter


class ThrottledAdapter(_adapter_base()):  # type: ignore[misc]
    """``ThrottledAdapter(limiter, key=None, *, cost=1, timeout=None, max_retry_wait=60.0,
    **adapter_kwargs)``: a ``requests`` ``HTTPAdapter`` that waits on ``limiter`` before each
    request (``key``: a string, a function of the ``PreparedRequest``, or ``None`` for the host).

    >>> import requests, tollgate
    >>> session = requests.Session()
    >>> session.mount("https://", ThrottledAdapter(tollgate.Limiter("5/s")))
    """

    def __init__(self, limiter: Limiter, key: KeyFn = None, *, cost: int = 1,
                 timeout: float | None = None, max_retry_wait: float = 60.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.throttle = _Throttle(limiter, key, cost, timeout, max_retry_wait)

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        from urllib.parse import urlsplit

        t = self.throttle
        key = t.key_of(request, urlsplit(request.url).hostname or "")
        t.limiter.acquire(key, t.cost, t.timeout)
        response = super().send(request, *args, **kwargs)
        wait = t.retry_wait(response.status_code, response.headers.get("Retry-After"))
        if wait is None:
            return response
        response.close()
        time.sleep(wait)
        t.limiter.acquire(key, t.cost, t.timeout)
        return super().send(request, *args, **kwargs)


__all__ = [
    "AsyncThrottledTransport",
    "ThrottledAdapter",
    "ThrottledTransport",
    "retry_after_seconds",
]
