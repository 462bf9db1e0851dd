"""One pass: scan the registries, plan, apply. Shared by `plan`, `run` and the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from retention.config import RegistrySettings
from retention.executor import SHUTTING_DOWN, Executor, Report
from retention.inventory import Inventory, Manifest
from retention.kube import NOTHING, InUse, in_use_pass
from retention.outcomes import FAILED, outcome_key
from retention.planner import RESTORED, Plan, only, plan
from retention.policy import Policy
from retention.registry.client import RegistryClient, RetryPolicy
from retention.registry.entra import EntraExchange, TokenCredential, default_credential
from retention.scanner import Scanner
from retention.setup import Setup
from retention.state import State

if TYPE_CHECKING:
    # Only a type here: prometheus_client is imported by those who make Metrics (the
    # daemon), not by every `plan`.
    from retention.metrics import Metrics

log = structlog.get_logger("retention.runs")


@dataclass(frozen=True, slots=True)
class Connections:
    """How to reach registries: injectable for tests."""

    retry: RetryPolicy | None = None
    # For ACR without username/password: Microsoft Entra ID. None: DefaultAzureCredential
    # when azure-identity is installed.
    azure_credential: TokenCredential | None = None


def make_client(settings: RegistrySettings, *, metrics: Metrics | None = None,
                connections: Connections | None = None) -> RegistryClient:
    connections = connections or Connections()
    entra = None
    if settings.type == "acr" and settings.credentials is None:
        credential = connections.azure_credential or default_credential()
        if credential is None:
            log.warning("acr without credentials and without azure-identity",
                        registry=settings.name,
                        hint="pip install 'retention[azure]' for Microsoft Entra ID, or set "
                             "username and password_file")
        else:
            entra = EntraExchange(credential, registry=settings.name)
    return RegistryClient(
        settings,
        observe=metrics.observer(settings.name) if metrics else None,
        retry=connections.retry,
        entra=entra,
    )


def registries_of(policies: Iterable[Policy]) -> list[str]:
    return sorted({p.registry for p in policies if p.registry is not None})


@contextlib.asynccontextmanager
async def open_clients(setup: Setup, names: Iterable[str], *, metrics: Metrics | None = None,
                       connections: Connections | None = None):
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for name in names:
            client = make_client(setup.config.registries[name], metrics=metrics,
                                 connections=connections)
            clients[name] = await stack.enter_async_context(client)
        yield clients


async def collect(clients: Mapping[str, RegistryClient], state: State, *,
                  now: Callable[[], datetime] = lambda: datetime.now(UTC)
                  ) -> dict[str, Inventory]:
    """Scan each registry (at once: they are independent) and record what was seen (each
    repository as soon as it is read)."""

    async def one(name: str, client: RegistryClient) -> Inventory:
        scanner = Scanner(client, cache=state, sightings=state,
                          known_digests=lambda repo: state.known_digests(name, repo), clock=now)
        return with_last_known(await scanner.scan(), state)

    names = list(clients)
    inventories = await asyncio.gather(*(one(n, clients[n]) for n in names))
    return dict(zip(names, inventories, strict=True))


def with_last_known(inventory: Inventory, state: State) -> Inventory:
    """Repositories that could not be read still hold what was last seen there: the
    manifests whose facts the state has. Their blobs, and the bodies of the children an
    index there lists, are not freed by deletions elsewhere (what distribution's garbage
    collector marks). A manifest seen there whose facts are not cached may hold anything:
    it stands there unparsed, so that no config or layer is claimed while it may hold it."""
    repos = []
    for repo in inventory.repositories:
        if repo.error is not None:
            last_known = []
            for digest in state.known_digests(inventory.registry, repo.name):
                f = state.get_facts(digest)
                last_known.append(
                    Manifest(digest=digest, media_type="unknown", size=0, parsed=False)
                    if f is None else
                    Manifest(digest=f.digest, media_type=f.media_type, size=f.size,
                             blobs=f.blobs, children=f.children, subject=f.subject,
                             parsed=f.parsed))
            repo = replace(repo, last_known=tuple(last_known))
        repos.append(repo)
    return replace(inventory, repositories=tuple(repos))


def plan_all(setup: Setup, inventories: Mapping[str, Inventory], policies: Iterable[Policy],
             *, now: datetime, in_use: InUse = NOTHING,
             restored: frozenset[tuple[str, str, str]] = frozenset()) -> Plan:
    """One plan over every registry, each policy planned against its own registry."""
    by_registry: dict[str, list[Policy]] = {}
    for p in policies:
        if p.registry is not None:
            by_registry.setdefault(p.registry, []).append(p)
    options = replace(setup.planner_options(), in_use=in_use.protected, restored=restored)
    parts = [plan(inventories[name], chosen, now=now, options=options)
             for name, chosen in sorted(by_registry.items()) if name in inventories]
    merged = sorted((pp for part in parts for pp in part.policies), key=lambda pp: pp.policy)
    if in_use.failure:  # what runs is unknown: every policy deletes nothing (fail closed)
        merged = [replace(pp, aborted=in_use.failure) for pp in merged]
    return Plan(now=now, policies=tuple(merged))


@dataclass(frozen=True, slots=True)
class RunResult:
    plan: Plan
    report: Report
    dry_run: bool

    @property
    def failed(self) -> bool:
        return bool(self.report.failed or self.report.errors or self.report.interrupted
                    or any(p.aborted or p.errors for p in self.plan.policies))

    def policy_outcome(self, name: str) -> str:
        """success, failure or aborted, for retention_runs_total."""
        p = next(pp for pp in self.plan.policies if pp.policy == name)
        if p.aborted:
            return "aborted"
        outcomes = self.report.outcomes
        failed = any((o := outcomes.get(outcome_key(a))) is not None and
                     (o.status == FAILED or o.reason == SHUTTING_DOWN) for a in p.actions)
        mine = {a.repository for a in p.actions}
        errors = any(e.registry == p.registry and e.repository in mine
                     for e in self.report.errors)
        return "failure" if failed or p.errors or errors else "success"


async def run_pass(
    setup: Setup,
    policies: Iterable[Policy],
    *,
    dry_run: bool,
    state: State,
    metrics: Metrics | None = None,
    connections: Connections | None = None,
    stop: asyncio.Event | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RunResult:
    """Scan, plan and apply the given policies. Raises RegistryError when a registry cannot
    be scanned at all (unreachable, credentials refused)."""
    policies = list(policies)
    started = time.monotonic()
    state.prune_journal(clock() - setup.config.journal_keep)
    registries = registries_of(policies)
    # Every policy of these registries is planned, so that what any of them keeps or
    # protects is safe from the ones that run now; only those run.
    settled = {p.name: p for p in setup.policies if p.registry in registries}
    settled.update((p.name, p) for p in policies)
    async with open_clients(setup, registries, metrics=metrics,
                            connections=connections) as clients:
        inventories = await collect(clients, state, now=clock)
        in_use = await in_use_pass(setup.config, inventories, state, now=clock(),
                                   metrics=metrics)
        whole = plan_all(setup, inventories, settled.values(), now=clock(), in_use=in_use,
                         restored=state.restored_marks())
        the_plan = only(whole, [p.name for p in policies], inventories)
        # A restored manifest is protected in one plan; once shown, policies decide again.
        state.clear_restored({(d.registry, d.repository, d.digest) for p in the_plan.policies
                              for d in p.protected if d.reason == RESTORED})
        if metrics:
            metrics.record_plan(the_plan)
        executor = Executor(clients, state=state, metrics=metrics, clock=clock, stop=stop,
                            confirm_window=setup.config.confirm_window.total_seconds())
        report = await executor.apply(the_plan, dry_run=dry_run, inventories=inventories)
    result = RunResult(the_plan, report, dry_run)
    if metrics:
        elapsed = time.monotonic() - started
        for p in the_plan.policies:
            outcome = result.policy_outcome(p.policy)
            metrics.runs.labels(p.policy, outcome).inc()
            metrics.run_duration.labels(p.policy).observe(elapsed)
            if outcome == "success":
                metrics.last_success.labels(p.policy).set(time.time())
    return result
