"""asyncio: real awaitables that never block the loop, cancel cleanly, never over-admit."""

from __future__ import annotations

import asyncio
import time

import pytest

import tollgate
from tollgate import Limiter, ManualClock, Semaphore


def run(coro):
    return asyncio.run(coro)


def test_check_and_acquire_async():
    async def main():
        limiter = Limiter("2/s")
        d = await limiter.check_async("k")
        assert d.allowed and d.remaining == 1
        assert (await limiter.peek_async("k")).remaining == 0  # as if charged
        await limiter.refund_async("k", 1)
        await limiter.reset_async("k")
        assert (await limiter.acquire_async("k", 2, 1.0)).remaining == 0
        with pytest.raises(tollgate.RateLimitExceeded):
            await limiter.acquire_async("k", 1, 0)
        with pytest.raises(tollgate.CostExceedsCapacity):
            await limiter.acquire_async("k", 3)
        with pytest.raises(tollgate.InvalidCost):
            await limiter.check_async("k", 0)

    run(main())


def test_a_wait_never_blocks_the_loop_or_other_keys():
    async def main():
        limiter = Limiter("1/s burst 1")
        await limiter.check_async("slow")
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        started = time.monotonic()
        waiter = asyncio.create_task(limiter.acquire_async("slow", 1, 2.0))
        await asyncio.sleep(0.05)
        other = await limiter.acquire_async("fast", 1, 2.0)  # another key: no wait
        assert other.allowed and time.monotonic() - started < 0.5
        assert (await waiter).allowed
        t.cancel()
        assert time.monotonic() - started > 0.8
        assert ticks > 30

    run(main())


def test_cancelled_acquire_charges_nothing():
    async def main():
        clock = ManualClock(10**12)
        limiter = Limiter("1/s", clock=clock)
        await limiter.check_async("k")
        waiter = asyncio.create_task(limiter.acquire_async("k", 1, 10.0))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        clock.advance(1.0)
        await asyncio.sleep(0.05)
        d = limiter.check("k")  # the cancelled waiter took nothing
        assert d.allowed and d.remaining == 0

    run(main())


def test_many_tasks_on_one_key_never_over_admit():
    async def main():
        limiter = Limiter("50/minute", algorithm="sliding_log")
        results = await asyncio.gather(*(limiter.check_async("k") for _ in range(200)))
        assert sum(d.allowed for d in results) == 50

    run(main())


def test_async_with_and_async_decorator():
    async def main():
        limiter = Limiter("3/s", clock=ManualClock(10**12))
        async with limiter.limit("ctx", cost=2) as d:
            assert d.remaining == 1

        @limiter.decorate(key=lambda x: f"fn:{x}", cost=2, timeout=0)
        async def double(x):
            await asyncio.sleep(0)
            return 2 * x

        assert await double(1) == 2
        with pytest.raises(tollgate.RateLimitExceeded):
            await double(1)
        assert await double(2) == 4

        sem = Semaphore("async-sem", 1, max_wait=0.05)
        async with sem as permit:
            assert permit.held and sem.in_use() == 1
            with pytest.raises(tollgate.SemaphoreTimeout):
                await sem.acquire_async()
        assert sem.in_use() == 0

    run(main())


def test_awaitables_need_a_running_loop():
    with pytest.raises(RuntimeError):
        Limiter("1/s").acquire_async("k").send(None)
