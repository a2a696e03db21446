"""The framework-neutral core of ``ConcurrencyLimitMiddleware`` (:mod:`tollgate.asgi` and
:mod:`tollgate.wsgi`): at most N requests in flight per key, on :class:`tollgate.Semaphore`
(fleet-wide when the semaphore's store is Redis).

Each policy's semaphore is a template: the key ``k`` of a request is counted on
``semaphore.with_name(f"{semaphore.name}:{k}")`` (same capacity, lease, store and clock).

>>> import tollgate
>>> from tollgate._web import RequestInfo, header
>>> gate = ConcurrencyGate([ConcurrencyPolicy("in-flight", tollgate.Semaphore("api", 1),
...                                           header("x-api-key"))])
>>> req = RequestInfo("GET", "/", None, {"x-api-key": "k1"})
>>> permits, out = gate.enter(req)
>>> out is None, gate.enter(req)[1].status  # k1 is at its limit
(True, 429)
>>> gate.leave(permits)
>>> gate.enter(req)[1] is None
True
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from . import Permit, Semaphore
from ._errors import ConfigError, SemaphoreTimeout, StoreError, TollgateError
from ._web import Extractor, Outcome, RequestInfo, Rule, as_rules, keys_for, problem, unavailable

log = logging.getLogger("tollgate")

# Per-key semaphores kept per policy (a plain cache: cleared when it reaches this size).
CACHE_SIZE = 4096


class ConcurrencyPolicy(Rule):
    """One in-flight limit: ``ConcurrencyPolicy(name, semaphore, key=client_ip(), *,
    path=None, methods=None, permits=1)``.

    ``semaphore`` (a :class:`tollgate.Semaphore`) gives the capacity per key, the lease (make it
    longer than the slowest response), the store (Redis: counted across every process) and the
    clock; ``name``, ``key``, ``path`` and ``methods`` are those of
    :class:`tollgate.asgi.Policy`; ``permits`` is what one request holds.

    >>> import tollgate
    >>> p = ConcurrencyPolicy("uploads", tollgate.Semaphore("up", 2), path="/upload")
    >>> p.for_key("10.0.0.1").name, p.for_key("10.0.0.1").capacity
    ('up:10.0.0.1', 2)
    """

    __slots__ = ("_per_key", "permits", "semaphore")

    def __init__(
        self,
        name: str,
        semaphore: Semaphore,
        key: Extractor | None = None,
        *,
        path: str | None = None,
        methods: Sequence[str] | None = None,
        permits: int = 1,
    ):
        super().__init__(name, key, path, methods)
        if not isinstance(semaphore, Semaphore):
            raise ConfigError(f"policy {name!r}: semaphore must be a tollgate.Semaphore")
        if not 1 <= permits <= semaphore.capacity:
            raise ConfigError(f"policy {name!r}: permits must be 1..{semaphore.capacity} "
                              f"(got {permits})")
        self.semaphore = semaphore
        self.permits = permits
        self._per_key: dict[str, Semaphore] = {}

    def for_key(self, key: str) -> Semaphore:
        """The semaphore that counts ``key``'s requests."""
        sem = self._per_key.get(key)
        if sem is None:
            if len(self._per_key) >= CACHE_SIZE:
                self._per_key.clear()
            sem = self.semaphore.with_name(f"{self.semaphore.name}:{key}")
            self._per_key[key] = sem
        return sem


Held = list[Permit]
Plan = list[tuple[ConcurrencyPolicy, Semaphore]]


