"""The planner: inventory + policies + now -> plan. Pure: no I/O, no clock, no randomness.

For each policy and each repository it applies to, every manifest is tested against the
delete rules; a match is kept when a keep rule also matches, saved when a protection applies,
and otherwise deleted, pulling its children and referrers along (cascades). Protections that
depend on what survives (``index-child``, ``referrer``) are settled by a fixed point, so a
deletion can never leave a surviving index without its child or a surviving image without
its signature.

Settlement is here; when a manifest was made is read in ``manifest_times``, which manifests a
rule matches (and how `newest` ranks them) in ``ranking``.
"""

from __future__ import annotations

import gc
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, TypeVar

from retention.accounting import freed_bytes
from retention.allowlist import Allowlist
from retention.durations import format_duration
from retention.inventory import Inventory, Manifest
from retention.manifest_times import ManifestTime, RepoView
from retention.patterns import PatternSet
from retention.policy import KeepRule, Policy
from retention.ranking import TagSets, _rank_key, delete_matches, keep_matches, rank_tagged

PINNED = "pinned"
IN_USE = "in-use"
LOCKED = "locked"
INDEX_CHILD = "index-child"
REFERRER = "referrer"
GRACE = "grace"
CHANGED = "changed"
UNKNOWN_MEDIA_TYPE = "unknown-media-type"
UNPARSED_PARENT = "unparsed-parent"
RESTORED = "restored"
LAST_TAGGED_VERSION = "last-tagged-version"
PROTECTION_REASONS = (PINNED, IN_USE, LOCKED, INDEX_CHILD, REFERRER, GRACE, CHANGED,
                      UNKNOWN_MEDIA_TYPE, UNPARSED_PARENT, RESTORED, LAST_TAGGED_VERSION)


@dataclass(frozen=True, slots=True)
class Action:
    """One manifest to delete, and why."""

    policy: str
    registry: str
    repository: str
    digest: str
    tags: tuple[str, ...]  # every tag the deletion removes, referrer tags included
    media_type: str
    reason: str
    cascade_of: str | None = None
    bytes: int = 0  # bytes freed by this deletion that no earlier action already counted
    time: ManifestTime | None = None  # the manifest's effective time; None: unknown
    # Every manifest of the repository that references this one (indexes listing it as a
    # child, its subject): the executor deletes it only after all of them are gone.
    parents: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """A manifest a delete rule matched that is not deleted: kept by a rule or protected."""

    policy: str
    registry: str
    repository: str
    digest: str
    tags: tuple[str, ...]
    reason: str  # a protection name, or "keep" for a keep rule
    detail: str  # the sentence a person reads
    matched: str  # the delete rule that matched
    time: ManifestTime | None = None  # None: unknown


@dataclass(frozen=True, slots=True)
class RepositoryError:
    policy: str
    registry: str
    repository: str
    message: str


@dataclass(frozen=True, slots=True)
class PolicyPlan:
    policy: str
    registry: str
    actions: tuple[Action, ...]
    protected: tuple[Decision, ...]
    kept: tuple[Decision, ...]
    errors: tuple[RepositoryError, ...] = ()
    # Set when the policy would delete more than max_deletions: then it deletes nothing.
    aborted: str | None = None
    # Repositories this plan deletes every manifest of, for delete_empty_repositories.
    emptied: tuple[str, ...] = ()

    @property
    def reclaimable_bytes(self) -> int:
        return 0 if self.aborted else sum(a.bytes for a in self.actions)


@dataclass(frozen=True, slots=True)
class Plan:
    now: datetime
    policies: tuple[PolicyPlan, ...] = ()

    @property
    def actions(self) -> tuple[Action, ...]:
        return tuple(a for p in self.policies for a in p.actions)

    @property
    def reclaimable_bytes(self) -> int:
        return sum(p.reclaimable_bytes for p in self.policies)


