"""``RateLimitMiddleware`` for any WSGI application (Flask, Django, Pyramid, ...): the
synchronous twin of :mod:`tollgate.asgi`, with the same policies, extractors, fields, ``429``,
``503`` and shadow mode.

>>> import tollgate
>>> from tollgate.wsgi import RateLimitMiddleware, Policy, header
>>> def app(environ, start_response):
...     start_response("200 OK", [("content-type", "text/plain")])
...     return [b"ok"]
>>> guarded = RateLimitMiddleware(app, [Policy("per-key", tollgate.Limiter("5/s"), header("x-api-key"))])

With Flask: ``app.wsgi_app = RateLimitMiddleware(app.wsgi_app, [...])``.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Callable

from . import check_all
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

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def request_info(environ: Environ) -> RequestInfo:
    """The :class:`RequestInfo` of a WSGI environ."""
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
               if k.startswith("HTTP_")}
    for k in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(k):
            headers[k.replace("_", "-").lower()] = environ[k]
    return RequestInfo(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/"),
                       environ.get("REMOTE_ADDR") or None, headers)


class RateLimitMiddleware:
    """``RateLimitMiddleware(app, policies, *, shadow=False)``: see the module docs."""

    def __init__(self, app: WSGIApp, policies: Iterable[PolicyLike], *, shadow: bool = False):
        self.app = app
        self.policies: list[Policy] = as_policies(policies)
        self.shadow = shadow

    def decide(self, req: RequestInfo) -> Outcome:
        """The :class:`Outcome` for one request (checks and charges the policies)."""
        work = keys_for(self.policies, req)
        if isinstance(work, Outcome):
            return work
        if not work:
            return Outcome(None, [])
        try:
            if len(work) == 1:
                p, key = work[0]
                decisions = [p.limiter.check(key, p.cost)]
            else:
                decisions = check_all([(p.limiter, key, p.cost) for p, key in work]).decisions
        except TollgateError as e:
            if is_store_failure(e):
                return unavailable(work, e)
            raise
        return outcome(work, decisions, self.shadow)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        out = self.decide(request_info(environ))
        if out.status is not None:
            phrase = HTTPStatus(out.status).phrase
            start_response(f"{out.status} {phrase}", out.headers)
            return [out.body]
        if not out.headers:
            return self.app(environ, start_response)

        def start_with_fields(status: str, headers: list, exc_info: Any | None = None) -> Any:
            return start_response(status, list(headers) + out.headers, exc_info)

        return self.app(environ, start_with_fields)


__all__ = [
    "Policy",
    "RateLimitMiddleware",
    "RequestInfo",
    "client_ip",
    "global_key",
    "header",
    "request_info",
]
