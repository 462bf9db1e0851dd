"""The suite's fault proxy adds only the faults it is told to: a benchmark's "10 ms added
to every answer" (bench/cold_plan.py --delay-ms) and the tests' timing faults rely on it."""

from __future__ import annotations

import time

import httpx2

from tests.servers import Fault


def _fastest(url: str, path: str, times: int = 10) -> float:
    """The quickest of ``times`` GETs of ``path`` on one kept-alive connection: what the
    proxy adds to every answer, whatever else the machine does meanwhile."""
    best = float("inf")
    with httpx2.Client(base_url=url, trust_env=False) as client:
        client.get(path).raise_for_status()  # the connection made
        for _ in range(times):
            started = time.monotonic()
            client.get(path).raise_for_status()
            best = min(best, time.monotonic() - started)
    return best


def test_an_answer_through_the_proxy_is_not_held_back(proxy):
    # Headers and body are written in two sends: with Nagle's algorithm on, the body
    # waited for the client's delayed ACK, ~40 ms on every answer.
    assert _fastest(proxy.url, "/v2/") < 0.02


def test_a_delay_adds_its_own_time_and_no_more(proxy):
    proxy.inject(Fault("*", "", "delay", times=1000, seconds=0.01))
    assert 0.01 <= _fastest(proxy.url, "/v2/") < 0.03
