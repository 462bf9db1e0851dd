"""Reads a registry into an Inventory: every repository, tag and manifest, children and
referrers included.

Facts about a digest (media type, size, blobs, children, subject, created) never change, so
they are cached by digest: a second scan of an unchanged registry asks only for tags and
their digests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

import structlog

from retention.errors import AuthenticationError, RegistryError
from retention.inventory import (
    Blob,
    Inventory,
    Manifest,
    Repository,
    referrer_tag_subject,
    split_tags,
)
from retention.names import is_repository
from retention.registry.acr import AcrApi
from retention.registry.client import FetchedManifest, RegistryClient
from retention.registry.ghcr import GhcrApi, GhcrClient
from retention.registry.mediatypes import (
    IMAGE_CONFIGS,
    ManifestFormatError,
    ParsedManifest,
    Schema1Manifest,
    config_created,
    parse_manifest,
    schema1_layers,
)

log = structlog.get_logger("retention.scanner")


@dataclass(frozen=True, slots=True)
class ManifestFacts:
    """What a digest's content says about it: immutable, so cacheable forever."""

    digest: str
    media_type: str
    size: int
    blobs: tuple[Blob, ...] = ()
    children: tuple[str, ...] = ()
    subject: str | None = None
    artifact_type: str | None = None
    created: datetime | None = None  # the image config's `created`
    parsed: bool = True
    schema1: bool = False  # unparsed, but schema 1: it references no other manifest
    # False when the image config was not read (on ACR, where the push time is used): a
    # registry that needs `created` reads it then.
    config_read: bool = True
    annotated: datetime | None = None  # the org.opencontainers.image.created annotation
    attestations: tuple[str, ...] = ()  # children that are BuildKit attestation manifests


class FactsCache(Protocol):
    def get_facts(self, digest: str) -> ManifestFacts | None: ...
    def put_facts(self, facts: ManifestFacts) -> None: ...


# A manifest as one read of a repository saw it: (digest, ordinary tags, referrer tags); and
# what the state knows of its times: (untagged since, first seen), None where not known.
SeenManifest = tuple[str, tuple[str, ...], tuple[str, ...]]
SeenTimes = tuple[datetime | None, datetime | None]


class Sightings(Protocol):
    """Where each complete read of a repository is recorded (the state database)."""

    def observe_repository(self, registry: str, repository: str,
                           seen: Iterable[SeenManifest], now: datetime
                           ) -> Mapping[str, SeenTimes]: ...


class MemoryCache:
    def __init__(self) -> None:
        self._facts: dict[str, ManifestFacts] = {}

    def get_facts(self, digest: str) -> ManifestFacts | None:
        return self._facts.get(digest)

    def put_facts(self, facts: ManifestFacts) -> None:
        self._facts[facts.digest] = facts


@dataclass(frozen=True, slots=True)
class ScanOptions:
    # Repositories scanned at once; each one's requests share the client's own limit.
    parallel_repositories: int = 8


def _untagged_from(repo: Repository, end: datetime) -> Repository:
    """``repo`` with the manifests this scan was the first to see untagged dated ``end``: an
    orphan seen for the first time in this run has been untagged for zero time when the plan
    is made (SPEC), however long the rest of the scan took after its repository was read."""
    if not any(not m.tags and m.untagged_since is None for m in repo.manifests):
        return repo
    return replace(repo, manifests=tuple(
        replace(m, untagged_since=end) if not m.tags and m.untagged_since is None else m
        for m in repo.manifests))