class ConcurrencyGate:
    """What both ``ConcurrencyLimitMiddleware`` share: ``ConcurrencyGate(policies, *,
    wait=0.0, retry_after=1, when_full=429)``.

    Every policy that applies takes its permits, all or nothing (a request refused by one
    policy holds none). A full key is answered ``when_full`` (``429`` or ``503``) with
    ``Retry-After: retry_after`` and problem+json, after waiting up to ``wait`` seconds for a
    permit; a store that fails closed is a ``503``.
    """

    def __init__(self, policies: Iterable[ConcurrencyPolicy | tuple], *, wait: float = 0.0,
                 retry_after: int = 1, when_full: int = 429):
        if when_full not in (429, 503):
            raise ConfigError(f"when_full must be 429 or 503 (got {when_full})")
        if not (isinstance(retry_after, int) and retry_after >= 0):
            raise ConfigError(f"retry_after must be whole seconds >= 0 (got {retry_after!r})")
        if not wait >= 0:
            raise ConfigError(f"wait must be >= 0 seconds (got {wait!r})")
        self.policies: list[ConcurrencyPolicy] = as_rules(policies, ConcurrencyPolicy)
        # In memory a permit is taken and given back at once: no awaitable needed.
        self.local = all(p.semaphore.is_local for p in self.policies)
        self.wait = float(wait)
        self.retry_after = retry_after
        self.when_full = when_full

    def plan(self, req: RequestInfo) -> Plan | Outcome:
        """The semaphores this request must take a permit of, or the answer (``400``)."""
        work = keys_for(self.policies, req)
        if isinstance(work, Outcome):
            return work
        try:
            return [(p, p.for_key(k)) for p, k in work]
        except ConfigError as e:  # a key no semaphore name can carry (too long)
            return problem(400, "Bad Request", str(e))

    def full(self, p: ConcurrencyPolicy) -> Outcome:
        """The answer for a key at its limit."""
        cap, retry = p.semaphore.capacity, self.retry_after
        status = self.when_full
        title = "Too Many Requests" if status == 429 else "Service Unavailable"
        out = problem(status, title, f"at most {cap} requests in flight for {p.name!r}; "
                      f"retry after {retry} s", policy=p.name, limit=cap, retry_after=retry)
        out.headers.append(("retry-after", str(retry)))
        return out

    def enter(self, req: RequestInfo) -> tuple[Held, Outcome | None]:
        """Takes the permits of ``req`` (blocking): ``(permits, None)`` to serve it, or
        ``([], answer)``."""
        plan = self.plan(req)
        if isinstance(plan, Outcome):
            return [], plan
        held: Held = []
        try:
            for p, sem in plan:
                permit = self._take(p, sem)
                if permit is None:
                    self.leave(held)
                    return [], self.full(p)
                held.append(permit)
        except StoreError as e:
            self.leave(held)
            return [], unavailable(plan, e)
        except BaseException:
            self.leave(held)
            raise
        return held, None

    async def enter_async(self, req: RequestInfo) -> tuple[Held, Outcome | None]:
        """:meth:`enter` without blocking the event loop; cancelling it leaks no permit."""
        if self.local and not self.wait:
            return self.enter(req)
        plan = self.plan(req)
        if isinstance(plan, Outcome):
            return [], plan
        held: Held = []
        try:
            for p, sem in plan:
                permit = await self._take_async(p, sem)
                if permit is None:
                    await self.leave_async(held)
                    return [], self.full(p)
                held.append(permit)
        except StoreError as e:
            await self.leave_async(held)
            return [], unavailable(plan, e)
        except BaseException:
            for permit in held:  # cancelled: the releases run on without us
                permit.release_async().add_done_callback(_report)
            raise
        return held, None

    def _take(self, p: ConcurrencyPolicy, sem: Semaphore) -> Permit | None:
        if not self.wait:
            return sem.try_acquire(p.permits)
        try:
            return sem.acquire(p.permits, self.wait)
        except SemaphoreTimeout:
            return None

    async def _take_async(self, p: ConcurrencyPolicy, sem: Semaphore) -> Permit | None:
        if not self.wait:
            return await sem.try_acquire_async(p.permits)
        try:
            return await sem.acquire_async(p.permits, self.wait)
        except SemaphoreTimeout:
            return None

    @staticmethod
    def leave(held: Held) -> None:
        """Gives the permits back (a lost lease or a failed store is logged, not raised: the
        response is already on its way)."""
        for permit in held:
            try:
                permit.release()
            except TollgateError as e:
                log.warning("tollgate: releasing an in-flight permit failed: %s", e)

    async def leave_async(self, held: Held) -> None:
        """:meth:`leave` without blocking the event loop."""
        if self.local:
            self.leave(held)
            return
        for permit in held:
            try:
                await permit.release_async()
            except TollgateError as e:
                log.warning("tollgate: releasing an in-flight permit failed: %s", e)


def _report(future: object) -> None:
    error = future.exception() if not future.cancelled() else None  # type: ignore[attr-defined]
    if error is not None:
        log.warning("tollgate: releasing an in-flight permit failed: %s", error)
