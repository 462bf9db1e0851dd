"""The executor: applies a plan to registries, one gate before every write.

A plan is true when it is made; the executor deletes one digest at a time, and between the
plan and each DELETE a tag may move, a parent's DELETE may fail, another policy may hold
something back. So the executor keeps a live view of what is gone, and the gate in
``_delete`` decides whether a DELETE may be sent *now*: the registry still accepts deletes,
the daemon is not stopping, every manifest of the repository that references the digest (an
index listing it, its subject, one pushed since the plan) is gone, and, last of all, its
tags, read from the registry, are exactly those the plan saw. That read is the last check,
and the DELETE is not sent later than ``confirm_window`` after the read began (the client
refuses to send it past that moment, wherever it waited); past it, the tags are read again.
Before the gate the manifest's exact bytes are read, and before the tag read they are
journaled (committed), so ``retention restore`` can put back anything that went. The
bytes each deletion freed are settled when the run's deletions are over (``_settle``), with
the manifests pushed meanwhile, which the confirmations saw, holding their blobs.

Dry-run and enforce take the same path and log the same events; dry-run returns just before
the DELETE. All policies of a run are applied together, repository by repository, parents
before children, so a child shared by two policies' indexes waits for both. Deletions
within one repository are sent one after another, so that each one's tag read comes after
the previous DELETE; repositories proceed in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from retention.accounting import Ledger
from retention.errors import (
    AuthenticationError,
    DeleteRefusedError,
    DeletionDisabledError,
    NotSentError,
    RegistryError,
)
from retention.inventory import Inventory, Manifest, referrer_tag_subject
from retention.outcomes import DELETED, FAILED, SKIPPED, Outcome, OutcomeKey, RunError, outcome_key
from retention.planner import CHANGED, Action, Plan, PolicyPlan, parents_first
from retention.registry.acr import AcrApi
from retention.registry.client import RETRYABLE, FetchedManifest, RegistryClient
from retention.registry.ghcr import GhcrApi
from retention.scanner import ManifestFacts, body_facts
from retention.scanner import left_out as listing_left_out
from retention.state import State

if TYPE_CHECKING:
    # Only a type here: prometheus_client is imported by those who make Metrics (the
    # daemon), not by every `plan`.
    from retention.metrics import Metrics

log = structlog.get_logger("retention.executor")

# The longest time from the start of the read that confirms a manifest's tags to the
# sending of its DELETE (config: confirm_window); 0: a read for every DELETE.
CONFIRM_WINDOW = 2.0  # seconds
# With a window of 0 s (a read for every DELETE), how long a read made for one DELETE and
# that DELETE get together: no DELETE can leave 0 s after its read began. Any window above
# zero is the bound as written, for a read made for the DELETE as for one reused.
READ_AND_SEND = 1.0  # seconds
# Times in a row a manifest's gate may end in a read again (its DELETE could not be sent
# in time, or the read showed manifests pushed since the plan that had to be read first)
# before the manifest is kept for this run: a repository whose tags take longer than the
# window to read, or one that changes at every read.
MAX_REREADS = 5

SHUTTING_DOWN = "shutting down: not started"
GONE = "gone"  # journal status: deleted by someone else first; not retention's to restore


@dataclass(slots=True)
class Report:
    outcomes: dict[OutcomeKey, Outcome] = field(default_factory=dict)
    errors: list[RunError] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes.values() if o.status == FAILED)

    @property
    def interrupted(self) -> bool:
        """Some actions were not attempted because the daemon is stopping."""
        return any(o.reason == SHUTTING_DOWN for o in self.outcomes.values())


def _event(action: Action) -> dict[str, object]:
    return {"policy": action.policy, "registry": action.registry,
            "repository": action.repository, "digest": action.digest,
            "tags": list(action.tags), "bytes": action.bytes}


def log_decisions(plan: Plan, *, dry_run: bool) -> None:
    """One event for every manifest a delete rule matched that is not deleted."""
    for p in plan.policies:
        for d in (*p.protected, *p.kept):
            log.info("manifest kept" if d.reason == "keep" else "manifest protected",
                     policy=d.policy, registry=d.registry, repository=d.repository,
                     digest=d.digest, tags=list(d.tags), bytes=0, reason=d.reason,
                     detail=d.detail, matched=d.matched, dry_run=dry_run)
        for e in p.errors:
            log.warning("repository skipped", policy=e.policy, registry=e.registry,
                        repository=e.repository, reason=e.message, dry_run=dry_run)
        if p.aborted:
            log.error("policy run aborted", policy=p.policy, registry=p.registry,
                      reason=p.aborted, dry_run=dry_run)


@dataclass(frozen=True, slots=True)
class TagRead:
    """One manifest's tags as the registry answered them, and when that read began."""

    tags: frozenset[str]
    started: float  # time.monotonic(), the clock the client's not_after is in
    fresh: bool  # made for this DELETE (not reused from an earlier one)
    incomplete: str | None = None  # why the listing it read cannot confirm a DELETE


