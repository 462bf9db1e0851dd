"""SPEC "Time of a manifest", "Dated and undated in newest" and untagged_for, rule by rule:
attestations, first sight, the state that remembers it, and how reports show it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.inventory import inventory_from_json, inventory_to_json
from retention.report import to_json, to_table
from retention.state import State
from tests.factories import NOW, deleted, dg, inv, kept, make_plan, man

OLDER_30 = """
name: p
repositories: {include: ["**"]}
delete: [{tags: ["build-*"], older_than: 30d}]
"""


def seen(m, days: float | None):
    return dataclasses.replace(m, first_seen=None if days is None else NOW - timedelta(days=days))


def buildx(name: str, tag: str, days: float):
    """An index of one platform image and its BuildKit attestation (no time of its own)."""
    platform = man(f"{name}-amd64", days=days)
    attestation = man(f"{name}-att", days=None)
    index = dataclasses.replace(man(name, tag, children=(f"{name}-amd64", f"{name}-att")),
                                attestations=(dg(f"{name}-att"),))
    return [platform, attestation, index]


def test_attestation_does_not_count_for_its_index_time():
    p = make_plan(OLDER_30, inv(*buildx("old", "build-1", 40), *buildx("new", "build-2", 20)))
    assert deleted(p) == {"old", "old-amd64", "old-att"}
    sources = {a.digest: a.time.source for a in p.actions}
    assert sources[dg("old")] == sources[dg("old-att")] == "children"


def test_orphaned_buildx_index_is_an_orphan_and_its_attestation_is_not():
    text = ("name: p\nrepositories: {include: [\"**\"]}\n"
            "delete: [{untagged: true, older_than: 7d}]\n")
    ms = buildx("orphan", "x", 20)
    ms[2] = dataclasses.replace(ms[2], tags=(), untagged_since=NOW - timedelta(days=2))
    p = make_plan(text, inv(*ms))
    assert deleted(p) == {"orphan", "orphan-amd64", "orphan-att"}
    assert {a.cascade_of for a in p.actions} == {None, dg("orphan")}


@pytest.mark.parametrize(("created", "first_seen", "old", "source"), [
    (datetime(1970, 1, 1, tzinfo=UTC), 40, True, "first-seen"),
    (datetime(1970, 1, 1, tzinfo=UTC), 20, False, "first-seen"),
    (datetime(1980, 1, 1, tzinfo=UTC), None, False, None),  # first seen in this run
    (None, 40, True, "first-seen"),
    (NOW + timedelta(days=3), 40, True, "first-seen"),  # a future time is not used
    (NOW - timedelta(days=10), 40, False, "created"),  # a real time wins over first sight
    (None, -1, False, None),  # first seen "later than now" (a clock went back): unknown
])
def test_time_falls_back_to_first_sight(created, first_seen, old, source):
    m = seen(man("m", "build-1", days=None, created=created), first_seen)
    p = make_plan(OLDER_30, inv(m))
    assert (deleted(p) == {"m"}) is old
    decided = [*p.actions, *p.policies[0].protected, *p.policies[0].kept]
    assert all(d.time.source == source for d in decided)


def test_annotation_is_used_when_the_config_time_is_not():
    m = dataclasses.replace(man("m", "build-1", days=None, created=datetime(1970, 1, 1,
                                                                             tzinfo=UTC)),
                            annotated=NOW - timedelta(days=40))
    p = make_plan(OLDER_30, inv(m))
    assert [a.time.source for a in p.actions] == ["annotation"]


def test_index_with_an_undated_platform_child_uses_its_own_first_sight():
    ms = [man("c-dated", days=40), man("c-1970", days=None),
          seen(man("idx", "build-1", children=("c-dated", "c-1970")), 35)]
    p = make_plan(OLDER_30, inv(*ms))
    assert deleted(p) == {"idx", "c-dated", "c-1970"}
    assert {a.time.source for a in p.actions if a.digest == dg("idx")} == {"first-seen"}


NEWEST_2 = """
name: p
repositories: {include: ["**"]}
keep: [{newest: 2}]
delete: [{tags: ["*"]}]
"""


def test_newest_keeps_n_dated_and_n_undated():
    ms = [man("rel-20d", "release-1", days=20), man("rel-10d", "release-2", days=10),
          man("rel-30d", "release-0", days=30),
          seen(man("tools", "tools", days=None), None),
          seen(man("n1", "nightly-1", days=None), 3), seen(man("n2", "nightly-2", days=None), 2)]
    p = make_plan(NEWEST_2, inv(*ms))
    assert kept(p) == {"rel-10d", "rel-20d", "tools", "n2"}
    assert deleted(p) == {"rel-30d", "n1"}


def test_same_run_first_sights_rank_by_digest():
    ms = [seen(man(f"n{i}", f"nightly-{i}", days=None), 5) for i in range(4)]
    p = make_plan(NEWEST_2, inv(*ms))
    assert kept(p) == set(sorted((f"n{i}" for i in range(4)), key=dg)[:2])


UNTAGGED_FOR = """
name: p
repositories: {include: ["**"]}
delete: [{untagged: true, untagged_for: 7d}]
"""


@pytest.mark.parametrize(("untagged_days", "goes"), [(8, True), (7, True), (6, False),
                                                     (None, False)])
def test_untagged_for_measures_time_without_a_tag(untagged_days, goes):
    m = man("orphan", days=400, untagged_days=untagged_days)
    assert (deleted(make_plan(UNTAGGED_FOR, inv(m))) == {"orphan"}) is goes


def test_first_seen_and_attestations_survive_the_inventory_json():
    ms = [seen(man("a", "x", days=None), 3), *buildx("b", "y", 5)]
    ms[-1] = dataclasses.replace(ms[-1], annotated=NOW - timedelta(days=1))
    inventory = inv(*ms)
    assert inventory_from_json(inventory_to_json(inventory)) == inventory


def test_state_feeds_first_sight_from_the_second_run_on(tmp_path: Path):
    state = State.open(tmp_path)
    first = state.observe(inv(man("a", "x", days=None)), NOW)
    assert first.repositories[0].manifests[0].first_seen is None  # this run: unknown
    later = state.observe(inv(man("a", "x", days=None), man("b", "y", days=None)),
                          NOW + timedelta(days=2))
    times = {m.digest: m.first_seen for m in later.repositories[0].manifests}
    assert times == {dg("a"): NOW, dg("b"): None}
    # A repository that could not be read keeps its record: first sight is not lost.
    state.observe(inv(error="boom"), NOW + timedelta(days=3))
    again = state.observe(inv(man("a", "x", days=None)), NOW + timedelta(days=4))
    assert again.repositories[0].manifests[0].first_seen == NOW
    state.close()


def test_reports_show_where_the_time_came_from():
    ms = [seen(man("by-sight", "build-1", days=None), 12), man("dated", "build-2", days=40),
          seen(man("unknown", "build-3", days=None), None)]
    p = make_plan("""
name: p
repositories: {include: ["**"]}
delete: [{tags: ["build-*"]}]
""", inv(*ms))
    doc = to_json(p, mode="dry-run")
    assert {a["digest"]: a["time_source"] for a in doc["actions"]} == {
        dg("by-sight"): "first-seen", dg("dated"): "created", dg("unknown"): None}
    table = to_table(p, mode="dry-run")
    row = next(line for line in table.splitlines() if "build-1" in line)
    assert "seen 12d" in row
    assert "40d" in next(line for line in table.splitlines() if "build-2" in line)
    assert "unknown" in next(line for line in table.splitlines() if "build-3" in line)
