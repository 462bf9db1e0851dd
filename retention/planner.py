"""The planner: inventory + policies + now -> plan. Pure: no I/O, no clock, no randomness.

For each policy and each repository it applies to, every manifest is tested against the
delete rules; a match is kept when a keep rule also matches, saved when a protection applies,
and otherwise deleted, pulling its children and referrers along (cascades). Protections that
depend on what survives (``index-child``, ``referrer``) are settled by a fixed point, so a
deletion can never leave a surviving index without its child or a surviving image without
its signature.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from retention.allowlist import Allowlist
from retention.durations import format_duration
from retention.inventory import Inventory, Manifest, Repository
from retention.policy import DeleteRule, KeepRule, Policy

# Reproducible builds write 1970 or 1980; no image was built before 2000.
PLAUSIBLE_SINCE = datetime(2000, 1, 1, tzinfo=UTC)

PINNED = "pinned"
IN_USE = "in-use"
LOCKED = "locked"
INDEX_CHILD = "index-child"
REFERRER = "referrer"
GRACE = "grace"
CHANGED = "changed"
UNKNOWN_MEDIA_TYPE = "unknown-media-type"
PROTECTION_REASONS = (PINNED, IN_USE, LOCKED, INDEX_CHILD, REFERRER, GRACE, CHANGED,
                      UNKNOWN_MEDIA_TYPE)


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
    time: datetime | None = None  # the manifest's effective time; None when unknown


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
    time: datetime | None = None


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


def plan(
    inventory: Inventory,
    policies: Sequence[Policy],
    *,
    now: datetime,
    options: Options | None = None,
) -> Plan:
    """Decide, for every manifest some policy's delete rule matches, whether it goes."""
    options = options or Options()
    ordered = sorted(policies, key=lambda p: p.name)
    parts = {p.name: _Parts() for p in ordered}
    # Rules are described once, not once per manifest they decide.
    describe = {rule: rule.describe() for p in ordered for rule in (*p.keep, *p.delete)}
    for repo in sorted(inventory.repositories, key=lambda r: r.name):
        applying = [p for p in ordered if p.applies_to(repo.name)]
        if not applying:
            continue
        if repo.error is not None:
            for p in applying:
                parts[p.name].errors.append(
                    RepositoryError(p.name, inventory.registry, repo.name, repo.error))
            continue
        view = _RepoView.of(repo, now)  # built once, shared by every policy
        taken: set[str] = set()  # digests an earlier policy (by name) already deletes
        for p in applying:
            a, protected, kept = _plan_repository(inventory, p, view, now=now,
                                                  options=options, describe=describe)
            part = parts[p.name]
            mine = [action for action in a if action.digest not in taken]
            taken.update(action.digest for action in mine)
            part.actions.extend(mine)
            if p.delete_empty_repositories and len(mine) == len(repo.manifests):
                part.emptied.append(repo.name)
            part.protected.extend(protected)
            part.kept.extend(kept)
    plans = []
    for p in ordered:
        part = parts[p.name]
        limit = p.max_deletions if p.max_deletions is not None else options.max_deletions
        aborted = None
        if len(part.actions) > limit:
            aborted = (f"max_deletions exceeded: {len(part.actions)} deletions planned, the "
                       f"limit is {limit}; nothing is deleted (raise max_deletions if this is "
                       "intended)")
        plans.append(PolicyPlan(p.name, inventory.registry, tuple(part.actions),
                                tuple(part.protected), tuple(part.kept), tuple(part.errors),
                                aborted, tuple(part.emptied)))
    return Plan(now=now, policies=_count_bytes(inventory, plans))


@dataclass(slots=True)
class _Parts:
    actions: list[Action] = field(default_factory=list)
    protected: list[Decision] = field(default_factory=list)
    kept: list[Decision] = field(default_factory=list)
    errors: list[RepositoryError] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# One repository, seen once: times, tags, parents and referrers, shared by every policy.


