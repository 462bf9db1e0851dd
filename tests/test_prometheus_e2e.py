"""End to end: `retention serve` (enforce) against a real registry, scraped every second by a
real Prometheus (Debian's), and every query of the shipped Grafana dashboard answers with
data after the first enforced run, the deletion panels with the deletion itself (issue 15:
counters born at their post-increment value showed 0 there)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import yaml

from tests.helm_render import CHART
from tests.pusher import Pusher
from tests.servers import free_port
from tests.test_run_e2e import write_config

DASHBOARD = json.loads((CHART / "dashboards" / "retention.json").read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in DASHBOARD["panels"]
            for target in panel.get("targets", [])]


def wait_until(what: str, predicate, timeout: float, procs: list[subprocess.Popen]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args[0]} exited with {proc.returncode} while "
                                     f"waiting for {what}")
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Served:
    metrics_url: str
    prometheus_url: str
    procs: list[subprocess.Popen]

    def query(self, expr: str) -> list[dict]:
        response = httpx2.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr},
                              timeout=10)
        assert response.status_code == 200, (expr, response.status_code, response.text)
        answer = response.json()
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]


@pytest.fixture
def served(tmp_path: Path, registry, pusher: Pusher) -> Iterator[Served]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is missing: run ./scripts/setup.sh (Debian's prometheus)")
    # A pull-request build from 2024: the policy's tags rule deletes it in the first run.
    pusher.image("app", "pr-1", created="2024-01-01T00:00:00Z", layers=(b"pr-1",))
    pusher.image("app", "v1.0.0", created="2024-01-01T00:00:00Z", layers=(b"release",))
    port = free_port()
    config = write_config(tmp_path, registry.url, mode="enforce", extra=(
        f'listen: 127.0.0.1:{port}\nschedule: "* * * * *"\nlog_format: json'))
    # The daemon's first run is at the next minute. Prometheus must have scraped the
    # counters at 0 before it, or increase() cannot see the deletion: leave it 20 s at least.
    if (second := time.time() % 60) > 40:
        time.sleep(61 - second)
    procs: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "retention", "serve", "--config", str(config)],
            stdout=(logs / "retention.out").open("w"), stderr=(logs / "retention.err").open("w")))
        prom_port = free_port()
        prom_config = tmp_path / "prometheus.yml"
        prom_config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "retention",
                                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}))
        procs.append(subprocess.Popen(
            [binary, f"--config.file={prom_config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=(logs / "prometheus.out").open("w"),
            stderr=(logs / "prometheus.err").open("w")))
        served = Served(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}", procs)

        def prometheus_ready() -> bool:  # it answers 503 while it opens its storage
            try:
                return httpx2.get(f"{served.prometheus_url}/-/ready", timeout=5).is_success
            except httpx2.TransportError:
                return False

        wait_until("Prometheus to be ready", prometheus_ready, timeout=60, procs=procs)
        yield served
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in sorted(logs.iterdir()):  # shown by pytest when the test failed
            print(f"--- {log.name}\n{log.read_text()[-4000:]}")


def scraped(served: Served, expr: str) -> bool:
    try:
        return bool(served.query(expr))
    except httpx2.TransportError:
        return False


def test_every_dashboard_query_has_data_after_the_first_enforced_run(served: Served,
                                                                      pusher: Pusher):
    queries = dashboard_queries()
    assert len(queries) >= 9
    # Prometheus scrapes the daemon before its first run (at the next minute): the
    # counters are there at 0.
    wait_until("the first scrape", lambda: scraped(
        served, 'retention_runs_total{policy="orphans",outcome="failure"} == 0'),
        timeout=60, procs=served.procs)
    wait_until("the first enforced run", lambda: scraped(
        served, 'retention_runs_total{policy="orphans",outcome="success"} >= 1'),
        timeout=150, procs=served.procs)
    assert not pusher.exists("app", "pr-1")
    assert pusher.exists("app", "v1.0.0")

    def all_answer():
        empty = [title for title, expr in queries if not served.query(expr)]
        return empty == [] or None

    try:
        wait_until("every dashboard query to answer", all_answer, timeout=30,
                   procs=served.procs)
    except AssertionError:
        empty = [(title, expr) for title, expr in queries if not served.query(expr)]
        raise AssertionError(f"dashboard queries without data: {empty}") from None

    def value(expr: str) -> float:
        return sum(float(r["value"][1]) for r in served.query(expr))

    # The deletion itself shows, not 0 (increase() saw the counter at 0 before the run).
    by_title = dict(queries)
    deleted = next(e for t, e in queries if t.startswith("Manifests deleted"))
    reclaimed = next(e for t, e in queries if t.startswith("Reclaimed storage"))
    assert value(deleted) > 0
    assert value(reclaimed) > 0
    assert value(next(e for t, e in by_title.items() if t.startswith("Runs by outcome"))) > 0
    # p90 reads close to what the run took (issue 15: a 0.2 s run read 0.9 s when the
    # buckets started at 1 s): within the ratio of neighbouring buckets.
    p90 = value(next(e for t, e in by_title.items() if t.startswith("Run duration")))
    took = value("sum(retention_run_duration_seconds_sum)"
                 " / sum(retention_run_duration_seconds_count)")
    assert took / 2.5 <= p90 <= took * 2.5, (p90, took)
