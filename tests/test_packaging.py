"""Shipping checks: the Dockerfile lints clean with hadolint, the Helm chart lints clean with
Helm's own library (default values and every optional feature on), the example policies
validate, and the JSON Schema agrees with the loader."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from retention.cli import main
from retention.schema import policy_schema

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "retention"


def tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        raise RuntimeError(f"{name} is missing: run ./scripts/setup.sh, which installs it")
    return found


def test_dockerfile_lints_clean():
    result = subprocess.run([tool("hadolint"), str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def helm_lint(chart: Path) -> list[dict]:
    import helm_sdkpy

    result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(str(chart)))
    # Severity: 1 info, 2 warning, 3 error.
    return [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 2]


@pytest.mark.parametrize("values", [None, *sorted(p.name for p in (CHART / "ci").glob("*.yaml"))])
def test_helm_chart_lints_clean(tmp_path: Path, values: str | None):
    # Lint turns `fail` into a log line: what a bare install lacks is checked by rendering
    # (tests/test_chart.py).
    chart = tmp_path / "retention"
    shutil.copytree(CHART, chart)
    if values is not None:
        # Helm's Lint action takes no values flag: lint a copy whose values.yaml has them.
        merged = _merge(yaml.safe_load((CHART / "values.yaml").read_text()),
                        yaml.safe_load((CHART / "ci" / values).read_text()))
        (chart / "values.yaml").write_text(yaml.safe_dump(merged))
    problems = helm_lint(chart)
    assert problems == [], problems


def test_helm_lint_catches_a_broken_template(tmp_path: Path):
    chart = tmp_path / "retention"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "broken.yaml").write_text("a: {{ .Values.nope.deeper }}\n")
    assert helm_lint(chart) != []


def test_example_policies_validate():
    out, err = io.StringIO(), io.StringIO()
    assert main(["validate", str(ROOT / "policies")], stdout=out, stderr=err) == 0, err
    assert "3 policies valid" in out.getvalue()


def test_schema_accepts_examples_and_matches_the_shipped_copy():
    schema = policy_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    examples = [*sorted((ROOT / "policies").glob("*.yaml")), ROOT / "tests/data/spec-example.yaml"]
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            jsonschema.validate(doc, schema)
    shipped = json.loads((ROOT / "docs" / "policy.schema.json").read_text())
    assert shipped == schema, "docs/policy.schema.json is stale: retention schema > it"


@pytest.mark.parametrize("doc", [
    {"name": "p", "repositories": {"include": ["a"]}, "delete": [{"older_than": "1d"}]},
    {"name": "p", "repositories": {"include": ["a"]}, "delete": [{"tags": ["a"]}], "x": 1},
    {"name": "P", "repositories": {"include": ["a"]}, "delete": [{"tags": ["a"]}]},
    {"name": "p", "repositories": {"include": ["a"]},
     "delete": [{"tags": ["a"], "untagged": True}]},
])
def test_schema_rejects_what_the_loader_rejects(doc):
    from retention.errors import ConfigError
    from retention.policy import policies_from_text

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, policy_schema())
    with pytest.raises(ConfigError):
        policies_from_text(json.dumps(doc))


def test_helm_values_schema_rejects_a_bad_mode(tmp_path: Path):
    chart = tmp_path / "retention"
    shutil.copytree(CHART, chart)
    values = yaml.safe_load((chart / "values.yaml").read_text())
    values["config"]["mode"] = "delete-everything"
    (chart / "values.yaml").write_text(yaml.safe_dump(values))
    assert any(m.get("Path") == "values.yaml" for m in helm_lint(chart))


def _distribution(requirement: str) -> str:
    """A requirement's distribution name, normalized (PEP 503)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules() -> dict[str, set[str]]:
    """Top-level modules the package imports (stdlib and itself aside) -> the files."""
    found: dict[str, set[str]] = {}
    for source in (ROOT / "retention").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "retention":
                    found.setdefault(top, set()).add(source.relative_to(ROOT).as_posix())
    return found


def test_every_module_the_package_imports_is_declared_and_every_dependency_used():
    """Nothing is imported only by accident of another package (yarl and multidict came
    with aiohttp), and nothing is shipped that the package does not import (a second HTTP
    stack left behind)."""
    import importlib.metadata
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_distribution(r) for r in project["dependencies"]}
    extras = {_distribution(r) for name, rs in project["optional-dependencies"].items()
              if name != "test" for r in rs}  # the package must not import a test tool
    installed = {module: {_distribution(d) for d in dists}
                 for module, dists in importlib.metadata.packages_distributions().items()}

    def provider(module: str, declared: set[str]) -> str | None:
        # Installed: the distribution that brings the module. Not installed (an extra, such
        # as azure-identity for `azure`): a declared name that starts with it.
        for dist in installed.get(module) or sorted(declared):
            if dist in declared and (module in installed or dist.startswith(module)):
                return dist
        return None

    imported = _imported_modules()
    undeclared = {m: sorted(files) for m, files in imported.items()
                  if provider(m, runtime | extras) is None}
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"
    used = {provider(m, runtime) for m in imported}
    assert runtime - used == set(), "declared but never imported by the package"
