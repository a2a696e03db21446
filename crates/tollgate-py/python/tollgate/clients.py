"""Client-side throttles: stay under a remote API's quota by waiting *before* sending.

- :class:`ThrottledTransport` / :class:`AsyncThrottledTransport`: ``httpx`` transports;
- :class:`ThrottledAdapter`: a ``requests`` ``HTTPAdapter``;
- :class:`AiohttpThrottle` / :func:`throttled_session`: an ``aiohttp`` client middleware and a
  ``ClientSession`` that uses it (aiohttp 3.12 or later).

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
import inspect
import time
from collections.abc import Awaitable
from datetime import datetime, timezone
from typing import Any, Callable, Union

from typing_extensions import Self

from . import ConfigError, Limiter

RETRY_STATUSES = (429, 503)

KeyFn = Union[str, Callable[[Any], str], None]
# What the sequence needs to know of a response: (status, Retry-After value).
Inspect = Callable[[Any], "tuple[int, str | None]"]


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

    def retry_wait(self, response: Any, inspect_: Inspect) -> float | None:
        """Seconds to wait before the one retry, or ``None`` for no retry."""
        status, retry_after = inspect_(response)
        if status not in RETRY_STATUSES:
            return None
        wait = retry_after_seconds(retry_after)
        return wait if wait is not None and wait <= self.max_retry_wait else None

    def send(self, key: str, send: Callable[[], Any], inspect_: Inspect,
             close: Callable[[Any], object]) -> Any:
        """The blocking sequence: wait on the limiter, send; on a ``429``/``503`` with a short
        enough ``Retry-After``, close that answer, sleep, wait on the limiter again and send
        once more."""
        self.limiter.acquire(key, self.cost, self.timeout)
        response = send()
        wait = self.retry_wait(response, inspect_)
        if wait is None:
            return response
        close(response)
        time.sleep(wait)
        self.limiter.acquire(key, self.cost, self.timeout)
        return send()

    async def send_async(self, key: str, send: Callable[[], Awaitable[Any]], inspect_: Inspect,
                         close: Callable[[Any], object]) -> Any:
        """:meth:`send` for asyncio: the waits never block the event loop (``close`` may
        return an awaitable)."""
        await self.limiter.acquire_async(key, self.cost, self.timeout)
        response = await send()
        wait = self.retry_wait(response, inspect_)
        if wait is None:
            return response
        closed = close(response)
        if inspect.isawaitable(closed):
            await closed
        await asyncio.sleep(wait)
        await self.limiter.acquire_async(key, self.cost, self.timeout)
        return await send()


def _status_code(response: Any) -> tuple[int, str | None]:
    return response.status_code, response.headers.get("retry-after")


def _aiohttp_status(response: Any) -> tuple[int, str | None]:
    return response.status, response.headers.get("Retry-After")


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
        return self.send(self.key_of(request, request.url.host),
                         lambda: self.transport.handle_request(request), _status_code,
                         lambda r: r.close())

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
        return await self.send_async(self.key_of(request, request.url.host),
                                     lambda: self.transport.handle_async_request(request),
                                     _status_code, lambda r: r.aclose())

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
        return t.send(t.key_of(request, urlsplit(request.url).hostname or ""),
                      lambda: super(ThrottledAdapter, self).send(request, *args, **kwargs),
                      _status_code, lambda r: r.close())


class AiohttpThrottle(_Throttle):
    """``AiohttpThrottle(limiter, key=None, *, cost=1, timeout=None, max_retry_wait=60.0)``:
    an aiohttp client middleware (aiohttp 3.12 or later) that waits on ``limiter`` before each
    request, never blocking the event loop, and honours ``429``/``503`` ``Retry-After`` once.
    ``key`` is a string, a function of the ``aiohttp.ClientRequest``, or ``None`` (the host).

    >>> import tollgate
    >>> throttle = AiohttpThrottle(tollgate.Limiter("5/s"), key="partner-api")
    >>> # aiohttp.ClientSession(middlewares=(throttle,)), or throttled_session(...)
    """

    def __init__(self, limiter: Limiter, key: KeyFn = None, *, cost: int = 1,
                 timeout: float | None = None, max_retry_wait: float = 60.0):
        super().__init__(limiter, key, cost, timeout, max_retry_wait)

    async def __call__(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        return await self.send_async(self.key_of(request, request.url.host or ""),
                                     lambda: handler(request), _aiohttp_status,
                                     lambda r: r.release())


def throttled_session(limiter: Limiter, key: KeyFn = None, *, cost: int = 1,
                      timeout: float | None = None, max_retry_wait: float = 60.0,
                      **session_kwargs: Any) -> Any:
    """An ``aiohttp.ClientSession`` whose requests go through :class:`AiohttpThrottle`
    (``session_kwargs`` go to ``ClientSession``; its own ``middlewares`` run after the
    throttle). Create it inside the event loop, like any ``ClientSession``.

    >>> import asyncio, tollgate
    >>> async def main():
    ...     async with throttled_session(tollgate.Limiter("5/s")) as session:
    ...         return type(session).__name__
    >>> asyncio.run(main())
    'ClientSession'
    """
    import aiohttp

    if not hasattr(aiohttp, "ClientMiddlewareType"):  # client middlewares came in 3.12
        raise ConfigError(f"throttled_session needs aiohttp 3.12 or later "
                          f"(found {aiohttp.__version__})")
    throttle = AiohttpThrottle(limiter, key, cost=cost, timeout=timeout,
                               max_retry_wait=max_retry_wait)
    middlewares = (throttle, *session_kwargs.pop("middlewares", ()))
    return aiohttp.ClientSession(middlewares=middlewares, **session_kwargs)


__all__ = [
    "AiohttpThrottle",
    "AsyncThrottledTransport",
    "ThrottledAdapter",
    "ThrottledTransport",
    "retry_after_seconds",
    "throttled_session",
]