class Scanner:
    def __init__(
        self,
        client: RegistryClient,
        *,
        cache: FactsCache | None = None,
        known_digests: Callable[[str], Iterable[str]] | None = None,
        last_tags: Callable[[str], Mapping[str, str]] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        options: ScanOptions | None = None,
        sightings: Sightings | None = None,
        progress: Callable[[int, int], None] | None = None,
        known_repositories: Callable[[], Iterable[str]] | None = None,
    ):
        """``known_digests(repo)`` yields digests seen there before (from the state), so
        manifests that lost their last tag are still found on registries that cannot list
        untagged manifests. It also tells which repositories are new: those are read with
        one GET per tag. Without it, any repository may be in ``cache``, so each tag gets a
        HEAD first.

        ``last_tags(repo)``: tag -> digest as the last complete read saw them (the state).
        A tag there that the listing no longer shows is looked up before the manifest it
        named may count as untagged (see _dropped_tags).

        ``known_repositories()``: the repositories seen before (the state). One the catalog
        no longer lists but that still answers makes the catalog incomplete (distribution
        #4903 drops repositories while paging): it is kept whole, unreadable for the run.

        ``sightings``: each repository read completely is recorded there as soon as it is
        read (in the time the registry spends answering the others), and its manifests carry
        the times it knows (untagged since, first seen). Without it they carry none."""
        self._client = client
        self._sightings = sightings
        self._progress = progress  # (repositories read, of how many): for a terminal
        self._cache = cache or MemoryCache()
        self._known = known_digests or (lambda _repo: ())
        self._remembers = known_digests is not None
        self._last_tags = last_tags or (lambda _repo: {})
        self._known_repositories = known_repositories or (lambda: ())
        self._clock = clock
        self._options = options or ScanOptions()
        # ACR lists every manifest (untagged ones, referrers) with its push time and locks:
        # no tag-by-tag resolution, no referrers API and no config blobs are needed there.
        self._acr = AcrApi(client) if client.settings.type == "acr" else None
        # GHCR lists every version of a package (untagged ones, children, referrers) with
        # its push time, as ACR does; the bodies come from ghcr.io's OCI API.
        self._github = client.github if isinstance(client, GhcrClient) else None
        # Where the registry's API gives push times, no image config is read for `created`.
        self._push_times = self._acr is not None or self._github is not None

    async def scan(self) -> Inventory:
        """Scan every repository of the registry (or those its settings list).

        A repository that cannot be read completely comes back with ``error`` set (nothing
        is deleted there). Only a catalog refused with 401/403, or every repository refused
        for authentication, is a registry-wide AuthenticationError.
        """
        if self._acr is not None and not self._client.settings.repositories:
            names = await self._acr.catalog()
        else:
            names = await self._client.catalog()
        gate = asyncio.Semaphore(self._options.parallel_repositories)
        read = 0

        async def one(name: str) -> tuple[Repository, AuthenticationError | None]:
            nonlocal read
            async with gate:
                result = await self._scan_one(name)
            read += 1
            if self._progress is not None:
                self._progress(read, len(names))
            return result

        results = await asyncio.gather(*(one(n) for n in names))
        refused = [e for _, e in results if e is not None]
        if results and len(refused) == len(results):
            raise refused[0]  # the credentials, not one repository's permissions
        if self._acr is None and self._github is None and not self._client.settings.repositories:
            results.extend((r, None) for r in await self._dropped_repositories(names))
        settings = self._client.settings
        collected_at = self._clock()
        repositories = tuple(r for r, _ in results)
        if self._sightings is not None:
            repositories = tuple(_untagged_from(r, collected_at) for r in repositories)
        return Inventory(registry=settings.name, host=settings.host,
                         repositories=repositories, collected_at=collected_at)

    async def _dropped_repositories(self, listed: list[str]) -> list[Repository]:
        """Repositories seen before that the catalog no longer lists (one request each,
        none when nothing is missing): one that still answers is there, and the catalog
        that left it out is incomplete; it stays unread (kept whole, its blobs held by what
        was last known there). One the registry says is gone (NAME_UNKNOWN) was deleted."""
        missing = sorted(set(self._known_repositories()) - set(listed))
        out = []
        for name in missing:
            if not is_repository(name):
                continue  # never requested (see names.py); the state holds only read ones
            try:
                tags = await self._client.tags(name)
            except RegistryError as exc:
                out.append(Repository(name, error=f"left out of the catalog, and checking "
                                      f"whether it still exists failed: {exc}"))
                continue
            if tags:
                out.append(Repository(name, error=(
                    "left out of the registry's catalog, yet it still holds tags: the catalog "
                    "is incomplete (distribution#4903 drops repositories while paging), so "
                    "this repository is not read this run and nothing is deleted in it")))
        return out

    async def scan_repository(self, name: str) -> Repository:
        return (await self._scan_one(name))[0]

    async def _scan_one(self, name: str) -> tuple[Repository, AuthenticationError | None]:
        """The repository, or one carrying the error that made it unreadable; and the
        AuthenticationError when that was the cause (a refused scope, a 403)."""
        try:
            return await self._scan_repository(name), None
        except RegistryError as exc:
            refused = exc if isinstance(exc, AuthenticationError) else None
            log.warning("repository read failed", registry=self._client.settings.name,
                        repository=name, error=str(exc), access_denied=refused is not None)
            return Repository(name=name, error=str(exc)), refused

    async def _scan_repository(self, name: str) -> Repository:
        if self._acr is not None:
            return await self._scan_acr_repository(self._acr, name)
        if self._github is not None:
            return await self._scan_ghcr_repository(self._github, name)
        client = self._client
        tags = await client.tags(name)
        await self._dropped_tags(name, tags)
        # Bodies read by tag, by digest, until their facts are made (then dropped).
        bodies: dict[str, FetchedManifest] = {}
        tags_of: dict[str, list[str]] = {}
        known = set(self._known(name))
        if not self._remembers or known:
            # Seen before: most tags still point where they did, at digests whose facts
            # are cached, so a HEAD per tag is all it takes (and a GET only for what is new).
            heads = await asyncio.gather(*(client.head_manifest(name, t) for t in tags))
            digests = [h.digest if h is not None else None for h in heads]
        else:
            # Never seen: every manifest has to be read anyway. One GET per tag brings the
            # body and its digest in one answer, instead of a HEAD and then a GET.
            fetched = await asyncio.gather(*(client.get_manifest(name, t) for t in tags))
            digests = [f.digest if f is not None else None for f in fetched]
            bodies = {f.digest: f for f in fetched if f is not None}
        for tag, digest in zip(tags, digests, strict=True):
            if digest is not None:  # None: the tag vanished between listing and reading
                tags_of.setdefault(digest, []).append(tag)

        facts: dict[str, ManifestFacts] = {}
        gone: set[str] = set()
        # Digests the registry served in this scan: their cached facts need no check.
        confirmed = set(tags_of)
        # A referrer tag names its subject: that finds an image whose own tag moved on
        # while its signature stayed (it is an orphan now, and so is the signature).
        subjects = {referrer_tag_subject(t) for ts in tags_of.values() for t in ts}
        await self._resolve(name, set(tags_of) | (subjects - {None}), facts, gone, confirmed,
                            bodies=bodies)
        # Digests seen here before and reachable no more may be orphans now: a HEAD by
        # digest tells whether each still exists, without fetching it again.
        earlier = sorted(known - facts.keys() - gone)
        heads = await asyncio.gather(*(client.head_manifest(name, d) for d in earlier))
        alive = {d for d, h in zip(earlier, heads, strict=True) if h}
        gone.update(set(earlier) - alive)
        confirmed |= alive
        await self._resolve(name, alive, facts, gone, confirmed)

        return self._repository(name, facts, tags_of)

    async def _scan_acr_repository(self, acr: AcrApi, name: str) -> Repository:
        manifests, tags = await asyncio.gather(acr.manifests(name, missing_ok=True),
                                               acr.tags(name))
        listing = {m.digest: m for m in manifests}
        await self._dropped_tags(name, {t.name for t in tags}.union(
            *(m.tags for m in manifests)))
        locked_by_tag = {t.digest for t in tags if not t.delete_enabled}
        facts: dict[str, ManifestFacts] = {}
        await self._resolve(name, set(listing), facts, set(), set(listing), referrers=False)
        tags_of = {d: list(m.tags) for d, m in listing.items()}
        pushed = {d: m.created for d, m in listing.items()}
        # Locked when the manifest or any of its tags says deleteEnabled: false; a
        # manifest ACR did not list (a child) is not known to be deletable: locked.
        locked = {d for d in facts if d not in listing or not listing[d].delete_enabled
                  or d in locked_by_tag}
        return self._repository(name, facts, tags_of, pushed=pushed, locked=locked)

    async def _scan_ghcr_repository(self, github: GhcrApi, name: str) -> Repository:
        versions = await github.versions(name, missing_ok=True)
        listing = {v.digest: v for v in versions}
        await self._dropped_tags(name, {t for v in versions for t in v.tags})
        facts: dict[str, ManifestFacts] = {}
        await self._resolve(name, set(listing), facts, set(), set(listing), referrers=False)
        tags_of = {d: list(v.tags) for d, v in listing.items()}
        pushed = {d: v.created for d, v in listing.items()}
        repository = self._repository(name, facts, tags_of, pushed=pushed)
        # GitHub refuses to delete a package's last tagged version: the planner keeps one.
        return replace(repository, last_tagged_undeletable=True)

    async def _dropped_tags(self, name: str, listed: Iterable[str]) -> None:
        """Raise when a tag the last read saw is missing from this listing and still
        resolves: the listing is incomplete, and the manifest the tag names would look
        untagged, an orphan to delete. distribution 3.1.0 on S3 drops from tags/list a tag
        that another listed tag is a prefix of (``0.1.20`` beside ``0.1.2``,
        distribution/distribution#4891). Only the missing tags
        are looked up (a HEAD each); one that answers 404 was really removed."""
        missing = sorted(self._last_tags(name).keys() - set(listed))
        if not missing:
            return
        heads = await asyncio.gather(*(self._client.head_manifest(name, t) for t in missing))
        resolving = [t for t, h in zip(missing, heads, strict=True) if h is not None]
        if resolving:
            raise RegistryError(
                f"repository {name}: {left_out(resolving)}, so what looks untagged may not "
                "be; nothing is deleted here in this run", registry=self._client.settings.name)

    def _repository(self, name: str, facts: dict[str, ManifestFacts],
                    tags_of: dict[str, list[str]], *,
                    pushed: dict[str, datetime | None] | None = None,
                    locked: set[str] | None = None) -> Repository:
        seen = [(digest, *split_tags(tags_of.get(digest, ()))) for digest in sorted(facts)]
        times: Mapping[str, SeenTimes] = {}
        if self._sightings is not None:
            times = self._sightings.observe_repository(self._client.settings.name, name, seen,
                                                       self._clock())
        manifests = []
        for digest, ordinary, referrer in seen:
            fact = facts[digest]
            untagged_since, first_seen = times.get(digest, (None, None))
            subject = fact.subject
            if subject is None and referrer:
                subject = referrer_tag_subject(referrer[0])
            manifests.append(Manifest(
                digest=digest, media_type=fact.media_type, size=fact.size, tags=ordinary,
                referrer_tags=referrer, created=fact.created,
                pushed=(pushed or {}).get(digest), blobs=fact.blobs,
                children=fact.children, subject=subject, artifact_type=fact.artifact_type,
                locked=digest in (locked or ()), parsed=fact.parsed, schema1=fact.schema1,
                annotated=fact.annotated, attestations=fact.attestations,
                untagged_since=untagged_since, first_seen=first_seen,
            ))
        return Repository(name=name, manifests=tuple(manifests))

    async def _resolve(self, name: str, pending: set[str], facts: dict[str, ManifestFacts],
                       gone: set[str], confirmed: set[str], *, referrers: bool = True,
                       bodies: dict[str, FetchedManifest] | None = None) -> None:
        """Facts for ``pending`` and for everything they lead to: children and referrers.

        ``confirmed``: digests the registry served in this scan. Any other digest reached
        here (a child or subject named by cached facts, a referrer tag's subject) is used
        only once the registry confirms it still has it. ``bodies``: manifests already read
        (by tag), taken from it as they are used.
        """
        bodies = {} if bodies is None else bodies
        pending = pending - facts.keys() - gone
        while pending:
            batch = sorted(pending)
            results = await asyncio.gather(*(self._facts(name, d, confirmed, bodies.pop(d, None))
                                             for d in batch))
            pending = set()
            for digest, fact in zip(batch, results, strict=True):
                if fact is None:
                    gone.add(digest)
                    continue
                facts[digest] = fact
                pending.update(fact.children)
            # Known to have no referrers API (distribution 2.8): no call per digest.
            ask = referrers and self._client.has_referrers_api is not False
            found = await asyncio.gather(*(self._client.referrers(name, d) for d in batch
                                           if d in facts and ask))
            for digests in found:
                # The registry's referrers API lists what it holds now.
                confirmed.update(digests or ())
                pending.update(digests or ())
            pending -= facts.keys() | gone

    async def _facts(self, repository: str, digest: str, confirmed: set[str],
                     fetched: FetchedManifest | None = None) -> ManifestFacts | None:
        cached = self._cache.get_facts(digest)
        if cached is not None and (cached.config_read or self._push_times):
            # Facts are immutable, existence is not: someone may have deleted the digest
            # since it was cached. A HEAD is cheap; a resurrected manifest would be
            # "deleted" again and its bytes counted as reclaimed.
            if digest in confirmed or \
                    await self._client.head_manifest(repository, digest) is not None:
                return cached
            return None
        if fetched is None:
            fetched = await self._client.get_manifest(repository, digest)
        if fetched is None:
            return None
        try:
            parsed = parse_manifest(fetched.body, fetched.media_type)
        except ManifestFormatError as exc:
            log.warning("manifest not understood", registry=self._client.settings.name,
                        repository=repository, digest=digest, error=str(exc))
            facts = unparsed_facts(digest, fetched, schema1=isinstance(exc, Schema1Manifest))
            self._cache.put_facts(facts)
            return facts
        created = None
        if parsed.config is not None and parsed.config_media_type in IMAGE_CONFIGS \
                and not self._push_times:
            body = await self._client.get_blob(repository, parsed.config.digest)
            created = config_created(body) if body is not None else None
        facts = replace(parsed_facts(digest, fetched, parsed), created=created,
                        config_read=not self._push_times)
        self._cache.put_facts(facts)
        return facts