class TagConfirmation:
    """What the registry says now about one repository's manifests.

    distribution cannot answer "which tags point at this digest": every tag is resolved
    (tag list + a HEAD per tag, at the client's concurrency), and that snapshot is reused
    by the next DELETEs while it is younger than ``window`` (0: never). ACR answers it for
    one digest in one request, so there every DELETE gets its own.

    The snapshot (on ACR, its manifests listing, re-read when older than ``window``) also
    shows manifests pushed since the plan (``known`` is what the plan saw): one that
    references a manifest about to be deleted (a new index reusing a child, a new
    signature) makes that manifest stay. Each is read once, by ``examine``. Every newcomer
    any read showed is still in the registry at its garbage collection (untagged since, at
    worst), holding its blobs: ``newcomers`` tells the bytes accounting (``read_newcomers``
    reads them all, and the repository once more after its last DELETE).
    """

    def __init__(self, client: RegistryClient, repository: str, *, window: float,
                 known: frozenset[str] = frozenset(), seen_tags: frozenset[str] = frozenset()):
        self._client = client
        self._repository = repository
        self._window = window
        self._known = set(known)  # less what this run saw go (``went``)
        # Every tag the plan or an earlier re-read saw here: one the listing leaves out now
        # is looked up all the same (see _reread).
        self._seen_tags = set(seen_tags)
        # A registry that answers one manifest's tags in one request (ACR; GHCR by the
        # version's id): every DELETE gets its own read, and the re-read lists every
        # manifest, untagged ones too.
        self._acr: AcrApi | GhcrApi | None = AcrApi(client) \
            if client.settings.type == "acr" else getattr(client, "github", None)
        self._snapshot: dict[str, set[str]] = {}  # digest -> tags (ACR: every digest)
        self._read_at = float("-inf")  # when the snapshot's read began (never yet)
        self._links: dict[str, frozenset[str] | None] = {}  # new digest -> what it references
        self.reads = 0  # tag reads: snapshots, and on ACR single manifests' tags too
        self._seen_new: set[str] = set()  # digests beyond ``known`` that any read showed
        # What each newcomer read holds (None: gone when read); a digest missing here was
        # not read, or its read failed: it may hold anything.
        self._facts: dict[str, ManifestFacts | None] = {}
        self._last_read: frozenset[str] | None = None  # the read after the last DELETE
        self._incomplete: str | None = None  # why the latest listing cannot be trusted

    async def read(self, digest: str) -> TagRead:
        """The tags on ``digest`` now: the gate's last check before its DELETE."""
        started = time.monotonic()
        if self._acr is not None:
            tags = await self._acr.manifest_tags(self._repository, digest)
            self.reads += 1
            if tags is None:
                # Gone, or a transient 404: either way its tags are not confirmed.
                raise RegistryError(f"the registry answered 404 for {_short(digest)}'s tags",
                                    registry=self._client.settings.name, status=404)
            return TagRead(frozenset(tags), started, fresh=True)
        fresh = not self._reusable()
        if fresh:
            await self._reread()
        return TagRead(frozenset(self._snapshot.get(digest, ())), self._read_at, fresh=fresh,
                       incomplete=self._incomplete)

    def unexamined(self) -> list[str]:
        """Manifests the latest snapshot shows, pushed since the plan, not read yet."""
        return sorted(d for d in self._snapshot if d not in self._known and d not in self._links)

    async def examine(self) -> None:
        """Read the manifests pushed since the plan that the snapshot shows (on ACR, the
        listing is read again first when older than the window)."""
        if self._acr is not None and not self._reusable():
            await self._reread()
        for digest in self.unexamined():
            self._links[digest] = await self._references(digest)

    def newcomer_referencing(self, digest: str) -> str | None:
        """A manifest the plan did not know that references ``digest`` now, if any; one
        not read yet (or unparseable) may reference anything: unknown means keep."""
        for other in sorted(set(self._snapshot) - self._known):
            links = self._links.get(other)
            if links is None or digest in links:
                return other
        return None

    def went(self, digest: str) -> None:
        """``digest`` is gone (deleted by this run, or found gone). A read made before says
        nothing of it now; a read made after that shows it shows it pushed again (a rollback
        re-pushing a deleted index): a newcomer like any other, read for what it references,
        so that the children it lists again stay."""
        self._known.discard(digest)
        self._snapshot.pop(digest, None)
        self._links.pop(digest, None)
        self._facts.pop(digest, None)

    def shows(self, digest: str) -> bool:
        """Whether the latest read shows ``digest`` (since it went, if it went: ``went``)."""
        return digest in self._snapshot

    def _reusable(self) -> bool:
        return self._window > 0 and time.monotonic() - self._read_at <= self._window

    async def _reread(self) -> None:
        started = time.monotonic()
        client, repository = self._client, self._repository
        snapshot: dict[str, set[str]] = {}
        if self._acr is not None:
            # ACR lists every manifest, untagged ones too: new ones are all seen.
            for m in await self._acr.manifests(repository):
                snapshot[m.digest] = set(m.tags)
        else:
            # A tag seen before and left out of this listing (distribution#4891, a tag moved
            # onto this very manifest meanwhile) is resolved like a listed one: a listing
            # that drops it must not make the manifest it names look untagged. A tag really
            # removed answers 404 and counts for nothing.
            listed = set(await client.tags(repository))
            self._seen_tags.update(listed)
            tags = sorted(self._seen_tags)
            heads = await asyncio.gather(*(client.head_manifest(repository, t) for t in tags))
            left_out = []
            for tag, head in zip(tags, heads, strict=True):
                if head is not None:
                    snapshot.setdefault(head.digest, set()).add(tag)
                    if tag not in listed:
                        left_out.append(tag)
                else:  # gone (the tags of a manifest this run deleted, say): not asked again
                    self._seen_tags.discard(tag)
            # A listing that leaves out a tag that still resolves is incomplete: a tag no
            # listing showed yet (one moved onto the manifest about to go) may be missing
            # from it too. It confirms no DELETE (the tags it shows still tell `changed`).
            self._incomplete = (f"{listing_left_out(left_out)}, so a tag it leaves out may "
                                "be on this manifest too") if left_out else None
        self._snapshot, self._read_at = snapshot, started
        self._seen_new.update(snapshot.keys() - self._known)
        self.reads += 1

    async def _references(self, digest: str) -> frozenset[str] | None:
        """Children, subject and referrer-tag subjects of a manifest pushed during the run;
        None when it cannot be parsed: it may reference anything (unknown means keep)."""
        found = {s for t in self._snapshot.get(digest, ()) if (s := referrer_tag_subject(t))}
        facts = await self._read(digest)
        if facts is None:
            return frozenset(found)
        if not facts.parsed:
            return None
        return frozenset(found | set(facts.children)
                         | ({facts.subject} if facts.subject else set()))

    async def _read(self, digest: str) -> ManifestFacts | None:
        """What a newcomer holds, read once; None when it is gone."""
        if digest not in self._facts:
            fetched = await self._client.get_manifest(self._repository, digest)
            self._facts[digest] = body_facts(digest, fetched) if fetched is not None else None
        return self._facts[digest]

    async def read_newcomers(self) -> None:
        """After the repository's last DELETE: read it once more (a push since the last
        confirmation), then every newcomer not read yet, and what they reference that the
        plan did not see (the untagged children of a new index). A read that fails leaves
        that newcomer unknown; a failed re-read leaves what earlier reads showed."""
        with contextlib.suppress(RegistryError):
            await self._reread()
            self._last_read = frozenset(self._snapshot)
        pending = set(self._seen_new)
        while pending:
            digest = pending.pop()
            try:
                facts = await self._read(digest)
            except RegistryError:
                continue
            if facts is not None:
                more = {d for d in (*facts.children, *([facts.subject] if facts.subject
                                                       else []))
                        if d not in self._known and d not in self._seen_new}
                self._seen_new |= more
                pending |= more

    def newcomers(self) -> list[Manifest]:
        """The manifests pushed during the run that any read showed: present for the bytes
        accounting. One not read may hold any blob (as a manifest retention cannot parse)."""
        out = []
        for digest in sorted(self._seen_new):
            if digest not in self._facts:
                out.append(Manifest(digest, "unknown", 0, parsed=False))
            elif (f := self._facts[digest]) is not None:
                out.append(Manifest(digest, f.media_type, f.size, blobs=f.blobs,
                                    children=f.children, subject=f.subject, parsed=f.parsed))
        return out

    def back(self, digest: str) -> bool:
        """Whether the read after the repository's last DELETE showed ``digest``: a manifest
        deleted (or found gone) in this run and pushed again since, which frees nothing."""
        return self._last_read is not None and digest in self._last_read