@dataclass(frozen=True, slots=True)
class Options:
    untagged_grace: timedelta = timedelta(hours=24)
    max_deletions: int = 1000
    allowlist: Allowlist = field(default_factory=lambda: Allowlist.of(()))
    # (registry, repository) -> {digest: why}: what Kubernetes runs (retention.inuse).
    in_use: Mapping[tuple[str, str], Mapping[str, str]] = field(default_factory=dict)
    # (registry, repository, digest) put back by `retention restore` -> when its hold ends
    # (restored_hold after the restore): protected until then, whatever plans come between.
    restored: Mapping[tuple[str, str, str], datetime] = field(default_factory=dict)


def plan(
    inventory: Inventory,
    policies: Sequence[Policy],
    *,
    now: datetime,
    options: Options | None = None,
) -> Plan:
    """Decide, for every manifest some policy's delete rule matches, whether it goes.

    All policies of a registry are settled together: what one policy keeps, protects or
    cannot delete survives for every other policy too, with its children and referrers.
    """
    # Planning builds up to millions of long-lived objects (views, times, deletions) beside
    # the inventory it reads, and makes next to no reference cycles. The cyclic garbage
    # collector walked all of them again at every full collection, finding nothing to free:
    # 5-6 s of 31 s for a million manifests (bench/plan_benchmark.py). It is paused while
    # planning; reference counting frees as usual, and any cycle is collected after.
    with _GC_PAUSE:
        return _plan(inventory, policies, now=now, options=options or Options())


class _GcPause:
    """The collector paused from the first plan() running, in any thread, to the last.

    Checking whether it runs and pausing it is one step under a lock: two threads each
    checking, then pausing, could otherwise see it paused by the other and never resume it.
    """

    __slots__ = ("_lock", "_resume", "_running")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0  # plan() calls now planning
        self._resume = False  # the collector ran before the first of them paused it

    def __enter__(self) -> None:
        with self._lock:
            if self._running == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._running += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0 and self._resume:
                gc.enable()


_GC_PAUSE = _GcPause()


def _plan(inventory: Inventory, policies: Sequence[Policy], *, now: datetime,
          options: Options) -> Plan:
    ordered = sorted(policies, key=lambda p: p.name)
    # Rules are described once, not once per manifest they decide.
    describe = {rule: rule.describe() for p in ordered for rule in (*p.keep, *p.delete)}
    # And each rule's tag patterns judge each distinct tag set once (see TagSets).
    tag_sets = {rule.tags: TagSets(rule.tags) for p in ordered
                for rule in (*p.keep, *p.delete) if rule.tags is not None}
    errors: dict[str, list[RepositoryError]] = defaultdict(list)
    settled: list[_Deciding] = []
    for repo in sorted(inventory.repositories, key=lambda r: r.name):
        applying = [p for p in ordered if p.applies_to(repo.name)]
        if not applying:
            continue
        if repo.error is not None:
            for p in applying:
                errors[p.name].append(
                    RepositoryError(p.name, inventory.registry, repo.name, repo.error))
            continue
        view = RepoView.of(repo, now)  # built once, shared by every policy
        deciding = _Deciding.start(inventory, applying, view, now=now, options=options,
                                   describe=describe, tag_sets=tag_sets)
        if deciding is not None:
            settled.append(deciding)

    # max_deletions counts a policy's deletions across the registry. An aborted policy
    # deletes nothing, so what it would have deleted survives for every other policy: settle
    # once more with it held back (that only ever removes deletions).
    planned = [d.deletions() for d in settled]
    counts: dict[str, int] = defaultdict(int)
    for deletions in planned:
        for x in deletions:
            counts[x.policy] += 1
    aborted: dict[str, str] = {}
    for p in ordered:
        limit = p.max_deletions if p.max_deletions is not None else options.max_deletions
        if counts[p.name] > limit:
            aborted[p.name] = (
                f"max_deletions exceeded: {counts[p.name]} deletions planned, the limit is "
                f"{limit}; nothing is deleted (raise max_deletions if this is intended)")
    if aborted:
        for deciding in settled:
            deciding.hold_back(aborted)

    parts = {p.name: _Parts() for p in ordered}
    for deciding, first in zip(settled, planned, strict=True):
        # Held back or not, the deletions are those of the last settling; without an abort
        # nothing changed since they were first listed.
        last = deciding.deletions() if aborted else first
        for p in deciding.policies:
            part = parts[p.name]
            mine = [x for x in last if x.policy == p.name]
            if p.name in aborted:  # listed as they were planned, to say what was held back
                mine = [x for x in first if x.policy == p.name] + mine
            if mine:
                part.deletions.append((deciding, mine))
            part.protected.extend(d for d in deciding.protected_decisions() if d.policy == p.name)
            part.kept.extend(d for d in deciding.kept if d.policy == p.name)
            repo = deciding.view.repo
            if (p.delete_empty_repositories and p.name not in aborted and repo.manifests
                    and all(deciding.doomed_by.get(m.digest) == p.name
                            for m in repo.manifests)):
                part.emptied.append(repo.name)
    # Bytes are counted before the actions are made, so each Action is built once, with
    # its bytes (as _count_bytes would count them: an aborted policy frees nothing).
    freed = freed_bytes(inventory, gone=[
        (deciding.view.repo.name, x.digest)
        for p in ordered if p.name not in aborted
        for deciding, deletions in parts[p.name].deletions for x in deletions])
    plans = tuple(
        PolicyPlan(p.name, inventory.registry,
                   tuple(deciding.action(x, 0 if p.name in aborted
                                         else freed[(deciding.view.repo.name, x.digest)])
                         for deciding, deletions in parts[p.name].deletions
                         for x in deletions),
                   tuple(parts[p.name].protected), tuple(parts[p.name].kept),
                   tuple(errors[p.name]), aborted.get(p.name), tuple(parts[p.name].emptied))
        for p in ordered)
    return Plan(now=now, policies=plans)


