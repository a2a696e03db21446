"""The exceptions of tollgate: every one derives from :class:`TollgateError`.

Bad input is also a :class:`ValueError` (``except ValueError`` keeps working), a store failure
is never a denial, and a wait that runs out is :class:`RateLimitExceeded`.

>>> import tollgate
>>> try:
...     tollgate.Limiter("0/s")
... except tollgate.InvalidRate as e:
...     print(isinstance(e, tollgate.TollgateError), isinstance(e, ValueError))
True True
"""

from __future__ import annotations


class TollgateError(Exception):
    """The base class of every tollgate error."""


class InvalidRate(TollgateError, ValueError):
    """A rate, rate string, algorithm or policy that tollgate rejects at construction."""


class ConfigError(TollgateError, ValueError):
    """A store URL, option or argument that is not valid."""


class InvalidCost(TollgateError, ValueError):
    """A cost (or refund amount) of zero or below."""


class CostExceedsCapacity(TollgateError, ValueError):
    """A cost larger than the policy can ever admit at once: waiting would never help.

    Attributes: ``cost`` and ``capacity``.
    """

    cost: int
    capacity: int


class InvalidKey(TollgateError, ValueError):
    """A key that is too long or cannot be stored as given."""


class RateLimitExceeded(TollgateError):
    """Not admitted within the maximum wait (``acquire``, ``limit``, decorators).

    ``retry_after`` is how many seconds it would still have had to wait. Nothing was charged.
    """

    retry_after: float


class StoreError(TollgateError):
    """The store failed (unreachable, timed out, bad reply): never reported as a denial.

    ``kind`` is one of ``connection_refused``, ``connection``, ``timeout``, ``auth``,
    ``script_missing``, ``protocol``, ``circuit_open``, ``other``; ``store`` names the store.
    A call that raised it charged nothing.
    """

    kind: str
    store: str


class SemaphoreError(TollgateError):
    """A semaphore call that failed (see the subclasses)."""


class SemaphoreTimeout(SemaphoreError):
    """No permit within the maximum wait; nothing is held. ``in_use`` and ``capacity`` tell why."""

    in_use: int
    capacity: int


class LeaseExpired(SemaphoreError):
    """The lease had ended before this release or extension: the holder held nothing any more."""

