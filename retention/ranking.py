"""Which manifests a rule matches: delete rules by tags, untagged and age; keep rules by
tags, age and rank (`newest: N`, dated and undated ranked apart). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from retention.inventory import Manifest
from retention.manifest_times import ManifestTime, RepoView, age_of
from retention.patterns import PatternSet
from retention.policy import DeleteRule, KeepRule


class TagSets:
    """What one rule's tag patterns say of whole tag sets, remembered for one plan.

    The same tag sets recur on many manifests and across repositories (CI names tags after
    branches and build numbers): each is judged once, not once per manifest and rule. The
    answer is exactly that of matching tag by tag; bounded like PatternSet's own memo.
    """

    __slots__ = ("_any", "_every", "_patterns")

    def __init__(self, patterns: PatternSet) -> None:
        self._patterns = patterns
        self._any: dict[tuple[str, ...], bool] = {}
        self._every: dict[tuple[str, ...], bool] = {}

    def any(self, tags: tuple[str, ...]) -> bool:
        """Some tag matches."""
        found = self._any.get(tags)
        if found is None:
            found = any(self._patterns.matches(t) for t in tags)
            _remember(self._any, tags, found)
        return found

    def every(self, tags: tuple[str, ...]) -> bool:
        """There are tags, and every one of them matches."""
        found = self._every.get(tags)
        if found is None:
            found = bool(tags) and all(self._patterns.matches(t) for t in tags)
            _remember(self._every, tags, found)
        return found


def _remember(memo: dict[tuple[str, ...], bool], tags: tuple[str, ...], found: bool) -> None:
    if len(memo) >= 65536:
        memo.clear()  # bounded: a registry whose every tag is new gains nothing from it
    memo[tags] = found


def keep_matches(rule: KeepRule, view: RepoView, now: datetime,
                  tag_sets: TagSets | None, ranked: Sequence[tuple[Manifest, bool]]) -> set[str]:
    """``tag_sets``: the rule's tags, judged (None when the rule names none); ``ranked``:
    rank_tagged(view), needed only by a `newest` rule."""
    manifests = view.repo.manifests
    if rule.newest is not None:
        # Dated and undated manifests are ranked apart, N of each: a reproducible build
        # timed by first sight must not push a release with a real date out, nor the other
        # way round.
        dated: list[Manifest] = []
        undated: list[Manifest] = []
        for m, is_dated in ranked:
            if tag_sets is None or tag_sets.any(m.tags):
                (dated if is_dated else undated).append(m)
        chosen = dated[: rule.newest] + undated[: rule.newest]
    elif tag_sets is not None:
        chosen = [m for m in manifests if tag_sets.any(m.tags)]
    else:
        chosen = list(manifests)
    if rule.younger_than is not None:
        limit = rule.younger_than
        chosen = [
            m for m in chosen
            if (age := age_of(view.time[m.digest], now)) is None or age < limit
        ]
    return {m.digest for m in chosen}


def rank_tagged(view: RepoView) -> list[tuple[Manifest, bool]]:
    """The tagged manifests of ``view``, newest first (unknown times rank as newest, ties
    broken by digest), each with whether its time is dated. Sorted once per repository for
    every `newest` rule of every policy: a rule with tags keeps this order (the sort is
    stable) by filtering it."""
    pool = [m for m in view.repo.manifests if m.tags]
    pool.sort(key=lambda m: _rank_key(view.time[m.digest], m.digest))
    return [(m, view.time[m.digest].dated) for m in pool]


def _rank_key(time: ManifestTime, digest: str) -> tuple[int, float, str]:
    # Manifests first seen in one run share that time: the digest orders them.
    return (0, 0.0, digest) if time.at is None else (1, -time.at.timestamp(), digest)


def delete_matches(rule: DeleteRule, m: Manifest, view: RepoView, now: datetime,
                    tag_sets: TagSets | None) -> bool:
    """``tag_sets``: the rule's tags, judged (None when the rule names none)."""
    if tag_sets is not None:
        # Deleting by digest removes every tag: all of them must be meant to go.
        if not tag_sets.every(m.tags):
            return False
    elif rule.untagged:
        if m.tags or m.digest in view.parents:
            return False
        if m.subject is not None and m.subject in view.by_digest:
            return False
        if rule.untagged_for is not None:
            # Never seen untagged before this run: untagged for no time at all.
            since = m.untagged_since or now
            if now - since < rule.untagged_for:
                return False
    if rule.older_than is not None:
        age = age_of(view.time[m.digest], now)
        if age is None or age <= rule.older_than:
            return False
    return True