@dataclass(slots=True)
class _Live:
    """What this run has done so far: the executor's view of what is gone and what stays,
    and, for the bytes each deletion freed, what went in which order and what was pushed
    meanwhile."""

    outcomes: dict[OutcomeKey, Outcome]
    gone: set[OutcomeKey] = field(default_factory=set)  # deleted now, or found already gone
    broken: dict[str, str] = field(default_factory=dict)  # registry -> why no more deletes
    # (registry, repository) -> why no more deletes there (ACR: the repository is locked)
    locked: dict[tuple[str, str], str] = field(default_factory=dict)
    # (registry, repository) -> why its tags cannot be confirmed in time (kept, not failed)
    unconfirmed: dict[tuple[str, str], str] = field(default_factory=dict)
    # Each manifest gone, in order: (its action, deleted by this run as far as restore is
    # concerned, its bytes claimed for it, its journal row).
    went_order: list[tuple[Action, bool, bool, int | None]] = field(default_factory=list)
    # (registry, repository) -> its confirmation: the newcomers its reads showed.
    confirmations: dict[tuple[str, str], TagConfirmation] = field(default_factory=dict)

    def stays(self, registry: str, repository: str, digest: str) -> str | None:
        """None when the manifest is gone; else a few words on why it is still there."""
        key = (registry, repository, digest)
        if key in self.gone:
            return None
        outcome = self.outcomes.get(key)
        if outcome is None:
            return "not deleted by this run"
        return f"{outcome.status}: {outcome.reason}" if outcome.reason else outcome.status

    def went(self, a: Action, *, by_us: bool, credit: bool, entry: int | None) -> None:
        """``a``'s manifest is gone (deleted by this run, or found gone)."""
        self.gone.add(outcome_key(a))
        self.outcomes[outcome_key(a)] = Outcome(DELETED)
        self.went_order.append((a, by_us, credit, entry))

    def settle(self, inventories: Mapping[str, Inventory]) -> dict[OutcomeKey, int]:
        """The bytes each deletion freed, once the run's deletions are over: what the
        garbage collector frees is decided by what is there when it runs, so the manifests
        pushed while the run deleted hold their blobs (even those pushed after a deletion
        that shared them), and a manifest pushed again since its deletion frees nothing."""
        newcomers: dict[str, list[tuple[str, Manifest]]] = {}
        for (registry, repository), confirmation in self.confirmations.items():
            newcomers.setdefault(registry, []).extend(
                (repository, m) for m in confirmation.newcomers())
        ledgers = {registry: Ledger(inventory, newcomers=newcomers.get(registry, ()))
                   for registry, inventory in inventories.items()
                   if any(a.registry == registry for a, _, _, _ in self.went_order)}
        freed: dict[OutcomeKey, int] = {outcome_key(a): 0 for a, _, _, _ in self.went_order}
        for a, _, credit, _ in self.went_order:
            confirmation = self.confirmations.get((a.registry, a.repository))
            ledger = ledgers.get(a.registry)
            if ledger is None or (confirmation is not None and confirmation.back(a.digest)):
                continue
            for owner, size in ledger.remove((a.repository, a.digest),
                                             owner=a if credit else None):
                freed[outcome_key(owner)] += size  # type: ignore[arg-type]
        for key, size in freed.items():
            self.outcomes[key] = Outcome(DELETED, bytes=size)
        return freed


