"""The planner's semantics, rule by rule, as SPEC states them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.inventory import Repository
from retention.manifest_times import PLAUSIBLE_SINCE
from tests.factories import NOW, deleted, dg, inv, kept, make_plan, man, name_of, protected

SPEC_POLICY = (Path(__file__).parent / "data" / "spec-example.yaml").read_text()

SIMPLE = """
name: p
repositories: {include: ["**"]}
delete:
  - tags: ["pr-*"]
    older_than: 14d
  - untagged: true
    older_than: 1d
"""


# -- The SPEC example ----------------------------------------------------------------------

def test_spec_example_plans_as_spec_says():
    tagged_filler = [man(f"main-{i}", f"build-{i}", days=1) for i in range(10)]
    inventory = inv(
        man("old-pr", "pr-1", days=20),  # old, only pr tags: deleted
        man("pr-and-release", "pr-2", "v1.0.0", days=40),  # v1.0.0 outside delete patterns
        man("young-pr", "pr-3", days=3),  # not older than 14d, and younger than 7d
        man("old-sha", "sha-abc", days=15),
        man("latest", "latest", days=100),
        man("orphan", days=10),  # untagged, older than 1d and than the keep rule's 7d
        man("young-orphan", days=3),  # older than 1d, but keep: younger_than 7d wins
        man("child", days=60),
        man("index", "pr-9", children=("child",)),  # index is as old as its child
        man("unknown-time-pr", "pr-4", days=None),
        man("reproducible-pr", "pr-5", created=datetime(1980, 1, 1, tzinfo=UTC)),
        man("future-pr", "pr-6", created=NOW + timedelta(days=3)),
        *tagged_filler,
    )
    p = make_plan(SPEC_POLICY, inventory)
    # The 10 newest tagged are the fillers plus the unknown-time ones (they rank newest)
    # and young-pr: old-pr, old-sha and index are ranked below and not kept.
    assert deleted(p) == {"old-pr", "old-sha", "orphan", "index", "child"}
    actions = {name_of(a.digest): a for a in p.actions}
    assert actions["old-pr"].reason == "delete rule 1: tags pr-*, sha-*, older than 14d"
    assert actions["orphan"].reason == "delete rule 2: untagged, older than 1d"
    assert actions["child"].cascade_of == dg("index")
    assert "unknown-time-pr" not in deleted(p) | kept(p)  # never matches older_than
    assert "young-orphan" in kept(p)


def test_pr_and_release_tags_survive_pr_rule():
    """Deleting by digest removes every tag: a manifest tagged pr-1 and v1.0 stays."""
    p = make_plan(SIMPLE, inv(man("both", "pr-1", "v1.0", days=400), man("pr", "pr-2",
                                                                         days=400)))
    assert deleted(p) == {"pr"}


@pytest.mark.parametrize(("tags", "patterns", "matched"), [
    (("pr-1",), '["pr-*"]', True),
    (("pr-1", "pr-2"), '["pr-*"]', True),
    (("pr-1", "sha-1"), '["pr-*", "sha-*"]', True),
    (("pr-1", "v1.0"), '["pr-*"]', False),
    (("PR-1",), '["pr-*"]', False),  # case-sensitive
    (("feature/x",), '["feature*"]', False),  # tags cannot hold "/" anyway; * never crosses
    (("v1.2.3",), '["v{1,2}.*.*"]', True),
    (("v3.2.3",), '["v{1,2}.*.*"]', False),
    (("build-123",), '["re:build-[0-9]+"]', True),
    (("xbuild-123",), '["re:build-[0-9]+"]', False),  # must match the whole name
    (("build-123x",), '["re:build-[0-9]+"]', False),
    (("a1",), '["a?"]', True),
    (("a12",), '["a?"]', False),
])
def test_tag_rule_matches_only_when_every_tag_matches(tags, patterns, matched):
    text = f'name: p\nrepositories: {{include: ["**"]}}\ndelete: [{{tags: {patterns}}}]\n'
    p = make_plan(text, inv(man("m", *tags)))
    assert (deleted(p) == {"m"}) is matched


def test_referrer_tags_never_match_patterns():
    subject = man("img", "v1")
    sig = man("sig", days=400, subject="img",
              referrer_tags=(f"sha256-{dg('img').split(':')[1]}.sig",))
    text = 'name: p\nrepositories: {include: ["**"]}\ndelete: [{tags: ["sha256-*"]}]\n'
    p = make_plan(text, inv(subject, sig))
    assert deleted(p) == set()
    assert protected(p) == {}


# -- keep rules -------------------------------------------------------------------------------

KEEP_NEWEST = """
name: p
repositories: {include: ["**"]}
keep: [{newest: 3}]
delete: [{tags: ["*"]}]
"""


def test_newest_ranks_whole_repository_before_age():
    ms = [man(f"m{i}", f"t{i}", days=i + 1) for i in range(6)]
    p = make_plan(KEEP_NEWEST, inv(*ms))
    assert kept(p) == {"m0", "m1", "m2"}
    assert deleted(p) == {"m3", "m4", "m5"}


def test_newest_counts_manifests_not_tags():
    ms = [man("many-tags", "a", "b", "c", "d", days=1), man("m1", "e", days=2),
          man("m2", "f", days=3), man("m3", "g", days=4)]
    p = make_plan(KEEP_NEWEST, inv(*ms))
    assert kept(p) == {"many-tags", "m1", "m2"}
    assert deleted(p) == {"m3"}


def test_newest_ties_by_digest_and_unknown_times_rank_apart():
    # Dated and undated manifests are ranked apart (SPEC "Dated and undated in newest"): the
    # unknown one never takes a dated one's place, and the dated tie goes by digest.
    ms = [man("unknown", "u", days=None), man("a", "x", days=5), man("b", "y", days=5),
          man("c", "z", days=1), man("d", "w", days=9)]
    text = KEEP_NEWEST.replace("newest: 3", "newest: 2")
    p = make_plan(text, inv(*ms))
    tie_winner = min(("a", "b"), key=dg)
    assert kept(p) == {"unknown", "c", tie_winner}


def test_newest_with_tags_ranks_only_matching_manifests():
    text = """
