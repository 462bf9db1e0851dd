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

import structlog

from retention.accounting import freed_bytes
from retention.errors import AuthenticationError, DeletionDisabledError, RegistryError
from retention.inventory import Inventory
from retention.metrics import Metrics
from retention.planner import CHANGED, Action, Plan, PolicyPlan, parents_first
from retention.registry.acr import AcrApi
from retention.registry.client import RETRYABLE, RegistryClient
from retention.report import DELETED, FAILED, SKIPPED, Outcome, OutcomeKey, outcome_key
from retention.state import State

log = structlog.get_logger("retention.executor")

# A manifest's tags are confirmed from the registry at most this long before its own DELETE
# (or, when re-reading one repository's tags takes longer than this, just before it).
CONFIRM_WINDOW = 5.0  # seconds

SHUTTING_DOWN = "shutting down: not started"


@dataclass(slots=True)
class Report:
    outcomes: dict[OutcomeKey, Outcome] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # problems beyond single deletions

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
    """The tags on each manifest of one repository, as the registry says now.

    distribution cannot answer "which tags point at this digest": every tag is resolved
    (tag list + a HEAD per tag, at the client's concurrency), and that answer is trusted
    for ``window`` seconds from when the re-read began. ACR answers it for one digest in
    one request, so there every DELETE gets its own.
    """

    def __init__(self, client: RegistryClient, repository: str, *, window: float,
                 monotonic: Callable[[], float] = time.monotonic):
        self._client = client
        self._repository = repository
        self._window = window
        self._monotonic = monotonic
        self._acr = AcrApi(client) if client.settings.type == "acr" else None
        self._snapshot: dict[str, set[str]] = {}
        self._read_at: float | None = None
        self.rereads = 0

    async def tags_of(self, digest: str) -> set[str]:
        if self._acr is not None:
            self.rereads += 1
            return await self._acr.manifest_tags(self._repository, digest) or set()
        if self._read_at is None or self._monotonic() - self._read_at > self._window:
            await self._reread()
        return self._snapshot.get(digest, set())

    async def _reread(self) -> None:
        started = self._monotonic()
        client, repository = self._client, self._repository
        tags = await client.tags(repository)
        heads = await asyncio.gather(*(client.head_manifest(repository, t) for t in tags))
        snapshot: dict[str, set[str]] = {}
        for tag, head in zip(tags, heads, strict=True):
            if head is not None:  # None: the tag vanished between listing and reading
                snapshot.setdefault(head.digest, set()).add(tag)
        self._snapshot, self._read_at = snapshot, started
        self.rereads += 1


