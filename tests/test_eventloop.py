"""The loop the product runs on."""

from __future__ import annotations

import asyncio

import uvloop

from retention import eventloop


def test_commands_run_on_uvloop_and_close_their_loop():
    async def which() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    loop = eventloop.run(which())
    assert isinstance(loop, uvloop.Loop)
    assert loop.is_closed()
