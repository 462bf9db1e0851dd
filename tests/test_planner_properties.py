"""Property-based tests: the planner's safety invariants over random inventories, policies
and allowlists. Each invariant is checked against a small reference computation here, not
against the planner's own helpers."""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from retention.allowlist import Allowlist, Pin
from retention.inventory import Blob, Inventory, Manifest, Repository
from retention.patterns import compile_pattern
from retention.planner import Options, _count_bytes, only, plan
from retention.policy import policies_from_text
from retention.report import to_json
from tests.factories import NOW, dg

TAGS = ["pr-1", "pr-2", "sha-a", "sha-b", "v1.0", "latest", "release-1", "release-2", "main"]
PATTERNS = ["pr-*", "sha-*", "v*", "release-*", "latest", "*", "re:pr-[0-9]+", "{pr,sha}-?"]
DURATIONS = ["0s", "1h", "1d", "7d", "14d", "30d"]
TIMES = [None, "1970", "future", *range(0, 120, 3)]
SEEN = [None, 0, 0.5, 3, 10, 40]  # days since retention first saw it; None: this very run
GRACE = timedelta(hours=24)
OCI = "application/vnd.oci.image.manifest.v1+json"
# 300 examples per property in CI; RETENTION_PROPERTY_EXAMPLES=5000 for a deeper search.
PROPERTY = settings(max_examples=int(os.environ.get("RETENTION_PROPERTY_EXAMPLES", "300")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _time(draw, when) -> datetime | None:
    return (None if when is None else
            datetime(1970, 1, 1, tzinfo=UTC) if when == "1970" else
            NOW + timedelta(days=2) if when == "future" else
            NOW - timedelta(days=when, hours=draw(st.integers(0, 23))))


def _seen(days) -> datetime | None:
    return None if days is None else NOW - timedelta(days=days)


# A pool of layers shared by every manifest of both repositories: deleting one image frees
# only the layers no surviving manifest (in any repository) still references.
LAYERS = [(dg(f"layer-{i}"), 1000 * (i + 1)) for i in range(8)]
# Manifests retention cannot parse, and whose references it does not know (any type but a
# schema 1 manifest with readable layers): the layers they really hold, which the collector
# marks but the inventory does not show (blobs empty). Filled by each scenario drawn.
HIDDEN: dict[str, tuple[Blob, ...]] = {}


@st.composite
def repositories(draw, name: str, other: str) -> Repository:
    n = draw(st.integers(2, 10))
    names = [f"{name}-m{i}" for i in range(n)]
    # Most tags land on some manifest, several per manifest now and then.
    owners = {t: draw(st.sampled_from([None, *range(n), *range(n)])) for t in TAGS}
    manifests = []
    for i, mname in enumerate(names):
        tags = tuple(sorted(t for t, o in owners.items() if o == i))
        is_index = i > 0 and draw(st.booleans())
        children = tuple(dg(names[j]) for j in
                         draw(st.sets(st.integers(0, i - 1), min_size=1, max_size=3))
                         ) if is_index else ()
        if is_index and draw(st.integers(0, 3)) == 0:
            # Listed, never pushed here (or gone); sometimes the digest of a manifest of the
            # other repository, which the garbage collector then keeps for this index.
            missing = draw(st.sampled_from([f"{mname}-missing-child", f"{other}-m0",
                                            f"{other}-m1"]))
            children += (dg(missing),)
        subject = None
        if draw(st.integers(0, 3)) == 0:
            subject = dg(draw(st.sampled_from([*names, "missing"])))
            if subject == dg(mname):
                subject = None
        when = draw(st.sampled_from(TIMES))
        created = _time(draw, when)
        untagged = draw(st.sampled_from([None, 0, 0.5, 2, 30, 30, 30]))
        seen = draw(st.sampled_from(SEEN))
        attestations: tuple[str, ...] = ()
        if is_index and draw(st.booleans()):
            # A BuildKit attestation: untagged, undated, referenced by this index only.
            att = Manifest(digest=dg(f"{mname}-att"), media_type=OCI, size=10,
                           blobs=(Blob(*LAYERS[draw(st.integers(0, 7))]),),
                           first_seen=_seen(draw(st.sampled_from(SEEN))),
                           untagged_since=NOW - timedelta(days=30))
            manifests.append(att)
            attestations = (att.digest,)
        layers = () if is_index else tuple(
            Blob(*LAYERS[j]) for j in draw(st.sets(st.integers(0, 7), min_size=1, max_size=3)))
        # Unparsed now and then: a schema 1 manifest, whose layers retention reads (their
        # sizes unknown: 0), or one whose references are unknown (its layers hidden).
        parsed = draw(st.integers(0, 19)) != 0
        if not parsed:
            held = layers or tuple(Blob(*LAYERS[j]) for j in
                                   draw(st.sets(st.integers(0, 7), min_size=1, max_size=3)))
            if draw(st.booleans()):
                HIDDEN[dg(mname)], layers = held, ()
            else:
                layers = tuple(Blob(b.digest, 0) for b in held)
        manifests.append(Manifest(
            digest=dg(mname), media_type=OCI,
            size=100 + i, tags=tags, created=None if is_index else created,
            blobs=layers, children=children + attestations, subject=subject,
            locked=draw(st.integers(0, 19)) == 0, parsed=parsed,
            untagged_since=None if untagged is None else NOW - timedelta(days=untagged),
            attestations=attestations, first_seen=_seen(seen),
            annotated=_time(draw, draw(st.sampled_from(TIMES))) if draw(st.booleans())
            else None,
        ))
    return Repository(name, tuple(manifests))


INCLUDES = [["**"], ["ci/**"], ["ci/a"], ["ci/b"]]


@st.composite
def policy_specs(draw, name: str) -> dict:
    keep_lines, delete_lines = [], []
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        rule = {}
        if draw(st.booleans()):
            rule["tags"] = draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2))
        if draw(st.booleans()):
            rule["newest"] = draw(st.integers(0, 4))
        if draw(st.booleans()) or not rule:
            rule["younger_than"] = draw(st.sampled_from(DURATIONS))
        keep_lines.append(rule)
    for _ in range(draw(st.integers(1, 3))):
        rule = ({"untagged": True} if draw(st.booleans()) else
                {"tags": draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3))})
        if draw(st.booleans()):
            rule["older_than"] = draw(st.sampled_from(DURATIONS))
        delete_lines.append(rule)
    if draw(st.integers(0, 3)) != 0:  # a broad rule, so that most examples delete something
        delete_lines.append(draw(st.sampled_from([{"tags": ["*"]}, {"untagged": True},
                                                  {"tags": ["*"], "older_than": "7d"}])))
    return {"name": name, "repositories": {"include": draw(st.sampled_from(INCLUDES))},
            "keep": keep_lines, "delete": delete_lines}