@dataclass(slots=True)
class _Parts:
    # Per repository, in order: its deletions by this policy
    deletions: list[tuple[_Deciding, list[_Deletion]]] = field(default_factory=list)
    protected: list[Decision] = field(default_factory=list)
    kept: list[Decision] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)


def _pinned_closure(inventory: Inventory, view: RepoView, allowlist: Allowlist) -> set[str]:
    """Pinned digests, with the children and referrers of each, transitively."""
    pinned = {
        d for d in view.by_digest
        if allowlist.pinned(d, repository=view.repo.name, host=inventory.host)
    }
    stack = list(pinned)
    while stack:
        digest = stack.pop()
        m = view.by_digest.get(digest)
        linked = list(m.children if m else ()) + view.referrers.get(digest, [])
        for other in linked:
            if other in view.by_digest and other not in pinned:
                pinned.add(other)
                stack.append(other)
    return pinned


def _intrinsic_protection(
    m: Manifest, view: RepoView, pinned: set[str], now: datetime, options: Options,
    *, registry: str = "",
) -> tuple[str, str] | None:
    """A protection that holds whatever else is deleted: (reason, sentence) or None."""
    if m.digest in pinned:
        return PINNED, "pinned by the allowlist (or the child or referrer of a pinned digest)"
    if (used := options.in_use.get((registry, view.repo.name), {}).get(m.digest)) is not None:
        return IN_USE, used
    if m.locked:
        return LOCKED, "the registry marks it as not deletable"
    if not m.parsed:
        return UNKNOWN_MEDIA_TYPE, f"cannot parse manifest of type {m.media_type!r}"
    if view.unparsed is not None:
        # What the registry reads that manifest to reference is unknown: any other one in
        # the repository, tagged or not, may be its child or its subject.
        return UNPARSED_PARENT, (f"{_short(view.unparsed)} in this repository cannot be read "
                                 "completely, so whether this one is its child or subject "
                                 "is unknown")
    if not m.tags:
        since = m.untagged_since or now  # never seen untagged before: just now
        if now - since < options.untagged_grace:
            seen = format_duration(timedelta(seconds=int((now - since).total_seconds())))
            return GRACE, (f"seen untagged for {seen}, less than untagged_grace "
                           f"{format_duration(options.untagged_grace)}")
    return None


