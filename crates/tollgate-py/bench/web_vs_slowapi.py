"""Requests per second of one trivial FastAPI endpoint, in one run: bare, behind tollgate's
``RateLimitMiddleware`` (and ``ConcurrencyLimitMiddleware``), and behind slowapi's limiter.

Every app is served the same way (one uvicorn process, ``--loop asyncio --http h11``, no
access log) and driven by ``wrk`` (C, one thread, 32 connections) over loopback; the rounds
interleave the apps so that machine load hits each alike, and the median round counts. Every
limit admits everything (a quota far above the request count): the figures are the cost of an
admitted request. The ``client ceiling`` row is wrk against a raw asyncio responder (no HTTP
parsing framework): it shows how far the client is from being the bottleneck.

    pip install fastapi uvicorn slowapi   # and wrk (apt-get install wrk)
    python bench/web_vs_slowapi.py [--seconds 5] [--rounds 3] [--connections 32]

Build the extension with ``maturin develop --release`` first.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

APPS = ("bare", "tollgate", "tollgate-inflight", "slowapi")
QUOTA = "100000000/second"  # never reached: every request is admitted


def build_app(kind: str):
    """The ASGI app of one row (run inside the uvicorn process)."""
    from fastapi import FastAPI, Request

    app = FastAPI()
    if kind == "slowapi":
        from slowapi import Limiter, _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded
        from slowapi.util import get_remote_address

        limiter = Limiter(key_func=get_remote_address)
        app.state.limiter = limiter
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)

        @app.get("/")
        @limiter.limit(QUOTA)
        async def limited(request: Request):
            return {"ok": True}

        return app

    @app.get("/")
    async def root():
        return {"ok": True}

    if kind == "tollgate":
        import tollgate
        from tollgate.asgi import Policy, RateLimitMiddleware, client_ip

        app.add_middleware(RateLimitMiddleware,
                           policies=[Policy("per-ip", tollgate.Limiter(QUOTA), client_ip())])
    elif kind == "tollgate-inflight":
        import tollgate
        from tollgate.asgi import ConcurrencyLimitMiddleware, ConcurrencyPolicy, client_ip

        app.add_middleware(ConcurrencyLimitMiddleware, policies=[
            ConcurrencyPolicy("in-flight", tollgate.Semaphore("api", 1000), client_ip())])
    return app


def app_factory():
    return build_app(os.environ["BENCH_APP"])


RAW = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n"
       b'{"ok":true}')


def raw_server(port: int) -> None:
    """The client-ceiling responder: answers every request with fixed bytes."""
    import asyncio

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport
            self.buf = b""

        def data_received(self, data):
            self.buf += data
            while b"\r\n\r\n" in self.buf:
                _, self.buf = self.buf.split(b"\r\n\r\n", 1)
                self.t.write(RAW)

    async def main():
        server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start(kind: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, BENCH_APP=kind)
    here = os.path.dirname(os.path.abspath(__file__))
    if kind == "client ceiling":
        cmd = [sys.executable, "-c", f"import web_vs_slowapi as w; w.raw_server({port})"]
    else:
        cmd = [sys.executable, "-m", "uvicorn", "web_vs_slowapi:app_factory", "--factory",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--loop", "asyncio",
               "--http", "h11", "--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=here, env=env)
    wait_port(port)
    return proc, port


def wrk(port: int, seconds: int, connections: int) -> tuple[float, int]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if errors:
        print(f"    wrk socket errors: {errors.group(1)}")
    return rps, int(bad.group(1)) if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is required (apt-get install wrk)")
    kinds = ("client ceiling", *APPS)
    results: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds:
            proc, port = start(kind)
            try:
                wrk(port, 1, args.connections)  # warm up
                rps, bad = wrk(port, args.seconds, args.connections)
            finally:
                proc.terminate()
                proc.wait(10)
            if bad:
                sys.exit(f"{kind}: {bad} non-2xx responses (a limit was reached?)")
            results[kind].append(rps)
            print(f"  round {r + 1} {kind:<18} {rps:>9,.0f} req/s", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    bare = med["bare"]
    print(f"\nmedian of {args.rounds} rounds, {args.seconds} s each, wrk -t1 "
          f"-c{args.connections}, uvicorn 1 worker asyncio/h11:")
    for kind in kinds:
        rps = med[kind]
        extra = ""
        if kind not in ("client ceiling", "bare"):
            cost_us = (1 / rps - 1 / bare) * 1e6
            extra = f"  {rps / bare:6.1%} of bare, +{cost_us:5.1f} us/request"
        print(f"  {kind:<18} {rps:>9,.0f} req/s{extra}")
    slow = 1 / med["slowapi"] - 1 / bare
    tg = 1 / med["tollgate"] - 1 / bare
    print(f"\ntollgate's cost / slowapi's cost: {tg / slow:.2f} (goal < 0.5); tollgate keeps "
          f"{med['tollgate'] / bare:.1%} of bare (goal >= 90 %)")


if __name__ == "__main__":
    main()
