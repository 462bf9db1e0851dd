"""plan() pauses the cyclic garbage collector while it plans (6cf519a): whoever calls it,
from however many threads, finds the collector as it was before."""

from __future__ import annotations

import gc
import sys
import threading

from tests.factories import inv, make_plan, man

POLICY = """
name: p
repositories: {include: ["**"]}
delete:
  - tags: ["pr-*"]
"""
WAIT = 10.0  # seconds; only reached when the interleaving below cannot happen


def _plan() -> None:
    make_plan(POLICY, inv(man("a", "pr-1")))


def test_a_caller_that_paused_the_collector_finds_it_paused():
    gc.disable()
    try:
        _plan()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_two_threads_planning_at_once_leave_the_collector_running():
    """Thread B checks whether the collector runs while thread A's plan() has paused it
    (no: B will not resume it), A finishes and resumes it, then B pauses it: before the
    fix, it stayed paused for good, and the process collected no cycle again."""
    assert gc.isenabled()
    a_inside, a_may_go, a_done = threading.Event(), threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def hold_a(frame, event, arg):  # A stops inside plan(), after the pause began
        if event == "c_return" and arg is gc.disable:
            hold_a.paused = True
        elif event == "c_call" and arg is sorted and getattr(hold_a, "paused", False):
            sys.setprofile(None)
            a_inside.set()
            a_may_go.wait(WAIT)

    def between_b(frame, event, arg):  # B: after its check, before its pause
        if event == "c_call" and arg is gc.disable:
            sys.setprofile(None)
            a_may_go.set()
            a_done.wait(WAIT)

    def run(profile, done: threading.Event | None) -> None:
        sys.setprofile(profile)
        try:
            _plan()
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        finally:
            sys.setprofile(None)
            if done is not None:
                done.set()

    a = threading.Thread(target=run, args=(hold_a, a_done))
    b = threading.Thread(target=run, args=(between_b, None))
    try:
        a.start()
        assert a_inside.wait(WAIT)
        b.start()
        b.join(WAIT)
        a_may_go.set()
        a.join(WAIT)
        assert not failures
        assert not a.is_alive() and not b.is_alive()
        assert gc.isenabled(), "plan() in two threads left the garbage collector disabled"
    finally:
        a_may_go.set()
        gc.enable()
