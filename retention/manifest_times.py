"""When each manifest was made, as the planner reads it (SPEC "Time of a manifest").

A manifest's time is the registry's push time, else its config's ``created``, else its
annotation; an index is as new as its newest platform child; an attestation is as old as its
index; anything without a plausible time of its own is timed by when retention first saw it.
Pure: ``now`` is passed in.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from retention.inventory import Manifest, Repository

# Reproducible builds write 1970 or 1980; no image was built before 2000.
PLAUSIBLE_SINCE = datetime(2000, 1, 1, tzinfo=UTC)

# Where a manifest's time comes from (JSON `time_source`).
PUSHED = "pushed"  # the registry's push time (ACR)
CREATED = "created"  # the image config's `created`
ANNOTATION = "annotation"  # org.opencontainers.image.created
CHILDREN = "children"  # an index: its newest platform child
FIRST_SEEN = "first-seen"  # when retention first saw the digest in the repository
TIME_SOURCES = (PUSHED, CREATED, ANNOTATION, CHILDREN, FIRST_SEEN)


@dataclass(frozen=True, slots=True)
class ManifestTime:
    """A manifest's effective time and where it came from (SPEC "Time of a manifest")."""

    at: datetime | None = None  # None: unknown (first seen in this very run, or state lost)
    source: str | None = None  # one of TIME_SOURCES; None when unknown

    @property
    def dated(self) -> bool:
        """From the registry, the config, the annotation or the children: not by sight."""
        return self.source not in (None, FIRST_SEEN)


UNKNOWN = ManifestTime()


@dataclass(slots=True)
class RepoView:
    """One repository, seen once: times, tags, parents and referrers, shared by every
    policy."""

    repo: Repository
    by_digest: dict[str, Manifest]
    time: dict[str, ManifestTime]
    parents: dict[str, list[str]]  # child digest -> indexes referencing it
    referrers: dict[str, list[str]]  # subject digest -> its referrers
    # An unparsed manifest that may reference others (anything but schema 1), the first
    # by digest; None when there is none.
    unparsed: str | None
    attested: dict[str, list[str]] = field(default_factory=dict)  # attestation -> its indexes

    @classmethod
    def of(cls, repo: Repository, now: datetime) -> RepoView:
        by_digest = {m.digest: m for m in repo.manifests}
        parents: dict[str, list[str]] = defaultdict(list)
        referrers: dict[str, list[str]] = defaultdict(list)
        attested: dict[str, list[str]] = defaultdict(list)
        for m in repo.manifests:
            for child in m.children:
                parents[child].append(m.digest)
            for attestation in m.attestations:
                attested[attestation].append(m.digest)
            if m.subject is not None and m.subject != m.digest:
                referrers[m.subject].append(m.digest)
        unparsed = min((m.digest for m in repo.manifests if not m.parsed and not m.schema1),
                       default=None)
        view = cls(repo, by_digest, {}, parents, referrers, unparsed, attested)
        time, nothing_waits = view.time, frozenset()
        for digest in sorted(by_digest):  # by digest: the listing order never matters
            if digest not in time:  # not already timed as an index's child
                time[digest] = view._own_time(by_digest[digest], now, nothing_waits)
        return view

    def _time_of(self, digest: str, now: datetime, path: frozenset[str]) -> ManifestTime:
        if digest in self.time:
            return self.time[digest]
        m = self.by_digest.get(digest)
        if m is None or digest in path:
            return UNKNOWN  # a missing child, or a cycle: nothing is known of it here
        value = self._own_time(m, now, path)
        self.time[digest] = value
        return value

    def _own_time(self, m: Manifest, now: datetime, path: frozenset[str]) -> ManifestTime:
        """SPEC "Time of a manifest", first usable source wins. ``path``: the manifests
        whose time waits on this one's; a manifest's own digest joins it only when its time
        depends on others (most have a time of their own: no set is built for them)."""
        if (pushed := plausible(m.pushed, now)) is not None:
            return ManifestTime(pushed, PUSHED)
        # Most manifests are no index: no list built for them.
        platform = [c for c in m.children if c not in m.attestations] if m.children else None
        if platform:
            # An index is as new as its newest platform child, when every one of them has
            # a time of its own; attestations have none and do not count.
            within = path | {m.digest}
            times = [self._time_of(c, now, within) for c in platform]
            if all(t.dated for t in times):
                return ManifestTime(max(t.at for t in times if t.at is not None), CHILDREN)
        if (created := plausible(m.created, now)) is not None:
            return ManifestTime(created, CREATED)
        if (annotated := plausible(m.annotated, now)) is not None:
            return ManifestTime(annotated, ANNOTATION)
        indexes = self.attested.get(m.digest)
        if indexes:
            # An attestation (no time of its own) goes and stays with its index: it is as
            # old. With several indexes, the newest decides; one unknown makes it unknown. A
            # manifest with a time of its own keeps it, whatever an index says of it.
            within = path | {m.digest}
            times = [self._time_of(i, now, within) for i in indexes]
            if any(t.at is None for t in times):
                return UNKNOWN
            return max(times, key=lambda t: t.at or PLAUSIBLE_SINCE)
        # No usable time of its own (none, reproducible 1970/1980, or in the future): when
        # retention first saw it, which is never before its real push, so an age is never
        # overstated. First seen in this very run: unknown.
        if (seen := plausible(m.first_seen, now)) is not None:
            return ManifestTime(seen, FIRST_SEEN)
        return UNKNOWN


def plausible(value: datetime | None, now: datetime) -> datetime | None:
    if value is None or value < PLAUSIBLE_SINCE or value > now:
        return None
    return value


def age_of(time: ManifestTime | None, now: datetime) -> timedelta | None:
    return None if time is None or time.at is None else now - time.at
