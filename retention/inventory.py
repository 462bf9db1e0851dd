"""What a registry holds, as the planner sees it: repositories, manifests, tags, blobs.

The inventory is plain data. The scanner builds it from a registry; ``retention inventory
--output json`` writes it and ``retention plan --inventory FILE`` reads it back, so policies
can be evaluated offline against a recorded registry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FORMAT_VERSION = 1

# A referrer tag is "sha256-<64 hex>" (the OCI fallback index) or that with a suffix
# (cosign's .sig, .att, .sbom, and whatever the next tool invents).
_REFERRER_TAG = re.compile(r"sha256-([0-9a-f]{64})(\..+)?")


def referrer_tag_subject(tag: str) -> str | None:
    """The subject digest a referrer tag points at, or None for an ordinary tag."""
    m = _REFERRER_TAG.fullmatch(tag)
    return f"sha256:{m.group(1)}" if m else None


def split_tags(tags: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(ordinary tags, referrer tags), each sorted."""
    ordinary, referrer = [], []
    for tag in tags:
        (referrer if referrer_tag_subject(tag) else ordinary).append(tag)
    return tuple(sorted(ordinary)), tuple(sorted(referrer))


@dataclass(frozen=True, slots=True)
class Blob:
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: str
    media_type: str
    size: int  # bytes of the manifest body, itself a blob in the registry's storage
    tags: tuple[str, ...] = ()  # ordinary tags
    referrer_tags: tuple[str, ...] = ()
    created: datetime | None = None  # image config `created`
    pushed: datetime | None = None  # push time, where the registry's API tells it (ACR)
    blobs: tuple[Blob, ...] = ()  # config and layers; children of an index are not blobs
    children: tuple[str, ...] = ()  # digests an index references
    subject: str | None = None  # OCI subject, or the digest named by a referrer tag
    artifact_type: str | None = None
    locked: bool = False  # the registry refuses to delete it (ACR deleteEnabled: false)
    parsed: bool = True  # False: schema 1 or malformed; never deleted
    # Unparsed, but a schema 1 manifest: it references layers only, never another manifest.
    schema1: bool = False
    # When retention first saw it without ordinary tags (from the state); None: not known,
    # which the planner reads as "just now", so the grace period protects it.
    untagged_since: datetime | None = None
    annotated: datetime | None = None  # the org.opencontainers.image.created annotation
    attestations: tuple[str, ...] = ()  # children that are BuildKit attestation manifests
    # When retention first saw the digest in this repository, from the state; None when this
    # run is the first to see it (or the state was lost): its first sight is then unknown.
    first_seen: datetime | None = None


@dataclass(frozen=True, slots=True)
class Repository:
    name: str
    manifests: tuple[Manifest, ...] = ()
    # Set when the repository could not be read completely. Nothing in it is deleted then:
    # a partial view could make an index's child look like an orphan.
    error: str | None = None
    # When it could not be read: the manifests last known there (from the state). They are
    # never planned; they still hold their blobs, so bytes shared with them are not freed.
    last_known: tuple[Manifest, ...] = ()
    # The registry refuses to delete the last tagged manifest of this repository (GHCR: the
    # last tagged version of a package): a plan keeps its newest tagged one.
    last_tagged_undeletable: bool = False


@dataclass(frozen=True, slots=True)
class Inventory:
    registry: str  # the configured name
    host: str  # host[:port], for allowlist entries that name a host
    repositories: tuple[Repository, ...]
    collected_at: datetime


def _time_to_json(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


def _time_from_json(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def manifest_to_json(m: Manifest) -> dict[str, Any]:
    return {
        "digest": m.digest,
        "media_type": m.media_type,
        "size": m.size,
        "tags": list(m.tags),
        "referrer_tags": list(m.referrer_tags),
        "created": _time_to_json(m.created),
        "pushed": _time_to_json(m.pushed),
        "blobs": [{"digest": b.digest, "size": b.size} for b in m.blobs],
        "children": list(m.children),
        "subject": m.subject,
        "artifact_type": m.artifact_type,
        "locked": m.locked,
        "parsed": m.parsed,
        "schema1": m.schema1,
        "untagged_since": _time_to_json(m.untagged_since),
        "annotated": _time_to_json(m.annotated),
        "attestations": list(m.attestations),
        "first_seen": _time_to_json(m.first_seen),
    }


def manifest_from_json(d: dict[str, Any]) -> Manifest:
    return Manifest(
        digest=d["digest"],
        media_type=d["media_type"],
        size=int(d["size"]),
        tags=tuple(d.get("tags", ())),
        referrer_tags=tuple(d.get("referrer_tags", ())),
        created=_time_from_json(d.get("created")),
        pushed=_time_from_json(d.get("pushed")),
        blobs=tuple(Blob(b["digest"], int(b["size"])) for b in d.get("blobs", ())),
        children=tuple(d.get("children", ())),
        subject=d.get("subject"),
        artifact_type=d.get("artifact_type"),
        locked=bool(d.get("locked", False)),
        parsed=bool(d.get("parsed", True)),
        schema1=bool(d.get("schema1", False)),
        untagged_since=_time_from_json(d.get("untagged_since")),
        annotated=_time_from_json(d.get("annotated")),
        attestations=tuple(d.get("attestations", ())),
        first_seen=_time_from_json(d.get("first_seen")),
    )


def inventory_to_json(inv: Inventory) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "registry": inv.registry,
        "host": inv.host,
        "collected_at": _time_to_json(inv.collected_at),
        "repositories": [
            {
                "name": r.name,
                "error": r.error,
                "manifests": [manifest_to_json(m) for m in r.manifests],
                "last_known": [manifest_to_json(m) for m in r.last_known],
                "last_tagged_undeletable": r.last_tagged_undeletable,
            }
            for r in inv.repositories
        ],
    }


def inventory_from_json(d: dict[str, Any]) -> Inventory:
    if d.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"unsupported inventory format_version {d.get('format_version')!r}; "
            f"expected {FORMAT_VERSION} (re-record it with this version of retention)"
        )
    return Inventory(
        registry=d["registry"],
        host=d.get("host", ""),
        collected_at=_time_from_json(d["collected_at"]) or datetime.now(UTC),
        repositories=tuple(
            Repository(
                name=r["name"],
                error=r.get("error"),
                manifests=tuple(manifest_from_json(m) for m in r.get("manifests", ())),
                last_known=tuple(manifest_from_json(m) for m in r.get("last_known", ())),
                last_tagged_undeletable=bool(r.get("last_tagged_undeletable", False)),
            )
            for r in d["repositories"]
        ),
    )