name: p
repositories: {include: ["**"]}
keep: [{tags: ["release-*"], newest: 2}]
delete: [{tags: ["release-*", "pr-*"]}]
"""
    ms = [man("r1", "release-1", days=10), man("r2", "release-2", days=20),
          man("r3", "release-3", days=30), man("pr", "pr-1", days=1)]
    p = make_plan(text, inv(*ms))
    assert kept(p) == {"r1", "r2"}
    assert deleted(p) == {"r3", "pr"}


def test_newest_ignores_untagged_and_referrer_tags():
    ms = [man("orphan", days=0), man("a", "t1", days=1), man("b", "t2", days=2),
          man("c", "t3", days=3), man("d", "t4", days=4)]
    p = make_plan(KEEP_NEWEST, inv(*ms))
    assert kept(p) == {"a", "b", "c"}


def test_keep_conditions_are_anded_and_rules_ored():
    text = """
name: p
repositories: {include: ["**"]}
keep:
  - tags: ["v*"]
    younger_than: 30d
  - tags: ["stable"]
delete: [{tags: ["*"]}]
"""
    ms = [man("young-v", "v1", days=10), man("old-v", "v2", days=40),
          man("stable", "stable", days=400)]
    p = make_plan(text, inv(*ms))
    assert kept(p) == {"young-v", "stable"}
    assert deleted(p) == {"old-v"}


def test_younger_than_keeps_unknown_times():
    text = """
