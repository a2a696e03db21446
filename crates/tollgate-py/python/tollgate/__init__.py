"""tollgate: exact, fast rate limits and concurrency limits for Python.

The engine is tollgate's Rust library: the same pure integer algorithms and the same stores
(memory, Redis standalone and Cluster, PostgreSQL, SQLite) as every other tollgate surface, so
a decision here is the decision of the server, the tower layer and the golden vectors.

>>> import tollgate
>>> limiter = tollgate.Limiter("2/s")
>>> limiter.check("alice").allowed, limiter.check("alice").remaining
(True, 0)
>>> bool(limiter.check("alice"))
False

See ``docs/python.md`` for the full guide.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import os
import sys
from typing import Any, Callable, Iterable, Optional, TypeVar, Union

from . import _tollgate
from ._errors import (
    ConfigError,
    CostExceedsCapacity,
    InvalidCost,
    InvalidKey,
    InvalidRate,
    LeaseExpired,
    RateLimitExceeded,
    SemaphoreError,
    SemaphoreTimeout,
    StoreError,
    TollgateError,
)
from ._tollgate import Decision, Lease, ManualClock, MultiDecision, Rate, Store

__version__ = _tollgate.__version__


def flush_leases() -> int:
    """Gives back the unused units of every leased limiter of this process (see
    :class:`Lease`) and returns how many. Runs by itself at exit (and at the end of a
    ``multiprocessing`` child); call it in workers that end with ``os._exit``. Raises
    :class:`StoreError` (after trying every limiter) if a store refused them: those units
    come back by the store's own refill.

    >>> flush_leases()
    0
    """
    return _tollgate.flush_leases()


def _at_exit() -> None:
    # First give back the leased units (the store is still reachable), then keep the
    # runtime's threads out of the finalizing interpreter (see runtime.rs). Never raises.
    _tollgate._flush_leases_at_exit()
    _tollgate._quiesce()


atexit.register(_at_exit)

_mp_hooked = False


def _hook_multiprocessing() -> None:
    """A ``multiprocessing`` child ends with ``os._exit`` (no ``atexit``): give the leased
    units back in its exit finalizers too. The finalizer registry is cleared when a child
    starts, so the finalizer is registered again then (``register_after_fork``)."""
    global _mp_hooked
    util = sys.modules.get("multiprocessing.util")
    if util is None or _mp_hooked:
        return
    _mp_hooked = True
    util.register_after_fork(_finalize_in_child, _finalize_in_child)
    _finalize_in_child(None)


def _finalize_in_child(_: object) -> None:
    import multiprocessing.util as util

    util.Finalize(None, _tollgate._flush_leases_at_exit, exitpriority=100)


def _after_fork_in_child() -> None:
    _tollgate._after_fork_in_child()
    _hook_multiprocessing()


_hook_multiprocessing()

if hasattr(os, "register_at_fork"):
    # After fork() the child rebuilds the runtime and every Redis/SQL connection on first
    # use (see docs/python.md, "Processes and fork").
    os.register_at_fork(after_in_child=_after_fork_in_child)

F = TypeVar("F", bound=Callable[..., Any])
KeyArg = Union[str, Callable[..., str], None]
CostArg = Union[int, Callable[..., int]]


class Limit:
    """``with limiter.limit(key):`` / ``async with limiter.limit(key):``.

    Entering waits (at most ``timeout`` seconds, ``None`` for as long as it takes) until
    ``cost`` is admitted on ``key`` and gives the :class:`Decision`; a wait that runs out
    raises :class:`RateLimitExceeded` and charges nothing. Leaving does nothing: the cost is
    spent (use :meth:`Limiter.refund` to give back units you did not use).
    """

    __slots__ = ("_limiter", "_key", "_cost", "_timeout", "decision")

    def __init__(self, limiter: "Limiter", key: str, cost: int, timeout: Optional[float]):
        self._limiter = limiter
        self._key = key
        self._cost = cost
        self._timeout = timeout
        self.decision: Optional[Decision] = None

    def __enter__(self) -> Decision:
        self.decision = self._limiter.acquire(self._key, self._cost, self._timeout)
        return self.decision

    def __exit__(self, *exc: object) -> bool:
        return False

    async def __aenter__(self) -> Decision:
        self.decision = await self._limiter.acquire_async(self._key, self._cost, self._timeout)
        return self.decision

    async def __aexit__(self, *exc: object) -> bool:
        return False


class Limiter(_tollgate.Limiter):
    """A keyed rate limiter: ``Limiter(rates, algorithm="gcra", store=None, *, clock=None,
    initial_tokens=None, on_allow=None, on_block=None, on_error=None, max_key_len=1024,
    lease=None)``.

    ``rates`` is a rate string (``"10/s"``, ``"5/s; 1000/hour"``, ``"10/s burst 20"``), a
    :class:`Rate` or a list of them; all rates are enforced together, all-or-nothing.
    ``algorithm`` is ``gcra`` (default), ``token_bucket``, ``sliding_log``,
    ``sliding_window`` or ``fixed_window``. ``store`` is a :class:`Store` or a store URL
    (``None``: a private in-memory store). ``lease`` (a :class:`Lease`, or ``True`` for its
    defaults) decides hot keys of a shared store from locally reserved batches.

    >>> limiter = Limiter("5/s; 100/minute", algorithm="sliding_log")
    >>> d = limiter.check("user:1", cost=2)
    >>> d.allowed, d.remaining, d.limit
    (True, 3, 5)
    """

    # The awaitables are coroutines (so ``asyncio.create_task`` takes them); each awaits a
    # future that the native runtime completes, with no thread per call.

    async def check_async(self, key: str, cost: int = 1) -> Decision:
        """Awaitable :meth:`check`."""
        return await super().check_async(key, cost)

    async def peek_async(self, key: str, cost: int = 1) -> Decision:
        """Awaitable :meth:`peek`."""
        return await super().peek_async(key, cost)

    async def reset_async(self, key: str) -> None:
        """Awaitable :meth:`reset`."""
        await super().reset_async(key)

    async def refund_async(self, key: str, amount: int = 1) -> None:
        """Awaitable :meth:`refund`."""
        await super().refund_async(key, amount)

    async def acquire_async(
        self, key: str, cost: int = 1, timeout: Optional[float] = None
    ) -> Decision:
        """Awaitable :meth:`acquire`: never blocks the event loop, a wait on one key never
        delays another, and cancelling it charges nothing."""
        return await super().acquire_async(key, cost, timeout)

    async def log_async(self, key: str) -> "list[tuple[int, int]]":
        """Awaitable :meth:`log`."""
        return await super().log_async(key)

    async def flush_async(self) -> int:
        """Awaitable :meth:`flush`."""
        return await super().flush_async()

    def limit(self, key: str, cost: int = 1, timeout: Optional[float] = None) -> Limit:
        """A context manager (sync and async) that waits for ``cost`` on ``key``.

        >>> limiter = Limiter("10/s")
        >>> with limiter.limit("api") as decision:
        ...     decision.remaining
        9
        """
        return Limit(self, key, cost, timeout)

    def decorate(
        self, key: KeyArg = None, *, cost: CostArg = 1, timeout: Optional[float] = None
    ) -> Callable[[F], F]:
        """A decorator for sync and async functions: every call first waits (at most
        ``timeout`` seconds) for ``cost`` on ``key``.

        ``key`` is a string, a function of the call's arguments returning the key, or
        ``None`` (the function's qualified name); ``cost`` is an int or a function of the
        call's arguments returning the weight.

        >>> limiter = Limiter("100/s")
        >>> @limiter.decorate(key=lambda user, **kw: f"user:{user}", cost=lambda user, n=1: n)
        ... def fetch(user, n=1):
        ...     return n
        >>> fetch("alice", n=3)
        3
        """

        def wrap(fn: F) -> F:
            fixed = key if key is not None else f"{fn.__module__}.{fn.__qualname__}"

            def key_of(args: tuple, kwargs: dict) -> str:
                return fixed(*args, **kwargs) if callable(fixed) else fixed

            def cost_of(args: tuple, kwargs: dict) -> int:
                return cost(*args, **kwargs) if callable(cost) else cost

            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def awrapper(*args: Any, **kwargs: Any) -> Any:
                    await self.acquire_async(key_of(args, kwargs), cost_of(args, kwargs), timeout)
                    return await fn(*args, **kwargs)

                return awrapper  # type: ignore[return-value]

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                self.acquire(key_of(args, kwargs), cost_of(args, kwargs), timeout)
                return fn(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return wrap


Item = Union["tuple[Limiter, str]", "tuple[Limiter, str, int]"]


def check_all(items: "Iterable[Item]") -> MultiDecision:
    """Decides several ``(limiter, key)`` / ``(limiter, key, cost)`` items together: every
    key is charged, or none is. One store call (one round trip on Redis and PostgreSQL, one
    transaction on SQLite, atomic across keys in memory); the limiters must share one store
    (any in-memory limiters can be combined). ``binding`` says which item denied.

    >>> per_user, global_ = Limiter("5/s"), Limiter("1/s")
    >>> check_all([(per_user, "alice"), (global_, "all")]).allowed
    True
    >>> d = check_all([(per_user, "bob", 1), (global_, "all", 1)])
    >>> d.allowed, d.binding, per_user.peek("bob").remaining  # bob was not charged
    (False, 1, 4)
    """
    return _tollgate.check_all(items)


def peek_all(items: "Iterable[Item]") -> MultiDecision:
    """What :func:`check_all` would decide now, charging nothing.

    >>> a = Limiter("1/s")
    >>> peek_all([(a, "x"), (a, "y")]).allowed and peek_all([(a, "x")]).allowed
    True
    """
    return _tollgate.peek_all(items)


async def check_all_async(items: "Iterable[Item]") -> MultiDecision:
    """Awaitable :func:`check_all` (never blocks the event loop)."""
    return await _tollgate.check_all_future(items)


async def peek_all_async(items: "Iterable[Item]") -> MultiDecision:
    """Awaitable :func:`peek_all`."""
    return await _tollgate.peek_all_future(items)


__all__ = [
    "check_all",
    "peek_all",
    "check_all_async",
    "peek_all_async",
    "MultiDecision",
    "Limiter",
    "Limit",
    "Rate",
    "Decision",
    "Store",
    "ManualClock",
    "Lease",
    "flush_leases",
    "TollgateError",
    "InvalidRate",
    "ConfigError",
    "InvalidCost",
    "CostExceedsCapacity",
    "InvalidKey",
    "RateLimitExceeded",
    "StoreError",
    "SemaphoreError",
    "SemaphoreTimeout",
    "LeaseExpired",
    "__version__",
]


class Semaphore(_tollgate.Semaphore):
    """A named counting semaphore with leases: ``Semaphore(name, capacity, *, lease=30.0,
    max_wait=None, store=None, clock=None)``.

    Semaphores with the same name on the same store share their permits (through Redis, a
    whole fleet does). A holder that crashes loses its permits when its lease ends; a late
    release or extend is reported (:class:`LeaseExpired`) and never frees someone else's
    permit. ``max_wait`` (seconds, ``None``: no limit) bounds every wait.

    >>> sem = Semaphore("partner-api", 2, lease=10)
    >>> with sem.acquire() as permit:
    ...     sem.in_use()
    1
    >>> with sem:
    ...     sem.in_use()
    1
    """

    async def acquire_async(self, permits: int = 1, timeout: Optional[float] = None) -> "Permit":
        """Awaitable :meth:`acquire`: never blocks the event loop; cancelling it leaks no
        permit."""
        return await super().acquire_async(permits, timeout)

    async def try_acquire_async(self, permits: int = 1) -> "Optional[Permit]":
        """Awaitable :meth:`try_acquire`: the permit, or ``None`` if they are not free now."""
        return await super().try_acquire_async(permits)

    def with_name(self, name: str) -> "Semaphore":
        """The same semaphore (capacity, lease, maximum wait, store, clock) under another
        name: e.g. one per tenant or per client.

        >>> base = Semaphore("tenant", 1)
        >>> a, b = base.with_name("tenant:a"), base.with_name("tenant:b")
        >>> held = a.try_acquire()
        >>> a.try_acquire() is None, b.try_acquire() is not None
        (True, True)
        """
        return type(self)(name, self.capacity, _like=self)

    async def __aenter__(self) -> "Permit":
        permit = await self.acquire_async()
        self._push_entered(permit)
        return permit

    async def __aexit__(self, *exc: object) -> bool:
        permit = self._pop_entered()
        if permit is not None:
            await permit.release_async()
        return False


Permit = _tollgate.Permit
__all__ += ["Semaphore", "Permit"]
