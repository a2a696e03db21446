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
    python bench/web_vs_slowapi.py --in-process [--rounds 5]

``--in-process`` calls each app directly as ASGI (no server, no socket, one event loop): the
microseconds of Python per request that each app costs, without uvicorn's and the network's
share, which is steadier on a loaded machine.

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

from fastapi import FastAPI, Request  # at module level: the endpoints' annotations name Request

APPS = ("bare", "tollgate", "tollgate-inflight", "slowapi")
QUOTA = "1000000/second"  # never reached: every request is admitted


def build_app(kind: str):
    """The ASGI app of one row (run inside the uvicorn process)."""
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


def wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
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
    wait_port(port, proc)
    return proc, port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, seconds: int, connections: int, pid: int) -> tuple[float, int, float]:
    """req/s, non-2xx count, and the server's CPU microseconds per request."""
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         check=True).stdout
    cpu = cpu_seconds(pid) - cpu0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if errors:
        print(f"    wrk socket errors: {errors.group(1)}")
    return rps, int(bad.group(1)) if bad else 0, cpu / total * 1e6


SCOPE = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
         "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/",
         "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
         "server": ("127.0.0.1", 8000),
         "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]}


async def _receive():
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message):
    pass


async def run(app, count: int) -> None:
    """``count`` requests through ``app``, called directly as ASGI."""
    for _ in range(count):
        await app(dict(SCOPE), _receive, _send)


def one_app(kind: str, count: int) -> None:
    """``count`` requests through one app. Instructions per request, steady under any load:
    run it under ``valgrind --tool=callgrind`` for two counts and divide the difference."""
    import asyncio

    asyncio.run(run(build_app(kind), count))


def in_process(rounds: int, n: int = 3000) -> None:
    """Microseconds per request of each app called directly (interleaved rounds, median)."""
    import asyncio

    apps = {k: build_app(k) for k in APPS}
    loop = asyncio.new_event_loop()
    us: dict[str, list[float]] = {k: [] for k in APPS}
    for app in apps.values():
        loop.run_until_complete(run(app, 300))  # warm up
    for _ in range(rounds):
        for k, app in apps.items():
            start = time.process_time()  # CPU time: other processes' load does not count
            loop.run_until_complete(run(app, n))
            us[k].append((time.process_time() - start) / n * 1e6)
    med = {k: statistics.median(v) for k, v in us.items()}
    print(f"in process, CPU time per request, median of {rounds} rounds of {n} requests:")
    for k in APPS:
        extra = f"  +{med[k] - med['bare']:5.1f} us" if k != "bare" else ""
        print(f"  {k:<18} {med[k]:6.1f} us/request{extra}")
    tg, slow = med["tollgate"] - med["bare"], med["slowapi"] - med["bare"]
    print(f"tollgate's cost / slowapi's cost: {tg / slow:.2f} (goal < 0.5)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--in-process", action="store_true")
    ap.add_argument("--only", choices=APPS, help="with --in-process: run --requests requests of "
                    "this app once and print nothing (for valgrind --tool=callgrind)")
    ap.add_argument("--requests", type=int, default=1000)
    args = ap.parse_args()
    if args.in_process and args.only:
        one_app(args.only, args.requests)
        return
    if args.in_process:
        in_process(args.rounds)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is required (apt-get install wrk)")
    kinds = ("client ceiling", *APPS)
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    cpus: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds:
            proc, port = start(kind)
            try:
                wrk(port, 1, args.connections, proc.pid)  # warm up
                rps, bad, cpu_us = wrk(port, args.seconds, args.connections, proc.pid)
            finally:
                proc.terminate()
                proc.wait(10)
            if bad:
                sys.exit(f"{kind}: {bad} non-2xx responses (a limit was reached?)")
            rates[kind].append(rps)
            cpus[kind].append(cpu_us)
            print(f"  round {r + 1} {kind:<18} {rps:>9,.0f} req/s  {cpu_us:6.1f} us CPU/request",
                  flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    bare = med["bare"]
    print(f"\nmedian of {args.rounds} rounds, {args.seconds} s each, wrk -t1 "
          f"-c{args.connections}, uvicorn 1 worker asyncio/h11 (server CPU per request from "
          f"/proc: steadier than req/s on a loaded machine):")
    for kind in kinds:
        extra = ""
        if kind not in ("client ceiling", "bare"):
            extra = (f"  {med[kind] / bare:6.1%} of bare req/s, "
                     f"+{cpu[kind] - cpu['bare']:5.1f} us CPU/request")
        print(f"  {kind:<18} {med[kind]:>9,.0f} req/s  {cpu[kind]:6.1f} us CPU/request{extra}")
    slow = 1 / med["slowapi"] - 1 / bare
    tg = 1 / med["tollgate"] - 1 / bare
    slow_cpu = cpu["slowapi"] - cpu["bare"]
    tg_cpu = cpu["tollgate"] - cpu["bare"]
    print(f"\ntollgate's cost / slowapi's cost: {tg / slow:.2f} by req/s, {tg_cpu / slow_cpu:.2f} "
          f"by CPU/request (goal < 0.5); tollgate keeps {med['tollgate'] / bare:.1%} of bare "
          f"req/s, {cpu['bare'] / cpu['tollgate']:.1%} by CPU/request (goal >= 90 %)")


if __name__ == "__main__":
    main()