@st.composite
def scenarios(draw):
    """(inventory, policy text, policies as dicts, allowlist): one to three policies,
    overlapping or not, over two repositories that share layers."""
    HIDDEN.clear()
    repos = (draw(repositories("ci/a", "ci/b")), draw(repositories("ci/b", "ci/a")))
    inventory = Inventory("main", "reg.test", repos, NOW)
    specs = [draw(policy_specs(f"p{i}")) for i in range(draw(st.sampled_from([1, 1, 2, 3])))]
    text = "\n---\n".join(json.dumps(spec) for spec in specs)
    all_digests = sorted(m.digest for r in repos for m in r.manifests)
    pins = draw(st.sets(st.sampled_from(all_digests), max_size=2))
    return inventory, text, specs, Allowlist.of(Pin(d) for d in pins)


def covering(specs: list[dict], repository: str) -> list[dict]:
    """The policies whose include patterns select ``repository``."""
    return [s for s in specs
            if matches_any(s["repositories"]["include"], repository)]


def describe(inventory: Inventory, specs: list[dict], p) -> None:
    """What this example exercises (pytest --hypothesis-show-statistics shows the shares)."""
    event("policies: " + str(len(specs)))
    event("deletions: " + ("none" if not p.actions else "some"))
    # Steer the search towards plans that delete much and cascade.
    target(float(len(p.actions)), label="deletions")
    target(float(sum(a.cascade_of is not None for a in p.actions)), label="cascades")
    if any(a.cascade_of is not None for a in p.actions):
        event("a cascade")
    gone = {(a.repository, a.digest) for a in p.actions}
    counts: dict[str, int] = {}
    for r in inventory.repositories:
        for m in r.manifests:
            for b in m.blobs:
                counts[b.digest] = counts.get(b.digest, 0) + 1
    shared_kept = any(counts[b.digest] > 1 and (r.name, m.digest) in gone
                      for r in inventory.repositories for m in r.manifests for b in m.blobs
                      if any(b in o.blobs and (rr.name, o.digest) not in gone
                             for rr in inventory.repositories for o in rr.manifests))
    if shared_kept:
        event("a deleted manifest shares a layer with a survivor")
    if any(c not in {x.digest for x in r.manifests}
           for r in inventory.repositories for m in r.manifests for c in m.children):
        event("an index with a missing child")


