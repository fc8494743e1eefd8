"""Run the async SDK from blocking code: each call gets a private event loop.

The blocking API (``spotd.jobs``, ``spotd.serve``) is this thin layer over ``spotd.aio``: one
``asyncio.Runner`` per call (per iteration, for ``logs``), so there is no background thread and
no loop shared between calls or with the caller. Inside a running event loop a blocking call
would stall that loop (or deadlock it), so it is refused with ``SyncCallInEventLoopError``
naming the ``spotd.aio`` function to await instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from spotd.sdk.errors import SyncCallInEventLoopError

T = TypeVar("T")


def _refuse_in_loop(what: str, instead: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise SyncCallInEventLoopError(
        f"spotd.{what}() blocks and was called inside a running event loop; there, use {instead}"
    )


def run(what: str, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``make()``'s coroutine run to completion on a private loop (created only after the
    in-loop check, so a refused call leaves no never-awaited coroutine behind)."""
    _refuse_in_loop(what, f"`await spotd.aio.{what}(...)`")
    with asyncio.Runner() as runner:
        return runner.run(make())


def iterate(what: str, make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """``make()``'s async iterator as a blocking iterator; checked now, consumed lazily.

    Closing the iterator early (``break``, ``.close()``) closes the async one on its loop.
    """
    _refuse_in_loop(what, f"`async for ... in spotd.aio.{what}(...)`")
    return _drive(make)


def _drive(make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    runner = asyncio.Runner()
    source = make()

    async def step() -> T:
        return await anext(source)

    try:
        while True:
            try:
                item = runner.run(step())
            except StopAsyncIteration:
                return
            yield item
    finally:
        try:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                runner.run(aclose())
        finally:
            runner.close()
