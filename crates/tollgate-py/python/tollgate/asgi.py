"""``RateLimitMiddleware`` and ``ConcurrencyLimitMiddleware`` for any ASGI application
(Starlette, FastAPI, Quart, ...).

Every request is checked against the policies that apply to it (path prefix, methods), all
together and all-or-nothing (:func:`tollgate.check_all_async`: a denied request charges no
policy). Allowed responses carry ``RateLimit`` / ``RateLimit-Policy``; a denial is a ``429``
with ``Retry-After``, those fields and an RFC 9457 problem+json body; a store that fails
closed is a ``503`` (never a ``500``). ``shadow=True`` decides and reports but never denies.

>>> import tollgate
>>> from tollgate.asgi import RateLimitMiddleware, Policy, client_ip
>>> async def app(scope, receive, send):
...     await send({"type": "http.response.start", "status": 200, "headers": []})
...     await send({"type": "http.response.body", "body": b"ok"})
>>> guarded = RateLimitMiddleware(app, [Policy("per-ip", tollgate.Limiter("10/s"), client_ip())])

``ConcurrencyLimitMiddleware`` bounds the requests *in flight* per key instead (see
:class:`ConcurrencyPolicy`): a request holds its permits until its response is sent
completely (streaming bodies included), the client went away or the app raised.

>>> from tollgate.asgi import ConcurrencyLimitMiddleware, ConcurrencyPolicy
>>> guarded = ConcurrencyLimitMiddleware(app, [
...     ConcurrencyPolicy("in-flight", tollgate.Semaphore("api", 4), client_ip())])
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, MutableMapping
from typing import Any, Callable

from . import _inflight, _web, check_all_async
from ._errors import StoreError
from ._inflight import ConcurrencyPolicy
from ._web import Policy, RequestInfo, client_ip, global_key, header

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def request_info(scope: Scope) -> RequestInfo:
    """The :class:`RequestInfo` of an ASGI HTTP scope (its headers decoded on first use)."""

    def headers() -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            k = name.decode("latin-1").lower()
            v = value.decode("latin-1")
            out[k] = f"{out[k]}, {v}" if k in out else v
        return out

    client = scope.get("client")
    return RequestInfo(scope.get("method", "GET"), scope.get("path", "/"),
                       client[0] if client else None, headers)


def encoded(headers: _web.Headers) -> list[tuple[bytes, bytes]]:
    """ASGI header pairs."""
    return [(k.encode(), v.encode()) for k, v in headers]


async def answer(send: Send, out: _web.Outcome) -> None:
    """Sends ``out`` (a status, its headers and body) as the whole response."""
    await send({"type": "http.response.start", "status": out.status,
                "headers": encoded(out.headers)})
    await send({"type": "http.response.body", "body": out.body})


class RateLimitMiddleware:
    """``RateLimitMiddleware(app, policies, *, shadow=False)``: see the module docs.

    ``policies`` are :class:`Policy` objects or ``(name, limiter, key, path, methods)``
    tuples (trailing items optional). With FastAPI/Starlette:
    ``app.add_middleware(RateLimitMiddleware, policies=[...])``.
    """

    def __init__(self, app: ASGIApp, policies: Iterable[_web.PolicyLike], *,
                 shadow: bool = False):
        self.app = app
        self.gate = _web.RateGate(policies, shadow)
        self.policies = self.gate.policies

    async def decide(self, req: RequestInfo) -> _web.Outcome:
        """The :class:`Outcome` for one request (checks and charges the policies)."""
        if self.gate.local:  # in memory: decided at once, no awaitable needed
            return self.gate.decide(req)
        work = self.gate.plan(req)
        if isinstance(work, _web.Outcome):
            return work
        try:
            if len(work) == 1:
                p, key = work[0]
                decisions = [await p.limiter.check_async(key, p.cost)]
            else:
                multi = await check_all_async([(p.limiter, key, p.cost) for p, key in work])
                decisions = multi.decisions
        except StoreError as e:
            return _web.unavailable(work, e)
        return self.gate.settle(work, decisions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        req = request_info(scope)
        out = self.gate.decide(req) if self.gate.local else await self.decide(req)
        if out.status is not None:
            await answer(send, out)
            return
        if not out.headers:
            await self.app(scope, receive, send)
            return
        extra = encoded(out.headers)

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_fields)


class ConcurrencyLimitMiddleware:
    """``ConcurrencyLimitMiddleware(app, policies, *, wait=0.0, retry_after=1,
    when_full=429)``: at most ``semaphore.capacity`` requests in flight per key and policy.

    ``policies`` are :class:`ConcurrencyPolicy` objects or ``(name, semaphore, key, path,
    methods)`` tuples. A request whose key is full (after waiting up to ``wait`` seconds) is
    answered ``when_full`` (``429``, or ``503``) with ``Retry-After: retry_after`` and a
    problem+json body; a store that fails closed is a ``503``. The permits are given back
    when the app returns: after the last body chunk, a client disconnect or an exception.
    """

    def __init__(self, app: ASGIApp, policies: Iterable[ConcurrencyPolicy | tuple], *,
                 wait: float = 0.0, retry_after: int = 1, when_full: int = 429):
        self.app = app
        self.gate = _inflight.ConcurrencyGate(policies, wait=wait, retry_after=retry_after,
                                              when_full=when_full)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held, out = await self.gate.enter_async(request_info(scope))
        if out is not None:
            await answer(send, out)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            await self.gate.leave_async(held)


__all__ = ["ConcurrencyLimitMiddleware", "ConcurrencyPolicy", "Policy", "RateLimitMiddleware",
           "RequestInfo", "client_ip", "global_key", "header", "request_info"]
