"""Metrics: buckets that fit what is measured, series known from the configuration at 0."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from retention.metrics import REQUEST_BUCKETS, RUN_BUCKETS, Metrics


def p90_of_one(buckets: tuple[float, ...], seconds: float) -> float:
    """What histogram_quantile(0.9, ...) reads for a single observation."""
    lower = 0.0
    for upper in buckets:
        if seconds <= upper:
            return lower + 0.9 * (upper - lower)
        lower = upper
    raise AssertionError("beyond the last bucket")


@pytest.mark.parametrize(("buckets", "seconds"), [
    *[(RUN_BUCKETS, s) for s in (0.02, 0.2, 0.7, 3, 45, 400, 2500, 5000, 9000, 20000)],
    *[(REQUEST_BUCKETS, s) for s in (0.002, 0.004, 0.03, 0.3, 2, 15, 45)],
])
def test_buckets_fit_what_is_measured(buckets, seconds: float):
    # Issue 15: run buckets began at 1 s, so p90 of 0.2 s runs read 0.9 s.
    p90 = p90_of_one(buckets[:-1], seconds)
    assert seconds / 2.5 <= p90 <= seconds * 2.5, (seconds, p90)


def series(m: Metrics) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in generate_latest(m.registry).decode().splitlines()
            if line and not line.startswith("#")}


def test_configure_exports_zero_and_drops_what_left():
    m = Metrics()
    m.configure([("a", "main"), ("b", "acr")])
    s = series(m)
    assert 'retention_delete_failures_total{policy="b",registry="acr"}' in s
    assert 'retention_runs_total{outcome="aborted",policy="a"}' in s
    assert 'retention_run_duration_seconds_count{policy="a"}' in s
    m.last_success.labels("a").set(1.0)
    m.protected_manifests.labels("main", "a", "pinned").set(2)
    # a leaves, b moves to main: nothing of a remains, nothing of b on acr.
    m.configure([("b", "main")])
    s = series(m)
    assert not [x for x in s if 'policy="a"' in x]
    assert not [x for x in s if 'registry="acr"' in x]
    assert 'retention_manifests_deleted_total{policy="b",registry="main"}' in s
    assert 'retention_runs_total{outcome="success",policy="b"}' in s
