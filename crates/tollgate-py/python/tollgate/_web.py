"""The framework-neutral core of :mod:`tollgate.asgi` and :mod:`tollgate.wsgi`: policies, key
extractors, and the responses (fields, 429, 503, problem+json).

The ``RateLimit`` / ``RateLimit-Policy`` / ``Retry-After`` values come from the native module
(the tower layer's formula, in Rust), never from Python arithmetic.

>>> import tollgate
>>> from tollgate._web import Policy, RequestInfo, header
>>> p = Policy("api", tollgate.Limiter("2/s"), header("x-api-key"), path="/api")
>>> p.applies(RequestInfo("GET", "/api/users", None, {"x-api-key": "k1"}))
True
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Callable, Optional, TypeVar, Union

from . import _tollgate
from ._errors import StoreError, TollgateError

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class RequestInfo:
    """What a key extractor sees of a request: ``method``, ``path``, ``client`` (the peer
    address, ``None`` if unknown) and ``headers`` (lower-case names; repeated fields joined
    with ``", "``). ``headers`` may be given as a function that builds them: it is then
    called once, on first use (most extractors never look).

    >>> RequestInfo("GET", "/", "10.0.0.1", {"x-user": "7"}).headers["x-user"]
    '7'
    >>> RequestInfo("GET", "/", None, lambda: {"x-user": "8"}).headers["x-user"]
    '8'
    """

    __slots__ = ("_headers", "client", "method", "path")

    def __init__(self, method: str, path: str, client: str | None,
                 headers: dict[str, str] | Callable[[], dict[str, str]]):
        self.method = method
        self.path = path
        self.client = client
        self._headers = headers

    @property
    def headers(self) -> dict[str, str]:
        h = self._headers
        if callable(h):
            h = self._headers = h()
        return h


Extractor = Callable[[RequestInfo], Optional[str]]


def client_ip(trusted_proxies: Iterable[str] = ()) -> Extractor:
    """The client address: the peer, unless the peer is a trusted proxy; then
    ``X-Forwarded-For`` is walked from the right and the first address that is not a trusted
    proxy is the client. A spoofed ``X-Forwarded-For`` from an untrusted peer is ignored.

    >>> ip = client_ip(["10.0.0.0/8"])
    >>> ip(RequestInfo("GET", "/", "10.0.0.2", {"x-forwarded-for": "6.6.6.6, 1.2.3.4, 10.0.0.9"}))
    '1.2.3.4'
    >>> ip(RequestInfo("GET", "/", "5.5.5.5", {"x-forwarded-for": "1.2.3.4"}))
    '5.5.5.5'
    """
    networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]

    def trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in n for n in networks)

    def extract(req: RequestInfo) -> str | None:
        peer = req.client
        if peer is None or not networks or not trusted(peer):
            return peer
        hops = [h.strip() for h in req.headers.get("x-forwarded-for", "").split(",") if h.strip()]
        for hop in reversed(hops):
            if not trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return None  # a malformed hop: no key (answered 400)
        return hops[0] if hops else peer

    return extract


def header(name: str) -> Extractor:
    """The value of request header ``name`` (``None`` when absent).

    >>> header("X-Api-Key")(RequestInfo("GET", "/", None, {"x-api-key": "k"}))
    'k'
    """
    lower = name.lower()
    return lambda req: req.headers.get(lower)


def global_key(req: RequestInfo) -> str | None:
    """One key for every request (a global limit).

    >>> global_key(RequestInfo("GET", "/", None, {}))
    'global'
    """
    return "global"


class Rule:
    """What every middleware policy has: ``name``, the ``key`` extractor (``None``:
    :func:`client_ip`), and the ``path`` prefix and ``methods`` it is limited to.

    >>> r = Rule("r", header("x-k"), "/api", ["get"])
    >>> r.applies(RequestInfo("GET", "/api/x", None, {})), r.applies(RequestInfo("GET", "/", None, {}))
    (True, False)
    """

    __slots__ = ("key", "methods", "name", "path")

    def __init__(self, name: str, key: Extractor | None, path: str | None,
                 methods: Sequence[str] | None):
        self.name = name
        self.key: Extractor = key if key is not None else client_ip()
        self.path = path
        self.methods = frozenset(m.upper() for m in methods) if methods else None

    def applies(self, req: RequestInfo) -> bool:
        """Whether this policy limits ``req`` (path prefix and method)."""
        if self.path is not None and not req.path.startswith(self.path):
            return False
        return self.methods is None or req.method.upper() in self.methods


class Policy(Rule):
    """One limit of the middleware: ``Policy(name, limiter, key=client_ip(), *, path=None,
    methods=None, cost=1)``.

    ``name`` appears in the response fields (1-64 characters of ``A-Z a-z 0-9 - _ . : /``);
    ``key`` is an extractor (a function of :class:`RequestInfo` returning the key, or ``None``
    when the request has none: answered ``400``); ``path`` limits the policy to paths starting
    with that prefix and ``methods`` to those methods.

    >>> import tollgate
    >>> p = Policy("writes", tollgate.Limiter("1/s"), global_key, methods=["POST"])
    >>> p.applies(RequestInfo("GET", "/", None, {})), p.applies(RequestInfo("POST", "/", None, {}))
    (False, True)
    """

    __slots__ = ("cost", "limiter")

    def __init__(
        self,
        name: str,
        limiter: _tollgate.Limiter,
        key: Extractor | None = None,
        *,
        path: str | None = None,
        methods: Sequence[str] | None = None,
        cost: int = 1,
    ):
        super().__init__(name, key, path, methods)
        self.limiter = limiter
        self.cost = cost


PolicyLike = Union[Policy, tuple]


R = TypeVar("R", bound=Rule)


def as_rules(rules: Iterable[R | tuple], kind: type[R]) -> list[R]:
    """``kind`` policies from objects or from ``(name, limiter_or_semaphore[, key[, path[,
    methods]]])`` tuples; every name is checked now (``ConfigError`` for a name no field can
    carry).

    >>> import tollgate
    >>> as_rules([("w", tollgate.Limiter("1/s"), global_key, "/api", ["POST"])], Policy)[0].methods
    frozenset({'POST'})
    """
    out = [r if isinstance(r, kind) else kind(*r[:3], **dict(zip(("path", "methods"), r[3:])))
           for r in rules]
    for r in out:
        _tollgate.check_policy_name(r.name)
    return out


def as_policies(policies: Iterable[PolicyLike]) -> list[Policy]:
    """Policies from :class:`Policy` objects or ``(name, limiter[, key[, path[, methods]]])``
    tuples (see :func:`as_rules`)."""
    return as_rules(policies, Policy)


Headers = list[tuple[str, str]]
Work = list[tuple[Policy, str]]


class Outcome:
    """What the middleware does with a request: pass it on with ``headers`` added
    (``status`` is ``None``) or answer ``status`` with ``headers`` and the problem+json
    ``body``."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int | None, headers: Headers, body: bytes = b""):
        self.status = status
        self.headers = headers
        self.body = body


