"""All policies of a run are settled together (SPEC, "Deletion is safe at the moment of
each DELETE"): what one keeps, protects or cannot delete survives for all of them."""

from __future__ import annotations

from tests.factories import deleted, dg, inv, kept, make_plan, man, protected

A = 'name: a\nrepositories: {include: ["**"]}\ndelete: [{tags: ["pr-*"]}]\n'
B = 'name: b\nrepositories: {include: ["**"]}\ndelete: [{tags: ["sbom-*", "sha-*"]}]\n'


def test_a_keep_rule_of_one_policy_keeps_for_every_policy():
    keeper = 'name: b\nrepositories: {include: ["**"]}\ndelete: [{untagged: true}]\n' \
             'keep: [{tags: ["pr-1"]}]\n'
    p = make_plan(A + "---\n" + keeper, inv(man("m", "pr-1", days=40), man("n", "pr-2")))
    assert deleted(p) == {"n"}
    (decision,) = [d for pp in p.policies for d in pp.kept]
    assert decision.policy == "a" and decision.detail.startswith("policy b: keep rule 1")


def test_referrer_goes_with_a_subject_another_policy_deletes():
    ms = [man("img", "pr-1", days=40), man("sbom", "sbom-1", days=40, subject="img")]
    p = make_plan(A + "---\n" + B, inv(*ms))
    assert deleted(p) == {"img", "sbom"}
    by_policy = {a.digest: a.policy for a in p.actions}
    assert by_policy == {dg("img"): "a", dg("sbom"): "b"}
    (sbom,) = [a for a in p.actions if a.digest == dg("sbom")]
    assert sbom.parents == (dg("img"),)


def test_an_aborted_policy_holds_back_the_children_of_what_it_would_delete():
    ms = [man("child", "sha-1", days=40), man("idx", "pr-1", children=("child",)),
          man("other", "pr-2", days=40)]
    p = make_plan(A + "max_deletions: 1\n---\n" + B, inv(*ms))
    (a, b) = p.policies
    assert a.aborted and len(a.actions) == 2  # listed, as they would have been deleted
    assert b.actions == ()
    assert protected(p) == {"child": "index-child"}
    assert deleted(p) == set()


def test_a_digest_matched_by_two_policies_is_deleted_once_by_the_first():
    both = A + "---\n" + A.replace("name: a", "name: b")
    p = make_plan(both, inv(man("m", "pr-1", days=40)))
    assert [(a.policy, a.digest) for a in p.actions] == [("a", dg("m"))]


def test_a_protection_reported_for_every_policy_that_matched():
    both = A + "---\n" + A.replace("name: a", "name: b")
    p = make_plan(both, inv(man("m", "pr-1", days=40, locked=True)))
    assert sorted((d.policy, d.reason) for pp in p.policies for d in pp.protected) == \
        [("a", "locked"), ("b", "locked")]
    assert kept(p) == set()


def test_fallback_index_referrers_come_after_both_their_parents():
    """An OCI referrer listed in the sha256-<hex> fallback index has two parents there:
    the index and its subject. It is deleted after both."""
    ms = [man("img", "pr-1", days=40),
          man("ref", days=40, subject="img"),
          man("fallback", days=None, children=("ref",), subject="img",
              referrer_tags=("sha256-" + "0" * 64,))]
    p = make_plan(A, inv(*ms))
    order = [a.digest for a in p.actions]
    assert order.index(dg("ref")) > order.index(dg("fallback")) > order.index(dg("img"))
    (ref,) = [a for a in p.actions if a.digest == dg("ref")]
    assert set(ref.parents) == {dg("img"), dg("fallback")}
