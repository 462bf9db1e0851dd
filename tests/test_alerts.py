"""The chart's alerts, unit-tested with Debian's `promtool test rules`.

The rules are those the chart renders (Helm's engine, tests/helm_render.py). The input series
are exactly what the daemon exports: each minute of a scenario drives a real `Metrics` (as
the daemon does: `configure` at start, then increments) and the exposition text it serves
is parsed into promtool's series, absent samples included. That is how the first failure
after a start is seen, or missed."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from retention.metrics import Metrics
from tests.helm_render import render

STEP = 60  # seconds between samples, promtool's interval
INTERVAL = 3600  # prometheusRule.scheduleIntervalSeconds: the window W is 2 h
TARGET = {"job": "retention", "namespace": "ops", "instance": "10.0.0.7:9090"}
ALERTS = ("RetentionRunsFailing", "RetentionNoRecentSuccess", "RetentionNeverSucceeded",
          "RetentionConfigReloadFailing", "RetentionDeletionsFailing",
          "RetentionInUseSourceFailing")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        raise RuntimeError("promtool is missing: run ./scripts/setup.sh (Debian's prometheus)")
    return found


@cache
def rule_groups() -> list[dict]:
    rendered = render({
        "registries": {"main": {"url": "https://registry.example.com"}},
        "policies": {"existingConfigMap": "policies"},
        "prometheusRule": {"enabled": True, "scheduleIntervalSeconds": INTERVAL},
        "inUse": {"enabled": True}})
    return rendered.one("PrometheusRule")["spec"]["groups"]


Event = Callable[[Metrics, int], None]  # (metrics, now in promtool seconds)


def exported(steps: int, events: dict[int, list[Event]],
             policies: tuple[tuple[str, str], ...] = (("ci", "main"), ("nightly", "main"))
             ) -> list[dict]:
    """promtool input series: what a daemon started at t=0 exports at each minute."""
    metrics = Metrics()
    metrics.configure(policies)  # what Daemon._apply does at start
    metrics.in_use_read_failures.labels("prod")  # ...and for each configured cluster
    metrics.policies_loaded.set(len(policies))
    series: dict[str, list[str]] = {}
    for step in range(steps):
        for event in events.get(step, []):
            event(metrics, step * STEP)
        text = generate_latest(metrics.registry).decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = {**sample.labels, **TARGET}
                key = sample.name + "{" + ",".join(
                    f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                values = series.setdefault(key, ["_"] * step)  # absent before it appeared
                values.append(repr(float(sample.value)))
        for values in series.values():
            if len(values) < step + 1:
                values.append("_")
    return [{"series": k, "values": " ".join(v)} for k, v in series.items()]


def run(policy: str, outcome: str) -> Event:
    def event(m: Metrics, now: int) -> None:
        m.runs.labels(policy, outcome).inc()
        m.run_duration.labels(policy).observe(0.2)
        if outcome == "success":  # runs.py sets it to time.time()
            m.last_success.labels(policy).set(now)
    return event


def delete_failure(policy: str) -> Event:
    return lambda m, _now: m.delete_failures.labels("main", policy).inc()


def reload_failure() -> Event:
    return lambda m, _now: m.config_reload_failures.inc()


def every(start: int, stop: int, period: int, event: Event) -> dict[int, list[Event]]:
    return {s: [event] for s in range(start, stop, period)}


def merged(*timelines: dict[int, list[Event]]) -> dict[int, list[Event]]:
    out: dict[int, list[Event]] = {}
    for t in timelines:
        for step, events in t.items():
            out.setdefault(step, []).extend(events)
    return out


def check(tmp_path: Path, *, steps: int, events: dict[int, list[Event]],
          expectations: list[tuple[str, str, list[dict]]]) -> None:
    """expectations: (alert, eval time, [expected labels of each firing alert])."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups()}))
    check_rules = subprocess.run([promtool(), "check", "rules", str(rules)],
                                 capture_output=True, text=True, timeout=60)
    assert check_rules.returncode == 0, check_rules.stdout + check_rules.stderr
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": f"{STEP}s",
        "tests": [{
            "interval": f"{STEP}s",
            "input_series": exported(steps, events),
            "alert_rule_test": [
                {"eval_time": at, "alertname": alert,
                 "exp_alerts": [{"exp_labels": {"severity": "warning", **labels},
                                 "exp_annotations": annotations(alert, labels)}
                                for labels in firing]}
                for alert, at, firing in expectations],
        }],
    }
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests, width=10**9))
    result = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


