"""Semaphore: memory and Redis; leases, extend, expiry, never more holders than capacity."""

from __future__ import annotations

import threading
import time

import pytest

import tollgate
from tollgate import ManualClock, Semaphore, Store


@pytest.fixture(params=["memory", "redis"])
def sem_store(request, unique):
    if request.param == "memory":
        return Store("memory")
    return Store(request.getfixturevalue("redis_server").url, namespace=unique)


def test_acquire_release_and_with(sem_store, unique):
    sem = Semaphore(unique, 2, lease=10, max_wait=0.05, store=sem_store)
    assert (sem.name, sem.capacity, sem.lease) == (unique, 2, 10.0)
    p = sem.acquire()
    assert p.held and p.permits == 1 and len(p.holder_id) == 32
    with sem.acquire() as q:
        assert sem.in_use() == 2
        assert sem.try_acquire() is None
        with pytest.raises(tollgate.SemaphoreTimeout) as e:
            sem.acquire()
        assert (e.value.in_use, e.value.capacity) == (2, 2)
    assert not q.held
    p.release()
    p.release()  # twice: a no-op
    with sem:
        assert sem.in_use() == 1
    assert sem.in_use() == 0
    with sem.acquire(2) as both:
        assert both.permits == 2 and sem.in_use() == 2


def test_same_name_same_store_shares_permits(sem_store, unique):
    a = Semaphore(unique, 1, max_wait=0, store=sem_store)
    b = Semaphore(unique, 1, max_wait=0, store=sem_store)
    with a.acquire():
        assert b.try_acquire() is None
    assert b.try_acquire() is not None


def test_bad_input(sem_store, unique):
    with pytest.raises(tollgate.ConfigError):
        Semaphore(unique, 0, store=sem_store)
    with pytest.raises(tollgate.ConfigError):
        Semaphore("", 1, store=sem_store)
    with pytest.raises(tollgate.ConfigError):
        Semaphore(unique, 1, lease=0, store=sem_store)
    with pytest.raises(tollgate.ConfigError):
        Semaphore(unique, 1, lease=float("inf"), store=sem_store)
    sem = Semaphore(unique, 2, store=sem_store)
    with pytest.raises(tollgate.CostExceedsCapacity):
        sem.acquire(3)  # never an endless wait
    with pytest.raises(tollgate.InvalidCost):
        sem.acquire(0)
    with pytest.raises(tollgate.ConfigError):
        sem.acquire(timeout=-1)
    assert sem.in_use() == 0


def test_an_expired_lease_frees_the_permit_and_its_late_release_is_reported():
    clock = ManualClock(10**12)
    sem = Semaphore("lease", 1, lease=5, max_wait=0, clock=clock)
    lost = sem.acquire()
    clock.advance(6)  # the holder "crashed": its lease ends
    winner = sem.acquire()  # the permit came back
    with pytest.raises(tollgate.LeaseExpired):
        lost.release()  # and the late release never frees the winner's permit
    assert sem.in_use() == 1
    winner.release()


def test_extend_keeps_the_lease(sem_store, unique):
    sem = Semaphore(unique, 1, lease=0.3, max_wait=0, store=sem_store)
    p = sem.acquire()
    for _ in range(3):
        time.sleep(0.15)
        p.extend()
    assert sem.try_acquire() is None  # still held after 0.45 s > lease
    p.extend(lease=5)
    p.release()
    with pytest.raises(tollgate.LeaseExpired):
        p.extend()


def test_threads_never_exceed_capacity(sem_store, unique):
    sem = Semaphore(unique, 3, lease=10, max_wait=10, store=sem_store)
    inside = 0
    peak = 0
    lock = threading.Lock()

    def worker():
        nonlocal inside, peak
        for _ in range(5):
            with sem.acquire():
                with lock:
                    inside += 1
                    peak = max(peak, inside)
                time.sleep(0.002)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 3
    assert sem.in_use() == 0
