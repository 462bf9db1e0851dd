"""The executor: applies a plan to registries, one gate before every write.

A plan is true when it is made; the executor deletes one digest at a time, and between the
plan and each DELETE a tag may move, a parent's DELETE may fail, another policy may hold
something back. So the executor keeps a live view of what is gone, and ``_verdict`` is the
one place that decides whether a DELETE may be sent *now*: the registry still accepts
deletes, the daemon is not stopping, every manifest of the repository that references the
digest (an index listing it, its subject) is gone, and its tags, confirmed from the
registry at most ``confirm_window`` before, are exactly those the plan saw. Before the gate
the manifest's exact bytes are read; once it passes they are journaled (committed) and only
then is the DELETE sent, so ``retention restore`` can put back anything that went.

Dry-run and enforce take the same path and log the same events; dry-run returns just before
the DELETE. All policies of a run are applied together, repository by repository, parents
before children, so a child shared by two policies' indexes waits for both.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from retention.accounting import Ledger
from retention.errors import AuthenticationError, DeletionDisabledError, RegistryError
from retention.inventory import Inventory, referrer_tag_subject
from retention.planner import CHANGED, Action, Plan, PolicyPlan, parents_first
from retention.registry.acr import AcrApi
from retention.registry.client import RETRYABLE, RegistryClient
from retention.registry.ghcr import GhcrApi
from retention.registry.mediatypes import ManifestFormatError, parse_manifest
from retention.report import DELETED, FAILED, SKIPPED, Outcome, OutcomeKey, outcome_key
from retention.state import State

if TYPE_CHECKING:
    # Only a type here: prometheus_client is imported by those who make Metrics (the
    # daemon), not by every `plan`.
    from retention.metrics import Metrics

log = structlog.get_logger("retention.executor")

# A manifest's tags are confirmed from the registry at most this long before its own DELETE
# (or, when re-reading one repository's tags takes longer than this, just before it).
CONFIRM_WINDOW = 5.0  # seconds

SHUTTING_DOWN = "shutting down: not started"
GONE = "gone"  # journal status: deleted by someone else first; not retention's to restore


@dataclass(frozen=True, slots=True)
class RunError:
    """A problem beyond single deletions, in one repository."""

    registry: str
    repository: str
    message: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}: {self.message}"


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


class TagConfirmation:
    """What the registry says now about one repository's manifests.

    distribution cannot answer "which tags point at this digest": every tag is resolved
    (tag list + a HEAD per tag, at the client's concurrency), and that answer is trusted
    for ``window`` seconds from when the re-read began. ACR answers it for one digest in
    one request, so there every DELETE gets its own.

    The same re-read shows manifests pushed since the plan (``known`` is what the plan
    saw): one that references a manifest about to be deleted (a new index reusing a child,
    a new signature) makes that manifest stay.
    """

    def __init__(self, client: RegistryClient, repository: str, *, window: float,
                 known: frozenset[str] = frozenset(),
                 monotonic: Callable[[], float] = time.monotonic):
        self._client = client
        self._repository = repository
        self._window = window
        self._known = known
        self._monotonic = monotonic
        # A registry that answers one manifest's tags in one request (ACR; GHCR by the
        # version's id): every DELETE gets its own read, and the re-read lists every
        # manifest, untagged ones too.
        self._acr: AcrApi | GhcrApi | None = AcrApi(client) \
            if client.settings.type == "acr" else getattr(client, "github", None)
        self._snapshot: dict[str, set[str]] = {}  # digest -> tags (ACR: every digest)
        self._read_at: float | None = None
        self._links: dict[str, frozenset[str] | None] = {}  # new digest -> what it references
        self.rereads = 0

    async def tags_of(self, digest: str) -> set[str]:
        if self._acr is not None:
            self.rereads += 1
            tags = await self._acr.manifest_tags(self._repository, digest)
            if tags is None:
                # Gone, or a transient 404: either way its tags are not confirmed.
                raise RegistryError(f"the registry answered 404 for {_short(digest)}'s tags",
                                    registry=self._client.settings.name, status=404)
            return tags
        await self._fresh()
        return self._snapshot.get(digest, set())

    async def new_referrer_of(self, digest: str) -> str | None:
        """A manifest the plan did not know that references ``digest`` now, if any."""
        await self._fresh()
        for other in sorted(set(self._snapshot) - self._known):
            links = await self._references(other)
            if links is None or digest in links:
                return other
        return None

    async def _fresh(self) -> None:
        if self._read_at is None or self._monotonic() - self._read_at > self._window:
            await self._reread()

    async def _reread(self) -> None:
        started = self._monotonic()
        client, repository = self._client, self._repository
        snapshot: dict[str, set[str]] = {}
        if self._acr is not None:
            # ACR lists every manifest, untagged ones too: new ones are all seen.
            for m in await self._acr.manifests(repository):
                snapshot[m.digest] = set(m.tags)
        else:
            tags = await client.tags(repository)
            heads = await asyncio.gather(*(client.head_manifest(repository, t) for t in tags))
            for tag, head in zip(tags, heads, strict=True):
                if head is not None:  # None: the tag vanished between listing and reading
                    snapshot.setdefault(head.digest, set()).add(tag)
        self._snapshot, self._read_at = snapshot, started
        self.rereads += 1

    async def _references(self, digest: str) -> frozenset[str] | None:
        """Children, subject and referrer-tag subjects of a manifest pushed during the run;
        None when it cannot be parsed: it may reference anything (unknown means keep)."""
        if digest not in self._links:
            found = {s for t in self._snapshot.get(digest, ()) if (s := referrer_tag_subject(t))}
            fetched = await self._client.get_manifest(self._repository, digest)
            links: frozenset[str] | None = frozenset(found)
            if fetched is not None:
                try:
                    parsed = parse_manifest(fetched.body, fetched.media_type)
                except ManifestFormatError:
                    links = None
                else:
                    links = frozenset(found | {c.digest for c in parsed.children}
                                      | ({parsed.subject} if parsed.subject else set()))
            self._links[digest] = links
        return self._links[digest]


@dataclass(slots=True)
class _Live:
    """What this run has done so far: the executor's view of what is gone and what stays,
    and the bytes each deletion freed."""

    outcomes: dict[OutcomeKey, Outcome]
    ledgers: dict[str, Ledger]  # registry -> references still present there
    gone: set[OutcomeKey] = field(default_factory=set)  # deleted now, or found already gone
    broken: dict[str, str] = field(default_factory=dict)  # registry -> why no more deletes

    def stays(self, registry: str, repository: str, digest: str) -> str | None:
        """None when the manifest is gone; else a few words on why it is still there."""
        key = (registry, repository, digest)
        if key in self.gone:
            return None
        outcome = self.outcomes.get(key)
        if outcome is None:
            return "not deleted by this run"
        return f"{outcome.status}: {outcome.reason}" if outcome.reason else outcome.status

    def went(self, a: Action, *, by_us: bool) -> list[tuple[Action, int]]:
        """``a``'s manifest is gone (deleted by this run, or found gone): the bytes that
        frees, as (the deletion credited, bytes)."""
        self.gone.add(outcome_key(a))
        self.outcomes[outcome_key(a)] = Outcome(DELETED)
        ledger = self.ledgers.get(a.registry)
        credits = ledger.remove((a.repository, a.digest), owner=a if by_us else None) \
            if ledger is not None else []
        for owner, size in credits:
            key = outcome_key(owner)  # type: ignore[arg-type]
            self.outcomes[key] = Outcome(DELETED, bytes=self.outcomes[key].bytes + size)
        return credits  # type: ignore[return-value]


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
    ):
        self._clients = clients
        self._state = state
        self._metrics = metrics
        self._clock = clock
        self._stop = stop or asyncio.Event()
        self._window = confirm_window
        self._sleep = sleep

    async def apply(self, plan: Plan, *, dry_run: bool,
                    inventories: Mapping[str, Inventory]) -> Report:
        """Apply every policy of ``plan``; ``inventories`` (by registry) are what the plan
        was made from: what the repositories held, and so what each deletion frees."""
        report = Report()
        log_decisions(plan, dry_run=dry_run)
        live: _Live | None = None  # made for the first deletion sent: a dry run needs none
        groups: dict[tuple[str, str], list[tuple[PolicyPlan, Action]]] = {}
        for p in plan.policies:
            if p.aborted:
                continue
            for a in p.actions:
                groups.setdefault((a.registry, a.repository), []).append((p, a))
        for (registry, repository), pairs in sorted(groups.items()):
            if dry_run:
                for _, a in pairs:
                    log.info("manifest deleted", **_event(a), reason=a.reason,
                             cascade_of=a.cascade_of, dry_run=True)
                continue
            if live is None:
                live = _Live(report.outcomes,
                             {name: Ledger(inv) for name, inv in inventories.items()})
            actions = parents_first(a for _, a in pairs)
            inventory = inventories.get(registry)
            known = frozenset(m.digest for r in (inventory.repositories if inventory else ())
                              if r.name == repository for m in r.manifests)
            await self._apply_repository(registry, repository, actions, live, report,
                                         known=known)
            for p in {id(p): p for p, _ in pairs}.values():
                if repository in p.emptied:
                    mine = [a for q, a in pairs if q is p]
                    await self._delete_if_empty(p, repository, mine, report)
        return report

    async def _apply_repository(self, registry: str, repository: str, actions: list[Action],
                                live: _Live, report: Report, *, known: frozenset[str]) -> None:
        client = self._clients[registry]
        confirmation = TagConfirmation(client, repository, window=self._window, known=known)
        for a in actions:
            await self._delete(client, a, confirmation, live, report)

    async def _verdict(self, a: Action, confirmation: TagConfirmation,
                       live: _Live) -> tuple[str, str] | None:
        """Why ``a`` must not be sent now, as (status, reason); None: send it."""
        if self._state.unusable is not None:
            return SKIPPED, (f"{self._state.unusable}: nothing could be journaled for "
                             "restore, so nothing is deleted; fix state_dir")
        if a.registry in live.broken:
            return FAILED, live.broken[a.registry]
        if self._stop.is_set():
            return SKIPPED, SHUTTING_DOWN
        for parent in a.parents:
            why = live.stays(a.registry, a.repository, parent)
            if why is not None:
                return SKIPPED, f"{_short(parent)}, which references it, stays ({why})"
        now_tags = await confirmation.tags_of(a.digest)
        if now_tags != set(a.tags):
            return SKIPPED, (f"{CHANGED}: tags are now {sorted(now_tags) or 'none'}, the plan "
                             f"saw {sorted(a.tags) or 'none'}")
        newcomer = await confirmation.new_referrer_of(a.digest)
        if newcomer is not None:
            return SKIPPED, (f"{CHANGED}: {_short(newcomer)}, pushed since the plan, "
                             "references it")
        return None

    async def _delete(self, client: RegistryClient, a: Action,
                      confirmation: TagConfirmation, live: _Live, report: Report) -> None:
        # The exact bytes first, for the journal (restore re-pushes them). Fetched before the
        # gate, so reading them does not widen the gap between confirming tags and DELETE.
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
        attempt = 0
        maybe_applied = False  # a DELETE was sent and its answer lost
        entry: int | None = None  # the journal row, once the DELETE is about to be sent
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
                    self._gone(a, live, by_us=True, entry=entry)
                    return
            try:
                verdict = await self._verdict(a, confirmation, live)
            except RegistryError as exc:
                verdict = SKIPPED, f"could not confirm its tags before deleting: {exc}"
                report.errors.append(RunError(a.registry, a.repository, verdict[1]))
            if verdict is not None:
                self._record(a, live, *verdict, entry=entry)
                return
            if entry is None:
                # Committed before the DELETE leaves: after a crash the journal may list
                # something still there ("deleting"), never miss something gone.
                try:
                    entry = self._state.journal_begin(
                        at=self._clock(), registry=a.registry, repository=a.repository,
                        digest=a.digest, tags=a.tags, policy=a.policy, reason=a.reason,
                        media_type=fetched.media_type or a.media_type, body=fetched.body)
                except sqlite3.Error as exc:
                    reason = f"could not journal it before deleting (state database): {exc}"
                    live.outcomes[outcome_key(a)] = Outcome(SKIPPED, reason)
                    report.errors.append(RunError(a.registry, a.repository, reason))
                    log.error("deletion skipped", **_event(a), reason=reason)
                    return
            try:
                existed = await client.delete_manifest(a.repository, a.digest, retry=False)
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
                    # Wait, then go through the gate again: the wait may outlast the
                    # confirmation of its tags, or the run may be stopping.
                    delay = min(exc.retry_after or retry.backoff(attempt - 1),
                                retry.max_retry_after)
                    log.info("deletion retried", **_event(a), reason=str(exc),
                             delay=round(delay, 3))
                    await self._sleep(delay)
                    continue
                if maybe_applied:
                    try:
                        if await client.head_manifest(a.repository, a.digest) is None:
                            self._gone(a, live, by_us=True, entry=entry)
                            return
                    except RegistryError as check:
                        self._unsure(a, live, report, f"{exc}; it may have been deleted "
                                     f"all the same, and checking failed: {check}")
                        return
                self._record(a, live, FAILED, str(exc), entry=entry)
                return
            self._gone(a, live, by_us=existed or maybe_applied, entry=entry)
            return

    def _gone(self, a: Action, live: _Live, *, by_us: bool, entry: int | None) -> None:
        """The manifest is gone: journal it, credit the bytes it freed, count it."""
        credits = live.went(a, by_us=by_us)
        freed = sum(size for owner, size in credits if owner is a)
        if entry is not None and not by_us:
            # Someone else deleted it between our read and our DELETE: not ours to restore.
            self._state.journal_end(entry, status=GONE, reason="already gone: deleted by "
                                    "someone else before retention's DELETE")
        elif entry is not None:
            self._state.journal_end(entry, status=DELETED, bytes=freed)
        else:
            self._state.record_deletion(at=self._clock(), registry=a.registry,
                                        repository=a.repository, digest=a.digest, tags=a.tags,
                                        bytes=freed, policy=a.policy,
                                        reason=a.reason if by_us else f"{a.reason} (already gone)",
                                        status=DELETED)
        if self._metrics:
            if by_us:
                self._metrics.manifests_deleted.labels(a.registry, a.policy).inc()
            for owner, size in credits:
                self._metrics.reclaimed_bytes.labels(owner.registry, owner.policy).inc(size)
        log.info("manifest deleted", **{**_event(a), "bytes": freed}, reason=a.reason,
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
        try:
            if not await acr.confirmed_empty(repository):
                log.info("repository kept: not empty", policy=p.policy, registry=p.registry,
                         repository=repository)
                return
            await acr.delete_repository(repository)
        except RegistryError as exc:
            report.errors.append(RunError(p.registry, repository,
                                          f"deleting the empty repository failed: {exc}"))
            log.error("repository deletion failed", policy=p.policy, registry=p.registry,
                      repository=repository, reason=str(exc))
            return
        log.info("repository deleted", policy=p.policy, registry=p.registry,
                 repository=repository, reason="delete_empty_repositories: emptied by this run")


def _short(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}"