WHERE = {"namespace": "ops", "job": "retention"}


def annotations(alert: str, labels: dict[str, str]) -> dict[str, str]:
    """The rule's annotations with its `{{ $labels.x }}` filled in."""
    rule = next(r for g in rule_groups() for r in g["rules"] if r.get("alert") == alert)
    return {k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], v)
            for k, v in rule.get("annotations", {}).items()}


def test_every_alert_of_the_chart_is_tested():
    names = {r.get("alert") for g in rule_groups() for r in g["rules"]}
    assert names == set(ALERTS)


def test_first_failed_run_after_a_start_fires(tmp_path: Path):
    # Issue 15: the failure counter appeared at 1 on its first increment, so increase()
    # saw nothing. The daemon starts at t=0; the first run, at 10 min, fails.
    check(tmp_path, steps=40, events={10: [run("ci", "failure")]}, expectations=[
        ("RetentionRunsFailing", "5m", []),
        ("RetentionRunsFailing", "15m", [{**WHERE, "policy": "ci"}]),
    ])


def test_aborted_run_fires(tmp_path: Path):
    check(tmp_path, steps=20, events={3: [run("nightly", "aborted")]}, expectations=[
        ("RetentionRunsFailing", "5m", [{**WHERE, "policy": "nightly"}]),
    ])


def test_first_failed_deletion_after_a_start_fires(tmp_path: Path):
    check(tmp_path, steps=20, events={4: [run("ci", "success"), delete_failure("ci")]},
          expectations=[
              ("RetentionDeletionsFailing", "2m", []),
              ("RetentionDeletionsFailing", "6m",
               [{**WHERE, "registry": "main", "policy": "ci"}]),
              ("RetentionRunsFailing", "6m", []),
          ])


def test_rejected_reload_fires(tmp_path: Path):
    check(tmp_path, steps=20, events={5: [reload_failure()]}, expectations=[
        ("RetentionConfigReloadFailing", "3m", []),
        ("RetentionConfigReloadFailing", "7m", [WHERE]),
    ])


def test_a_policy_that_never_succeeds_fires_while_another_succeeds(tmp_path: Path):
    # Issue 15: `unless on()` matched across policies, so one succeeding policy hid another
    # that never did. ci succeeds hourly; nightly fails hourly.
    events = merged(every(5, 200, 60, run("ci", "success")),
                    every(5, 200, 60, run("nightly", "failure")))
    check(tmp_path, steps=200, events=events, expectations=[
        ("RetentionNeverSucceeded", "1h", []),  # not loaded for W yet
        ("RetentionNeverSucceeded", "2h5m", [{**WHERE, "policy": "nightly"}]),
        ("RetentionNoRecentSuccess", "2h5m", []),
        ("RetentionRunsFailing", "2h5m", [{**WHERE, "policy": "nightly"}]),
    ])


def test_a_policy_that_stopped_succeeding_fires(tmp_path: Path):
    # nightly succeeded once, at 10 min, then its runs fail; ci goes on succeeding.
    events = merged(every(5, 200, 30, run("ci", "success")),
                    {10: [run("nightly", "success")]},
                    every(70, 200, 60, run("nightly", "failure")))
    check(tmp_path, steps=200, events=events, expectations=[
        ("RetentionNoRecentSuccess", "2h", []),
        ("RetentionNoRecentSuccess", "2h15m", [{**WHERE, "policy": "nightly"}]),
        ("RetentionNeverSucceeded", "2h15m", []),  # it did succeed within W... at 10 min
    ])


@pytest.mark.parametrize("policy", ["ci", "nightly"])
def test_all_quiet_when_every_policy_succeeds(tmp_path: Path, policy: str):
    events = merged(every(5, 200, 60, run("ci", "success")),
                    every(6, 200, 60, run("nightly", "success")))
    check(tmp_path, steps=200, events=events, expectations=[
        (alert, "3h", []) for alert in ALERTS])


def test_first_unreadable_cluster_after_a_start_fires(tmp_path: Path):
    def unreadable(m: Metrics, _now: int) -> None:
        m.in_use_read_failures.labels("prod").inc()

    check(tmp_path, steps=30, events=merged(every(0, 30, 5, run("ci", "aborted")),
                                             {10: [unreadable]}), expectations=[
        ("RetentionInUseSourceFailing", "5m", []),
        ("RetentionInUseSourceFailing", "15m", [{**WHERE, "cluster": "prod"}]),
    ])