def run(inventory, text, allowlist):
    options = Options(untagged_grace=GRACE, allowlist=allowlist)
    return plan(inventory, policies_from_text(text, registries=["main"]), now=NOW,
                options=options)


# -- reference computations ------------------------------------------------------------------

def _usable(t: datetime | None) -> datetime | None:
    return t if t is not None and datetime(2000, 1, 1, tzinfo=UTC) <= t <= NOW else None


def ref_timed(repo: Repository, digest: str, seen=frozenset()) -> tuple[datetime | None, bool]:
    """(time, dated) as SPEC "Time of a manifest" says; (None, False) when unknown."""
    m = next((x for x in repo.manifests if x.digest == digest), None)
    if m is None or digest in seen:
        return None, False
    indexes = [x.digest for x in repo.manifests if digest in x.attestations]
    if indexes:  # an attestation is as old as its index
        times = [ref_timed(repo, i, seen | {digest}) for i in indexes]
        return (None, False) if any(t is None for t, _ in times) else max(times)
    if _usable(m.pushed):
        return m.pushed, True
    platform = [c for c in m.children if c not in m.attestations]
    times = [ref_timed(repo, c, seen | {digest}) for c in platform]
    if platform and all(dated for _, dated in times):
        return max(t for t, _ in times), True
    for t in (m.created, m.annotated):
        if _usable(t):
            return t, True
    return _usable(m.first_seen), False


def ref_time(repo: Repository, digest: str) -> datetime | None:
    return ref_timed(repo, digest)[0]


def ref_newest(repo: Repository, pool, n: int) -> list:
    """SPEC "Dated and undated in newest": the n newest dated and the n newest undated
    (unknown first), ties by digest."""
    def rank(m):
        t = ref_time(repo, m.digest)
        return (0, 0, m.digest) if t is None else (1, -t.timestamp(), m.digest)
    dated = sorted((m for m in pool if ref_timed(repo, m.digest)[1]), key=rank)
    undated = sorted((m for m in pool if not ref_timed(repo, m.digest)[1]), key=rank)
    return dated[:n] + undated[:n]


def matches_any(patterns, tag) -> bool:
    return any(compile_pattern(p).matches(tag) for p in patterns)


def ref_kept(repo: Repository, keep_lines) -> set[str]:
    out = set()
    for rule in keep_lines:
        chosen = list(repo.manifests)
        if "newest" in rule:
            pool = [m for m in chosen if m.tags and ("tags" not in rule or
                    any(matches_any(rule["tags"], t) for t in m.tags))]
            chosen = ref_newest(repo, pool, rule["newest"])
        elif "tags" in rule:
            chosen = [m for m in chosen if any(matches_any(rule["tags"], t) for t in m.tags)]
        if "younger_than" in rule:
            from retention.durations import parse_duration
            limit = parse_duration(rule["younger_than"])
            chosen = [m for m in chosen if (t := ref_time(repo, m.digest)) is None
                      or NOW - t < limit]
        out |= {m.digest for m in chosen}
    return out


