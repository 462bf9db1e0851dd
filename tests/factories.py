"""Small builders for inventories and plans, so planner tests read like the scenario."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from retention.allowlist import Allowlist, parse_entry
from retention.inventory import Blob, Inventory, Manifest, Repository
from retention.planner import Options, Plan, plan
from retention.policy import policies_from_text

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


_NAMES: dict[str, str] = {}  # digest -> the name a test gave it


def dg(name: str) -> str:
    digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    _NAMES[digest] = name
    return digest


def name_of(digest: str) -> str:
    return _NAMES.get(digest, digest)


def man(
    name: str,
    *tags: str,
    days: float | None = 30.0,
    children: tuple[str, ...] = (),
    subject: str | None = None,
    locked: bool = False,
    parsed: bool = True,
    untagged_days: float | None = 365.0,
    layers: tuple[tuple[str, int], ...] | None = None,
    created: datetime | None = None,
    pushed: datetime | None = None,
    referrer_tags: tuple[str, ...] = (),
) -> Manifest:
    """A manifest named ``name`` (its digest is derived from the name), ``days`` old."""
    if created is None and days is not None and not children:
        created = NOW - timedelta(days=days)
    blobs = tuple(Blob(dg(b), s) for b, s in (layers if layers is not None else
                                               ((f"{name}-layer", 1000),)))
    return Manifest(
        digest=dg(name),
        media_type=OCI_INDEX if children else OCI_MANIFEST,
        size=100,
        tags=tuple(sorted(tags)),
        referrer_tags=referrer_tags,
        created=created,
        pushed=pushed,
        blobs=() if children else blobs,
        children=tuple(dg(c) for c in children),
        subject=dg(subject) if subject else None,
        locked=locked,
        parsed=parsed,
        untagged_since=(NOW - timedelta(days=untagged_days)
                        if untagged_days is not None and not tags else None),
    )


def inv(*manifests: Manifest, repo: str = "ci/web", error: str | None = None,
        more: tuple[Repository, ...] = ()) -> Inventory:
    return Inventory(registry="main", host="registry.test:5000",
                     repositories=(Repository(repo, tuple(manifests), error), *more),
                     collected_at=NOW)


def policy(text: str):
    return policies_from_text(text, registries=["main"])


def make_plan(policy_text: str, inventory: Inventory, *, grace_hours: float = 0,
              pins: tuple[str, ...] = (), max_deletions: int = 1000,
              now: datetime = NOW) -> Plan:
    allowlist = Allowlist.of(parse_entry(p) for p in pins)
    options = Options(untagged_grace=timedelta(hours=grace_hours),
                      max_deletions=max_deletions, allowlist=allowlist)
    return plan(inventory, policy(policy_text), now=now, options=options)


def deleted(p: Plan) -> set[str]:
    return {name_of(a.digest) for pp in p.policies if not pp.aborted for a in pp.actions}


def protected(p: Plan) -> dict[str, str]:
    return {name_of(d.digest): d.reason for pp in p.policies for d in pp.protected}


def kept(p: Plan) -> set[str]:
    return {name_of(d.digest) for pp in p.policies for d in pp.kept}
