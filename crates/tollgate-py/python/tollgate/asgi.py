"""``RateLimitMiddleware`` for any ASGI application (Starlette, FastAPI, Quart, ...).

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
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, MutableMapping
from typing import Any, Callable

from . import check_all_async
from ._errors import TollgateError
from ._web import (
    Outcome,
    Policy,
    PolicyLike,
    RequestInfo,
    as_policies,
    client_ip,
    global_key,
    header,
    is_store_failure,
    keys_for,
    outcome,
    unavailable,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def request_info(scope: Scope) -> RequestInfo:
    """The :class:`RequestInfo` of an ASGI HTTP scope."""
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        k = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        headers[k] = f"{headers[k]}, {v}" if k in headers else v
    client = scope.get("client")
    return RequestInfo(scope.get("method", "GET"), scope.get("path", "/"),
                       client[0] if client else None, headers)


class RateLimitMiddleware:
    """``RateLimitMiddleware(app, policies, *, shadow=False)``: see the module docs.

    ``policies`` are :class:`Policy` objects or ``(name, limiter, key, path, methods)``
    tuples (trailing items optional). With FastAPI/Starlette:
    ``app.add_middleware(RateLimitMiddleware, policies=[...])``.
    """

    def __init__(self, app: ASGIApp, policies: Iterable[PolicyLike], *, shadow: bool = False):
        self.app = app
        self.policies: list[Policy] = as_policies(policies)
        self.shadow = shadow

    async def decide(self, req: RequestInfo) -> Outcome:
        """The :class:`Outcome` for one request (checks and charges the policies)."""
        work = keys_for(self.policies, req)
        if isinstance(work, Outcome):
            return work
        if not work:
            return Outcome(None, [])
        try:
            if len(work) == 1:
                p, key = work[0]
                decisions = [await p.limiter.check_async(key, p.cost)]
            else:
                multi = await check_all_async([(p.limiter, key, p.cost) for p, key in work])
                decisions = multi.decisions
        except TollgateError as e:
            if is_store_failure(e):
                return unavailable(work, e)
            raise
        return outcome(work, decisions, self.shadow)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        out = await self.decide(request_info(scope))
        if out.status is not None:
            await send({"type": "http.response.start", "status": out.status,
                        "headers": [(k.encode(), v.encode()) for k, v in out.headers]})
            await send({"type": "http.response.body", "body": out.body})
            return
        if not out.headers:
            await self.app(scope, receive, send)
            return
        extra = [(k.encode(), v.encode()) for k, v in out.headers]

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", ())) + extra
            await send(message)

        await self.app(scope, receive, send_with_fields)


__all__ = [
    "Policy",
    "RateLimitMiddleware",
    "RequestInfo",
    "client_ip",
    "global_key",
    "header",
    "request_info",
]