def pinned_closure(repo: Repository, allowlist: Allowlist) -> set[str]:
    by = {m.digest: m for m in repo.manifests}
    pinned = {d for d in by if allowlist.pinned(d, repository=repo.name, host="reg.test")}
    changed = True
    while changed:
        changed = False
        for m in repo.manifests:
            linked = set(m.children) if m.digest in pinned else set()
            if m.subject in pinned and m.digest not in pinned:
                linked.add(m.digest)
            for d in linked:
                if d in by and d not in pinned:
                    pinned.add(d)
                    changed = True
    return pinned


# -- invariants -------------------------------------------------------------------------------

@PROPERTY
@given(scenarios())
def test_nothing_protected_is_ever_deleted(scenario):
    inventory, text, specs, allowlist = scenario
    p = run(inventory, text, allowlist)
    describe(inventory, specs, p)
    deleted = {(a.repository, a.digest) for a in p.actions}
    for repo in inventory.repositories:
        gone = {d for r, d in deleted if r == repo.name}
        pinned = pinned_closure(repo, allowlist)
        # Policies are settled together: what any policy keeps survives for all of them.
        kept = set().union(*(ref_kept(repo, s["keep"]) for s in covering(specs, repo.name)))
        by = {m.digest: m for m in repo.manifests}
        for digest in gone:
            m = by[digest]
            assert digest not in pinned, "pinned deleted"
            assert not m.locked, "locked deleted"
            assert m.parsed, "unparsed deleted"
            assert digest not in kept, "kept by a keep rule but deleted"
            if not m.tags:
                since = m.untagged_since or NOW
                assert NOW - since >= GRACE, "untagged within grace deleted"
        for m in repo.manifests:
            if m.digest in gone:
                continue
            assert not (set(m.children) & gone), "child of a surviving index deleted"
        for digest in gone:
            subject = by[digest].subject
            if subject in by:
                assert subject in gone, "referrer of a surviving subject deleted"


@PROPERTY
@given(scenarios())
def test_tag_outside_every_delete_pattern_is_never_deleted(scenario):
    inventory, text, specs, allowlist = scenario
    patterns = [p for s in specs for rule in s["delete"] for p in rule.get("tags", [])]
    p = run(inventory, text, allowlist)
    describe(inventory, specs, p)
    by = {(r.name, m.digest): m for r in inventory.repositories for m in r.manifests}
    for a in p.actions:
        for tag in by[(a.repository, a.digest)].tags:
            assert matches_any(patterns, tag), f"{tag} deleted but no delete rule names it"


@PROPERTY
@given(scenarios())
def test_unknown_time_never_leads_to_deletion_by_age(scenario):
    inventory, text, specs, allowlist = scenario
    p = run(inventory, text, allowlist)
    describe(inventory, specs, p)
    repos = {r.name: r for r in inventory.repositories}
    delete_lines = {s["name"]: s["delete"] for s in specs}
    for a in p.actions:
        if a.cascade_of is not None:
            continue
        number = int(a.reason.split()[2].rstrip(":"))
        if "older_than" in delete_lines[a.policy][number - 1]:
            assert ref_time(repos[a.repository], a.digest) is not None


@PROPERTY
@given(scenarios(), st.randoms(use_true_random=False))
def test_plan_does_not_depend_on_listing_order(scenario, rnd: random.Random):
    inventory, text, _specs, allowlist = scenario
    shuffled_repos = []
    for repo in inventory.repositories:
        manifests = list(repo.manifests)
        rnd.shuffle(manifests)
        shuffled_repos.append(Repository(repo.name, tuple(manifests)))
    rnd.shuffle(shuffled_repos)
    shuffled = Inventory("main", "reg.test", tuple(shuffled_repos), NOW)
    a = to_json(run(inventory, text, allowlist), mode="dry-run")
    b = to_json(run(shuffled, text, allowlist), mode="dry-run")
    assert a == b