def problem(status: int, title: str, detail: str, **extensions: object) -> Outcome:
    """An RFC 9457 ``application/problem+json`` answer."""
    doc = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    doc.update(extensions)
    body = json.dumps(doc).encode()
    headers = [("content-type", "application/problem+json"), ("content-length", str(len(body)))]
    return Outcome(status, headers, body)


PASS = Outcome(None, [])
"""Pass the request on, adding nothing."""


def keys_for(policies: list[R], req: RequestInfo) -> list[tuple[R, str]] | Outcome:
    """The applicable policies with their keys, or the ``400`` for a request without a key."""
    work: list[tuple[R, str]] = []
    for p in policies:
        if not p.applies(req):
            continue
        key = p.key(req)
        if key is None:
            return problem(400, "Bad Request", f"no rate-limit key for policy {p.name!r}",
                           policy=p.name)
        work.append((p, key))
    return work


def fields(items: list[tuple[Policy, _tollgate.Decision]]) -> Headers:
    """The ``RateLimit`` / ``RateLimit-Policy`` fields of these decisions (native formula)."""
    pair = _tollgate.ratelimit_fields([(p.name, p.limiter, d) for p, d in items])
    if pair is None:
        return []
    return [("ratelimit", pair[0]), ("ratelimit-policy", pair[1])]


