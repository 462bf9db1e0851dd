"""Found in review (each failed before its fix): a manifest's own time wins over what an
index says of it, and keep_for holds for a tag reference read while its repository was not
(another registry's run, or a repository that could not be read)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

from retention import kube
from retention.config import load_config
from retention.inuse import Use
from retention.kube import ClusterReading, in_use_pass
from retention.planner import Options, plan
from retention.state import State
from tests.factories import NOW, deleted, dg, inv, man, policy

# -- issue 11: an index's attestation mark overrides a manifest's own time ------------------

def test_attestation_mark_never_makes_a_young_tagged_image_old():
    """SPEC: the time of a manifest is the registry's push time, else its config's created.
    An index that (oddly, or by a hand-written `manifest create --annotation`) marks a real,
    tagged, 1-day-old image as its attestation gives that image the index's 40-day time
    (RepoView._own_time checks `attested` before `pushed`/`created`), so `older_than: 30d`
    deletes a 1-day-old image."""
    young = man("young", "build-2", days=1)
    old_index = replace(man("old-index", "build-1", children=("platform", "young")),
                        attestations=(dg("young"),))
    inventory = inv(man("platform", days=40), young, old_index)
    p = plan(inventory, policy("""
name: p
repositories: {include: ["**"]}
delete:
  - tags: ["build-*"]
    older_than: 30d
"""), now=NOW, options=Options(untagged_grace=timedelta(0)))
    assert "young" not in deleted(p), deleted(p)


# -- issue 13: keep_for is not kept for tag references read while the registry was not ----

def _config(tmp_path):
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "kube.yaml").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: a\n"
        "contexts: [{name: a, context: {cluster: c, user: u}}]\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\nusers: [{name: u}]\n")
    path = tmp_path / "retention.yaml"
    path.write_text("registries:\n  main:\n    url: https://registry.test:5000\n"
                    "  other:\n    url: https://other.test\n"
                    "policies: policies\nin_use:\n  keep_for: 30d\n"
                    "  clusters: [{name: prod, kubeconfig: kube.yaml}]\n")
    return load_config(path)


def _reading(*images):
    return [ClusterReading("prod", tuple(Use("prod", "ns", "deployment", f"d{i}", image)
                                        for i, image in enumerate(images)))]


V_OLDER_THAN_30D = """
name: p
repositories: {include: ["**"]}
delete:
  - tags: ["v*"]
    older_than: 30d
"""


def _deleted_on_day_1(tmp_path, monkeypatch, *, day_0: tuple[list, dict],
                      day_1: tuple[list, dict]) -> set[str]:
    """Read the cluster on day 0 and day 1 (each: its readings, the inventories the run
    read), then plan registry main's `v*` images on day 1 with what was in use."""
    config = _config(tmp_path)
    state = State.memory()
    readings = iter([day_0[0], day_1[0]])

    async def fake_read(clusters, *, timeout):
        return next(readings)

    monkeypatch.setattr(kube, "read_clusters", fake_read)
    asyncio.run(in_use_pass(config, day_0[1], state, now=NOW - timedelta(days=1)))
    got = asyncio.run(in_use_pass(config, day_1[1], state, now=NOW))
    web = day_1[1]["main"]
    return deleted(plan(web, policy(V_OLDER_THAN_30D), now=NOW,
                        options=Options(in_use=got.protected)))


WEB = inv(man("v1-image", "v1", days=40), man("v2-image", "v2", days=2))


def test_tag_reference_seen_while_its_registry_was_not_scanned_is_remembered(
        tmp_path, monkeypatch):
    """SPEC: "A digest stays protected for keep_for after the last run that saw it in use".
    Day 0: a run of a policy of registry `other` (own schedule, or `run --policy`) reads the
    cluster; deployment d0 runs registry.test:5000/ci/web:v1, a registry that run did not
    read. Day 1: d0 is gone; the run of `main` must still keep its image (keep_for 30d)."""
    other = replace(inv(man("x1", "1"), repo="x"), registry="other", host="other.test")
    gone = _deleted_on_day_1(
        tmp_path, monkeypatch,
        day_0=(_reading("registry.test:5000/ci/web:v1", "other.test/x:1"), {"other": other}),
        day_1=(_reading("other.test/x:1"), {"main": WEB}))
    assert "v1-image" not in gone, "in use a day ago, keep_for 30d: must stay"


def test_tag_reference_seen_while_its_repository_was_unreadable_is_remembered(
        tmp_path, monkeypatch):
    """Same inside one registry: on day 0 ci/web answered with an error (a transient 500)
    while ci/web:v1 ran; on day 1 the workload is gone and keep_for has not passed."""
    broken = inv(repo="ci/web", error="500 Internal Server Error")
    gone = _deleted_on_day_1(
        tmp_path, monkeypatch,
        day_0=(_reading("registry.test:5000/ci/web:v1", "registry.test:5000/ci/api:1"),
               {"main": broken}),
        day_1=(_reading("registry.test:5000/ci/api:1"), {"main": WEB}))
    assert "v1-image" not in gone, "in use a day ago, keep_for 30d: must stay"
