"""delete_empty_repositories: every guard between "this run emptied a repository" and a
DELETE of the whole repository (ACR emulator; distribution for the non-ACR guard)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retention.cli import main
from tests.acr_emulator import AcrEmulator, EmulatorFault
from tests.pusher import Pusher
from tests.test_acr import acr, write_config  # noqa: F401  (the fixture)
from tests.test_run_e2e import write_config as oci_config

OLD = datetime.now(UTC) - timedelta(days=30)
POLICY = ('name: p\nrepositories: {include: ["ephemeral/**"]}\n'
          'delete: [{tags: ["pr-*"]}]\ndelete_empty_repositories: true\n')


def run(config: Path) -> tuple[int, dict]:
    out = io.StringIO()
    code = main(["run", "--config", str(config), "--output", "json"], stdout=out,
                stderr=io.StringIO())
    return code, json.loads(out.getvalue())


def test_a_failed_deletion_keeps_the_repository(acr: AcrEmulator, tmp_path: Path):  # noqa: F811
    acr.image("ephemeral/pr-7", "pr-7", created=OLD, seed="a")
    refused = acr.image("ephemeral/pr-7", "pr-8", created=OLD, seed="b")
    acr.faults.append(EmulatorFault("DELETE", rf"/manifests/{refused}", status=403,
                                    code="DENIED", times=10))
    code, doc = run(write_config(tmp_path, acr, POLICY))
    assert code == 1
    assert sorted(a["status"] for a in doc["actions"]) == ["deleted", "failed"]
    assert acr.count("DELETE", r"^/acr/v1/ephemeral/pr-7$") == 0
    assert list(acr.repos["ephemeral/pr-7"]) == [refused]


def test_a_refused_repository_delete_is_a_run_error(acr: AcrEmulator,  # noqa: F811
                                                     tmp_path: Path):
    acr.image("ephemeral/pr-7", "pr-7", created=OLD, seed="a")
    acr.faults.append(EmulatorFault("DELETE", r"^/acr/v1/ephemeral/pr-7$", status=403,
                                    code="DENIED", times=10))
    code, doc = run(write_config(tmp_path, acr, POLICY))
    assert code == 1
    assert [a["status"] for a in doc["actions"]] == ["deleted"]
    (error,) = doc["errors"]
    assert error["repository"] == "ephemeral/pr-7"
    assert "deleting the empty repository failed" in error["message"]
    assert "ephemeral/pr-7" in acr.repos


def test_not_on_a_registry_without_repository_deletion(tmp_path: Path, registry,
                                                       pusher: Pusher, proxy):
    # distribution has no API to delete a repository: the option does nothing there.
    img = pusher.image("ephemeral/pr-7", "pr-7", created="2024-01-01T00:00:00Z")
    code, doc = run(oci_config(tmp_path, proxy.url, policy=POLICY))
    assert code == 0 and [a["digest"] for a in doc["actions"]] == [img.digest]
    assert [(m, p) for m, p in proxy.requests if m == "DELETE"] == [
        ("DELETE", f"/v2/ephemeral/pr-7/manifests/{img.digest}")]
