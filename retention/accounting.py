"""What deleting manifests frees: the bytes a registry's garbage collector reclaims.

A blob (a manifest body, an image config, a layer) is freed only when no manifest left
anywhere in the registry references it. Blobs are shared across repositories, so survival is
decided registry-wide, and a repository that could not be read still holds what was last
known there. The planner uses this for what a plan would free; the executor for what a run
really freed, once its deletions are over, replaying them in the order they went, with the
manifests pushed meanwhile as present as the rest (the collector runs later: a rebuild that
shares a layer with a deleted build keeps that layer, even when pushed after the deletion).
Foreign layers (``urls``; Windows base layers) come with size 0: the registry stores none.

What references a blob is what distribution's garbage collector marks (2.8, `registry
garbage-collect` without `--delete-untagged`): for each manifest present in a repository,
its own digest (the body) and the digests of its references, which for an image are its
config and layers and for an index are its children. So an index keeps the BODY of every
child it lists alive, even where that child manifest is gone from the index's repository
(deleted by someone else) while the same digest is deleted in another one; it does not keep
the config and layers of a child that is gone. A blob is credited only to a manifest this
run deleted whose own blob (body, config, layer) it is: the body of a child freed because
its index went is that child's, not the index's.

A manifest retention cannot parse is never deleted by a plan. A Docker schema 1 manifest
whose layers were read (its ``fsLayers[].blobSum``, what the collector marks for it) holds
them as any manifest holds its blobs; their sizes are unknown there (0), so a blob's size
comes only from parsed manifests and bodies. A manifest not parsed whose references are not
known (blobs empty: another type, unreadable layers, a last-known digest without facts)
may hold any blob: while one is present in the registry, no config or layer is claimed as
freed, only manifest bodies (fewer bytes than the collector may free: never more).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Hashable, Iterable
from operator import attrgetter

from retention.inventory import Inventory, Manifest

Key = tuple[str, str]  # (repository, digest)

_DIGEST = attrgetter("digest")


def _opaque(m: Manifest) -> bool:
    """Whether a manifest may hold blobs retention does not know: not parsed, and no
    references known (a schema 1 manifest's layers, when read, are its blobs)."""
    return not m.parsed and not m.blobs


def stored_blobs(m: Manifest) -> Iterable[tuple[str, int]]:
    """(digest, size) of each blob the registry stores for ``m``: its body, config and
    layers (not its children: they are manifests of their own)."""
    yield m.digest, m.size  # the manifest body is a blob too
    for b in m.blobs:
        yield b.digest, b.size


class Ledger:
    """References to each blob from the manifests still present in one registry: their own
    blobs, and the children (manifest bodies) each index lists.

    ``remove`` takes a manifest out and says which blobs lost their last reference: those
    are freed, and credited to whoever deleted that manifest when they are its own. A
    manifest found already gone frees nothing for this run; a blob whose last reference it
    held is credited to the earlier deletion in this run that also held it as its own, if
    any (both are needed for the garbage collector to free it). So is a child's body whose
    last reference was an index's listing.
    """

    def __init__(self, inventory: Inventory, *,
                 newcomers: Iterable[tuple[str, Manifest]] = ()):
        """``newcomers``: (repository, manifest) pushed since the inventory was read; they
        are present as much as the inventory's own."""
        self._manifests: dict[Key, Manifest] = {}
        self._references: dict[str, int] = defaultdict(int)
        self._sizes: dict[str, int] = {}
        self._first_owner: dict[str, Hashable] = {}  # blob -> the first deletion touching it
        self._body_owner: dict[str, Hashable] = {}  # digest -> the first deletion of it
        # A manifest not understood may hold any config or layer (never deleted by a plan,
        # so this holds for the whole run).
        self._opaque = False
        present = ((repo.name, m) for repo in inventory.repositories
                   for m in (*repo.manifests, *repo.last_known))
        for name, m in itertools.chain(present, newcomers):
            key = (name, m.digest)
            if key in self._manifests:
                continue
            self._manifests[key] = m
            self._opaque = self._opaque or _opaque(m)
            for digest, size in stored_blobs(m):
                self._references[digest] += 1
                if m.parsed or digest == m.digest:
                    self._sizes[digest] = size
                else:  # a schema 1 layer: size unknown, never over a known one
                    self._sizes.setdefault(digest, 0)
            for child in m.children:  # the collector marks the body of each child
                self._references[child] += 1

    def remove(self, key: Key, *, owner: Hashable | None) -> list[tuple[Hashable, int]]:
        """The manifest ``key`` is gone: (owner, bytes) for what that frees. ``owner`` is
        who deleted it; None when it was found already gone."""
        m = self._manifests.pop(key, None)
        if m is None:
            return []
        credits: dict[Hashable, int] = defaultdict(int)
        if owner is not None:
            self._body_owner.setdefault(m.digest, owner)
        # Who pays for a blob whose last reference a manifest found already gone held: an
        # earlier deletion of this run that held it too. While an unparsed manifest may hold
        # any config or layer, only a deletion of a manifest with that very body.
        earlier = self._body_owner if self._opaque else self._first_owner
        for digest, _ in stored_blobs(m):
            self._references[digest] -= 1
            if owner is not None:
                self._first_owner.setdefault(digest, owner)
            if self._references[digest] == 0 and (digest == m.digest or not self._opaque):
                paid = owner if owner is not None else earlier.get(digest)
                if paid is not None:
                    credits[paid] += self._sizes[digest]
        for child in m.children:
            self._references[child] -= 1
            if self._references[child] == 0:
                # Not the index's own blob: freed for this run only as a blob of a manifest
                # this run deleted (its size is then known from it): the body of that child,
                # or, while no manifest of unknown references stays (which may hold it), the
                # same digest as a config or layer.
                paid = earlier.get(child)
                if paid is not None:
                    credits[paid] += self._sizes[child]
        return list(credits.items())


def freed_bytes(inventory: Inventory, *, gone: Iterable[Key]) -> dict[Key, int]:
    """Bytes each manifest frees when all of ``gone`` are deleted, in that order: a blob
    shared by several of them is credited to the last one (it is freed only then).

    The total is the one a Ledger gives when ``gone`` is removed from it in order (a
    manifest listed twice goes at its first mention; one it does not hold frees nothing),
    found without counting every reference in the registry: a blob is freed exactly when no
    staying manifest references it (as its own blob, or as a child an index lists), and
    then the last deletion holding it as its own pays for it. So is each deletion's share,
    but for one case: a digest deleted in several repositories whose body an index's
    listing outlives is paid for here by the last of those deletions, by a Ledger by the
    first (tests/test_accounting.py checks totals).
    The planner asks this for every deletion of a plan, a million manifests at a time.
    """
    order = list(dict.fromkeys(gone))
    # What goes, by repository: one set lookup per manifest of the registry, no
    # (repository, digest) key built for each. As in a Ledger, a manifest listed twice in
    # a repository counts once, as first listed.
    going: dict[str, set[str]] = defaultdict(set)
    for repository, digest in order:
        going[repository].add(digest)
    held: dict[str, set[str]] = defaultdict(set)  # repository -> digests listed so far
    deleted: dict[str, dict[str, Manifest]] = defaultdict(dict)  # repository -> digest -> it
    staying: set[str] = set()  # blobs a manifest that is not deleted references
    opaque = False  # a manifest not understood stays: it may hold any config or layer
    sizes: dict[str, int] = {}  # a Ledger's sizes: the last listing of a blob tells
    for repo in inventory.repositories:
        gone_here = going.get(repo.name, ())
        mine = deleted[repo.name]
        seen = held[repo.name]
        for m in (*repo.manifests, *repo.last_known):
            if m.digest in seen:
                continue
            seen.add(m.digest)
            if m.digest in gone_here:
                mine[m.digest] = m
                sizes[m.digest] = m.size
                for b in m.blobs:
                    if m.parsed:
                        sizes[b.digest] = b.size
                    else:  # a schema 1 layer: size unknown, never over a known one
                        sizes.setdefault(b.digest, 0)
            else:
                # attrgetter, not a generator: this runs for every manifest that stays.
                staying.add(m.digest)
                staying.update(map(_DIGEST, m.blobs))
                if m.children:  # the collector marks the body of each child an index lists
                    staying.update(m.children)
                if not m.parsed and not m.blobs:  # _opaque, inlined: this runs for each
                    opaque = True
    out = dict.fromkeys(order, 0)
    credited: set[str] = set()
    for key in reversed(order):  # last first: the last deletion referencing a blob frees it
        m = deleted[key[0]].get(key[1])
        if m is None:
            continue
        freed = 0
        for digest in (m.digest, *(() if opaque else map(_DIGEST, m.blobs))):
            if digest not in staying and digest not in credited:
                credited.add(digest)
                freed += sizes[digest]
        out[key] = freed
    return out
