"""Helpers shared by the tests that use other processes: a forked child that reports back,
and what a store holds for a key."""

from __future__ import annotations

import json
import os

from tollgate import Limiter, Store


def in_child(fn) -> dict:
    """Runs fn() in a forked child that ends with os._exit; returns what it returned (JSON),
    or its error. Fails if the child did not exit with status 0."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = {"ok": fn()}
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = {"error": f"{type(e).__name__}: {e}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    return json.loads(data)


def free_units(url: str, ns: str, rate: str, key: str = "hot", algorithm: str = "gcra") -> int:
    """What the store holds for `key`, from a fresh limiter without a lease."""
    d = Limiter(rate, algorithm=algorithm, store=Store(url, namespace=ns)).peek(key)
    return d.remaining + 1 if d.allowed else 0
