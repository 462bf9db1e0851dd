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


def test_the_result_is_never_formatted():
    """Python 3.11's Runner formats the main task, its result included, when it restores
    the SIGINT handler (cpython#112559): for a plan, a repr of every decision, thrown away."""
    formatted = []

    class Plan:
        def __repr__(self) -> str:
            formatted.append(1)
            return "<plan>"

    async def make() -> Plan:
        return Plan()

    assert isinstance(eventloop.run(make()), Plan)
    assert formatted == []


def test_an_exception_of_the_command_comes_through():
    async def fail() -> None:
        raise LookupError("boom")

    try:
        eventloop.run(fail())
    except LookupError as exc:
        assert str(exc) == "boom"
    else:
        raise AssertionError("no exception")
