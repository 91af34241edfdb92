"""Async test helpers: every proxy test on both event loops, each coroutine bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


@contextlib.contextmanager
def event_loop_policy(kind: str) -> Iterator[None]:
    """`asyncio` or `uvloop` for the asyncio.run calls inside; the default policy after."""
    if kind == "uvloop":
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(None)


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(bounded())