name: p
repositories: {include: ["**"]}
keep: [{younger_than: 7d}]
delete: [{tags: ["*"]}]
"""
    ms = [man("unknown", "a", days=None), man("old", "b", days=8), man("new", "c", days=6)]
    p = make_plan(text, inv(*ms))
    assert kept(p) == {"unknown", "new"}
    assert deleted(p) == {"old"}


# -- times ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("created", "pushed", "old"), [
    (NOW - timedelta(days=20), None, True),
    (None, None, False),
    (datetime(1970, 1, 1, tzinfo=UTC), None, False),
    (PLAUSIBLE_SINCE - timedelta(seconds=1), None, False),
    (NOW + timedelta(minutes=1), None, False),
    (NOW - timedelta(days=1), NOW - timedelta(days=20), True),  # push time wins
    (NOW - timedelta(days=20), NOW - timedelta(days=1), False),
])
def test_time_of_manifest(created, pushed, old):
    p = make_plan(SIMPLE, inv(man("m", "pr-1", days=None, created=created, pushed=pushed)))
    assert (deleted(p) == {"m"}) is old


def test_index_time_is_newest_child_and_unknown_child_makes_it_unknown():
    ms = [man("c-old", days=40), man("c-new", days=20), man("idx", "pr-1",
                                                          children=("c-old", "c-new"))]
    assert deleted(make_plan(SIMPLE, inv(*ms))) == {"idx", "c-old", "c-new"}
    ms = [man("c-old", days=40), man("c-unknown", days=None),
          man("idx", "pr-1", children=("c-old", "c-unknown"))]
    assert deleted(make_plan(SIMPLE, inv(*ms))) == set()
    ms = [man("c-new", days=2), man("idx", "pr-1", children=("c-new",))]
    assert deleted(make_plan(SIMPLE, inv(*ms))) == set()


def test_boundary_older_than_is_strict():
    p = make_plan(SIMPLE, inv(man("exact", "pr-1", days=14), man("over", "pr-2",
                                                                 days=14.0001)))
    assert deleted(p) == {"over"}


# -- untagged orphans ---------------------------------------------------------------------------

def test_untagged_matches_orphans_only():
    ms = [
        man("orphan", days=3),
        man("child", days=3),
        man("index", "keep-me", children=("child",)),
        man("subject", "v1", days=3),
        man("sbom", days=3, subject="subject"),
        man("dangling-sig", days=3, subject="gone-image"),
    ]
    p = make_plan(SIMPLE, inv(*ms))
    assert deleted(p) == {"orphan", "dangling-sig"}


def test_grace_protects_recently_untagged():
    ms = [man("seen-long-ago", days=30, untagged_days=3),
          man("just-untagged", days=30, untagged_days=0.1),
          man("never-seen", days=30, untagged_days=None)]
    p = make_plan(SIMPLE, inv(*ms), grace_hours=24)
    assert deleted(p) == {"seen-long-ago"}
    assert protected(p) == {"just-untagged": "grace", "never-seen": "grace"}


# -- protections ----------------------------------------------------------------------------------

def test_pinned_forms():
    hexpart = dg("a").split(":")[1]
    cases = {
        f"sha256:{hexpart}": True,
        f"ci/web@sha256:{hexpart}": True,
        f"other/repo@sha256:{hexpart}": False,
        f"registry.test:5000/ci/web@sha256:{hexpart}": True,
        f"docker-pullable://registry.test:5000/ci/web@sha256:{hexpart}": True,
        f"elsewhere.test/ci/web@sha256:{hexpart}": False,
    }
    for pin, protects in cases.items():
        p = make_plan(SIMPLE, inv(man("a", "pr-1", days=30)), pins=(pin,))
        assert (protected(p) == {"a": "pinned"}) is protects, pin
        assert (deleted(p) == set()) is protects, pin


def test_pinned_index_protects_children_and_referrers():
    ms = [man("c1", days=40), man("idx", "pr-1", children=("c1",)),
          man("sig", days=40, subject="idx", referrer_tags=("sha256-x.sig",))]
    p = make_plan(SIMPLE, inv(*ms), pins=(dg("idx"),))
    assert deleted(p) == set()
    assert protected(p) == {"idx": "pinned"}


def test_pinned_child_survives_deleted_index():
    ms = [man("c1", days=40), man("c2", days=40), man("idx", "pr-1", children=("c1", "c2"))]
    p = make_plan(SIMPLE, inv(*ms), pins=(dg("c1"),))
    assert deleted(p) == {"idx", "c2"}


@pytest.mark.parametrize(("manifest", "reason"), [
    (man("m", "pr-1", locked=True), "locked"),
    (man("m", "pr-1", parsed=False), "unknown-media-type"),
])
def test_intrinsic_protections(manifest, reason):
    p = make_plan(SIMPLE, inv(manifest))
    assert deleted(p) == set()
    assert protected(p) == {"m": reason}


def test_unparsed_manifest_in_repo_protects_every_other_manifest():
    """What it references is unknown: a tagged manifest may be its child as much as an
    untagged one (SPEC, unparsed-parent)."""
    ms = [man("blob", "weird", parsed=False), man("orphan", days=30),
          man("tagged", "pr-1", days=30)]
    p = make_plan(SIMPLE, inv(*ms))
    assert deleted(p) == set()
    assert protected(p) == {"orphan": "unparsed-parent", "tagged": "unparsed-parent"}
    (why,) = {d.detail for pp in p.policies for d in pp.protected
              if d.reason == "unparsed-parent"}
    assert why.startswith(dg("blob")[:19])


def test_schema1_manifest_protects_only_itself():
    """A schema 1 manifest references layers only, never another manifest."""
    ms = [replace(man("old", "pr-0", parsed=False), schema1=True), man("orphan", days=30),
          man("tagged", "pr-1", days=30)]
    p = make_plan(SIMPLE, inv(*ms))
    assert deleted(p) == {"orphan", "tagged"}
    assert protected(p) == {"old": "unknown-media-type"}


def test_tagged_child_of_surviving_index_is_protected():
    ms = [man("child", "pr-1", days=30), man("index", "release", children=("child",))]
    p = make_plan(SIMPLE, inv(*ms))
    assert deleted(p) == set()
    assert protected(p) == {"child": "index-child"}


def test_tagged_referrer_of_surviving_subject_is_protected():
    ms = [man("img", "v1"), man("sbom", "pr-1", days=30, subject="img")]
    p = make_plan(SIMPLE, inv(*ms))
    assert protected(p) == {"sbom": "referrer"}


def test_locked_child_blocks_nothing_but_itself():
    ms = [man("c1", days=40, locked=True), man("idx", "pr-1", children=("c1",))]
    p = make_plan(SIMPLE, inv(*ms))
    assert deleted(p) == {"idx"}


# -- cascades ---------------------------------------------------------------------------------

def test_cascade_skips_children_shared_with_surviving_index():
    ms = [man("shared", days=40), man("own", days=40),
          man("old-idx", "pr-1", children=("shared", "own")),
          man("new-idx", "v2", children=("shared",))]
    p = make_plan(SIMPLE, inv(*ms))
    assert deleted(p) == {"old-idx", "own"}


def test_cascade_to_referrers_and_order():
    hexpart = dg("img").split(":")[1]
    ms = [
        man("img", "pr-1", days=40),
        man("sig", days=40, subject="img", referrer_tags=(f"sha256-{hexpart}.sig",)),
        man("sbom", days=1, subject="img"),
        man("fallback", children=("sbom",), subject="img",
            referrer_tags=(f"sha256-{hexpart}",)),
        man("sig-of-sbom", days=1, subject="sbom"),
    ]
    p = make_plan(SIMPLE, inv(*ms))
    assert deleted(p) == {"img", "sig", "sbom", "fallback", "sig-of-sbom"}
    order = [name_of(a.digest) for a in p.actions]
    assert order[0] == "img"
    assert order.index("fallback") < order.index("sbom")
    assert order.index("sbom") < order.index("sig-of-sbom")
    for a in p.actions[1:]:
        assert a.cascade_of is not None
        assert order.index(name_of(a.cascade_of)) < order.index(name_of(a.digest))


def test_cascade_never_deletes_a_tagged_child():
    ms = [man("c", "v1.0", days=40), man("idx", "pr-1", children=("c",))]
    p = make_plan(SIMPLE, inv(*ms))
    assert deleted(p) == {"idx"}


def test_cascade_respects_keep_rules():
    text = SIMPLE + "keep: [{younger_than: 7d}]\n"
    ms = [man("c-old", days=40), man("idx", "pr-1", children=("c-old",)),
          man("sig", days=1, subject="idx")]
    p = make_plan(text, inv(*ms))
    assert deleted(p) == {"idx", "c-old"}  # the young signature is kept, dangling


def test_nested_index_children_protected_while_outer_survives():
    ms = [man("leaf", days=40), man("inner", "pr-1", children=("leaf",)),
          man("outer", "v1", children=("inner",))]
    p = make_plan(SIMPLE, inv(*ms))
    assert deleted(p) == set()
    assert protected(p) == {"inner": "index-child"}


# -- max_deletions, errors, bytes ------------------------------------------------------------

def test_max_deletions_aborts_the_whole_policy():
    ms = [man(f"m{i}", f"pr-{i}", days=40) for i in range(5)]
    p = make_plan(SIMPLE, inv(*ms), max_deletions=4)
    (pp,) = p.policies
    assert pp.aborted and "5 deletions planned, the limit is 4" in pp.aborted
    assert deleted(p) == set()
    assert p.reclaimable_bytes == 0
    assert deleted(make_plan(SIMPLE, inv(*ms), max_deletions=5)) == {f"m{i}" for i in range(5)}


def test_policy_max_deletions_overrides_config():
    ms = [man(f"m{i}", f"pr-{i}", days=40) for i in range(3)]
    p = make_plan(SIMPLE + "max_deletions: 2\n", inv(*ms), max_deletions=1000)
    assert p.policies[0].aborted


def test_failed_repository_deletes_nothing():
    p = make_plan(SIMPLE, inv(man("m", "pr-1", days=40), error="GET tags: HTTP 500"))
    assert deleted(p) == set()
    assert p.policies[0].errors[0].message == "GET tags: HTTP 500"


def test_repositories_include_exclude():
    text = """
