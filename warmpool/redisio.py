"""Small helpers around redis-py's asyncio client."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import TypeVar, cast

T = TypeVar("T")


async def awaited(value: Awaitable[T] | T) -> T:
    """Await redis-py calls whose stubs say `Awaitable[T] | T` (the asyncio client always returns awaitables)."""
    if inspect.isawaitable(value):
        return await cast(Awaitable[T], value)
    return value


def text(value: object) -> str:
    """Decode a Redis reply to str ('' for None)."""
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)
