"""The event loop every command runs on.

uvloop (libuv underneath) instead of asyncio's own loop: a plan is thousands of small
requests, and the loop's share of each one is CPU that a registry on the same machine does
not get. Measured on a cold plan of 4,000 images (docs/performance.md): 10% less of
retention's CPU, cold and warm. A fresh loop per call, as ``asyncio.run`` makes: no global
event loop policy is set, so a library or a test that runs its own loop is left alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on a new uvloop loop (closed afterwards, as asyncio.run does)."""
    result: list[T] = []

    async def keep_aside() -> None:
        # The main task's result stays out of the task: Python 3.11's Runner.run formats
        # repr(task) twice when it restores the SIGINT handler (cpython#112559), and a
        # task's repr holds its result's: the whole plan, 50 ms for 4,000 images.
        result.append(await main)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(keep_aside())
    return result[0]