@dataclass(slots=True)
class _Deciding:
    """The decisions about one repository under every policy that applies to it, taken in
    phases (match, cascade, settle) over one shared view: a digest is deleted once, by the
    first policy (by name) whose delete rule matched it, or with the deletion that pulls it
    along; and a digest any policy keeps or protects stays for all of them."""

    registry: str
    policies: list[Policy]
    view: RepoView
    now: datetime
    options: Options
    describe: Mapping[object, str]
    # digest -> policy -> its delete rule that matched it, described (the text is all a
    # decision or an action needs of the rule; looking the rule up instead hashed it, a
    # frozen dataclass of patterns, for every deletion)
    matched: dict[str, dict[str, str]]
    kept_by: dict[str, tuple[str, KeepRule]]  # digest -> the first policy's keep rule
    pinned: set[str]
    kept: list[Decision] = field(default_factory=list)
    protected: dict[tuple[str, str], Decision] = field(default_factory=dict)
    doomed: dict[str, str | None] = field(default_factory=dict)  # digest -> cascade_of
    doomed_by: dict[str, str] = field(default_factory=dict)  # digest -> policy deleting it
    root: dict[str, str] = field(default_factory=dict)  # digest -> the direct match behind it

    @classmethod
    def start(cls, inventory: Inventory, policies: list[Policy], view: RepoView, *,
              now: datetime, options: Options, describe: Mapping[object, str],
              tag_sets: Mapping[PatternSet, TagSets]) -> _Deciding | None:
        # Each policy's delete rules in order, with their tags judged (looked up once here,
        # not once per manifest).
        deleting = [(p.name, [(r, None if r.tags is None else tag_sets[r.tags], describe[r])
                              for r in p.delete]) for p in policies]
        matched: dict[str, dict[str, str]] = {}
        for digest in sorted(view.by_digest):
            m = view.by_digest[digest]
            for name, rules in deleting:
                for rule, judged, described in rules:  # the first delete rule that matches
                    if delete_matches(rule, m, view, now, judged):
                        matched.setdefault(digest, {})[name] = described
                        break
        if not matched:
            return None
        kept_by: dict[str, tuple[str, KeepRule]] = {}
        # Not kept in the view: the ranking is needed only while keep rules are matched.
        ranked = rank_tagged(view) if any(r.newest is not None for p in policies
                                      for r in p.keep) else []
        for p in policies:
            for rule in p.keep:
                judged = None if rule.tags is None else tag_sets[rule.tags]
                for digest in keep_matches(rule, view, now, judged, ranked):
                    kept_by.setdefault(digest, (p.name, rule))
        deciding = cls(inventory.registry, policies, view, now, options, describe, matched,
                       kept_by, _pinned_closure(inventory, view, options.allowlist))
        deciding.decide_matches()
        deciding.cascade()
        deciding.settle()
        deciding.keep_last_tagged()
        return deciding

    def decision(self, digest: str, policy: str, reason: str, detail: str) -> Decision:
        m = self.view.by_digest[digest]
        return Decision(policy, self.registry, self.view.repo.name, digest,
                        m.tags + m.referrer_tags, reason, detail,
                        self.matched[digest][policy], self.view.time[digest])

    def protect(self, digest: str, reason: str, detail: str) -> None:
        """Every policy that matched ``digest`` says why it stays."""
        for policy in self.matched[digest]:
            self.protected[(digest, policy)] = self.decision(digest, policy, reason, detail)

    def protection(self, digest: str) -> tuple[str, str] | None:
        return _intrinsic_protection(self.view.by_digest[digest], self.view, self.pinned,
                                     self.now, self.options, registry=self.registry)

    def held(self, digest: str) -> tuple[str, str] | None:
        """(RESTORED, sentence) while ``digest`` is within its restored_hold, else None."""
        until = self.options.restored.get((self.registry, self.view.repo.name, digest))
        if until is None or self.now >= until:
            return None
        return RESTORED, (
            f"put back by `retention restore`; held until {_instant(until)} "
            "(restored_hold). It keeps its original time, so a run after that deletes "
            "it again unless it is pinned (allowlist) or a keep rule matches it")

    def decide_matches(self) -> None:
        """Each direct match is kept by a keep rule, saved by a protection, or doomed."""
        for digest, by_policy in self.matched.items():
            if digest in self.kept_by:
                keeper, rule = self.kept_by[digest]
                for policy in by_policy:
                    detail = self.describe[rule]
                    if keeper != policy:
                        detail = f"policy {keeper}: {detail}"
                    self.kept.append(self.decision(digest, policy, "keep", detail))
            elif (saved := self.protection(digest) or self.held(digest)) is not None:
                self.protect(digest, *saved)
            else:
                self.doomed[digest] = None
                self.doomed_by[digest] = next(iter(by_policy))  # policies come sorted
                self.root[digest] = digest

    def cascade(self) -> None:
        """Children of a deleted index and referrers of a deleted subject go with it, unless
        kept or protected in their own right."""
        by_digest, doomed = self.view.by_digest, self.doomed
        waiting: dict[str, str] = {}  # direct match -> a cascade still within its grace
        queue = sorted(doomed)
        while queue:
            cause = queue.pop(0)
            children, referrers = by_digest[cause].children, self.view.referrers.get(cause)
            if not children and not referrers:
                continue  # most pull nothing along: no set built and sorted for them
            for linked in sorted(set(children) | set(referrers or ())):
                if linked not in by_digest or linked in doomed or linked in self.matched:
                    continue
                if linked in self.kept_by or by_digest[linked].tags:
                    # A tagged child or referrer is an image in its own right: deleting it
                    # would remove tags no rule asked to remove.
                    continue
                # A restored manifest stays for its hold whatever pulls it along.
                saved = self.protection(linked) or self.held(linked)
                if saved is not None:
                    if saved[0] == GRACE:
                        waiting.setdefault(self.root[cause], linked)
                    continue
                doomed[linked] = cause
                self.doomed_by[linked] = self.doomed_by[cause]
                self.root[linked] = self.root[cause]
                queue.append(linked)
        # A child or referrer within its grace period would be left behind as an orphan that
        # only an untagged rule collects: wait for it, and delete the whole image later.
        for direct, linked in waiting.items():
            for digest in [d for d in doomed if self.root[d] == direct]:
                del doomed[digest]
            self.protect(direct, GRACE, (
                f"{_short(linked)}, which would go with it, was seen untagged for less than "
                f"untagged_grace {format_duration(self.options.untagged_grace)}"))

    def settle(self) -> None:
        """Fixed point: nothing goes while an index referencing it, or its subject, stays."""
        by_digest, doomed = self.view.by_digest, self.doomed
        changed = True
        while changed:
            changed = False
            for digest in sorted(doomed):
                subject = by_digest[digest].subject
                listed = self.view.parents.get(digest)  # most have no index: nothing to scan
                parent = min((p for p in listed if p not in doomed),
                             default=None) if listed else None
                if parent is not None:
                    reason = (INDEX_CHILD, f"child of index {_short(parent)}, which stays")
                elif subject in by_digest and subject not in doomed:
                    reason = (REFERRER, f"referrer of {_short(subject)}, which stays")
                else:
                    continue
                changed = True
                if doomed.pop(digest) is None:  # a direct match: say why it stays
                    self.protect(digest, *reason)

    def keep_last_tagged(self) -> None:
        """Where the registry refuses to delete a repository's last tagged manifest (GHCR:
        "You cannot delete the last tagged version of a package"), a plan that would delete
        every tagged one keeps the newest (``last-tagged-version``), with its children and
        referrers: a plan GitHub would refuse half-way is never made. Tagged counts every
        tag, referrer tags too (GitHub's versions do not tell them apart); the newest with
        an ordinary tag is kept before one with referrer tags only. The newest by time,
        unknown as newest, ties by digest (as `newest` ranks)."""
        if not self.view.repo.last_tagged_undeletable:
            return
        tagged = [m for m in self.view.repo.manifests if m.tags or m.referrer_tags]
        if not tagged or any(m.digest not in self.doomed for m in tagged):
            return
        ordinary = [m for m in tagged if m.tags] or tagged
        keep = min(ordinary, key=lambda m: _rank_key(self.view.time[m.digest], m.digest))
        del self.doomed[keep.digest]
        if keep.digest in self.matched:  # else a referrer-tagged cascade: it simply stays
            self.protect(keep.digest, LAST_TAGGED_VERSION, (
                "the newest tagged version of a package this plan would empty: GitHub "
                "refuses to delete a package's last tagged version (delete the package "
                "itself on GitHub if it should go)"))
        self.settle()

    def hold_back(self, aborted: Mapping[str, str]) -> None:
        """Policies aborted by max_deletions delete nothing: what they would have deleted
        stays, and so do the children and referrers it still references."""
        for digest in [d for d in self.doomed if self.doomed_by[d] in aborted]:
            owner = self.doomed_by[digest]
            del self.doomed[digest]
            for policy in self.matched.get(digest, {}):
                if policy not in aborted:  # it matched too: say why it stays
                    self.kept.append(self.decision(digest, policy, "keep", (
                        f"policy {owner}, which deletes it, is aborted by max_deletions; "
                        "it stays for every policy")))
        self.settle()

    def protected_decisions(self) -> list[Decision]:
        return sorted(self.protected.values(), key=lambda d: (d.digest, d.policy))

    def deletions(self) -> list[_Deletion]:
        """What is doomed now, in the order the executor deletes it."""
        by_digest, view = self.view.by_digest, self.view
        out = []
        for digest in _deletion_order(self.doomed):
            m = by_digest[digest]
            # Everything here that references it: the executor deletes it only once all of
            # them are gone.
            listed = view.parents.get(digest)
            subject = m.subject in by_digest and m.subject != digest
            parents: tuple[str, ...] = ()  # most manifests: nothing here references them
            if listed or subject:
                found = set(listed or ())
                if subject:
                    found.add(m.subject)
                parents = tuple(sorted(found))
            out.append(_Deletion(digest, self.doomed_by[digest], self.doomed[digest], parents))
        return parents_first(out)

    def action(self, deletion: _Deletion, freed: int) -> Action:
        by_digest, view = self.view.by_digest, self.view
        digest, policy, cause = deletion.digest, deletion.policy, deletion.cause
        m = by_digest[digest]
        if cause is None:
            reason = self.matched[digest][policy]
        else:
            link = "child of index" if digest in by_digest[cause].children else "referrer of"
            reason = f"cascade: {link} {_short(cause)}, which is deleted"
        return Action(policy, self.registry, view.repo.name, digest, m.tags + m.referrer_tags,
                      m.media_type, reason, cause, freed, view.time[digest], deletion.parents)