class Executor:
    def __init__(
        self,
        clients: Mapping[str, RegistryClient],
        *,
        state: State,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        stop: asyncio.Event | None = None,
        confirm_window: float = CONFIRM_WINDOW,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        progress: Callable[[int, int], None] | None = None,
    ):
        self._clients = clients
        self._state = state
        self._metrics = metrics
        self._clock = clock
        self._stop = stop or asyncio.Event()
        self._window = confirm_window
        self._sleep = sleep
        self._progress = progress  # (deletions done, of planned): for a terminal
        self._done = self._planned = 0

    def _bound(self) -> float:
        """The longest time from the start of a confirming read to its DELETE's sending:
        confirm_window as written; for 0 s (a read for every DELETE), READ_AND_SEND."""
        return self._window if self._window > 0 else READ_AND_SEND

    async def apply(self, plan: Plan, *, dry_run: bool,
                    inventories: Mapping[str, Inventory]) -> Report:
        """Apply every policy of ``plan``; ``inventories`` (by registry) are what the plan
        was made from: what the repositories held, and so what each deletion frees."""
        report = Report()
        log_decisions(plan, dry_run=dry_run)
        groups: dict[tuple[str, str], list[tuple[PolicyPlan, Action]]] = {}
        for p in plan.policies:
            if p.aborted:
                continue
            for a in p.actions:
                groups.setdefault((a.registry, a.repository), []).append((p, a))
        if dry_run:
            for _, pairs in sorted(groups.items()):
                for _, a in pairs:
                    log.info("manifest deleted", **_event(a), reason=a.reason,
                             cascade_of=a.cascade_of, dry_run=True)
            return report
        if not groups:
            return report
        live = _Live(report.outcomes)
        self._done, self._planned = 0, sum(len(pairs) for pairs in groups.values())
        # Repositories in parallel, a few at a time per registry: each one's tag reads share
        # the registry's `concurrency` slots with the others', and a read slowed past the
        # window by that sharing has to be made again.
        at_once = {name: asyncio.Semaphore(max(1, c.settings.concurrency // 2))
                   for name, c in self._clients.items()}

        async def one(registry: str, repository: str,
                      pairs: list[tuple[PolicyPlan, Action]]) -> None:
            async with at_once[registry]:
                inventory = inventories.get(registry)
                read = [m for r in (inventory.repositories if inventory else ())
                        if r.name == repository for m in r.manifests]
                known = frozenset(m.digest for m in read)
                seen_tags = frozenset(t for m in read for t in (*m.tags, *m.referrer_tags))
                await self._apply_repository(registry, repository,
                                             parents_first(a for _, a in pairs), live, report,
                                             known=known, seen_tags=seen_tags)
                for p in {id(p): p for p, _ in pairs}.values():
                    if repository in p.emptied:
                        mine = [a for q, a in pairs if q is p]
                        await self._delete_if_empty(p, repository, mine, report)

        try:
            async with asyncio.TaskGroup() as tasks:
                for (registry, repository), pairs in sorted(groups.items()):
                    tasks.create_task(one(registry, repository, pairs))
        except ExceptionGroup as group:
            # A bug in one repository's task (the others were cancelled): raised as it was.
            raise group.exceptions[0]  # noqa: B904 - the group adds nothing
        finally:
            # Also when the run is cut short (cancelled): what went is counted.
            self._settle(live, inventories)
        # In the order of the repositories, whichever finished first.
        report.errors.sort(key=lambda e: (e.registry, e.repository))
        return report

    async def _apply_repository(self, registry: str, repository: str, actions: list[Action],
                                live: _Live, report: Report, *, known: frozenset[str],
                                seen_tags: frozenset[str] = frozenset()) -> None:
        client = self._clients[registry]
        confirmation = TagConfirmation(client, repository, window=self._window, known=known,
                                       seen_tags=seen_tags)
        live.confirmations[(registry, repository)] = confirmation
        before = len(live.went_order)
        # One after another: each DELETE's tag read comes after the previous DELETE.
        for a in actions:
            await self._delete(client, a, confirmation, live, report)
            self._done += 1
            if self._progress is not None:
                self._progress(self._done, self._planned)
        if not self._stop.is_set() and any(
                by_us and (a.registry, a.repository) == (registry, repository)
                for a, by_us, _, _ in live.went_order[before:]):
            # What was pushed here while this repository's deletions went on holds blobs
            # they may have shared (reclaimed bytes): seen by one more read after the last.
            # (Not while stopping: a newcomer not read then keeps every config and layer.)
            await confirmation.read_newcomers()

    def _checks(self, a: Action, live: _Live) -> tuple[str, str] | None:
        """Why ``a`` must not be sent now, as (status, reason), from what this run knows
        (no request); None: on to the registry's checks."""
        if self._state.unusable is not None:
            return SKIPPED, (f"{self._state.unusable}: nothing could be journaled for "
                             "restore, so nothing is deleted; fix state_dir")
        if a.registry in live.broken:
            return FAILED, live.broken[a.registry]
        if (a.registry, a.repository) in live.locked:
            return FAILED, live.locked[(a.registry, a.repository)]
        if (a.registry, a.repository) in live.unconfirmed:
            return SKIPPED, live.unconfirmed[(a.registry, a.repository)]
        if self._stop.is_set():
            return SKIPPED, SHUTTING_DOWN
        for parent in a.parents:
            why = live.stays(a.registry, a.repository, parent)
            if why is not None:
                return SKIPPED, f"{_short(parent)}, which references it, stays ({why})"
        return None

    async def _gate(self, a: Action, confirmation: TagConfirmation,
                    live: _Live) -> tuple[str, str] | TagRead | None:
        """Every check before ``a``'s DELETE, the tag read last. (status, reason): not
        now; a TagRead: send it, not later than that read allows; None: go through the gate
        again (the read showed manifests pushed since the plan: they are read first, and
        the tags again after them)."""
        verdict = self._checks(a, live)
        if verdict is not None:
            return verdict
        await confirmation.examine()
        if (referenced := _referenced_now(a, confirmation)) is not None:
            return SKIPPED, referenced
        read = await confirmation.read(a.digest)
        # Nothing is awaited from here to the DELETE: what follows reads what is known.
        if confirmation.unexamined():
            return None
        verdict = self._checks(a, live)  # another repository may have broken the registry
        if verdict is not None:
            return verdict
        if (referenced := _referenced_now(a, confirmation)) is not None:
            return SKIPPED, referenced
        if read.tags != set(a.tags):
            return SKIPPED, (f"{CHANGED}: tags are now {sorted(read.tags) or 'none'}, the plan "
                             f"saw {sorted(a.tags) or 'none'}")
        if read.incomplete is not None:
            raise RegistryError(read.incomplete, registry=a.registry)
        return read

    def _journal(self, a: Action, fetched: FetchedManifest, live: _Live,
                 report: Report) -> int | None:
        """Commit ``a``'s exact bytes before its DELETE can leave: after a crash the journal
        may list something still there ("deleting"), never miss something gone. None: it
        could not be written (recorded as skipped)."""
        try:
            return self._state.journal_begin(
                at=self._clock(), registry=a.registry, repository=a.repository,
                digest=a.digest, tags=a.tags, policy=a.policy, reason=a.reason,
                media_type=fetched.media_type or a.media_type, body=fetched.body)
        except sqlite3.Error as exc:
            reason = f"could not journal it before deleting (state database): {exc}"
            live.outcomes[outcome_key(a)] = Outcome(SKIPPED, reason)
            report.errors.append(RunError(a.registry, a.repository, reason))
            log.error("deletion skipped", **_event(a), reason=reason)
            return None

    async def _delete(self, client: RegistryClient, a: Action,
                      confirmation: TagConfirmation, live: _Live, report: Report) -> None:
        # The exact bytes first, for the journal (restore re-pushes them). Fetched before the
        # gate: the gate's tag read is its last check.
        try:
            fetched = await client.get_manifest(a.repository, a.digest)
        except RegistryError as exc:
            reason = f"could not read the manifest to journal it before deleting: {exc}"
            report.errors.append(RunError(a.registry, a.repository, reason))
            self._record(a, live, SKIPPED, reason)
            return
        if fetched is None:  # already gone: nothing to send, nothing freed by us
            self._gone(a, live, by_us=False, entry=None)
            return
        retry = client.retry_policy
        attempt = 0  # DELETEs answered with a failure worth another try
        rereads = 0  # gates ended in a read again, in a row
        maybe_applied = False  # a DELETE was sent and its answer lost
        entry: int | None = None  # the journal row, once the gate was passed once
        while True:
            if maybe_applied:
                # A DELETE was sent and its answer lost: find out before sending anything.
                try:
                    still_there = await client.head_manifest(a.repository, a.digest)
                except RegistryError as exc:
                    self._unsure(a, live, report, f"its DELETE may have gone through (the "
                                 f"answer was lost) and checking failed: {exc}")
                    return
                if still_there is None:
                    self._gone(a, live, by_us=True, credit=False, entry=entry)
                    return
            if entry is None and self._checks(a, live) is None:
                # Journaled before the tag read, so that writing it (a busy or slow disk)
                # does not come between that read and the DELETE.
                entry = self._journal(a, fetched, live, report)
                if entry is None:
                    return
            try:
                gate = await self._gate(a, confirmation, live)
            except RegistryError as exc:
                gate = SKIPPED, f"could not confirm its tags before deleting: {exc}"
                report.errors.append(RunError(a.registry, a.repository, gate[1]))
            if isinstance(gate, tuple):
                self._record(a, live, *gate, entry=entry)
                return
            if gate is None:
                rereads += 1
                if rereads < MAX_REREADS:
                    continue
                self._kept_unconfirmed(a, live, report, "the repository changed at every "
                                       "read (manifests pushed since the plan)", entry=entry)
                return
            # Not sent later than the window allows from the start of the read: a DELETE
            # held back (a busy slot, a token fetched first) is not sent on a stale read.
            not_after = gate.started + self._bound()
            try:
                existed = await client.delete_manifest(a.repository, a.digest, retry=False,
                                                       not_after=not_after,
                                                       unless=self._stop.is_set)
            except NotSentError:
                if self._stop.is_set():
                    # The daemon began stopping on the way (another repository's DELETE saw
                    # it first): the client sent nothing, and no DELETE starts after it.
                    self._record(a, live, SKIPPED, SHUTTING_DOWN, entry=entry)
                    return
                rereads += 1
                if rereads < MAX_REREADS:
                    continue
                self._kept_unconfirmed(
                    a, live, report, f"its DELETE could not be sent within confirm_window "
                    f"({self._bound():g} s) of the start of the read confirming its tags "
                    f"({MAX_REREADS} reads; "
                    f"the last one and its DELETE took "
                    f"{time.monotonic() - gate.started:.1f} s): raise confirm_window above "
                    "the time one read of the repository's tags takes", entry=entry)
                return
            except DeleteRefusedError as exc:
                await self._refused(client, a, live, exc, entry=entry)
                return
            except (DeletionDisabledError, AuthenticationError) as exc:
                # Every further delete on this registry would fail the same way: stop asking.
                live.broken[a.registry] = str(exc)
                self._record(a, live, FAILED, str(exc), entry=entry)
                return
            except RegistryError as exc:
                attempt += 1
                # A connection error or a 5xx may come after the registry deleted it.
                maybe_applied = maybe_applied or exc.status is None or exc.status >= 500
                if (exc.status is None or exc.status in RETRYABLE) and \
                        attempt < retry.attempts:
                    # Wait, then go through the gate again: the wait outlasts the read that
                    # confirmed its tags, or the run may be stopping.
                    delay = min(exc.retry_after or retry.backoff(attempt - 1),
                                retry.max_retry_after)
                    log.info("deletion retried", **_event(a), reason=str(exc),
                             delay=round(delay, 3))
                    await self._sleep(delay)
                    continue
                if maybe_applied:
                    try:
                        if await client.head_manifest(a.repository, a.digest) is None:
                            self._gone(a, live, by_us=True, credit=False, entry=entry)
                            return
                    except RegistryError as check:
                        self._unsure(a, live, report, f"{exc}; it may have been deleted "
                                     f"all the same, and checking failed: {check}")
                        return
                self._record(a, live, FAILED, str(exc), entry=entry)
                return
            self._gone(a, live, by_us=existed or maybe_applied, credit=existed, entry=entry)
            return

    def _kept_unconfirmed(self, a: Action, live: _Live, report: Report, why: str, *,
                          entry: int | None) -> None:
        """Its tags could not be confirmed close enough to its DELETE: kept for this run
        (unknown means keep), and the run says so. The rest of its repository too: each
        would spend the same reads in vain."""
        reason = f"not deleted: {why}"
        live.unconfirmed[(a.registry, a.repository)] = reason
        report.errors.append(RunError(a.registry, a.repository, reason))
        self._record(a, live, SKIPPED, reason, entry=entry)

    async def _refused(self, client: RegistryClient, a: Action, live: _Live,
                       exc: DeleteRefusedError, *, entry: int | None) -> None:
        """ACR refused the DELETE (405). Its attributes say whether a lock explains it: on
        the manifest or one of its tags (that manifest fails), on the repository (its
        remaining deletions fail too, unsent). A refusal no lock explains is about the
        registry (a full storage quota, say): no more deletions there in this run."""
        try:
            lock = await AcrApi(client).lock_of(a.repository, a.digest)
        except RegistryError as check:
            reason = (f"{exc}; reading the attributes that would say why failed ({check}), "
                      "so no more deletions on this registry in this run")
            lock = None
        else:
            reason = (f"{exc}; neither the manifest, its tags nor the repository is locked, "
                      "so ACR refuses deletes on the whole registry (its storage quota "
                      "reached, say): no more deletions on it in this run")
        if lock is None:
            live.broken[a.registry] = reason
        elif lock.scope == "repository":
            live.locked[(a.registry, a.repository)] = f"not sent: {lock.detail}"
            reason = f"{exc}: {lock.detail}"
        else:
            reason = f"{exc}: {lock.detail}"
        self._record(a, live, FAILED, reason, entry=entry)

    def _gone(self, a: Action, live: _Live, *, by_us: bool, entry: int | None,
              credit: bool | None = None) -> None:
        """The manifest is gone: journal it and count it. The bytes it freed are known when
        the run's deletions are over (``_settle``). ``credit=False``: deleted by us as far as
        restore is concerned, but the bytes are not claimed: a DELETE whose answer was lost,
        then found gone, may have been beaten by someone else's (bytes are claimed less,
        never more)."""
        live.went(a, by_us=by_us, credit=by_us if credit is None else credit, entry=entry)
        if (confirmation := live.confirmations.get((a.registry, a.repository))) is not None:
            confirmation.went(a.digest)
        if entry is not None and not by_us:
            # Someone else deleted it between our read and our DELETE: not ours to restore.
            self._state.journal_end(entry, status=GONE, reason="already gone: deleted by "
                                    "someone else before retention's DELETE")
        elif entry is not None:
            self._state.journal_end(entry, status=DELETED)
        else:
            self._state.record_deletion(at=self._clock(), registry=a.registry,
                                        repository=a.repository, digest=a.digest, tags=a.tags,
                                        bytes=0, policy=a.policy,
                                        reason=a.reason if by_us else f"{a.reason} (already gone)",
                                        status=DELETED)
        if self._metrics and by_us:
            self._metrics.manifests_deleted.labels(a.registry, a.policy).inc()

    def _settle(self, live: _Live, inventories: Mapping[str, Inventory]) -> None:
        """The bytes each deletion freed (``_Live.settle``): into the outcomes, the journal,
        the metrics, and each deletion's event, in the order they went."""
        freed = live.settle(inventories)
        journaled = {entry: freed[outcome_key(a)] for a, by_us, _, entry in live.went_order
                     if by_us and entry is not None}
        try:
            self._state.journal_bytes(journaled)
        except sqlite3.Error as exc:  # the bytes are a record: the deletions are journaled
            log.warning("reclaimed bytes not journaled", error=str(exc))
        for a, by_us, _, _ in live.went_order:
            size = freed[outcome_key(a)]
            if self._metrics:
                self._metrics.reclaimed_bytes.labels(a.registry, a.policy).inc(size)
            log.info("manifest deleted", **{**_event(a), "bytes": size}, reason=a.reason,
                     cascade_of=a.cascade_of, already_gone=not by_us, dry_run=False)

    def _unsure(self, a: Action, live: _Live, report: Report, reason: str) -> None:
        """Whether its DELETE went through is not known: failed, and its journal row stays
        `deleting`, so that `retention restore` can still put it back if it is gone."""
        report.errors.append(RunError(a.registry, a.repository, reason))
        self._record(a, live, FAILED, reason)

    def _record(self, a: Action, live: _Live, status: str, reason: str, *,
                entry: int | None = None) -> None:
        """An action not deleted: its outcome, the journal, the failure counter."""
        live.outcomes[outcome_key(a)] = Outcome(status, reason)
        if status == FAILED:
            log.error("deletion failed", **_event(a), reason=reason)
            if self._metrics:
                self._metrics.delete_failures.labels(a.registry, a.policy).inc()
        elif reason.startswith(CHANGED):
            log.warning("manifest protected", **_event(a), reason=CHANGED, detail=reason,
                        dry_run=False)
        else:
            log.warning("deletion skipped", **_event(a), reason=reason)
        if entry is not None:  # journaled before a DELETE: its outcome closes that row
            self._state.journal_end(entry, status=status, reason=reason)
            return
        self._state.record_deletion(at=self._clock(), registry=a.registry,
                                    repository=a.repository, digest=a.digest, tags=a.tags,
                                    bytes=0, policy=a.policy, reason=reason, status=status)

    async def _delete_if_empty(self, p: PolicyPlan, repository: str, actions: list[Action],
                               report: Report) -> None:
        """delete_empty_repositories (ACR only): remove a repository this run emptied, once
        ACR's own listing confirms nothing is left in it."""
        client = self._clients[p.registry]
        if client.settings.type != "acr":
            return
        if any(report.outcomes.get(outcome_key(a), Outcome(SKIPPED)).status != DELETED
               for a in actions):
            return
        acr = AcrApi(client)
        retry = client.retry_policy
        try:
            for attempt in range(1, retry.attempts + 1):
                # The DELETE takes everything in the repository, a push since the listing
                # too: it is sent within the window of the listing that found it empty, and
                # never again without a new one (a 429's wait outlasts that listing).
                started = time.monotonic()
                if not await acr.confirmed_empty(repository):
                    log.info("repository kept: not empty", policy=p.policy,
                             registry=p.registry, repository=repository)
                    return
                try:
                    await acr.delete_repository(
                        repository, retry=False,
                        not_after=started + self._bound())
                    break
                except NotSentError:
                    if attempt == retry.attempts:
                        raise
                except RegistryError as exc:
                    if attempt == retry.attempts or not (
                            exc.status is None or exc.status in RETRYABLE):
                        raise
                    await self._sleep(min(exc.retry_after or retry.backoff(attempt - 1),
                                          retry.max_retry_after))
        except RegistryError as exc:
            report.errors.append(RunError(p.registry, repository,
                                          f"deleting the empty repository failed: {exc}"))
            log.error("repository deletion failed", policy=p.policy, registry=p.registry,
                      repository=repository, reason=str(exc))
            return
        log.info("repository deleted", policy=p.policy, registry=p.registry,
                 repository=repository, reason="delete_empty_repositories: emptied by this run")


def _referenced_now(a: Action, confirmation: TagConfirmation) -> str | None:
    """Why ``a`` must stay because the latest read shows something referencing it: a
    manifest pushed since the plan that lists it or is its referrer's subject, or one of its
    parents (its index, its subject), gone in this run and pushed again since (a rollback).
    None: nothing there references it."""
    newcomer = confirmation.newcomer_referencing(a.digest)
    if newcomer is not None:
        return f"{CHANGED}: {_short(newcomer)}, pushed since the plan, references it"
    back = next((p for p in a.parents if confirmation.shows(p)), None)
    if back is not None:
        return (f"{CHANGED}: {_short(back)}, which references it, was deleted in this run "
                "and pushed again since")
    return None


def _short(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}"