def gc_frees(inventory: Inventory, gone: set[tuple[str, str]], *,
             bodies_only: bool = False) -> int:
    """A garbage collector's mark and sweep, written independently of the planner: mark
    every blob that a surviving manifest anywhere in the registry references (as
    distribution 2.8 does: its body, its config and layers, and the body of each child an
    index lists, whether or not that child is still in the index's repository), then sum
    the sizes of the unmarked blobs the deleted ones held (``bodies_only``: their manifest
    bodies only)."""
    marked: set[str] = set()
    for repo in inventory.repositories:
        for m in repo.manifests:
            if (repo.name, m.digest) not in gone:
                marked |= {m.digest, *(b.digest for b in m.blobs), *m.children}
                if not m.parsed and not m.blobs:  # what it holds, unknown to retention
                    marked |= {b.digest for b in HIDDEN.get(m.digest, ())}
    swept: dict[str, int] = {}
    for repo in inventory.repositories:
        for m in repo.manifests:
            if (repo.name, m.digest) in gone:
                swept[m.digest] = m.size
                swept.update((b.digest, b.size) for b in m.blobs)
    bodies = {d for r in inventory.repositories for m in r.manifests
              if (r.name, d := m.digest) in gone}
    return sum(size for digest, size in swept.items()
               if digest not in marked and (digest in bodies or not bodies_only))


@PROPERTY
@given(scenarios())
def test_cascades_follow_their_cause_and_bytes_are_what_a_gc_frees(scenario):
    inventory, text, specs, allowlist = scenario
    p = run(inventory, text, allowlist)
    describe(inventory, specs, p)
    seen: set[tuple[str, str]] = set()
    for a in p.actions:
        if a.cascade_of is not None:
            assert (a.repository, a.cascade_of) in seen, "cascade before its cause"
        seen.add((a.repository, a.digest))
    assert len(seen) == len(p.actions), "a manifest deleted twice"
    if any(not m.parsed and m.blobs for r in inventory.repositories for m in r.manifests):
        event("a schema 1 manifest (layers known) stays")
    if any(not m.parsed and not m.blobs and (r.name, m.digest) not in seen
           for r in inventory.repositories for m in r.manifests):
        # A manifest retention cannot parse, whose references it does not know, stays: the
        # blobs it holds are unknown to retention (here, not to the collector), so only
        # bodies are claimed.
        event("an unparsed manifest, references unknown, stays: bodies only")
        assert p.reclaimable_bytes == gc_frees(inventory, seen, bodies_only=True) \
            <= gc_frees(inventory, seen)
        # And the same registry with those references known (as a schema 1 manifest's
        # layers, sizes unknown): the same plan, exactly what the GC frees.
        inventory = replace(inventory, repositories=tuple(
            replace(r, manifests=tuple(
                replace(m, blobs=tuple(Blob(b.digest, 0) for b in HIDDEN.get(m.digest, ())))
                if not m.parsed and not m.blobs else m for m in r.manifests))
            for r in inventory.repositories))
        p = run(inventory, text, allowlist)
        assert {(a.repository, a.digest) for a in p.actions} == seen
    assert p.reclaimable_bytes == gc_frees(inventory, seen)
    by = {(r.name, m.digest): m for r in inventory.repositories for m in r.manifests}
    for a in p.actions:  # an action is credited only with blobs it references itself
        m = by[(a.repository, a.digest)]
        assert 0 <= a.bytes <= m.size + sum(b.size for b in m.blobs)


@given(scenarios(), st.data())
def test_the_policies_that_run_are_counted_as_if_only_they_ran(scenario, data):
    """``only`` keeps the planned bytes when every policy runs (they were counted with all
    of their deletions) and counts them again for a part: both as a fresh count says."""
    inventory, text, _, allowlist = scenario
    whole = run(inventory, text, allowlist)
    names = [p.policy for p in whole.policies]
    chosen = data.draw(st.lists(st.sampled_from(names), unique=True, min_size=1))
    event("every policy" if len(chosen) == len(names) else "some policies")
    part = only(whole, chosen, {"main": inventory})
    assert part.policies == _count_bytes(inventory, [p for p in whole.policies
                                                     if p.policy in chosen])