@dataclass(slots=True)
class _RepoView:
    repo: Repository
    by_digest: dict[str, Manifest]
    time: dict[str, datetime | None]
    parents: dict[str, list[str]]  # child digest -> indexes referencing it
    referrers: dict[str, list[str]]  # subject digest -> its referrers
    has_unparsed: bool

    @classmethod
    def of(cls, repo: Repository, now: datetime) -> _RepoView:
        by_digest = {m.digest: m for m in repo.manifests}
        parents: dict[str, list[str]] = defaultdict(list)
        referrers: dict[str, list[str]] = defaultdict(list)
        for m in repo.manifests:
            for child in m.children:
                parents[child].append(m.digest)
            if m.subject is not None and m.subject != m.digest:
                referrers[m.subject].append(m.digest)
        view = cls(repo, by_digest, {}, parents, referrers,
                   any(not m.parsed for m in repo.manifests))
        for m in repo.manifests:
            view._time_of(m.digest, now, frozenset())
        return view

    def _time_of(self, digest: str, now: datetime, path: frozenset[str]) -> datetime | None:
        if digest in self.time:
            return self.time[digest]
        m = self.by_digest.get(digest)
        value: datetime | None = None
        if m is not None and digest not in path:
            if m.pushed is not None:
                value = _plausible(m.pushed, now)
            elif m.children:
                # An index is as new as its newest child; an unknown child makes it unknown,
                # since unknown ranks as newest.
                times = [self._time_of(c, now, path | {digest}) for c in m.children]
                value = None if any(t is None for t in times) else max(times)  # type: ignore[type-var]
            else:
                value = _plausible(m.created, now)
        self.time[digest] = value
        return value


def _plausible(value: datetime | None, now: datetime) -> datetime | None:
    if value is None or value < PLAUSIBLE_SINCE or value > now:
        return None
    return value


def _age(time: datetime | None, now: datetime) -> timedelta | None:
    return None if time is None else now - time


# ---------------------------------------------------------------------------------------


def _keep_matches(rule: KeepRule, view: _RepoView, now: datetime) -> set[str]:
    manifests = view.repo.manifests
    if rule.newest is not None:
        pool = [
            m for m in manifests
            if m.tags and (rule.tags is None or any(rule.tags.matches(t) for t in m.tags))
        ]
        # Newest first; unknown times rank as newest; ties broken by digest.
        pool.sort(key=lambda m: _rank_key(view.time[m.digest], m.digest))
        chosen = pool[: rule.newest]
    elif rule.tags is not None:
        chosen = [m for m in manifests if any(rule.tags.matches(t) for t in m.tags)]
    else:
        chosen = list(manifests)
    if rule.younger_than is not None:
        limit = rule.younger_than
        chosen = [
            m for m in chosen
            if (age := _age(view.time[m.digest], now)) is None or age < limit
        ]
    return {m.digest for m in chosen}


def _rank_key(time: datetime | None, digest: str) -> tuple[int, float, str]:
    return (0, 0.0, digest) if time is None else (1, -time.timestamp(), digest)


def _delete_matches(rule: DeleteRule, m: Manifest, view: _RepoView, now: datetime) -> bool:
    if rule.tags is not None:
        # Deleting by digest removes every tag: all of them must be meant to go.
        if not m.tags or not all(rule.tags.matches(t) for t in m.tags):
            return False
    elif rule.untagged:
        if m.tags or m.digest in view.parents:
            return False
        if m.subject is not None and m.subject in view.by_digest:
            return False
    if rule.older_than is not None:
        age = _age(view.time[m.digest], now)
        if age is None or age <= rule.older_than:
            return False
    return True


