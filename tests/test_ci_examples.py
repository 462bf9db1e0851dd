"""The CI jobs and commands of docs/operations.md ("Policies through pull requests",
"Approving deletions") run as written: their `retention` commands are read from the page
and run by bash against a real registry, the inventory job with its credentials, the pull
request jobs without any."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PASSWORD, USER
from tests.pusher import Pusher
from tests.servers import Registry
from tests.test_diff import BASE, HEAD, OLD

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "operations.md"
BIN = Path(sys.executable).parent  # where `retention` is installed beside this Python


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def blocks(text: str, lang: str) -> dict[str, str]:
    """Fenced blocks of a language, by the file their first line names (`# path`)."""
    out = {}
    for body in re.findall(rf"^ *```{lang}\n(.*?)^ *```", text, re.M | re.S):
        first = body.lstrip().splitlines()[0]
        name = first[2:].strip() if first.startswith("# ") else f"block-{len(out)}"
        out[name] = body
    return out


def commands(script: str) -> list[str]:
    """The `retention` command lines of a shell script (continuations joined)."""
    lines = script.replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip().startswith("retention ")]


def with_secrets(env: dict | None) -> dict[str, str]:
    """A job's environment as CI gives it: secrets (`${{ secrets.X }}`) are the registry's
    password; other expressions play no part in the retention commands."""
    out = {}
    for key, value in (env or {}).items():
        value = str(value)
        if "secrets." in value:
            out[key] = PASSWORD
        elif "${{" not in value and "$" not in value:
            out[key] = value
    return out


def github_jobs(workflow: dict) -> list[tuple[str, dict[str, str], list[str]]]:
    """(job, env, retention commands) per step of each job."""
    out = []
    for name, job in workflow["jobs"].items():
        for step in job["steps"]:
            if "run" in step:
                env = {**with_secrets(workflow.get("env")), **with_secrets(job.get("env")),
                       **with_secrets(step.get("env"))}
                out.append((name, env, commands(step["run"])))
    return out


def gitlab_jobs(pipeline: dict) -> list[tuple[str, dict[str, str], list[str]]]:
    out = []
    for name, job in pipeline.items():
        if not isinstance(job, dict) or "script" not in job:
            continue
        env = {**with_secrets(pipeline.get("variables")), **with_secrets(job.get("variables"))}
        out.append((name, env, [c for item in job["script"] for c in commands(item)]))
    return out


def sh(command: str, cwd: Path, env: dict[str, str]) -> None:
    # The password a CI secret store holds, unless the job sets its own (the pull
    # request jobs set it empty).
    full = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
            "REGISTRY_PASSWORD": PASSWORD, **env}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (command, env, done.stdout, done.stderr)


@pytest.fixture
def seeded(basic_registry: Registry) -> Pusher:
    pusher = Pusher(basic_registry.url, auth=(USER, PASSWORD))
    pusher.image("app", "pr-10", created=OLD, layers=(b"pr-10",))
    pusher.image("app", "feature-x", created=OLD, layers=(b"feat",))
    pusher.image("legacy/tool", "t1", created=OLD, layers=(b"t1",))
    pusher.image("app", "latest", created=OLD, layers=(b"first latest",))
    yield pusher
    pusher.close()


def checkout(work: Path, url: str) -> None:
    """The policy repository of the docs, with the pull request's policies, and the base
    branch checked out in base/ as the jobs do."""
    ci = blocks(section("Policies through pull requests"), "yaml")["ci/retention.yaml"]
    (work / "ci").mkdir(parents=True)
    (work / "ci" / "retention.yaml").write_text(
        ci.replace("https://registry.example.com", url).replace("ci-reader", USER))
    (work / "pinned.txt").write_text("# nothing pinned\n")
    for root, policies in ((work, HEAD), (work / "base", BASE)):
        (root / "policies").mkdir(parents=True, exist_ok=True)
        (root / "policies" / "p.yaml").write_text(policies)


@pytest.mark.parametrize(("files", "read"), [
    ((".github/workflows/retention-inventory.yml", ".github/workflows/retention-diff.yml"),
     github_jobs),
    ((".gitlab-ci.yml",), gitlab_jobs),
])
def test_the_pull_request_jobs(tmp_path, basic_registry, seeded: Pusher, files, read):
    found = blocks(section("Policies through pull requests"), "yaml")
    jobs = [job for name in files for job in read(yaml.safe_load(found[name]))]
    inventory = [(env, c) for _, env, cs in jobs for c in cs if c.startswith("retention inv")]
    pull_request = [(env, c) for _, env, cs in jobs for c in cs
                    if not c.startswith("retention inv")]
    assert len(inventory) == 1
    assert [c.split()[1] for _, c in pull_request] == ["validate", "diff"]
    assert all(env.get("REGISTRY_PASSWORD") == "" for env, _ in pull_request)

    work = tmp_path / "checkout"
    checkout(work, basic_registry.url)
    # Two scheduled runs of the inventory job, on the cached state: app:latest re-pushed
    # between them is an orphan the second one knows.
    (env, command), = inventory
    sh(command, work, env)
    seeded.image("app", "latest", created=OLD, layers=(b"second latest",))
    sh(command, work, env)
    assert json.loads((work / "inventory.json").read_text())["inventories"]
    # The pull request's jobs: no credentials (an empty password is refused by this
    # registry, so any request would fail the command).
    for env, command in pull_request:
        sh(command, work, env)
    comment = (work / "diff.md").read_text()
    assert comment.startswith("<!-- retention diff -->\n### retention: +1 deletions, "
                              "+453 B; -2 deletions, -905 B; 1 protected differently\n")
    assert "<details>" in comment
    # The added policy matches the orphan, which the cached state found; it was seen
    # untagged for less than the doc's untagged_grace.
    assert "| `orphans` | +0 (0 B) | -0 (0 B) | 1 |" in comment
    assert "protected (grace: seen untagged for" in comment


def test_the_approval_commands(tmp_path, basic_registry, seeded: Pusher):
    found = blocks(section("Approving deletions"), "sh")
    lines = [c for body in found.values() for c in commands(body)]
    assert [c.split()[1] for c in lines] == ["plan", "apply"]
    work = tmp_path / "ops"
    work.mkdir()
    (work / "policies").mkdir()
    (work / "policies" / "p.yaml").write_text(BASE)
    (work / "retention.yaml").write_text(
        f"registries:\n  main:\n    url: {basic_registry.url}\n    username: {USER}\n"
        "    password_env: REGISTRY_PASSWORD\npolicies: policies\nmode: enforce\n"
        "state_dir: state\n")
    env = {"RETENTION_CONFIG": str(work / "retention.yaml")}
    sh(lines[0], work, env)
    saved = json.loads((work / "plan.json").read_text())
    planned = {a["tags"][0] for a in saved["actions"]}
    assert planned == {"pr-10", "t1"}
    assert "pr-10" in (work / "plan.txt").read_text()
    assert seeded.exists("app", "pr-10")  # saving deleted nothing
    sh(lines[1], work, env)
    assert not seeded.exists("app", "pr-10") and not seeded.exists("legacy/tool", "t1")
    assert seeded.exists("app", "feature-x") and seeded.exists("app", "latest")
