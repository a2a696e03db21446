"""Fixtures: private redis-servers (standalone and a 3-node Cluster) on free ports of
127.0.0.1, and the PostgreSQL of $DATABASE_URL.

When CI is set, a missing redis-server or PostgreSQL is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, List

import pytest

REPO = Path(__file__).resolve().parents[3]
VECTORS = REPO / "crates" / "tollgate" / "tests" / "vectors"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def unavailable(what: str) -> None:
    if in_ci():
        pytest.fail(f"{what} is required in CI but unavailable")
    pytest.skip(f"{what} unavailable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, below 55536."""
    import random

    for _ in range(200):
        port = random.randint(30000, 45000)
        if port_is_free(port) and port_is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def redis_binary(name: str, env: str) -> str | None:
    return os.environ.get(env) or shutil.which(name) or shutil.which(name.replace("redis", "valkey"))


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def resp(port: int, *args: str) -> bytes:
    """One command over a raw socket (RESP2); returns the raw reply."""
    cmd = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(cmd.encode())
        data = b""
        s.settimeout(0.3)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
    return data


class RedisServer:
    def __init__(self, extra: List[str] | None = None, workdir: str | None = None, cluster: bool = False):
        binary = redis_binary("redis-server", "TOLLGATE_REDIS_SERVER")
        if binary is None:
            unavailable("redis-server")
        self.port = free_cluster_port() if cluster else free_port()
        self.dir = workdir or tempfile.mkdtemp(prefix="tollgate-py-redis-")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir] + (extra or [])
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        # Its directory is always a temporary one (made here or by start_cluster).
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


def start_cluster() -> "tuple[str, List[RedisServer]]":
    """A 3-master Redis Cluster on free ports: its redis+cluster:// URL and its nodes."""
    cli = redis_binary("redis-cli", "TOLLGATE_REDIS_CLI")
    if cli is None:
        unavailable("redis-cli")
    nodes = []
    for _ in range(3):
        d = tempfile.mkdtemp(prefix="tollgate-py-cluster-")
        nodes.append(RedisServer(["--cluster-enabled", "yes", "--cluster-config-file",
                                  os.path.join(d, "nodes.conf")], workdir=d, cluster=True))
    addrs = [f"127.0.0.1:{n.port}" for n in nodes]
    subprocess.run([cli, "--cluster", "create", *addrs, "--cluster-replicas", "0",
                    "--cluster-yes"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)
    deadline = time.monotonic() + 30
    while b"cluster_state:ok" not in resp(nodes[0].port, "CLUSTER", "INFO"):
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster did not become ready")
        time.sleep(0.1)
    return "redis+cluster://" + ",".join(addrs), nodes


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    url, nodes = start_cluster()
    yield url
    for n in nodes:
        n.stop()


@pytest.fixture(scope="session")
def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        unavailable("PostgreSQL ($DATABASE_URL)")
    return url  # type: ignore[return-value]


@pytest.fixture
def unique() -> str:
    """A fresh key or namespace, so tests sharing a server never meet."""
    return "t" + uuid.uuid4().hex[:12]