class _Deletion(NamedTuple):
    """A planned deletion, before it is made an Action (once its bytes are known)."""

    digest: str
    policy: str
    cause: str | None  # the deletion that pulls it along; None: a direct match
    parents: tuple[str, ...]


def only(plan: Plan, names: Iterable[str], inventories: Mapping[str, Inventory]) -> Plan:
    """The part of ``plan`` that the policies ``names`` own, with bytes counted as if only
    their deletions happened. Planning every policy and running a few keeps what the others
    keep or protect safe from the few. ``plan`` is as ``plan()`` made it: each registry's
    bytes counted with the deletions of all of its policies."""
    chosen = [p for p in plan.policies if p.policy in set(names)]
    by_registry: dict[str, list[PolicyPlan]] = defaultdict(list)
    for p in chosen:
        by_registry[p.registry].append(p)
    everyone = Counter(p.registry for p in plan.policies)
    # A registry whose every policy runs keeps the bytes it was planned with: they were
    # counted with the deletions of all of them (20,000 images: 0.1 s to count them again).
    counted = {p.policy: p for registry, plans in by_registry.items()
               for p in (plans if len(plans) == everyone[registry]
                         else _count_bytes(inventories[registry], plans))}
    return Plan(now=plan.now, policies=tuple(counted[p.policy] for p in chosen))