def unavailable(work: Sequence[tuple[Rule, object]], error: TollgateError) -> Outcome:
    """The ``503`` when the store failed closed (never a ``500``)."""
    names = ", ".join(p.name for p, _ in work)
    kind = getattr(error, "kind", "other")
    out = problem(503, "Service Unavailable",
                  f"rate limiting is unavailable (policy {names}); try again later",
                  policy=work[0][0].name, store_error=kind)
    out.headers.append(("retry-after", "1"))
    return out


def outcome(work: Work, decisions: list[_tollgate.Decision], shadow: bool) -> Outcome:
    """Pass (with the fields of every policy) or ``429`` (with the fields of the policies that
    denied, ``Retry-After`` of the longest wait and a problem+json body)."""
    if len(work) == 1 and (shadow or decisions[0].allowed):  # the common case, shortest path
        p, d = work[0][0], decisions[0]
        pair = _tollgate.ratelimit_fields([(p.name, p.limiter, d)])
        return Outcome(None, [("ratelimit", pair[0]), ("ratelimit-policy", pair[1])])
    denied = None
    for (p, _), d in zip(work, decisions):
        if not d.allowed and (denied is None or d.retry_after > denied[1].retry_after):
            denied = (p, d)
    if denied is None or shadow:
        return Outcome(None, fields(list(zip((p for p, _ in work), decisions))))
    p, d = denied
    retry = _tollgate.retry_after_field(d)
    out = problem(429, "Too Many Requests", f"rate limit {p.name!r} exceeded; retry after {retry} s",
                  policy=p.name, retry_after=retry)
    out.headers.append(("retry-after", str(retry)))
    out.headers += fields([(q, e) for (q, _), e in zip(work, decisions) if not e.allowed])
    return out


class RateGate:
    """What :class:`tollgate.asgi.RateLimitMiddleware` and
    :class:`tollgate.wsgi.RateLimitMiddleware` share: the policies, which of them apply, and
    the answer once the limiters decided (or the store failed)."""

    def __init__(self, policies: Iterable[PolicyLike], shadow: bool):
        self.policies: list[Policy] = as_policies(policies)
        self.shadow = shadow
        # In memory every check returns at once: async middleware may call it directly.
        self.local = all(p.limiter.is_local for p in self.policies)

    def decide(self, req: RequestInfo) -> Outcome:
        """The :class:`Outcome` for one request (checks and charges the policies; blocks on
        a remote store)."""
        work = self.plan(req)
        if isinstance(work, Outcome):
            return work
        try:
            if len(work) == 1:
                p, key = work[0]
                decisions = [p.limiter.check(key, p.cost)]
            else:
                items = [(p.limiter, key, p.cost) for p, key in work]
                decisions = _tollgate.check_all(items).decisions
        except StoreError as e:
            return unavailable(work, e)
        return self.settle(work, decisions)

    def plan(self, req: RequestInfo) -> Work | Outcome:
        """The policies to check with their keys, or the answer without a check."""
        work = keys_for(self.policies, req)
        if isinstance(work, Outcome):
            return work
        return work if work else PASS

    def settle(self, work: Work, decisions: list[_tollgate.Decision]) -> Outcome:
        """The answer for these decisions."""
        return outcome(work, decisions, self.shadow)


def status_line(status: int) -> str:
    """``"429 Too Many Requests"``.

    >>> status_line(503)
    '503 Service Unavailable'
    """
    return f"{status} {HTTPStatus(status).phrase}"