def test_an_index_keeps_the_body_of_a_child_gone_from_its_repository():
    """ci/b's m0 is deleted; ci/a's index lists the same digest, which is gone from ci/a:
    the garbage collector keeps the body for the index, and frees only the layer."""
    child = dg("ci/b-m0")
    index = Manifest(digest=dg("ci/a-m1"), media_type=OCI, size=150, tags=("latest",),
                     children=(child,), first_seen=NOW - timedelta(days=40))
    image = Manifest(digest=child, media_type=OCI, size=100, tags=("pr-1",),
                     created=NOW - timedelta(days=40), blobs=(Blob(*LAYERS[0]),),
                     first_seen=NOW - timedelta(days=40))
    inventory = Inventory("main", "reg.test", (Repository("ci/a", (index,)),
                                               Repository("ci/b", (image,))), NOW)
    policy = json.dumps({"name": "p", "repositories": {"include": ["**"]},
                         "delete": [{"tags": ["pr-*"]}]})
    p = run(inventory, policy, Allowlist.of([]))
    assert [(a.repository, a.digest) for a in p.actions] == [("ci/b", child)]
    assert p.reclaimable_bytes == gc_frees(inventory, {("ci/b", child)}) == LAYERS[0][1]


def acr_shaped(inventory: Inventory) -> Inventory:
    """The same registry as ACR reports it: push times instead of config times, an index
    pushed when its newest child was. Only dated manifests have a push time here: ACR's
    push time of an undated one is unknown to the reference."""
    repos = []
    for repo in inventory.repositories:
        manifests = []
        for m in repo.manifests:
            t, dated = ref_timed(repo, m.digest)
            t = t if dated else None
            manifests.append(Manifest(
                digest=m.digest, media_type=m.media_type, size=m.size, tags=m.tags,
                created=None, pushed=t, blobs=m.blobs, children=m.children,
                subject=m.subject, locked=m.locked, parsed=m.parsed,
                untagged_since=m.untagged_since, attestations=m.attestations,
                first_seen=m.first_seen))
        repos.append(Repository(repo.name, tuple(manifests)))
    return Inventory(inventory.registry, inventory.host, tuple(repos), NOW)


@PROPERTY
@given(scenarios())
def test_acr_shaped_inventory_plans_the_same(scenario):
    """The planner's scenario space, run on ACR-shaped inventories: same decisions."""
    inventory, text, _specs, allowlist = scenario
    oci = to_json(run(inventory, text, allowlist), mode="dry-run")
    acr = to_json(run(acr_shaped(inventory), text, allowlist), mode="dry-run")
    for doc in (oci, acr):  # the same times, from another source
        for entry in (*doc["actions"], *doc["protected"], *doc["kept"]):
            if entry["time_source"] != "first-seen":
                entry["time_source"] = "dated" if entry["time_source"] else None
    assert oci == acr


# -- times: first sight, attestations, dated and undated ---------------------------------------

def _plain(name: str, *, tags=(), created=None, first_seen=None, pushed=None) -> Manifest:
    return Manifest(digest=dg(name), media_type=OCI, size=10, tags=tags, created=created,
                    pushed=pushed, first_seen=first_seen,
                    untagged_since=None if tags else NOW - timedelta(days=400))


@PROPERTY
@given(st.lists(st.tuples(st.integers(0, 60 * 24), st.integers(0, 60 * 24),
                          st.booleans(), st.sampled_from([None, "1970"])),
                min_size=1, max_size=8),
       st.sampled_from(DURATIONS), st.booleans())
def test_first_seen_never_matches_older_than_before_the_push_would(items, older, untagged):
    """Timed by first sight (never before the push), a manifest is never older_than-deleted
    where its true push time would have kept it."""
    seen_images, true_images = [], []
    for i, (pushed_ago, seen_after, tagged, undated) in enumerate(items):
        pushed = NOW - timedelta(minutes=pushed_ago)
        first = min(NOW, pushed + timedelta(minutes=seen_after))
        tags = (f"pr-{i}",) if tagged else ()
        seen_images.append(_plain(f"m{i}", tags=tags, first_seen=first,
                                  created=datetime(1970, 1, 1, tzinfo=UTC) if undated else None))
        true_images.append(_plain(f"m{i}", tags=tags, created=pushed))
    rule = {"untagged": True} if untagged else {"tags": ["pr-*"]}
    text = json.dumps({"name": "p", "repositories": {"include": ["**"]},
                       "delete": [{**rule, "older_than": older}]})

    def gone(manifests):
        inventory = Inventory("main", "reg.test", (Repository("r", tuple(manifests)),), NOW)
        return {a.digest for a in run(inventory, text, Allowlist.of(())).actions}

    assert gone(seen_images) <= gone(true_images)


