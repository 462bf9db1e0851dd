"""The executor: applies a plan to registries, one gate before every write.

Dry-run and enforce take the same path and log the same events; dry-run returns just before
the DELETE. Before deleting in a repository it re-reads the repository's tags, and skips any
manifest whose tags differ from the plan (``changed``): someone may have just re-tagged an
old build as ``latest`` to roll back. An index goes before its children and a subject before
its referrers, and a cascade is attempted only when its cause was deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from retention.errors import AuthenticationError, DeletionDisabledError, RegistryError
from retention.metrics import Metrics
from retention.planner import CHANGED, Action, Plan, PolicyPlan
from retention.registry.acr import AcrApi
from retention.registry.client import RegistryClient
from retention.report import DELETED, FAILED, SKIPPED, Outcome, OutcomeKey, outcome_key
from retention.state import State

log = structlog.get_logger("retention.executor")


@dataclass(slots=True)
class Report:
    outcomes: dict[OutcomeKey, Outcome] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # problems beyond single deletions

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes.values() if o.status == FAILED)


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


class Executor:
    def __init__(
        self,
        clients: Mapping[str, RegistryClient],
        *,
        state: State,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        stop: asyncio.Event | None = None,
    ):
        self._clients = clients
        self._state = state
        self._metrics = metrics
        self._clock = clock
        self._stop = stop or asyncio.Event()

    async def apply(self, plan: Plan, *, dry_run: bool) -> Report:
        report = Report()
        log_decisions(plan, dry_run=dry_run)
        broken: dict[str, str] = {}  # registry -> why no more deletes are attempted there
        for policy_plan in plan.policies:
            if policy_plan.aborted:
                continue
            await self._apply_policy(policy_plan, report, broken, dry_run=dry_run)
        return report

    async def _apply_policy(self, p: PolicyPlan, report: Report, broken: dict[str, str], *,
                            dry_run: bool) -> None:
        by_repo: dict[str, list[Action]] = {}
        for action in p.actions:
            by_repo.setdefault(action.repository, []).append(action)
        for repository, actions in by_repo.items():
            if dry_run:
                for a in actions:
                    log.info("manifest deleted", **_event(a), reason=a.reason,
                             cascade_of=a.cascade_of, dry_run=True)
                continue
            await self._apply_repository(p, repository, actions, report, broken)
            if repository in p.emptied:
                await self._delete_if_empty(p, repository, actions, report)

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
            report.errors.append(f"{p.registry}/{repository}: deleting the empty repository "
                                 f"failed: {exc}")
            log.error("repository deletion failed", policy=p.policy, registry=p.registry,
                      repository=repository, reason=str(exc))
            return
        log.info("repository deleted", policy=p.policy, registry=p.registry,
                 repository=repository, reason="delete_empty_repositories: emptied by this run")

    async def _apply_repository(self, p: PolicyPlan, repository: str, actions: list[Action],
                                report: Report, broken: dict[str, str]) -> None:
        client = self._clients[p.registry]

        def skip(a: Action, reason: str, status: str = SKIPPED) -> None:
            report.outcomes[outcome_key(a)] = Outcome(status, reason)
            if status == FAILED and self._metrics:
                self._metrics.delete_failures.labels(a.registry, a.policy).inc()
            self._state.record_deletion(at=self._clock(), registry=a.registry,
                                        repository=a.repository, digest=a.digest, tags=a.tags,
                                        bytes=a.bytes, policy=a.policy, reason=reason,
                                        status=status)

        if p.registry in broken:
            for a in actions:
                skip(a, broken[p.registry], FAILED)
            return
        try:
            current = await self._current_tags(client, repository)
        except RegistryError as exc:
            message = f"could not re-read the tags before deleting: {exc}"
            report.errors.append(f"{p.registry}/{repository}: {message}")
            log.error("repository skipped", policy=p.policy, registry=p.registry,
                      repository=repository, reason=message)
            for a in actions:
                skip(a, message)
            return

        for a in actions:
            if p.registry in broken:
                skip(a, broken[p.registry], FAILED)
                continue
            if self._stop.is_set():
                skip(a, "shutting down: not started")
                continue
            if a.cascade_of is not None:
                cause = report.outcomes.get((a.registry, a.repository, a.cascade_of))
                if cause is None or cause.status != DELETED:
                    skip(a, f"cascade: {a.cascade_of} was not deleted")
                    continue
            now_tags = current.get(a.digest, set())
            if now_tags != set(a.tags):
                reason = (f"{CHANGED}: tags are now {sorted(now_tags) or 'none'}, the plan saw "
                          f"{sorted(a.tags) or 'none'}")
                log.warning("manifest protected", **_event(a), reason=CHANGED,
                            detail=reason, dry_run=False)
                skip(a, reason)
                continue
            try:
                existed = await client.delete_manifest(a.repository, a.digest)
            except (DeletionDisabledError, AuthenticationError) as exc:
                # Every further delete would fail the same way: stop asking.
                broken[p.registry] = str(exc)
                log.error("deletion failed", **_event(a), reason=str(exc))
                skip(a, str(exc), FAILED)
                continue
            except RegistryError as exc:
                log.error("deletion failed", **_event(a), reason=str(exc))
                skip(a, str(exc), FAILED)
                continue
            report.outcomes[outcome_key(a)] = Outcome(DELETED)
            self._state.record_deletion(at=self._clock(), registry=a.registry,
                                        repository=a.repository, digest=a.digest, tags=a.tags,
                                        bytes=a.bytes, policy=a.policy, reason=a.reason,
                                        status=DELETED)
            if self._metrics:
                self._metrics.manifests_deleted.labels(a.registry, a.policy).inc()
                self._metrics.reclaimed_bytes.labels(a.registry, a.policy).inc(a.bytes)
            log.info("manifest deleted", **_event(a), reason=a.reason,
                     cascade_of=a.cascade_of, already_gone=not existed, dry_run=False)

    @staticmethod
    async def _current_tags(client: RegistryClient, repository: str) -> dict[str, set[str]]:
        """digest -> the tags pointing at it now."""
        if client.settings.type == "acr":
            # One paged listing answers it on ACR, instead of a HEAD per tag.
            return {m.digest: set(m.tags) for m in await AcrApi(client).manifests(repository)}
        tags = await client.tags(repository)
        heads = await asyncio.gather(*(client.head_manifest(repository, t) for t in tags))
        current: dict[str, set[str]] = {}
        for tag, head in zip(tags, heads, strict=True):
            if head is not None:
                current.setdefault(head.digest, set()).add(tag)
        return current
