"""``RateLimitMiddleware`` and ``ConcurrencyLimitMiddleware`` for any WSGI application (Flask,
Django, Pyramid, ...): the synchronous twins of :mod:`tollgate.asgi`, with the same policies,
extractors, fields, ``429``, ``503`` and shadow mode.

>>> import tollgate
>>> from tollgate.wsgi import RateLimitMiddleware, Policy, header
>>> def app(environ, start_response):
...     start_response("200 OK", [("content-type", "text/plain")])
...     return [b"ok"]
>>> guarded = RateLimitMiddleware(app, [Policy("per-key", tollgate.Limiter("5/s"), header("x-api-key"))])

With Flask: ``app.wsgi_app = RateLimitMiddleware(app.wsgi_app, [...])``. In-flight limits:

>>> from tollgate.wsgi import ConcurrencyLimitMiddleware, ConcurrencyPolicy
>>> guarded = ConcurrencyLimitMiddleware(app, [
...     ConcurrencyPolicy("in-flight", tollgate.Semaphore("api", 4), header("x-api-key"))])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Callable

from . import _inflight, _web
from ._inflight import ConcurrencyPolicy
from ._web import Policy, RequestInfo, client_ip, global_key, header

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def request_info(environ: Environ) -> RequestInfo:
    """The :class:`RequestInfo` of a WSGI environ (its headers collected on first use)."""

    def headers() -> dict[str, str]:
        out = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
               if k.startswith("HTTP_")}
        for k in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(k):
                out[k.replace("_", "-").lower()] = environ[k]
        return out

    return RequestInfo(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/"),
                       environ.get("REMOTE_ADDR") or None, headers)


def answer(start_response: StartResponse, out: _web.Outcome) -> list[bytes]:
    """Starts ``out`` (a status, its headers and body) as the whole response."""
    start_response(_web.status_line(out.status or 200), out.headers)
    return [out.body]


class RateLimitMiddleware:
    """``RateLimitMiddleware(app, policies, *, shadow=False)``: see the module docs."""

    def __init__(self, app: WSGIApp, policies: Iterable[_web.PolicyLike], *,
                 shadow: bool = False):
        self.app = app
        self.gate = _web.RateGate(policies, shadow)
        self.policies = self.gate.policies

    def decide(self, req: RequestInfo) -> _web.Outcome:
        """The :class:`Outcome` for one request (checks and charges the policies)."""
        return self.gate.decide(req)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        out = self.decide(request_info(environ))
        if out.status is not None:
            return answer(start_response, out)
        if not out.headers:
            return self.app(environ, start_response)

        def start_with_fields(status: str, headers: list, exc_info: Any | None = None) -> Any:
            return start_response(status, list(headers) + out.headers, exc_info)

        return self.app(environ, start_with_fields)


class ReleasingBody:
    """The app's response iterable, giving the permits back when the server closes it (PEP
    3333: after the last chunk, or when the client went away) and closing the app's own."""

    __slots__ = ("body", "held")

    def __init__(self, body: Iterable[bytes], held: _inflight.Held):
        self.body = body
        self.held = held

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            held, self.held = self.held, []
            _inflight.ConcurrencyGate.leave(held)


class ConcurrencyLimitMiddleware:
    """``ConcurrencyLimitMiddleware(app, policies, *, wait=0.0, retry_after=1,
    when_full=429)``: the WSGI twin of :class:`tollgate.asgi.ConcurrencyLimitMiddleware`. The
    permits are given back when the server closes the response (after the last chunk of a
    streaming body, or on a client disconnect) or when the app raises."""

    def __init__(self, app: WSGIApp, policies: Iterable[ConcurrencyPolicy | tuple], *,
                 wait: float = 0.0, retry_after: int = 1, when_full: int = 429):
        self.app = app
        self.gate = _inflight.ConcurrencyGate(policies, wait=wait, retry_after=retry_after,
                                              when_full=when_full)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        held, out = self.gate.enter(request_info(environ))
        if out is not None:
            return answer(start_response, out)
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self.gate.leave(held)
            raise
        return ReleasingBody(body, held)


__all__ = ["ConcurrencyLimitMiddleware", "ConcurrencyPolicy", "Policy", "RateLimitMiddleware",
           "RequestInfo", "client_ip", "global_key", "header", "request_info"]
