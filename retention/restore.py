"""Restore: put back manifests retention deleted, from the journal.

Before every DELETE the executor journals the manifest's exact bytes; on distribution (and
most registries) a deleted manifest's blobs stay until the garbage collector runs, so
re-pushing those bytes gives back the very same digest. This module chooses what to put back
and in which order; the decisions (``select``, ``decide``, ``push_order``) are pure, the
``Restorer`` does the I/O.

Nothing is half-restored: a manifest is pushed only when every blob it references is still
in the repository, every child of an index and the subject of a referrer is there or is
pushed first, and a child is not pushed alone when the index it was deleted with cannot come
back. A tag is put back only where it is absent: a tag that now points elsewhere was moved
by someone on purpose, and is reported (``tag-moved``), never moved back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from retention.config import RegistrySettings
from retention.durations import format_duration
from retention.errors import RegistryError, UsageError
from retention.inventory import referrer_tag_subject
from retention.names import is_digest, is_repository, is_tag, not_canonical
from retention.registry.client import RegistryClient
from retention.registry.ghcr import RESTORE_DAYS, GhcrClient, GhcrVersion
from retention.registry.mediatypes import ManifestFormatError, parse_manifest
from retention.report import columns, human_age, tags_text
from retention.state import JournalEntry, State

log = structlog.get_logger("retention.restore")

RESTORED, TAG_MOVED, NOT_RESTORABLE, PLANNED, FAILED = (
    "restored", "tag-moved", "not-restorable", "planned", "failed")
STATUSES = (RESTORED, TAG_MOVED, NOT_RESTORABLE, PLANNED, FAILED)

Key = tuple[str, str, str]  # (registry, repository, digest)


@dataclass(frozen=True, slots=True)
class Item:
    """One journaled deletion considered for restore, with what its body references."""

    entry: JournalEntry
    children: tuple[str, ...] = ()  # an index's manifests
    subjects: tuple[str, ...] = ()  # the OCI subject, and the digest a referrer tag names
    blobs: tuple[str, ...] = ()  # config and layers the registry must hold (not foreign ones)
    unparsable: str | None = None
    named: bool = False  # asked for by --digest (not only pulled in with something else)

    @property
    def key(self) -> Key:
        return _key(self.entry)

    def needs(self) -> list[tuple[str, str]]:
        """(kind, digest) of every manifest that must be there before this one."""
        return [("child", c) for c in self.children] + [("subject", s) for s in self.subjects]


@dataclass(frozen=True, slots=True)
class Result:
    entry: JournalEntry
    status: str
    detail: str
    # When its hold ends (restored_hold after the restore): until then every policy leaves
    # it (`restored`). None: not restored.
    held_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class RestoreReport:
    dry_run: bool
    results: tuple[Result, ...]
    hold: timedelta = timedelta(days=7)  # restored_hold

    @property
    def failed(self) -> bool:
        """Something could not be put back (a manifest, or a tag that moved)."""
        return any(r.status in (NOT_RESTORABLE, FAILED, TAG_MOVED) for r in self.results)


def _key(entry: JournalEntry) -> Key:
    return (entry.registry, entry.repository, entry.digest)


def _short(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}"


# ---------------------------------------------------------------------------------------
# The decisions: pure.


def item_of(entry: JournalEntry, *, named: bool = False) -> Item:
    try:
        parsed = parse_manifest(entry.body, entry.media_type)
    except ManifestFormatError as exc:
        return Item(entry, unparsable=str(exc), named=named)
    subjects = {parsed.subject} if parsed.subject else set()
    subjects.update(s for t in entry.tags if (s := referrer_tag_subject(t)) is not None)
    subjects.discard(entry.digest)
    return Item(entry, tuple(dict.fromkeys(c.digest for c in parsed.children)),
                tuple(sorted(subjects)), parsed.required_blobs(), None, named)


def select(chosen: Sequence[JournalEntry], pool: Iterable[JournalEntry], *,
           named: Collection[str] = ()) -> dict[Key, Item]:
    """The chosen deletions and, from ``pool`` (the journal of their repositories), what
    was deleted with them: an index's children, a referrer's subject, a subject's
    referrers. Restoring an image restores its signatures and its platforms."""
    everything = {_key(e): item_of(e, named=e.digest in named) for e in pool}
    everything.update({_key(e): item_of(e, named=e.digest in named) for e in chosen})
    referrers: dict[Key, list[Key]] = {}
    for key, item in everything.items():
        for subject in item.subjects:
            referrers.setdefault((key[0], key[1], subject), []).append(key)
    items: dict[Key, Item] = {}
    queue = [_key(e) for e in chosen]
    while queue:
        key = queue.pop(0)
        if key in items:
            continue
        items[key] = item = everything[key]
        linked = [(key[0], key[1], d) for _, d in item.needs()] + referrers.get(key, [])
        queue.extend(k for k in linked if k in everything and k not in items)
    return dict(sorted(items.items(), key=lambda kv: kv[1].entry.id))


def decide(items: Mapping[Key, Item], present: Mapping[Key, bool],
           missing: Mapping[Key, Sequence[str]], unusable: Mapping[Key, str]) -> dict[Key, str]:
    """Why each item that is not in the registry cannot be restored (key -> a sentence).

    ``present``: whether each item, and each manifest an item needs, is in the registry
    now; ``missing``: the blobs of an item the registry no longer has; ``unusable``: items
    that cannot be checked or pushed at all. An item absent from the answer is restorable
    (or already there)."""
    bad: dict[Key, str] = dict(unusable)
    for key, item in items.items():
        if key in bad or present.get(key):
            continue
        if item.unparsable is not None:
            bad[key] = f"the journaled manifest cannot be parsed: {item.unparsable}"
        elif missing.get(key):
            blob = missing[key][0]
            more = f" (and {len(missing[key]) - 1} more)" if len(missing[key]) > 1 else ""
            bad[key] = (f"blob {blob}{more} is no longer in the repository (the registry's "
                        "garbage collector removed it)")
    parents: dict[Key, list[Key]] = {}
    for key, item in items.items():
        for child in item.children:
            parents.setdefault((key[0], key[1], child), []).append(key)
    changed = True
    while changed:  # a fixed point: only ever adds reasons, so it ends
        changed = False
        for key, item in items.items():
            if key in bad or present.get(key):
                continue
            why = None
            for kind, digest in item.needs():
                need = (key[0], key[1], digest)
                if need in items and need in bad:
                    why = f"{kind} {_short(digest)} is not restorable"
                elif need not in items and not present.get(need):
                    why = f"{kind} {_short(digest)} is gone and not in the journal"
                if why:
                    break
            mine = parents.get(key, [])
            if why is None and not item.named and mine and all(p in bad for p in mine):
                # It went with its index and comes back only with it: alone it would be an
                # orphan nobody asked for.
                why = f"index {_short(mine[0][2])}, which it was deleted with, is not restorable"
            if why is not None:
                bad[key] = why
                changed = True
    return bad


def refusal(entry: JournalEntry | None, registry: str, repository: str,
            settings: RegistrySettings | None) -> str | None:
    """Why nothing may be pushed where a journal row leads (a sentence), or None.

    The journal is a file on disk: a row edited (or written by another version) could name
    a registry that is not configured, a repository name a URL normalises into another
    repository (``ci/./app``), or a repository the registry's explicit list leaves out; or
    carry a tag or digest outside its grammar, which would go into a PUT's URL."""
    if settings is None:
        return f"registry {registry} is not in the configuration"
    if not is_repository(repository):
        return f"{not_canonical(repository)}: nothing is pushed there"
    if settings.repositories and repository not in settings.repositories:
        return (f"repository {repository} is not in registry {registry}'s repositories in "
                "the configuration: nothing is pushed there")
    if entry is None:
        return None
    if not is_digest(entry.digest):
        return f"the journal names {entry.digest[:200]!r}, which is not a digest"
    bad = next((t for t in entry.tags if not is_tag(t)), None)
    if bad is not None:
        return (f"the journal names tag {bad[:200]!r}, which is not a tag (OCI grammar): "
                "nothing is pushed")
    return None