@dataclass(slots=True)
class _Live:
    """What this run has done so far: the executor's view of what is gone and what stays."""

    outcomes: dict[OutcomeKey, Outcome]
    gone: set[OutcomeKey] = field(default_factory=set)  # deleted now, or found already gone
    deleted_now: list[Action] = field(default_factory=list)
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
        was made from, for the bytes really freed."""
        report = Report()
        log_decisions(plan, dry_run=dry_run)
        live = _Live(report.outcomes)
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
            actions = parents_first(a for _, a in pairs)
            await self._apply_repository(registry, repository, actions, live, report)
            for p in {id(p): p for p, _ in pairs}.values():
                if repository in p.emptied:
                    mine = [a for q, a in pairs if q is p]
                    await self._delete_if_empty(p, repository, mine, report)
        if not dry_run:
            self._credit(live, report, inventories)
        return report

    async def _apply_repository(self, registry: str, repository: str, actions: list[Action],
                                live: _Live, report: Report) -> None:
        client = self._clients[registry]
        confirmation = TagConfirmation(client, repository, window=self._window)
        for a in actions:
            await self._delete(client, a, confirmation, live, report)

    async def _verdict(self, a: Action, confirmation: TagConfirmation,
                       live: _Live) -> tuple[str, str] | None:
        """Why ``a`` must not be sent now, as (status, reason); None: send it."""
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
        return None

    async def _delete(self, client: RegistryClient, a: Action,
                      confirmation: TagConfirmation, live: _Live, report: Report) -> None:
        # The exact bytes first, for the journal (restore re-pushes them). Fetched before the
        # gate, so reading them does not widen the gap between confirming tags and DELETE.
        try:
            fetched = await client.get_manifest(a.repository, a.digest)
        except RegistryError as exc:
            reason = f"could not read the manifest to journal it before deleting: {exc}"
            report.errors.append(f"{a.registry}/{a.repository}: {reason}")
            self._record(a, SKIPPED, reason, report)
            return
        if fetched is None:  # already gone: nothing to send, nothing freed by us
            self._gone(a, live, report, existed=False, entry=None)
            return
        retry = client.retry_policy
        attempt = 0
        entry: int | None = None  # the journal row, once the DELETE is about to be sent
        while True:
            try:
                verdict = await self._verdict(a, confirmation, live)
            except RegistryError as exc:
                verdict = SKIPPED, f"could not confirm its tags before deleting: {exc}"
                report.errors.append(f"{a.registry}/{a.repository}: {verdict[1]}")
            if verdict is not None:
                self._record(a, *verdict, report, entry=entry)
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
                    report.outcomes[outcome_key(a)] = Outcome(SKIPPED, reason)
                    report.errors.append(f"{a.registry}/{a.repository}: {reason}")
                    log.error("deletion skipped", **_event(a), reason=reason)
                    return
            try:
                existed = await client.delete_manifest(a.repository, a.digest, retry=False)
            except (DeletionDisabledError, AuthenticationError) as exc:
                # Every further delete on this registry would fail the same way: stop asking.
                live.broken[a.registry] = str(exc)
                self._record(a, FAILED, str(exc), report, entry=entry)
                return
            except RegistryError as exc:
                attempt += 1
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
                self._record(a, FAILED, str(exc), report, entry=entry)
                return
            self._gone(a, live, report, existed=existed, entry=entry)
            return

    def _gone(self, a: Action, live: _Live, report: Report, *, existed: bool,
              entry: int | None) -> None:
        live.gone.add(outcome_key(a))
        if existed:
            live.deleted_now.append(a)
        report.outcomes[outcome_key(a)] = Outcome(DELETED)
        # Journaled at once; the bytes it freed are known only once the run knows all
        # that went (the report and the metrics carry them).
        if entry is not None:
            self._state.journal_end(entry, status=DELETED)
        else:
            self._state.record_deletion(at=self._clock(), registry=a.registry,
                                        repository=a.repository, digest=a.digest, tags=a.tags,
                                        bytes=0, policy=a.policy,
                                        reason=f"{a.reason} (already gone)", status=DELETED)
        log.info("manifest deleted", **_event(a), reason=a.reason,
                 cascade_of=a.cascade_of, already_gone=not existed, dry_run=False)

    def _record(self, a: Action, status: str, reason: str, report: Report, *,
                entry: int | None = None) -> None:
        """An action not deleted: its outcome, the journal, the failure counter."""
        report.outcomes[outcome_key(a)] = Outcome(status, reason)
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

    def _credit(self, live: _Live, report: Report,
                inventories: Mapping[str, Inventory]) -> None:
        """The bytes each deletion really freed: blobs that no manifest still present in
        the registry references (a manifest found already gone frees nothing for us)."""
        by_registry: dict[str, list[Action]] = {}
        for a in live.deleted_now:
            by_registry.setdefault(a.registry, []).append(a)
        for registry, actions in by_registry.items():
            gone = {(r, d) for reg, r, d in live.gone if reg == registry}
            freed = freed_bytes(inventories[registry], gone=gone,
                                credited=[(a.repository, a.digest) for a in actions])
            for a in actions:
                got = freed[(a.repository, a.digest)]
                report.outcomes[outcome_key(a)] = Outcome(DELETED, bytes=got)
                if self._metrics:
                    self._metrics.manifests_deleted.labels(a.registry, a.policy).inc()
                    self._metrics.reclaimed_bytes.labels(a.registry, a.policy).inc(got)

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
            if await acr.manifests(repository):
                log.info("repository kept: not empty", policy=p.policy, registry=p.registry,
                         repository=repository)
                return
            await acr.delete_repository(repository)
        except RegistryError as exc:
            report.errors.append(f"{p.registry}/{repository}: deleting the empty repository "
                                 f"failed: {exc}")
            log.error("repository deletion failed", policy=p.policy, registry=p.registry,
                      repository=repository, reason=str(exc))
            return
        log.info("repository deleted", policy=p.policy, registry=p.registry,
                 repository=repository, reason="delete_empty_repositories: emptied by this run")


def _short(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}"