def only_actions(plan: Plan, keep: Callable[[Action], bool],
                 inventories: Mapping[str, Inventory]) -> Plan:
    """``plan`` with only the actions ``keep`` accepts (for `retention apply`: what a
    reviewed plan and today's plan both delete), bytes counted again as if only those
    deletions happened. A repository some of whose deletions are dropped is no longer
    emptied by the plan (delete_empty_repositories)."""
    kept: list[PolicyPlan] = []
    for p in plan.policies:
        actions = tuple(a for a in p.actions if keep(a))
        dropped = {a.repository for a in p.actions if not keep(a)}
        kept.append(replace(p, actions=actions,
                            emptied=tuple(r for r in p.emptied if r not in dropped)))
    by_registry: dict[str, list[PolicyPlan]] = defaultdict(list)
    for p in kept:
        by_registry[p.registry].append(p)
    counted = {p.policy: p for registry, plans in by_registry.items()
               for p in (_count_bytes(inventories[registry], plans)
                         if registry in inventories else plans)}
    return Plan(now=plan.now, policies=tuple(counted[p.policy] for p in kept))


def _deletion_order(doomed: Mapping[str, str | None]) -> list[str]:
    """Each direct deletion followed by its cascades: an index before its children, a
    subject before its referrers, so an interrupted run never strands a half-deleted image
    that still looks whole."""
    followers: dict[str, list[str]] = defaultdict(list)
    for digest, cause in doomed.items():
        if cause is not None:
            followers[cause].append(digest)
    order: list[str] = []

    def emit(digest: str) -> None:
        order.append(digest)
        if digest in followers:  # most pull nothing along
            for follower in sorted(followers[digest]):
                emit(follower)

    for digest in sorted(d for d, cause in doomed.items() if cause is None):
        emit(digest)
    return order


