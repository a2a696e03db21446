"""Side by side, in one run: tollgate vs PyrateLimiter 4.5 and limits, in memory and on one
Redis server. Every limiter admits every call (a quota far above the call count), so the
figures are the cost of one admitted decision. Every limiter starts each round empty (its key
is reset or its bucket flushed before the round): the logs of the sliding-log rows would
otherwise grow across rounds.

    pip install pyrate-limiter==4.5.1 limits redis
    python bench/compare.py [--redis redis://127.0.0.1:6379] [--n 200000]

Build the extension with `maturin develop --release` first: a debug build is ~10x slower.
"""

from __future__ import annotations

import argparse
import time
import uuid

import tollgate


def rate(fn, n: int, reset=None) -> float:
    fn(0)  # warm up (connections, scripts)
    best = 0.0
    for _ in range(3):
        if reset is not None:
            reset()
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        best = max(best, n / (time.perf_counter() - start))
    return best


def row(name: str, ops: float, base: float | None) -> None:
    ratio = f"{base / ops:6.1f}x" if base else "      "
    print(f"  {name:<52} {ops:>12,.0f}/s  {ratio}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", default=None)
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    from limits import parse
    from limits.storage import MemoryStorage, RedisStorage
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
    from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate, RedisBucket

    n = args.n
    print(f"in memory, one key, {n} admitted calls per round (best of 3); ratio = tollgate's speed / theirs")
    tg = tollgate.Limiter("1000000000/day", algorithm="gcra")
    tg_log = tollgate.Limiter("1000000000/day", algorithm="sliding_log")
    base = rate(lambda i: tg.check("k"), n, lambda: tg.reset("k"))
    row("tollgate Limiter.check (gcra, memory)", base, None)
    row("tollgate Limiter.check (sliding_log, memory)",
        rate(lambda i: tg_log.check("k"), n // 10, lambda: tg_log.reset("k")), None)
    in_memory = InMemoryBucket([Rate(10**9, Duration.DAY)])
    pyrate = Limiter(in_memory)
    row("PyrateLimiter InMemoryBucket try_acquire(blocking=False)",
        rate(lambda i: pyrate.try_acquire("k", blocking=False), n // 10, in_memory.flush), base)
    item = parse("1000000000/day")
    moving_storage = MemoryStorage()
    moving = MovingWindowRateLimiter(moving_storage)
    row("limits MovingWindowRateLimiter(MemoryStorage).hit",
        rate(lambda i: moving.hit(item, "k"), n // 10, moving_storage.reset), base)
    fixed_storage = MemoryStorage()
    fixed = FixedWindowRateLimiter(fixed_storage)
    row("limits FixedWindowRateLimiter(MemoryStorage).hit",
        rate(lambda i: fixed.hit(item, "k"), n, fixed_storage.reset), base)

    if args.redis:
        from redis import Redis

        m = max(n // 50, 1000)
        print(f"\nRedis at {args.redis}, one key, {m} admitted calls per round (best of 3)")
        ns = "bench" + uuid.uuid4().hex[:8]
        tgr = tollgate.Limiter("1000000000/day", store=tollgate.Store(args.redis, namespace=ns))
        base = rate(lambda i: tgr.check("k"), m, lambda: tgr.reset("k"))
        row("tollgate Limiter.check (gcra, redis)", base, None)
        tgl = tollgate.Limiter("1000000000/day", algorithm="sliding_log",
                               store=tollgate.Store(args.redis, namespace=ns))
        row("tollgate Limiter.check (sliding_log, redis)",
            rate(lambda i: tgl.check("k"), m, lambda: tgl.reset("k")), None)
        client = Redis.from_url(args.redis)
        bucket = RedisBucket.init([Rate(10**9, Duration.DAY)], client, f"{ns}:pyrate")
        pyr = Limiter(bucket)
        row("PyrateLimiter RedisBucket try_acquire(blocking=False)",
            rate(lambda i: pyr.try_acquire("k", blocking=False), m, bucket.flush), base)
        storage = RedisStorage(args.redis)
        lm = MovingWindowRateLimiter(storage)
        row("limits MovingWindowRateLimiter(RedisStorage).hit",
            rate(lambda i: lm.hit(item, ns + ":moving"), m, lambda: lm.clear(item, ns + ":moving")), base)
        lf = FixedWindowRateLimiter(storage)
        row("limits FixedWindowRateLimiter(RedisStorage).hit",
            rate(lambda i: lf.hit(item, ns + ":fixed"), m, lambda: lf.clear(item, ns + ":fixed")), base)


if __name__ == "__main__":
    main()