def push_order(items: Mapping[Key, Item], keys: Iterable[Key]) -> list[Key]:
    """``keys`` ordered so that children come before their index and subjects before their
    referrers; otherwise in journal order."""
    wanted = set(keys)
    order: list[Key] = []
    seen: set[Key] = set()

    def visit(key: Key, path: frozenset[Key]) -> None:
        if key in seen or key in path:
            return
        for _, digest in items[key].needs():
            need = (key[0], key[1], digest)
            if need in wanted:
                visit(need, path | {key})
        seen.add(key)
        order.append(key)

    for key in items:
        if key in wanted:
            visit(key, frozenset())
    return order


# ---------------------------------------------------------------------------------------
# The I/O.


@dataclass(slots=True)
class _Checked:
    present: dict[Key, bool]
    missing: dict[Key, list[str]]
    unusable: dict[Key, str]
    errors: dict[Key, str]  # a registry error while checking: failed, not "not restorable"
    # GHCR: the deleted version GitHub can restore (within 30 days), which no blob check
    # concerns: GitHub's own restore puts it back, not a push of its bytes.
    github: dict[Key, GhcrVersion] = field(default_factory=dict)


class Restorer:
    def __init__(self, clients: Mapping[str, RegistryClient], *, state: State,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 hold: timedelta = timedelta(days=7)):
        self._clients = clients
        self._state = state
        self._clock = clock
        self._hold = hold  # restored_hold

    async def apply(self, items: Mapping[Key, Item], *, dry_run: bool) -> RestoreReport:
        checked = await self._check(items)
        bad = decide(items, checked.present, checked.missing,
                     {**checked.unusable, **checked.errors})
        results: dict[Key, Result] = {}
        for key, why in bad.items():
            if key in items:
                status = FAILED if key in checked.errors else NOT_RESTORABLE
                results[key] = Result(items[key].entry, status, why)
        good = push_order(items, (k for k in items if k not in bad))
        if dry_run:
            for key in good:
                item = items[key]
                try:
                    moved = await self._moved_tags(item)
                except RegistryError as exc:
                    results[key] = Result(item.entry, FAILED, f"could not read its tags: {exc}")
                    continue
                what = "already present" if checked.present.get(key) else \
                    f"would restore version {checked.github[key].id} (GitHub's restore)" \
                    if key in checked.github else "would push it"
                tags = [t for t in item.entry.tags if t not in moved]
                detail = what + (f", then tags {', '.join(tags)}" if tags else "")
                detail += "".join(f"; tag {t} now points to {_short(d)}: would be left alone"
                                  for t, d in moved.items())
                results[key] = Result(item.entry, PLANNED, detail)
        else:
            await self._push(items, good, checked.present, results, checked.github)
        ordered = tuple(results[k] for k in items if k in results)
        for r in ordered:
            log.info("manifest restored" if r.status in (RESTORED, TAG_MOVED) else
                     f"manifest {r.status}", registry=r.entry.registry,
                     repository=r.entry.repository, digest=r.entry.digest,
                     tags=list(r.entry.tags), policy=r.entry.policy, status=r.status,
                     detail=r.detail, dry_run=dry_run)
        return RestoreReport(dry_run, ordered, self._hold)

    async def _check(self, items: Mapping[Key, Item]) -> _Checked:
        """Is each item (and what it needs) in the registry now; are its blobs. An item whose
        journal row may not lead a push (see ``refusal``) is not asked about at all."""
        checked = _Checked({}, {}, {}, {})
        needs = {(k[0], k[1], d) for k, item in items.items() for _, d in item.needs()}
        for key in [*items, *sorted(needs - items.keys())]:
            client = self._clients.get(key[0])
            why = refusal(items[key].entry if key in items else None, key[0], key[1],
                          client.settings if client is not None else None)
            if client is None or why is not None:
                checked.present[key] = False
                if key in items and why is not None:
                    checked.unusable[key] = why
                continue
            try:
                checked.present[key] = await client.head_manifest(key[1], key[2]) is not None
                item = items.get(key)
                if item is not None and not checked.present[key] and \
                        isinstance(client, GhcrClient):
                    version = await client.github.deleted_version(key[1], key[2])
                    if version is not None and (version.deleted is None or version.deleted
                                                > self._clock() - timedelta(days=RESTORE_DAYS)):
                        checked.github[key] = version
                        continue
                if item is not None and not checked.present[key]:
                    found = await asyncio.gather(*(client.blob_exists(key[1], b)
                                                   for b in item.blobs))
                    checked.missing[key] = [b for b, ok in zip(item.blobs, found, strict=True)
                                            if not ok]
            except RegistryError as exc:
                checked.present[key] = False
                if key in items:
                    checked.errors[key] = f"could not check it: {exc}"
        return checked

    async def _moved_tags(self, item: Item) -> dict[str, str]:
        """Tags of the entry that now point to another manifest: tag -> that digest."""
        client = self._clients[item.entry.registry]
        moved = {}
        for tag in item.entry.tags:
            head = await client.head_manifest(item.entry.repository, tag)
            if head is not None and head.digest != item.entry.digest:
                moved[tag] = head.digest
        return moved

    async def _push(self, items: Mapping[Key, Item], order: list[Key],
                    present: Mapping[Key, bool], results: dict[Key, Result],
                    github: Mapping[Key, GhcrVersion]) -> None:
        """Manifests first (in ``order``), then their tags; each restore journaled before
        its first write and closed after its last, so a restore killed half-way is taken
        up again by the next one."""
        there = {k for k, ok in present.items() if ok}
        journaled: dict[Key, int] = {}
        pushed: set[Key] = set()
        for key in order:
            item, entry = items[key], items[key].entry
            journaled[key] = self._state.restore_begin(entry, at=self._clock())
            if key in there:
                continue
            absent = [f"{kind} {_short(d)}" for kind, d in item.needs()
                      if (key[0], key[1], d) not in there]
            if absent:
                self._end(journaled[key], results, Result(
                    entry, FAILED, f"not pushed: {', '.join(absent)} could not be put back"))
                continue
            client = self._clients[entry.registry]
            try:
                if key in github and isinstance(client, GhcrClient):
                    digest = await self._github_restore(client, entry, github[key])
                else:
                    digest = await client.put_manifest(entry.repository, entry.digest,
                                                       entry.body, entry.media_type)
            except RegistryError as exc:
                self._end(journaled[key], results, Result(entry, FAILED, str(exc)))
                continue
            if digest != entry.digest:
                self._end(journaled[key], results, Result(
                    entry, FAILED, f"the journaled bytes hash to {digest}, not {entry.digest}"))
                continue
            there.add(key)
            pushed.add(key)
        # An index whose push failed leaves the children pushed for it as orphans: they are
        # there, but not restored (no tags, no `restored` mark), and the restore fails.
        parents_of: dict[Key, list[Key]] = {}
        for k, item in items.items():
            for child in item.children:
                parents_of.setdefault((k[0], k[1], child), []).append(k)
        for key in order:
            if key in results:
                continue
            entry = items[key].entry
            failed = [p for p in parents_of.get(key, ())
                      if results.get(p) is not None and results[p].status == FAILED
                      and not items[key].named]
            if key in pushed and failed:
                self._end(journaled[key], results, Result(entry, FAILED, (
                    f"pushed, but its index {_short(failed[0][2])} could not be put back: "
                    "it is an orphan again, and its tags were not restored")))
                continue
            by_github = key in github and key in pushed
            try:
                back, moved, missing = (await self._github_tags(items[key]) if by_github
                                        else (*await self._put_tags(items[key]), []))
            except RegistryError as exc:
                self._end(journaled[key], results, Result(
                    entry, FAILED, f"manifest back, but its tags are not: {exc}"))
                continue
            detail = (f"version {github[key].id} restored by GitHub" if by_github else
                      "pushed" if key in pushed else "already present")
            if back:
                detail += f"; tags {'back' if by_github else 'put back'}: {', '.join(back)}"
            detail += "".join(f"; tag {t} now points to {_short(d)}: left alone"
                              for t, d in moved.items())
            detail += "".join(f"; tag {t} is missing: GitHub did not restore it" for t in missing)
            status = FAILED if missing else TAG_MOVED if moved else RESTORED
            self._end(journaled[key], results, Result(entry, status, detail))

    async def _github_restore(self, client: GhcrClient, entry: JournalEntry,
                              version: GhcrVersion) -> str:
        """GitHub's restore of the deleted version, then ghcr.io must serve the digest
        again: the digest it serves is returned (checked like a push's)."""
        await client.github.restore(entry.repository, version)
        head = await client.head_manifest(entry.repository, entry.digest)
        if head is None:
            raise RegistryError(f"GitHub restored version {version.id}, but ghcr.io does not "
                                f"serve {entry.digest}", registry=client.settings.name)
        return head.digest

    async def _github_tags(self, item: Item) -> tuple[list[str], dict[str, str], list[str]]:
        """After GitHub's restore, each journaled tag: back, pointing elsewhere (left
        there), or missing. Nothing is pushed."""
        client, entry = self._clients[item.entry.registry], item.entry
        back: list[str] = []
        moved: dict[str, str] = {}
        missing: list[str] = []
        for tag in entry.tags:
            head = await client.head_manifest(entry.repository, tag)
            if head is None:
                missing.append(tag)
            elif head.digest != entry.digest:
                moved[tag] = head.digest
            else:
                back.append(tag)
        return back, moved, missing

    async def _put_tags(self, item: Item) -> tuple[list[str], dict[str, str]]:
        client, entry = self._clients[item.entry.registry], item.entry
        back: list[str] = []
        moved: dict[str, str] = {}
        for tag in entry.tags:
            head = await client.head_manifest(entry.repository, tag)
            if head is None:
                await client.put_manifest(entry.repository, tag, entry.body, entry.media_type)
                back.append(tag)
            elif head.digest != entry.digest:
                moved[tag] = head.digest
        return back, moved

    def _end(self, restore: int, results: dict[Key, Result], result: Result) -> None:
        at = self._clock()
        if result.status in (RESTORED, TAG_MOVED):
            result = replace(result, held_until=at + self._hold)
        results[_key(result.entry)] = result
        self._state.restore_end(restore, status=result.status, detail=result.detail, at=at)


