"""What deleting manifests frees: the bytes a registry's garbage collector reclaims.

A blob (a manifest body, an image config, a layer) is freed only when no manifest left
anywhere in the registry references it. Blobs are shared across repositories, so survival is
decided registry-wide, and a repository that could not be read still holds what was last
known there. The planner uses this for what a plan would free; the executor for what a run
really freed, from the manifests that are really gone.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from retention.inventory import Inventory, Manifest

Key = tuple[str, str]  # (repository, digest)


def _blobs(m: Manifest) -> Iterable[tuple[str, int]]:
    yield m.digest, m.size  # the manifest body is a blob too
    for b in m.blobs:
        yield b.digest, b.size


def freed_bytes(inventory: Inventory, *, gone: Collection[Key],
                credited: Iterable[Key]) -> dict[Key, int]:
    """Bytes each manifest in ``credited`` frees, in that order, each blob counted once.

    ``gone`` is every manifest that is no longer there (deleted by this run, or found
    already gone); ``credited`` those whose deletion is to be credited (a manifest someone
    else deleted earlier frees nothing for us).
    """
    surviving: set[str] = set()
    present: dict[Key, Manifest] = {}
    for repo in inventory.repositories:
        for m in (*repo.manifests, *repo.last_known):
            key = (repo.name, m.digest)
            if key in gone:
                present[key] = m
            else:
                surviving.update(d for d, _ in _blobs(m))
    counted: set[str] = set()
    out: dict[Key, int] = {}
    for key in credited:
        freed = 0
        m = present.get(key)
        for digest, size in _blobs(m) if m is not None else ():
            if digest in surviving or digest in counted:
                continue
            counted.add(digest)
            freed += size
        out[key] = freed
    return out