@PROPERTY
@given(st.lists(st.sampled_from(TIMES), min_size=1, max_size=3),
       st.lists(st.tuples(st.sampled_from(TIMES), st.sampled_from(SEEN),
                          st.sampled_from(TIMES)), min_size=1, max_size=3),
       st.sampled_from(SEEN), st.data())
def test_an_attestation_never_changes_its_index_time(platform, attestations, index_seen, data):
    """Whatever an attestation's own times, its index plans as if it were not there."""
    children = [_plain(f"p{i}", created=_time(data.draw, t)) for i, t in enumerate(platform)]
    atts = [_plain(f"a{i}", created=_time(data.draw, c), first_seen=_seen(s),
                   pushed=_time(data.draw, p)) for i, (c, s, p) in enumerate(attestations)]
    att_digests = tuple(a.digest for a in atts)

    def index(with_attestations: bool) -> Manifest:
        listed = tuple(c.digest for c in children) + (att_digests if with_attestations else ())
        return Manifest(digest=dg("idx"), media_type=OCI, size=10, tags=("build-1",),
                        children=listed, first_seen=_seen(index_seen),
                        attestations=att_digests if with_attestations else ())

    results = []
    for with_attestations in (True, False):
        manifests = (*children, *atts, index(with_attestations))
        inventory = Inventory("main", "reg.test", (Repository("r", manifests),), NOW)
        decided = []
        for older in DURATIONS:
            text = json.dumps({"name": "p", "repositories": {"include": ["**"]},
                               "delete": [{"tags": ["build-*"], "older_than": older}]})
            p = run(inventory, text, Allowlist.of(()))
            decided.append(any(a.digest == dg("idx") for a in p.actions)
                           or any(d.digest == dg("idx") for d in p.policies[0].protected))
        results.append(decided)
    assert results[0] == results[1]


@st.composite
def ranked_repositories(draw):
    """Tagged manifests, each dated (a plausible config time) or undated (none, or 1970)
    with a first sight (or none: this very run)."""
    manifests = []
    for i in range(draw(st.integers(1, 9))):
        dated = draw(st.booleans())
        created = (_time(draw, draw(st.integers(0, 60))) if dated
                   else draw(st.sampled_from([None, datetime(1970, 1, 1, tzinfo=UTC)])))
        manifests.append(_plain(f"r{i}", tags=(f"t{i}",), created=created,
                                first_seen=_seen(draw(st.sampled_from(SEEN)))))
    return Repository("r", tuple(manifests))


def _newest_kept(repo: Repository, n: int) -> set[str]:
    text = json.dumps({"name": "p", "repositories": {"include": ["**"]},
                       "keep": [{"newest": n}], "delete": [{"tags": ["*"]}]})
    inventory = Inventory("main", "reg.test", (repo,), NOW)
    return {d.digest for d in run(inventory, text, Allowlist.of(())).policies[0].kept}


@PROPERTY
@given(ranked_repositories(), st.integers(0, 4))
def test_newest_keeps_n_dated_and_n_most_recently_seen_undated(repo, n):
    expected = {m.digest for m in ref_newest(repo, list(repo.manifests), n)}
    assert _newest_kept(repo, n) == expected
    dated = [m for m in repo.manifests if ref_timed(repo, m.digest)[1]]
    assert len(expected & {m.digest for m in dated}) == min(n, len(dated))


@PROPERTY
@given(ranked_repositories(), st.integers(0, 4))
def test_an_undated_manifest_never_lowers_a_dated_ones_rank(repo, n):
    dated = Repository("r", tuple(m for m in repo.manifests if ref_timed(repo, m.digest)[1]))
    digests = {m.digest for m in dated.manifests}
    assert _newest_kept(repo, n) & digests == _newest_kept(dated, n)
