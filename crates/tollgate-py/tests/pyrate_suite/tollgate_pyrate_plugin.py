"""A pytest plugin that runs PyrateLimiter's own backend-parametrised tests on tollgate.

Loaded with ``-p tollgate_pyrate_plugin`` into a run of pyrate-limiter's test suite (unpacked
from its sdist at test time by ``run_pyrate_suite.py``; none of its code is in this repository).
It replaces the parameters of their ``create_bucket`` fixture with tollgate bucket factories
(``tollgate.pyrate.TollgateBucket`` on memory, Redis, a Redis Cluster, SQLite and PostgreSQL),
so every test that asks for ``create_bucket`` runs on each tollgate store.

Environment: ``TOLLGATE_PYRATE_REDIS`` (a redis:// URL), ``TOLLGATE_PYRATE_CLUSTER`` (a
redis+cluster:// URL), ``DATABASE_URL`` (PostgreSQL). A store without its variable is left out,
except in CI (``CI`` set), where that is an error.
"""

from __future__ import annotations

import os
import tempfile
import uuid

import pytest

from tollgate import Store
from tollgate.pyrate import TollgateBucket


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def _unique() -> str:
    return "pyrate-" + uuid.uuid4().hex[:12]


async def tollgate_memory_bucket(rates):
    return TollgateBucket(rates)


# One directory for every SQLite file of the run, removed when the run ends (a directory per
# bucket under /tmp would outlive it).
_SQLITE_DIR = tempfile.TemporaryDirectory(prefix="tollgate-pyrate-sqlite-")


def pytest_unconfigure(config):
    _SQLITE_DIR.cleanup()


async def tollgate_sqlite_bucket(rates):
    path = os.path.join(_SQLITE_DIR.name, f"{_unique()}.db")
    return TollgateBucket(rates, Store(f"sqlite://{path}"), key=_unique())


async def tollgate_redis_bucket(rates):
    store = Store(os.environ["TOLLGATE_PYRATE_REDIS"], namespace=_unique(), time="caller")
    return TollgateBucket(rates, store)


async def tollgate_cluster_bucket(rates):
    store = Store(os.environ["TOLLGATE_PYRATE_CLUSTER"], namespace=_unique(), time="caller")
    return TollgateBucket(rates, store)


async def tollgate_postgres_bucket(rates):
    store = Store(os.environ["DATABASE_URL"], namespace=_unique(), time="caller")
    return TollgateBucket(rates, store)


def tollgate_factories():
    factories = [
        pytest.param(tollgate_memory_bucket, id="tollgate-memory"),
        pytest.param(tollgate_sqlite_bucket, id="tollgate-sqlite"),
    ]
    for env, factory, name in (
        ("TOLLGATE_PYRATE_REDIS", tollgate_redis_bucket, "tollgate-redis"),
        ("TOLLGATE_PYRATE_CLUSTER", tollgate_cluster_bucket, "tollgate-cluster"),
        ("DATABASE_URL", tollgate_postgres_bucket, "tollgate-postgres"),
    ):
        if os.environ.get(env):
            factories.append(pytest.param(factory, id=name))
        elif _in_ci():
            raise pytest.UsageError(f"{env} is required in CI for the {name} bucket")
    return factories


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc):
    """Runs before pytest parametrises fixtures: every ``create_bucket`` fixture definition
    gets tollgate's factories as its parameters."""
    for fixturedef in metafunc._arg2fixturedefs.get("create_bucket", ()):
        if fixturedef.params is not None:
            params = tollgate_factories()
            fixturedef.params = params
            fixturedef.ids = [p.id for p in params]