def _pinned_closure(inventory: Inventory, view: _RepoView, allowlist: Allowlist) -> set[str]:
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
    m: Manifest, view: _RepoView, pinned: set[str], now: datetime, options: Options,
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
    if not m.tags and view.has_unparsed:
        return UNKNOWN_MEDIA_TYPE, ("the repository holds a manifest that cannot be parsed, "
                                    "so whether this one is its child is unknown")
    if not m.tags:
        since = m.untagged_since or now  # never seen untagged before: just now
        if now - since < options.untagged_grace:
            seen = format_duration(timedelta(seconds=int((now - since).total_seconds())))
            return GRACE, (f"seen untagged for {seen}, less than untagged_grace "
                           f"{format_duration(options.untagged_grace)}")
    return None


def _plan_repository(
    inventory: Inventory,
    policy: Policy,
    view: _RepoView,
    *,
    now: datetime,
    options: Options,
    describe: Mapping[object, str],
) -> tuple[list[Action], list[Decision], list[Decision]]:
    matched: dict[str, DeleteRule] = {}
    for digest in sorted(view.by_digest):
        for rule in policy.delete:
            if _delete_matches(rule, view.by_digest[digest], view, now):
                matched[digest] = rule
                break
    if not matched:
        return [], [], []
    kept_by: dict[str, KeepRule] = {}
    for rule in policy.keep:
        for digest in _keep_matches(rule, view, now):
            kept_by.setdefault(digest, rule)
    deciding = _Deciding(inventory.registry, policy.name, view, now, options, describe,
                         matched, kept_by, _pinned_closure(inventory, view, options.allowlist))
    deciding.decide_matches()
    deciding.cascade()
    deciding.settle()
    return (deciding.actions(), sorted(deciding.protected.values(), key=lambda d: d.digest),
            deciding.kept)


