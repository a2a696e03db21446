"""tollgate.wsgi.RateLimitMiddleware on a Flask app served by a real werkzeug server, driven
by requests over HTTP."""

from __future__ import annotations

import pytest
import tollgate
from conftest import free_port
from tollgate.wsgi import Policy, RateLimitMiddleware, client_ip, global_key, header
from webutil import WerkzeugThread, need


@pytest.fixture(autouse=True)
def _packages():
    need("flask", "werkzeug", "requests")


def flask_app(policies, **kw):
    from flask import Flask

    app = Flask(__name__)

    @app.route("/api/items", methods=["GET", "POST"])
    def items():
        return {"ok": True}

    app.wsgi_app = RateLimitMiddleware(app.wsgi_app, policies, **kw)  # type: ignore[method-assign]
    return app


@pytest.fixture
def serve():
    servers = []

    def start(app):
        s = WerkzeugThread(app)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def test_flask_exact_fields_429_and_recovery(serve):
    import requests

    clock = tollgate.ManualClock()
    s = serve(flask_app([Policy("per-ip", tollgate.Limiter("5/minute", clock=clock), client_ip())]))
    url = s.url + "/api/items"
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert r.headers["RateLimit"] == '"per-ip";r=4;t=12'
    assert r.headers["RateLimit-Policy"] == '"per-ip";q=5;w=60'
    for _ in range(4):
        requests.get(url, timeout=10)
    r = requests.get(url, timeout=10)
    assert r.status_code == 429 and r.headers["Retry-After"] == "12"
    assert r.headers["RateLimit"] == '"per-ip";r=0;t=60'
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.json()["policy"] == "per-ip" and r.json()["retry_after"] == 12
    clock.advance(12)
    assert requests.get(url, timeout=10).status_code == 200


def test_flask_all_or_nothing_spoofing_shadow_and_503(serve):
    import requests

    per_key = tollgate.Limiter("10/minute", clock=tollgate.ManualClock())
    writes = tollgate.Limiter("1/minute", clock=tollgate.ManualClock())
    s = serve(flask_app([Policy("per-key", per_key, header("X-Api-Key")),
                         Policy("writes", writes, global_key, methods=["POST"])]))
    url, h = s.url + "/api/items", {"X-Api-Key": "k"}
    assert requests.post(url, headers=h, timeout=10).status_code == 200
    r = requests.post(url, headers=h, timeout=10)
    assert r.status_code == 429 and r.headers["RateLimit"] == '"writes";r=0;t=60'
    assert per_key.peek("k").remaining == 8  # 9 left, minus the peeked 1: not charged
    assert requests.get(url, timeout=10).status_code == 400  # no key

    ip = tollgate.Limiter("1/minute")
    s = serve(flask_app([Policy("ip", ip, client_ip(["10.0.0.0/8"]))]))
    url = s.url + "/api/items"
    assert requests.get(url, headers={"X-Forwarded-For": "1.1.1.1"}, timeout=10).status_code == 200
    assert requests.get(url, headers={"X-Forwarded-For": "2.2.2.2"}, timeout=10).status_code == 429

    s = serve(flask_app([Policy("ip", tollgate.Limiter("1/minute"))], shadow=True))
    assert [requests.get(s.url + "/api/items", timeout=10).status_code for _ in range(3)] == [200] * 3

    store = tollgate.Store(f"redis://127.0.0.1:{free_port()}", timeout=0.5)
    s = serve(flask_app([Policy("ip", tollgate.Limiter("5/s", store=store))]))
    r = requests.get(s.url + "/api/items", timeout=10)
    assert r.status_code == 503 and r.json()["status"] == 503
