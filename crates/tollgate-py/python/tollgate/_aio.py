"""asyncio glue for the native module: completes a future from the runtime thread."""

from __future__ import annotations

import asyncio


def resolve(future: asyncio.Future, ok: bool, value: object) -> None:
    """Sets ``future``'s result (``ok``) or exception, unless it was cancelled meanwhile."""
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)  # type: ignore[arg-type]