async def restore(clients: Mapping[str, RegistryClient], state: State, *,
                  since: timedelta | None, digests: Collection[str] = (),
                  policies: Collection[str] = (), dry_run: bool,
                  clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                  hold: timedelta = timedelta(days=7)) -> RestoreReport:
    """Select from the journal (deleted within ``since``, or one of ``digests``; only
    ``policies``' deletions when given) and put back what can be, each held (``restored``)
    for ``hold`` (restored_hold)."""
    items = plan_restore(state, since=since, digests=digests, policies=policies, now=clock())
    return await Restorer(clients, state=state, clock=clock, hold=hold).apply(
        items, dry_run=dry_run)


_DIGEST_PREFIX = re.compile(r"(?:sha256:)?([0-9a-f]{12,64})")
SHORTEST_PREFIX = 12  # hex digits, as the tables print a digest


def resolve_digests(state: State, texts: Iterable[str]) -> list[str]:
    """The journaled digest each of ``texts`` names: a whole digest or a prefix of at least
    12 hex digits, with or without ``sha256:``, as the tables print them. A text that is
    neither, that names no journaled digest or more than one is a UsageError."""
    digests: list[str] = []
    for text in texts:
        match = _DIGEST_PREFIX.fullmatch(text)
        if match is None:
            raise UsageError(f"--digest takes a digest, sha256:<64 hex>, or the first "
                             f"{SHORTEST_PREFIX} or more of its hex digits as the tables "
                             f"print them, not {text!r}")
        found = state.journaled_digests(f"sha256:{match.group(1)}")
        if not found:
            raise UsageError(f"--digest {text}: the journal holds no deleted digest that "
                             "starts so (deletions older than journal_keep are forgotten)")
        if len(found) > 1:
            raise UsageError(f"--digest {text} is ambiguous: it starts {len(found)} journaled "
                             f"digests ({', '.join(_short(d) for d in found[:3])}"
                             f"{', ...' if len(found) > 3 else ''}); give more digits")
        digests.append(found[0])
    return list(dict.fromkeys(digests))


