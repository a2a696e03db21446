"""tollgate.asgi.RateLimitMiddleware on a real uvicorn server, driven by httpx over HTTP."""

from __future__ import annotations

import os
import textwrap

import pytest
import tollgate
from tollgate.asgi import Policy, RateLimitMiddleware, client_ip, global_key, header
from webutil import UvicornThread, need, uvicorn_processes


@pytest.fixture(autouse=True)
def _packages():
    need("fastapi", "uvicorn", "httpx")


def fastapi_app(policies, **kw):
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/api/items")
    async def items():
        return {"ok": True}

    @app.post("/api/items")
    async def create():
        return {"created": True}

    @app.get("/health")
    async def health():
        return {"up": True}

    app.add_middleware(RateLimitMiddleware, policies=policies, **kw)
    return app


@pytest.fixture
def serve():
    servers = []

    def start(app):
        s = UvicornThread(app)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def test_exact_fields_429_and_recovery_with_a_manual_clock(serve):
    import httpx

    clock = tollgate.ManualClock()
    limiter = tollgate.Limiter("5/minute", clock=clock)
    s = serve(fastapi_app([Policy("per-ip", limiter, client_ip())]))
    with httpx.Client(base_url=s.url) as c:
        r = c.get("/api/items")
        assert r.status_code == 200 and r.json() == {"ok": True}
        assert r.headers["ratelimit"] == '"per-ip";r=4;t=12'
        assert r.headers["ratelimit-policy"] == '"per-ip";q=5;w=60'
        assert "retry-after" not in r.headers
        for _ in range(4):
            r = c.get("/api/items")
        assert r.status_code == 200 and r.headers["ratelimit"] == '"per-ip";r=0;t=60'
        r = c.get("/api/items")
        assert r.status_code == 429
        assert r.headers["retry-after"] == "12"
        assert r.headers["ratelimit"] == '"per-ip";r=0;t=60'
        assert r.headers["ratelimit-policy"] == '"per-ip";q=5;w=60'
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert body["status"] == 429 and body["title"] == "Too Many Requests"
        assert body["policy"] == "per-ip" and body["retry_after"] == 12
        clock.advance(12)
        r = c.get("/api/items")
        assert r.status_code == 200 and r.headers["ratelimit"] == '"per-ip";r=0;t=60'


def test_several_policies_are_all_or_nothing_and_per_route(serve):
    import httpx

    per_key = tollgate.Limiter("10/minute", clock=tollgate.ManualClock())
    writes = tollgate.Limiter("1/minute", clock=tollgate.ManualClock())
    s = serve(fastapi_app([
        Policy("per-key", per_key, header("x-api-key"), path="/api"),
        Policy("writes", writes, global_key, path="/api", methods=["POST"]),
    ]))
    with httpx.Client(base_url=s.url, headers={"x-api-key": "k1"}) as c:
        r = c.post("/api/items")
        assert r.status_code == 200
        assert r.headers["ratelimit"] == '"per-key";r=9;t=6, "writes";r=0;t=60'
        assert r.headers["ratelimit-policy"] == '"per-key";q=10;w=60, "writes";q=1;w=60'
        r = c.post("/api/items")
        assert r.status_code == 429 and r.json()["policy"] == "writes"
        # Only the policy that denied is reported, and the other one was not charged.
        assert r.headers["ratelimit"] == '"writes";r=0;t=60'
        assert per_key.peek("k1").remaining == 8  # 9 left, minus the peeked 1
        r = c.get("/api/items")  # GET: the writes policy does not apply
        assert r.status_code == 200 and r.headers["ratelimit"] == '"per-key";r=8;t=12'
        r = c.get("/health")  # no policy applies: no fields
        assert r.status_code == 200 and "ratelimit" not in r.headers
    with httpx.Client(base_url=s.url) as c:
        r = c.get("/api/items")  # no key
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"


def test_spoofed_forwarded_for_is_ignored_unless_from_a_trusted_proxy(serve):
    import httpx

    untrusted = tollgate.Limiter("1/minute")
    s = serve(fastapi_app([Policy("ip", untrusted, client_ip(["10.0.0.0/8"]))]))
    with httpx.Client(base_url=s.url) as c:
        assert c.get("/api/items", headers={"x-forwarded-for": "1.1.1.1"}).status_code == 200
        # The peer (127.0.0.1) is not a trusted proxy: a new X-Forwarded-For is not a new key.
        assert c.get("/api/items", headers={"x-forwarded-for": "2.2.2.2"}).status_code == 429
    trusted = tollgate.Limiter("1/minute")
    s = serve(fastapi_app([Policy("ip", trusted, client_ip(["127.0.0.1/32", "10.0.0.0/8"]))]))
    with httpx.Client(base_url=s.url) as c:
        xff = {"x-forwarded-for": "9.9.9.9, 1.1.1.1, 10.0.0.7"}
        assert c.get("/api/items", headers=xff).status_code == 200
        assert c.get("/api/items", headers={"x-forwarded-for": "2.2.2.2"}).status_code == 200
        # Walked from the right: 10.0.0.7 is trusted, so the client is 1.1.1.1 (9.9.9.9 is
        # whatever the client claimed).
        assert c.get("/api/items", headers={"x-forwarded-for": "5.5.5.5, 1.1.1.1"}).status_code == 429
    assert not trusted.peek("1.1.1.1").allowed and trusted.peek("9.9.9.9").allowed


def test_shadow_mode_reports_but_never_denies(serve):
    import httpx

    limiter = tollgate.Limiter("1/minute", clock=tollgate.ManualClock())
    s = serve(fastapi_app([Policy("ip", limiter)], shadow=True))
    with httpx.Client(base_url=s.url) as c:
        codes = [c.get("/api/items").status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        assert c.get("/api/items").headers["ratelimit"] == '"ip";r=0;t=60'


def test_a_store_that_fails_closed_is_503_never_500(serve):
    import httpx
    from conftest import free_port

    store = tollgate.Store(f"redis://127.0.0.1:{free_port()}", timeout=0.5)
    s = serve(fastapi_app([Policy("ip", tollgate.Limiter("5/s", store=store))]))
    with httpx.Client(base_url=s.url) as c:
        r = c.get("/api/items")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 503 and r.headers["retry-after"] == "1"


def test_bad_policy_name_is_refused_at_construction():
    with pytest.raises(tollgate.ConfigError):
        RateLimitMiddleware(None, [Policy('has "quotes"', tollgate.Limiter("1/s"))])


APP = textwrap.dedent("""
    import os
    import tollgate
    from fastapi import FastAPI
    from tollgate.asgi import RateLimitMiddleware, Policy, global_key

    app = FastAPI()

    @app.get("/")
    async def root():
        return {"pid": os.getpid()}

    store = tollgate.Store(os.environ["REDIS_URL"], namespace=os.environ["NS"])
    app.add_middleware(RateLimitMiddleware,
                       policies=[Policy("fleet", tollgate.Limiter("5/minute", store=store), global_key)])
""")


def test_two_uvicorn_processes_share_one_redis_limit(redis_server, unique, tmp_path):
    import httpx

    (tmp_path / "fleet_app.py").write_text(APP)
    env = dict(os.environ, REDIS_URL=redis_server.url, NS=unique)
    for a, b in uvicorn_processes("fleet_app:app", 2, env, str(tmp_path)):
        codes = []
        pids = set()
        for i in range(8):
            r = httpx.get(a if i % 2 == 0 else b, timeout=10)
            codes.append(r.status_code)
            if r.status_code == 200:
                pids.add(r.json()["pid"])
        assert codes == [200] * 5 + [429] * 3
        assert len(pids) == 2
