"""The chart's in-use parts: lint with them on, and the values schema guards them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.test_packaging import CHART, helm_lint


@pytest.mark.parametrize(("in_use", "bad"), [
    ({"enabled": True, "clusters": [{"name": "prod", "kubeconfigKey": "prod.yaml"}]}, False),
    ({"enabled": True, "inCluster": {"enabled": False}, "kubeconfigSecret": "k",
      "clusters": [{"name": "prod", "kubeconfigKey": "p.yaml", "context": "c"}]}, False),
    ({"enabled": True, "clusters": [{"name": "prod"}]}, True),  # no kubeconfigKey
    ({"enabled": True, "keepFor": "a month"}, True),
    ({"enabled": True, "inCluster": {"name": "Prod"}}, True),
])
def test_in_use_values(tmp_path: Path, in_use: dict, bad: bool):
    chart = tmp_path / "retention"
    shutil.copytree(CHART, chart)
    values = yaml.safe_load((chart / "values.yaml").read_text())
    values["inUse"].update(in_use)
    (chart / "values.yaml").write_text(yaml.safe_dump(values))
    problems = helm_lint(chart)
    assert bool(problems) is bad, problems


def test_cluster_role_lists_exactly_the_kinds_read():
    from retention.inuse import KINDS

    text = (CHART / "templates" / "inuse-rbac.yaml").read_text()
    rules = yaml.safe_load(text.split("rules:\n", 1)[1].split("---", 1)[0])
    assert {r for rule in rules for r in rule["resources"]} == set(KINDS)
    assert all(rule["verbs"] == ["list"] for rule in rules)