def check_policies(state: State, names: Iterable[str], configured: Iterable[str]) -> None:
    """A UsageError for a --policy that neither the configuration nor the journal names (a
    policy removed since it deleted something is still one to restore from)."""
    known = set(configured) | state.journal_policies()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"--policy: no policy named {unknown[0]!r} in the configuration or "
                         f"the journal; known: {', '.join(sorted(known)) or 'none'}")


def plan_restore(state: State, *, since: timedelta | None, digests: Collection[str],
                 policies: Collection[str], now: datetime) -> dict[Key, Item]:
    chosen = state.deletions_to_restore(since=now - since if since is not None else None,
                                        digests=digests, policies=policies)
    repositories = sorted({(e.registry, e.repository) for e in chosen})
    pool = state.deletions_to_restore(repositories=repositories) if repositories else []
    return select(chosen, pool, named=set(digests))


# ---------------------------------------------------------------------------------------
# Output, as `plan` and `run` print theirs.


def _entry_json(r: Result) -> dict[str, Any]:
    e = r.entry
    return {"registry": e.registry, "repository": e.repository, "digest": e.digest,
            "tags": list(e.tags), "media_type": e.media_type, "policy": e.policy,
            "deleted_at": e.at.isoformat(), "status": r.status, "detail": r.detail,
            "held_until": r.held_until.isoformat() if r.held_until else None}


