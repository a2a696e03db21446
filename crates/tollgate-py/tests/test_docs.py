"""Every ```python block of docs/python.md and of the README's Python quickstart runs."""

from __future__ import annotations

import re

import pytest

from conftest import REPO

FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(text: str):
    return FENCE.findall(text)


def readme_python_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Python quickstart")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


DOCS = blocks((REPO / "docs" / "python.md").read_text())
README = blocks(readme_python_section())


def test_there_are_examples():
    assert len(DOCS) >= 12 and len(README) >= 1


@pytest.mark.parametrize("source", DOCS + README, ids=[f"docs-{i}" for i in range(len(DOCS))]
                         + [f"readme-{i}" for i in range(len(README))])
def test_example_runs(source, redis_server, redis_cluster, database_url, tmp_path):
    env = {"__name__": "docs_example", "REDIS_URL": redis_server.url, "CLUSTER_URL": redis_cluster,
           "DATABASE_URL": database_url, "TMP": str(tmp_path)}
    exec(compile(source, "<docs example>", "exec"), env)
    # Run the coroutine functions an example defines, so their bodies are checked too.
    import asyncio
    import inspect

    for name, value in list(env.items()):
        if inspect.iscoroutinefunction(value) and name != "main" and not inspect.signature(value).parameters:
            asyncio.run(value())