_Ordered = TypeVar("_Ordered", Action, _Deletion)


def parents_first(actions: Iterable[_Ordered]) -> list[_Ordered]:
    """The actions of one repository reordered, as little as possible, so that each comes
    after every action deleting a manifest that references it (a referrer listed in a
    fallback index comes after the index and after its subject). Actions caught in a
    reference cycle come last, in their order: the executor then finds a parent still there
    and skips them."""
    pending = list(actions)
    planned = {a.digest for a in pending}
    emitted: set[str] = set()
    out: list[_Ordered] = []
    progress = True
    while pending and progress:
        progress = False
        waiting = []
        for a in pending:
            if not a.parents or all(p in emitted or p not in planned for p in a.parents):
                out.append(a)
                emitted.add(a.digest)
                progress = True
            else:
                waiting.append(a)
        pending = waiting
    return out + pending


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _short(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}"


# ---------------------------------------------------------------------------------------


def _count_bytes(inventory: Inventory, plans: Iterable[PolicyPlan]) -> tuple[PolicyPlan, ...]:
    """Attribute to each action the blobs it frees: referenced by it, and by no manifest
    that survives anywhere in the registry. Each blob is counted once, for the action whose
    deletion removes its last reference."""
    plans = list(plans)
    deleting = [(a.repository, a.digest) for p in plans if not p.aborted for a in p.actions]
    freed = freed_bytes(inventory, gone=deleting)
    return tuple(
        p if p.aborted else replace(p, actions=tuple(
            replace(a, bytes=freed[(a.repository, a.digest)]) for a in p.actions))
        for p in plans)