def left_out(tags: list[str]) -> str:
    """Why a listing that leaves out ``tags``, which still resolve, is not trusted."""
    more = f" (and {len(tags) - 1} more)" if len(tags) > 1 else ""
    return (f"the tag listing does not show tag {tags[0]!r}{more}, which still resolves: "
            "the listing is incomplete")


def unparsed_facts(digest: str, fetched: FetchedManifest, *, schema1: bool = False
                   ) -> ManifestFacts:
    """The facts of a manifest retention does not parse (the planner protects it). A schema
    1 manifest's layers are what the garbage collector marks for it: known, they are its
    references (sizes unknown: 0, never taken as a blob's size)."""
    layers = schema1_layers(fetched.body) or ()
    return ManifestFacts(digest, fetched.media_type or "unknown", len(fetched.body),
                         parsed=False, blobs=tuple(Blob(b, 0) for b in layers),
                         schema1=schema1)


def parsed_facts(digest: str, fetched: FetchedManifest,
                 parsed: ParsedManifest) -> ManifestFacts:
    """What a parsed manifest's own bytes say (not its config's `created`): its blobs with
    the bytes the registry stores for them (a foreign layer stores none)."""
    return ManifestFacts(
        digest=digest, media_type=parsed.media_type, size=len(fetched.body),
        blobs=parsed.stored_blobs(), children=tuple(c.digest for c in parsed.children),
        subject=parsed.subject, artifact_type=parsed.artifact_type,
        annotated=parsed.created_annotation, attestations=parsed.attestations,
    )


def body_facts(digest: str, fetched: FetchedManifest) -> ManifestFacts:
    """A manifest's facts from its bytes alone (no `created`: that is in its config)."""
    try:
        parsed = parse_manifest(fetched.body, fetched.media_type)
    except ManifestFormatError as exc:
        return unparsed_facts(digest, fetched, schema1=isinstance(exc, Schema1Manifest))
    return parsed_facts(digest, fetched, parsed)
