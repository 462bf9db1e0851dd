"""ACR: a DELETE refused with 405 is explained by the attributes before anything else stops.

ACR answers 405 for a locked manifest, tag or repository, and for a registry refusing every
write (its storage quota reached). Retention reads the attributes after a 405: a manifest
(or one of its tags) locked since the plan fails that manifest; a repository locked fails
that repository's remaining deletions, unsent; only a refusal no lock explains stops the
registry. Also here: on ACR too, the tag read is the last check before each DELETE.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.acr_emulator import AcrEmulator, EmulatorFault, TagEntry
from tests.test_acr import acr, write_config  # noqa: F401  (the fixture)
from tests.test_run_e2e import cli

OLD = datetime.now(UTC) - timedelta(days=30)
PR = 'name: p\nrepositories: {include: ["**"]}\ndelete: [{tags: ["pr-*"]}]\n'


def images(emulator: AcrEmulator, repo: str, n: int) -> list[str]:
    return [emulator.image(repo, f"pr-{i}", created=OLD, seed=f"{repo} {i}") for i in range(n)]


def digest_in(path: str) -> str:
    found = re.search(r"sha256:[0-9a-f]{64}", path)
    assert found, path
    return found.group(0)


def run(emulator: AcrEmulator, tmp_path) -> tuple[int, dict[str, dict]]:
    code, doc, err = cli("run", "--config", str(write_config(tmp_path, emulator, PR)),
                         "--output", "json")
    assert isinstance(doc, dict), err
    return code, {a["digest"]: a for a in doc["actions"]}


@pytest.mark.parametrize("refusal_code", ["REGISTRY_DISALLOWED_OPERATION", "UNSUPPORTED"])
def test_a_manifest_locked_since_the_plan_fails_alone(acr: AcrEmulator,  # noqa: F811
                                                      tmp_path, refusal_code):
    """Whatever the 405's error code: the attributes say the manifest is locked."""
    acr.refusal_code = refusal_code
    app, web = images(acr, "app", 3), images(acr, "web", 2)
    locked: list[str] = []

    def lock_it(method: str, path: str) -> None:
        locked.append(digest_in(path))
        acr.lock_manifest("app", locked[0])

    acr.faults.append(EmulatorFault("DELETE", r"^/v2/app/manifests/", hook=lock_it))
    code, status = run(acr, tmp_path)
    assert code == 1
    (target,) = locked
    assert status[target]["status"] == "failed"
    assert "the manifest is locked" in status[target]["reason"]
    assert {d for d, a in status.items() if a["status"] == "deleted"} == \
        set(app + web) - {target}
    assert set(acr.repos["app"]) == {target} and not acr.repos["web"]


def test_a_tag_locked_since_the_plan_fails_its_manifest_alone(acr: AcrEmulator,  # noqa: F811
                                                               tmp_path):
    acr.refusal_code = "UNSUPPORTED"
    app = images(acr, "app", 3)
    locked: list[str] = []

    def lock_its_tag(method: str, path: str) -> None:
        locked.append(digest_in(path))
        (tag,) = acr.tags_of("app", locked[0])
        acr.lock_tag("app", tag)

    acr.faults.append(EmulatorFault("DELETE", r"^/v2/app/manifests/", hook=lock_its_tag))
    code, status = run(acr, tmp_path)
    assert code == 1
    (target,) = locked
    assert status[target]["status"] == "failed"
    assert re.search(r"its tag pr-\d is locked", status[target]["reason"])
    assert {d for d, a in status.items() if a["status"] == "deleted"} == set(app) - {target}


def test_a_repository_locked_since_the_plan_stops_that_repository_only(
        acr: AcrEmulator, tmp_path):  # noqa: F811
    app, web = images(acr, "app", 3), images(acr, "web", 2)
    acr.faults.append(EmulatorFault("DELETE", r"^/v2/app/manifests/",
                                    hook=lambda m, p: acr.lock_repository("app")))
    code, status = run(acr, tmp_path)
    assert code == 1
    assert all(status[d]["status"] == "failed" for d in app)
    assert all("the repository app is locked" in status[d]["reason"] for d in app)
    # One DELETE refused; the repository's others were not sent.
    assert acr.count("DELETE", r"^/v2/app/manifests/", status=405) == 1
    assert sum(status[d]["reason"].startswith("not sent") for d in app) == 2
    assert all(status[d]["status"] == "deleted" for d in web)
    assert set(acr.repos["app"]) == set(app) and not acr.repos["web"]


def test_a_refusal_no_lock_explains_stops_the_registry(acr: AcrEmulator,  # noqa: F811
                                                       tmp_path):
    """A registry over its storage quota refuses every DELETE with 405 though nothing is
    locked: the first refusal in each repository under way stops the registry."""
    app, web = images(acr, "app", 3), images(acr, "web", 2)
    acr.refuse_writes = True
    code, status = run(acr, tmp_path)
    assert code == 1
    assert all(status[d]["status"] == "failed" for d in app + web)
    assert any("refuses deletes on the whole registry" in a["reason"] for a in status.values())
    # Repositories go in parallel: at most the first DELETE of each was sent.
    assert acr.count("DELETE", r"^/v2/(app|web)/manifests/", status=405) <= 2
    assert len(acr.repos["app"]) == 3 and len(acr.repos["web"]) == 2


def test_a_refusal_whose_attributes_cannot_be_read_stops_the_registry(
        acr: AcrEmulator, tmp_path):  # noqa: F811
    app = images(acr, "app", 3)
    acr.faults.append(EmulatorFault("DELETE", r"^/v2/app/manifests/",
                                    hook=lambda m, p: acr.lock_manifest("app", digest_in(p))))
    acr.faults.append(EmulatorFault("GET", r"^/acr/v1/app$", status=500, code="INTERNAL",
                                    times=100))
    code, status = run(acr, tmp_path)
    assert code == 1
    assert all(status[d]["status"] == "failed" for d in app)
    assert any("reading the attributes that would say why failed" in a["reason"]
               for a in status.values())
    assert acr.count("DELETE", r"^/v2/app/manifests/", status=405) == 1
    assert set(acr.repos["app"]) == set(app)


def test_on_acr_the_tag_read_comes_after_the_listing(acr: AcrEmulator,  # noqa: F811
                                                     tmp_path):
    """The listing that shows manifests pushed since the plan is slow (throttled), and
    `latest` moves onto the doomed build meanwhile: the tag read comes after it, so the
    move is seen."""
    (doomed,) = images(acr, "app", 1)

    def roll_back(method: str, path: str) -> None:
        acr.tags["app"]["latest"] = TagEntry(doomed)

    # skip=2: the scan's listing goes through (challenged, then answered); the executor's
    # is throttled once.
    acr.faults.append(EmulatorFault("GET", r"^/acr/v1/app/_manifests(\?|$)", status=429,
                                    code="TOOMANYREQUESTS", skip=2, hook=roll_back,
                                    fail_after_hook=True))
    code, status = run(acr, tmp_path)
    assert code == 0
    assert status[doomed]["status"] == "skipped", status[doomed]
    assert "latest" in status[doomed]["reason"]
    assert doomed in acr.repos["app"]
