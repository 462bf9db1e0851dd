"""Where the storage is: what a registry stores, per repository, from one inventory.

Pure (no I/O): everything comes from what a scan already read, so the figures cost no
request. A blob is counted once however many manifests or repositories reference it; a
manifest body is a blob too. Per repository, a blob is ``unique`` when no other repository
references it (deleting the repository's images would free it) and ``shared`` otherwise.
Foreign (non-distributable) layers are not stored by the registry and count nothing
(accounting.stored_size).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from retention.accounting import freed_bytes, stored_blobs
from retention.inventory import Inventory, Manifest, Repository

OTHER = "(other)"  # the repositories beyond the top N, summed


@dataclass(frozen=True, slots=True)
class RepositoryStorage:
    repository: str
    manifests: int
    tags: int
    orphans: int
    unique_bytes: int
    shared_bytes: int
    reclaimable_bytes: int = 0  # what the current policies would free there


@dataclass(frozen=True, slots=True)
class RegistryStorage:
    registry: str
    bytes: int  # every blob once
    untagged_bytes: int  # what deleting every orphan would free
    repositories: tuple[RepositoryStorage, ...]  # largest unique bytes first

    def top(self, n: int) -> tuple[tuple[RepositoryStorage, ...], RepositoryStorage | None]:
        """The ``n`` largest repositories, and the rest summed as one (None: no rest)."""
        head, rest = self.repositories[:n], self.repositories[n:]
        if not rest:
            return head, None
        return head, RepositoryStorage(
            OTHER, manifests=sum(r.manifests for r in rest), tags=sum(r.tags for r in rest),
            orphans=sum(r.orphans for r in rest),
            unique_bytes=sum(r.unique_bytes for r in rest),
            shared_bytes=sum(r.shared_bytes for r in rest),
            reclaimable_bytes=sum(r.reclaimable_bytes for r in rest))


def _present(repo: Repository) -> tuple[Manifest, ...]:
    # A repository that could not be read still holds what was last known there.
    return repo.manifests or repo.last_known


def orphans(repo: Repository) -> list[Manifest]:
    """Untagged manifests that are neither a child of an index there nor a referrer of a
    manifest there (SPEC's orphans)."""
    manifests = _present(repo)
    digests = {m.digest for m in manifests}
    children = {c for m in manifests for c in m.children}
    return [m for m in manifests if not m.tags and m.digest not in children
            and not (m.subject is not None and m.subject in digests)]


def _with_cascade(repo: Repository, gone: list[Manifest]) -> list[str]:
    """The orphans and what goes with them: the children of an orphan index that no other
    index there lists, and the referrers of an orphan."""
    going = {m.digest for m in gone}
    staying_lists = {c for m in _present(repo) if m.digest not in going for c in m.children}
    out = list(going)
    for m in _present(repo):
        if m.digest in going:
            continue
        child_of_gone = any(m.digest in g.children for g in gone)
        if (child_of_gone and m.digest not in staying_lists) or m.subject in going:
            out.append(m.digest)
    return out


def storage(inventory: Inventory, *,
            reclaimable: Mapping[str, int] | None = None) -> RegistryStorage:
    """The registry's storage as ``inventory`` shows it. ``reclaimable``: bytes a plan would
    free, by repository."""
    sizes: dict[str, int] = {}
    holders: dict[str, set[str]] = defaultdict(set)  # blob -> repositories referencing it
    per_repo: dict[str, set[str]] = {}
    for repo in inventory.repositories:
        mine: set[str] = set()
        for m in _present(repo):
            for digest, size in stored_blobs(m):
                # A size a parsed manifest states wins over a schema 1 layer's unknown 0.
                sizes[digest] = max(size, sizes.get(digest, 0))
                mine.add(digest)
        for digest in mine:
            holders[digest].add(repo.name)
        per_repo[repo.name] = mine
    reclaimable = reclaimable or {}
    repositories = []
    gone: list[tuple[str, str]] = []
    for repo in inventory.repositories:
        unique = shared = 0
        for digest in per_repo[repo.name]:
            if len(holders[digest]) == 1:
                unique += sizes[digest]
            else:
                shared += sizes[digest]
        lost = orphans(repo)
        if repo.error is None:  # nothing is deleted in an unreadable repository
            gone.extend((repo.name, d) for d in _with_cascade(repo, lost))
        repositories.append(RepositoryStorage(
            repo.name, manifests=len(_present(repo)),
            tags=sum(len(m.tags) for m in _present(repo)), orphans=len(lost),
            unique_bytes=unique, shared_bytes=shared,
            reclaimable_bytes=reclaimable.get(repo.name, 0)))
    repositories.sort(key=lambda r: (-r.unique_bytes, r.repository))
    return RegistryStorage(
        inventory.registry, bytes=sum(sizes.values()),
        untagged_bytes=sum(freed_bytes(inventory, gone=gone).values()),
        repositories=tuple(repositories))


def reclaimable_by_repository(actions: Iterable[tuple[str, int]]) -> dict[str, int]:
    """(repository, bytes) of a plan's actions, summed by repository."""
    out: dict[str, int] = defaultdict(int)
    for repository, size in actions:
        out[repository] += size
    return dict(out)