@dataclass(slots=True)
class _Deciding:
    """The decisions about one repository under one policy, taken in phases."""

    registry: str
    policy: str
    view: _RepoView
    now: datetime
    options: Options
    describe: Mapping[object, str]
    matched: dict[str, DeleteRule]  # direct matches -> the delete rule that matched
    kept_by: dict[str, KeepRule]
    pinned: set[str]
    kept: list[Decision] = field(default_factory=list)
    protected: dict[str, Decision] = field(default_factory=dict)
    doomed: dict[str, str | None] = field(default_factory=dict)  # digest -> cascade_of
    root: dict[str, str] = field(default_factory=dict)  # digest -> the direct match behind it

    def decision(self, digest: str, reason: str, detail: str) -> Decision:
        m = self.view.by_digest[digest]
        return Decision(self.policy, self.registry, self.view.repo.name, digest,
                        m.tags + m.referrer_tags, reason, detail,
                        self.describe[self.matched[digest]], self.view.time[digest])

    def protection(self, digest: str) -> tuple[str, str] | None:
        return _intrinsic_protection(self.view.by_digest[digest], self.view, self.pinned,
                                     self.now, self.options, registry=self.registry)

    def decide_matches(self) -> None:
        """Each direct match is kept by a keep rule, saved by a protection, or doomed."""
        for digest in self.matched:
            if digest in self.kept_by:
                self.kept.append(self.decision(digest, "keep",
                                               self.describe[self.kept_by[digest]]))
            elif (saved := self.protection(digest)) is not None:
                self.protected[digest] = self.decision(digest, *saved)
            else:
                self.doomed[digest] = None
                self.root[digest] = digest

    def cascade(self) -> None:
        """Children of a deleted index and referrers of a deleted subject go with it, unless
        kept or protected in their own right."""
        by_digest, doomed = self.view.by_digest, self.doomed
        waiting: dict[str, str] = {}  # direct match -> a cascade still within its grace
        queue = sorted(doomed)
        while queue:
            cause = queue.pop(0)
            linked_to = set(by_digest[cause].children) | set(self.view.referrers.get(cause, ()))
            for linked in sorted(linked_to):
                if linked not in by_digest or linked in doomed or linked in self.matched:
                    continue
                if linked in self.kept_by or by_digest[linked].tags:
                    # A tagged child or referrer is an image in its own right: deleting it
                    # would remove tags no rule asked to remove.
                    continue
                saved = self.protection(linked)
                if saved is not None:
                    if saved[0] == GRACE:
                        waiting.setdefault(self.root[cause], linked)
                    continue
                doomed[linked] = cause
                self.root[linked] = self.root[cause]
                queue.append(linked)
        # A child or referrer within its grace period would be left behind as an orphan that
        # only an untagged rule collects: wait for it, and delete the whole image later.
        for direct, linked in waiting.items():
            for digest in [d for d in doomed if self.root[d] == direct]:
                del doomed[digest]
            self.protected[direct] = self.decision(direct, GRACE, (
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
                parent = min((p for p in self.view.parents.get(digest, ()) if p not in doomed),
                             default=None)
                if parent is not None:
                    reason = (INDEX_CHILD, f"child of index {_short(parent)}, which stays")
                elif subject in by_digest and subject not in doomed:
                    reason = (REFERRER, f"referrer of {_short(subject)}, which stays")
                else:
                    continue
                changed = True
                if doomed.pop(digest) is None:  # a direct match: say why it stays
                    self.protected[digest] = self.decision(digest, *reason)

    def actions(self) -> list[Action]:
        by_digest = self.view.by_digest
        out = []
        for digest in _deletion_order(self.doomed):
            m = by_digest[digest]
            cause = self.doomed[digest]
            if cause is None:
                reason = self.describe[self.matched[digest]]
            else:
                link = "child of index" if digest in by_digest[cause].children else \
                    "referrer of"
                reason = f"cascade: {link} {_short(cause)}, which is deleted"
            out.append(Action(self.policy, self.registry, self.view.repo.name, digest,
                              m.tags + m.referrer_tags, m.media_type, reason, cause, 0,
                              self.view.time[digest]))
        return out


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
        for follower in sorted(followers.get(digest, ())):
            emit(follower)

    for digest in sorted(d for d, cause in doomed.items() if cause is None):
        emit(digest)
    return order


def _short(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}"


# ---------------------------------------------------------------------------------------


def _count_bytes(inventory: Inventory, plans: Iterable[PolicyPlan]) -> tuple[PolicyPlan, ...]:
    """Attribute to each action the blobs it frees: referenced by it, and by no manifest
    that survives anywhere in the registry. Each blob is counted once, for the first action
    that frees it."""
    plans = list(plans)
    deleted: dict[str, set[str]] = defaultdict(set)  # repository -> digests deleted there
    for p in plans:
        if not p.aborted:
            for a in p.actions:
                deleted[a.repository].add(a.digest)
    surviving: set[str] = set()
    repos: dict[str, dict[str, Manifest]] = {}
    for repo in inventory.repositories:
        gone = deleted.get(repo.name)
        if gone:
            repos[repo.name] = {m.digest: m for m in repo.manifests if m.digest in gone}
            manifests: Iterable[Manifest] = (m for m in repo.manifests if m.digest not in gone)
        else:
            manifests = repo.manifests
        for m in manifests:
            surviving.add(m.digest)  # the manifest body is a blob too
            surviving.update([b.digest for b in m.blobs])
    counted: set[str] = set()
    out = []
    for p in plans:
        if p.aborted:
            out.append(p)
            continue
        actions = []
        for a in p.actions:
            m = repos[a.repository][a.digest]
            freed = 0
            for digest, size in ((m.digest, m.size), *((b.digest, b.size) for b in m.blobs)):
                if digest in surviving or digest in counted:
                    continue
                counted.add(digest)
                freed += size
            actions.append(Action(a.policy, a.registry, a.repository, a.digest, a.tags,
                                  a.media_type, a.reason, a.cascade_of, freed, a.time))
        out.append(replace(p, actions=tuple(actions)))
    return tuple(out)
