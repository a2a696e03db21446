"""The shared golden vectors (crates/tollgate/tests/vectors/*.json), replayed through the
Python API with a manual clock: the memory store and SQLite give exactly the expected
decisions, to the microsecond."""

from __future__ import annotations

import json

import pytest

import tollgate
from conftest import VECTORS
from tollgate import Limiter, ManualClock, Rate, Store

CASES = [
    (path.stem, case)
    for path in sorted(VECTORS.glob("*.json"))
    for case in json.loads(path.read_text())["cases"]
]
ERRORS = {"cost_exceeds_capacity": tollgate.CostExceedsCapacity, "invalid_cost": tollgate.InvalidCost}


def test_the_vectors_are_there():
    assert len(CASES) >= 60
    assert {name for name, _ in CASES} == {
        "gcra", "token_bucket", "sliding_log", "sliding_window", "fixed_window"}


def replay(case, store_url):
    spec = case["policy"]
    rates = [Rate(r["limit"], period_us=r["period_us"], burst=r.get("burst")) for r in spec["rates"]]
    initial = [r["initial_tokens"] for r in spec["rates"] if r.get("initial_tokens") is not None]
    clock = ManualClock(case["steps"][0]["t"])
    limiter = Limiter(rates, algorithm=spec.get("algorithm", "gcra"), store=Store(store_url),
                      clock=clock, initial_tokens=initial[0] if initial else None)
    for i, step in enumerate(case["steps"]):
        clock.set_us(step["t"])
        assert clock.now_us == step["t"], "the steps go forward in time"
        op, key, cost = step["op"], step["key"], step.get("cost")
        where = f"{case['name']} step {i} ({op} {key} cost={cost} t={step['t']})"
        if step.get("expect_error"):
            with pytest.raises(ERRORS[step["expect_error"]]):
                getattr(limiter, op)(key, cost)
            continue
        if op == "reset":
            limiter.reset(key)
            continue
        if op == "refund":
            limiter.refund(key, cost)
            continue
        d = getattr(limiter, op)(key, cost if cost is not None else 1)
        got = {"allowed": d.allowed, "limit": d.limit, "remaining": d.remaining,
               "retry_after": d.retry_after_us, "reset_after": d.reset_after_us,
               "denied_by": d.denied_by}
        assert got == step["expect"], where


@pytest.mark.parametrize("name, case", CASES, ids=[f"{n}:{c['name']}" for n, c in CASES])
def test_memory(name, case):
    replay(case, "memory")


@pytest.mark.parametrize("name, case", CASES, ids=[f"{n}:{c['name']}" for n, c in CASES])
def test_sqlite(name, case, tmp_path):
    replay(case, f"sqlite://{tmp_path}/vectors.db")