def summary(report: RestoreReport) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for r in report.results:
        counts[r.status] += 1
    return {"selected": len(report.results), "restored": counts[RESTORED],
            "tag_moved": counts[TAG_MOVED], "not_restorable": counts[NOT_RESTORABLE],
            "failed": counts[FAILED], "planned": counts[PLANNED]}


def to_json(report: RestoreReport) -> dict[str, Any]:
    return {"mode": "dry-run" if report.dry_run else "restore",
            "entries": [_entry_json(r) for r in report.results],
            "summary": summary(report), "restored_hold": format_duration(report.hold)}


def hold_note(report: RestoreReport) -> str | None:
    """What protects a restored manifest, until when, and how to keep it for good."""
    ends = [r.held_until for r in report.results if r.held_until is not None]
    hold = format_duration(report.hold)
    for_good = ("To keep one for good, pin its digest in the allowlist or add a keep rule "
                "that matches it; after the hold it is decided by the policies again, by its "
                "original time.")
    if report.dry_run and any(r.status == PLANNED for r in report.results):
        return (f"A restore holds each manifest it puts back for restored_hold ({hold}): "
                f"every policy leaves it (`restored`) until then. {for_good}")
    if not ends:
        return None
    return (f"Restored manifests are held for restored_hold ({hold}): every policy leaves "
            f"them (`restored`) until {min(ends).astimezone(UTC):%Y-%m-%d %H:%M:%SZ}; plans "
            f"and dry runs do not use the hold up. {for_good}")


def to_table(report: RestoreReport, *, now: datetime) -> str:
    header = ("REGISTRY", "REPOSITORY", "DIGEST", "TAGS", "POLICY", "DELETED", "STATUS",
              "DETAIL")
    rows = []
    for r in report.results:
        e = r.entry
        rows.append((e.registry, e.repository, _short(e.digest).split(":", 1)[1],
                     tags_text(e.tags), e.policy, f"{human_age(e.at, now)} ago", r.status,
                     r.detail))
    out = [f"mode: {'dry-run' if report.dry_run else 'restore'}",
           *(columns(header, rows) or ["nothing in the journal matches: nothing to restore"])]
    s = summary(report)
    out.append("")
    out.append(f"total: {s['selected']} selected, {s['restored']} restored, "
               f"{s['tag_moved']} restored with a tag left alone, "
               f"{s['not_restorable']} not restorable, {s['failed']} failed"
               + (f", {s['planned']} planned" if report.dry_run else ""))
    if (note := hold_note(report)) is not None:
        out.append(note)
    return "\n".join(out) + "\n"