name: p
repositories: {include: ["ci/**"], exclude: ["ci/base"]}
delete: [{tags: ["*"]}]
"""
    other = Repository("ci/base", (man("base", "x"),))
    outside = Repository("app", (man("app", "x"),))
    deep = Repository("ci/a/b", (man("deep", "x"),))
    p = make_plan(text, inv(man("web", "x"), more=(other, outside, deep)))
    assert deleted(p) == {"web", "deep"}


def test_bytes_count_only_blobs_no_survivor_references():
    shared = ("shared-layer", 5000)
    ms = [
        man("gone1", "pr-1", days=40, layers=(shared, ("own1", 300))),
        man("gone2", "pr-2", days=40, layers=(shared, ("own2", 200))),
        man("stays", "v1", days=40, layers=(("own-stays", 7),)),
    ]
    p = make_plan(SIMPLE, inv(*ms))
    # each manifest body is 100 bytes; the shared layer is counted once
    assert p.reclaimable_bytes == 100 + 300 + 100 + 200 + 5000
    assert sum(a.bytes for a in p.actions) == p.reclaimable_bytes
    ms[2] = man("stays", "v1", days=40, layers=(shared,))
    p = make_plan(SIMPLE, inv(*ms))
    assert p.reclaimable_bytes == 100 + 300 + 100 + 200


def test_bytes_consider_other_repositories():
    shared = ("layer", 5000)
    other = Repository("other/app", (man("elsewhere", "v1", layers=(shared,)),))
    p = make_plan(SIMPLE, inv(man("gone", "pr-1", days=40, layers=(shared,)), more=(other,)))
    assert p.reclaimable_bytes == 100


def test_policies_run_alone_free_only_what_no_other_deletion_shares():
    """``only``: with one of two policies running, a layer its deletion shares with a
    deletion of the other (which does not run) stays; with both, it is freed once."""
    from retention.planner import only

    shared = ("layer", 5000)
    text = (SIMPLE.replace('include: ["**"]', 'include: ["ci/web"]') + "---\n" +
            SIMPLE.replace("name: p", "name: q").replace('include: ["**"]',
                                                         'include: ["other/app"]'))
    other = Repository("other/app", (man("theirs", "pr-2", days=40, layers=(shared,)),))
    whole = make_plan(text, inv(man("mine", "pr-1", days=40, layers=(shared,)), more=(other,)))
    inventories = {"main": inv(man("mine", "pr-1", days=40, layers=(shared,)), more=(other,))}
    assert whole.reclaimable_bytes == 100 + 100 + 5000
    assert only(whole, ["p", "q"], inventories).reclaimable_bytes == 100 + 100 + 5000
    assert only(whole, ["p"], inventories).reclaimable_bytes == 100
    assert only(whole, ["q"], inventories).reclaimable_bytes == 100


def test_overlapping_policies_delete_once():
    text = SIMPLE + "---\n" + SIMPLE.replace("name: p", "name: q")
    p = make_plan(text, inv(man("m", "pr-1", days=40)))
    assert len(p.actions) == 1
    assert p.reclaimable_bytes == 1100


def test_image_waits_while_its_child_or_signature_is_within_grace():
    ms = [man("child", days=40, untagged_days=0.1), man("idx", "pr-1", children=("child",)),
          man("img", "pr-2", days=40),
          man("sig", days=40, subject="img", untagged_days=None,
              referrer_tags=("sha256-x.sig",))]
    p = make_plan(SIMPLE, inv(*ms), grace_hours=24)
    assert deleted(p) == set()
    assert protected(p) == {"idx": "grace", "img": "grace"}
    # A day later, the whole image goes at once: nothing is left behind as an orphan.
    later = [man("child", days=40, untagged_days=2), man("idx", "pr-1", children=("child",)),
             man("img", "pr-2", days=40),
             man("sig", days=40, subject="img", untagged_days=2,
                 referrer_tags=("sha256-x.sig",))]
    p = make_plan(SIMPLE, inv(*later), grace_hours=24)
    assert deleted(p) == {"idx", "child", "img", "sig"}
