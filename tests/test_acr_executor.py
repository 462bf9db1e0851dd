"""ACR: each DELETE gets its own confirmation of the manifest's tags (one request)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.acr_emulator import AcrEmulator, TagEntry
from tests.test_acr import acr, write_config  # noqa: F401  (the fixture)
from tests.test_run_e2e import cli

OLD = datetime.now(UTC) - timedelta(days=30)


class _Hooked(list):
    """The emulator's request log, calling ``hook`` as each request arrives."""

    def __init__(self, items, hook):
        super().__init__(items)
        self.hook = hook

    def append(self, item) -> None:
        super().append(item)
        self.hook(*item)


def test_tags_are_confirmed_before_each_delete_on_acr(acr: AcrEmulator, tmp_path):  # noqa: F811
    first = acr.image("app", "pr-1", created=OLD, seed="1")
    second = acr.image("app", "pr-2", created=OLD, seed="2")
    early, late = sorted([first, second])

    def rollback(method: str, path: str) -> None:
        if method == "DELETE" and path.endswith(early):
            acr.tags["app"]["latest"] = TagEntry(late)  # a rollback, mid-run

    acr.requests = _Hooked(acr.requests, rollback)
    config = write_config(tmp_path, acr, 'name: p\nrepositories: {include: ["**"]}\n'
                                         'delete: [{tags: ["pr-*"]}]\n')
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0
    status = {a["digest"]: a for a in doc["actions"]}
    assert status[early]["status"] == "deleted"
    assert status[late]["status"] == "skipped"
    assert status[late]["reason"].startswith("changed: tags are now ['latest', 'pr-")
    assert late in acr.repos["app"]
    # One confirmation per DELETE, by digest; no listing of the repository for it.
    assert acr.count("GET", r"^/acr/v1/app/_manifests/sha256:") == 2
