"""PyrateLimiter 4.5 compatibility: :class:`TollgateBucket`, an ``AbstractBucket`` backed by
tollgate's stores (memory, Redis standalone and Cluster, SQLite, PostgreSQL).

A PyrateLimiter user changes one line::

    from pyrate_limiter import Duration, Limiter, Rate
    from tollgate.pyrate import TollgateBucket

    rates = [Rate(5, Duration.SECOND), Rate(100, Duration.MINUTE)]
    limiter = Limiter(TollgateBucket(rates, store="redis://localhost:6379"))  # was RedisBucket

The bucket is tollgate's exact sliding log (the algorithm PyrateLimiter's buckets run), so
decisions are PyrateLimiter's: an item counts in a rate's window while its age is at most the
interval (PyrateLimiter's windows are closed; the bucket's tollgate rates are one microsecond
longer than the interval to match) and ``waiting()`` is the same number of milliseconds. The
differences are listed in ``docs/python.md`` ("PyrateLimiter's own test suite"): tollgate
stores one merged entry per instant and no item names, and drops entries as soon as no window
sees them (``count()`` only counts what a window still sees; ``leak()`` has nothing left to do).

Requires ``pyrate-limiter>=4.5,<5`` (``pip install tollgate[pyrate]``).
"""

from __future__ import annotations

import math
import time
from typing import List, Optional, Union

from pyrate_limiter import AbstractBucket, Rate, RateItem
from pyrate_limiter.abstracts.algorithm import ADMITTED
from pyrate_limiter.abstracts.algorithm import Decision as PyrateDecision

from . import CostExceedsCapacity, Limiter, ManualClock, Store
from . import Rate as TollgateRate

__all__ = ["TollgateBucket"]


class TollgateBucket(AbstractBucket):
    """``TollgateBucket(rates, store=None, *, key="pyrate")``: PyrateLimiter's
    ``AbstractBucket`` on a tollgate store.

    ``rates`` are PyrateLimiter ``Rate`` objects (sorted and validated by PyrateLimiter's own
    rules). ``store`` is a :class:`tollgate.Store` or a store URL (``None``: a private memory
    store). Buckets with the same ``key`` and rates on the same store share their log (a fleet
    through Redis or PostgreSQL, processes of one host through SQLite).

    Items are decided at their own timestamp (PyrateLimiter's clock, milliseconds). On Redis
    and PostgreSQL that needs ``Store(url, time="caller")`` (a URL given here gets it); with
    ``time="server"`` the server's clock decides and ``now()`` should be close to it.

    >>> from pyrate_limiter import Limiter, Rate
    >>> limiter = Limiter(TollgateBucket([Rate(2, 1000)]))
    >>> [limiter.try_acquire("job", blocking=False) for _ in range(3)]
    [True, True, False]
    """

    is_async = False

    def __init__(
        self,
        rates: List[Rate],
        store: Union[Store, str, None] = None,
        *,
        key: str = "pyrate",
    ) -> None:
        self.rates = rates  # AbstractBucket's setter sorts and validates (PyrateLimiter's rules)
        if isinstance(store, str):
            store = Store(store, time="caller")
        self._time = ManualClock(self.now() * 1000)
        self._limiter = Limiter(
            [TollgateRate(r.limit, period_us=r.interval * 1000 + 1) for r in self.rates],
            algorithm="sliding_log",
            store=store,
            clock=self._time,
        )
        self._key = key
        self.failing_rate: Optional[Rate] = None

    @property
    def limiter(self) -> Limiter:
        """The tollgate limiter behind the bucket."""
        return self._limiter

    def now(self) -> int:
        """The bucket's clock: UNIX time in milliseconds (every host and store agree on it)."""
        return time.time_ns() // 1_000_000

    def _at(self, timestamp: int) -> None:
        self._time.set_us(max(0, timestamp) * 1000)  # never backwards

    def put(self, item: RateItem) -> bool:
        if item.weight == 0:
            return self._record(item, ADMITTED)
        self._at(item.timestamp)
        try:
            d = self._limiter.check(self._key, item.weight)
        except CostExceedsCapacity:
            rate = next(r for r in self.rates if r.limit < item.weight)
            return self._record(item, PyrateDecision(failing_rate=rate))
        if d.allowed:
            return self._record(item, ADMITTED)
        rate = self.rates[d.denied_by or 0]
        wait = math.ceil(d.retry_after_us / 1000)
        return self._record(item, PyrateDecision(failing_rate=rate, retry_after_ms=wait))

    def leak(self, current_timestamp: Optional[int] = None) -> int:
        """Nothing to leak: the store drops an entry as soon as no window sees it."""
        return 0

    def flush(self) -> None:
        self._limiter.reset(self._key)
        self.failing_rate = None
        self._last_wait = None

    def _entries(self) -> List[tuple]:
        self._at(self.now())
        return self._limiter.log(self._key)

    def count(self) -> int:
        """The weight of the items a window still sees."""
        return sum(weight for _, weight in self._entries())

    def peek(self, index: int) -> Optional[RateItem]:
        """The item at ``index`` (in units of weight), newest first; ``None`` past the end.
        Its name is the bucket's key (tollgate stores no item names)."""
        if index < 0:
            return None
        for at_us, weight in reversed(self._entries()):
            if index < weight:
                return RateItem(self._key, at_us // 1000, weight)
            index -= weight
        return None

    def __repr__(self) -> str:
        return f"TollgateBucket({self._limiter.rates!r}, key={self._key!r})"
