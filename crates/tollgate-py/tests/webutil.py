"""Real HTTP servers on free loopback ports for the web middleware and client tests: uvicorn
(in a thread, or as a separate process) and werkzeug (in a thread)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import free_port, in_ci, wait_port


def need(*modules: str) -> None:
    """Imports the web packages a test needs: a failure in CI, a skip elsewhere."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            if in_ci():
                pytest.fail(f"python package {m} is required in CI but missing")
            pytest.skip(f"python package {m} missing")


def sent_within_quota(arrivals: list[float], limit: int, period: float) -> bool:
    """No window of ``period`` seconds saw more than ``limit`` arrivals, with 50 ms of slack:
    arrivals lag the limiter's admissions by a varying delivery time (new connections, a
    loaded machine)."""
    return all(sum(1 for b in arrivals if a <= b < a + period - 0.05) <= limit for a in arrivals)


class UvicornThread:
    """An ASGI app served by uvicorn on 127.0.0.1 in a background thread.

    ``proxy_headers=False``: uvicorn would otherwise replace the peer address with
    ``X-Forwarded-For`` itself for peers on 127.0.0.1, before the middleware sees it."""

    def __init__(self, app: Any):
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", proxy_headers=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class WerkzeugThread:
    """A WSGI app served by werkzeug on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any):
        from werkzeug.serving import make_server

        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        wait_port(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


def uvicorn_processes(app_spec: str, count: int, env: dict, cwd: str) -> Iterator[list[str]]:
    """``count`` uvicorn processes serving ``module:app``; yields their base URLs."""
    procs, urls = [], []
    try:
        for _ in range(count):
            port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "uvicorn", app_spec, "--host", "127.0.0.1", "--port",
                 str(port), "--log-level", "warning", "--no-proxy-headers"], env=env, cwd=cwd))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_port(int(url.rsplit(":", 1)[1]), timeout=30)
        yield urls
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
